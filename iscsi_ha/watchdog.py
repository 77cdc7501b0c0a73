"""The watchdog: restarts the iscsi-ha agent when it is dead or its status heartbeat is stale.

Every WATCH_INTERVAL seconds it looks at the agent:
  - ``stopped by admin``: STATE_DIR/stopped-by-admin exists (the init script writes it on
    ``stop`` and removes it on ``start``): nothing is done, so a stop is never undone;
  - ``dead``: no pid in AGENT_PID_FILE, or that pid is not a live ``iscsi-ha run`` process;
  - ``stale``: alive, but its status's ``updated`` (STATUS_FILE or its LOCK_FALLBACK_DIR copy)
    is older than the one staleness rule, :func:`iscsi_ha.agent_status.stale_after`
    (MONITOR_DELAY + the pass budget + WATCH_MARGIN), which iscsi-cfg uses too. A process that has not
    published yet gets the same allowance from its start, plus XAPI_INIT_WAIT while xapi's
    init cookie is missing (the agent waits for xapi before its first pass);
  - ``starting`` / ``running``: fine.
Dead: AGENT_START_COMMAND is run. Stale: the agent's process group (and its children) get
SIGKILL first. Each restart is counted in WATCHDOG_STATE_FILE (STATE_DIR/watchdog.json, with
times), logged, and raised through the alert hook (``alert(kind, severity, text)``;
by default :mod:`iscsi_ha.alerts`, kind ``agent-restarted``).

A hung pass inside a live agent is the agent's own job (MONITOR_MAX_STARTS/KILLALL); this covers
the agent process itself. ``iscsi-ha-watchdog demote`` is the init script's ``demote-stop``
helper: manual mode secondary, then wait until the status shows this host demoted. The pid
files, the admin's stop record and demote live in :mod:`iscsi_ha.service` (re-exported here).
"""
import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import namedtuple

import psutil

from iscsi_ha import __version__, agent_status, config as config_mod, errors, logsetup
from iscsi_ha.adapters.run import CommandError, run, split_command
from iscsi_ha.errors import ExitCode
from iscsi_ha.files import atomic_write, read_json
from iscsi_ha.passlock import lock_paths

# The init scripts' helpers, re-exported for this module's importers.
from iscsi_ha.service import (  # noqa: F401
    ADMIN_STOP_NAME, LOCK_WAIT, agent_process, clear_stopped, demote, demoted, looks_like_agent,
    mark_stopped, read_pid, remove_pid_file, write_pid_file)

log = logging.getLogger("iscsi-ha")

# The watchdog's configuration keys (validated by config.py's CONFIGSPEC, defaults there).
DEFAULTS = (("WATCH_INTERVAL", 5.0), ("WATCH_MARGIN", 5.0), ("AGENT_PID_FILE", ""),
            ("WATCHDOG_PID_FILE", ""), ("WATCHDOG_STATE_FILE", ""),
            ("AGENT_START_COMMAND", ""), ("AGENT_START_TIMEOUT", 60.0))
HISTORY_KEPT = 50
KILL_WAIT = 5.0
RUNNING, STARTING, STALE, DEAD, ADMIN_STOPPED = (
    "running", "starting", "stale", "dead", "stopped by admin")
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_STOPPED = (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE,
                                              ExitCode.STOPPED)
# XAPI message priorities, as iscsi_ha.alerts uses them (1 most urgent .. 5 information).
SEVERITY_RESTARTED, SEVERITY_NOT_RESTARTED = 3, 2
# Restarts in a row that did not bring the agent to "running": after the second, the next one
# waits WATCH_INTERVAL x 2^(n-1), at most BACKOFF_MAX seconds (AGENT_START_COMMAND=/bin/false
# must not mean a restart every interval forever).
BACKOFF_MAX = 300.0

AgentView = namedtuple("AgentView", "verdict pid detail")


class Settings(object):
    """Everything the watchdog needs, resolved from a loaded :class:`config.Config`."""

    def __init__(self, **values):
        self.__dict__.update(values)

    @classmethod
    def from_config(cls, config):
        v = {key: getattr(config, key) for key, _ in DEFAULTS}
        state = config.STATE_DIR
        v.update(WATCHDOG_STATE_FILE=v["WATCHDOG_STATE_FILE"] or os.path.join(
            state, "watchdog.json"), ADMIN_STOP_FILE=os.path.join(state, ADMIN_STOP_NAME),
            STATUS_FILE=config.STATUS_FILE, STATUS_PATHS=agent_status.paths(config),
            MANUAL_FILE=config.MANUAL_FILE, XAPI_INIT_COOKIE=config.XAPI_INIT_COOKIE,
            XAPI_INIT_WAIT=config.XAPI_INIT_WAIT,
            STALE_AFTER=agent_status.stale_after(config))
        v["LOCK_FILE"], v["LOCK_FALLBACK"] = lock_paths(config)
        return cls(**v)


