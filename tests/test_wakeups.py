"""Event-driven wake-ups: inotify on the files' directories, the DRBD 9 event stream, the
DRBD 8.4 state-word key, and the wait that a signal or an event ends early."""
import os
import sys
import threading
import time

import pytest

from iscsi_ha import wakeups


def test_inotify_marks_a_rename_over_the_watched_file(tmp_path):
    pool = tmp_path / "pool.conf"
    pool.write_text("master")
    watch = wakeups.Inotify([str(pool)])
    assert watch.complete
    assert watch.take() is True          # the first look always reads
    assert watch.take() is False
    (tmp_path / "other").write_text("x")  # another file in the directory: no reason to read
    assert watch.take() is False
    tmp = tmp_path / "pool.conf.tmp"
    tmp.write_text("slave:192.0.2.11")
    os.rename(str(tmp), str(pool))
    assert watch.take() is True
    assert watch.take() is False
    watch.close()


def test_inotify_without_a_directory_falls_back_to_reading(tmp_path):
    watch = wakeups.Inotify([str(tmp_path / "missing" / "manual")])
    assert not watch.complete
    assert watch.take() is True and watch.take() is True
    watch.close()


def test_proc_drbd_key_ignores_counters_and_sees_state_words(tmp_path):
    proc = tmp_path / "drbd"
    proc.write_text(" 1: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n"
                    "    ns:0 nr:0 dw:0\n")
    key = wakeups.ProcDrbdKey(str(proc))
    assert key.changed() is True
    proc.write_text(" 1: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n"
                    "    ns:8 nr:0 dw:8\n")
    assert key.changed() is False
    new = tmp_path / "drbd.tmp"          # replaced by rename, as the lab's double does
    new.write_text(" 1: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C r-----\n")
    os.rename(str(new), str(proc))
    assert key.changed() is True
    key.close()


