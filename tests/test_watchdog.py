"""The watchdog against real processes: a stand-in agent (a small Python script named
``iscsi-ha`` that publishes the status fields the watchdog reads) in a tmp dir laid out like a
dom0. Dead -> restarted, stale -> killed and restarted, stopped by the admin -> left alone,
restarts counted, alerts raised. Every process a test starts is killed when it ends."""
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest

from iscsi_ha import config as config_mod, watchdog
from iscsi_ha.watchdog import ADMIN_STOPPED, DEAD, RUNNING, STALE, STARTING, Settings, Watchdog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The stand-in agent. Its STATE_DIR comes from the config; a one-shot STATE_DIR/fake-mode file
# changes its behaviour: "hang" (alive, never publishes), "ignore-term" (SIGTERM ignored),
# "exit" (exits at once with 2, like a refused configuration). Bounded to 10 minutes.
FAKE_AGENT = r'''#!{python}
import json, os, signal, sys, time
args = sys.argv[1:]
assert args[0] == "run", args
conf = args[args.index("--config") + 1]
state = [l.split("=", 1)[1].strip() for l in open(conf) if l.startswith("STATE_DIR=")][-1]
mode_file = os.path.join(state, "fake-mode")
mode = open(mode_file).read().strip() if os.path.exists(mode_file) else ""
if mode:
    os.unlink(mode_file)
if mode == "exit":
    sys.exit(2)
stop = []
signal.signal(signal.SIGTERM, (lambda *a: None) if mode == "ignore-term" else
              (lambda *a: stop.append(1)))
manual_file = os.path.join(state, "manual")
number, deadline = 0, time.time() + 600
while not stop and time.time() < deadline:
    number += 1
    manual = open(manual_file).read().strip() if os.path.exists(manual_file) else "off"
    second = manual == "become_secondary"
    doc = {{"updated": time.time(), "agent": {{"pid": os.getpid()}},
           "pass": {{"number": number, "started": time.time()}}, "manual_mode": manual,
           "desired_role": "secondary" if second else "primary",
           "decision": {{"reason": "no action: " + ("secondary" if second else "primary"),
                        "actions": []}},
           "drbd": {{"iscsi1": {{"role": "Secondary" if second else "Primary"}}}},
           "target": {{"running": not second}}, "floating_ip": {{"local": not second}}}}
    if mode != "hang":
        tmp = os.path.join(state, "status.tmp")
        with open(tmp, "w") as handle:
            json.dump(doc, handle)
        os.rename(tmp, os.path.join(state, "status"))
    time.sleep(0.1)
'''

WATCHDOG_WRAPPER = """#!{python}
import sys
sys.path.insert(0, {repo!r})
from iscsi_ha.watchdog import main_exit
main_exit()
"""

START_AGENT = """#!/bin/sh
echo start >> {root}/starts.log
setsid {agent} run --config {config} </dev/null >>{root}/agent.log 2>&1 &
echo $! > {pid_file}
"""