# -- the agent's process -------------------------------------------------------------------
def kill_agent(pid, wait=KILL_WAIT):
    """SIGKILL the agent, its process group when it leads one, and its children (the
    commands it runs sit in sessions of their own). Returns a sentence."""
    try:
        proc = psutil.Process(pid)
        victims = [proc] + proc.children(recursive=True)
        group = os.getpgid(pid)
    except (psutil.Error, OSError):
        return "pid %d already gone" % pid
    if group == pid and group != os.getpgrp():
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(victims, timeout=wait)
    if alive:
        return "SIGKILL sent; %d process(es) still alive after %.0f s: %s" % (
            len(alive), wait, ", ".join(str(p.pid) for p in alive))
    return "killed pid %d and %d other process(es)" % (pid, len(victims) - 1)


def _status_of(status_paths):
    """(pid, updated) from the agent's status (STATUS_FILE or its fallback copy, the newer), or
    None (also for a malformed document: NaN, a future ``updated``, wrong types; read by the
    shared defensive reader)."""
    doc = agent_status.newer_of(status_paths, full=False).document
    pid = None if doc is None else (doc.get("agent") or {}).get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return pid, float(doc["updated"])


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# -- restarts, counted and kept --------------------------------------------------------------
class History(object):
    """WATCHDOG_STATE_FILE: ``{"restarts": N, "failed": N, "history": [...last 50...]}``."""

    def __init__(self, path):
        self.path = path
        self.data = {"restarts": 0, "failed": 0, "history": []}
        try:
            loaded = read_json(path)
            if isinstance(loaded, dict) and isinstance(loaded.get("history"), list):
                self.data.update(loaded)
        except (IOError, OSError, ValueError, RecursionError):
            pass

    @property
    def restarts(self):
        return int(self.data.get("restarts", 0))

    def record(self, at, verdict, detail, ok, outcome):
        data = self.data
        data["restarts"], data["last"] = self.restarts + 1, at
        data["failed"] = int(data.get("failed", 0)) + (0 if ok else 1)
        data["history"] = (data["history"] + [{
            "at": at, "at_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(at)),
            "verdict": verdict, "detail": detail, "ok": ok, "outcome": outcome}])[-HISTORY_KEPT:]
        try:
            atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        except (IOError, OSError) as exc:
            log.error("watchdog: cannot write %s: %s", self.path, exc)


def alert_hook(config):
    """``(alert, close)``: ``alert(kind, severity, text)`` through :mod:`iscsi_ha.alerts`
    (email when MAIL_ON=1) and its shutdown; ``(None, None)`` when that path is unusable."""
    try:
        from iscsi_ha import alerts
        from iscsi_ha.alerts import events
        dispatcher = alerts.build_dispatcher(config)
    except Exception as exc:  # absent, or refusing this configuration: the watchdog goes on
        log.warning("watchdog: alerts are off: %s", exc)
        return None, None

    def alert(kind, severity, text):
        dispatcher.submit(events.make(kind, summary=text, severity=severity))
    return alert, lambda: dispatcher.close(timeout=5.0)


