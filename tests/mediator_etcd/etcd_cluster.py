"""Real etcd for tests: one member or a three-member cluster on 127.0.0.1, started and always stopped.

Nothing here imitates etcd: every member is the Debian ``etcd`` binary (etcd-server 3.4+),
started by the test with its own free ports and a data directory under a temporary directory
that the test owns. ``EtcdCluster`` is a context manager; leaving it (normally or by an
exception) kills every member it started and removes its directory. Members also get
PR_SET_PDEATHSIG=SIGKILL, so even a killed pytest leaves no etcd behind.

Used by the fixtures in ``conftest.py`` (``etcd1``, ``etcd3``).
"""
import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"  # the network rule: etcd traffic on loopback only
START_TIMEOUT = 20.0  # seconds to wait for a cluster to become healthy (2-core machine, fsync)
STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def etcd_binary():
    """Path of the etcd server binary, or None."""
    return shutil.which("etcd")


def need(ok, why):
    """Skip the calling test when ``ok`` is false, or fail under $ISCSI_HA_REQUIRE_TOOLS=1
    (`make test` and CI, after scripts/install-deps installed everything: no skips there)."""
    if ok:
        return
    import pytest
    if os.environ.get("ISCSI_HA_REQUIRE_TOOLS") == "1":
        pytest.fail(why + "; $ISCSI_HA_REQUIRE_TOOLS=1 requires it", pytrace=False)
    pytest.skip(why)


def need_etcd():
    need(etcd_binary() is not None,
         "etcd not installed (Debian package etcd-server; scripts/install-deps installs it)")


def _die_with_parent():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the context manager still stops members
        pass


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class EtcdError(Exception):
    pass


class Member(object):
    """One etcd member: its name, ports, data dir, process and log file."""

    def __init__(self, name, base_dir):
        self.name = name
        self.data_dir = os.path.join(base_dir, name + ".etcd")
        self.log_path = os.path.join(base_dir, name + ".log")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc = None
        self.argv = None

    scheme = "http"
    ssl_context = None

    @property
    def client_url(self):
        return "%s://%s:%d" % (self.scheme, HOST, self.client_port)

    @property
    def peer_url(self):
        return "http://%s:%d" % (HOST, self.peer_port)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        if self.running():
            raise EtcdError("member %s is already running" % self.name)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=True, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def kill(self, sig=signal.SIGKILL):
        """Stop the process (SIGKILL by default: a crash, not a clean shutdown) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "rb") as handle:
                data = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(data[-lines:])

    def _post(self, path, body, timeout=1.0):
        req = urllib.request.Request(self.client_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
            return json.loads(resp.read().decode())

    def healthy(self, timeout=1.0):
        """True when this member answers /health with health true (it has a leader)."""
        if not self.running():
            return False
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout,
                                        context=self.ssl_context) as resp:
                return json.loads(resp.read().decode()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def status(self, timeout=1.0):
        """This member's /v3/maintenance/status: member_id and leader (decimal strings)."""
        return self._post("/v3/maintenance/status", {}, timeout)


