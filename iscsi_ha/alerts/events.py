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
    "state-dir-failed": SERVICE_LOSS_IMMINENT,
    "state-dir-recovered": SERVICE_RECOVERED,
    "sr-replugged": SERVICE_RECOVERED,
    "sr-replug-failed": SERVICE_LOSS_IMMINENT,
    "fence-peer": SERVICE_DEGRADED,
    "failover-refused": DATA_LOSS_IMMINENT,
    "fence-peer-failed": DATA_LOSS_IMMINENT,
    "self-fenced": DATA_LOSS_IMMINENT,
    "unfenced-failover": DATA_LOSS_IMMINENT,
    "test": INFORMATIONAL,
    "mediator-unreachable": SERVICE_DEGRADED,
    "mediator-reachable": SERVICE_RECOVERED,
    "mediator-rolled-back": SERVICE_LOSS_IMMINENT,
    "mediator-deposed": DATA_LOSS_IMMINENT,
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
    """``killed``: the "pid name" of each child process killed ([] when none was)."""
    if isinstance(killed, (list, tuple)):
        names = [str(k) for k in killed]
    else:                           # never let a caller's wrong type end the daemon
        names = []
    return make("pass-hung", "", "a pass hung for %.0f s; %d child process(es) killed"
                % (seconds, len(names)), seconds=round(float(seconds), 1),
                killed=", ".join(names) or "none")


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
    """Resources in split brain: the document's ``split_brain`` list if it has one, else its
    split-brain blockers."""
    if document is None:
        return set()
    if document.get("split_brain") is not None:
        return set(document["split_brain"])
    return set(b.get("resource") for b in _blockers(document) if b.get("kind") == "split-brain")


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


def _blockers(document):
    blockers = document.get("blockers")
    if blockers is None:
        blockers = (document.get("decision") or {}).get("blockers")
    return [b for b in blockers or [] if isinstance(b, dict)]


def _verdict(document):
    return document.get("verdict") or (document.get("decision") or {}).get("verdict")


def service_blocked(document):
    """This host should serve and is blocked from it (the agent's ``service`` state)."""
    return bool((document.get("service") or {}).get("blocked"))


def _blocked(document):
    """Not serving what it should, or refusing: the state a recovery alert ends."""
    return service_blocked(document) or _verdict(document) in ("blocked", "waiting")


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


def _blocker_key(document):
    return sorted((b.get("kind", ""), b.get("resource", "")) for b in _blockers(document))


