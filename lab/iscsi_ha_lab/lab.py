"""The lab: two simulated dom0s and an iSCSI client on one machine, for real.

Topology (only documentation addresses, only namespaces the lab creates, all named with its
prefix, ``ihl-`` unless ``--prefix`` / ``$ISCSI_HA_LAB_PREFIX`` says otherwise):
- ``ihl-a`` (192.0.2.11) and ``ihl-b`` (192.0.2.12): the two hosts, on bridge ``ihl-br``
  (the management/storage network). The floating IP is 192.0.2.100/24 on their eth0.
- ``ihl-c`` (192.0.2.50): the client, where the I/O probe (libiscsi) runs.
- a direct veth ``rep0`` between A (198.51.100.1/30) and B (198.51.100.2/30): the replication
  link, which a scenario cuts and restores on its own (with the DRBD double's link).
- with ``mediator="sqlite"`` or ``"etcd"`` (``iscsi-ha-lab up --mediator``): ``ihl-m``, the
  third site, on its own network 198.51.100.64/27 (a direct link ``witness0`` from each host,
  :mod:`iscsi_ha_lab.mediator_net`), running ``iscsi-ha-mediator`` (etcd: two instances over a
  three-member etcd inside that namespace). The pool ``lab`` is enrolled with nodes ``a`` and
  ``b``, each host holds its own credential in STATE_DIR/mediator and its agent heartbeats the
  mediator (MEDIATOR* keys), so failover needs the mediator's grant.
Two labs (an admin's and the tests') can run side by side with different prefixes and
directories: everything else is derived from them (tgtd's control sockets
/var/run/tgtd/socket.N, the only names outside the namespaces and the directory). ``up`` records
the names it creates in DIR/created.json and refuses to start while namespaces or links with its
prefix exist that it did not create, naming them and the command that removes them.
Real: ip, arping, tgtd/tgtadm, the libiscsi initiator, the agent itself. Simulated: XAPI (an
XML-RPC fake the real XenAPI client talks to) and DRBD (a strict double of drbdadm/drbdsetup,
driven by the lab's checker thread as the kernel module would drive itself).
"""
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib

from iscsi_ha_lab import netns, paths
from iscsi_ha_lab.drbd_double import World, install_wrappers
from iscsi_ha_lab.host import LabHost
from iscsi_ha_lab.invariants import Checker
from iscsi_ha_lab.xapi_control import LabXapi

PREFIX = "ihl-"                    # the default prefix
PREFIX_ENV, DIR_ENV = "ISCSI_HA_LAB_PREFIX", "ISCSI_HA_LAB_DIR"
# Interface names are at most 15 characters: the prefix plus 2 ("br", "va", "ra"...).
PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
RECORD = "created.json"
TGTD_SOCKET = "/var/run/tgtd/socket.%d"
SPLIT_BRAIN_HANDLER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "scripts", "drbd-split-brain-handler")
DEFAULT_DIR = "/run/iscsi-ha-lab"
REQUIRED = {"ip": "iproute2", "tgtd": "tgt", "tgtadm": "tgt", "arping": "iputils-arping",
            "iscsi-ls": "libiscsi-bin", "setsid": "util-linux", "unshare": "util-linux",
            "ss": "iproute2"}


class LabError(Exception):
    pass


def default_prefix():
    return os.environ.get(PREFIX_ENV) or PREFIX


def default_dir():
    return os.environ.get(DIR_ENV) or DEFAULT_DIR


def check_prefix(prefix):
    if not PREFIX_RE.match(prefix or ""):
        raise LabError("lab prefix %r: 1 to 12 characters, a lowercase letter first, then "
                       "lowercase letters, digits or '-'" % (prefix,))
    return prefix


def control_ports(prefix):
    """tgtd control ports (``tgtd -C N``: /var/run/tgtd/socket.N) of hosts a and b: 11 and 12
    for the default prefix, else a pair in 1000-8999 derived from the prefix."""
    if prefix == PREFIX:
        return 11, 12
    base = 1000 + (zlib.crc32(prefix.encode("utf-8")) % 4000) * 2
    return base, base + 1


