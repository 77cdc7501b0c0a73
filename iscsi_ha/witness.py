"""Agent-side client of iscsi-ha-mediator, the third-site witness (Python 3.6, stdlib only).

Wire: one TLS 1.2+ connection (client certificate, CA pinned), kept alive; newline-delimited
JSON requests ``{"id", "op", "pool", "node", ...}`` and answers carrying the same ``id``.

- ``MediatorClient``: blocking calls with a timeout on every socket operation; on an error or an
  answer saying the mediator cannot grant (its storage is unavailable) it moves to the next
  address of the list for the next call.
- ``WitnessMonitor``: a daemon thread that heartbeats every ``interval`` seconds and caches the
  answer, so an agent pass never waits on the network (``state()`` only reads memory). It keeps
  the highest generation ever seen in a local file; a lower one means the mediator was rolled
  back or reinstalled: automatic failover stays off until an operator resets it. It calls
  ``alert(text)`` once when the mediator becomes unreachable and once when it is back.
- ``persist_grant``: a promote grant is written (fsync) before DRBD is promoted.
"""
import json
import os
import socket
import ssl
import threading
import time

from iscsi_ha import statepaths

DEFAULT_PORT = 7790


class MediatorError(Exception):
    """The mediator could not be asked or refused the request; ``str()`` is one line."""


def parse_addresses(text, default_port=DEFAULT_PORT):
    """'a:1,b' -> [('a', 1), ('b', default_port)]; raises ValueError naming the bad item."""
    out = []
    for item in [i.strip() for i in (text or "").split(",") if i.strip()]:
        host, sep, port = item.rpartition(":")
        if not sep or "]" in port:
            host, port = item, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("mediator address %r: expected HOST or HOST:PORT" % item)
        out.append((host, int(port)))
    return out


def client_context(ca, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    versions = getattr(ssl, "TLSVersion", None)
    if versions is not None:             # 3.7+ (the tests' Python)
        setattr(ctx, "minimum_version", versions.TLSv1_2)
    else:                                # 3.6 (dom0)
        ctx.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


class MediatorClient(object):
    def __init__(self, addresses, ca, cert, key, pool, node, timeout=3.0):
        self.addresses = list(addresses)
        if not self.addresses:
            raise ValueError("no mediator address")
        self.pool = pool
        self.node = node
        self.timeout = float(timeout)
        self.files = (ca, cert, key)
        self.ctx = client_context(ca, cert, key)
        self._stamp = self._files_stamp()
        self.index = 0
        self._sock = None
        self._buf = b""
        self._next_id = 0
        self._lock = threading.Lock()

    @property
    def address(self):
        host, port = self.addresses[self.index]
        return "%s:%d" % (host, port)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = b""

    def _next_address(self):
        self.close()
        self.index = (self.index + 1) % len(self.addresses)

    def _files_stamp(self):
        try:
            return tuple(os.stat(p).st_mtime for p in self.files)
        except OSError:
            return None

    def _connect(self, deadline):
        stamp = self._files_stamp()
        if stamp is not None and stamp != self._stamp:
            # credential re-enrolled (rotation): use the new one from this connection on
            try:
                self.ctx = client_context(*self.files)
                self._stamp = stamp
            except (ssl.SSLError, OSError, IOError):
                pass   # half-written or bad: keep the old one, try again next time
        host, port = self.addresses[self.index]
        left = max(0.05, deadline - time.monotonic())
        raw = socket.create_connection((host, port), timeout=left)
        try:
            raw.settimeout(max(0.05, deadline - time.monotonic()))
            sock = self.ctx.wrap_socket(raw, server_hostname=host)
        except Exception:
            raw.close()
            raise
        self._sock = sock
        self._buf = b""

    def call(self, op, **fields):
        """Send one request and return the answer dict (``ok`` true); raises MediatorError."""
        with self._lock:
            return self._call(op, fields)

    def _call(self, op, fields):
        deadline = time.monotonic() + self.timeout
        self._next_id += 1
        rid = self._next_id
        req = dict(fields, id=rid, op=op, pool=self.pool, node=self.node)
        data = json.dumps(req, separators=(",", ":")).encode() + b"\n"
        for attempt in (1, 2):
            fresh = self._sock is None
            try:
                if fresh:
                    self._connect(deadline)
                self._sock.settimeout(max(0.05, deadline - time.monotonic()))
                self._sock.sendall(data)
                answer = self._read(rid, deadline)
                break
            except (OSError, ValueError) as exc:
                # a kept-alive connection the server closed meanwhile: one immediate retry
                stale = not fresh and attempt == 1 and time.monotonic() < deadline and \
                    isinstance(exc, (ConnectionError, ssl.SSLEOFError, EOFError))
                where = self.address
                self._next_address() if not stale else self.close()
                if stale:
                    continue
                raise MediatorError("mediator %s: %s" % (where, _one_line(exc)))
        if not answer.get("ok"):
            err = answer.get("error") or "refused"
            if "credential" in err:
                self._next_address()
            raise MediatorError("mediator %s: %s" % (self.address, err))
        if answer.get("can_grant") is False and "storage unavailable" in str(
                answer.get("cannot_grant_reason")) and len(self.addresses) > 1:
            self._next_address()   # answer is still valid; ask another instance next time
        return answer

    def _read(self, rid, deadline):
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line.decode("utf-8"))
                if msg.get("id") in (rid, None):
                    return msg
            if time.monotonic() >= deadline:
                raise socket.timeout("no answer within %.1f s" % self.timeout)
            self._sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed by the mediator")
            self._buf += chunk
            if len(self._buf) > 1 << 20:
                raise ValueError("answer too long")


