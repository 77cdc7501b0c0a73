"""The SysV scripts (init/iscsi-ha, init/iscsi-ha-watchdog) run for real, with every path
pointed into a tmp dir by environment variables, against the stand-in agent of
test_watchdog.py and the real watchdog; systemd delegation against a recording systemctl; and
the RPM: built, listed and its payload run (scripts/rpm-payload-check, marked ``rpm``)."""
import importlib.util
import os
import shutil
import signal
import subprocess
import time

import pytest

from iscsi_ha import watchdog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_INIT = os.path.join(REPO, "init", "iscsi-ha")
WATCHDOG_INIT = os.path.join(REPO, "init", "iscsi-ha-watchdog")

# The stand-in agent and the tmp dom0 layout live in test_watchdog.py; loaded by path so this
# works whatever pytest's import mode is.
_spec = importlib.util.spec_from_file_location(
    "_watchdog_helpers", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "test_watchdog.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
FakeHost, wait_for, alive = helpers.FakeHost, helpers.wait_for, helpers.alive

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> {log}
case "$1" in
    show) echo "LoadState={load_state}" ;;
    is-active) [ "$2" = -q ] || echo active ;;
esac
exit 0
"""

FAKE_FUNCTIONS = """# a stand-in for /etc/rc.d/init.d/functions
echo "skip-redirect=$SYSTEMCTL_SKIP_REDIRECT" >> {log}
success() {{ echo -n "RH-OK"; return 0; }}
failure() {{ echo -n "RH-FAILED"; return 1; }}
"""


class SysV(object):
    """Runs the init scripts with the tmp host's paths."""

    def __init__(self, host):
        self.host = host
        root = host.root
        host.write_config(AGENT_INIT + " start")          # the watchdog restarts through us
        self.lock = os.path.join(root, "lock", "subsys", "iscsi-ha")
        self.watchdog_console = os.path.join(root, "log", "watchdog.log")
        self.marker = os.path.join(host.state, watchdog.ADMIN_STOP_NAME)
        self.env = dict(
            os.environ, ISCSI_HA_CONFIG=host.config, ISCSI_HA_AGENT_CMD=host.agent + " run",
            ISCSI_HA_PIDFILE=host.pid_file, ISCSI_HA_LOCKFILE=self.lock,
            ISCSI_HA_CONSOLE_LOG=os.path.join(root, "log", "agent.log"),
            ISCSI_HA_WATCHDOG_BIN=host.watchdog_bin, ISCSI_HA_WATCHDOG_INIT=WATCHDOG_INIT,
            ISCSI_HA_WATCHDOG_PIDFILE=host.watchdog_pid_file,
            ISCSI_HA_WATCHDOG_LOCKFILE=os.path.join(root, "lock", "subsys", "iscsi-ha-watchdog"),
            ISCSI_HA_WATCHDOG_CONSOLE_LOG=self.watchdog_console,
            ISCSI_HA_STOP_TIMEOUT="5", ISCSI_HA_WATCHDOG_STOP_TIMEOUT="5",
            ISCSI_HA_START_SETTLE="0.5", ISCSI_HA_DEMOTE_TIMEOUT="20",
            ISCSI_HA_FUNCTIONS=os.path.join(root, "no-functions"), ISCSI_HA_SYSTEMD="no")

    def run(self, *args, **env):
        if args and args[0] == "watchdog":
            argv = [WATCHDOG_INIT] + list(args[1:])
        else:
            argv = [AGENT_INIT] + list(args)
        done = subprocess.run(argv, env=dict(self.env, **env), timeout=120,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        return done.returncode, done.stdout

    def agent(self):
        pid = watchdog.read_pid(self.host.pid_file)
        return pid if alive(pid) else None

    def watchdog_pid(self):
        pid = watchdog.read_pid(self.host.watchdog_pid_file)
        return pid if watchdog.agent_process(pid, lambda a: "watchdog" in " ".join(a)) else None

    def watchdog_log(self):
        try:
            with open(self.watchdog_console) as handle:
                return handle.read()
        except IOError:
            return ""


@pytest.fixture
def sysv(tmp_path):
    host = FakeHost(tmp_path)
    scripts = SysV(host)
    try:
        yield scripts
    finally:
        for args in (("watchdog", "stop"), ("stop",)):
            try:
                scripts.run(*args)
            except subprocess.TimeoutExpired:
                pass
        host.cleanup()


def test_start_status_stop_and_their_lsb_exit_codes(sysv):
    assert sysv.run("status") == (3, "iscsi-ha is stopped\n")
    rc, out = sysv.run("start")
    assert rc == 0 and "Starting iscsi-ha: [ OK ]" in out, out
    pid = sysv.agent()
    assert pid and os.path.exists(sysv.lock)
    rc, out = sysv.run("start")
    assert rc == 0 and "already running (pid %d)" % pid in out and sysv.agent() == pid
    assert sysv.run("status") == (0, "iscsi-ha (pid %d) is running\n" % pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid))
    rc, out = sysv.run("status")
    assert rc == 1 and "dead but pid file" in out
    os.unlink(sysv.host.pid_file)
    assert sysv.run("status")[0] == 2                            # subsys lock left behind
    rc, out = sysv.run("stop")
    assert rc == 0 and "not running" in out
    assert sysv.run("status")[0] == 3


