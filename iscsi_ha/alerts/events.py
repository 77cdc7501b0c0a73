"""What an admin is told: :class:`Alert` values with stable kinds, and the pure function that
finds them by comparing two consecutive status documents (see :mod:`iscsi_ha.status`).

Severities are XAPI message priorities: 1 is the most urgent, 5 is information. HA-Lizard sent 1
for every error and 4 for recoveries; the split here is finer but keeps those two anchors.

:func:`alerts_for_transition` yields one alert per real change: the link going down gives one
``drbd-disconnected``, however many passes it stays down; a new failed action gives one
``*-failed`` per failing pass (the dispatcher folds repeats into a summary). Passing the status
document the previous agent process left on disk as ``previous`` makes restarts visible and
keeps a restart from repeating alerts about a state that did not change.
"""
import collections
import re
from dataclasses import dataclass, field
from typing import Mapping

from iscsi_ha.drbd import LINK_UP_STATES, RESYNC_STATES

DATA_LOSS_IMMINENT, SERVICE_LOSS_IMMINENT, SERVICE_DEGRADED, SERVICE_RECOVERED, INFORMATIONAL = (
    1, 2, 3, 4, 5)
SEVERITY_NAMES = {1: "critical", 2: "major", 3: "warning", 4: "recovered", 5: "info"}

# kind -> default severity. Kinds are stable: admins filter mail and XAPI messages on them.
KINDS = {
    "role-change-done": SERVICE_RECOVERED,
    "service-restored": SERVICE_RECOVERED,
    "service-blocked": DATA_LOSS_IMMINENT,
    "promote-failed": DATA_LOSS_IMMINENT,
    "demote-failed": DATA_LOSS_IMMINENT,
    "target-failed": DATA_LOSS_IMMINENT,
    "floating-ip-failed": DATA_LOSS_IMMINENT,
    "floating-ip-taken": DATA_LOSS_IMMINENT,
    "action-failed": DATA_LOSS_IMMINENT,
    "drbd-disconnected": SERVICE_LOSS_IMMINENT,
    "drbd-reconnected": SERVICE_RECOVERED,
    "drbd-degraded": SERVICE_LOSS_IMMINENT,
    "drbd-recovered": SERVICE_RECOVERED,
    "resync-started": SERVICE_DEGRADED,
    "resync-finished": SERVICE_RECOVERED,
    "split-brain": DATA_LOSS_IMMINENT,
    "agent-restarted": SERVICE_DEGRADED,
    "agent-restart-backoff": SERVICE_LOSS_IMMINENT,
    "pass-hung": SERVICE_LOSS_IMMINENT,
    "config-invalid": DATA_LOSS_IMMINENT,
    "sr-replugged": SERVICE_RECOVERED,
    "sr-replug-failed": SERVICE_LOSS_IMMINENT,
    "test": INFORMATIONAL,
}


@dataclass(frozen=True)
class Alert:
    kind: str
    severity: int
    resource: str = ""          # DRBD resource, SR, floating IP...; "" for the host as a whole
    summary: str = ""           # one sentence
    details: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError("unknown alert kind %r" % (self.kind,))
        if self.severity not in SEVERITY_NAMES:
            raise ValueError("alert severity %r is not 1..5" % (self.severity,))

    @property
    def key(self):
        """What duplicates share: (kind, resource)."""
        return self.kind, self.resource

    @property
    def severity_name(self):
        return SEVERITY_NAMES[self.severity]


# One alert on its way out: the status document when it happened (or None), the wall-clock time,
# and for a summary of held-back duplicates {count, first, last, minutes} (else None).
Entry = collections.namedtuple("Entry", "alert status at repeat")


class SendError(Exception):
    """A sender could not deliver; ``transient`` says whether trying again later may work."""

    def __init__(self, message, transient=True):
        Exception.__init__(self, message)
        self.transient = transient


def make(kind, resource="", summary="", severity=None, **details):
    """An :class:`Alert` with the kind's default severity."""
    return Alert(kind, KINDS[kind] if severity is None else severity, resource, summary,
                 dict(details))


# -- alerts raised outside the status comparison ----------------------------------------------
def pass_hung(seconds, killed):
    return make("pass-hung", "", "a pass hung for %.0f s; %d child process(es) killed"
                % (seconds, len(killed)), seconds=round(seconds, 1), killed=", ".join(killed))


