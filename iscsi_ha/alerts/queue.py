"""The alert dispatcher: ``submit()`` never blocks; one worker thread per sender delivers.

* Each sender (email, XAPI message) has its own bounded queue and thread, so a black-holed SMTP
  server never delays the XAPI messages or the caller. When a queue is full the oldest alert is
  dropped, with a log line.
* A send that fails for a reason that may pass (server down, timeout, 4xx) puts the sender in
  back-off: every queued alert waits (5 s, doubling up to 5 min) and is tried again, up to the
  sender's ``max_attempts`` and MAX_AGE; a permanent failure (5xx, TLS, configuration) drops the
  alert at once. Every drop is logged.
* Duplicates - same (kind, resource) - within MAIL_SCREEN_TIME minutes are held back and counted;
  when the window ends one summary ("repeated N times") goes out and starts the next window, so
  a condition that keeps repeating costs one message per window. Manual mode silences nothing.
"""
import collections
import logging
import threading
import time

from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha.alerts.email import Renderer
from iscsi_ha.alerts.events import Entry, SendError

log = logging.getLogger("iscsi-ha")

QUEUE_SIZE = 100
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
MAX_AGE = 3600.0
TICK = 30.0       # longest an idle worker sleeps: a submit, a repeat, close() wake it at once,
                  # a retry time or a repeat window's end is waited for exactly


class _Job(object):
    __slots__ = ("entry", "attempts", "born")

    def __init__(self, entry, born):
        self.entry, self.attempts, self.born = entry, 0, born


class _Lane(object):
    """One sender, its queue (oldest first) and its back-off state."""

    def __init__(self, sender, size):
        self.sender = sender
        self.size = size
        self.jobs = collections.deque()
        self.failures = 0          # consecutive transient failures
        self.retry_at = None       # clock time before which nothing is tried
        self.busy = False
        self.thread = None

    @property
    def name(self):
        return getattr(self.sender, "name", type(self.sender).__name__)

    def due(self, now):
        return bool(self.jobs) and (self.retry_at is None or now >= self.retry_at)


def _describe(entry):
    alert = entry.alert
    repeat = " (summary of %d repeats)" % entry.repeat["count"] if entry.repeat else ""
    return "%s%s: %s%s" % (alert.kind, " [%s]" % alert.resource if alert.resource else "",
                           alert.summary, repeat)


