"""The daemon loop: when to run a pass, and what to do with a pass that hangs.

Wake-ups: pool.conf or the manual-mode file changed (checked every POOL_POLL_INTERVAL), DRBD's
state changed (the adapter's cheap fingerprint, every DRBD_POLL_INTERVAL), a target daemon
process the last pass saw is gone (same period), or MONITOR_DELAY elapsed. While the host is not
as it should be, the timer is short (RETRY_DELAY) so that a failed step is retried promptly.

With the event sources of :mod:`iscsi_ha.wakeups` (inotify, DRBD's event stream, a connection
held to tgtd) the idle loop sleeps until an event or the timer, and wakes every
DRBD_POLL_INTERVAL only for what no event reports (:meth:`Watcher.must_poll`): DRBD without a
stream (8.4 before 8.4.6, or the stream is down), target daemon processes whose death no held
connection reports, and a move's fast window. An agent, primary or secondary, then wakes only
for events and the MONITOR_DELAY pass.
"""
import logging
import threading
import time

import psutil

from iscsi_ha.passlock import PassLock, PassLockBusy, lock_paths
from iscsi_ha.faults import Faults
from iscsi_ha.files import SMALL_LIMIT, read_text

log = logging.getLogger("iscsi-ha")
RETRY_DELAY = 1.0
# After pool.conf or the manual file changed (a move begins), DRBD and the target are looked at
# every FAST_POLL s for FAST_WINDOW s, so the peer's demote is seen at once even without DRBD's
# event stream; the rest of the time, every DRBD_POLL_INTERVAL.
FAST_POLL, FAST_WINDOW = 0.02, 5.0
# After the target daemon closed the connection held to it (iscsi_ha.wakeups.DaemonSocket),
# its processes are looked at every FAST_POLL s for this long.
TARGET_EXIT_WINDOW = 1.0


def _read(path):
    try:
        return read_text(path, SMALL_LIMIT)
    except (OSError, IOError) as exc:
        return "<%s>" % exc.__class__.__name__


class Watcher(object):
    """Tells the loop whether anything it reacts to has changed since the last pass."""

    def __init__(self, agent, clock=time.monotonic, wakeups=None):
        self.agent = agent
        self.wakeups = wakeups       # iscsi_ha.wakeups.Wakeups: read only what an event named
        self.config = agent.config
        self.clock = clock
        self.files_seen = None
        self.drbd_seen = None
        self.target_seen = None
        self.drbd_checked = float("-inf")
        self.fast_until = float("-inf")

    def _files(self):
        return (_read(self.config.POOL_CONF), _read(self.config.MANUAL_FILE))

    def _drbd(self):
        try:
            return self.agent.adapters.drbd.fingerprint()
        except Exception as exc:
            return "<%s>" % exc

    def _target(self):
        try:
            return self.agent.adapters.target.liveness()
        except Exception as exc:
            return "<%s>" % exc

    def remember(self):
        """Record the state a pass is about to observe (so that a change while it runs wakes
        the next pass)."""
        self.files_seen = self._files()
        # With DRBD's event stream up, its lines are the wake-up: no fingerprint command.
        streaming = self.wakeups is not None and self.wakeups.drbd_event_driven
        self.drbd_seen = None if streaming else self._drbd()
        self.drbd_checked = self.clock()

    def remember_target(self):
        """After a pass: the target daemon's processes that pass saw (and which live now), and
        the connection that makes their death an event."""
        self.target_seen = self._target()
        if self.wakeups is not None:
            self.wakeups.watch_target(self.target_seen)

    def must_poll(self, now=None):
        """Whether the idle loop must look every :meth:`poll_interval` (else an event or the
        timer wakes it): in a move's fast window, while DRBD has no event stream, and while the
        last pass saw target daemon processes whose death is not an event (no held connection
        covers them; an unreadable liveness counts as processes).

        A tgtd killed while one of its threads is stuck in I/O (DRBD frozen while fencing) is a
        zombie whose descriptors, its listening port among them, stay open until that thread
        ends: the end of file comes then, when a new tgtd could bind the port at all. The
        MONITOR_DELAY pass looks at it meanwhile."""
        now = self.clock() if now is None else now
        if now < self.fast_until:
            return True
        if self.wakeups is None or not self.wakeups.drbd_event_driven:
            return True
        return bool(self.target_seen) and not self.wakeups.target_event_driven

    def poll_interval(self, now=None):
        now = self.clock() if now is None else now
        if now < self.fast_until:
            return min(FAST_POLL, self.config.DRBD_POLL_INTERVAL)
        return self.config.DRBD_POLL_INTERVAL

    def changed(self):
        """Why a pass is due ('pool.conf/manual', 'drbd', 'target process gone'), else None."""
        wakeups = self.wakeups
        if (wakeups is None or wakeups.files_changed()) and self._files() != self.files_seen:
            return "pool.conf/manual"
        now = self.clock()
        poll_due = now - self.drbd_checked >= self.poll_interval(now)
        if poll_due:
            self.drbd_checked = now
        if wakeups is not None and wakeups.drbd_event_driven:
            if wakeups.drbd_changed():       # a line of drbdsetup events2: DRBD changed
                return "drbd"
        elif poll_due and (wakeups is None or wakeups.drbd_changed()) \
                and self._drbd() != self.drbd_seen:
            return "drbd"
        closed = wakeups is not None and wakeups.target_closed()
        if closed:
            # the daemon's end closed: it is exiting, and shows as gone (a zombie) a moment
            # later; look quickly until then
            self.fast_until = max(self.fast_until, now + TARGET_EXIT_WINDOW)
        if (poll_due or closed) and self._target() != self.target_seen:
            return "target process gone"
        return None


