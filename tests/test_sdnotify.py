"""The sd_notify protocol against real AF_UNIX datagram sockets (file system path and abstract
name), and against what systemd's own ``systemd-notify`` sends."""
import logging
import os
import shutil
import socket
import subprocess
import uuid

import pytest

from iscsi_ha import sdnotify
from iscsi_ha.sdnotify import Notifier


class FakeClock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _pending(sock):
    """Every datagram waiting on ``sock``, without blocking."""
    sock.setblocking(False)
    found = []
    try:
        while True:
            found.append(sock.recv(4096).decode())
    except (BlockingIOError, socket.timeout):
        pass
    finally:
        sock.settimeout(5)
    return found


@pytest.fixture
def path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    try:
        yield path, sock
    finally:
        sock.close()


@pytest.fixture
def abstract_socket():
    name = "iscsi-ha-test-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    sock = _receiver("\0" + name)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def test_socket_address_forms():
    assert sdnotify.socket_address("@abc") == "\0abc"
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.socket_address("") is None
    assert sdnotify.socket_address(None) is None
    assert sdnotify.socket_address("@") is None
    assert sdnotify.socket_address("vsock:2:1234") is None
    assert sdnotify.socket_address("relative/path") is None


@pytest.mark.parametrize("usec, pid_text, expected", [
    ("30000000", None, 30.0),
    ("500000", None, 0.5),
    (" 60000000 ", "4242", 60.0),          # WATCHDOG_PID names us
    ("60000000", "4243", None),            # inherited from another process: not ours
    ("0", None, None),
    ("-5", None, None),
    ("soon", None, None),
    ("", None, None),
    (None, None, None),
    ("60000000", "x", None),
])
def test_watchdog_usec_parsing(usec, pid_text, expected):
    assert sdnotify.parse_watchdog_usec(usec, pid_text, pid=4242) == expected


def test_ready_status_and_stopping_over_a_path_socket(path_socket):
    path, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled and notifier.watchdog_interval() is None
    assert notifier.ready("pass 1: no action:\nprimary") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=pass 1: no action: primary"
    assert notifier.status("pass 1: no action: primary") is False     # unchanged: not resent
    assert notifier.status("pass 2") is True
    assert sock.recv(4096) == b"STATUS=pass 2"
    assert notifier.stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_watchdog_pings_over_an_abstract_socket_are_rate_limited(abstract_socket):
    name, sock = abstract_socket
    clock = FakeClock()
    env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env)
    notifier.clock = clock
    assert notifier.watchdog_interval() == 2.0
    assert notifier.ready() is True
    assert sock.recv(4096) == b"READY=1\nWATCHDOG=1"
    clock.now += 0.5
    assert notifier.ping() is False                  # polled often: no datagram yet
    clock.now += 0.5                                 # a quarter of the 4 s timeout
    assert notifier.ping("idle") is True
    assert sock.recv(4096) == b"STATUS=idle\nWATCHDOG=1"
    clock.now += 0.1
    assert notifier.ping("busy") is True             # a new status goes out at once...
    assert sock.recv(4096) == b"STATUS=busy"         # ...without a premature ping
    assert notifier.ping(force=True) is True
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert _pending(sock) == []
    notifier.close()


def test_every_call_is_a_no_op_without_notify_socket(path_socket):
    _path, sock = path_socket
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert (notifier.ready("x"), notifier.ping("y", force=True), notifier.stopping()) == (
        False, False, False)
    assert sdnotify.notify("READY=1", environ={}) is False
    assert _pending(sock) == []


def test_unset_removes_the_variables_children_would_inherit(path_socket):
    path, _sock = path_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid()),
           "PATH": "/bin"}
    notifier = Notifier.from_environ(env, unset=True)
    assert env == {"PATH": "/bin"}
    assert notifier.enabled and notifier.watchdog_interval() == 1.0


def test_an_unreachable_socket_is_reported_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="iscsi-ha"):
        assert notifier.ready() is False
        assert notifier.ping("x") is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


def test_a_malformed_notify_socket_is_refused_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="iscsi-ha"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:99"})
    assert not notifier.enabled
    assert "not a socket path" in caplog.text


def test_one_shot_notify(path_socket):
    path, sock = path_socket
    assert sdnotify.notify("READY=1\nSTATUS=up", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_budget_warning_when_a_pass_may_outlast_the_watchdog():
    notifier = Notifier("/nonexistent", watchdog_timeout=20.0)
    assert "raise WatchdogSec" in notifier.budget_warning(25.0)
    assert notifier.budget_warning(10.0) is None
    assert Notifier(None, watchdog_timeout=20.0).budget_warning(25.0) is None


def _assignments(datagram):
    return dict(line.split("=", 1) for line in datagram.split("\n") if line)


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="systemd-notify not installed")
def test_same_datagram_as_systemds_own_systemd_notify(abstract_socket):
    """The reference implementation and ours, received by the same socket, say the same."""
    name, sock = abstract_socket
    env = dict(os.environ, NOTIFY_SOCKET=name)
    subprocess.run(["systemd-notify", "--no-block", "--ready", "--status=pass 1 ok"], env=env,
                   timeout=10, check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    theirs = sock.recv(4096).decode()
    Notifier.from_environ({"NOTIFY_SOCKET": name}).ready("pass 1 ok")
    ours = sock.recv(4096).decode()
    assert _assignments(ours) == _assignments(theirs) == {"READY": "1", "STATUS": "pass 1 ok"}
