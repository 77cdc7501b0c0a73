"""The lab: two simulated dom0s and an iSCSI client on one machine, for real.

Topology (only documentation addresses, only namespaces the lab creates, all named ``ihl-*``):
- ``ihl-a`` (192.0.2.11) and ``ihl-b`` (192.0.2.12): the two hosts, on bridge ``ihl-br``
  (the management/storage network). The floating IP is 192.0.2.100/24 on their eth0.
- ``ihl-c`` (192.0.2.50): the client, where the I/O probe (libiscsi) runs.
- a direct veth ``rep0`` between A (198.51.100.1/30) and B (198.51.100.2/30): the replication
  link, which a scenario cuts and restores on its own (with the DRBD double's link).
Real: ip, arping, tgtd/tgtadm, the libiscsi initiator, the agent itself. Simulated: XAPI (an
XML-RPC fake the real XenAPI client talks to) and DRBD (a strict double of drbdadm/drbdsetup,
driven by the lab's checker thread as the kernel module would drive itself).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from iscsi_ha.lab import netns
from iscsi_ha.lab.drbd_double import World, install_wrappers
from iscsi_ha.lab.host import LabHost
from iscsi_ha.lab.invariants import Checker
from iscsi_ha.lab.xapi_control import LabXapi

PREFIX = "ihl-"
SPLIT_BRAIN_HANDLER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "drbd-split-brain-handler")
DEFAULT_DIR = "/run/iscsi-ha-lab"
REQUIRED = {"ip": "iproute2", "tgtd": "tgt", "tgtadm": "tgt", "arping": "iputils-arping",
            "iscsi-ls": "libiscsi-bin", "setsid": "util-linux", "unshare": "util-linux",
            "ss": "iproute2"}


class LabError(Exception):
    pass


def missing_prerequisites():
    """Sentences naming what is missing and how to install it; empty when all is there."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, tgtd)")
    absent = sorted(set(pkg for tool, pkg in REQUIRED.items() if shutil.which(tool) is None))
    if absent:
        problems.append("missing Debian packages: apt-get install %s" % " ".join(absent))
    try:
        from iscsi_ha.lab.probe import load_libiscsi
        load_libiscsi()
    except Exception as exc:
        problems.append("libiscsi cannot be loaded (%s): apt-get install libiscsi7" % exc)
    return problems


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll ``predicate`` until it is true or ``timeout`` passes (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class Lab(object):
    def __init__(self, directory=DEFAULT_DIR, drbd_version="8.4", monitor_delay=2,
                 fencing=True):
        self.directory = os.path.abspath(directory)
        self.fencing = fencing      # both hosts: resource-and-stonith with our handlers
        self.drbd_version = drbd_version
        self.monitor_delay = monitor_delay
        self.bridge = PREFIX + "br"
        self.vip = "192.0.2.100"
        self.client_ns = PREFIX + "c"
        self.client_address = "192.0.2.50"
        self.smtp_address, self.smtp_port = self.client_address, 2525
        self.mail_log = os.path.join(self.directory, "mail.jsonl")
        self.smtp = None
        self.resource = "iscsi1"
        self.iqn = "iqn.2026-11.lab.iscsi-ha:storage"
        self.lun = 10
        self.hosts = [LabHost(self, "a", PREFIX + "a", "192.0.2.11", 11),
                      LabHost(self, "b", PREFIX + "b", "192.0.2.12", 12)]
        self.down_hosts = set()
        self.world = None
        self.xapi = None
        self.checker = None

    # -- lookup ------------------------------------------------------------------------------
    def host(self, name):
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError("no host %r (hosts: a, b)" % name)

    def peer(self, host):
        return [h for h in self.hosts if h is not host][0]

    def host_is_up(self, host):
        return host.name not in self.down_hosts

    def status(self, host):
        try:
            with open(host.status_path) as handle:
                return json.load(handle)
        except (OSError, IOError, ValueError):
            return None

    def serving(self, host):
        """The host's agent reports target serving and floating IP local."""
        doc = self.status(host)
        return bool(doc and doc.get("target") and doc["target"].get("serving")
                    and doc["floating_ip"].get("local"))

    def primary(self):
        views = self.world.snapshot()["views"][self.resource]
        names = [n for n, v in views.items() if v["role"] == "Primary"]
        return self.host(names[0]) if len(names) == 1 else None

    # -- up / down ---------------------------------------------------------------------------
    def up(self, start_agents=True):
        problems = missing_prerequisites()
        if problems:
            raise LabError("; ".join(problems))
        self.down()
        os.makedirs(self.directory, exist_ok=True)
        for old in ("hosts", "drbd", "xapi", "probe"):
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
        for old in ("mail.jsonl", "smtp.log"):
            if os.path.exists(os.path.join(self.directory, old)):
                os.unlink(os.path.join(self.directory, old))
        self._network()
        self.world = World.create(os.path.join(self.directory, "drbd"), hosts=("a", "b"),
                                  resources={self.resource: {"minor": 1, "size_mb": 8}},
                                  version=self.drbd_version)
        for host in self.hosts:
            install_wrappers(host.bin, self.world.directory, host.name)
            host.write_files(self.world, self.drbd_version, self.monitor_delay)
            self.world.set_handler(host.name, "split-brain", [SPLIT_BRAIN_HANDLER],
                                   {"ISCSI_HA_CONFIG": host.config_path})
            if self.fencing:
                host.install_fencing(self.world)
        self._start_smtp()
        self.xapi = LabXapi(self)
        self.xapi.start(master=self.hosts[0])
        from iscsi_ha.lab.scenarios_manual import register_plugins
        register_plugins(self)            # host.call_plugin(peer, "iscsi-ha", ...) works
        self.checker = Checker(self)
        self.checker.start()
        if start_agents:
            for host in self.hosts:
                host.start_agent()
            wait_until(lambda: self.serving(self.hosts[0]), 30, what="host a serving")
        self._save_state()

    def _network(self):
        netns.add_bridge(self.bridge)
        for host in self.hosts:
            netns.add_namespace(host.ns)
            netns.attach_to_bridge(host.ns, self.bridge, PREFIX + "v" + host.name, "eth0",
                                   host.address + "/24")
        netns.add_namespace(self.client_ns)
        netns.attach_to_bridge(self.client_ns, self.bridge, PREFIX + "vc", "eth0",
                               self.client_address + "/24")
        netns.connect_direct(self.hosts[0].ns, "rep0", "198.51.100.1/30",
                             self.hosts[1].ns, "rep0", "198.51.100.2/30", PREFIX)

    def _start_smtp(self):
        """A real SMTP server (aiosmtpd) in the client namespace, recording every alert."""
        log = open(os.path.join(self.directory, "smtp.log"), "ab")
        self.smtp = netns.popen_in(self.client_ns, [
            sys.executable, "-m", "iscsi_ha.lab.smtp_sink", "--listen",
            "%s:%d" % (self.smtp_address, self.smtp_port), "--out", self.mail_log],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

        def listening():
            probe = netns.exec_in(self.client_ns, ["ss", "-ltn"], timeout=5).stdout
            return ":%d " % self.smtp_port in probe
        wait_until(listening, 15, what="the lab's SMTP server")

    def mail(self):
        from iscsi_ha.lab.smtp_sink import read_mail
        return read_mail(self.mail_log)

    def _save_state(self):
        with open(os.path.join(self.directory, "lab.json"), "w") as handle:
            json.dump({"pid": os.getpid(), "hosts": [h.name for h in self.hosts]}, handle)

    def down(self):
        """Remove every namespace, link and process of this lab (or of a crashed earlier one)."""
        if self.checker is not None:
            self.checker.stop()
            self.checker = None
        for host in self.hosts:
            host.stop_agent(signal.SIGKILL)
        if self.xapi is not None:
            self.xapi.stop()
            self.xapi = None
        if self.smtp is not None:
            self.smtp.terminate()
            try:
                self.smtp.wait(5)
            except subprocess.TimeoutExpired:
                self.smtp.kill()
            self.smtp = None
        netns.cleanup(PREFIX)
        for ctl in (h.ctl for h in self.hosts):
            for suffix in ("", ".lock"):
                try:
                    os.unlink("/var/run/tgtd/socket.%d%s" % (ctl, suffix))
                except OSError:
                    pass
        self.down_hosts.clear()

    # -- host failures -----------------------------------------------------------------------
    def crash(self, host):
        """Power loss of ``host``: agent and tgtd killed, off the network, DRBD down."""
        host.stop_agent(signal.SIGKILL)
        host.kill_tgtd()
        netns.exec_in(host.ns, ["ip", "addr", "flush", "dev", "eth0"], check=True)
        netns.set_link(host.ns, "eth0", False)
        netns.set_link(host.ns, "rep0", False)
        self.down_hosts.add(host.name)
        self.world.crash(host.name)

    def boot(self, host):
        """Power on: network back, DRBD up (it reconnects and resyncs), agent started."""
        netns.set_link(host.ns, "eth0", True)
        netns.exec_in(host.ns, ["ip", "addr", "add", host.address + "/24", "dev", "eth0"],
                      check=True)
        netns.set_link(host.ns, "rep0", True)
        self.down_hosts.discard(host.name)
        self.world.boot(host.name)
        host.start_agent()

    def cut_replication(self):
        for host in self.hosts:
            netns.set_link(host.ns, "rep0", False)
        self.world.set_link(False)

    def restore_replication(self):
        for host in self.hosts:
            netns.set_link(host.ns, "rep0", True)
        self.world.set_link(True)

    def exec(self, name, argv, timeout=60):
        if name in ("c", "client"):
            ns, env = self.client_ns, None
        else:
            host = self.host(name)
            ns, env, argv = host.ns, host.env(), host.as_host(argv)
        return subprocess.run(["ip", "netns", "exec", ns] + list(argv), env=env,
                              timeout=timeout)
