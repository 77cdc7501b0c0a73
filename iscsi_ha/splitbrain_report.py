"""Split brain: what each side holds, put side by side (``iscsi-cfg split-brain`` without
``--keep``, and the facts :mod:`iscsi_ha.splitbrain`'s recovery checks before it acts).

DRBD's ``split-brain`` handler (scripts/drbd-split-brain-handler) writes the flag file
STATE_DIR/split-brain-RES; while it exists the agent holds that resource (no automatic action).

:func:`inspect` puts both sides side by side for every flagged or StandAlone resource: DRBD's
state, the data generation identifiers (``drbdadm get-gi RES``, DRBD 8.4 and 9) and the amount of
data marked out of sync (8.4 ``/proc/drbd`` ``oos:``, 9 ``out-of-sync`` of ``drbdsetup status
--json``, both KiB), all read through the DRBD adapter (a missing or failing tool is reported
in the resource's errors), and names what each choice of survivor would discard.
``peer_status`` is the peer's :func:`local_facts` (fetched through the XAPI plugin) or, failing
that, its published status document.
"""
import collections
import errno
import os
import socket

from iscsi_ha import files, statepaths
from iscsi_ha.adapters.run import CommandError
from iscsi_ha.drbd import (  # noqa: F401 (the parsers are re-exported)
    LINK_UP_STATES, DrbdParseError, Generations, parse_gi, parse_json_oos, parse_proc_oos)
from iscsi_ha.files import atomic_write

FLAG_PREFIX = statepaths.SPLIT_BRAIN_PREFIX


# -- the flag file ----------------------------------------------------------------------------
def flag_path(state_dir, resource):
    return statepaths.split_brain_flag(state_dir, resource)


def read_flag(state_dir, resource):
    """The flag's ``key=value`` details (``{}`` for an empty file), or None without a flag."""
    try:
        text = files.read_text(flag_path(state_dir, resource), files.SMALL_LIMIT)
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        return {"error": str(exc)}
    details = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            details[key.strip()] = value.strip()
    return details


def write_flag(state_dir, resource, **details):
    lines = ["# iscsi-ha: DRBD split brain on %s; no automatic action until it is recovered"
             % resource, "resource=" + resource] + [
                 "%s=%s" % (k, str(v).replace("\n", " ")) for k, v in sorted(details.items())]
    atomic_write(flag_path(state_dir, resource), "\n".join(lines) + "\n")


def clear_flag(state_dir, resource):
    """Remove the flag; True if there was one."""
    try:
        os.unlink(flag_path(state_dir, resource))
        return True
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False


# -- data generation identifiers and changed data ------------------------------------------------
def _uuid(value):
    """DRBD ignores the lowest bit (the "primary" marker) when it compares generations."""
    return int(value, 16) & ~1 if value else 0


def compare_generations(local, peer):
    """("same" | "local-newer" | "peer-newer" | "diverged" | "unknown", sentence)."""
    if local is None or peer is None:
        return "unknown", "which side is newer is unknown (no data generation identifiers)"
    mine, theirs = _uuid(local.current), _uuid(peer.current)
    if mine == theirs:
        return "same", "both sides hold the same data generation %s" % local.current
    older_mine = set(_uuid(u) for u in (local.bitmap,) + local.history) - {0}
    older_theirs = set(_uuid(u) for u in (peer.bitmap,) + peer.history) - {0}
    if theirs in older_mine:
        return "local-newer", "this host's data is newer: the peer's generation %s is in its " \
                              "history" % peer.current
    if mine in older_theirs:
        return "peer-newer", "the peer's data is newer: this host's generation %s is in its " \
                             "history" % local.current
    common = _uuid(local.bitmap) == _uuid(peer.bitmap) != 0
    return "diverged", "both sides wrote since they split%s: neither is newer" % (
        " from generation %s" % local.bitmap if common else "")