def _one_line(exc):
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def persist_json(path, document):
    """Write ``document`` to ``path`` atomically and durably (tmp, fsync, rename, fsync dir)."""
    directory = os.path.dirname(path) or "."
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(document, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, IOError, ValueError):
        return {}


class WitnessState(object):
    """What the agent knows of the witness at one moment (copied out of the monitor)."""

    def __init__(self, **kw):
        self.configured = kw.get("configured", True)
        self.reachable = kw.get("reachable", False)
        self.answer = kw.get("answer")           # last heartbeat answer dict or None
        self.answer_age = kw.get("answer_age")   # seconds since that answer, or None
        self.error = kw.get("error", "")
        self.rolled_back = kw.get("rolled_back", "")
        self.address = kw.get("address", "")
        self.max_gen = kw.get("max_gen", 0)

    @property
    def generation(self):
        return (self.answer or {}).get("gen")

    def failover_allowed(self):
        """(ok, reason): may this node ask for a promote now (automatic failover on)."""
        if not self.configured:
            return False, "no mediator configured"
        if self.rolled_back:
            return False, self.rolled_back
        if not self.reachable or self.answer is None:
            return False, "mediator unreachable (%s)" % (self.error or "no answer yet")
        a = self.answer
        if not a.get("can_grant"):
            return False, a.get("cannot_grant_reason") or "mediator cannot grant"
        return True, ""

    def as_dict(self):
        a = self.answer or {}
        ok, why = self.failover_allowed()
        return {"configured": self.configured, "reachable": self.reachable,
                "address": self.address, "error": self.error or None,
                "answer_age_s": None if self.answer_age is None else round(self.answer_age, 1),
                "generation": a.get("gen"), "max_generation_seen": self.max_gen,
                "primary": a.get("primary"), "eligible": a.get("eligible"),
                "outdated": a.get("outdated"), "peer": a.get("peer"),
                "peer_alive": a.get("peer_alive"), "deposed": a.get("deposed"),
                "auto_failover": ok, "auto_failover_reason": why or None,
                "rolled_back": self.rolled_back or None}


