"""The lab's faults, by name, for scenarios and for ``iscsi-ha-lab fault NAME [HOST]``; one-block
client I/O through the floating IP (``iscsi-ha-lab client write LBA TEXT`` / ``client read LBA``);
and the control socket through which those commands reach a running ``iscsi-ha-lab up``.

Faults (HOST is a or b; "-" where none is needed):

    cut-replication / heal-replication    the direct replication link (and DRBD's connection)
    cut-management HOST / heal-management HOST
                                          HOST's eth0 (management and storage network: clients
                                          and the floating IP too) and its XAPI calls to and
                                          from the other host
    isolate HOST / rejoin HOST            both of the above, and the pool loses sight of HOST
                                          (its xapi is gone for the others) / it returns as
                                          the current master's slave
    crash HOST / power-on HOST            power loss (agent, tgtd, DRBD down, off the network,
                                          XAPI sees it dead) / boot as the pool's slave
    hang-tgtd HOST / resume-tgtd HOST     SIGSTOP / SIGCONT of HOST's tgtd
    make-master HOST                      pool.emergency_transition_to_master on HOST (what an
                                          admin or XAPI HA does when the master is gone)

The mediator's path (a lab brought up with ``--mediator``):

    cut-mediator HOST / restore-mediator HOST
                                          HOST's link to the mediator down / up (restore also
                                          ends a slow-mediator)
    stop-mediator / start-mediator        the mediator process(es) stopped / started again (the
                                          same state: a restart, with its grant-nothing grace)
    restart-mediator                      both at once
    stall-mediator                        the mediator frozen (SIGSTOP) for lease + margin + 1 s,
                                          then it runs on (a hung mediator)
    slow-mediator HOST                    800 ms more on every answer to HOST (netem)
"""
import json
import os
import signal
import socket
import sys
import threading

from iscsi_ha_lab import netns

ANSWER_LIMIT = 1 << 20      # bytes of the control socket's one-line JSON answer

FAULTS = {
    "cut-replication": False, "heal-replication": False,
    "cut-management": True, "heal-management": True, "isolate": True, "rejoin": True,
    "crash": True, "power-on": True, "hang-tgtd": True, "resume-tgtd": True,
    "make-master": True,
    "cut-mediator": True, "restore-mediator": True, "stop-mediator": False,
    "start-mediator": False, "restart-mediator": False, "stall-mediator": False,
    "slow-mediator": True,
}
SLOW_MEDIATOR_MS = 800
CONTROL_SOCKET = "control.sock"
BLOCK = 512


class FaultError(Exception):
    pass


def _management(lab, host, up):
    if lab.host_is_up(host):
        netns.set_link(host.ns, "eth0", up)
    lab.xapi.pool.set_management_link(lab.xapi.refs[host.name], up)


def apply_fault(lab, name, host_name=None):
    """Do fault ``name`` (to host ``host_name``); returns one sentence saying what was done."""
    if name not in FAULTS:
        raise FaultError("unknown fault %r; known: %s" % (name, ", ".join(sorted(FAULTS))))
    if FAULTS[name] and host_name not in ("a", "b"):
        raise FaultError("fault %s needs a host: a or b" % name)
    host = lab.host(host_name) if FAULTS[name] else None
    if name == "cut-replication":
        lab.cut_replication()
    elif name == "heal-replication":
        lab.restore_replication()
    elif name in ("cut-management", "heal-management"):
        _management(lab, host, name == "heal-management")
    elif name == "isolate":
        _management(lab, host, False)
        lab.xapi.pool.host_dies(lab.xapi.refs[host.name])     # the pool loses sight of it
        for each in lab.hosts:
            if lab.host_is_up(each):
                netns.set_link(each.ns, "rep0", False)
        lab.world.set_link(False)
    elif name == "rejoin":
        _management(lab, host, True)   # the network first: its xapi then sees the live master
        endpoint = lab.xapi.pool.endpoint(lab.xapi.refs[host.name])
        if not endpoint.serving:       # as after a crash: back as the new master's slave
            lab.xapi.host_returns(host, lab.peer(host))
        lab.restore_replication()
    elif name == "crash":
        lab.crash(host)
        lab.xapi.pool.host_dies(lab.xapi.refs[host.name])
    elif name == "power-on":
        master = [h for h in lab.hosts if h is not host][0]
        lab.xapi.host_returns(host, master)
        lab.boot(host)
    elif name in ("hang-tgtd", "resume-tgtd"):
        pid = host.tgtd_pid()
        if pid is None:
            raise FaultError("no tgtd runs on %s" % host.name)
        os.kill(pid, signal.SIGSTOP if name == "hang-tgtd" else signal.SIGCONT)
    elif name == "make-master":
        lab.xapi.emergency_transition(host)
    elif name.endswith("-mediator"):
        return _mediator_fault(lab, name, host)
    lab.world.settle()
    return "%s%s done" % (name, " " + host.name if host else "")


