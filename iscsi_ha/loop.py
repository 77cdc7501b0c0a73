"""The daemon loop: when to run a pass, and what to do with a pass that hangs.

Wake-ups: pool.conf or the manual-mode file changed (checked every POOL_POLL_INTERVAL), DRBD's
state changed (the adapter's cheap fingerprint, every DRBD_POLL_INTERVAL), a target daemon
process the last pass saw is gone (same period), or MONITOR_DELAY elapsed. While the host is not as it should be, the timer is short (RETRY_DELAY) so that a
failed step is retried promptly.
"""
import logging
import threading
import time

import psutil

from iscsi_ha.agent import PassLock, PassLockBusy
from iscsi_ha.files import SMALL_LIMIT, read_text

log = logging.getLogger("iscsi-ha")
RETRY_DELAY = 1.0


def _read(path):
    try:
        return read_text(path, SMALL_LIMIT)
    except (OSError, IOError) as exc:
        return "<%s>" % exc.__class__.__name__


class Watcher(object):
    """Tells the loop whether anything it reacts to has changed since the last pass."""

    def __init__(self, agent, clock=time.monotonic):
        self.agent = agent
        self.config = agent.config
        self.clock = clock
        self.files_seen = None
        self.drbd_seen = None
        self.target_seen = None
        self.drbd_checked = float("-inf")

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
        self.drbd_seen = self._drbd()
        self.drbd_checked = self.clock()

    def remember_target(self):
        """After a pass: the target daemon's processes that pass saw (and which live now)."""
        self.target_seen = self._target()

    def changed(self):
        """Why a pass is due ('pool.conf/manual', 'drbd', 'target process gone'), else None."""
        if self._files() != self.files_seen:
            return "pool.conf/manual"
        now = self.clock()
        if now - self.drbd_checked >= self.config.DRBD_POLL_INTERVAL:
            self.drbd_checked = now
            if self._drbd() != self.drbd_seen:
                return "drbd"
            if self._target() != self.target_seen:
                return "target process gone"
        return None


class Loop(object):
    def __init__(self, agent, stop_event=None):
        self.agent = agent
        self.config = agent.config
        self.stop = stop_event or threading.Event()
        self.watcher = Watcher(agent)
        self.lock_path = self.config.STATE_DIR.rstrip("/") + "/lock"
        self.hung_passes = 0
        self.on_pass = None          # callback(record), e.g. the systemd watchdog ping
        self.on_hung = None          # callback(seconds, killed), e.g. an alert
        self.on_idle = None          # callback(), between passes (never while a pass runs)

    def _pass(self, trigger, box):
        try:
            with PassLock(self.lock_path, timeout=self.config.PASS_BUDGET / 2):
                box.append(self.agent.run_cycle(trigger))
        except PassLockBusy as exc:
            log.warning("pass skipped: %s (an iscsi-cfg command at work?)", exc)
        except Exception:
            log.exception("pass failed with an unexpected error")

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
                self._hung(scans)
        return box[0] if box else None

    def _hung(self, scans):
        self.hung_passes += 1
        if self.on_hung is not None:
            self.on_hung(scans * self.config.MONITOR_SCANRATE,
                         bool(self.config.MONITOR_KILLALL))
        if not self.config.MONITOR_KILLALL:
            log.error("pass hung for %d scans; MONITOR_KILLALL=0, so it is left to finish",
                      scans)
            return
        children = psutil.Process().children(recursive=True)
        log.error("pass hung for %d scans: killing %d child process(es): %s", scans,
                  len(children), ", ".join("%d %s" % (c.pid, _name(c)) for c in children))
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass

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
            except Exception:  # a broken wake-up check must not end the agent: use the timer
                log.exception("cannot check for changes; waiting for the timer")
                trigger = None
            if trigger is not None:
                # Remember what the pass is about to see *before* it runs: a change that lands
                # while it runs (pool.conf rewritten mid-pass) then wakes the next pass at once.
                self.watcher.remember()
                record = self.run_pass(trigger)
                self.watcher.remember_target()
                count += 1
                settled = record is not None and record.decision.healthy and all(
                    r.ok for r in record.results) and not record.results
                due = time.monotonic() + (self.config.MONITOR_DELAY if settled
                                          else min(RETRY_DELAY, self.config.MONITOR_DELAY))
                self._call(self.on_pass, record)
                if max_passes is not None and count >= max_passes:
                    return
                trigger = None
                continue
            self._call(self.on_idle)
            self.stop.wait(poll)

    def _call(self, hook, *args):
        """Run a hook (systemd ping, replugger, alerts); its failure is logged, never fatal."""
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("a pass hook failed")


def _name(process):
    try:
        return process.name()
    except psutil.Error:
        return "?"
