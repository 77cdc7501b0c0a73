"""DRBD fencing, the agent's side: what ``drbdadm dump`` says about fencing, the proof that both
hosts fence (verified while connected, remembered with its time in STATE_DIR), how long I/O has
been frozen, the self-fenced mark, the promotion grant the fence-peer handler reads, and the
handler's records. The policy itself is pure: :mod:`iscsi_ha.fencing_policy`.

Files in STATE_DIR:

- ``fencing-proof.json``: {resource: {ok, verified (epoch), local, peer, problem}}.
- ``self-fenced``: JSON list of resources this host self-fenced; cleared once connected again.
- ``promote-grant-RES``: written just before the agent promotes RES while disconnected, after
  decide() allowed it; the fence-peer handler that DRBD runs during that promotion may then
  report the unreachable peer as fenced (see :mod:`iscsi_ha.fence_peer`). Valid GRANT_TTL s.
- ``forced-promotion.json``: {resources, at, until, by}: the admin's confirmed ``iscsi-cfg
  become-primary --force``, written by the CLI under the pass lock; until ``until`` (the CLI's
  wait plus a margin) decide() promotes those resources without proof, naming the risk. Removed
  once each is Primary or connected again, or when the CLI gives up.
- ``fence-peer-RES.json``: the last run of the fence-peer handler for RES (the handler writes
  it; the agent reports and alerts it).
"""
import hashlib
import json
import logging
import os
import re
import time

from iscsi_ha import statepaths
from iscsi_ha.fencing_policy import DUMP_FAILED, FencingObservation, keeps_earlier_proof

log = logging.getLogger("iscsi-ha")

REQUIRED_POLICY = "resource-and-stonith"
GRANT_TTL = 120.0

_RESOURCE_RE = re.compile(r"^resource\s+(\S+)\s*\{", re.M)
_FENCING_RE = re.compile(r"^\s*fencing\s+([A-Za-z-]+)\s*;", re.M)
# drbdadm dump quotes a handler only when it has spaces: fence-peer /usr/libexec/x;
_HANDLER_RE = re.compile(r'^\s*([a-z-]+)\s+(?:"([^"]*)"|([^\s";]+))\s*;', re.M)
HANDLER_NAMES = ("fence-peer", "unfence-peer", "after-resync-target", "split-brain")


