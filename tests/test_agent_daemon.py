"""The daemon as systemd and the init scripts see it: notify protocol, xapi wait, SIGTERM."""
import os
import signal
import socket
import threading
import time

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha.cli.agent_main import wait_for_xapi
from iscsi_ha.lab.rig import Rig
from iscsi_ha.sdnotify import Notifier


class Clock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_xapi_wait_returns_at_once_when_the_cookie_exists(tmp_path):
    cookie = tmp_path / "xapi_init_complete.cookie"
    cookie.write_text("")
    config = config_mod.loads("XAPI_INIT_COOKIE=%s\n" % cookie)
    assert wait_for_xapi(config, threading.Event(), Notifier()) is True


def test_xapi_wait_is_bounded_and_says_so(tmp_path, caplog):
    config = config_mod.loads("XAPI_INIT_COOKIE=%s\nXAPI_INIT_WAIT=3\n" % (tmp_path / "none"))
    stop = threading.Event()
    stop.wait = lambda seconds: False          # no real sleeping: the fake clock advances
    with caplog.at_level("INFO", logger="iscsi-ha"):
        assert wait_for_xapi(config, stop, Notifier(), clock=Clock()) is False
    assert "did not finish starting within 3 s" in caplog.text


def test_xapi_wait_interrupted_says_so_not_that_the_wait_ran_out(tmp_path, caplog):
    config = config_mod.loads("XAPI_INIT_COOKIE=%s\nXAPI_INIT_WAIT=300\n" % (tmp_path / "none"))
    stop, clock = threading.Event(), Clock()

    def wait(seconds):                         # the stop signal arrives during the 3rd wait
        if clock.now >= 3:
            stop.set()
        return stop.is_set()
    stop.wait = wait
    with caplog.at_level("INFO", logger="iscsi-ha"):
        assert wait_for_xapi(config, stop, Notifier(), clock=clock) is False
    assert "did not finish starting within" not in caplog.text
    assert "stopped while waiting for xapi" in caplog.text and "of at most 300 s" in caplog.text


@pytest.mark.netns
def test_daemon_notifies_systemd_and_stops_on_sigterm(ns_prefix, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(10)
    rig = Rig(str(tmp_path), ns_prefix, ctl=46)
    os.environ["NOTIFY_SOCKET"] = sock_path
    os.environ["WATCHDOG_USEC"] = "4000000"
    try:
        rig.up()
        agent = rig.host.start_agent()
        messages = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages[1:]):
            messages.append(listener.recv(4096).decode())
        assert "READY=1" in messages[0]
        assert any("WATCHDOG=1" in m for m in messages[1:])      # pings between passes
        os.killpg(agent.pid, signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        os.environ.pop("NOTIFY_SOCKET", None)
        os.environ.pop("WATCHDOG_USEC", None)
        rig.host.stop_agent(signal.SIGKILL)
        rig.down()
        listener.close()