class WitnessMonitor(object):
    """Background heartbeat to the mediator with a cached answer (see module docstring).

    ``report()`` returns this node's DRBD report dict (role, disk, conn, peer_disk,
    current_uuid); it must be cheap and must not raise (errors give an empty report)."""

    def __init__(self, client, state_file, report=None, interval=2.0, alert=None,
                 clock=time.monotonic):
        self.client = client
        self.state_file = state_file
        self.report = report or (lambda: {})
        self.interval = float(interval)
        self.alert = alert or (lambda text: None)
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        saved = read_json(state_file)
        self._max_gen = int(saved.get("max_gen") or 0)
        self._rolled_back = saved.get("rolled_back") or ""
        self._answer = None
        self._answer_at = None
        self._error = "no answer yet"
        self._reachable = False
        self._alerted_down = False
        self._ok_sent_at = None     # clock() when the last answered heartbeat was sent

    # -- thread ----------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="witness", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def _run(self):
        while not self._stop.is_set():
            started = self.clock()
            try:
                self.beat()
            except Exception as exc:   # never let the thread die
                with self._lock:
                    self._error = "heartbeat failed: %s" % _one_line(exc)
            self._stop.wait(max(0.05, self.interval - (self.clock() - started)))

    # -- one heartbeat ---------------------------------------------------------------------
    def _reload_if_reset(self):
        """``iscsi-cfg mediator reset`` rewrote the state file: take its baseline."""
        try:
            mtime = os.stat(self.state_file).st_mtime
        except OSError:
            return
        if getattr(self, "_state_mtime", None) is None:
            self._state_mtime = mtime
            return
        if mtime != self._state_mtime:
            self._state_mtime = mtime
            saved = read_json(self.state_file)
            with self._lock:
                if not saved.get("rolled_back") and self._rolled_back:
                    self._rolled_back = ""
                    self._max_gen = int(saved.get("max_gen") or 0)

    def beat(self):
        self._reload_if_reset()
        try:
            drbd = self.report() or {}
        except Exception:
            drbd = {}
        sent = self.clock()
        try:
            answer = self.client.call("heartbeat", gen=self._max_gen or None, drbd=drbd)
        except MediatorError as exc:
            self._unreachable(str(exc))
            return None
        self._reached(answer, sent)
        return answer

    def _unreachable(self, error):
        with self._lock:
            self._reachable = False
            self._error = error
            first = not self._alerted_down
            self._alerted_down = True
        if first:
            self._safe_alert("mediator unreachable: %s; automatic failover is off (no effect "
                             "on I/O)" % error)

    def _reached(self, answer, sent=None):
        gen = answer.get("gen")
        rolled = ""
        with self._lock:
            if sent is not None:
                self._ok_sent_at = sent
            was_down = self._alerted_down
            if isinstance(gen, int) and gen < self._max_gen and not self._rolled_back:
                rolled = ("mediator generation %d is lower than %d seen before: it was rolled "
                          "back or reinstalled; automatic failover off until an operator "
                          "runs: iscsi-cfg mediator reset" % (gen, self._max_gen))
                self._rolled_back = rolled
            raised = isinstance(gen, int) and gen > self._max_gen
            if raised:
                self._max_gen = gen
            self._answer = answer
            self._answer_at = self.clock()
            self._reachable = True
            self._error = ""
            self._alerted_down = False
        if raised or rolled:
            self._save()
        if rolled:
            self._safe_alert(rolled)
        if was_down:
            self._safe_alert("mediator %s reachable again (generation %s)"
                             % (self.client.address, gen))

    def _save(self):
        try:
            persist_json(self.state_file, {"max_gen": self._max_gen,
                                           "rolled_back": self._rolled_back})
            self._state_mtime = os.stat(self.state_file).st_mtime
        except (OSError, IOError) as exc:
            with self._lock:
                self._error = "cannot save %s: %s" % (self.state_file, exc)

    def _safe_alert(self, text):
        try:
            self.alert(text)
        except Exception:
            pass

    # -- what a pass reads (memory only) ---------------------------------------------------
    def lease_left(self):
        """Seconds left of this node's lease at the mediator, counted from the sending of the
        last answered heartbeat (the mediator's mark is its receipt, no earlier); None when
        no heartbeat was answered yet."""
        with self._lock:
            if self._ok_sent_at is None:
                return None
            lease = ((self._answer or {}).get("lease_ms") or 10000) / 1000.0
            return lease - (self.clock() - self._ok_sent_at)

    def state(self):
        with self._lock:
            age = None if self._answer_at is None else self.clock() - self._answer_at
            lease = ((self._answer or {}).get("lease_ms") or 10000) / 1000.0
            reachable = self._reachable and age is not None and age < lease
            error = self._error
            if not reachable and not error and age is not None:
                error = "last answer %.1fs old" % age
            return WitnessState(reachable=reachable, answer=self._answer, answer_age=age,
                                error=error, rolled_back=self._rolled_back, address=self.client.address,
                                max_gen=self._max_gen)

    # -- requests that change the mediator's record ----------------------------------------
    def promote(self, grant_file, drbd):
        """Ask for a promote at the generation last seen. On a grant, persist it to
        ``grant_file`` (fsync) BEFORE returning; the caller promotes DRBD only after that.
        Returns the answer dict (result: granted|retry|refused)."""
        st = self.state()
        ok, why = st.failover_allowed()
        if not ok:
            return {"result": "refused", "reason": why}
        try:
            answer = self.client.call("promote", gen=st.generation, drbd=drbd)
        except MediatorError as exc:
            return {"result": "retry", "reason": str(exc), "retry_after_ms": 2000}
        if answer.get("result") == "granted":
            persist_json(grant_file, {"pool": self.client.pool, "node": self.client.node,
                                      "gen": answer["gen"], "time": time.time()})
            with self._lock:
                if answer["gen"] > self._max_gen:
                    self._max_gen = answer["gen"]
            self._save()
        return answer

    def fence_peer(self):
        """For the DRBD fence-peer handler: ask the mediator, each address once, to outdate the
        peer. Returns (exit code, one-line reason): 4 peer outdated, 3 already outdated, 6 this
        host was deposed (outdate yourself; the agent demotes), 1 no usable answer (DRBD keeps
        I/O frozen). A higher generation in the answer is remembered."""
        reason = "mediator unreachable: I/O stays frozen"
        for _ in range(len(self.client.addresses)):
            try:
                answer = self.client.call("fence-peer", gen=self.state().max_gen or None)
            except MediatorError as exc:
                reason = str(exc)
                continue
            code = answer.get("exit")
            if code in (3, 4, 6):
                gen = answer.get("gen")
                if isinstance(gen, int) and gen > self.state().max_gen:
                    with self._lock:
                        self._max_gen = gen
                    self._save()
                return code, answer.get("reason") or answer.get("result") or ""
            reason = "mediator answered %s: %s" % (answer.get("result"), answer.get("reason"))
            if answer.get("result") == "observer":
                return 1, reason
        return 1, reason