def parse_dump(text):
    """{resource: {"fencing": policy, "handlers": {name: command}}} from ``drbdadm dump``
    (drbd.conf syntax as drbdadm prints it; dont-care is the default when no line says)."""
    found = {}
    starts = [(m.start(), m.group(1)) for m in _RESOURCE_RE.finditer(text or "")]
    for index, (start, name) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
        block = text[start:end]
        policy = _FENCING_RE.search(block)
        handlers = dict((m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
                        for m in _HANDLER_RE.finditer(block) if m.group(1) in HANDLER_NAMES)
        found[name] = {"fencing": policy.group(1) if policy else "dont-care",
                       "handlers": handlers}
    return found


def problems_of(parsed, config):
    """Sentences naming what differs from the fencing iscsi-ha's safety relies on."""
    if parsed is None:
        return ["not in drbdadm dump"]
    problems = []
    if parsed["fencing"] != REQUIRED_POLICY:
        problems.append("fencing is %s, needs %s" % (parsed["fencing"], REQUIRED_POLICY))
    command = parsed["handlers"].get("fence-peer", "")
    if not command:
        problems.append("no fence-peer handler")
    elif command.split()[0] != config.FENCE_PEER_HANDLER:
        problems.append("fence-peer handler is %r, not %s" % (command, config.FENCE_PEER_HANDLER))
    return problems


def local_fencing(adapter, config):
    """{resource: {"fencing", "handlers", "problems"}} of this host, from ``drbdadm dump``."""
    answer = {}
    for name in config.DRBD_RESOURCES:
        try:
            parsed = parse_dump(adapter.dump(name)).get(name)
        except Exception as exc:  # drbdadm missing, resource unknown: reported, not raised
            answer[name] = {"fencing": None, "handlers": {},
                            "problems": ["%s: %s" % (DUMP_FAILED, exc)]}
            continue
        entry = dict(parsed or {"fencing": None, "handlers": {}})
        entry["problems"] = problems_of(parsed, config)
        answer[name] = entry
    return answer


def outdate_outcome(returncode, timed_out=False, stderr=""):
    """What ``drbdadm outdate``'s exit code means (``adm_outdate()`` in drbd-utils
    ``user/v84/drbdadm_main.c`` and ``user/v9/drbdadm_main.c``: 17 "is primary and thus cannot
    be outdated", 5 "is inconsistent or worse anyways")."""
    if timed_out:
        return "failed"
    if returncode == 0:
        return "outdated"
    if returncode == 17:
        return "primary"
    if returncode == 5:
        return "inconsistent"
    if "Refusing to be Outdated while Connected" in (stderr or ""):
        return "connected"
    return "failed"


def _digest(entry):
    return hashlib.sha1(json.dumps(entry, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def _read_json(path, default):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, IOError, ValueError):
        return default


def _write_json(path, value):
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        json.dump(value, handle, sort_keys=True)
    os.rename(tmp, path)


def write_grant(state_dir, resource, reason, now=None):
    _write_json(statepaths.promote_grant(state_dir, resource),
                {"time": time.time() if now is None else now, "reason": reason})


def read_grant(state_dir, resource, now=None, ttl=GRANT_TTL):
    """The grant for ``resource`` if it is fresh, else None."""
    grant = _read_json(statepaths.promote_grant(state_dir, resource), None)
    now = time.time() if now is None else now
    if not isinstance(grant, dict) or not isinstance(grant.get("time"), (int, float)):
        return None
    return grant if 0 <= now - grant["time"] <= ttl else None


def clear_grant(state_dir, resource):
    try:
        os.unlink(statepaths.promote_grant(state_dir, resource))
    except OSError:
        pass


def write_forced(state_dir, resources, until, by, now=None):
    """Record the admin's confirmed forced promotion of ``resources`` (valid until ``until``,
    wall clock). The caller holds the pass lock."""
    _write_json(statepaths.forced_promotion(state_dir), {
        "resources": sorted(resources), "at": time.time() if now is None else now,
        "until": until, "by": by})


def read_forced(state_dir, now=None):
    """The resources of a forced promotion still in force (a tuple; () when none)."""
    record = _read_json(statepaths.forced_promotion(state_dir), None)
    now = time.time() if now is None else now
    if not isinstance(record, dict) or not isinstance(record.get("until"), (int, float)) or \
            not isinstance(record.get("resources"), list) or now > record["until"]:
        return ()
    return tuple(r for r in record["resources"] if isinstance(r, str))


def clear_forced(state_dir):
    try:
        os.unlink(statepaths.forced_promotion(state_dir))
    except OSError:
        pass


def read_records(state_dir, resources):
    """{resource: the last fence-peer record} (those that exist)."""
    found = {}
    for name in resources:
        record = _read_json(statepaths.fence_record(state_dir, name), None)
        if isinstance(record, dict):
            found[name] = record
    return found


def split_proof(proof, resources):
    """({resource: how it was proven}, {resource: why not}) from the remembered proof."""
    proven, unproven = {}, {}
    for name in resources:
        entry = proof.get(name) if isinstance(proof, dict) else None
        if isinstance(entry, dict) and entry.get("ok"):
            proven[name] = "verified on both hosts %s" % time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(entry.get("verified", 0)))
        else:
            unproven[name] = (entry or {}).get("problem") or \
                "fencing was never verified on both hosts while connected"
    return proven, unproven


def proven_without_peer(config):
    """{resource: sentence} of the resources whose fencing was proven on both hosts (the proof
    the agent remembers in STATE_DIR) and that did not self-fence: read only, the peer is never
    asked. The CLI uses it to tell a promotion DRBD will fence from a blind one."""
    marked = _read_json(statepaths.self_fenced(config.STATE_DIR), [])
    marked = marked if isinstance(marked, list) else []
    proven, _ = split_proof(_read_json(statepaths.fencing_proof(config.STATE_DIR), {}),
                            config.DRBD_RESOURCES)
    return dict((name, "fencing " + how) for name, how in proven.items()
                if name not in marked)


class FencingTracker(object):
    """Builds the :class:`FencingObservation` of each pass (kept by the Agent)."""

    def __init__(self, config, peer_fencing=None, clock=time.monotonic, wall=time.time):
        self.config = config
        self.peer_fencing = peer_fencing      # () -> the peer plugin's "fencing" answer
        self.clock = clock
        self.wall = wall
        self.frozen_since = {}
        self.last_attempt = 0.0

    @property
    def _proof_path(self):
        return statepaths.fencing_proof(self.config.STATE_DIR)

    @property
    def _self_fenced_path(self):
        return statepaths.self_fenced(self.config.STATE_DIR)

    def observe(self, drbd, drbd_adapter):
        config = self.config
        now = self.clock()
        frozen = {}
        for name, state in drbd.items():
            if getattr(state, "suspended", False):
                since = self.frozen_since.setdefault(name, now)
                frozen[name] = round(now - since, 3)
            else:
                self.frozen_since.pop(name, None)
        self_fenced = self._self_fenced(drbd)
        forced = self._forced(drbd)
        proof = self._proof(drbd, drbd_adapter)
        proven, unproven = split_proof(proof, config.DRBD_RESOURCES)
        return FencingObservation(
            proven=proven, unproven=unproven, allow_unfenced=bool(config.ALLOW_UNFENCED_FAILOVER),
            frozen_s=frozen, self_fence_after=float(config.SELF_FENCE_AFTER),
            self_fenced=tuple(self_fenced), forced=forced,
            records=read_records(config.STATE_DIR, config.DRBD_RESOURCES))

    def _forced(self, drbd):
        """The admin's forced promotion still to be done: expired, or every resource of it
        Primary or connected again, it is removed."""
        state_dir = self.config.STATE_DIR
        if not os.path.exists(statepaths.forced_promotion(state_dir)):
            return ()
        forced = read_forced(state_dir, self.wall())
        pending = tuple(n for n in forced if n in drbd and not drbd[n].is_primary
                        and not drbd[n].is_connected)
        if not pending:
            clear_forced(state_dir)
        return pending

    # -- self-fenced mark --------------------------------------------------------------------
    def _self_fenced(self, drbd):
        marked = _read_json(self._self_fenced_path, [])
        if not isinstance(marked, list):
            marked = []
        still = [n for n in marked if n in drbd and not drbd[n].is_connected]
        if still != marked:
            self._save_self_fenced(still)
        return still

    def _save_self_fenced(self, names):
        try:
            if names:
                _write_json(self._self_fenced_path, sorted(names))
            elif os.path.exists(self._self_fenced_path):
                os.unlink(self._self_fenced_path)
        except (OSError, IOError) as exc:
            log.error("cannot record the self-fence in %s: %s", self._self_fenced_path, exc)

    def mark_self_fenced(self, names):
        marked = _read_json(self._self_fenced_path, [])
        self._save_self_fenced(sorted(set(marked if isinstance(marked, list) else []) |
                                      set(names)))

    # -- the proof ---------------------------------------------------------------------------
    def _proof(self, drbd, adapter):
        """The remembered proof, refreshed while connected when it is missing or failed
        (every 30 s at most) or older than FENCING_RECHECK."""
        proof = _read_json(self._proof_path, {})
        if not isinstance(proof, dict):
            proof = {}
        connected = [n for n in self.config.DRBD_RESOURCES
                     if n in drbd and drbd[n].is_connected]
        if not connected:
            return proof
        now = self.wall()
        stale = [n for n in connected if not (proof.get(n) or {}).get("ok")
                 or now - (proof.get(n) or {}).get("verified", 0) > self.config.FENCING_RECHECK]
        retry_after = 30.0 if any(not (proof.get(n) or {}).get("ok") for n in connected) \
            else self.config.FENCING_RECHECK
        if not stale or self.clock() - self.last_attempt < min(retry_after,
                                                                self.config.FENCING_RECHECK):
            if self.last_attempt:
                return proof
        self.last_attempt = self.clock()
        local = local_fencing(adapter, self.config)
        try:
            peer = self.peer_fencing() if self.peer_fencing else None
            peer_error = "" if peer else "no way to ask the peer"
        except Exception as exc:   # peer unreachable: keep what was proven before
            peer, peer_error = None, "cannot ask the peer: %s" % exc
        for name in connected:
            mine = local.get(name) or {"problems": ["not in drbdadm dump"]}
            theirs = ((peer or {}).get("resources") or {}).get(name)
            if keeps_earlier_proof(proof.get(name), mine, theirs, peer_error):
                continue                    # a side unread now: try again later
            problems = ["this host: " + p for p in mine.get("problems", [])]
            if theirs is None:
                problems.append("peer: " + (peer_error or "resource unknown there"))
            else:
                problems.extend("peer: " + p for p in theirs.get("problems", []))
            proof[name] = {"ok": not problems, "verified": now, "problem": "; ".join(problems),
                           "local": _digest(mine), "peer": _digest(theirs or {})}
        try:
            _write_json(self._proof_path, proof)
        except (OSError, IOError) as exc:
            log.error("cannot remember the fencing proof in %s: %s", self._proof_path, exc)
        return proof