def _executable(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class FakeHost(object):
    """A tmp dir laid out like a dom0: config, STATE_DIR, pid files, the stand-in agent."""

    def __init__(self, root, cookie=True):
        self.root = str(root)
        for sub in ("bin", "state", "run", "log", "lock/subsys"):
            os.makedirs(os.path.join(self.root, sub))
        self.state = os.path.join(self.root, "state")
        self.config = os.path.join(self.root, "iscsi-ha.conf")
        self.pid_file = os.path.join(self.root, "run", "iscsi-ha.pid")
        self.watchdog_pid_file = os.path.join(self.root, "run", "iscsi-ha-watchdog.pid")
        self.agent = os.path.join(self.root, "bin", "iscsi-ha")
        self.watchdog_bin = os.path.join(self.root, "bin", "iscsi-ha-watchdog")
        self.start_script = os.path.join(self.root, "bin", "start-agent")
        self.cookie = os.path.join(self.root, "xapi_init_complete.cookie")
        if cookie:
            open(self.cookie, "w").close()
        _executable(self.agent, FAKE_AGENT.format(python=sys.executable))
        _executable(self.watchdog_bin, WATCHDOG_WRAPPER.format(python=sys.executable, repo=REPO))
        _executable(self.start_script, START_AGENT.format(
            root=self.root, agent=self.agent, config=self.config, pid_file=self.pid_file))
        self.write_config(self.start_script)

    def write_config(self, start_command, extra=""):
        """Short timings: stale after MONITOR_DELAY 0.5 + budget 2 x 0.5 + margin 0.5 = 2 s."""
        with open(self.config, "w") as handle:
            handle.write(
                "STATE_DIR={state}\nMONITOR_DELAY=0.5\nMONITOR_MAX_STARTS=2\n"
                "MONITOR_SCANRATE=0.5\nDRBD_TIMEOUT=0.4\nTARGET_TIMEOUT=0.4\nNET_TIMEOUT=0.4\n"
                "XAPI_TIMEOUT=0.4\nXAPI_INIT_COOKIE={cookie}\nSYSLOG_SOCKET=\n"
                "WATCH_INTERVAL=0.2\nWATCH_MARGIN=0.5\nAGENT_PID_FILE={pid}\n"
                "WATCHDOG_PID_FILE={wpid}\nAGENT_START_COMMAND=\"{start}\"\n"
                "AGENT_START_TIMEOUT=20\n{extra}".format(
                    state=self.state, cookie=self.cookie, pid=self.pid_file,
                    wpid=self.watchdog_pid_file, start=start_command, extra=extra))

    def settings(self):
        return Settings.from_config(config_mod.load(self.config))

    def start_agent(self, mode=""):
        if mode:
            with open(os.path.join(self.state, "fake-mode"), "w") as handle:
                handle.write(mode)
        subprocess.run([self.start_script], check=True, timeout=20)
        if mode != "exit":
            # Until the forked shell has exec'd setsid/python, the pid's command line is the
            # start script's, not the agent's: wait (bounded) so that a test that acts at once
            # (demote) does not race the exec on a loaded machine.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and \
                    watchdog.agent_process(self.agent_pid()) is None:
                time.sleep(0.01)
        return self.agent_pid()

    def agent_pid(self):
        return watchdog.read_pid(self.pid_file)

    def starts(self):
        try:
            with open(os.path.join(self.root, "starts.log")) as handle:
                return len(handle.readlines())
        except IOError:
            return 0

    def processes(self):
        found = []
        for proc in psutil.process_iter():
            try:
                if self.root in " ".join(proc.cmdline()) and proc.pid != os.getpid():
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    def cleanup(self):
        victims = self.processes()
        for proc in victims:
            try:
                proc.kill()
            except psutil.Error:
                pass
        wait_for(lambda: not any(_running(proc) for proc in victims), timeout=5)


def _running(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for(predicate, timeout=20.0, step=0.05):
    """Poll ``predicate`` until it returns something true or ``timeout`` passes; return it."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = predicate()
    return value


def alive(pid):
    return watchdog.agent_process(pid) is not None


@pytest.fixture
def host(tmp_path):
    fake = FakeHost(tmp_path)
    try:
        yield fake
    finally:
        fake.cleanup()


@pytest.fixture
def alerts():
    return []


def make_watchdog(host, alerts):
    return Watchdog(host.settings(), alert=lambda *a: alerts.append(a))


def verdict(dog, wanted):
    return lambda: dog.observe().verdict == wanted


def test_a_running_agent_is_left_alone(host, alerts):
    pid = host.start_agent()
    dog = make_watchdog(host, alerts)
    assert wait_for(verdict(dog, RUNNING)), dog.observe()
    assert dog.tick().verdict == RUNNING
    assert host.agent_pid() == pid and alive(pid)
    assert host.starts() == 1 and dog.history.restarts == 0 and alerts == []


def test_a_dead_agent_is_restarted_counted_and_alerted(host, alerts):
    old = host.start_agent()
    os.kill(old, signal.SIGKILL)
    dog = make_watchdog(host, alerts)
    assert wait_for(verdict(dog, DEAD))
    view = dog.tick()
    assert view.verdict == DEAD and view.pid == old
    assert host.starts() == 2
    new = host.agent_pid()
    assert new != old and wait_for(lambda: alive(new))
    assert wait_for(verdict(dog, RUNNING)), dog.observe()
    with open(host.settings().WATCHDOG_STATE_FILE) as handle:
        saved = json.load(handle)
    assert saved["restarts"] == 1 and saved["failed"] == 0
    assert saved["history"][0]["verdict"] == DEAD and saved["history"][0]["ok"] is True
    assert len(alerts) == 1
    kind, severity, text = alerts[0]
    assert (kind, severity) == ("agent-restarted", watchdog.SEVERITY_RESTARTED)
    assert "agent dead" in text and "restart 1" in text
    # the count survives the watchdog itself being restarted
    assert make_watchdog(host, alerts).history.restarts == 1


def test_a_stale_agent_is_killed_then_restarted(host, alerts):
    old = host.start_agent(mode="hang")
    dog = make_watchdog(host, alerts)
    assert dog.observe().verdict == STARTING          # no status yet, within its allowance
    assert wait_for(verdict(dog, STALE)), dog.observe()
    assert dog.tick().verdict == STALE
    assert wait_for(lambda: not alive(old)), "the hung agent was not killed"
    new = host.agent_pid()
    assert new != old and host.starts() == 2
    assert wait_for(verdict(dog, RUNNING)), dog.observe()
    assert dog.history.data["history"][-1]["verdict"] == STALE
    assert "killed pid %d" % old in dog.history.data["history"][-1]["outcome"]
    assert "killed and restarted" in alerts[0][2]


def test_an_agent_stopped_by_the_admin_is_left_stopped(host, alerts):
    pid = host.start_agent()
    settings = host.settings()
    watchdog.mark_stopped(settings)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not alive(pid))
    dog = make_watchdog(host, alerts)
    for _ in range(3):
        assert dog.tick().verdict == ADMIN_STOPPED
    assert host.starts() == 1 and alerts == [] and dog.history.restarts == 0
    watchdog.clear_stopped(settings)
    watchdog.clear_stopped(settings)                  # idempotent
    assert dog.tick().verdict == DEAD and host.starts() == 2


def test_a_pid_file_naming_another_program_is_dead_and_that_program_untouched(host, alerts):
    other = subprocess.Popen(["sleep", "60"])
    try:
        with open(host.pid_file, "w") as handle:
            handle.write("%d\n" % other.pid)
        dog = make_watchdog(host, alerts)
        view = dog.tick()
        assert view.verdict == DEAD and "is not a running iscsi-ha agent" in view.detail
        assert other.poll() is None                   # never killed: it is not ours
        assert host.starts() == 1 and alive(host.agent_pid())
    finally:
        other.kill()
        other.wait()


def test_no_status_is_allowed_while_xapi_is_not_initialised(tmp_path, alerts):
    host = FakeHost(tmp_path, cookie=False)
    try:
        host.start_agent(mode="hang")
        dog = make_watchdog(host, alerts)
        view = dog.tick()
        assert view.verdict == STARTING and "allowed 30" in view.detail   # XAPI_INIT_WAIT 300
        assert host.starts() == 1
    finally:
        host.cleanup()


def test_a_failed_restart_is_counted_and_alerted_as_more_urgent(host, alerts):
    host.write_config("/bin/false")
    dog = make_watchdog(host, alerts)
    assert dog.tick().verdict == DEAD
    assert dog.history.data["failed"] == 1 and dog.history.restarts == 1
    assert alerts[0][1] == watchdog.SEVERITY_NOT_RESTARTED
    host.write_config("/nonexistent/start-agent")
    dog = make_watchdog(host, alerts)
    assert dog.tick().verdict == DEAD and dog.history.data["failed"] == 2
    assert "cannot run" in alerts[1][2]


def test_a_broken_alert_path_does_not_stop_the_watchdog(host):
    def broken(*_):
        raise RuntimeError("smtp down")
    dog = Watchdog(host.settings(), alert=broken)
    assert dog.tick().verdict == DEAD and host.starts() == 1


def test_the_alert_hook_uses_the_alerts_package(host):
    host.write_config(host.start_script, extra="MAIL_ON=0\n")
    alert, close = watchdog.alert_hook(config_mod.load(host.config))
    assert alert is not None
    alert("agent-restarted", watchdog.SEVERITY_RESTARTED, "watchdog: agent dead: restarted")
    close()


@pytest.mark.parametrize("argv, expected", [
    (["/usr/bin/python3", "-s", "/usr/bin/iscsi-ha", "run", "--config", "/etc/x"], True),
    (["/work/.venv/bin/iscsi-ha", "run"], True),
    (["python3", "-m", "iscsi_ha.cli.agent_main", "run", "--once"], True),
    (["/usr/bin/python3", "/usr/bin/iscsi-ha", "check", "--config", "/etc/x"], False),
    (["/usr/bin/python3", "/usr/sbin/iscsi-ha-watchdog", "run"], False),
    (["/bin/bash", "/etc/rc.d/init.d/iscsi-ha", "start"], False),
    (["sleep", "60"], False),
    ([], False),
])
def test_what_counts_as_the_agent(argv, expected):
    assert watchdog.looks_like_agent(argv) is expected


def test_watchdog_keys_are_read_and_checked_until_config_py_knows_them(host):
    settings = host.settings()
    assert (settings.WATCH_INTERVAL, settings.AGENT_PID_FILE) == (0.2, host.pid_file)
    assert settings.AGENT_START_COMMAND == host.start_script
    assert settings.STALE_AFTER == pytest.approx(0.5 + 2 * 0.5 + 0.5)
    assert settings.WATCHDOG_STATE_FILE == os.path.join(host.state, "watchdog.json")
    host.write_config(host.start_script, extra="WATCH_INTERVAL=soon\n")
    with pytest.raises(config_mod.ConfigError) as error:
        host.settings()
    assert "WATCH_INTERVAL" in str(error.value)
    host.write_config(host.start_script, extra="AGENT_PID_FILE=relative.pid\n")
    with pytest.raises(config_mod.ConfigError):
        host.settings()


def _doc(since, **changes):
    doc = {"pass": {"started": since + 1}, "desired_role": "secondary",
           "decision": {"reason": "no action: secondary", "actions": []},
           "drbd": {"iscsi1": {"role": "Secondary"}, "iscsi2": {"role": "Secondary"}},
           "target": {"running": False}, "floating_ip": {"local": False}}
    doc.update(changes)
    return doc


@pytest.mark.parametrize("changes, expected", [
    ({}, True),
    ({"target": None, "floating_ip": {"local": None}}, True),
    ({"pass": {"started": 99.0}}, False),                       # a pass from before the request
    ({"desired_role": "primary"}, False),
    ({"decision": {"reason": "demoting", "actions": ["stop target"]}}, False),
    ({"drbd": {"iscsi1": {"role": "Secondary"}, "iscsi2": {"role": "Primary"}}}, False),
    ({"drbd": {}}, False),                                       # DRBD unreadable: not proven
    ({"target": {"running": True}}, False),
    ({"floating_ip": {"local": True}}, False),
    ({"decision": None}, False),
])
def test_what_counts_as_demoted(changes, expected):
    assert watchdog.demoted(_doc(100.0, **changes), 100.0) is expected


def test_demote_sets_manual_secondary_and_waits_for_the_agent(host):
    host.start_agent()
    settings = host.settings()
    ok, sentence = watchdog.demote(settings, timeout=20)
    assert ok, sentence
    with open(settings.MANUAL_FILE) as handle:
        assert handle.read().strip() == "become_secondary"


def test_demote_refuses_when_the_agent_is_not_running(host):
    ok, sentence = watchdog.demote(host.settings(), timeout=1)
    assert not ok and "not running" in sentence
    assert not os.path.exists(host.settings().MANUAL_FILE)


def test_demote_gives_up_after_its_timeout(host):
    host.start_agent(mode="hang")                     # never reports anything
    ok, sentence = watchdog.demote(host.settings(), timeout=0.5)
    assert not ok and "not demoted after" in sentence


def test_cli_check_mark_and_clear(host, capsys):
    args = ["--config", host.config]
    assert watchdog.main(["check"] + args) == watchdog.EXIT_FAIL
    assert "agent dead" in capsys.readouterr().out
    assert watchdog.main(["mark-stopped"] + args) == 0
    assert watchdog.main(["check"] + args) == watchdog.EXIT_STOPPED
    assert watchdog.main(["clear-stopped"] + args) == 0
    host.start_agent()
    assert wait_for(lambda: watchdog.main(["check"] + args) == 0)
    bad = os.path.join(host.root, "bad.conf")
    with open(bad, "w") as handle:
        handle.write("MONITOR_DELAY=never\n")
    assert watchdog.main(["check", "--config", bad]) == watchdog.EXIT_USAGE


def test_the_watchdog_process_restarts_a_killed_agent_and_stops_on_sigterm(host):
    first = host.start_agent()
    proc = subprocess.Popen([host.watchdog_bin, "run", "--config", host.config],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: watchdog.read_pid(host.watchdog_pid_file) == proc.pid)
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: host.agent_pid() if host.agent_pid() != first else None)
        assert second and wait_for(lambda: alive(second))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(host.watchdog_pid_file)
        log = proc.stderr.read().decode()
        assert "killed" not in log and "agent dead" in log and "restart 1" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_run_loop_is_bounded_by_stop_event(host):
    dog = Watchdog(host.settings())
    stop = threading.Event()
    stop.set()
    dog.run(stop)
    assert host.starts() == 0
    dog.run(threading.Event(), max_ticks=1)
    assert host.starts() == 1


def test_restarts_that_do_not_bring_the_agent_up_back_off_with_a_cap_and_an_alert(host, alerts):
    host.write_config("/bin/false")
    now = [1000.0]
    dog = Watchdog(host.settings(), alert=lambda *a: alerts.append(a),
                   monotonic=lambda: now[0])
    interval = dog.s.WATCH_INTERVAL
    tries, ticks = [], 0
    while now[0] < 1000.0 + 4 * watchdog.BACKOFF_MAX:   # ticks one interval apart, as run()
        ticks += 1
        before = dog.history.restarts
        assert dog.tick().verdict == DEAD
        if dog.history.restarts > before:
            tries.append(now[0])
        now[0] += interval
    gaps = [round(b - a, 6) for a, b in zip(tries, tries[1:])]
    # 1st and 2nd restart one interval apart, then doubling waits, capped at BACKOFF_MAX
    assert gaps[0] == interval and gaps[1] >= 2 * interval and gaps[2] >= 4 * interval
    assert max(gaps) <= watchdog.BACKOFF_MAX + interval
    assert gaps[-1] >= watchdog.BACKOFF_MAX
    assert len(tries) < 20 and ticks > 5000    # without backoff: one restart per tick
    kinds = [a[0] for a in alerts]
    assert kinds.count("agent-restart-backoff") == 2      # when it starts, and at the cap
    assert "backing off" in [a for a in alerts if a[0] == "agent-restart-backoff"][0][2]


def test_backoff_is_reset_once_the_agent_runs(host, alerts):
    host.write_config("/bin/false")
    now = [0.0]
    dog = Watchdog(host.settings(), alert=lambda *a: alerts.append(a), monotonic=lambda: now[0])
    for _ in range(3):
        dog.tick()
        now[0] += 1000
    assert dog.streak == 3
    host.write_config(host.start_script)
    host.start_agent()
    assert wait_for(verdict(dog, RUNNING))
    assert dog.tick().verdict == RUNNING and dog.streak == 0 and dog.not_before is None