# -- agent wiring --------------------------------------------------------------------------------
def drbd_report(states, generations=None):
    """One report for the mediator from the pass's DRBD states (resource -> DrbdState) and
    their current data generations (resource -> UUID hex, role bit included or not).

    A pool may hold several resources; the mediator keeps one data generation per pool, so the
    report is the conjunction: Primary if any resource is, UpToDate/Connected only if all are,
    and ``current_uuid`` a digest of every resource's role-masked UUID (None if any is unknown),
    so "in sync" holds only when every resource is."""
    import hashlib
    if not states:
        return {}
    names = sorted(states)
    roles = [states[n].role for n in names]
    report = {
        "role": "Primary" if "Primary" in roles else roles[0],
        "disk": _all_or_first([states[n].disk for n in names], "UpToDate"),
        "conn": _all_or_first([states[n].connection for n in names], "Connected"),
        "peer_disk": _all_or_first([states[n].peer_disk for n in names], "UpToDate"),
        "current_uuid": None,
    }
    gens = generations or {}
    masked = []
    for n in names:
        value = gens.get(n)
        try:
            masked.append("%016X" % (int(str(value), 16) & ~1))
        except (TypeError, ValueError):
            return report
    if len(masked) == 1:
        report["current_uuid"] = masked[0]
    else:
        digest = hashlib.sha256(":".join(masked).encode()).hexdigest()[:16]
        report["current_uuid"] = "%016X" % (int(digest, 16) & ~1)
    return report