def socket_in_use(path):
    """True when a process accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except (OSError, socket.error):
        return False
    finally:
        probe.close()


def missing_prerequisites():
    """Sentences naming what is missing and how to install it; empty when all is there."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, tgtd)")
    absent = sorted(set(pkg for tool, pkg in REQUIRED.items() if shutil.which(tool) is None))
    if absent:
        problems.append("missing Debian packages: apt-get install %s" % " ".join(absent))
    try:
        from iscsi_ha_lab.probe import load_libiscsi
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


def _compile_bytecode():
    """Compile the product's and the lab's modules (only those changed since): the DRBD
    double is a Python program started for every drbdadm/drbdsetup call, and where
    PYTHONDONTWRITEBYTECODE is set no process would keep its bytecode, so each call would
    compile the double again (about 15 ms a call on this VM), which a real C drbdsetup never
    costs. A checkout that cannot be written to is left as it is."""
    import compileall
    for folder in (os.path.join(paths.REPO, "iscsi_ha"), os.path.join(paths.LAB_ROOT,
                                                                      "iscsi_ha_lab")):
        try:
            compileall.compile_dir(folder, quiet=2)
        except Exception:  # an unwritable checkout only costs speed
            pass


class Lab(object):
    def __init__(self, directory=None, drbd_version="8.4", monitor_delay=2, prefix=None,
                 fencing=True, mediator=None, mediator_lease=10.0, mediator_margin=14.0):
        self.directory = os.path.abspath(directory or default_dir())
        self.prefix = check_prefix(prefix or default_prefix())
        self.fencing = fencing      # both hosts: resource-and-stonith with our handlers
        self.drbd_version = drbd_version
        self.monitor_delay = monitor_delay
        self.bridge = self.prefix + "br"
        self.vip = "192.0.2.100"
        self.client_ns = self.prefix + "c"
        self.client_address = "192.0.2.50"
        self.smtp_address, self.smtp_port = self.client_address, 2525
        self.mail_log = os.path.join(self.directory, "mail.jsonl")
        self.smtp = None
        self.resource = "iscsi1"
        self.iqn = "iqn.2026-11.lab.iscsi-ha:storage"
        self.lun = 10
        ctl_a, ctl_b = control_ports(self.prefix)
        self.hosts = [LabHost(self, "a", self.prefix + "a", "192.0.2.11", ctl_a),
                      LabHost(self, "b", self.prefix + "b", "192.0.2.12", ctl_b)]
        self.down_hosts = set()
        if mediator not in (None, "sqlite", "etcd"):
            raise LabError("mediator backend %r: sqlite or etcd" % (mediator,))
        self.mediator_backend = mediator     # None: no mediator (the agents run without one)
        # The margin is the old primary's reserve to step down before its peer can be granted:
        # a pass already hung on a target that DRBD froze mid-pass ends only at the pass budget
        # (MONITOR_MAX_STARTS x MONITOR_SCANRATE = 10 s here), then the step-down pass stops the
        # frozen target and demotes (up to TARGET_STOP_TIMEOUT + DRBD_TIMEOUT): 10 + 4 s.
        self.mediator_lease, self.mediator_margin = mediator_lease, mediator_margin
        self.mediator_pool = "lab"
        self.mediator = None                 # MediatorNet once up
        self.world = None
        self.xapi = None
        self.checker = None
        self.refused = False       # up() found someone else's namespaces: down() does nothing

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
    # -- what this lab creates, and what it must leave alone ------------------------------------
    def names(self):
        """(namespaces, root-namespace links) this lab creates."""
        namespaces = [h.ns for h in self.hosts] + [self.client_ns]
        links = [self.bridge] + [self.prefix + "v" + h.name for h in self.hosts] + [
            self.prefix + "vc", self.prefix + "ra", self.prefix + "rb"]
        if self.mediator_backend:
            namespaces.append(self.prefix + "m")
            for pair in self._mediator_links().values():
                links.extend(pair)
        return namespaces, links

    def _mediator_links(self):
        """Root-namespace names of the witness links while they are made (prefix + 2)."""
        return {"a": (self.prefix + "wa", self.prefix + "ma"),
                "b": (self.prefix + "wb", self.prefix + "mb")}

    def recorded(self):
        """The names DIR/created.json says this lab (this directory, this prefix) created."""
        try:
            with open(os.path.join(self.directory, RECORD)) as handle:
                record = json.load(handle)
        except (OSError, IOError, ValueError):
            return set()
        if not isinstance(record, dict) or record.get("prefix") != self.prefix:
            return set()
        return set(record.get("namespaces", [])) | set(record.get("links", []))

    def _record(self):
        namespaces, links = self.names()
        with open(os.path.join(self.directory, RECORD), "w") as handle:
            json.dump({"prefix": self.prefix, "namespaces": namespaces, "links": links,
                       "tgtd_control_ports": [h.ctl for h in self.hosts], "pid": os.getpid()},
                      handle)

    def foreign(self):
        """Namespaces and links with this lab's prefix that it did not create."""
        mine = self.recorded()
        return sorted(n for n in netns.list_namespaces()
                      if n.startswith(self.prefix) and n not in mine) + sorted(
            n for n in netns.list_links(self.prefix) if n not in mine)

    def refuse_foreign(self):
        """LabError naming what with this prefix belongs to someone else (another lab, an
        admin), and tgtd control sockets in use by another tgtd; None when all is clear."""
        others = self.foreign()
        if others:
            raise LabError(
                "found namespaces/links with this lab's prefix %r that it (%s) did not create: "
                "%s; another lab may be running, so they are left alone. Use another prefix "
                "(--prefix or $%s) and directory (--dir or $%s), or, if they are left from a "
                "crashed lab, remove them with: iscsi-ha-lab --prefix %s down" % (
                    self.prefix, self.directory, ", ".join(others), PREFIX_ENV, DIR_ENV,
                    self.prefix))
        for host in self.hosts:
            path = TGTD_SOCKET % host.ctl
            if socket_in_use(path):
                raise LabError("tgtd control socket %s (host %s) is in use by another tgtd: "
                               "choose another --prefix" % (path, host.name))

    def up(self, start_agents=True):
        problems = missing_prerequisites()
        if problems:
            raise LabError("; ".join(problems))
        _compile_bytecode()
        os.makedirs(self.directory, exist_ok=True)
        try:
            self.refuse_foreign()
        except LabError:
            self.refused = True          # and down() leaves everything alone
            raise
        self.down()
        self._record()
        for old in ("hosts", "drbd", "xapi", "probe", "mediator", "mediator-2"):
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
        if self.mediator_backend:
            self._start_mediator()
        self._start_smtp()
        self.xapi = LabXapi(self)
        self.xapi.start(master=self.hosts[0])
        from iscsi_ha_lab.hostexec import register_plugins
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
            netns.attach_to_bridge(host.ns, self.bridge, self.prefix + "v" + host.name, "eth0",
                                   host.address + "/24")
        netns.add_namespace(self.client_ns)
        netns.attach_to_bridge(self.client_ns, self.bridge, self.prefix + "vc", "eth0",
                               self.client_address + "/24")
        netns.connect_direct(self.hosts[0].ns, "rep0", "198.51.100.1/30",
                             self.hosts[1].ns, "rep0", "198.51.100.2/30", self.prefix)

    def _start_mediator(self):
        """The third site: MediatorNet on the hosts' namespaces, the pool enrolled, each host's
        credential in its MEDIATOR_DIR and its MEDIATOR* keys in its iscsi-ha.conf."""
        from iscsi_ha_lab.mediator_net import MediatorNet
        if self.mediator_backend == "etcd" and not (shutil.which("etcd") and
                                                    shutil.which("etcdctl")):
            raise LabError("the etcd mediator lab needs etcd: apt-get install etcd-server "
                           "etcd-client")
        self.mediator = MediatorNet(
            self.prefix, os.path.join(self.directory, "mediator"), backend=self.mediator_backend,
            namespaces={"a": self.hosts[0].ns, "b": self.hosts[1].ns, "m": self.prefix + "m"},
            link_names=self._mediator_links())
        self.mediator.up()
        self.mediator.init(lease=self.mediator_lease, margin=self.mediator_margin)
        self.mediator.start()
        answer = self.mediator.admin({"op": "pool-add", "pool": self.mediator_pool,
                                      "nodes": [h.name for h in self.hosts],
                                      "lease": self.mediator_lease})
        if not answer.get("ok"):
            raise LabError("mediator pool-add: %s" % answer.get("error"))
        for host in self.hosts:
            self.mediator.enroll(self.mediator_pool, host.name, host.mediator_dir)
            host.write_config(host.read_config() + (
                "MEDIATOR=%s\nMEDIATOR_POOL=%s\nMEDIATOR_NODE=%s\nMEDIATOR_INTERVAL=1\n"
                "MEDIATOR_TIMEOUT=1\n" % (self.mediator.addresses(host.name),
                                          self.mediator_pool, host.name)))

    def mediator_pool_record(self):
        """The pool's record at the mediator, or {}: the first running instance's answer;
        with several instances (etcd), each node's liveness is the freshest any of them has
        (each instance knows only the heartbeats it received itself, and the two nodes may
        talk to two instances)."""
        if self.mediator is None:
            return {}
        merged = None
        for instance in range(len(self.mediator.procs)):
            if self.mediator.procs[instance] is None:
                continue
            answer = self.mediator.admin({"op": "pool-show", "pool": self.mediator_pool},
                                         instance=instance)
            if not answer.get("ok"):
                continue
            if merged is None:
                merged = answer["pool"]
                continue
            for node in merged.get("nodes", []):
                for other in answer["pool"].get("nodes", []):
                    seen = other.get("last_seen_ms")
                    if other.get("node") == node.get("node") and seen is not None and (
                            node.get("last_seen_ms") is None or seen < node["last_seen_ms"]):
                        node.update(other, primary=node.get("primary"),
                                    eligible=node.get("eligible"),
                                    outdated=node.get("outdated"))
        return merged or {}

    def _start_smtp(self):
        """A real SMTP server (aiosmtpd) in the client namespace, recording every alert."""
        log = open(os.path.join(self.directory, "smtp.log"), "ab")
        self.smtp = netns.popen_in(self.client_ns, [
            sys.executable, "-m", "iscsi_ha_lab.smtp_sink", "--listen",
            "%s:%d" % (self.smtp_address, self.smtp_port), "--out", self.mail_log],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

        def listening():
            probe = netns.exec_in(self.client_ns, ["ss", "-ltn"], timeout=5).stdout
            return ":%d " % self.smtp_port in probe
        wait_until(listening, 15, what="the lab's SMTP server")

    def mail(self):
        from iscsi_ha_lab.smtp_sink import read_mail
        return read_mail(self.mail_log)

    def _save_state(self):
        with open(os.path.join(self.directory, "lab.json"), "w") as handle:
            json.dump({"pid": os.getpid(), "hosts": [h.name for h in self.hosts]}, handle)

    def down(self):
        """Remove every namespace, link and process with this lab's prefix (also a crashed
        earlier lab's: ``iscsi-ha-lab --prefix P down`` is the explicit way to clear them),
        except after ``up`` refused: then what it found is someone else's and stays."""
        if self.refused:
            return
        if self.checker is not None:
            self.checker.stop()
            self.checker = None
        for host in self.hosts:
            host.stop_agent(signal.SIGKILL)
        if self.xapi is not None:
            self.xapi.stop()
            self.xapi = None
        if self.mediator is not None:
            self.mediator.down()
            self.mediator = None
        if self.smtp is not None:
            self.smtp.terminate()
            try:
                self.smtp.wait(5)
            except subprocess.TimeoutExpired:
                self.smtp.kill()
            self.smtp = None
        netns.cleanup(self.prefix)
        for ctl in (h.ctl for h in self.hosts):
            for suffix in ("", ".lock"):
                try:
                    os.unlink(TGTD_SOCKET % ctl + suffix)
                except OSError:
                    pass
        try:
            os.unlink(os.path.join(self.directory, RECORD))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
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

    def boot(self, host, agent=True):
        """Power on: network back, DRBD up (it reconnects and resyncs), agent started (unless
        ``agent`` is False: the benchmarks' bare-command floor)."""
        netns.set_link(host.ns, "eth0", True)
        netns.exec_in(host.ns, ["ip", "addr", "add", host.address + "/24", "dev", "eth0"],
                      check=True)
        netns.set_link(host.ns, "rep0", True)
        self.down_hosts.discard(host.name)
        self.world.boot(host.name)
        if agent:
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
