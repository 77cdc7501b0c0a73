"""Errors the daemon survives: a hook, an alert path, a status write that raised.

Each place has a name (``"hook on_pass"``, ``"status write"``, ``"alert hung pass"``...). The
first failure at a place is logged with its trace; later ones give one line each, so a failure
that repeats every pass does not fill the log with traces. Every failure is counted and the
counts are published in the status document (``faults``).
"""
import logging
import threading
import time

log = logging.getLogger("iscsi-ha")


class Faults(object):
    def __init__(self, logger=None, clock=time.time):
        self.log = logger or log
        self.clock = clock
        self.counts = {}
        self.last = {}
        self._lock = threading.Lock()

    def record(self, where, exc):
        """Count ``exc`` (raised at ``where``); call it from inside the ``except`` block."""
        text = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            count = self.counts.get(where, 0) + 1
            self.counts[where] = count
            self.last[where] = (text, self.clock())
        try:
            if count == 1:
                self.log.error("%s failed (the agent goes on): %s", where, text, exc_info=True)
            else:
                self.log.error("%s failed again (%d times so far): %s", where, count, text)
        except Exception:  # a broken log handler must not turn a survived error into a death
            pass
        return count

    def guard(self, where, function, *args, **kwargs):
        """``function(*args, **kwargs)``; an exception is recorded and None returned."""
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            self.record(where, exc)
            return None

    def snapshot(self):
        """{where: {count, last_error, last_at}} for the status document."""
        with self._lock:
            return {where: {"count": count, "last_error": self.last[where][0],
                            "last_at": self.last[where][1]}
                    for where, count in self.counts.items()}

    def total(self):
        with self._lock:
            return sum(self.counts.values())
