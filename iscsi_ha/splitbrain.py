"""Split brain: the admin's recovery (``iscsi-cfg split-brain``).

DRBD's ``split-brain`` handler (scripts/drbd-split-brain-handler) writes the flag file
STATE_DIR/split-brain-RES; while it exists the agent holds that resource (no automatic action).

* :func:`inspect` puts both sides side by side for every flagged or StandAlone resource (DRBD's
  state, data generation identifiers, amount of data out of sync) and names what each choice of
  survivor would discard. It, the flag file and the facts behind it live in
  :mod:`iscsi_ha.splitbrain_report` and are re-exported here.
* :func:`recover` coordinates the recovery from one host: after ``confirm(question)`` the victim
  runs ``disconnect`` (unless StandAlone), ``secondary``, ``connect --discard-my-data``; the
  survivor runs ``connect``; the resync is watched to its end; the flags are removed. Each host's
  share is :func:`local_part` (also what the XAPI plugin runs on the peer: ``peer_part(action)``
  with action "victim", "survivor", "clear-flag" or "facts"). Anything unexpected is refused.
"""
import contextlib
import os
import socket
import time

from iscsi_ha.adapters.run import CommandError
from iscsi_ha.drbd import DrbdParseError
from iscsi_ha.passlock import PassLock, PassLockBusy

# The flag file, the facts and the report, re-exported for this module's importers.
from iscsi_ha.splitbrain_report import (  # noqa: F401
    FLAG_PREFIX, Generations, Inspection, ResourceReport, clear_flag, compare_generations,
    flag_path, format_report, inspect, local_facts, parse_gi, parse_json_oos, parse_proc_oos,
    peer_facts, read_flag, write_flag)

RESYNC_TIMEOUT = 6 * 3600.0
CONNECT_TIMEOUT = 120.0
POLL = 1.0
LOCK_WAIT = 30.0
ACTIONS = ("victim", "survivor", "clear-flag", "facts")


class SplitBrainError(Exception):
    """The recovery stopped; the message says what was already done."""


class SplitBrainRefused(SplitBrainError):
    """Refused before anything was changed on this host."""


# -- recovery ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _pass_lock(config, wait=LOCK_WAIT, sleep=time.sleep):
    """The agent's pass lock (:mod:`iscsi_ha.passlock`), so that no pass runs between our
    steps."""
    lock = PassLock.of(config, timeout=wait, poll=0.1, sleep=sleep)
    try:
        lock.acquire()
    except PassLockBusy:
        raise SplitBrainRefused("the agent's pass lock %s stayed busy for %.0f s" % (
            lock.used, wait))
    try:
        yield
    finally:
        lock.release()


def _state(adapter, resource, error=SplitBrainRefused):
    try:
        return adapter.observe()[resource]
    except (DrbdParseError, CommandError) as exc:
        raise error("cannot read the DRBD state of %s: %s" % (resource, exc))


def _check(config, resource):
    if resource not in config.DRBD_RESOURCES:
        raise SplitBrainRefused("%s is not a configured DRBD resource (%s)" % (
            resource, ", ".join(config.DRBD_RESOURCES)))


def _victim(adapter, resource, state, release_device):
    steps = []
    try:
        if state.connection != "StandAlone":
            adapter.disconnect(resource)
            steps.append("disconnect")
        if state.is_primary:
            if release_device is not None:
                release_device(resource)
                steps.append("released the device")
            adapter.demote(resource)
            steps.append("secondary")
        adapter.connect(resource, discard_my_data=True)
        steps.append("connect --discard-my-data")
    except Exception as exc:  # DRBD's refusal, or the release hook's failure
        cls = SplitBrainError if steps else SplitBrainRefused
        raise cls("victim %s: %s (done before: %s)%s" % (
            resource, exc, ", ".join(steps) or "nothing", "; stop whatever holds the device "
            "open on this host (the iSCSI target) and try again" if "held open" in str(exc)
            else ""))
    return steps


def _survivor(adapter, resource, state):
    if state.disk != "UpToDate":
        raise SplitBrainRefused("survivor %s: this host's disk is %s, not UpToDate: DRBD "
                                "would not resync from it" % (resource, state.disk))
    if state.connection != "StandAlone":
        return []                    # already connecting or connected: nothing to do
    try:
        adapter.connect(resource)
    except CommandError as exc:
        raise SplitBrainRefused("survivor %s: %s" % (resource, exc))
    return ["connect"]


def recover_local_part(config, adapter, resource, role, host=None, release_device=None,
                       lock_wait=LOCK_WAIT):
    """This host's share of the recovery as ``role`` ("victim" or "survivor") -> dict.
    ``release_device(resource)`` runs before a Primary victim is demoted (stop the target)."""
    _check(config, resource)
    if role not in ("victim", "survivor"):
        raise SplitBrainRefused("unknown role %r (victim or survivor)" % (role,))
    with _pass_lock(config, lock_wait):
        state = _state(adapter, resource)
        if state.is_connected:
            raise SplitBrainRefused("%s is %s on this host: not in split brain" % (
                resource, state.describe()))
        if read_flag(config.STATE_DIR, resource) is None:      # the agent holds meanwhile
            write_flag(config.STATE_DIR, resource, reason="recovery in progress",
                       time="%d" % time.time())
        if role == "victim":
            steps = _victim(adapter, resource, state, release_device)
        else:
            steps = _survivor(adapter, resource, state)
        after = _state(adapter, resource, SplitBrainError)
    return {"host": host or socket.gethostname(), "resource": resource, "role": role,
            "steps": steps, "before": state.describe(), "state": after.describe()}


