"""The status document the agent publishes after every pass (JSON, written atomically).

Keys (version 1) — ``iscsi-cfg status --json`` prints this document plus ``agent_running`` and
``stale``:
  version, hostname, updated (epoch s), updated_iso, agent {pid, version, started},
  pass {number, started, duration_s, trigger}, pool {role, master_address, detail},
  manual_mode, desired_role, drbd {resource: {role, peer_role, connection, disk, peer_disk,
  sync_percent}}, drbd_error, split_brain [resources], target {running, serving, missing, connections, error},
  floating_ip {address, interface, local, error}, decision {reason, actions, healthy, verdict,
  blockers, must_serve}, verdict ("ok" | "acting" | "waiting" | "holding" | "blocked"),
  blockers [{kind, resource, detail, waits}], service {must_serve, unserved, since, for_s,
  blocked, blockers}, last_actions [{action, ok, duration_s, detail, skipped, at}], health
  ("ok" | "degraded" | "failed"), problems [sentences], faults {place: {count, last_error,
  last_at}}, hung_passes.

Health, alerts and the CLI read ``verdict``, ``blockers`` and ``service``, never ``reason``.
"""
import json
import os
import socket
import time

from iscsi_ha import __version__
from iscsi_ha.model import Verdict
from iscsi_ha.files import atomic_write

FORMAT_VERSION = 1


def _drbd_dict(state):
    return {
        "role": state.role, "peer_role": state.peer_role, "connection": state.connection,
        "disk": state.disk, "peer_disk": state.peer_disk, "sync_percent": state.sync_percent,
        "suspended": getattr(state, "suspended", False),
    }


def fencing_dict(obs):
    """The fencing part of the status: proof, frozen I/O, self-fence, last handler runs."""
    fencing = getattr(obs, "fencing", None)
    if fencing is None:
        return None
    return {"proven": dict(fencing.proven), "unproven": dict(fencing.unproven),
            "allow_unfenced_failover": fencing.allow_unfenced,
            "frozen_s": dict(fencing.frozen_s), "self_fence_after_s": fencing.self_fence_after,
            "self_fenced": list(fencing.self_fenced), "forced": list(fencing.forced),
            "fence_peer": dict((k, dict(v)) for k, v in fencing.records.items())}


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch))


def problems_of(observation, decision, results, service=None):
    """Sentences an admin must read: failed actions, refusals, a degraded replication."""
    found = ["%s failed: %s" % (r.action.describe(), r.detail)
             for r in results if not r.ok and not r.skipped]
    if not decision.healthy and not decision.actions:
        found.append(decision.reason)
    if service and service.get("blocked"):
        found.append("this host should serve the storage and does not: %s" % "; ".join(
            b["detail"] or b["kind"] for b in service.get("blockers") or []))
    vip = observation.vip
    if vip is not None and vip.conflict_error:
        found.append("floating IP conflict check failed: %s" % vip.conflict_error)
    for name, state in sorted(observation.drbd.items()):
        if not state.is_connected:
            found.append("%s: replication link down (%s)" % (name, state.connection))
        elif state.peer_disk != "UpToDate":
            found.append("%s: peer disk %s" % (name, state.peer_disk))
        if state.is_syncing:
            found.append("%s: resync %s (%s%%)" % (name, state.connection,
                                                   state.sync_percent))
        elif state.disk != "UpToDate":
            found.append("%s: local disk %s" % (name, state.disk))
    return found


def health_of(decision, results, problems, service=None):
    """"failed" when an action failed, the verdict is ``blocked`` (a refusal) or this host
    should serve and is blocked from it (see ``service``); "degraded" when anything else is not
    as it should be; "ok" otherwise. Reads the verdict, never the reason sentence."""
    if any(not r.ok and not r.skipped for r in results):
        return "failed"
    if decision.verdict == Verdict.BLOCKED or (service and service.get("blocked")):
        return "failed"
    return "degraded" if problems or not decision.healthy else "ok"


def build(record, config, number, started_at, trigger, last_actions):
    obs, decision = record.observation, record.decision
    service = record.service or {}
    problems = problems_of(obs, decision, record.results, service)
    now = time.time()
    return {
        "version": FORMAT_VERSION,
        "hostname": socket.gethostname(),
        "updated": now,
        "updated_iso": _iso(now),
        "agent": {"pid": os.getpid(), "version": __version__, "started": started_at},
        "pass": {"number": number, "started": record.started,
                 "duration_s": round(record.duration, 4), "trigger": trigger},
        "pool": {"role": obs.pool.role, "master_address": obs.pool.master_address,
                 "detail": obs.pool.detail},
        "manual_mode": obs.manual,
        "desired_role": decision.desired,
        "drbd": {name: _drbd_dict(state) for name, state in obs.drbd.items()},
        "drbd_error": obs.drbd_error,
        "split_brain": list(obs.split_brain),
        "target": None if obs.target is None else {
            "running": obs.target.running, "serving": obs.target.serving,
            "missing": list(obs.target.missing), "connections": obs.target.connections,
            "error": obs.target.error},
        "floating_ip": {"address": "%s/%s" % (config.DRBD_VIRTUAL_IP, config.DRBD_VIRTUAL_MASK),
                        "interface": config.DRBD_INTERFACE,
                        "local": None if obs.vip is None else obs.vip.local,
                        "error": "" if obs.vip is None else obs.vip.error,
                        "interface_up": None if obs.vip is None else obs.vip.interface_up,
                        "carrier": None if obs.vip is None else obs.vip.carrier,
                        "conflict": [] if obs.vip is None else list(obs.vip.conflict),
                        "conflict_error": "" if obs.vip is None else obs.vip.conflict_error},
        "decision": {"reason": decision.reason, "healthy": decision.healthy,
                     "actions": [a.describe() for a in decision.actions],
                     "verdict": decision.verdict.value, "must_serve": decision.must_serve,
                     "risks": list(decision.risks),
                     "blockers": [b.to_dict() for b in decision.blockers]},
        "verdict": decision.verdict.value,
        "blockers": service.get("blockers", [b.to_dict() for b in decision.blockers]),
        "service": service,
        "last_actions": last_actions,
        "fencing": fencing_dict(obs),
        "health": health_of(decision, record.results, problems, service),
        "problems": problems,
        "witness": None if obs.witness is None else dict(obs.witness.status, **{
            "granted": obs.witness.granted, "reason": obs.witness.reason,
            "deposed": obs.witness.deposed,
            "failover_allowed": obs.witness.failover_allowed}),
    }


def mark_state_problem(document, directory, problem):
    """The state directory (pass lock, status) cannot be written: health "failed", the problem
    listed, and ``state_dir`` {path, error} for the alerts."""
    state = document.setdefault("state_dir", {"path": directory, "error": ""})
    state["error"] = "; ".join(p for p in (state.get("error"), problem) if p)
    document["health"] = "failed"
    document.setdefault("problems", []).append("state directory %s: %s" % (directory, problem))
    return document


def results_to_list(results, at):
    return [{"action": r.action.describe(), "ok": r.ok, "duration_s": round(r.duration, 4),
             "detail": r.detail, "skipped": r.skipped, "at": at} for r in results]


def write(path, document):
    """One line of compact JSON: without ``indent`` the json module encodes in C, about a
    quarter of the pure-Python indenting encoder's cost, on every pass (``iscsi-cfg status
    --json`` prints it indented)."""
    atomic_write(path, json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")

