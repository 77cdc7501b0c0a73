"""The mediator in its own network namespace, on a third network, with fault verbs.

Topology (names start with the caller's prefix; only 198.51.100.64/27 is used)::

    <p>-a  witness0 198.51.100.66/30 ----- 198.51.100.65/30 host-a  \\
                                                                   <p>-m  (iscsi-ha-mediator)
    <p>-b  witness0 198.51.100.70/30 ----- 198.51.100.69/30 host-b  /

so the path from each host to the mediator fails independently of the replication link and of
the pool's management network. Fault verbs: ``cut(host)`` / ``restore(host)`` (the mediator's
end of that host's link down/up), ``stall(seconds)`` (the mediator process stopped with SIGSTOP
for that long: a slow or hung mediator), ``slow(host, ms)`` (netem delay on one path; needs the
kernel's sch_netem), ``stop()`` / ``start()`` the mediator process (same state: a restart).

``python -m iscsi_ha_lab.mediator_net call CRED_DIR ADDR POOL NODE OP [JSON]`` is what a test
runs inside a host namespace: one request with the agent's own client, the answer as JSON
(ADDR may list several mediator addresses: the client moves to the next on failure).

``backend="etcd"`` (issue 14): two mediator instances (ports 7790 and 7791, same CA and server
certificate, each with its own state dir) over a three-member etcd running inside the mediator
namespace on that namespace's own 127.0.0.1 (``etcd_members.EtcdMembers``); the hosts get both
addresses. ``stop()``/``start()`` act on every instance, ``stop(instance=0)`` on one.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from iscsi_ha_lab import netns
from iscsi_ha_lab.etcd_members import EtcdMembers

NET = {"a": ("198.51.100.66/30", "198.51.100.65/30"),
       "b": ("198.51.100.70/30", "198.51.100.69/30")}
PORT = 7790
BACKENDS = ("sqlite", "etcd")


def mediator_address(host):
    return NET[host][1].split("/")[0]


class MediatorNet(object):
    def __init__(self, prefix, state_dir, python=sys.executable, mediator_path=None,
                 backend="sqlite", namespaces=None, link_names=None):
        """``namespaces`` ({"a": NS, "b": NS, "m": NS}): use these names (the lab's hosts
        already exist: only "m" is created then); ``link_names`` ({"a": (TMP1, TMP2), ...}):
        the root-namespace names of each veth while it is made (each must start with the
        caller's prefix, at most 15 characters)."""
        if backend not in BACKENDS:
            raise ValueError("mediator lab backend %r: %s" % (backend, " or ".join(BACKENDS)))
        self.backend = backend
        self.prefix = prefix
        self.state_dir = state_dir
        count = 2 if backend == "etcd" else 1
        self.state_dirs = [state_dir] + ["%s-%d" % (state_dir, i + 1) for i in range(1, count)]
        self.ports = [PORT + i for i in range(count)]
        self.procs = [None] * count
        self.etcd = None
        self.python = python
        from iscsi_ha_lab.paths import REPO as root
        self.mediator_path = mediator_path or os.path.join(root, "mediator")
        self.root = root
        self.ns = dict(namespaces) if namespaces else {h: prefix + "-" + h
                                                         for h in ("a", "b", "m")}
        self.own_hosts = not namespaces        # up() creates the host namespaces too
        self.link_names = link_names or {}
        self.conf = os.path.join(state_dir, "mediator.conf")

    # -- topology ----------------------------------------------------------------------------
    def up(self):
        for name, ns in sorted(self.ns.items()):
            if self.own_hosts or name == "m":
                netns.add_namespace(ns)
        for host in ("a", "b"):
            netns.connect_direct(self.ns[host], "witness0", NET[host][0], self.ns["m"],
                                 "host-" + host, NET[host][1], self.prefix + host,
                                 tmp_names=self.link_names.get(host))
        return self

    def down(self):
        self.stop()
        if self.etcd is not None:
            self.etcd.stop()
        if self.own_hosts:
            netns.cleanup(self.prefix)
        else:           # the lab's host namespaces are the lab's to remove (their witness0 too)
            netns.delete_namespace(self.ns["m"])

    # -- the mediator --------------------------------------------------------------------------
    def env(self):
        from iscsi_ha_lab.paths import pythonpath
        return dict(os.environ, PYTHONPATH=pythonpath(self.mediator_path))

    def init(self, lease=1.0, margin=0.3):
        subprocess.run([self.python, "-m", "iscsi_ha_mediator", "--config", "/nonexistent",
                        "--state-dir", self.state_dir, "init", "--name", mediator_address("a"),
                        "--name", mediator_address("b")], env=self.env(), check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        extra = ""
        if self.backend == "etcd":
            self.etcd = EtcdMembers(self.ns["m"], os.path.join(self.state_dir, "etcd"))
            extra = "backend = etcd\netcd_endpoints = %s\n" % ",".join(self.etcd.endpoints)
        for i, (state, port) in enumerate(zip(self.state_dirs, self.ports)):
            if i:  # one service, several processes: the same CA and server certificate
                os.makedirs(state, mode=0o700, exist_ok=True)
                os.chmod(state, 0o700)        # the mediator refuses a state dir others read
                shutil.copytree(os.path.join(self.state_dir, "tls"), os.path.join(state, "tls"))
            with open(os.path.join(state, "mediator.conf"), "w") as handle:
                handle.write("[mediator]\nstate_dir = %s\nlisten = 0.0.0.0\nport = %d\n"
                             "lease = %s\nmargin = %s\nlog_level = info\n%s"
                             % (state, port, lease, margin, extra))

    @property
    def proc(self):
        return self.procs[0]

    def start(self, timeout=20, instance=None):
        """Start the mediator (every instance, or one); etcd first when it is not running."""
        if self.etcd is not None and not self.etcd.procs:
            self.etcd.start()
        for i in ([instance] if instance is not None else range(len(self.procs))):
            self._start_one(i, timeout)
        return self

    def _start_one(self, i, timeout):
        state = self.state_dirs[i]
        log = open(os.path.join(state, "mediator.log"), "a")
        self.procs[i] = netns.popen_in(self.ns["m"], [
            self.python, "-m", "iscsi_ha_mediator", "--config",
            os.path.join(state, "mediator.conf"), "serve", "--allow-root"],
            env=self.env(), stdout=log, stderr=log)
        sock = os.path.join(state, "admin.sock")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(sock) and self.admin({"op": "status"}, instance=i).get("ok"):
                return
            if self.procs[i].poll() is not None:
                raise RuntimeError("mediator exited %s" % self.procs[i].returncode)
            time.sleep(0.1)
        raise RuntimeError("mediator did not start in %ds" % timeout)

    def stop(self, instance=None):
        """Stop the mediator (every instance, or one); etcd keeps running."""
        for i in ([instance] if instance is not None else range(len(self.procs))):
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)   # a stall() may have stopped it
                    os.killpg(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            self.procs[i] = None

    def admin(self, req, instance=0):
        """Admin request over the unix socket (the filesystem is shared with the namespace)."""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        try:
            s.connect(os.path.join(self.state_dirs[instance], "admin.sock"))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = s.makefile("rb").readline(1 << 20)      # the one-line answer, bounded
        except OSError as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            s.close()
        return json.loads(data) if data else {"ok": False, "error": "no answer"}

    def enroll(self, pool, node, directory):
        bundle = self.admin({"op": "cred-issue", "pool": pool, "node": node})["bundle"]
        os.makedirs(directory, exist_ok=True)
        for key in ("ca", "cert", "key"):
            with open(os.path.join(directory, key + ".pem"), "w") as handle:
                handle.write(bundle[key])
        return directory

    # -- fault verbs ---------------------------------------------------------------------------
    def cut(self, host):
        netns.set_link(self.ns["m"], "host-" + host, False)

    def restore(self, host):
        netns.set_link(self.ns["m"], "host-" + host, True)
        self.unslow(host)

    def stall(self, seconds, instance=0):
        """Freeze the mediator for ``seconds`` (SIGSTOP now, SIGCONT from a timer thread)."""
        import threading
        pgid = self.procs[instance].pid
        os.killpg(pgid, signal.SIGSTOP)
        timer = threading.Timer(seconds, lambda: os.killpg(pgid, signal.SIGCONT))
        timer.daemon = True
        timer.start()
        return timer

    def slow(self, host, ms):
        """Delay everything the mediator sends to ``host`` by ``ms`` (netem)."""
        netns.exec_in(self.ns["m"], ["tc", "qdisc", "replace", "dev", "host-" + host, "root",
                                     "netem", "delay", "%dms" % ms], check=True)

    def unslow(self, host):
        netns.exec_in(self.ns["m"], ["tc", "qdisc", "del", "dev", "host-" + host, "root"])

    # -- a node's request ----------------------------------------------------------------------
    def addresses(self, host):
        """The MEDIATOR value for ``host``: every instance, as seen from its namespace."""
        return ",".join("%s:%d" % (mediator_address(host), p) for p in self.ports)

    def call(self, host, cred_dir, pool, op, fields=None, timeout=2.0, node=None):
        """One request from inside ``host``'s namespace (as node ``node``, default the host's
        name); the answer dict, or {"error": ...}."""
        proc = netns.exec_in(self.ns[host], [
            self.python, "-m", "iscsi_ha_lab.mediator_net", "call", cred_dir,
            self.addresses(host), pool, node or host, op,
            json.dumps(fields or {}), str(timeout)], timeout=timeout + 30, env=self.env())
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": "no answer: %s" % proc.stderr.strip()[-300:]}


def _call_main(argv):
    from iscsi_ha.witness import MediatorClient, MediatorError, parse_addresses
    cred, addr, pool, node, op, fields, timeout = argv
    client = MediatorClient(parse_addresses(addr), os.path.join(cred, "ca.pem"),
                            os.path.join(cred, "cert.pem"), os.path.join(cred, "key.pem"),
                            pool, node, timeout=float(timeout))
    t0 = time.monotonic()
    for attempt in range(len(client.addresses)):  # a failed address: the next one, like the agent
        try:
            answer = client.call(op, **json.loads(fields))
            break
        except MediatorError as exc:
            answer = {"error": str(exc)}
    answer["rtt_s"] = time.monotonic() - t0
    answer["address"] = client.address
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "call":
        sys.exit(_call_main(sys.argv[2:]))
    sys.stderr.write("usage: python -m iscsi_ha_lab.mediator_net call CRED ADDR POOL NODE OP "
                     "[JSON] TIMEOUT\n")
    sys.exit(2)