class Loop(object):
    def __init__(self, agent, stop_event=None):
        self.agent = agent
        self.config = agent.config
        self.stop = stop_event or threading.Event()
        self.watcher = Watcher(agent)
        self.lock_path, self.lock_fallback = lock_paths(self.config)
        faults = getattr(agent, "faults", None)
        self.faults = faults if isinstance(faults, Faults) else Faults()
        self.on_pass = None          # callback(record), e.g. the systemd watchdog ping
        self.on_hung = None          # callback(seconds, killed names), e.g. an alert
        self.on_idle = None          # callback(), between passes (never while a pass runs)
        self.wakeups = None          # iscsi_ha.wakeups.Wakeups (set_wakeups), else polling
        self.max_idle = None         # longest idle wait (seconds), e.g. systemd's ping interval

    def set_wakeups(self, wakeups):
        self.wakeups = self.watcher.wakeups = wakeups

    def _idle_wait(self, poll, due):
        if self.wakeups is None:
            self.stop.wait(poll)
            return
        timeout = max(0.0, due - time.monotonic())
        if self.max_idle is not None:       # on_idle pings systemd's watchdog after each wait
            timeout = min(timeout, self.max_idle)
        if not self.wakeups.files_event_driven:
            timeout = min(timeout, poll, self.watcher.poll_interval())
        elif self.watcher.must_poll():      # target liveness, no DRBD stream, a move's fast window
            timeout = min(timeout, self.watcher.poll_interval())
        self.wakeups.wait(timeout)

    @property
    def hung_passes(self):
        return getattr(self.agent, "hung_passes", 0)

    def _pass(self, trigger, box):
        try:
            lock = PassLock(self.lock_path, timeout=self.config.PASS_BUDGET / 2,
                            fallback=self.lock_fallback)
            with lock:
                self.agent.lock_problem = lock.problem
                box.append(self.agent.run_pass(trigger))
        except PassLockBusy as exc:
            log.warning("pass skipped: %s (an iscsi-cfg command at work?)", exc)
        except Exception as exc:
            self.faults.record("pass", exc)

    def run_pass(self, trigger):
        """Run one pass in a worker thread and wait for it, killing its children if it hangs."""
        box = []
        worker = threading.Thread(target=self._pass, args=(trigger, box), name="pass")
        worker.daemon = True
        worker.start()
        scans = 0
        while True:
            worker.join(self.config.MONITOR_SCANRATE)
            if not worker.is_alive():
                break
            scans += 1
            log.warning("pass still running after %.1f s", scans * self.config.MONITOR_SCANRATE)
            if scans >= self.config.MONITOR_MAX_STARTS:
                try:
                    self._hung(scans, first=scans == self.config.MONITOR_MAX_STARTS)
                except Exception as exc:  # the hung-pass handling must not end the daemon
                    self.faults.record("hung-pass handling", exc)
        return box[0] if box else None

    def _hung(self, scans, first=True):
        """A pass outlived its budget: kill its child processes (MONITOR_KILLALL=1) at every
        scan, and on the first such scan count it and call ``on_hung`` (seconds, names of the
        killed processes, ``[]`` when none were killed)."""
        killed = []
        if self.config.MONITOR_KILLALL:
            children = psutil.Process().children(recursive=True)
            killed = ["%d %s" % (c.pid, _name(c)) for c in children]
            log.error("pass hung for %d scans: killing %d child process(es): %s", scans,
                      len(children), ", ".join(killed))
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        else:
            log.error("pass hung for %d scans; MONITOR_KILLALL=0, so it is left to finish",
                      scans)
        if not first:
            return
        self.agent.hung_passes = self.hung_passes + 1
        self._call(self.on_hung, scans * self.config.MONITOR_SCANRATE, killed,
                   where="hook on_hung")

    def run(self, max_passes=None):
        """Run until ``stop`` is set (or ``max_passes`` passes ran)."""
        poll = min(self.config.POOL_POLL_INTERVAL, self.config.DRBD_POLL_INTERVAL)
        due, trigger, count = 0.0, "start", 0
        while not self.stop.is_set():
            try:
                if trigger is None and time.monotonic() >= due:
                    trigger = "timer"
                if trigger is None:
                    trigger = self.watcher.changed()
            except Exception as exc:  # a broken wake-up check must not end the agent
                self.faults.record("change check", exc)
                trigger = None
            if trigger is not None:
                if trigger in ("start", "pool.conf/manual"):
                    self.watcher.fast_until = self.watcher.clock() + FAST_WINDOW
                try:
                    record = self._one(trigger)
                except Exception as exc:  # nothing around a pass may end the daemon
                    self.faults.record("loop", exc)
                    record = None
                count += 1
                settled = record is not None and record.decision.healthy and all(
                    r.ok for r in record.results) and not record.results
                due = time.monotonic() + (self.config.MONITOR_DELAY if settled
                                          else min(RETRY_DELAY, self.config.MONITOR_DELAY))
                self._call(self.on_pass, record, where="hook on_pass")
                if max_passes is not None and count >= max_passes:
                    return
                trigger = None
                continue
            self._call(self.on_idle, where="hook on_idle")
            self._idle_wait(poll, due)

    def _one(self, trigger):
        # Remember what the pass is about to see *before* it runs: a change that lands while it
        # runs (pool.conf rewritten mid-pass) then wakes the next pass at once.
        self.faults.guard("change check", self.watcher.remember)
        record = self.run_pass(trigger)
        self.faults.guard("change check", self.watcher.remember_target)
        return record

    def _call(self, hook, *args, **kwargs):
        """Run a hook (systemd ping, replugger, alerts); its failure is logged once with its
        trace and counted (status ``faults``), never fatal."""
        if hook is None:
            return
        self.faults.guard(kwargs.get("where", "hook"), hook, *args)


def _name(process):
    try:
        return process.name()
    except psutil.Error:
        return "?"