class EtcdCluster(object):
    """``size`` etcd members on 127.0.0.1 with a fresh data directory each; a context manager."""

    def __init__(self, size=1, heartbeat_ms=100, election_ms=1000, prefix="iscsi-ha-etcd-",
                 tls=None):
        """``tls``: a ``TlsFiles``; clients then speak https and must show a client
        certificate signed by its CA."""
        if size < 1:
            raise ValueError("size must be >= 1")
        self.tls = tls
        self.size = size
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.prefix = prefix
        self.base_dir = None
        self.members = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def _argv(self, member, initial_cluster, token):
        return [etcd_binary(),
                "--name", member.name,
                "--data-dir", member.data_dir,
                "--listen-client-urls", member.client_url,
                "--advertise-client-urls", member.client_url,
                "--listen-peer-urls", member.peer_url,
                "--initial-advertise-peer-urls", member.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-token", token,
                "--initial-cluster-state", "new",
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--logger", "zap", "--log-outputs", "stderr"] + self._tls_args()

    def _tls_args(self):
        if self.tls is None:
            return []
        return ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key,
                "--trusted-ca-file", self.tls.ca_cert, "--client-cert-auth"]

    def start(self, attempts=3):
        """Start every member and wait (bounded) until all are healthy; retries on a port clash."""
        if etcd_binary() is None:
            raise EtcdError("etcd is not installed (Debian package etcd-server)")
        last = None
        for _ in range(attempts):
            self.stop()
            self.base_dir = tempfile.mkdtemp(prefix=self.prefix)
            self.members = [Member("m%d" % i, self.base_dir) for i in range(self.size)]
            if self.tls is not None:
                for m in self.members:
                    m.scheme = "https"
                    m.ssl_context = self.tls.client_context()
            ports = set()
            for m in self.members:
                ports.update((m.client_port, m.peer_port))
            if len(ports) != 2 * self.size:
                continue  # the kernel handed the same port twice: draw again
            token = os.path.basename(self.base_dir)
            initial = ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)
            for m in self.members:
                m.argv = self._argv(m, initial, token)
                m.start()
            try:
                self.wait_healthy()
                return self
            except EtcdError as exc:
                last = exc
        raise last or EtcdError("could not start etcd")

    def stop(self):
        """Kill every member this object started and remove its directory. Safe to call twice."""
        for m in self.members:
            m.kill()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    # -- queries -----------------------------------------------------------------------------
    @property
    def endpoints(self):
        return [m.client_url for m in self.members]

    def member(self, name):
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def running_members(self):
        return [m for m in self.members if m.running()]

    def wait_healthy(self, timeout=START_TIMEOUT, members=None):
        """Wait until every running member (or the given ones) is healthy; EtcdError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            # Members started and not deliberately killed (a crashed one still counts).
            targets = members if members is not None else [
                m for m in self.members if m.proc is not None]
            dead = [m for m in targets if not m.running()]
            if dead:
                raise EtcdError("etcd member %s exited: %s" % (dead[0].name, dead[0].log_tail(5)))
            if all(m.healthy() for m in targets):
                return
            if time.monotonic() >= deadline:
                sick = [m.name for m in targets if not m.healthy()]
                raise EtcdError("etcd members not healthy after %.0fs: %s" % (timeout, sick))
            time.sleep(0.05)

    def leader(self, timeout=START_TIMEOUT):
        """The member that is the raft leader now, asked over the API of the running members."""
        deadline = time.monotonic() + timeout
        while True:
            ids = {}
            leader_id = None
            for m in self.running_members():
                try:
                    st = m.status()
                except (OSError, ValueError, urllib.error.URLError):
                    continue
                ids[st["header"]["member_id"]] = m
                if st.get("leader") and st["leader"] != "0":
                    leader_id = st["leader"]
            if leader_id in ids:
                return ids[leader_id]
            if time.monotonic() >= deadline:
                raise EtcdError("no etcd leader after %.0fs" % timeout)
            time.sleep(0.05)

    def followers(self):
        lead = self.leader()
        return [m for m in self.running_members() if m is not lead]

    # -- faults ------------------------------------------------------------------------------
    def kill(self, member):
        """SIGKILL one member (a crash); its data dir stays for a restart."""
        member.kill()

    def kill_leader(self):
        lead = self.leader()
        lead.kill()
        return lead

    def restart(self, member, timeout=START_TIMEOUT):
        """Start a killed member again on its old ports and data; wait until it is healthy."""
        member.start()
        self.wait_healthy(timeout, members=[member])
        return member

    # -- tiny direct access, for checking what the code under test wrote ---------------------
    def get(self, key, member=None):
        """Raw read of one key (linearizable) through the gateway: (value bytes, mod_revision)."""
        m = member or self.running_members()[0]
        b64 = base64.b64encode(key.encode()).decode()
        out = m._post("/v3/kv/range", {"key": b64}, timeout=3.0)
        kvs = out.get("kvs") or []
        if not kvs:
            return None, 0
        return base64.b64decode(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])


class TlsFiles(object):
    """A throwaway CA, a server certificate for 127.0.0.1 and client certificates, made with
    the ``openssl`` command in ``directory`` (the caller removes it)."""

    def __init__(self, directory):
        self.dir = directory
        self.ca_cert, self.ca_key = self._path("ca.crt"), self._path("ca.key")
        self.server_cert, self.server_key = self._path("server.crt"), self._path("server.key")
        self.client_cert, self.client_key = self._path("client.crt"), self._path("client.key")

    def _path(self, name):
        return os.path.join(self.dir, name)

    @staticmethod
    def available():
        return shutil.which("openssl") is not None

    def _openssl(self, *args):
        subprocess.run(("openssl",) + args, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=30)

    def make_ca(self, name="ca"):
        cert, key = self._path(name + ".crt"), self._path(name + ".key")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                      "-subj", "/CN=iscsi-ha test " + name)
        return cert, key

    def make_cert(self, name, cn, ca_cert, ca_key, server):
        cert, key, csr = (self._path(name + ".crt"), self._path(name + ".key"),
                          self._path(name + ".csr"))
        ext = self._path(name + ".ext")
        with open(ext, "w") as handle:
            if server:
                # etcd's own JSON gateway dials its gRPC port with the server certificate as
                # its client certificate, so a server cert needs clientAuth too.
                handle.write("subjectAltName=IP:127.0.0.1\n"
                             "extendedKeyUsage=serverAuth,clientAuth\n")
            else:
                handle.write("extendedKeyUsage=clientAuth\n")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn)
        self._openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                      "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
        return cert, key

    def create(self):
        self.make_ca("ca")
        self.make_cert("server", "127.0.0.1", self.ca_cert, self.ca_key, server=True)
        self.make_cert("client", "mediator", self.ca_cert, self.ca_key, server=False)
        return self

    def client_context(self):
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca_cert)
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def wait_for(cond, timeout=5.0, step=0.02):
    """True once ``cond()`` is (polled every ``step`` s, at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        if cond():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return cond()
