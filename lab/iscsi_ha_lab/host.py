"""One simulated dom0 of the lab: its namespace, its own root of files, its agent process.

The agent runs unmodified (``iscsi-ha run``) inside the host's namespace; only its
configuration points it at the host's own pool.conf, state directory, DRBD double and tgtd.
"""
import os
import signal
import subprocess
import sys
import time

from iscsi_ha_lab import netns
from iscsi_ha_lab.paths import REPO

TGTD_SERVICE = """#!/bin/sh
# tgtd as a systemd-free service for lab host {name}: control port {ctl}, portal on every
# address of this network namespace (the floating IP arrives after the target starts).
PIDFILE={run}/tgtd.pid
CTL={ctl}
# Alive = the process exists and is not a zombie waiting for its reaper.
alive() {{ [ -f "$PIDFILE" ] && [ -r /proc/"$(cat "$PIDFILE")"/stat ] &&
           ! grep -q '^[0-9]* ([^)]*) Z' /proc/"$(cat "$PIDFILE")"/stat; }}
answers() {{ tgtadm -C "$CTL" --op show --mode sys >/dev/null 2>&1; }}
case "$1" in
start)
    alive && answers && exit 0
    rm -f /var/run/tgtd/socket."$CTL" /var/run/tgtd/socket."$CTL".lock
    setsid tgtd -f --iscsi portal=0.0.0.0:3260 -C "$CTL" </dev/null >>{log} 2>&1 &
    echo $! > "$PIDFILE"
    i=0
    while [ $i -lt 100 ]; do answers && exit 0; sleep 0.05; i=$((i+1)); done
    echo "tgtd did not answer on control port $CTL" >&2; exit 1 ;;
stop)
    alive || exit 0
    tgtadm -C "$CTL" --op update --mode sys --name State -v offline >/dev/null 2>&1
    # tgtd refuses a system delete while targets exist: drop each target (and its sessions).
    for tid in $(tgtadm -C "$CTL" --op show --mode target | sed -n 's/^Target \\([0-9]*\\):.*/\\1/p'); do
        tgtadm -C "$CTL" --op delete --mode target --tid "$tid" --force >/dev/null 2>&1
    done
    tgtadm -C "$CTL" --op delete --mode system >/dev/null 2>&1
    i=0
    while [ $i -lt 40 ]; do alive || exit 0; sleep 0.05; i=$((i+1)); done
    echo "tgtd still running" >&2; exit 1 ;;
status)
    alive && exit 0; exit 3 ;;
*)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
"""

SERVICE = """#!/bin/sh
# {script} of lab host {name}: the project's own SysV script, pointed at this host's files.
export ISCSI_HA_CONFIG={root}/iscsi-ha.conf
export ISCSI_HA_AGENT_CMD="{venv}/iscsi-ha run --config {root}/iscsi-ha.conf"
export ISCSI_HA_AGENT_MATCH="iscsi-ha run"
export ISCSI_HA_PIDFILE={root}/run/agent.pid
export ISCSI_HA_LOCKFILE={root}/run/agent.lock
export ISCSI_HA_CONSOLE_LOG={root}/agent.stderr
export ISCSI_HA_WATCHDOG_BIN="{venv}/iscsi-ha-watchdog"
export ISCSI_HA_WATCHDOG_INIT={bin}/iscsi-ha-watchdog-service
export ISCSI_HA_WATCHDOG_PIDFILE={root}/run/watchdog.pid
export ISCSI_HA_WATCHDOG_LOCKFILE={root}/run/watchdog.lock
export ISCSI_HA_WATCHDOG_CONSOLE_LOG={root}/watchdog.stderr
export ISCSI_HA_FUNCTIONS=/nonexistent
export ISCSI_HA_SYSTEMD=no
exec {init}/{script} "$@"
"""