def test_stop_terminates_the_agent_and_leaves_a_record_for_the_watchdog(sysv):
    sysv.run("start")
    pid = sysv.agent()
    rc, out = sysv.run("stop")
    assert rc == 0 and "Stopping iscsi-ha (pid %d): [ OK ]" % pid in out, out
    assert not alive(pid) and not os.path.exists(sysv.host.pid_file)
    assert os.path.exists(sysv.marker)
    sysv.run("start")
    assert not os.path.exists(sysv.marker)                        # start removes the record


def test_an_agent_that_ignores_sigterm_gets_sigkill(sysv):
    with open(os.path.join(sysv.host.state, "fake-mode"), "w") as handle:
        handle.write("ignore-term")
    sysv.run("start")
    pid = sysv.agent()
    rc, out = sysv.run("stop", ISCSI_HA_STOP_TIMEOUT="0.5")
    assert rc == 0 and "SIGKILL" in out, out
    assert not alive(pid)


def test_an_agent_that_exits_at_once_fails_the_start(sysv):
    with open(os.path.join(sysv.host.state, "fake-mode"), "w") as handle:
        handle.write("exit")
    rc, out = sysv.run("start")
    assert rc == 1 and "exited at once" in out, out
    assert not os.path.exists(sysv.host.pid_file)


def test_lsb_codes_for_usage_missing_agent_and_missing_config(sysv, tmp_path):
    assert sysv.run("frobnicate")[0] == 2
    assert sysv.run("start", "now")[0] == 2
    assert sysv.run()[0] == 2
    rc, out = sysv.run("start", ISCSI_HA_AGENT_CMD=str(tmp_path / "nowhere") + " run")
    assert rc == 5 and "not installed" in out
    rc, out = sysv.run("start", ISCSI_HA_CONFIG=str(tmp_path / "none.conf"))
    assert rc == 6 and "no configuration" in out


def test_start_w_status_w_and_stop_w(sysv):
    rc, out = sysv.run("start", "-w")
    assert rc == 0 and "Starting iscsi-ha-watchdog: [ OK ]" in out, out
    agent, dog = sysv.agent(), sysv.watchdog_pid()
    assert agent and dog
    assert wait_for(lambda: sysv.run("status", "-w")[0] == 0)
    rc, out = sysv.run("status", "-w")
    assert "iscsi-ha (pid %d) is running" % agent in out
    assert "iscsi-ha-watchdog (pid %d) is running" % dog in out
    assert "the watchdog sees: agent running" in out
    rc, out = sysv.run("stop", "-w")
    assert rc == 0, out
    assert out.index("Stopping iscsi-ha-watchdog") < out.index("Stopping iscsi-ha (pid")
    assert not alive(agent) and sysv.watchdog_pid() is None
    assert sysv.run("status", "-w")[0] == 3
    assert sysv.run("watchdog", "status")[0] == 3


def test_a_plain_stop_is_never_undone_by_the_running_watchdog(sysv):
    sysv.run("start", "-w")
    first = sysv.agent()
    rc, out = sysv.run("stop")                                     # no -w: the watchdog stays
    assert rc == 0 and sysv.watchdog_pid() and not alive(first)
    assert wait_for(lambda: "agent stopped by admin" in sysv.watchdog_log()), sysv.watchdog_log()
    time.sleep(1.0)                                                # five watchdog intervals
    assert sysv.agent() is None and sysv.run("status")[0] == 3
    # the same watchdog does restart an agent that dies after a start
    sysv.run("start")
    second = sysv.agent()
    os.kill(second, signal.SIGKILL)
    third = wait_for(lambda: sysv.agent() if sysv.agent() not in (None, second) else None)
    assert third, sysv.watchdog_log()
    assert wait_for(lambda: "agent dead" in sysv.watchdog_log()), sysv.watchdog_log()


def test_demote_stop_demotes_first_then_stops(sysv):
    sysv.run("start", "-w")
    agent = sysv.agent()
    rc, out = sysv.run("demote-stop", "-w")
    assert rc == 0 and "demoted: no action: secondary" in out, out
    with open(os.path.join(sysv.host.state, "manual")) as handle:
        assert handle.read().strip() == "become_secondary"
    assert not alive(agent) and sysv.watchdog_pid() is None


def test_demote_stop_changes_nothing_when_the_agent_is_not_running(sysv):
    rc, out = sysv.run("demote-stop")
    assert rc == 7 and "cannot demote" in out
    assert not os.path.exists(os.path.join(sysv.host.state, "manual"))


