"""Event-driven wake-ups for the idle loop, so an idle agent costs (almost) nothing.

- pool.conf and the manual-mode file: inotify (through ctypes; Python 3.6 has no binding) on
  their directories, since both files are replaced by rename. The loop re-reads them only after
  an event names one of them (or the watch was lost: then it reads on every wake-up).
- DRBD (9, and 8.4 from 8.4.6): one persistent ``drbdsetup events2 all`` child; any line it
  prints means "look again". If it cannot start or ends, the loop polls as before and the
  stream is restarted after EVENTS_RETRY seconds, later and later while it keeps failing at
  once (an 8.4 older than 8.4.6 has no events2).
- DRBD 8.4 without the stream: /proc/drbd is polled through a kept-open descriptor and a
  byte-level key of its state words (``cs: ro: ds:``), so an idle poll parses nothing.
- a signal wakes the select at once (``signal.set_wakeup_fd``), so SIGTERM stops the agent
  without waiting for the next poll.
- the target daemon's death: a connection held open to tgtd's management socket reads end of
  file when tgtd exits (:class:`DaemonSocket`); without one, the daemon's processes are polled.
- the network: an rtnetlink socket (link and IPv4 address groups) tells the floating-IP
  adapter whether its last ``ip link``/``ip addr`` reading still holds (no message since), so
  an idle pass runs no ``ip`` (see :meth:`iscsi_ha.adapters.vip.VipAdapter.observe`).

Nothing here can end the daemon: every failure turns the source back into polling.
"""
import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

import psutil

from iscsi_ha.adapters.target import control_socket
from iscsi_ha.drbd_events import EventsState, NotKnown

log = logging.getLogger("iscsi-ha")

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED, IN_Q_OVERFLOW = 0x400, 0x800, 0x8000, 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
_EVENT = struct.Struct("iIII")
EVENTS_RETRY = 5.0
# A stream that ends within EVENTS_SHORT s of its start (or cannot start) failed "at once":
# each such failure in a row doubles the wait before the next try, up to EVENTS_RETRY_MAX.
EVENTS_SHORT, EVENTS_RETRY_MAX = 10.0, 60.0
PARTIAL_LIMIT = 1 << 16
_STATE_WORDS = re.compile(rb"(?:cs|ro|ds):\S+")


class Inotify(object):
    """Watches the directories of ``paths``; :meth:`take` says whether one of them changed."""

    def __init__(self, paths, libc=None):
        self.paths = [os.path.abspath(p) for p in paths if p]
        self._names = set(os.path.basename(p) for p in self.paths)
        self.fd, self.watches, self.dirty, self._complete = None, {}, True, None
        try:
            self._libc = libc or ctypes.CDLL(ctypes.util.find_library("c") or None,
                                             use_errno=True)
            fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            self.fd = fd
            self._add_watches()
        except (OSError, AttributeError) as exc:
            log.info("wake-ups: no inotify (%s); pool.conf and the manual file are polled", exc)
            self.close()

    def _add_watches(self):
        self.watches, self._complete = {}, None
        for directory in sorted(set(os.path.dirname(p) for p in self.paths)):
            wd = self._libc.inotify_add_watch(self.fd, directory.encode(), WATCH_MASK)
            if wd < 0:
                log.info("wake-ups: cannot watch %s (%s); polling it", directory,
                         os.strerror(ctypes.get_errno()))
                continue
            self.watches[wd] = directory

    @property
    def complete(self):
        """Every path's directory is watched: reading the files can wait for an event.
        Computed once per set of watches (the idle loop asks at every wake-up)."""
        if self.fd is None:
            return False
        if self._complete is None:
            watched = set(self.watches.values())
            self._complete = all(os.path.dirname(p) in watched for p in self.paths)
        return self._complete

    def drain(self):
        """Read pending events; mark dirty when one names a watched file (or a watch broke)."""
        if self.fd is None:
            return
        names = self._names
        rebuild = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    self.dirty = True
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].split(
                    b"\0", 1)[0].decode("utf-8", "replace")
                offset += _EVENT.size + length
                if mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                    self.dirty, rebuild = True, True
                elif name in names:
                    self.dirty = True
        if rebuild:
            for wd in list(self.watches):
                self._libc.inotify_rm_watch(self.fd, wd)
            self._add_watches()

    def take(self, readable=True):
        """True when the files must be read again (an event, or no complete watch).
        ``readable=False``: the caller's select() just found the descriptor without events, so
        the read that would only fail with EAGAIN is skipped (an event since then keeps the
        descriptor readable for the next select)."""
        if readable:
            self.drain()
        dirty, self.dirty = self.dirty or not self.complete, False
        return dirty

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.watches = None, {}