CONFIG = """# iscsi-ha configuration of lab host {name} (written by iscsi-ha-lab)
DRBD_RESOURCES={resource}
ISCSI_TARGET_SERVICE=tgtd
DRBD_VIRTUAL_IP={vip}
DRBD_VIRTUAL_MASK=255.255.255.0
DRBD_INTERFACE=eth0
MONITOR_MAX_STARTS=5
MONITOR_DELAY={monitor_delay}
MONITOR_KILLALL=1
MONITOR_SCANRATE=2
ENABLE_LOGGING=1
MAIL_ON=1
MAIL_USE_SHARED_PARAMS=0
MAIL_FROM=iscsi-ha@lab-{name}.example
MAIL_TO=admin@example.com
SMTP_SERVER={smtp_host}
SMTP_PORT={smtp_port}
SMTP_SECURITY=none
SMTP_TIMEOUT=2
DRBD_VERSION={drbd_version}
DRBD_ADM={bin}/drbdadm
DRBD_SETUP={bin}/drbdsetup
DRBD_PROC={proc_drbd}
DRBD_TIMEOUT=5
ISCSI_TARGET_IQN={iqn}
ISCSI_LUNS={lun}={device}
TGTADM='tgtadm -C {ctl}'
TARGET_STATUS_COMMAND='{bin}/tgtd-service status'
TARGET_START_COMMAND='{bin}/tgtd-service start'
TARGET_STOP_COMMAND='{bin}/tgtd-service stop'
TARGET_TIMEOUT=8
TARGET_STOP_TIMEOUT=3
ARPING=arping
POOL_CONF={root}/pool.conf
XAPI_URL=unix://{root}/xapi.sock
XAPI_INIT_COOKIE={root}/xapi_init_complete.cookie
XAPI_TIMEOUT=2
INVENTORY_FILE={root}/xensource-inventory
STATE_DIR={root}/state
LOG_FILE={root}/agent.log
SYSLOG_SOCKET=
WATCH_INTERVAL=1
WATCH_MARGIN=2
AGENT_PID_FILE={root}/run/agent.pid
WATCHDOG_PID_FILE={root}/run/watchdog.pid
AGENT_START_COMMAND='{bin}/iscsi-ha-service start'
AGENT_START_TIMEOUT=20
FENCE_PEER_HANDLER={bin}/drbd-fence-peer
UNFENCE_PEER_HANDLER={bin}/drbd-unfence-peer
FENCE_PEER_TIMEOUT=3
SELF_FENCE_AFTER=10
FENCING_RECHECK=10
LOCK_FALLBACK_DIR={root}/run
SERVICE_BLOCKED_AFTER=5
VIP_CHECK_INTERVAL=2
"""

HANDLER = """#!/bin/sh
# {name} of lab host {host}: the project's own handler with this host's configuration.
ISCSI_HA_CONFIG={root}/iscsi-ha.conf
PYTHONPATH={package}${{PYTHONPATH:+:$PYTHONPATH}}
export ISCSI_HA_CONFIG PYTHONPATH
exec {python} {package}/scripts/{name} "$@"
"""
PACKAGE_ROOT = REPO          # the product's scripts run from the repository

INIT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "init")


