"""The mediator in its own network namespace, on a third network, with fault verbs.

Topology (names start with the caller's prefix; only 198.51.100.64/27 is used)::

    <p>-a  witness0 198.51.100.66/30 ----- 198.51.100.65/30 host-a  \\
                                                                   <p>-m  (iscsi-ha-mediator)
    <p>-b  witness0 198.51.100.70/30 ----- 198.51.100.69/30 host-b  /

so the path from each host to the mediator fails independently of the replication link and of
the pool's management network. Fault verbs: ``cut(host)`` / ``restore(host)`` (the mediator's
end of that host's link down/up), ``slow(host, ms)`` (netem delay on it), ``stop()`` /
``start()`` the mediator process (same state: a restart).

``python -m iscsi_ha.lab.mediator_net call CRED_DIR ADDR POOL NODE OP [JSON]`` is what a test
runs inside a host namespace: one request with the agent's own client, the answer as JSON.
"""
import json
import os
import signal
import subprocess
import sys
import time

from iscsi_ha.lab import netns

NET = {"a": ("198.51.100.66/30", "198.51.100.65/30"),
       "b": ("198.51.100.70/30", "198.51.100.69/30")}
PORT = 7790


def mediator_address(host):
    return NET[host][1].split("/")[0]


class MediatorNet(object):
    def __init__(self, prefix, state_dir, python=sys.executable, mediator_path=None):
        self.prefix = prefix
        self.state_dir = state_dir
        self.python = python
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.mediator_path = mediator_path or os.path.join(root, "mediator")
        self.root = root
        self.ns = {h: prefix + "-" + h for h in ("a", "b", "m")}
        self.proc = None
        self.conf = os.path.join(state_dir, "mediator.conf")

    # -- topology ----------------------------------------------------------------------------
    def up(self):
        for ns in self.ns.values():
            netns.add_namespace(ns)
        for host in ("a", "b"):
            netns.connect_direct(self.ns[host], "witness0", NET[host][0], self.ns["m"],
                                 "host-" + host, NET[host][1], self.prefix + host)
        return self

    def down(self):
        self.stop()
        netns.cleanup(self.prefix)

    # -- the mediator --------------------------------------------------------------------------
    def env(self):
        return dict(os.environ, PYTHONPATH=os.pathsep.join([self.mediator_path, self.root]))

    def init(self, lease=1.0, margin=0.3):
        subprocess.run([self.python, "-m", "iscsi_ha_mediator", "--config", "/nonexistent",
                        "--state-dir", self.state_dir, "init", "--name", mediator_address("a"),
                        "--name", mediator_address("b")], env=self.env(), check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        with open(self.conf, "w") as handle:
            handle.write("[mediator]\nstate_dir = %s\nlisten = 0.0.0.0\nport = %d\n"
                         "lease = %s\nmargin = %s\nlog_level = info\n"
                         % (self.state_dir, PORT, lease, margin))

    def start(self, timeout=20):
        log = open(os.path.join(self.state_dir, "mediator.log"), "a")
        self.proc = netns.popen_in(self.ns["m"], [self.python, "-m", "iscsi_ha_mediator",
                                                  "--config", self.conf, "serve",
                                                  "--allow-root"],
                                   env=self.env(), stdout=log, stderr=log)
        sock = os.path.join(self.state_dir, "admin.sock")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(sock) and self.admin({"op": "status"}).get("ok"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("mediator exited %s" % self.proc.returncode)
            time.sleep(0.1)
        raise RuntimeError("mediator did not start in %ds" % timeout)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def admin(self, req):
        """Admin request over the unix socket (the filesystem is shared with the namespace)."""
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        try:
            s.connect(os.path.join(self.state_dir, "admin.sock"))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
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

    def slow(self, host, ms):
        """Delay everything the mediator sends to ``host`` by ``ms`` (netem)."""
        netns.exec_in(self.ns["m"], ["tc", "qdisc", "replace", "dev", "host-" + host, "root",
                                     "netem", "delay", "%dms" % ms], check=True)

    def unslow(self, host):
        netns.exec_in(self.ns["m"], ["tc", "qdisc", "del", "dev", "host-" + host, "root"])

    # -- a node's request ----------------------------------------------------------------------
    def call(self, host, cred_dir, pool, op, fields=None, timeout=2.0):
        """One request from inside ``host``'s namespace; the answer dict, or {"error": ...}."""
        proc = netns.exec_in(self.ns[host], [
            self.python, "-m", "iscsi_ha.lab.mediator_net", "call", cred_dir,
            "%s:%d" % (mediator_address(host), PORT), pool, host, op,
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
    try:
        answer = client.call(op, **json.loads(fields))
    except MediatorError as exc:
        answer = {"error": str(exc)}
    answer["rtt_s"] = time.monotonic() - t0
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "call":
        sys.exit(_call_main(sys.argv[2:]))
    sys.stderr.write("usage: python -m iscsi_ha.lab.mediator_net call CRED ADDR POOL NODE OP "
                     "[JSON] TIMEOUT\n")
    sys.exit(2)