class DrbdEvents(object):
    """A persistent ``drbdsetup events2 all``: its output means DRBD changed, and its lines
    are folded into DRBD's state (:class:`iscsi_ha.drbd_events.EventsState`), which
    :meth:`states` gives a pass instead of a ``drbdsetup status`` (DRBD 9)."""

    def __init__(self, drbdsetup_argv, clock=time.monotonic):
        self.argv = list(drbdsetup_argv) + ["events2", "all"]
        self.clock = clock
        self.proc, self.dirty, self.retry_at, self.failures = None, True, 0.0, 0
        self.started_at, self.quick_failures = None, 0
        self.state, self._partial, self.restarts = EventsState(), b"", 0
        self._lock = threading.Lock()    # the loop and a pass's observe both drain

    @property
    def fd(self):
        return self.proc.stdout.fileno() if self.proc is not None else None

    @property
    def streaming(self):
        return self.proc is not None

    def ensure(self):
        """Start the stream when it is not running and its retry time came."""
        if self.proc is not None or self.clock() < self.retry_at:
            return
        with self._lock:
            try:
                proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        close_fds=True)
            except OSError as exc:
                self._failed("cannot start %s: %s" % (" ".join(self.argv), exc))
                return
            try:
                flags = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_GETFL)
                fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
            except OSError as exc:
                proc.kill()
                proc.wait()
                proc.stdout.close()
                self._failed("cannot read %s: %s" % (" ".join(self.argv), exc))
                return
            self.started_at = self.clock()
            self.dirty = True
            self.proc = proc            # published last: a reader sees it ready or not at all

    def _failed(self, why):
        self.failures += 1
        now = self.clock()
        if self.started_at is not None and now - self.started_at >= EVENTS_SHORT:
            self.quick_failures = 0           # it ran a while: try again soon
        else:
            self.quick_failures += 1
        self.started_at = None
        delay = EVENTS_RETRY
        if self.quick_failures:
            delay = min(EVENTS_RETRY * 2 ** min(self.quick_failures - 1, 16), EVENTS_RETRY_MAX)
        self.retry_at = now + delay
        self.dirty = True
        if self.failures == 1 or self.failures % 100 == 0:
            log.info("wake-ups: DRBD events stream unavailable (%s); polling DRBD", why)

    def drain(self):
        with self._lock:
            self._drain()

    def _drain(self):
        if self.proc is None:
            return
        while True:
            try:
                data = os.read(self.proc.stdout.fileno(), 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                data = b""
            if not data:
                code = self._stop()
                self._failed("%s ended (exit %s)" % (" ".join(self.argv), code))
                return
            self.dirty = True
            self._fold(data)

    def _fold(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > PARTIAL_LIMIT:     # no line is this long: not events2
            self.state.broken = "drbdsetup events2 printed a line over %d bytes" % PARTIAL_LIMIT
            self._partial = b""
        for line in lines:
            self.state.feed(line.decode("utf-8", "replace"))

    @property
    def broken(self):
        """Why the stream's lines cannot be folded any more ('' while they can)."""
        return self.state.broken

    def restart(self, why):
        """End the stream because it fell behind DRBD (``why``); :meth:`ensure` starts a new
        one, with its own snapshot, as after any end: EVENTS_RETRY s later, later and later
        while restarts come soon after starts (a line this agent never understands)."""
        with self._lock:
            if self.proc is None:
                return
            self._stop()
            self.restarts += 1
            if self.restarts == 1 or self.restarts % 100 == 0:
                log.warning("drbd: restarting the events stream (restart %d): %s",
                            self.restarts, why)
            self._failed("restarted: %s" % why)

    def states(self, names):
        """``{name: DrbdState}`` as the stream says now (it is drained first); raises
        :class:`iscsi_ha.drbd_events.NotKnown` when it cannot say (no stream, the first
        snapshot not complete, a line not understood, a resync running)."""
        with self._lock:
            if self.proc is None:
                raise NotKnown("no DRBD events stream")
            self._drain()
            if self.proc is None:
                raise NotKnown("the DRBD events stream ended")
            return self.state.states(names)

    def take(self, readable=True):
        """True when DRBD must be looked at: a line arrived, or there is no stream (poll).
        ``readable=False``: the caller's select() just found the stream without output (or its
        end), so the read that would only fail with EAGAIN is skipped."""
        if readable:
            self.drain()
        dirty, self.dirty = self.dirty, False
        return dirty or self.proc is None

    def _stop(self):
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        self.state.reset()              # a new stream starts with its own snapshot
        self._partial = b""
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            return None
        finally:
            proc.stdout.close()
        return proc.returncode

    def close(self):
        with self._lock:
            self._stop()


class ProcDrbdKey(object):
    """DRBD 8.4: the state words of /proc/drbd, read through a kept-open descriptor."""

    def __init__(self, path):
        self.path, self.fd, self.last = path, None, None

    def changed(self):
        """True when the state words differ from the last call (or cannot be read)."""
        try:
            if self.fd is not None and os.fstat(self.fd).st_nlink == 0:
                self.close()                  # a regular file replaced by rename (the lab)
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            os.lseek(self.fd, 0, os.SEEK_SET)
            key = b" ".join(_STATE_WORDS.findall(os.read(self.fd, 65536)))
        except OSError:
            self.close()
            key = None
        changed, self.last = key is None or key != self.last, key
        return changed

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = None


_UCRED = struct.Struct("iII")    # struct ucred: pid, uid, gid
CONNECT_TIMEOUT = 0.2


def _process_key(pid):
    """(pid, start time) of a live process, or None: a reused pid has another start time."""
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _parent(pid):
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


class DaemonSocket(object):
    """A connection held open to a daemon's Unix management socket, so that its death is an
    event: the kernel closes the daemon's end when it exits and ours reads end of file.

    tgtd accepts a management connection and waits for its request without a time limit,
    at no cost but a descriptor (fujita/tgt usr/mgmt.c: mgmt_event_handler adds the socket
    to its epoll set; mtask_recv_send_handler reads only when data comes), and its event loop
    ends without regard to open connections. We never send anything.

    The connection is held only when the listener (SO_PEERCRED) is one of the daemon processes
    the last pass saw, and it ``covers`` them only when each is the listener or its child (a
    daemonised tgtd forks a logger after it listens, tgt usr/tgtd.c; another tgtd instance
    is not covered: then the processes stay polled). If the daemon closes our connection while
    it lives (it refused us), that process is not watched again: its death is polled."""

    def __init__(self, paths):
        self.paths, self.sock, self.pid, self.covers = tuple(paths or ()), None, None, False
        self.closed_by = None           # (pid, start time) of the listener that closed on us

    @property
    def fd(self):
        return None if self.sock is None else self.sock.fileno()

    def watch(self, pids):
        """Hold a connection to the daemon when its listener is one of ``pids`` (no pids: drop
        it). Returns whether the death of ``pids`` is now an event."""
        pids = tuple(pids) if isinstance(pids, tuple) else ()
        if self.sock is not None and self.pid in pids:
            self.covers = self._covered(pids)
            return self.covers
        self.close()
        if not self.paths or not pids:
            return False
        if self.closed_by is not None and self.closed_by[0] in pids and \
                _process_key(self.closed_by[0]) == self.closed_by:
            return False
        problems = []
        for path in self.paths:
            sock, pid = self._connect(path, pids, problems)
            if sock is not None:
                self.sock, self.pid = sock, pid
                self.covers = self._covered(pids)
                log.debug("wake-ups: held connection to %s (process %d)%s", path, pid,
                          "" if self.covers else "; other processes of the daemon polled")
                return self.covers
        log.debug("wake-ups: no watch on the target daemon (%s); it is polled",
                  "; ".join(problems))
        return False

    def _covered(self, pids):
        return all(pid == self.pid or _parent(pid) == self.pid for pid in pids)

    @staticmethod
    def _connect(path, pids, problems):
        sock = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            fcntl.fcntl(sock.fileno(), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            pid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                _UCRED.size))[0]
            if pid not in pids:
                raise OSError("its listener is process %d, not %s" % (
                    pid, ", ".join(map(str, pids))))
            sock.setblocking(False)
            return sock, pid
        except Exception as exc:   # OSError, an unencodable path: no watch, never a fault
            if sock is not None:
                sock.close()
            problems.append("%s: %s" % (path, exc))
            return None, None

    def closed(self, readable=True):
        """Whether the daemon closed its end since the last call (then the connection is
        dropped). ``readable`` False: select found it quiet, nothing to read."""
        if self.sock is None or not readable:
            return False
        try:
            if self.sock.recv(64):
                return False                   # tgtd never writes unasked; ignore it
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass
        self.closed_by = _process_key(self.pid)
        self.close()
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = self.pid = None
        self.covers = False


RTMGRP_LINK, RTMGRP_IPV4_IFADDR = 0x1, 0x10


class NetlinkChanges(object):
    """Link and IPv4 address changes of this network namespace (rtnetlink multicast groups),
    for a caller that keeps the last ``ip`` observation: :meth:`take` says whether anything
    changed since the last call. No socket (or a broken one, or an overflow): always True, so
    the caller runs its commands as before."""

    def __init__(self, groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR):
        self.sock, self.dirty = None, True
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            try:
                sock.bind((0, groups))
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        except (OSError, AttributeError) as exc:
            log.info("wake-ups: no rtnetlink socket (%s); the network is read every pass", exc)

    def take(self):
        """True when a link or address message arrived since the last call (or no socket)."""
        if self.sock is None:
            return True
        for _ in range(10000):
            try:
                if not self.sock.recv(65536):
                    break
                self.dirty = True
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.dirty = True
                if exc.errno != errno.ENOBUFS:   # ENOBUFS: messages were lost; read on
                    self.close()
                    break
        dirty, self.dirty = self.dirty, False
        return dirty or self.sock is None

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None


def for_agent(config, drbd_adapter):
    """The daemon's :class:`Wakeups` (DRBD version resolved by the adapter, if it can)."""
    try:
        version = drbd_adapter.version
    except Exception:  # DRBD_VERSION=auto with DRBD not loaded yet: poll DRBD
        version = None
    return Wakeups(config, version, getattr(drbd_adapter, "drbdsetup", ["drbdsetup"]),
                   control_socket(config.TGTD_CONTROL_SOCKET, config.TGTADM,
                                  config.ISCSI_TARGET_SERVICE))


class Wakeups(object):
    """What the idle loop waits on. ``files_changed()`` / ``drbd_changed()`` say whether the
    watcher must look again; :meth:`wait` sleeps until an event, a signal or ``timeout``."""

    def __init__(self, config, drbd_version, drbdsetup_argv, target_sockets=()):
        self.inotify = Inotify([config.POOL_CONF, config.MANUAL_FILE])
        self.target = DaemonSocket(target_sockets)
        # events2 is DRBD 9's, and 8.4's since 8.4.6 (LINBIT/drbd-8.4 40b874c5 "Backport the
        # events2 command"; drbd-utils user/v84/drbdsetup.c prints it as for 9). An older 8.4
        # cannot stream: /proc/drbd is polled while the stream is down.
        self.events = DrbdEvents(drbdsetup_argv) if drbd_version in ("8.4", "9") else None
        self.proc_key = ProcDrbdKey(config.DRBD_PROC) if drbd_version == "8.4" else None
        self.network = NetlinkChanges()   # lets the floating-IP adapter skip unchanged reads
        self._pipe = os.pipe()
        for fd in self._pipe:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        self._old_wakeup_fd = None
        self._quiet = set()    # descriptors the last wait()'s select() found without events

    @property
    def files_event_driven(self):
        return self.inotify.complete

    @property
    def drbd_event_driven(self):
        return self.events is not None and self.events.streaming

    def watch_target(self, pids):
        """After a pass: hold the target daemon's connection while ``pids`` (the daemon's live
        processes, a tuple) are what the pass left running."""
        return self.target.watch(pids)

    @property
    def target_event_driven(self):
        """Whether the death of every target daemon process the last pass saw is an event."""
        return self.target.sock is not None and self.target.covers

    def target_closed(self):
        """Whether the watched target daemon closed its end (it is exiting) since last asked."""
        return self.target.closed(self._readable(self.target.fd))

    def install_signal_wakeup(self):
        """Signals wake :meth:`wait` at once (main thread only; harmless to skip)."""
        try:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._pipe[1])
        except (ValueError, OSError) as exc:
            log.debug("wake-ups: no signal wake-up fd: %s", exc)

    def wake(self):
        try:
            os.write(self._pipe[1], b"\0")
        except OSError:
            pass

    def _readable(self, fd):
        """False once for a descriptor the last wait() found quiet: reading it could only fail
        with EAGAIN (an event since keeps it readable for the next select)."""
        if fd in self._quiet:
            self._quiet.discard(fd)
            return False
        return True

    def files_changed(self):
        return self.inotify.take(self._readable(self.inotify.fd))

    def drbd_changed(self):
        """Streaming: whether an event arrived. Stream down on 8.4: whether /proc/drbd's state
        words changed. Otherwise (stream down on 9, version unknown): True, so the caller polls
        as before."""
        if self.events is not None:
            self.events.ensure()
            if self.events.streaming:
                return self.events.take(self._readable(self.events.fd))
        if self.proc_key is not None:
            return self.proc_key.changed()
        return True

    def wait(self, timeout):
        fds = [self._pipe[0]]
        if self.inotify.fd is not None:
            fds.append(self.inotify.fd)
        if self.events is not None and self.events.fd is not None:
            fds.append(self.events.fd)
        if self.target.fd is not None:
            fds.append(self.target.fd)
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except (OSError, ValueError):
            time.sleep(min(max(0.0, timeout), 0.1))
            return
        self._quiet = set(fds[1:]) - set(ready)
        if self._pipe[0] in ready:
            try:
                while os.read(self._pipe[0], 4096):
                    pass
            except OSError:
                pass

    def close(self):
        if self._old_wakeup_fd is not None:
            try:
                signal.set_wakeup_fd(self._old_wakeup_fd)
            except (ValueError, OSError):
                pass
            self._old_wakeup_fd = None
        self.inotify.close()
        self.network.close()
        self.target.close()
        if self.events is not None:
            self.events.close()
        if self.proc_key is not None:
            self.proc_key.close()
        for fd in self._pipe:
            try:
                os.close(fd)
            except OSError:
                pass