def config_invalid(path, problems):
    return make("config-invalid", path, "configuration %s is invalid: %d problem(s)"
                % (path, len(problems)), problems="\n".join(problems))


def sr_replugged(sr_name, detail=""):
    return make("sr-replugged", sr_name, "SR %s re-plugged on this host" % sr_name,
                detail=detail)


def sr_replug_failed(sr_name, error, attempts=1):
    return make("sr-replug-failed", sr_name, "SR %s could not be plugged on this host: %s"
                % (sr_name, error), attempts=attempts)


def manual_test(hostname):
    return make("test", "", "test alert from %s" % hostname,
                note="sent on request (iscsi-cfg test-alert); no action is needed")


# -- comparing two status documents -------------------------------------------------------------
_SPLIT_BRAIN_RE = re.compile(r"split brain on ([^:]+):")
_BLOCKED_PREFIXES = ("refusing", "holding: cannot", "holding: DRBD")
_BAD_LOCAL_DISKS = ("Diskless", "Failed", "Detaching")


def _link_up(state):
    return state.get("connection") in LINK_UP_STATES


def _syncing(state):
    return state.get("connection") in RESYNC_STATES


def degradation(state):
    """Why a resource's data is not redundant although no resync or outage explains it, or ''."""
    if state.get("disk") in _BAD_LOCAL_DISKS:
        return "local disk %s" % state.get("disk")
    if not _link_up(state) or _syncing(state):
        return ""
    if state.get("peer_disk") != "UpToDate":
        return "peer disk %s" % state.get("peer_disk")
    if state.get("disk") != "UpToDate":
        return "local disk %s" % state.get("disk")
    return ""


def _words(state):
    text = "%s/%s %s %s/%s" % (state.get("role"), state.get("peer_role"),
                               state.get("connection"), state.get("disk"), state.get("peer_disk"))
    if state.get("sync_percent") is not None:
        text += " %.1f%%" % state["sync_percent"]
    return text


def _resource_alerts(name, before, now):
    """Alerts for one DRBD resource; ``before`` is None when it was not seen before."""
    found = []
    details = {"state": _words(now)}
    if before is not None:
        details["previous_state"] = _words(before)
    up_before = before is not None and _link_up(before)
    sync_before = before is not None and _syncing(before)
    if not _link_up(now) and (before is None or up_before):
        found.append(make("drbd-disconnected", name, "%s: replication link down (%s)"
                          % (name, now.get("connection")), **details))
    elif _link_up(now) and before is not None and not up_before:
        found.append(make("drbd-reconnected", name, "%s: replication link up again (%s)"
                          % (name, now.get("connection")), **details))
    if _syncing(now) and not sync_before:
        found.append(make("resync-started", name, "%s: resync %s started (%s/%s)" % (
            name, now.get("connection"), now.get("disk"), now.get("peer_disk")), **details))
    elif sync_before and not _syncing(now) and _link_up(now):
        found.append(make("resync-finished", name, "%s: resync finished (%s/%s)" % (
            name, now.get("disk"), now.get("peer_disk")), **details))
    worse, was = degradation(now), "" if before is None else degradation(before)
    if worse and worse != was:
        found.append(make("drbd-degraded", name, "%s: no redundancy: %s" % (name, worse),
                          **details))
    elif was and not worse and not found:
        found.append(make("drbd-recovered", name, "%s: redundant again (%s/%s)" % (
            name, now.get("disk"), now.get("peer_disk")), **details))
    return found


def split_brain_resources(document):
    """Resources in split brain: the document's ``split_brain`` list if it has one, else the
    names the decision's reason gives."""
    if document is None:
        return set()
    if document.get("split_brain") is not None:
        return set(document["split_brain"])
    match = _SPLIT_BRAIN_RE.search((document.get("decision") or {}).get("reason", ""))
    return set(n.strip() for n in match.group(1).split(",")) if match else set()


def _drbd_alerts(previous, current):
    found = []
    split_now = split_brain_resources(current)
    for name in sorted(split_now - split_brain_resources(previous)):
        state = (current.get("drbd") or {}).get(name) or {}
        found.append(make("split-brain", name, "%s: split brain: both sides changed the data "
                          "independently; no automatic action until an admin chooses the "
                          "survivor (iscsi-cfg split-brain)" % name, state=_words(state)))
    before_all = (previous or {}).get("drbd") or {}
    for name, now in sorted(((current.get("drbd") or {}).items())):
        if name not in split_now:
            found.extend(_resource_alerts(name, before_all.get(name), now))
    return found


