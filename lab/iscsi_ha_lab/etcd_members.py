"""Real etcd members inside one lab network namespace, on that namespace's own 127.0.0.1.

For the lab's "several mediator instances over etcd" mode: the mediator namespace runs a
three-member etcd (Debian etcd-server) next to the mediator instances, so etcd traffic never
leaves that namespace's loopback. Each member has its own ports and a data directory under the
lab's directory; ``stop()`` kills every member it started and removes those directories.
Health is asked with ``etcdctl endpoint health`` run inside the namespace (etcd-client).
"""
import os
import shutil
import signal
import subprocess
import time

from iscsi_ha_lab import netns

FIRST_CLIENT_PORT = 23790  # the namespace's own loopback: no clash with the host's ports


class EtcdMembersError(Exception):
    pass


class EtcdMembers(object):
    def __init__(self, ns, directory, size=3, first_port=FIRST_CLIENT_PORT):
        self.ns = ns
        self.directory = directory
        self.size = size
        self.names = ["etcd%d" % i for i in range(size)]
        self.client_ports = [first_port + 2 * i for i in range(size)]
        self.peer_ports = [first_port + 2 * i + 1 for i in range(size)]
        self.procs = {}

    @property
    def endpoints(self):
        return ["http://127.0.0.1:%d" % p for p in self.client_ports]

    def _argv(self, i):
        peer = "http://127.0.0.1:%d" % self.peer_ports[i]
        client = self.endpoints[i]
        cluster = ",".join("%s=http://127.0.0.1:%d" % (n, p)
                           for n, p in zip(self.names, self.peer_ports))
        return ["etcd", "--name", self.names[i],
                "--data-dir", os.path.join(self.directory, self.names[i] + ".etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster, "--initial-cluster-token", self.ns,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"]

    def start(self, timeout=30):
        if shutil.which("etcd") is None:
            raise EtcdMembersError("etcd is not installed (Debian package etcd-server)")
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory)
        for i in range(self.size):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def start_member(self, i):
        log = open(os.path.join(self.directory, self.names[i] + ".log"), "ab")
        try:
            self.procs[i] = netns.popen_in(self.ns, self._argv(i), stdout=log,
                                           stderr=subprocess.STDOUT)
        finally:
            log.close()

    def kill_member(self, i):
        proc = self.procs.pop(i, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGKILL)
            except OSError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def healthy(self, i):
        proc = netns.exec_in(self.ns, ["etcdctl", "--endpoints", self.endpoints[i],
                                       "--command-timeout=1s", "endpoint", "health"],
                             timeout=10)
        return proc.returncode == 0

    def wait_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            dead = [i for i, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise EtcdMembersError("etcd member %s exited (log %s)" % (
                    self.names[dead[0]], os.path.join(self.directory,
                                                      self.names[dead[0]] + ".log")))
            if all(self.healthy(i) for i in self.procs):
                return
            if time.monotonic() >= deadline:
                raise EtcdMembersError("etcd not healthy after %ds" % timeout)
            time.sleep(0.2)

    def stop(self):
        for i in list(self.procs):
            self.kill_member(i)
        for name in self.names:
            shutil.rmtree(os.path.join(self.directory, name + ".etcd"), ignore_errors=True)