def test_restart_and_try_restart(sysv):
    assert sysv.run("try-restart", "-w")[0] == 0
    assert sysv.agent() is None and sysv.watchdog_pid() is None     # starts nothing new
    sysv.run("start", "-w")
    agent, dog = sysv.agent(), sysv.watchdog_pid()
    rc, out = sysv.run("try-restart", "-w")
    assert rc == 0, out
    assert sysv.agent() not in (None, agent) and sysv.watchdog_pid() not in (None, dog)
    assert not os.path.exists(sysv.marker)
    agent = sysv.agent()
    assert sysv.run("restart")[0] == 0 and sysv.agent() not in (None, agent)


def test_red_hat_functions_are_used_when_present(sysv, tmp_path):
    log = tmp_path / "functions.log"
    functions = tmp_path / "functions"
    functions.write_text(FAKE_FUNCTIONS.format(log=log))
    rc, out = sysv.run("start", ISCSI_HA_FUNCTIONS=str(functions))
    assert rc == 0 and "Starting iscsi-ha: RH-OK" in out, out
    assert log.read_text().strip() == "skip-redirect=1"     # our own redirect keeps -w


def _fake_systemd(sysv, tmp_path, load_state="loaded"):
    log = tmp_path / "systemctl.log"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL.format(log=log, load_state=load_state))
    systemctl.chmod(0o755)
    (tmp_path / "systemd-run").mkdir(exist_ok=True)
    env = dict(ISCSI_HA_SYSTEMD="auto", ISCSI_HA_SYSTEMCTL=str(systemctl),
               ISCSI_HA_SYSTEMD_DIR=str(tmp_path / "systemd-run"))
    return log, env


def test_under_systemd_the_verbs_go_through_systemctl_with_the_same_order(sysv, tmp_path):
    log, env = _fake_systemd(sysv, tmp_path)
    assert sysv.run("start", "-w", **env)[0] == 0
    assert sysv.run("stop", "-w", **env)[0] == 0
    rc, out = sysv.run("status", **env)
    assert rc == 0 and "active" in out
    calls = [line for line in log.read_text().splitlines() if not line.startswith("show")]
    assert calls == ["start iscsi-ha.service", "start iscsi-ha-watchdog.service",
                     "stop iscsi-ha-watchdog.service", "stop iscsi-ha.service",
                     "is-active iscsi-ha.service"]
    assert os.path.exists(sysv.marker) and sysv.agent() is None


def test_under_systemd_restart_and_try_restart_leave_the_watchdog_to_partof(sysv, tmp_path):
    log, env = _fake_systemd(sysv, tmp_path)
    assert sysv.run("restart", "-w", **env)[0] == 0
    assert sysv.run("try-restart", **env)[0] == 0
    assert sysv.run("force-reload", "-w", **env)[0] == 0
    calls = [line for line in log.read_text().splitlines() if not line.startswith("show")]
    assert calls == ["restart iscsi-ha.service", "start iscsi-ha-watchdog.service",
                     "try-restart iscsi-ha.service",
                     "try-restart iscsi-ha.service", "try-restart iscsi-ha-watchdog.service"]


def test_without_the_unit_installed_the_script_runs_the_agent_itself(sysv, tmp_path):
    log, env = _fake_systemd(sysv, tmp_path, load_state="not-found")
    assert sysv.run("start", **env)[0] == 0 and sysv.agent()
    assert all(line.startswith("show") for line in log.read_text().splitlines())


def test_the_watchdog_script_alone(sysv):
    assert sysv.run("watchdog", "status")[0] == 3
    rc, out = sysv.run("watchdog", "start")
    assert rc == 0 and sysv.watchdog_pid()
    assert sysv.run("watchdog", "status")[0] == 0
    assert sysv.run("watchdog", "frobnicate")[0] == 2
    assert sysv.run("watchdog", "stop")[0] == 0
    assert sysv.run("watchdog", "status")[0] == 3


@pytest.mark.rpm
def test_the_rpm_builds_and_its_payload_runs_with_only_vendored_dependencies():
    missing = [t for t in ("rpmbuild", "rpm2cpio", "cpio") if shutil.which(t) is None]
    if missing:
        pytest.skip("missing %s (Debian package rpm, rpm2cpio, cpio)" % ", ".join(missing))
    done = subprocess.run([os.path.join(REPO, "scripts", "rpm-payload-check")], timeout=900,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    if done.returncode == 75:
        pytest.skip("the wheels could not be fetched (PyPI unreachable, none cached):\n" +
                    done.stdout[-2000:])
    assert done.returncode == 0, done.stdout[-6000:]
    out = done.stdout
    assert "== payload check passed" in out
    for needed in ("python3 >= 3.6", "/usr/bin/iscsi-cfg", "/usr/sbin/iscsi-ha-watchdog",
                   "/etc/rc.d/init.d/iscsi-ha-watchdog", "/usr/lib/systemd/system/iscsi-ha.service",
                   "/etc/iscsi-ha/iscsi-ha.conf", "/usr/lib/iscsi-ha/vendor/psutil/",
                   "/usr/lib/iscsi-ha/fallback/XenAPI/", "/usr/lib/iscsi-ha/py36/dataclasses.py"):
        assert needed in out, needed
    assert "/lab/iscsi_ha_lab/" not in out
