"""One place that answers, from the status the agent publishes, whether the agent is running,
whether its status is stale, and whether it is healthy. ``iscsi-cfg`` (status, check, set,
switchover, the role verbs), the XAPI plugin and the watchdog all ask here, so they agree.

The staleness rule, the only one: a live agent publishes at the end of every pass; passes start
at least every MONITOR_DELAY, and a pass may run for its whole budget (PASS_BUDGET =
MONITOR_MAX_STARTS x MONITOR_SCANRATE) before it is declared hung and cut short; WATCH_MARGIN is
the slack for a busy machine. A status older than the sum is stale.

The status is read from STATUS_FILE, or from the copy in LOCK_FALLBACK_DIR when that is newer
(an agent whose state directory is read-only or full publishes there).
"""
import os
import time

from iscsi_ha import status_read
from iscsi_ha.errors import ExitCode

FALLBACK_NAME = "status"


def stale_after(config):
    """Seconds after which a status no longer shows a live, unhung agent."""
    return config.MONITOR_DELAY + config.PASS_BUDGET + config.WATCH_MARGIN


def paths(config):
    """(STATUS_FILE, its fallback copy or None)."""
    fallback = getattr(config, "LOCK_FALLBACK_DIR", "")
    return config.STATUS_FILE, (os.path.join(fallback, FALLBACK_NAME) if fallback else None)


def latest(config, now=None, full=True):
    """:class:`status_read.StatusRead` of the newer of STATUS_FILE and its fallback copy."""
    return newer_of(paths(config), now, full)


def newer_of(status_paths, now=None, full=True):
    """:class:`status_read.StatusRead` of the newer of (main, fallback or None)."""
    now = time.time() if now is None else now
    main, fallback = status_paths
    found = status_read.read(main, now, full=full)
    if fallback:
        copy = status_read.read(fallback, now, full=full)
        if copy.document is not None and (found.document is None or float(
                copy.document["updated"]) > float(found.document["updated"])):
            return copy
    return found


def running(document):
    """True when the document's ``agent.pid`` is a live iscsi-ha agent process."""
    from iscsi_ha.service import agent_process
    pid = (document.get("agent") or {}).get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False
    return agent_process(pid) is not None


def view(config, now=None):
    """The status document with ``agent_running``, ``age_s`` and ``stale`` added; a missing or
    unreadable one is health "unknown", not running, stale, with the reason."""
    now = time.time() if now is None else now
    found = latest(config, now)
    if found.document is None:
        return {"health": "unknown", "agent_running": False, "stale": True,
                "status_unknown": None if found.missing else found.problem,
                "problems": [found.problem]}
    document = found.document
    age = now - float(document["updated"])
    document["age_s"] = round(age, 3)
    document["stale"] = age > stale_after(config)
    document["agent_running"] = running(document)
    return document


def healthy(document):
    """Running, fresh and health "ok"."""
    return bool(document.get("agent_running") and not document.get("stale") and
                not document.get("status_unknown") and document.get("health") == "ok")


def exit_code(document):
    """0 healthy, 1 degraded or failed, 2 when nothing current is known (not running, stale,
    unreadable)."""
    if document.get("status_unknown") or not document.get("agent_running") or \
            document.get("stale"):
        return ExitCode.ERROR
    return ExitCode.OK if document.get("health") == "ok" else ExitCode.DEGRADED
