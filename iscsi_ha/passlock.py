"""The agent's pass lock: one exclusive ``flock`` held for a whole pass. Everything that must
not act beside a pass takes the same lock through this module: the daemon's loop, ``iscsi-ha
once``, the ``iscsi-cfg`` role verbs, split-brain recovery and the init script's demote-stop.

The lock file is STATE_DIR/lock. When that cannot be opened (a read-only or full state
directory), LOCK_FALLBACK_DIR/lock is used instead; every user chooses between the two the same
way (:func:`open_lock`), so they always lock the same file.
"""
import errno
import fcntl
import os
import time

LOCK_NAME = "lock"


class PassLockBusy(Exception):
    """Another process (an iscsi-cfg command, a second agent) holds the pass lock."""


def lock_paths(config):
    """(STATE_DIR/lock, LOCK_FALLBACK_DIR/lock): the pass lock and where it goes when the state
    directory cannot hold it."""
    return (os.path.join(config.STATE_DIR, LOCK_NAME),
            os.path.join(config.LOCK_FALLBACK_DIR, LOCK_NAME))


def _open_one(path):
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    try:
        return open(path, "a")
    except (IOError, OSError):
        if os.path.isfile(path):     # read-only file system: flock works on a read-only handle
            return open(path, "r")
        raise


def open_lock(path, fallback=None):
    """(handle, path used, problem or ''): ``path`` if it can be opened, else ``fallback``; the
    problem names the directory and the error, for the status and the alerts."""
    try:
        return _open_one(path), path, ""
    except (IOError, OSError) as exc:
        if not fallback:
            raise
        problem = "cannot use the pass lock %s: %s" % (path, exc.strerror or exc)
    handle = _open_one(fallback)
    return handle, fallback, problem + "; using %s" % fallback


class PassLock(object):
    """The pass lock as a context manager. With ``timeout`` (seconds) waiting is bounded:
    :class:`PassLockBusy` when it is not had in time; without, it waits (the daemon's own
    passes only). ``problem`` says why the fallback file is in use ('' when it is not)."""

    def __init__(self, path, timeout=None, poll=0.05, fallback=None, clock=time.monotonic,
                 sleep=time.sleep):
        self.path = path
        self.fallback = fallback
        self.timeout = timeout
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.handle = None
        self.used = None
        self.problem = ""

    @classmethod
    def of(cls, config, timeout=None, **kwargs):
        """The pass lock of the agent configured by ``config`` (with its fallback)."""
        path, fallback = lock_paths(config)
        return cls(path, timeout=timeout, fallback=fallback, **kwargs)

    def _try(self):
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except (IOError, OSError) as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False

    def acquire(self):
        self.handle, self.used, self.problem = open_lock(self.path, self.fallback)
        try:
            if self.timeout is None:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
                return self
            deadline = self.clock() + self.timeout
            for _ in range(int(self.timeout / self.poll) + 2):
                if self._try():
                    return self
                if self.clock() >= deadline:
                    break
                self.sleep(self.poll)
        except BaseException:
            self._close()
            raise
        self._close()
        raise PassLockBusy("%s is held by another process" % self.used)

    def _close(self):
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def release(self):
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._close()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