def _mediator_fault(lab, name, host):
    net = lab.mediator
    if net is None:
        raise FaultError("fault %s: this lab runs without a mediator (iscsi-ha-lab up "
                         "--mediator [sqlite|etcd])" % name)
    if name == "cut-mediator":
        net.cut(host.name)
    elif name == "restore-mediator":
        net.restore(host.name)
    elif name == "stop-mediator":
        net.stop()
    elif name == "start-mediator":
        net.start()
    elif name == "restart-mediator":
        net.stop()
        net.start()
    elif name == "stall-mediator":
        seconds = lab.mediator_lease + lab.mediator_margin + 1
        for instance, proc in enumerate(net.procs):
            if proc is not None and proc.poll() is None:
                net.stall(seconds, instance=instance)
        return "stall-mediator done (for %.1f s)" % seconds
    elif name == "slow-mediator":
        net.slow(host.name, SLOW_MEDIATOR_MS)
    return "%s%s done" % (name, " " + host.name if host else "")


# -- client I/O through the floating IP -------------------------------------------------------------
def client_io(lab, op, lba, text=None, timeout=5.0):
    """One block read or written by a fresh initiator in the client namespace; a dict."""
    argv = [sys.executable, "-m", "iscsi_ha_lab.faults", "--io", op, lab.vip + ":3260",
            lab.iqn, str(lab.lun), str(int(lba))] + ([text] if text is not None else [])
    try:
        proc = netns.exec_in(lab.client_ns, argv, timeout=timeout + 10)
    except Exception as exc:  # TimeoutExpired: the target never answered
        return {"ok": False, "op": op, "lba": lba, "error": str(exc)}
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = {"ok": False, "op": op, "lba": lba, "error": proc.stderr.strip()[-300:]}
    if op == "write" and answer.get("ok"):
        with open(os.path.join(lab.directory, "client-writes.jsonl"), "a") as handle:
            handle.write(json.dumps({"lba": lba, "text": text, "at": answer.get("at")}) + "\n")
    return answer


def acknowledged_writes(lab):
    """The client writes acknowledged so far, oldest first (``client write`` only)."""
    try:
        with open(os.path.join(lab.directory, "client-writes.jsonl")) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, IOError, ValueError):
        return []


def lost_writes(lab):
    """Acknowledged client writes whose block does not read back as the last text written
    there (read through the floating IP now)."""
    last = {}
    for entry in acknowledged_writes(lab):
        last[entry["lba"]] = entry["text"]
    lost = []
    for lba, text in sorted(last.items()):
        answer = client_io(lab, "read", lba)
        if not answer.get("ok") or answer.get("text") != text:
            lost.append({"lba": lba, "expected": text, "read": answer.get("text"),
                         "error": answer.get("error")})
    return lost