class LabHost(object):
    """A host of the lab. ``name`` is 'a' or 'b'; ``ns`` its network namespace."""

    def __init__(self, lab, name, ns, address, ctl):
        self.lab = lab
        self.name = name
        self.ns = ns
        self.address = address
        self.ctl = ctl
        self.root = os.path.join(lab.directory, "hosts", name)
        self.bin = os.path.join(self.root, "bin")
        self.config_path = os.path.join(self.root, "iscsi-ha.conf")
        self.agent = None

    # -- files -------------------------------------------------------------------------------
    def write_files(self, world, drbd_version, monitor_delay):
        for sub in ("bin", "state", "run"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        script = os.path.join(self.bin, "tgtd-service")
        with open(script, "w") as handle:
            handle.write(TGTD_SERVICE.format(name=self.name, ctl=self.ctl,
                                             run=os.path.join(self.root, "run"),
                                             log=os.path.join(self.root, "tgtd.log")))
        os.chmod(script, 0o755)
        for name in ("drbd-fence-peer", "drbd-unfence-peer"):
            path = os.path.join(self.bin, name)
            with open(path, "w") as handle:
                handle.write(HANDLER.format(name=name, host=self.name, root=self.root,
                                            package=PACKAGE_ROOT, python=sys.executable))
            os.chmod(path, 0o755)
        for name, init in (("iscsi-ha-service", "iscsi-ha"),
                           ("iscsi-ha-watchdog-service", "iscsi-ha-watchdog")):
            path = os.path.join(self.bin, name)
            with open(path, "w") as handle:
                handle.write(SERVICE.format(script=init, name=self.name, root=self.root,
                                            bin=self.bin, init=INIT_DIR,
                                            venv=os.path.dirname(sys.executable)))
            os.chmod(path, 0o755)
        self.write_config(CONFIG.format(
            name=self.name, resource=self.lab.resource, vip=self.lab.vip, bin=self.bin,
            proc_drbd=world.proc_drbd_path(self.name), drbd_version=drbd_version,
            iqn=self.lab.iqn, lun=self.lab.lun, device=world.device_path(self.name,
                                                                          self.lab.resource),
            ctl=self.ctl, root=self.root, monitor_delay=monitor_delay,
            smtp_host=self.lab.smtp_address, smtp_port=self.lab.smtp_port))
        open(os.path.join(self.root, "xapi_init_complete.cookie"), "w").close()

    def install_fencing(self, world, policy="resource-and-stonith"):
        """This host's drbd.conf as `iscsi-cfg drbd-config` prints it: the policy and our
        handlers; the double runs them inside this host's namespace, with its hostname."""
        world.set_fencing(self.name, policy)
        world.set_exec_prefix(self.name, ["ip", "netns", "exec", self.ns] + self.as_host([]))
        env = {"PATH": self.env()["PATH"], "ISCSI_HA_CONFIG": self.config_path}
        world.set_handler(self.name, "fence-peer", [os.path.join(self.bin, "drbd-fence-peer")],
                          env)
        world.set_handler(self.name, "after-resync-target" if world.snapshot()["version"] ==
                          "8.4" else "unfence-peer",
                          [os.path.join(self.bin, "drbd-unfence-peer")], env)

    def remove_fencing(self, world):
        """dont-care and no fence-peer handler (the "fencing not configured" case)."""
        world.set_fencing(self.name, "dont-care")
        world.remove_handler(self.name, "fence-peer")

    def write_config(self, text):
        with open(self.config_path, "w") as handle:
            handle.write(text)

    def read_config(self):
        with open(self.config_path) as handle:
            return handle.read()

    @property
    def status_path(self):
        return os.path.join(self.root, "state", "status")

    @property
    def mediator_dir(self):
        """MEDIATOR_DIR (its default, STATE_DIR/mediator): the host's mediator credential."""
        return os.path.join(self.root, "state", "mediator")

    @property
    def pool_conf(self):
        return os.path.join(self.root, "pool.conf")

    # -- processes ---------------------------------------------------------------------------
    def env(self):
        env = dict(os.environ)
        env["PATH"] = self.bin + ":" + os.path.dirname(sys.executable) + ":" + env.get(
            "PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    @property
    def hostname(self):
        return "lab-" + self.name

    def as_host(self, argv):
        """``argv`` wrapped to run with this host's own hostname (a private UTS namespace), as
        on a real dom0; ``exec`` keeps the process id."""
        return ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                self.hostname] + list(argv)

    def exec(self, argv, timeout=20):
        """Run a command inside this host's namespace with the host's PATH and hostname."""
        return netns.exec_in(self.ns, self.as_host(argv), timeout=timeout, env=self.env())

    def start_agent(self):
        """Start ``iscsi-ha run`` in the namespace; returns the Popen."""
        log = open(os.path.join(self.root, "agent.stderr"), "ab")
        self.agent = netns.popen_in(
            self.ns, self.as_host([sys.executable, "-m", "iscsi_ha.cli.agent_main", "run",
                                   "--config", self.config_path]),
            env=self.env(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        with open(os.path.join(self.root, "run", "agent.pid"), "w") as handle:
            handle.write(str(self.agent.pid))
        return self.agent

    def agent_alive(self):
        return self.agent is not None and self.agent.poll() is None

    def stop_agent(self, sig=signal.SIGTERM, timeout=10):
        if self.agent is None:
            return None
        if self.agent.poll() is None:
            os.killpg(self.agent.pid, sig)
            try:
                self.agent.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.agent.pid, signal.SIGKILL)
                self.agent.wait(5)
        code, self.agent = self.agent.returncode, None
        return code

    def tgtd_pid(self):
        """The pid of this host's tgtd if it runs (a zombie does not count)."""
        try:
            with open(os.path.join(self.root, "run", "tgtd.pid")) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill_tgtd(self):
        pid = self.tgtd_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
        return pid


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split()[2] != "Z"
    except (OSError, IOError):
        return False