def _all_or_first(values, good):
    if all(v == good for v in values):
        return good
    return next(v for v in values if v != good)


def from_config(config, alert=None):
    """A started-later :class:`WitnessMonitor` for the agent, or None when MEDIATOR is empty.
    Raises MediatorError (one line) when the credential files are missing or unusable."""
    if not config.MEDIATOR:
        return None
    directory = config.MEDIATOR_DIR
    paths = list(statepaths.mediator_credential(directory))
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MediatorError("mediator credential missing: %s (run iscsi-cfg mediator enroll)"
                            % ", ".join(missing))
    try:
        client = MediatorClient(parse_addresses(config.MEDIATOR), paths[0], paths[1], paths[2],
                                config.MEDIATOR_POOL, config.MEDIATOR_NODE,
                                timeout=config.MEDIATOR_TIMEOUT)
    except (ssl.SSLError, OSError, IOError, ValueError) as exc:
        raise MediatorError("mediator credential in %s unusable: %s" % (directory,
                                                                      _one_line(exc)))
    monitor = AgentWitness(client, statepaths.mediator_state(directory),
                           statepaths.mediator_grant(directory),
                           interval=config.MEDIATOR_INTERVAL, alert=alert)
    monitor.demote_s = float(config.TARGET_STOP_TIMEOUT) + float(config.DRBD_TIMEOUT)
    return monitor


class AgentWitness(WitnessMonitor):
    """The monitor as the agent uses it: the pass hands it the DRBD report (``set_report``) and
    asks for a promote when its decision is blocked on the witness (``want_promote``); the
    thread sends that request at once, persists a grant (fsync) and the next pass sees it
    through ``observation()``. A pass never waits on the network."""

    def __init__(self, client, state_file, grant_file, interval=2.0, alert=None,
                 clock=time.monotonic):
        self._report = {}
        WitnessMonitor.__init__(self, client, state_file, report=lambda: self._report,
                                interval=interval, alert=alert, clock=clock)
        self.grant_file = grant_file
        self._want = threading.Event()
        self._last_promote = None
        self.wake = None            # callable: wake the agent loop (set by the daemon)
        self.demote_s = 2.0         # TARGET_STOP_TIMEOUT + DRBD_TIMEOUT (from_config)

    def step_down_lead(self):
        """How many seconds before its lease runs out a frozen Primary steps down: one pass
        gap (a frozen agent is unhealthy: it passes every second) plus what the demote may
        take (``demote_s``: TARGET_STOP_TIMEOUT + DRBD_TIMEOUT, a frozen tgtd is killed), at
        most half the lease; the mediator's margin (lease + margin) is the reserve."""
        lease = ((self.state().answer or {}).get("lease_ms") or 10000) / 1000.0
        return min(1.0 + self.demote_s, lease / 2.0)

    def set_report(self, report):
        self._report = dict(report or {})

    def want_promote(self):
        """Ask (in the background, within 0.2 s) for a promote; no-op while one is pending."""
        self._want.set()

    def _run(self):
        next_beat = self.clock()
        while not self._stop.is_set():
            now = self.clock()
            try:
                if self._want.is_set():
                    self._want.clear()
                    self._promote_now()
                if now >= next_beat:
                    next_beat = now + self.interval
                    self.beat()
            except Exception as exc:   # never let the thread die
                with self._lock:
                    self._error = "witness thread: %s" % _one_line(exc)
            self._stop.wait(max(0.01, min(0.2, next_beat - self.clock())))

    def _promote_now(self):
        answer = self.promote(self.grant_file, self._report)
        with self._lock:
            self._last_promote = (self.clock(), answer)
        if answer.get("result") == "granted":
            self.beat()          # refresh the cached view (primary is now us)
            if self.wake is not None:
                try:
                    self.wake()
                except Exception:
                    pass

    def grant(self, wall=time.time):
        """The persisted grant if it still stands: the mediator, reachable, names this node
        primary at the grant's generation; or, the mediator unreachable since, the grant is
        the promotion this node just asked for: the newest generation seen, at most one lease
        old, and this node's lease still live by more than the step-down lead.

        Unreachable, the cached answer proves nothing: the mediator may have moved on (a
        resync makes the peer eligible again at the next generation, and lease + margin after
        it last heard this node it grants the peer). An old grant honoured then would promote
        a node that self-fenced, or rebooted, as its lease ran out, on the handler's exit 7
        (the agent's promotion grant), while the peer is promoted too: two Primaries."""
        grant = read_json(self.grant_file)
        st = self.state()
        a = st.answer or {}
        if not grant or grant.get("node") != self.client.node or grant.get("pool") != \
                self.client.pool:
            return None
        if st.reachable:
            if a.get("primary") == self.client.node and a.get("gen") == grant.get("gen"):
                return grant
            return None
        if grant.get("gen") != st.max_gen or not isinstance(grant.get("time"), (int, float)):
            return None
        lease = (a.get("lease_ms") or 10000) / 1000.0
        left = self.lease_left()
        if left is None or left <= self.step_down_lead() or \
                not 0 <= wall() - grant["time"] <= lease:
            return None
        return grant            # granted, then unreachable: the promotion it was asked for

    def observation(self):
        """A model.WitnessGrant for this pass (memory and one small local file only)."""
        from iscsi_ha.model import WitnessGrant
        st = self.state()
        a = st.answer or {}
        grant = self.grant()
        ok, why = st.failover_allowed()
        if grant is not None:
            granted, reason = True, "granted at generation %s" % grant["gen"]
        elif a.get("primary") == self.client.node and st.reachable:
            granted, reason = True, "this node is the primary at generation %s" % a.get("gen")
        else:
            granted = False
            last = self._last_promote
            if not ok:
                reason = why
            elif last is not None and self.clock() - last[0] < 3 * self.interval:
                reason = "%s: %s" % (last[1].get("result"), last[1].get("reason") or "")
            else:
                reason = "no grant yet (asking the mediator)"
        deposed = bool(st.reachable and a.get("primary") and a.get("primary") !=
                       self.client.node and self.client.node in (a.get("outdated") or []))
        peer = a.get("peer")
        peer_outdated = bool(st.reachable and a.get("primary") == self.client.node and peer
                             and peer in (a.get("outdated") or []))
        status = st.as_dict()
        left = self.lease_left()
        status.update(granted=granted, reason=reason, node=self.client.node,
                      pool=self.client.pool, peer_outdated=peer_outdated,
                      lease_left_s=None if left is None else round(left, 1))
        return WitnessGrant(granted=granted, reason=reason, deposed=deposed,
                            failover_allowed=ok, peer_outdated=peer_outdated, status=status,
                            lease_left_s=left, step_down_lead_s=self.step_down_lead())