class Watchdog(object):
    def __init__(self, settings, alert=None, runner=run, clock=time.time,
                 monotonic=time.monotonic):
        self.s = settings
        self.alert = alert
        self.runner = runner
        self.clock = clock
        self.monotonic = monotonic
        self.history = History(settings.WATCHDOG_STATE_FILE)
        self.last_view = None
        self.streak = 0             # restarts since the agent was last seen running
        self.not_before = None      # monotonic time before which no restart is tried
        self.waiting_said = False

    def observe(self):
        """What the agent is doing now, as an :class:`AgentView`. Acts on nothing."""
        if os.path.exists(self.s.ADMIN_STOP_FILE):
            return AgentView(ADMIN_STOPPED, None, "marker %s exists" % self.s.ADMIN_STOP_FILE)
        pid = read_pid(self.s.AGENT_PID_FILE)
        if pid is None:
            return AgentView(DEAD, None, "no pid in %s" % self.s.AGENT_PID_FILE)
        proc = agent_process(pid)
        if proc is None:
            return AgentView(DEAD, pid, "pid %d from %s is not a running iscsi-ha agent" %
                             (pid, self.s.AGENT_PID_FILE))
        try:
            started = proc.create_time()
        except psutil.Error:
            return AgentView(DEAD, pid, "pid %d exited while being checked" % pid)
        return self._freshness(pid, started, self.clock())

    def _freshness(self, pid, started, now):
        status = _status_of(self.s.STATUS_PATHS)
        if status is not None and status[0] == pid and status[1] >= started - 1:
            age = now - status[1]
            if age <= self.s.STALE_AFTER:
                return AgentView(RUNNING, pid, "status %.1f s old" % age)
            return AgentView(STALE, pid, "status %.1f s old, limit %.1f s" %
                             (age, self.s.STALE_AFTER))
        cookie = _mtime(self.s.XAPI_INIT_COOKIE)
        waited = self.s.XAPI_INIT_WAIT if cookie is None else max(0.0, cookie - started)
        allowed = waited + self.s.STALE_AFTER
        if now - started <= allowed:
            return AgentView(STARTING, pid, "no status yet, %.0f s after start (allowed %.0f s)"
                             % (now - started, allowed))
        return AgentView(STALE, pid, "no status from pid %d %.0f s after it started (allowed "
                         "%.0f s)" % (pid, now - started, allowed))

    def tick(self):
        """One look; restart the agent when it is dead or stale. Returns the view."""
        view = self.observe()
        changed = self.last_view is None or view.verdict != self.last_view.verdict
        self.last_view = view
        if view.verdict == RUNNING and self.streak:
            log.info("watchdog: agent running again after %d restart(s); backoff reset",
                     self.streak)
            self.streak, self.not_before = 0, None
        if view.verdict in (DEAD, STALE):
            if self.not_before is not None and self.monotonic() < self.not_before:
                if not self.waiting_said:
                    self.waiting_said = True
                    log.warning("watchdog: agent %s (%s); backing off: next restart in %.1f s",
                                view.verdict, view.detail, self.not_before - self.monotonic())
                return view
            self.recover(view)
            self._back_off()
        elif changed:
            log.info("watchdog: agent %s (%s)%s", view.verdict, view.detail,
                     "; it is not restarted" if view.verdict == ADMIN_STOPPED else "")
        return view

    def recover(self, view):
        steps = []
        if view.verdict == STALE and view.pid is not None:
            steps.append(kill_agent(view.pid))
        argv = split_command(self.s.AGENT_START_COMMAND)
        try:
            result = self.runner(argv, self.s.AGENT_START_TIMEOUT)
            ok, outcome = result.ok, result.describe()
        except CommandError as exc:
            ok, outcome = False, str(exc)
        steps.append(outcome)
        at = self.clock()
        self.history.record(at, view.verdict, view.detail, ok, "; ".join(steps))
        text = "watchdog: agent %s (%s): %s -> %s (restart %d)" % (
            view.verdict, view.detail, "killed and restarted" if view.verdict == STALE
            else "restarted", "; ".join(steps), self.history.restarts)
        log.log(logging.WARNING if ok else logging.ERROR, "%s", text)
        self._alert("agent-restarted", SEVERITY_RESTARTED if ok else SEVERITY_NOT_RESTARTED,
                    text)
        return ok

    def delay(self, streak):
        """Seconds to wait after ``streak`` restarts in a row before the next one."""
        if streak < 2:
            return 0.0
        return min(BACKOFF_MAX, self.s.WATCH_INTERVAL * 2 ** min(streak - 1, 32))

    def _back_off(self):
        self.streak += 1
        self.waiting_said = False
        delay = self.delay(self.streak)
        self.not_before = self.monotonic() + delay if delay else None
        if delay and (self.streak == 2 or delay >= BACKOFF_MAX > self.delay(self.streak - 1)):
            text = ("watchdog: %d restarts in a row have not brought the agent to running; "
                    "backing off: the next restart in %.1f s%s. Check AGENT_START_COMMAND and "
                    "`iscsi-cfg log`" % (self.streak, delay, ", and every %.0f s from now on"
                                         % BACKOFF_MAX if delay >= BACKOFF_MAX else
                                         " (doubling up to %.0f s)" % BACKOFF_MAX))
            log.error("%s", text)
            self._alert("agent-restart-backoff", SEVERITY_NOT_RESTARTED, text)

    def _alert(self, kind, severity, text):
        if self.alert is None:
            return
        try:
            self.alert(kind, severity, text)
        except Exception as exc:  # an alert path failure must never stop the watchdog
            log.error("watchdog: alert %s not sent: %s", kind, exc)

    def run(self, stop, max_ticks=None):
        """Tick every WATCH_INTERVAL until ``stop`` (a threading.Event) is set."""
        ticks = 0
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("watchdog: check failed")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                return
            stop.wait(self.s.WATCH_INTERVAL)