def _blocked_alerts(previous, current):
    """One service-blocked alert when this host should serve and is blocked (at once for a
    refusal, after SERVICE_BLOCKED_AFTER for a wait), and again only when the blockers
    change."""
    if not service_blocked(current) or _fencing_refusal(current):
        return []            # a fencing refusal has its own alert: failover-refused
    if (previous is not None and service_blocked(previous)
            and _blocker_key(previous) == _blocker_key(current)):
        return []
    blockers = _blockers(current)
    names = ", ".join(sorted(set(b.get("kind", "?") for b in blockers))) or "unknown"
    words = "; ".join(b.get("detail") or b.get("kind", "?") for b in blockers)
    since = (current.get("service") or {}).get("for_s")
    # resource = the blocker kinds: a new reason is a new alert, never screened as a repeat
    # of an earlier, different one (MAIL_SCREEN_TIME screens the same (kind, resource))
    return [make("service-blocked", names, "nobody serves the storage from this host, which "
                 "should: %s (%s)" % (names, words), blockers=names, blocked_for_s=since,
                 verdict=_verdict(current), health=current.get("health"),
                 reason=(current.get("decision") or {}).get("reason", ""),
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


def _fencing_refusal(document):
    """The fencing-unproven blockers of a document (automatic failover refused)."""
    return [b for b in _blockers(document) if b.get("kind") == "fencing-unproven"]


def _fencing_alerts(previous, current):
    """One alert per fence-peer handler run, per self-fence, per unfenced promotion, and one
    when automatic failover is refused for want of proven fencing."""
    now = current.get("fencing") or {}
    before = (previous or {}).get("fencing") or {}
    found = []
    refused = _fencing_refusal(current)
    if refused and not (previous is not None and _fencing_refusal(previous)):
        found.append(make("failover-refused", ", ".join(sorted(set(
            b.get("resource", "") for b in refused))), "automatic failover is OFF: %s" % "; ".join(
            b.get("detail", "") for b in refused), reason=(current.get("decision") or {}).get(
            "reason", "")))
    for name, entry in sorted((now.get("fence_peer") or {}).items()):
        old = (before.get("fence_peer") or {}).get(name) or {}
        if previous is None or old.get("time") == entry.get("time") or \
                entry.get("event") != "fence-peer":
            continue
        ok = entry.get("exit") in (3, 4, 7)
        found.append(make("fence-peer" if ok else "fence-peer-failed", name,
                          "DRBD fence-peer handler on %s: exit %s: %s" % (
                              name, entry.get("exit"), entry.get("outcome")),
                          took_s=entry.get("duration_s"), peer=entry.get("peer")))
    fenced = set(now.get("self_fenced") or [])
    new = sorted(fenced - set(before.get("self_fenced") or []))
    if new and previous is not None:
        found.append(make("self-fenced", ", ".join(new),
                          "this host stopped serving %s: its I/O stayed frozen because the "
                          "peer could not be outdated; see iscsi-cfg status" % ", ".join(new),
                          reason=(current.get("decision") or {}).get("reason")))
    decision = current.get("decision") or {}
    promoting = any(isinstance(a, str) and a.startswith("promote ")
                    for a in decision.get("actions") or [])
    risks = [r for r in decision.get("risks") or [] if isinstance(r, str)]
    if promoting and risks:
        found.append(make("unfenced-failover", "", "promoting WITHOUT proof that the data is "
                          "current: %s" % "; ".join(risks), reason=decision.get("reason", "")))
    return found


def _deposed_primary(document):
    """The witness deposed this host while one of its DRBD resources is Primary."""
    document = document or {}
    return bool((document.get("witness") or {}).get("deposed") and any(
        (state or {}).get("role") == "Primary" for state in (document.get("drbd") or {}).values()
        if isinstance(state, dict)))


def _witness_alerts(previous, current):
    """One alert when the mediator becomes unreachable, one when it is back, one when it was
    rolled back, one when it deposed this host."""
    now = current.get("witness")
    if not now:
        return []
    before = (previous or {}).get("witness") or {}
    found = []
    where = now.get("address") or "?"
    if not now.get("reachable") and now.get("error") not in (None, "no answer yet") and \
            (before.get("reachable") or not before):
        found.append(make("mediator-unreachable", "", "mediator %s unreachable (%s): automatic "
                          "failover is off; no effect on I/O" % (where, now.get("error")),
                          address=where))
    if now.get("reachable") and before and not before.get("reachable") and \
            before.get("error") not in (None, "no answer yet"):
        found.append(make("mediator-reachable", "", "mediator %s reachable again (generation "
                          "%s)" % (where, now.get("generation")), address=where))
    if now.get("rolled_back") and not before.get("rolled_back"):
        found.append(make("mediator-rolled-back", "", now["rolled_back"], address=where))
    # deposed matters (and the agent demotes) only on a Primary: a Secondary that is outdated
    # at the mediator (back after a failover, still resyncing) is not about to lose data
    if _deposed_primary(current) and not _deposed_primary(previous):
        found.append(make("mediator-deposed", "", "the mediator made %s primary at generation "
                          "%s and lists this host as outdated: demoting"
                          % (now.get("primary"), now.get("generation")), address=where))
    return found


def _state_error(document):
    return ((document or {}).get("state_dir") or {}).get("error", "")


def _state_dir_alerts(previous, current):
    """The state directory cannot be written (read-only, full): the status file may be out of
    reach, so this alert goes by mail and XAPI message, naming the directory and the error."""
    now, before = _state_error(current), _state_error(previous)
    directory = (current.get("state_dir") or (previous or {}).get("state_dir") or {}).get(
        "path", "")
    if now and now != before:
        return [make("state-dir-failed", directory, "state directory %s cannot be used: %s; "
                     "passes go on" % (directory, now), error=now)]
    if before and not now:
        return [make("state-dir-recovered", directory, "state directory %s usable again"
                     % directory, previous_error=before)]
    return []


def alerts_for_transition(previous, current):
    """[Alert] for what changed from ``previous`` (a status document or None) to ``current``."""
    found = _restart_alerts(previous, current)
    found.extend(_fencing_alerts(previous, current))
    found.extend(_state_dir_alerts(previous, current))
    found.extend(_drbd_alerts(previous, current))
    found.extend(_action_alerts(previous, current))
    found.extend(_blocked_alerts(previous, current))
    found.extend(_role_alerts(previous, current))
    found.extend(_witness_alerts(previous, current))
    return found