class BrokenWitness(object):
    """MEDIATOR is set but its client cannot be built: every pass sees "no grant" with the
    reason, so a cut link never promotes on a guess; status and alerts say why."""

    def __init__(self, error):
        self.error = error

    def set_report(self, report):
        pass

    def want_promote(self):
        pass

    def beat(self):
        return None

    def start(self):
        return self

    def stop(self, timeout=5.0):
        pass

    def observation(self):
        from iscsi_ha.model import WitnessGrant
        reason = "mediator not usable: %s" % self.error
        return WitnessGrant(granted=False, reason=reason, failover_allowed=False,
                            status={"configured": True, "reachable": False,
                                    "error": reason, "auto_failover": False,
                                    "auto_failover_reason": reason})


def fence_peer_from_config(config):
    """For the DRBD fence-peer handler (a separate process DRBD runs): ask the mediator to
    outdate the peer. Returns (exit code, one-line reason): 4 peer outdated, 3 already outdated,
    6 this host was deposed (outdate yourself; the agent demotes), 1 no usable answer (DRBD
    keeps I/O frozen). None when no mediator is configured (MEDIATOR empty). Bounded by
    MEDIATOR_TIMEOUT per address."""
    if not config.MEDIATOR:
        return None
    try:
        monitor = from_config(config)
    except MediatorError as exc:
        return 1, str(exc)
    try:
        return monitor.fence_peer()
    finally:
        monitor.client.close()