def _ask(read, resource):
    """(value, "") from one of the DRBD adapter's split-brain reads, or (None, why not): a
    missing or failing tool is one fact of the report, never the end of it."""
    try:
        return read(resource), ""
    except (DrbdParseError, CommandError, OSError) as exc:
        return None, str(exc)


# -- facts and the report ------------------------------------------------------------------------
def local_facts(config, adapter, host=None):
    """This host's side of every configured resource, as JSON-ready data."""
    try:
        states, error = adapter.observe(), ""
    except (DrbdParseError, CommandError) as exc:
        states, error = {}, str(exc)
    resources = {}
    for name in config.DRBD_RESOURCES:
        state = states.get(name)
        facts = {"flag": read_flag(config.STATE_DIR, name), "errors": [error] if error else []}
        if state is not None:
            facts.update(role=state.role, peer_role=state.peer_role,
                         connection=state.connection, disk=state.disk,
                         peer_disk=state.peer_disk)
        generations, problem = _ask(adapter.generations, name)
        facts["generations"] = generations._asdict() if generations else None
        facts["out_of_sync_kib"], problem2 = _ask(adapter.out_of_sync_kib, name)
        facts["errors"] += [p for p in (problem, problem2) if p]
        resources[name] = facts
    return {"host": host or socket.gethostname(), "source": "DRBD", "resources": resources}


def peer_facts(peer_status):
    """The peer's facts document from its local_facts, or from its published status."""
    if not peer_status:
        return None
    if "resources" in peer_status:
        return peer_status
    flagged = set(peer_status.get("split_brain") or [])
    resources = {}
    for name, state in (peer_status.get("drbd") or {}).items():
        facts = dict((k, state.get(k)) for k in ("role", "peer_role", "connection", "disk",
                                                  "peer_disk"))
        facts.update(flag={} if name in flagged else None, generations=None,
                     out_of_sync_kib=None, errors=[])
        resources[name] = facts
    return {"host": peer_status.get("hostname") or "the peer", "resources": resources,
            "source": "published status of %s" % peer_status.get("updated_iso", "?")}


def _gen(facts):
    value = (facts or {}).get("generations")
    return Generations(value["current"], value["bitmap"], tuple(value["history"])) if value \
        else None


class ResourceReport(object):
    """One resource: both sides, which is newer, and what each choice discards."""

    def __init__(self, resource, local, peer, local_host, peer_host):
        self.resource, self.local, self.peer = resource, local, peer or {}
        self.local_host, self.peer_host = local_host, peer_host
        self.verdict, self.sentence = compare_generations(_gen(local), _gen(peer))

    @property
    def flagged(self):
        return self.local.get("flag") is not None or self.peer.get("flag") is not None

    @property
    def split_brain(self):
        connections = [self.local.get("connection"), self.peer.get("connection")]
        return (self.flagged or "StandAlone" in connections or self.verdict == "diverged") and \
            self.local.get("connection") not in LINK_UP_STATES

    def side(self, keep_local):
        """(kept host, kept facts, discarded host, discarded facts)."""
        if keep_local:
            return self.local_host, self.local, self.peer_host, self.peer
        return self.peer_host, self.peer, self.local_host, self.local

    def discards(self, keep_local):
        kept, _, lost, facts = self.side(keep_local)
        what = []
        if facts.get("out_of_sync_kib") is not None:
            what.append("%s KiB marked out of sync there" % _kib(facts["out_of_sync_kib"]))
        if facts.get("generations"):
            what.append("its generation %s" % facts["generations"]["current"])
        return "keeping %s discards every change %s made to %s since the split%s; %s then " \
               "resyncs from %s" % (kept, lost, self.resource,
                                    " (%s)" % ", ".join(what) if what else "", lost, kept)

    def more_changes(self):
        mine, theirs = self.local.get("out_of_sync_kib"), self.peer.get("out_of_sync_kib")
        if mine is None or theirs is None:
            return "which side changed more is unknown"
        if mine == theirs:
            return "both sides have %s KiB marked out of sync" % _kib(mine)
        more = self.local_host if mine > theirs else self.peer_host
        return "%s changed more (%s KiB against %s KiB marked out of sync)" % (
            more, _kib(max(mine, theirs)), _kib(min(mine, theirs)))

    def keeps_older(self, keep_local):
        """True when the kept side's data is strictly older than the discarded side's."""
        return self.verdict == ("peer-newer" if keep_local else "local-newer")

    def confirmation(self, keep_local):
        return "Recover the split brain of %s: %s (data: %s). Type yes to go on: " % (
            self.resource, self.discards(keep_local), self.sentence)

    def text(self):
        title = "not in split brain"
        if self.split_brain:
            title = "SPLIT BRAIN" if self.flagged or self.verdict == "diverged" else \
                "StandAlone: a split brain, or disconnected by an admin"
        lines = ["%s: %s" % (self.resource, title)]
        for label, host, facts in (("this host", self.local_host, self.local),
                                   ("peer", self.peer_host, self.peer)):
            lines.append("  %s (%s): %s" % (label, host, _describe(facts)))
        if self.split_brain:
            lines += ["  data: " + self.sentence, "  changes: " + self.more_changes(),
                      "  --keep %s: %s" % (self.local_host, self.discards(True)),
                      "  --keep %s: %s" % (self.peer_host, self.discards(False))]
        elif self.flagged:
            lines.append("  the flag is stale: the resource is connected; clear it with "
                         "iscsi-cfg split-brain --clear %s" % self.resource)
        return "\n".join(lines)