def _batch_of(document):
    actions = (document or {}).get("last_actions") or []
    return actions[0].get("at") if actions else None


def _failure_alert(entry, document):
    action, detail = entry.get("action", ""), entry.get("detail", "")
    info = {"action": action, "error": detail, "duration_s": entry.get("duration_s")}
    vip = (document.get("floating_ip") or {}).get("address", "")
    for prefix, kind in (("promote ", "promote-failed"), ("demote ", "demote-failed")):
        if action.startswith(prefix):
            resource = action[len(prefix):]
            return make(kind, resource, "%s of %s failed: %s" % (
                prefix.strip(), resource, detail), **info)
    if action in ("start target", "stop target"):
        return make("target-failed", "target", "%s failed: %s" % (action, detail), **info)
    if action == "add floating IP" and " is in use by " in detail:
        return make("floating-ip-taken", vip, "floating IP %s is held by another host: %s"
                    % (vip, detail), **info)
    if action.endswith("floating IP"):
        return make("floating-ip-failed", vip, "%s %s failed: %s" % (action, vip, detail), **info)
    return make("action-failed", action, "%s failed: %s" % (action, detail), **info)


def _action_alerts(previous, current):
    batch = _batch_of(current)
    if batch is None or (previous is not None and _batch_of(previous) == batch):
        return []
    return [_failure_alert(entry, current) for entry in current.get("last_actions") or []
            if not entry.get("ok") and not entry.get("skipped")]


def _settled(document):
    decision = document.get("decision") or {}
    return (not decision.get("actions") and decision.get("healthy")
            and document.get("desired_role") in ("primary", "secondary"))


def _blocked(document):
    reason = (document.get("decision") or {}).get("reason", "")
    return reason.startswith(_BLOCKED_PREFIXES)


def _timings(document):
    actions = document.get("last_actions") or []
    text = ", ".join("%s %.3f s%s" % (a.get("action"), a.get("duration_s") or 0.0,
                                      "" if a.get("ok") else " (failed)") for a in actions)
    details = {"actions": text or "none by this agent process"}
    if actions and document.get("updated") and actions[0].get("at"):
        details["took_s"] = round(document["updated"] - actions[0]["at"], 3)
    return details


def _role_alerts(previous, current):
    if previous is None or not _settled(current):
        return []
    if _settled(previous) and previous.get("desired_role") == current.get("desired_role"):
        return []
    acted = bool((previous.get("decision") or {}).get("actions"))
    if not acted and not _blocked(previous):
        return []
    role = current.get("desired_role")
    details = _timings(current)
    details["pool_role"] = (current.get("pool") or {}).get("role")
    details["reason"] = (current.get("decision") or {}).get("reason")
    role_actions = [a for a in current.get("last_actions") or []
                    if a.get("action", "").startswith(("promote ", "demote "))]
    if role_actions or previous.get("desired_role") != role:
        return [make("role-change-done", "", "this host is now storage %s" % role, **details)]
    return [make("service-restored", "", "storage %s serving as expected again" % role,
                 **details)]


def _blocked_alerts(previous, current):
    reason = (current.get("decision") or {}).get("reason", "")
    if not _blocked(current) or split_brain_resources(current):
        return []
    if previous is not None and (previous.get("decision") or {}).get("reason") == reason:
        return []
    return [make("service-blocked", "", "the agent cannot bring this host to its role: %s"
                 % reason, health=current.get("health"),
                 problems="; ".join(current.get("problems") or []))]


def _restart_alerts(previous, current):
    if previous is None:
        return []
    before, now = previous.get("agent") or {}, current.get("agent") or {}
    if (before.get("pid"), before.get("started")) == (now.get("pid"), now.get("started")):
        return []
    return [make("agent-restarted", "", "the iscsi-ha agent started again (previous process "
                 "%s)" % before.get("pid"), previous_pid=before.get("pid"),
                 previous_status_updated=previous.get("updated_iso"),
                 previous_health=previous.get("health"))]


def alerts_for_transition(previous, current):
    """[Alert] for what changed from ``previous`` (a status document or None) to ``current``."""
    found = _restart_alerts(previous, current)
    found.extend(_drbd_alerts(previous, current))
    found.extend(_action_alerts(previous, current))
    found.extend(_blocked_alerts(previous, current))
    found.extend(_role_alerts(previous, current))
    return found