def _io_main(argv):
    """In the client namespace: ``--io write|read PORTAL IQN LUN LBA [TEXT]``."""
    import time
    from iscsi_ha_lab.libiscsi import Initiator, IscsiError
    op, portal, iqn, lun, lba = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    answer = {"op": op, "lba": lba, "ok": False}
    initiator = Initiator(iqn, io_timeout=5.0)
    try:
        initiator.connect(portal, lun, 5.0)
        if op == "write":
            data = argv[5].encode("utf-8")[:BLOCK]
            initiator.write(lba, data + b"\0" * (BLOCK - len(data)), BLOCK)
            answer.update(ok=True, at=time.time())
        else:
            data = initiator.read(lba, 1, BLOCK)
            answer.update(ok=True, text=data.rstrip(b"\0").decode("utf-8", "replace"))
    except IscsiError as exc:
        answer["error"] = str(exc)
    finally:
        initiator.close()
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0 if answer["ok"] else 1


# -- the control socket of a running lab ------------------------------------------------------------
def status_document(lab):
    """Each host's DRBD view, the checker's violations, the acknowledged client writes."""
    snap = lab.world.snapshot()
    views = snap["views"][lab.resource]
    hosts = {}
    for host in lab.hosts:
        view = views[host.name]
        doc = lab.status(host) or {}
        hosts[host.name] = {
            "up": lab.host_is_up(host),
            "drbd": dict((k, view[k]) for k in ("role", "disk", "peer_role", "peer_disk",
                                                 "cstate", "suspended")),
            "fencing": snap["hosts"][host.name]["fencing"],
            "agent": {"health": doc.get("health"),
                      "reason": (doc.get("decision") or {}).get("reason"),
                      "serving": lab.serving(host)},
            "pool_conf": _read(host.pool_conf)}
    return {"hosts": hosts, "violations": list(lab.checker.violations if lab.checker else []),
            "acknowledged_writes": acknowledged_writes(lab)}


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, IOError):
        return None


def handle_request(lab, request):
    op = request.get("op")
    try:
        if op == "fault":
            return {"ok": True, "result": apply_fault(lab, request.get("name"),
                                                      request.get("host"))}
        if op == "client":
            return client_io(lab, request.get("io"), int(request.get("lba")),
                             request.get("text"))
        if op == "status":
            return {"ok": True, "status": status_document(lab)}
        return {"ok": False, "error": "unknown request %r" % (op,)}
    except Exception as exc:  # one clear line back to the CLI; the lab keeps running
        return {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}


class ControlServer(object):
    """A Unix socket in the lab directory; one JSON request per connection."""

    def __init__(self, lab):
        self.lab = lab
        self.path = os.path.join(lab.directory, CONTROL_SOCKET)
        self.sock = None
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lab-control", daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while not data.endswith(b"\n") and len(data) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    request = json.loads(data.decode("utf-8"))
                    conn.settimeout(None)
                    with self._lock:
                        reply = handle_request(self.lab, request)
                except (OSError, ValueError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                try:
                    conn.sendall((json.dumps(reply, sort_keys=True) + "\n").encode("utf-8"))
                except OSError:
                    pass

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
        if self.sock is not None:
            self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def request(directory, payload, timeout=120):
    """Send one request to the lab running in ``directory``; its decoded answer."""
    path = os.path.join(directory, CONTROL_SOCKET)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        raise FaultError("no lab is running in %s (%s): start one with `iscsi-ha-lab up`"
                         % (directory, exc.strerror or exc))
    with sock:
        sock.sendall((json.dumps(payload) + "\n").encode("utf-8"))
        data = sock.makefile("rb").readline(ANSWER_LIMIT)      # one line, bounded
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        raise FaultError("the lab's answer was not JSON: %.200r" % data)


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "--io":
        sys.exit(_io_main(sys.argv[2:]))
    sys.stderr.write("usage: python -m iscsi_ha_lab.faults --io write|read PORTAL IQN LUN LBA "
                     "[TEXT]\n")
    sys.exit(2)