def _describe(facts):
    if not facts or facts.get("connection") is None:
        errors = (facts or {}).get("errors") or ["state unknown"]
        return "state unknown (%s)" % "; ".join(errors)
    text = "%s/%s %s %s/%s" % tuple(facts.get(k) for k in (
        "role", "peer_role", "connection", "disk", "peer_disk"))
    if facts.get("flag") is not None:
        text += ", flagged by the split-brain handler%s" % (
            " at %s" % facts["flag"]["time_iso"] if facts["flag"].get("time_iso") else "")
    gen = facts.get("generations")
    if gen:
        text += ", generation %s (bitmap %s)" % (gen["current"], gen["bitmap"])
    if facts.get("out_of_sync_kib") is not None:
        text += ", %s KiB out of sync" % _kib(facts["out_of_sync_kib"])
    return text + "".join("\n      (%s)" % e for e in facts.get("errors") or [])


def _kib(amount):
    return "{:,}".format(amount)


# unknown: {resource: why} for the resources whose state cannot be read here (DRBD not loaded,
# drbdadm missing...): whether they are in split brain is not known.
Inspection = collections.namedtuple("Inspection", "local_host peer_host reports unknown")


def inspect(config, adapter, peer_status=None, host=None):
    """An Inspection of every resource in split brain (flagged or StandAlone on either side)."""
    mine = local_facts(config, adapter, host)
    theirs = peer_facts(peer_status) or {"host": "the peer", "resources": {}}
    reports = [ResourceReport(name, mine["resources"][name], theirs["resources"].get(name),
                              mine["host"], theirs["host"]) for name in config.DRBD_RESOURCES]
    unknown = dict((name, "; ".join(facts["errors"]) or "state unknown")
                   for name, facts in sorted(mine["resources"].items())
                   if facts.get("connection") is None and facts.get("flag") is None)
    return Inspection(mine["host"], theirs["host"],
                      [r for r in reports if r.split_brain or r.flagged], unknown)


def format_report(inspection):
    unknown = ["%s: cannot tell whether it is in split brain: DRBD cannot be read here (%s)"
               % (name, why) for name, why in sorted(inspection.unknown.items())]
    if not inspection.reports:
        if unknown:
            return "\n".join(unknown)
        return "no DRBD resource of %s is in split brain" % inspection.local_host
    return "\n\n".join([r.text() for r in inspection.reports] + unknown)
