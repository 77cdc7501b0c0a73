"""The daemon as systemd and the init scripts see it: notify protocol, xapi wait, SIGTERM."""
import os
import signal
import socket
import threading
import time

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha.cli.agent_main import wait_for_xapi
from iscsi_ha_lab.rig import Rig
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


HANG_WRAPPER = """#!/bin/sh
# The target's status command, made to outlive the pass budget while {flag} exists.
if [ -e {flag} ]; then sleep 60; fi
exec {bin}/tgtd-service "$@"
"""


def _status(rig):
    try:
        import json
        with open(rig.host.status_path) as handle:
            return json.load(handle)
    except (OSError, IOError, ValueError):
        return {}


def _until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out after %.0f s waiting for %s" % (seconds, what))


def _dead(agent, host):
    if agent.poll() is None:
        return None
    with open(os.path.join(host.root, "agent.stderr")) as handle:
        raise AssertionError("the agent exited %s: %s" % (agent.returncode, handle.read()[-2000:]))


@pytest.mark.netns
def test_real_daemon_survives_a_hung_pass_alerts_and_runs_the_next(ns_prefix, tmp_path):
    """Issue 10 (1): the real ``iscsi-ha run`` whose target commands hang (as with a stopped
    tgtd): each call stays within its own timeout (1.5 s, which the config requires to be
    shorter than the pass budget) but together they outlive the pass budget
    (MONITOR_MAX_STARTS x MONITOR_SCANRATE = 2 s). The daemon kills the pass's children, sends a
    pass-hung alert (to the lab's fake XAPI over the config's Unix socket), stays up, and its
    next passes run."""
    from iscsi_ha_lab.fake_xapi import FakePool
    rig = Rig(str(tmp_path), ns_prefix, ctl=45)
    pool = None
    try:
        rig.up()
        host = rig.host
        pool = FakePool(str(tmp_path / "xapi"))
        pool.add_host(host.hostname, host.address, host.pool_conf,
                      uds_path=os.path.join(host.root, "xapi.sock"), tcp=False)
        pool.start()
        flag = os.path.join(host.root, "hang")
        wrapper = os.path.join(host.bin, "hanging-status")
        with open(wrapper, "w") as handle:
            handle.write(HANG_WRAPPER.format(flag=flag, bin=host.bin))
        os.chmod(wrapper, 0o755)
        config = host.read_config().replace("%s/tgtd-service" % host.bin, wrapper)
        assert config.count(wrapper) == 3
        host.write_config(config + "MONITOR_SCANRATE=1\nMONITOR_MAX_STARTS=2\n"
                          "MONITOR_DELAY=1\nMAIL_ON=0\nTARGET_TIMEOUT=1.5\n"
                          "TARGET_STOP_TIMEOUT=1\nDRBD_TIMEOUT=1.5\nXAPI_TIMEOUT=1\n"
                          "NET_TIMEOUT=1.5\n")
        agent = host.start_agent()
        first = _until(lambda: _status(rig).get("pass", {}).get("number") or _dead(agent, host),
                       30, "a first pass")
        open(flag, "w").close()
        hung = _until(lambda: (_status(rig).get("hung_passes") or 0) >= 1 and _status(rig),
                      30, "a pass counted as hung in the status")
        assert hung["pass"]["number"] > first
        assert agent.poll() is None, "the daemon died on a hung pass"
        messages = _until(lambda: pool.messages("ISCSI_HA_PASS_HUNG"), 20,
                          "the pass-hung alert as a XAPI message")
        assert "killed" in messages[0]["body"]
        os.unlink(flag)
        after = hung["pass"]["number"]
        later = _until(lambda: _status(rig).get("pass", {}).get("number", 0) > after + 1 and
                       _status(rig), 30, "passes after the hang")
        assert agent.poll() is None
        assert later["target"] is not None          # the status command answered again
        with open(os.path.join(host.root, "agent.log")) as handle:
            log_text = handle.read()
        assert "TypeError" not in log_text
        assert "pass hung for 2 scans" in log_text
    finally:
        rig.host.stop_agent(signal.SIGKILL)
        if pool is not None:
            pool.stop()
        rig.down()


@pytest.mark.netns
def test_tgtd_death_wakes_the_daemon_through_its_held_connection(ns_prefix, tmp_path):
    """The real daemon, primary on DRBD 9 (event stream), holds a connection to the real
    tgtd's management socket. With polling slowed to 60 s and the pass timer to an hour, only
    that connection can tell it tgtd died: SIGKILL tgtd, and a pass triggered by "target process
    gone" restarts it within seconds; it watches the new tgtd the same way."""
    rig = Rig(str(tmp_path), ns_prefix, ctl=44, drbd_version="9")
    try:
        rig.up()
        host = rig.host
        rig.set_pool("master")
        host.write_config(host.read_config() + "MONITOR_DELAY=3600\nDRBD_POLL_INTERVAL=60\n"
                          "POOL_POLL_INTERVAL=10\nMAIL_ON=0\n")
        agent = host.start_agent()
        for round_ in range(2):
            _until(lambda: (_status(rig).get("health") == "ok" and host.tgtd_pid()
                                  and _status(rig)) or _dead(agent, host), 30,
                         "a serving primary (round %d)" % round_)
            number = _quiet_for(rig, 6, 40)   # settled, past the fast window after a move
            pid = host.tgtd_pid()
            host.kill_tgtd()
            # polling would take 60 s; the held connection's end of file, a moment
            after = _until(lambda: (_status(rig).get("pass", {}).get("number", 0) > number
                                    and _status(rig)) or _dead(agent, host), 15,
                           "a pass after tgtd died")
            assert after["pass"]["trigger"] == "target process gone", after["pass"]
            _until(lambda: host.tgtd_pid() not in (None, pid), 20, "tgtd started again")
        assert agent.poll() is None
    finally:
        rig.host.stop_agent(signal.SIGKILL)
        rig.down()


def _quiet_for(rig, seconds, limit):
    """The pass number once no pass ran for ``seconds`` (within ``limit`` seconds)."""
    deadline, number, since = time.monotonic() + limit, None, time.monotonic()
    while time.monotonic() < deadline:
        now = _status(rig).get("pass", {}).get("number")
        if now != number:
            number, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return number
        time.sleep(0.2)
    raise AssertionError("passes did not stop for %s s within %s s" % (seconds, limit))
