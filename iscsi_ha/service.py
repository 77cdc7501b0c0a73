"""The agent as a service: its pid file and process, the admin's stop record, and demote-stop.

These are the helpers behind the init scripts' calls ``iscsi-ha-watchdog
mark-stopped|clear-stopped|demote`` (:mod:`iscsi_ha.watchdog`'s command line, which re-exports
them), and what the watchdog itself uses to find the agent:
  - the pid files: :func:`read_pid`, :func:`write_pid_file`, :func:`remove_pid_file`; a pid counts
    only while :func:`agent_process` finds a live process whose command line is the agent's;
  - ``stopped by admin``: STATE_DIR/stopped-by-admin (:data:`ADMIN_STOP_NAME`), written by
    :func:`mark_stopped` on the init script's ``stop`` and removed by :func:`clear_stopped` on
    ``start``; while it exists the watchdog leaves the agent stopped;
  - :func:`demote`, the init script's ``demote-stop`` helper: manual mode secondary (under the
    agent's pass lock), then wait until the status shows this host demoted.
"""
import errno
import os
import time

import psutil

from iscsi_ha import model
from iscsi_ha import status_read
from iscsi_ha.files import atomic_write
from iscsi_ha.passlock import PassLock, PassLockBusy

ADMIN_STOP_NAME = "stopped-by-admin"
LOCK_WAIT = 30.0


# -- the agent's process -------------------------------------------------------------------
def read_pid(path):
    from iscsi_ha.files import SMALL_LIMIT, read_text
    try:
        text = read_text(path, SMALL_LIMIT).strip()
    except (IOError, OSError):
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def looks_like_agent(argv):
    """True for ``[python] .../iscsi-ha run ...`` or ``python -m iscsi_ha.cli.agent_main run``."""
    for index, arg in enumerate(argv):
        if os.path.basename(arg) == "iscsi-ha" or arg == "iscsi_ha.cli.agent_main":
            return "run" in argv[index + 1:]
    return False


def agent_process(pid, matcher=looks_like_agent):
    """The live, non-zombie process ``pid`` if its command line is the agent's, else None."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or not matcher(proc.cmdline()):
            return None
        return proc
    except psutil.Error:
        return None


# -- pid files and the admin's stop record ----------------------------------------------------
def write_pid_file(path, pid=None):
    atomic_write(path, "%d\n" % (os.getpid() if pid is None else pid))


def remove_pid_file(path, pid=None):
    """Remove ``path`` if it still holds ``pid`` (default: this process)."""
    if read_pid(path) == (os.getpid() if pid is None else pid):
        try:
            os.unlink(path)
        except OSError:
            pass


def mark_stopped(settings, who="the init script"):
    atomic_write(settings.ADMIN_STOP_FILE, "agent stopped by the admin at %s through %s\n" % (
        time.strftime("%Y-%m-%dT%H:%M:%S%z"), who))


def clear_stopped(settings):
    try:
        os.unlink(settings.ADMIN_STOP_FILE)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


# -- demote-stop -------------------------------------------------------------------------------
def _write_manual_locked(settings, mode, wait=LOCK_WAIT):
    """Set manual mode under the agent's pass lock (:mod:`iscsi_ha.passlock`: the same file as
    the agent, its fallback included), waiting at most ``wait`` seconds."""
    from iscsi_ha.adapters.manual import write_manual
    with PassLock(settings.LOCK_FILE, timeout=wait, fallback=settings.LOCK_FALLBACK):
        write_manual(settings.MANUAL_FILE, mode)


def demoted(doc, since):
    """True when a pass that started after ``since`` saw this host fully Secondary."""
    try:
        drbd = doc["drbd"]
        return (doc["pass"]["started"] >= since and doc["desired_role"] == model.SECONDARY
                and not doc["decision"]["actions"] and len(drbd) > 0
                and all(state["role"] == "Secondary" for state in drbd.values())
                and not (doc.get("target") or {}).get("running")
                and not (doc.get("floating_ip") or {}).get("local"))
    except (KeyError, TypeError, AttributeError):
        return False


def demote(settings, timeout, poll=0.2):
    """Manual mode ``become_secondary``, then wait (bounded) for the agent to report this host
    demoted. Returns (ok, sentence). The manual mode stays set: the admin disables it."""
    pid = read_pid(settings.AGENT_PID_FILE)
    if agent_process(pid) is None:
        return False, "the agent is not running, so it cannot demote this host"
    since = time.time()
    try:
        _write_manual_locked(settings, model.MANUAL_SECONDARY)
    except PassLockBusy as exc:
        return False, "the agent's pass lock stayed busy for %.0f s (a hung pass?): %s; " \
            "nothing was changed" % (LOCK_WAIT, exc)
    deadline = time.monotonic() + timeout
    reason = "no status"
    while time.monotonic() < deadline:
        doc = status_read.read(settings.STATUS_FILE, full=False).document
        try:
            if doc is not None and demoted(doc, since):
                return True, "demoted: %s" % (doc.get("decision") or {}).get("reason", "")
            reason = ((doc or {}).get("decision") or {}).get("reason", reason)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        time.sleep(poll)
    return False, "not demoted after %.0f s (last: %s)" % (timeout, reason)
