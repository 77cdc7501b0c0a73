"""The mediator process: node listener (TLS), admin listener (local unix socket), wiring."""
import asyncio
import concurrent.futures
import gc
import json
import logging
import os
import resource
import socket
import struct
import subprocess
import time

from . import __version__
from . import creds as cr
from . import pki
from . import storage as st
from .service import Mediator, RequestError
from .transport import NodeConnection, SourceLimiter, server_context

LOG = logging.getLogger("iscsi-ha-mediator")

_decode = json.JSONDecoder().decode

NODE_OPS = ("heartbeat", "promote", "fence-peer", "unfence", "handover", "ping")


def make_store(settings):
    if settings.backend == "etcd":
        try:
            from . import etcd_backend  # provided by the etcd backend (issue 14)
        except ImportError as exc:
            from .config import ConfigError
            raise ConfigError("backend = etcd, but the etcd backend cannot be loaded: %s" % exc)
        return etcd_backend.EtcdBackend(etcd_backend.settings_from_config(settings),
                                        lease=settings.lease, margin=settings.margin)
    from .sqlite_store import SqliteStorage
    return SqliteStorage(settings.path("database", "mediator.db"), lease=settings.lease,
                         margin=settings.margin)


def raise_fd_limit(want=65536):
    """Raise the open-file limit to ``want`` (root may raise the hard limit; others get the
    hard limit; the systemd unit sets LimitNOFILE). Each node connection is one descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(want, soft), max(want, hard)), (hard, hard)):
        if limits[0] <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class MediatorServer(object):
    def __init__(self, settings, store=None, clock=time.monotonic):
        self.settings = settings
        self.store = store or make_store(settings)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, getattr(self.store, "concurrency", 1)),
            thread_name_prefix="storage")
        self.mediator = Mediator(self.store, clock=clock, executor=self.executor,
                                 alert=self._alert)
        self.registry = cr.Registry(self.store)
        self.limiter = SourceLimiter(settings.rate_capacity, settings.rate_refill)
        self.conns = set()
        self.stats = {"delayed": 0, "failed": 0, "authenticated": 0, "requests": 0,
                      "wrong_identity": 0}
        self._refusals = {}
        self._servers = []
        self._tasks = set()
        self.started_wall = time.time()
        self.port = None
        self.ctx = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self):
        s = self.settings
        raise_fd_limit()
        await asyncio.get_running_loop().run_in_executor(self.executor, self.store.start)
        self.registry.rebuild()
        self.mediator.started = self.mediator.clock()
        self.ctx = server_context(s.path("tls_cert", "tls/server.crt"),
                                  s.path("tls_key", "tls/server.key"),
                                  s.path("tls_ca", "tls/ca.crt"))
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: NodeConnection(self), s.listen, s.port,
                                       backlog=4096, reuse_address=True)
        self.port = srv.sockets[0].getsockname()[1]
        self._servers.append(srv)
        path = s.path("admin_socket", "admin.sock")
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            asrv = await asyncio.start_unix_server(self._admin_client, path)
        finally:
            os.umask(old)
        self._servers.append(asrv)
        self.admin_path = path
        self._spawn(self._sweeper())
        LOG.info("iscsi-ha-mediator %s serving %s:%d (%s backend, %d pools); admin on %s; "
                 "no grant before %.0f s (restart grace)", __version__, s.listen, self.port,
                 self.store.name, len(self.store.pools()), path, s.lease + s.margin)

    async def stop(self):
        for srv in self._servers:
            srv.close()
        for conn in list(self.conns):
            conn.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self.mediator._bg):
            try:
                await asyncio.wait_for(t, 5)
            except Exception:   # noqa: BLE001 - best effort at shutdown
                pass
        await asyncio.get_running_loop().run_in_executor(self.executor, self.store.stop)
        self.executor.shutdown(wait=False)

    def _spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sweeper(self):
        idle = self.settings.idle_timeout
        while True:
            await asyncio.sleep(min(5.0, idle / 2))
            now = time.monotonic()
            for conn in list(self.conns):
                if conn.ready and now - conn.last_active > idle:
                    conn.close()
                elif conn.ready and self.registry.lookup(conn.fp) is None:
                    conn.send({"ok": False, "error": "credential expired"})
                    conn.close()

    # -- alerts and refusals ---------------------------------------------------------------
    def _alert(self, pool, text):
        LOG.warning("pool %s: %s", pool, text)
        cmd = self.settings.alert_command
        if cmd:
            self._spawn(self._run_alert(cmd, pool, text))

    async def _run_alert(self, cmd, pool, text):
        try:
            proc = await asyncio.create_subprocess_exec(
                cmd, pool, text, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.wait_for(proc.wait(), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            LOG.warning("alert command %s failed: %s", cmd, exc)

    def refused(self, src, why, pool=""):
        """Audit a refused connection or request; at most one entry per source and reason per
        minute (the count of the others is logged with the next one)."""
        key = (src, why.split(":")[0], pool)
        now = time.monotonic()
        last, count = self._refusals.get(key, (None, 0))
        if last is not None and now - last < 60:
            self._refusals[key] = (last, count + 1)
            return
        self._refusals[key] = (now, 0)
        if len(self._refusals) > 10000:
            self._refusals.clear()
        LOG.warning("refused %s: %s", src, why)
        self.mediator._audit_soon(pool, {"event": "refused", "source": src, "reason": why,
                                         "suppressed_before": count})

    # -- node requests ---------------------------------------------------------------------
    def handle(self, conn, line):
        self.stats["requests"] += 1
        try:
            req = _decode(line.decode())      # UnicodeDecodeError is a ValueError
            if not isinstance(req, dict):
                raise ValueError
        except (ValueError, RecursionError):
            conn.send({"ok": False, "error": "request is not a JSON object"})
            self.limiter.failed(conn.src)
            return
        rid = req.get("id")
        ident = self.registry.lookup(conn.fp)   # rotation/revocation take effect at once
        if ident is None:
            conn.send({"id": rid, "ok": False, "error": "credential expired"})
            conn.close()
            return
        pool, node = req.get("pool", ident.pool), req.get("node", ident.node)
        if pool != ident.pool or node != ident.node:
            self.stats["wrong_identity"] += 1
            self.limiter.failed(conn.src)
            self.refused(conn.src, "credential of %s/%s used as %s/%s" % (
                ident.pool, ident.node, pool, node), pool=ident.pool)
            conn.send({"id": rid, "ok": False, "error": "refused: this credential may act "
                       "only as node %s of pool %s" % (ident.node, ident.pool)})
            return
        op = req.get("op")
        try:
            if op == "heartbeat":
                conn.send_line(self.mediator.heartbeat_line(pool, node, req, rid))
                return
            elif op == "ping":
                out = {"ok": True, "version": __version__}
            elif op in NODE_OPS:
                self._spawn(self._async_op(conn, rid, op, pool, node, req))
                return
            else:
                out = {"ok": False, "error": "unknown operation %r" % (op,)}
        except RequestError as exc:
            out = {"ok": False, "error": str(exc)}
        out["id"] = rid
        conn.send(out)

    async def _async_op(self, conn, rid, op, pool, node, req):
        fn = {"promote": self.mediator.promote, "fence-peer": self.mediator.fence_peer,
              "unfence": self.mediator.unfence, "handover": self.mediator.handover}[op]
        try:
            out = await fn(pool, node, req)
        except RequestError as exc:
            out = {"ok": False, "error": str(exc)}
        except st.StorageError as exc:
            out = {"ok": True, "result": "retry", "reason": str(exc), "retry_after_ms": 2000}
        except Exception as exc:   # noqa: BLE001 - never die on one request
            LOG.exception("%s from %s/%s failed", op, pool, node)
            out = {"ok": False, "error": "internal error: %s" % exc}
        out["id"] = rid
        conn.send(out)

    # -- admin -----------------------------------------------------------------------------
    async def _admin_client(self, reader, writer):
        sock = writer.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except OSError:
            uid = -1
        if uid not in (0, os.getuid()):
            writer.write(b'{"ok":false,"error":"admin socket: uid %d not allowed"}\n' % uid)
            writer.close()
            return
        who = "uid %d" % uid
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    out = await self.admin(req, who)
                except (ValueError, RequestError, st.StorageError, pki.PkiError) as exc:
                    out = {"ok": False, "error": str(exc).splitlines()[0] if str(exc)
                           else type(exc).__name__}
                writer.write(json.dumps(out).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _need_pool(self, pool):
        cr.check_name("pool", pool)
        rec, rev = self.store.cached(pool)
        if rec is None:
            raise RequestError("no pool %s (see: iscsi-ha-mediator pool list)" % pool)
        return rec, rev

    async def _io(self, fn, *args, **kw):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kw))

    async def admin(self, req, who="admin"):
        op = req.get("op")
        m = self.mediator
        if op == "status":
            # "pools": false: the summary only (no per-pool part; cheap at 10,000 pools)
            names = self.store.pools()
            pools = [m.pool_status(p) for p in names] if req.get("pools", True) else None
            return {"ok": True, "version": __version__, "backend": self.store.name,
                    "pool_count": len(names),
                    "storage_available": self.store.available,
                    "uptime_s": int(time.time() - self.started_wall),
                    "grace_left_s": max(0.0, round(m.started + self.settings.lease +
                                                   self.settings.margin - m.clock(), 1)),
                    "port": self.port, "connections": len(self.conns),
                    "stats": dict(self.stats, **m.counters), "pools": pools}
        if op == "pool-list":
            return {"ok": True, "pools": [m.pool_status(p) for p in self.store.pools()]}
        if op == "pool-add":
            pool = cr.check_name("pool", req.get("pool"))
            nodes = req.get("nodes") or []
            if len(nodes) != 2 or nodes[0] == nodes[1]:
                raise RequestError("a pool has exactly two distinct nodes (got %s)"
                                   % ", ".join(map(str, nodes)) or "none")
            for n in nodes:
                cr.check_name("node", n)
            if len(self.store.pools()) >= self.settings.max_pools:
                raise RequestError("max_pools (%d) reached" % self.settings.max_pools)
            lease = float(req.get("lease") or self.settings.lease)
            if not 1.0 <= lease <= 600.0:
                raise RequestError("lease %s must be between 1 and 600 seconds" % lease)
            rec = st.new_record(pool, nodes, lease=lease,
                                auto_failover=req.get("auto_failover", True),
                                observer=req.get("observer", False))
            try:
                await self._io(self.store.commit, pool, 0, rec,
                               {"event": "pool-add", "by": who, "nodes": rec["nodes"],
                                "observer": rec["observer"]})
            except st.Conflict:
                raise RequestError("pool %s already exists" % pool)
            return {"ok": True, "pool": m.pool_status(pool)}
        if op == "pool-show":
            pool = req.get("pool")
            self._need_pool(pool)
            audit = await self._io(self.store.audit, pool, int(req.get("limit", 20)))
            return {"ok": True, "pool": m.pool_status(pool),
                    "credentials": self.registry.listing(pool), "audit": audit}
        if op == "pool-remove":
            pool = req.get("pool")
            rec, rev = self._need_pool(pool)
            if rec.get("primary") and not req.get("force"):
                raise RequestError("pool %s has primary %s; remove with --force to drop it "
                                   "anyway" % (pool, rec["primary"]))
            await self._io(self.store.delete_pool, pool, rev, {"event": "pool-remove",
                                                               "by": who})
            self.registry.rebuild()
            return {"ok": True, "removed": pool}
        if op == "pool-set":
            pool = req.get("pool")
            self._need_pool(pool)
            flags = {k: req.get(k) for k in ("observer", "auto_failover")}
            if all(v is None for v in flags.values()):
                raise RequestError("pool set: nothing to change (observer, auto_failover)")
            await m.set_flags(pool, who=who, **flags)
            return {"ok": True, "pool": m.pool_status(pool)}
        if op in ("cred-issue", "cred-rotate"):
            pool, node = req.get("pool"), req.get("node")
            rec, _ = self._need_pool(pool)
            if node not in rec["nodes"]:
                raise RequestError("node %s is not in pool %s (nodes: %s)"
                                   % (node, pool, ", ".join(rec["nodes"])))
            overlap = None
            if op == "cred-rotate":
                overlap = float(req.get("overlap", 86400))
                if overlap < 0:
                    raise RequestError("overlap must be >= 0 seconds")
            ca_dir = os.path.dirname(self.settings.path("tls_ca", "tls/ca.crt"))
            if not os.path.exists(os.path.join(ca_dir, "ca.key")):
                raise RequestError("this mediator has no CA key (%s/ca.key): the admin's own "
                                   "CA signs node certificates outside; register with "
                                   "cred-add" % ca_dir)
            key_pem, crt_pem = await self._io(pki.issue_client, ca_dir, pool, node)
            fp = pki.fingerprint_pem(crt_pem)
            cred_id = await self._io(self.registry.add, pool, node, fp, "%s@%s" % (node, pool),
                                     overlap, who)
            with open(self.settings.path("tls_ca", "tls/ca.crt")) as handle:
                ca_pem = handle.read()
            return {"ok": True, "bundle": {
                "format": "iscsi-ha-mediator-credential/1", "pool": pool, "node": node,
                "cred_id": cred_id, "addresses": self.public_addresses(),
                "ca": ca_pem, "cert": crt_pem.decode(), "key": key_pem.decode()}}
        if op == "cred-list":
            self._need_pool(req.get("pool"))
            return {"ok": True, "credentials": self.registry.listing(req["pool"])}
        if op == "cred-revoke":
            self._need_pool(req.get("pool"))
            await self._io(self.registry.revoke, req["pool"], req.get("node"),
                           req.get("cred_id"), who)
            for conn in list(self.conns):
                if conn.ready and self.registry.lookup(conn.fp) is None:
                    conn.close()
            return {"ok": True}
        if op == "force-promote":
            pool, node = req.get("pool"), req.get("node")
            self._need_pool(pool)
            if req.get("accept_data_loss") is not True:
                raise RequestError("force-promote needs --accept-data-loss")
            rec = await m.force_promote(pool, node, who=who)
            return {"ok": True, "generation": rec["generation"], "primary": node}
        if op == "simulate":
            pool = req.get("pool")
            self._need_pool(pool)
            return m.simulate(pool, req.get("node"), req.get("what", "promote"),
                              req.get("request"))
        if op == "audit":
            pool = req.get("pool")
            if pool not in (None, ""):
                self._need_pool(pool)
            return {"ok": True, "audit": await self._io(self.store.audit, pool,
                                                        int(req.get("limit", 100)))}
        raise RequestError("unknown admin operation %r" % (op,))

    def public_addresses(self):
        names_file = os.path.join(os.path.dirname(self.settings.path("tls_ca", "tls/ca.crt")),
                                  "names")
        names = []
        if os.path.exists(names_file):
            with open(names_file) as handle:
                names = [n.strip() for n in handle if n.strip()]
        port = self.port or self.settings.port
        return ["%s:%d" % (n, port) for n in names] or ["%s:%d" % (self.settings.listen, port)]


async def serve(settings, ready=None, stop_event=None):
    server = MediatorServer(settings)
    await server.start()
    # What start() loaded (records, credentials, TLS contexts) lives as long as the process:
    # kept out of the cyclic GC's full collections, which scan every tracked object (their
    # pause grows with the pool count and is paid by the heartbeats in flight).
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(server)
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_event.set)
        except (NotImplementedError, RuntimeError):
            pass
    _sd_notify(b"READY=1")
    await stop_event.wait()
    _sd_notify(b"STOPPING=1")
    await server.stop()


def _sd_notify(msg):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(msg, addr)
    except OSError:
        pass