STREAM = """import sys, time
print("exists resource name:r0 role:Secondary", flush=True)
print("exists -", flush=True)
time.sleep(float(sys.argv[1]))
print("change resource name:r0 role:Primary", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _stream(tmp_path, first, then):
    script = tmp_path / "events.py"
    script.write_text(STREAM)
    return wakeups.DrbdEvents([sys.executable, str(script), str(first), str(then)])


def test_drbd_events_stream_wakes_on_each_line(tmp_path):
    events = _stream(tmp_path, 0.3, 5)
    events.ensure()
    try:
        assert events.streaming
        deadline = time.monotonic() + 5
        while events.take() is False and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        events.take()                       # the exists lines are consumed
        assert events.take() is False
        deadline = time.monotonic() + 5
        while not events.take():
            assert time.monotonic() < deadline, "the change line never woke us"
            time.sleep(0.02)
    finally:
        events.close()
    assert not events.streaming


def test_a_quiet_wait_skips_the_stream_read_and_its_next_line_still_wakes(tmp_path):
    """DRBD 9: after a wait whose select() saw nothing on the events stream, drbd_changed()
    does not read the stream; the next line wakes the next wait and is seen."""
    script = tmp_path / "events.py"
    script.write_text(STREAM)
    w = wakeups.Wakeups(_Config(tmp_path), "9", [sys.executable, str(script), "1.0", "5"])
    reads = []
    try:
        assert w.drbd_changed() is True                    # the stream starts: look once
        real_drain = w.events.drain
        w.events.drain = lambda: (reads.append(1), real_drain())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:                 # the two "exists" lines
            w.wait(0.05)
            if not w.drbd_changed():
                break
        del reads[:]
        w.wait(0.05)
        assert w.drbd_changed() is False and reads == []   # quiet: no read
        started = time.monotonic()
        w.wait(5.0)                                        # the change line after ~1 s
        assert time.monotonic() - started < 4.0
        assert w.drbd_changed() is True and reads == [1]
    finally:
        w.close()


def test_drbd_events_stream_that_ends_falls_back_to_polling(tmp_path):
    events = _stream(tmp_path, 0, 0)
    events.ensure()
    deadline = time.monotonic() + 5
    while events.streaming and time.monotonic() < deadline:
        events.take()
        time.sleep(0.02)
    assert not events.streaming and events.failures == 1
    assert events.take() is True            # polling: always look
    events.ensure()                         # not restarted before EVENTS_RETRY
    assert not events.streaming


def test_drbd_events_that_cannot_start_poll(tmp_path):
    events = wakeups.DrbdEvents([str(tmp_path / "no-such-drbdsetup")])
    events.ensure()
    assert not events.streaming and events.take() is True


class _Config(object):
    def __init__(self, tmp_path):
        self.POOL_CONF = str(tmp_path / "pool.conf")
        self.MANUAL_FILE = str(tmp_path / "manual")
        self.DRBD_PROC = str(tmp_path / "proc_drbd")


def test_wait_ends_early_on_a_file_event(tmp_path):
    w = wakeups.Wakeups(_Config(tmp_path), "8.4", [str(tmp_path / "no-drbdsetup")])
    try:
        w.files_changed()
        timer = threading.Timer(0.2, lambda: (tmp_path / "pool.conf").write_text("master"))
        timer.start()
        started = time.monotonic()
        w.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert w.files_changed() is True
        timer.join()
    finally:
        w.close()


def test_a_quiet_wait_skips_the_inotify_read_and_a_later_event_is_not_lost(tmp_path):
    """After a wait whose select() saw no inotify event, files_changed() does not read the
    descriptor (a read that could only fail with EAGAIN, at every idle wake-up); an event
    that arrives after that select keeps the descriptor readable: the next wait returns at
    once and the change is seen."""
    w = wakeups.Wakeups(_Config(tmp_path), "8.4", [str(tmp_path / "no-drbdsetup")])
    reads = []
    real_drain = w.inotify.drain
    w.inotify.drain = lambda: (reads.append(1), real_drain())
    try:
        assert w.files_changed() is True and reads == [1]     # the first look reads
        w.wait(0.05)
        assert w.files_changed() is False and reads == [1]    # quiet: no read
        assert w.files_changed() is False and reads == [1, 1]  # no wait since: it reads
        w.wait(0.05)
        (tmp_path / "manual").write_text("1")                # after the select
        assert w.files_changed() is False and len(reads) == 2
        started = time.monotonic()
        w.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert w.files_changed() is True and len(reads) == 3
    finally:
        w.close()


def test_wait_ends_early_on_wake(tmp_path):
    w = wakeups.Wakeups(_Config(tmp_path), "8.4", [str(tmp_path / "no-drbdsetup")])
    try:
        threading.Timer(0.1, w.wake).start()
        started = time.monotonic()
        w.wait(5.0)
        assert time.monotonic() - started < 2.0
    finally:
        w.close()


def test_unknown_drbd_version_polls(tmp_path):
    w = wakeups.Wakeups(_Config(tmp_path), None, [str(tmp_path / "no-drbdsetup")])
    try:
        assert w.drbd_changed() is True and w.drbd_changed() is True
        assert not w.drbd_event_driven
    finally:
        w.close()


class _FakeWakeups(object):
    files_event_driven = True

    def __init__(self, streaming):
        self.drbd_event_driven = streaming
        self.pending = False
        self.target_event_driven = False
        self.target_closes = False
        self.watched = []

    def files_changed(self):
        return False

    def watch_target(self, pids):
        self.watched.append(pids)
        return self.target_event_driven

    def target_closed(self):
        closed, self.target_closes = self.target_closes, False
        return closed

    def drbd_changed(self):
        pending, self.pending = self.pending, False
        return pending


def _watcher(wakeups, fingerprints):
    from iscsi_ha.loop import Watcher

    class Drbd(object):
        def fingerprint(self):
            fingerprints.append(1)
            return "same"

    class Target(object):
        alive = ()

        def liveness(self):
            return self.alive

    class Agent(object):
        pass
    agent = Agent()
    agent.config = type("C", (), {"POOL_CONF": "/nonexistent/pool.conf",
                                  "MANUAL_FILE": "/nonexistent/manual",
                                  "DRBD_POLL_INTERVAL": 0.2})
    agent.adapters = Agent()
    agent.adapters.drbd, agent.adapters.target = Drbd(), Target()
    return Watcher(agent, wakeups=wakeups)


def test_event_stream_wakes_without_a_fingerprint_command():
    fingerprints = []
    fake = _FakeWakeups(streaming=True)
    watcher = _watcher(fake, fingerprints)
    watcher.remember()
    watcher.remember_target()
    assert watcher.changed() is None
    fake.pending = True
    assert watcher.changed() == "drbd"
    assert watcher.changed() is None
    assert fingerprints == []            # no `drbdsetup status` forked for a wake-up


def test_without_a_stream_the_fingerprint_decides():
    fingerprints = []
    fake = _FakeWakeups(streaming=False)
    watcher = _watcher(fake, fingerprints)
    watcher.remember()
    watcher.remember_target()
    fake.pending = True                  # the state words moved, the fingerprint did not
    watcher.drbd_checked = float("-inf")
    assert watcher.changed() is None
    assert len(fingerprints) == 2        # remember() and the check


def test_netlink_changes_report_messages_overflow_and_a_missing_socket():
    import errno as errno_mod
    import socket
    from iscsi_ha.wakeups import NetlinkChanges
    changes = NetlinkChanges()
    if changes.sock is not None:
        changes.sock.close()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mine.setblocking(False)
    changes.sock = mine
    try:
        assert changes.take() is True          # nothing read yet: the caller reads
        assert changes.take() is False
        theirs.send(b"RTM_NEWADDR")
        theirs.send(b"RTM_DELADDR")
        assert changes.take() is True and changes.take() is False

        class Overflow(object):
            calls = 0

            def recv(self, size):
                Overflow.calls += 1
                if Overflow.calls == 1:
                    raise OSError(errno_mod.ENOBUFS, "No buffer space available")
                raise BlockingIOError()

            def close(self):
                pass
        changes.sock = Overflow()
        assert changes.take() is True and changes.sock is not None   # lost messages: read
        assert changes.take() is False
    finally:
        mine.close()
        theirs.close()
    changes.sock = None
    assert changes.take() is True and changes.take() is True          # no socket: always read



def test_the_idle_loop_polls_only_what_no_event_reports():
    fake = _FakeWakeups(streaming=True)
    watcher = _watcher(fake, [])
    watcher.remember()
    watcher.remember_target()                    # no target daemon process seen
    assert watcher.must_poll() is False          # events and the timer wake the loop
    watcher.target_seen = (4242,)                # a tgtd to watch: its death is polled
    assert watcher.must_poll() is True
    assert watcher.poll_interval() == 0.2
    fake.target_event_driven = True              # ... unless a held connection reports it
    assert watcher.must_poll() is False
    fake.target_event_driven = False
    watcher.target_seen = "<OSError>"            # liveness unreadable: poll
    assert watcher.must_poll() is True
    watcher.target_seen = ()
    watcher.fast_until = watcher.clock() + 60    # a move's fast window
    assert watcher.must_poll() is True
    watcher.fast_until = float("-inf")
    fake.drbd_event_driven = False               # DRBD 8.4, or the stream is down
    assert watcher.must_poll() is True
    assert _watcher(None, []).must_poll() is True


def test_an_idle_secondary_sleeps_to_the_timer_and_a_drbd_event_still_wakes_it(
        tmp_path, monkeypatch):
    """DRBD 9 stream up, no target daemon: the loop waits for an event or the MONITOR_DELAY
    timer, not DRBD_POLL_INTERVAL; a line of the event stream still starts a pass at once."""
    from iscsi_ha import loop as loop_mod

    monkeypatch.setattr(loop_mod, "FAST_WINDOW", 0.0)
    fifo = str(tmp_path / "events")
    os.mkfifo(fifo)

    class Config(_Config):
        MONITOR_DELAY = 3600.0
        POOL_POLL_INTERVAL = 0.1
        DRBD_POLL_INTERVAL = 0.2
        MONITOR_SCANRATE = 5.0
        MONITOR_MAX_STARTS = 5
        PASS_BUDGET = 25.0
    config = Config(tmp_path)
    config.STATE_DIR = str(tmp_path / "state")
    config.LOCK_FALLBACK_DIR = str(tmp_path / "run")
    # `drbdsetup events2 all` stand-in: prints what the test writes into the FIFO
    w = wakeups.Wakeups(config, "9", ["sh", "-c", 'exec cat "$0"', fifo])
    timeouts, triggers, passed = [], [], threading.Event()
    real_wait = w.wait

    def wait(timeout):
        timeouts.append(timeout)
        real_wait(min(timeout, 30.0))            # never hang the test
    w.wait = wait

    class Record(object):
        class decision(object):
            healthy = True
        results = ()

    class Agent(object):
        pass
    agent = Agent()
    agent.config = config
    agent.adapters = Agent()
    agent.adapters.drbd = type("D", (), {"fingerprint": lambda self: "same"})()
    agent.adapters.target = type("T", (), {"liveness": lambda self: ()})()

    def run_pass(trigger):
        triggers.append(trigger)
        passed.set()
        return Record()
    agent.run_pass = run_pass
    loop = loop_mod.Loop(agent)
    loop.set_wakeups(w)
    worker = threading.Thread(target=loop.run, kwargs={"max_passes": 2})
    worker.daemon = True
    writer = None
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                w.drbd_event_driven and timeouts and timeouts[-1] > 60):
            time.sleep(0.01)
        assert w.drbd_event_driven and triggers == ["start"]
        assert timeouts[-1] > 60                 # asleep until the timer (3600 s) or an event
        writer = open(fifo, "w")
        writer.write("change resource name:r0 role:Secondary\n")
        writer.flush()
        worker.join(30)
        assert not worker.is_alive()
        assert triggers == ["start", "drbd"]
    finally:
        loop.stop.set()
        w.wake()
        if writer is not None:
            writer.close()
        w.close()


def test_a_closed_target_connection_looks_at_once_then_quickly_until_the_process_is_gone():
    """The daemon's end closes while it exits, a moment before it shows as a zombie: the
    watcher checks the processes at once and then every FAST_POLL for TARGET_EXIT_WINDOW."""
    from iscsi_ha import loop as loop_mod
    fake = _FakeWakeups(streaming=True)
    fake.target_event_driven = True
    watcher = _watcher(fake, [])
    target = watcher.agent.adapters.target
    target.alive = (4242,)
    now = [100.0]
    watcher.clock = lambda: now[0]
    watcher.remember()
    watcher.remember_target()
    assert fake.watched == [(4242,)] and watcher.must_poll() is False
    fake.target_closes = True                    # EOF, the process not yet a zombie
    assert watcher.changed() is None
    assert watcher.must_poll() is True
    assert watcher.poll_interval() == loop_mod.FAST_POLL
    target.alive = ()                            # a FAST_POLL later: gone
    now[0] += 2 * loop_mod.FAST_POLL
    assert watcher.changed() == "target process gone"
    now[0] += loop_mod.TARGET_EXIT_WINDOW
    watcher.target_seen = ()
    assert watcher.must_poll() is False          # no process left: events and the timer


def test_daemon_socket_holds_a_connection_to_a_listener_it_was_told_of(tmp_path):
    import select
    import socket
    path = str(tmp_path / "socket.3")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)            # a daemon's management socket
    watch = wakeups.DaemonSocket([str(tmp_path / "absent"), path])
    try:
        assert watch.watch(()) is False and watch.sock is None       # no process: no watch
        assert watch.watch((os.getpid() + 1,)) is False              # someone else listens
        assert watch.watch((os.getpid(),)) is True
        fd = watch.fd
        assert watch.watch((os.getpid(),)) is True and watch.fd == fd   # kept, not redone
        server.settimeout(5)
        stale, _ = server.accept()        # the connection dropped when the pid did not match
        conn, _ = server.accept()
        stale.close()
        assert watch.closed() is False                              # quiet: nothing read
        conn.close()                                                # the daemon's end closes
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert watch.closed() is True and watch.sock is None
        assert watch.closed_by[0] == os.getpid()
        # the same process closed on us and lives on: not watched again, its death is polled
        assert watch.watch((os.getpid(),)) is False
        assert watch.watch((os.getpid(), 7)) is False
        # ... unless that pid is now another process (another start time)
        watch.closed_by = (os.getpid(), b"1")
        assert watch.watch((os.getpid(),)) is True
    finally:
        watch.close()
        server.close()


def test_daemon_socket_covers_the_listener_and_its_children_only(tmp_path):
    """A daemonised tgtd forks its logger after it listens: the logger (a child) is covered
    by the connection. Another process called tgtd (another instance) is not: then the
    processes stay polled."""
    import socket
    import subprocess
    path = str(tmp_path / "socket.0")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    watch = wakeups.DaemonSocket([path])
    try:
        assert watch.watch((os.getpid(), child.pid)) is True and watch.covers
        assert watch.watch((os.getpid(), child.pid, 1)) is False     # pid 1: not a child
        assert watch.sock is not None and not watch.covers           # still held
        assert watch.watch((os.getpid(),)) is True
    finally:
        child.kill()
        child.wait()
        watch.close()
        server.close()


def test_idle_wait_never_outlasts_the_watchdog_ping_interval(tmp_path):
    """systemd's watchdog is pinged between waits: with MONITOR_DELAY above WatchdogSec an
    idle loop that waits for events only would be killed. The wait is capped."""
    from iscsi_ha.loop import Loop
    fake = _FakeWakeups(streaming=True)
    timeouts = []
    fake.wait = timeouts.append
    watcher = _watcher(fake, [])
    loop = Loop.__new__(Loop)
    loop.wakeups, loop.watcher, loop.max_idle = fake, watcher, None
    watcher.remember()
    watcher.remember_target()
    loop._idle_wait(0.1, time.monotonic() + 3600)
    loop.max_idle = 30.0
    loop._idle_wait(0.1, time.monotonic() + 3600)
    assert timeouts[0] > 3000 and timeouts[1] == 30.0


def test_daemon_socket_without_a_listener_polls(tmp_path):
    watch = wakeups.DaemonSocket([str(tmp_path / "absent")])
    assert watch.watch((os.getpid(),)) is False and watch.fd is None
    assert wakeups.DaemonSocket(()).watch((os.getpid(),)) is False
    path = tmp_path / "file"
    path.write_text("")                                   # not a socket
    assert wakeups.DaemonSocket([str(path)]).watch((os.getpid(),)) is False


T = ("/var/run/tgtd/socket.%d", "/var/run/tgtd.ipc_abstract_namespace.%d",
     "/tmp/.TGT_IPC_ABSTRACT_NAMESPACE.%d")


@pytest.mark.parametrize("setting, tgtadm, service, expected", [
    ("auto", "tgtadm", "tgtd", tuple(t % 0 for t in T)),
    ("auto", "tgtadm -C 3", "tgtd", tuple(t % 3 for t in T)),
    ("auto", "/usr/sbin/tgtadm --control-port 12", "tgtd", tuple(t % 12 for t in T)),
    ("auto", "tgtadm --control-port=7", "tgtd", tuple(t % 7 for t in T)),
    ("auto", "tgtadm -C5", "tgtd", tuple(t % 5 for t in T)),
    ("auto", "tgtadm -C x", "tgtd", ()),            # not a port: no guess, poll
    ("auto", "tgtadm", "scst", ()),                 # not tgtd: poll
    ("none", "tgtadm", "tgtd", ()),
    ("/run/tgt/ctl.0", "tgtadm", "tgtd", ("/run/tgt/ctl.0",)),
])
def test_control_socket_follows_tgtadm(setting, tgtadm, service, expected):
    from iscsi_ha.adapters.target import control_socket
    assert control_socket(setting, tgtadm, service) == expected


def test_drbd_events_that_keep_failing_at_once_are_retried_later_and_later(tmp_path):
    """An 8.4 older than 8.4.6 has no events2: the stream fails at each start. The retries
    space out (5, 10, 20 ... 60 s) instead of forking drbdsetup every 5 s for ever; a stream
    that ran a while before it ended is retried after 5 s again."""
    now = [1000.0]
    events = wakeups.DrbdEvents([str(tmp_path / "no-such-drbdsetup")], clock=lambda: now[0])
    waits = []
    for _ in range(9):
        events.ensure()
        assert not events.streaming
        waits.append(events.retry_at - now[0])
        now[0] = events.retry_at
    assert waits == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    events.started_at = now[0] - 60.0        # a stream that had run for a minute ends
    events._failed("ended")
    assert events.retry_at - now[0] == 5.0 and events.quick_failures == 0


def test_drbd_84_polls_proc_drbd_while_its_stream_is_down(tmp_path):
    """8.4 without events2 (the stream cannot start): /proc/drbd's state words decide."""
    proc = tmp_path / "proc_drbd"
    proc.write_text(" 1: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----\n")
    w = wakeups.Wakeups(_Config(tmp_path), "8.4", [str(tmp_path / "no-drbdsetup")])
    try:
        assert w.drbd_changed() is True             # the first look
        assert w.drbd_changed() is False and not w.drbd_event_driven
        proc.write_text(" 1: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C r-----\n")
        assert w.drbd_changed() is True
    finally:
        w.close()


def test_drbd_84_streams_events2_when_it_can(tmp_path):
    script = tmp_path / "events.py"
    script.write_text(STREAM)
    w = wakeups.Wakeups(_Config(tmp_path), "8.4", [sys.executable, str(script), "1.0", "5"])
    try:
        assert w.drbd_changed() is True
        assert w.drbd_event_driven
    finally:
        w.close()