class AlertDispatcher(object):
    def __init__(self, config, senders, clock=time.monotonic, wall=time.time,
                 queue_size=QUEUE_SIZE, start=True):
        self.screen = max(0, int(config.MAIL_SCREEN_TIME)) * 60.0
        self.clock, self.wall = clock, wall
        self.lanes = [_Lane(sender, queue_size) for sender in senders]
        self.dropped = 0
        self._windows = {}
        self._cond = threading.Condition()
        self._closing = False
        if start:
            for lane in self.lanes:
                lane.thread = threading.Thread(target=self._run, args=(lane,),
                                               name="alerts-" + lane.name)
                lane.thread.daemon = True
                lane.thread.start()

    # -- the caller's side --------------------------------------------------------------------
    def submit(self, alert, status=None):
        """Queue ``alert`` (with the status document of the moment) for every sender; returns at
        once. False when the dispatcher is closed."""
        now = self.clock()
        entry = Entry(alert, status, self.wall(), None)
        with self._cond:
            if self._closing:
                log.warning("alert after shutdown not sent: %s", _describe(entry))
                return False
            self._expire(now)
            window = self._windows.get(alert.key)
            if window is not None:
                window["count"] += 1
                window["last"] = entry
                window["first_repeat"] = window["first_repeat"] or entry.at
                self._cond.notify_all()          # the workers now wait for this window's end
                return True
            if self.screen > 0:
                self._open_window(alert.key, now)
            self._enqueue(entry)
            self._cond.notify_all()
        return True

    def _open_window(self, key, now):
        self._windows[key] = {"start": now, "count": 0, "last": None, "first_repeat": None}

    def _expire(self, now):
        """Close the windows that ended; each that held repeats sends its summary."""
        for key in [k for k, w in self._windows.items() if now - w["start"] >= self.screen]:
            window = self._windows.pop(key)
            if window["count"]:
                last = window["last"]
                repeat = {"count": window["count"], "first": _iso(window["first_repeat"]),
                          "last": _iso(last.at), "minutes": int(self.screen // 60)}
                self._enqueue(Entry(last.alert, last.status, last.at, repeat))
                self._open_window(key, now)
                self._cond.notify_all()

    def _enqueue(self, entry):
        for lane in self.lanes:
            if len(lane.jobs) >= lane.size:
                old = lane.jobs.popleft()
                self.dropped += 1
                log.warning("alert queue of %s full (%d): dropped the oldest alert: %s",
                            lane.name, lane.size, _describe(old.entry))
            lane.jobs.append(_Job(entry, self.clock()))

    # -- the workers' side -------------------------------------------------------------------
    def _take(self, lane):
        """Wait for a job this lane may try now; None when the lane should stop."""
        with self._cond:
            while True:
                now = self.clock()
                self._expire(now)
                if lane.due(now):
                    lane.busy = True
                    return lane.jobs.popleft()
                if self._closing:
                    return None
                self._cond.wait(self._idle_wait(lane, now))

    def _idle_wait(self, lane, now):
        """How long a lane with nothing due sleeps (the caller holds the lock): until its retry
        time when a job waits for it, or until the first repeat window that holds repeats ends
        (its summary is then due), else TICK. A retry time left from a job that was dropped
        since is no reason to wake (it would make the worker spin every 10 ms for ever), nor is
        a window without repeats (it is forgotten at the next submit)."""
        waits = [TICK]
        if lane.retry_at is not None and lane.jobs:
            waits.append(lane.retry_at - now)
        waits.extend(w["start"] + self.screen - now for w in self._windows.values()
                     if w["count"])
        return max(0.01, min(waits))

    def _run(self, lane):
        while True:
            job = self._take(lane)
            if job is None:
                return
            self._attempt(lane, job)

    def _attempt(self, lane, job):
        job.attempts += 1
        try:
            lane.sender.send(job.entry)
        except SendError as exc:
            self._failed(lane, job, str(exc), exc.transient)
        except XapiError as exc:
            self._failed(lane, job, str(exc), True)
        except Exception as exc:  # a bug in a sender must not end the worker
            log.exception("alert sender %s failed unexpectedly", lane.name)
            self._failed(lane, job, "%s: %s" % (type(exc).__name__, exc), True)
        else:
            log.info("alert sent by %s: %s", lane.name, _describe(job.entry))
            with self._cond:
                lane.failures, lane.retry_at, lane.busy = 0, None, False
                self._cond.notify_all()

    def _failed(self, lane, job, error, transient):
        now = self.clock()
        limit = getattr(lane.sender, "max_attempts", 5)
        with self._cond:
            lane.busy = False
            self._cond.notify_all()
            retry = transient and job.attempts < limit and now - job.born < MAX_AGE
            if retry:
                lane.failures += 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (lane.failures - 1))
                lane.retry_at = now + delay
                lane.jobs.appendleft(job)
            else:
                self.dropped += 1
        if retry:
            log.warning("alert not sent by %s (attempt %d of %d, next try in %.0f s): %s",
                        lane.name, job.attempts, limit, delay, error)
            return
        log.error("alert dropped by %s after %d attempt(s)%s: %s: %s", lane.name, job.attempts,
                  "" if transient else " (permanent failure)", _describe(job.entry), error)

    # -- tests and shutdown ---------------------------------------------------------------------
    def pump(self):
        """Without worker threads (start=False): try every job that is due now, once each, in
        this thread. Returns the number of attempts."""
        attempts = 0
        for lane in self.lanes:
            for _ in range(len(lane.jobs) + 1):
                with self._cond:
                    self._expire(self.clock())
                    if not lane.due(self.clock()):
                        break
                    job = lane.jobs.popleft()
                    lane.busy = True
                self._attempt(lane, job)
                attempts += 1
        return attempts

    def pending(self):
        with self._cond:
            return sum(len(lane.jobs) + lane.busy for lane in self.lanes)

    def wait_idle(self, timeout):
        """Wait (bounded) until no lane holds or sends a job; True if that happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(lane.jobs or lane.busy for lane in self.lanes):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def close(self, timeout=5.0):
        """Stop accepting alerts, give the workers up to ``timeout`` seconds to send what may be
        sent now (nothing in back-off waits), then return. Never blocks longer than that."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for lane in self.lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
                if lane.thread.is_alive():
                    log.warning("alert sender %s still busy at shutdown", lane.name)
        with self._cond:
            left = sum(len(lane.jobs) for lane in self.lanes)
            held = sum(w["count"] for w in self._windows.values())
        if left or held:
            log.warning("shutdown: %d queued alert(s) and %d held-back repeat(s) not sent",
                        left, held)
        return left


def _iso(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "?"


class XapiMessageSender(object):
    """Creates a XAPI message on the pool (XenCenter / Xen Orchestra show it) per alert."""

    name = "xapi"
    max_attempts = 4
    PREFIX = "ISCSI_HA_"

    def __init__(self, client, renderer=None):
        self.client = client
        self.renderer = renderer or Renderer()

    def message_name(self, alert):
        return self.PREFIX + alert.kind.upper().replace("-", "_")

    def send(self, entry):
        try:
            self.client.create_message(self.message_name(entry.alert), entry.alert.severity,
                                       self.renderer.xapi_body(entry))
        except XapiError as exc:
            raise SendError("XAPI message.create: %s" % exc, transient=True)