def local_part(config, adapter, resource, action, host=None, release_device=None):
    """What the XAPI plugin runs on the peer: one of ACTIONS -> JSON-ready dict."""
    if action == "facts":
        return local_facts(config, adapter, host)
    _check(config, resource)
    if action == "clear-flag":
        return {"resource": resource, "cleared": clear_flag(config.STATE_DIR, resource)}
    if action in ("victim", "survivor"):
        return recover_local_part(config, adapter, resource, action, host, release_device)
    raise SplitBrainRefused("unknown action %r (one of %s)" % (action, ", ".join(ACTIONS)))


def _resynced(state):
    return (state.is_connected and not state.is_syncing and state.disk == "UpToDate"
            and state.peer_disk == "UpToDate")


def wait_resync(adapter, resource, progress=None, timeout=RESYNC_TIMEOUT,
                connect_timeout=CONNECT_TIMEOUT, poll=POLL, sleep=time.sleep,
                clock=time.monotonic):
    """Watch ``resource`` until connected and UpToDate on both sides; ``progress(state)`` on
    every change. Bounded: SplitBrainError when DRBD is StandAlone again, not connected within
    ``connect_timeout`` or not in sync within ``timeout``."""
    start, last = clock(), None
    for _ in range(int(timeout / poll) + 2):
        state = _state(adapter, resource, SplitBrainError)
        if progress is not None and state != last:
            progress(state)
        last = state
        if _resynced(state):
            return state
        elapsed = clock() - start
        if state.is_standalone:
            raise SplitBrainError("%s: DRBD refused the connection again (%s)" % (
                resource, state.describe()))
        if not state.is_connected and elapsed >= connect_timeout:
            raise SplitBrainError("%s: the hosts did not connect within %.0f s (%s)" % (
                resource, connect_timeout, state.describe()))
        if elapsed >= timeout:
            break
        sleep(poll)
    raise SplitBrainError("%s: resync not finished within %.0f s (%s); it goes on, and the "
                          "flag stays until it is cleared" % (resource, timeout, last.describe()))


def _peer(peer_part, action, first):
    try:
        return peer_part(action)
    except Exception as exc:
        cls = SplitBrainRefused if first else SplitBrainError
        raise cls("the peer's %s step failed: %s%s" % (action, exc, "; nothing was changed "
                                                      "on this host" if first else ""))


def recover(config, adapter, resource, keep_local, confirm, peer_part, peer_status=None,
            host=None, progress=None, release_device=None, force=False, **watch):
    """Recover ``resource`` keeping this host's data (``keep_local``) or the peer's.
    ``confirm(question) -> bool``; ``peer_part(action) -> dict`` runs :func:`local_part` on the
    peer; ``watch``: wait_resync's timeout, connect_timeout, poll, sleep, clock."""
    _check(config, resource)
    inspection = inspect(config, adapter, peer_status, host)
    report = dict((r.resource, r) for r in inspection.reports).get(resource)
    if report is None or not report.split_brain:
        raise SplitBrainRefused("%s is not in split brain on %s; nothing to recover" % (
            resource, inspection.local_host))
    kept_host, kept, _, _ = report.side(keep_local)
    if kept.get("disk") not in (None, "UpToDate"):
        raise SplitBrainRefused("%s's disk is %s: DRBD would not resync from it" % (
            kept_host, kept.get("disk")))
    if report.keeps_older(keep_local) and not force:
        raise SplitBrainRefused("%s holds the OLDER data of %s (%s): keeping it would bring "
                                "back stale data; --force if that is really wanted" % (
                                    kept_host, resource, report.sentence))
    if not confirm(report.confirmation(keep_local)):
        raise SplitBrainRefused("not confirmed: nothing was changed")
    if keep_local:
        parts = [_peer(peer_part, "victim", True)]
        try:
            parts.append(recover_local_part(config, adapter, resource, "survivor", host))
        except SplitBrainError as exc:
            raise SplitBrainError("%s (the peer already ran its victim steps: %s)" % (
                exc, ", ".join(parts[0].get("steps") or []) or "none"))
    else:
        # The survivor's share (a connect) is harmless and proves the peer can act: it runs
        # first, so that this host never discards its data for a peer that cannot take over.
        survivor = _peer(peer_part, "survivor", True)
        parts = [recover_local_part(config, adapter, resource, "victim", host, release_device),
                 survivor]
    final = wait_resync(adapter, resource, progress, **watch)
    clear_flag(config.STATE_DIR, resource)
    _peer(peer_part, "clear-flag", False)
    return {"resource": resource, "kept": kept_host, "victim": parts[0], "survivor": parts[1],
            "state": final.describe()}