# -- command line --------------------------------------------------------------------------
def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="configuration file (default $ISCSI_HA_CONFIG or %s)" %
                        config_mod.DEFAULT_PATH)
    parser = argparse.ArgumentParser(prog="iscsi-ha-watchdog", parents=[common], description=
                                     "Restarts the iscsi-ha agent when it dies or its status "
                                     "goes stale.")
    parser.add_argument("--version", action="version", version="iscsi-ha-watchdog " +
                        __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run_cmd = sub.add_parser("run", parents=[common], help="watch the agent (foreground)")
    run_cmd.add_argument("--pid-file", metavar="PATH", help="default WATCHDOG_PID_FILE")
    run_cmd.add_argument("--once", action="store_true", help="one check, then exit")
    sub.add_parser("check", parents=[common], help="print what the watchdog sees; exit 0 "
                   "running or starting, 1 dead or stale, 3 stopped by the admin")
    sub.add_parser("mark-stopped", parents=[common], help="record that the admin stopped "
                   "the agent (the watchdog then leaves it stopped)")
    sub.add_parser("clear-stopped", parents=[common], help="remove that record")
    dem = sub.add_parser("demote", parents=[common], help="manual mode secondary, then wait "
                         "until the status shows this host demoted")
    dem.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")
    return parser


def _cmd_run(settings, config, pid_file, once):
    other = read_pid(pid_file)
    if other not in (None, os.getpid()) and agent_process(
            other, lambda argv: any("watchdog" in a for a in argv)) is not None:
        sys.stderr.write("iscsi-ha-watchdog: already running as pid %d\n" % other)
        return EXIT_FAIL
    logsetup.setup(config, stderr=True)
    write_pid_file(pid_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("watchdog: started (pid %d), checking the agent every %.1f s; stale after %.1f s",
             os.getpid(), settings.WATCH_INTERVAL, settings.STALE_AFTER)
    alert, close_alerts = alert_hook(config)
    try:
        Watchdog(settings, alert=alert).run(stop, 1 if once else None)
    finally:
        remove_pid_file(pid_file)
        if close_alerts is not None:
            close_alerts()
    return EXIT_OK


def _dispatch(args, settings, config):
    if args.command == "run":
        return _cmd_run(settings, config, args.pid_file or settings.WATCHDOG_PID_FILE,
                        args.once)
    if args.command == "check":
        view = Watchdog(settings).observe()
        sys.stdout.write("agent %s: %s\n" % (view.verdict, view.detail))
        return {RUNNING: EXIT_OK, STARTING: EXIT_OK, ADMIN_STOPPED: EXIT_STOPPED}.get(
            view.verdict, EXIT_FAIL)
    if args.command == "demote":
        ok, sentence = demote(settings, args.timeout)
        sys.stdout.write(sentence + "\n")
        return EXIT_OK if ok else EXIT_FAIL
    (mark_stopped if args.command == "mark-stopped" else clear_stopped)(settings)
    return EXIT_OK


def main(argv=None):
    """The exit code of ``iscsi-ha-watchdog ARGV``; an unexpected error is one line and a trace
    file (:mod:`iscsi_ha.errors`)."""
    return errors.guard("iscsi-ha-watchdog", _main, argv)


def _main(argv):
    args = _parser().parse_args(argv)
    try:
        config = config_mod.load(getattr(args, "config", None) or config_mod.default_path())
        errors.note_config(config)
        settings = Settings.from_config(config)
    except config_mod.ConfigError as exc:
        sys.stderr.write("iscsi-ha-watchdog: invalid configuration %s\n" % exc)
        return EXIT_USAGE
    try:
        return _dispatch(args, settings, config)
    except (IOError, OSError) as exc:
        sys.stderr.write("iscsi-ha-watchdog %s: %s\n" % (args.command, exc))
        return EXIT_FAIL


def main_exit():
    sys.exit(int(main()))


if __name__ == "__main__":
    main_exit()
