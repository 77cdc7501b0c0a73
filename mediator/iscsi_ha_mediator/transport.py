"""Wire protocol: newline-delimited JSON over TLS 1.2+ with client certificates, kept alive.

Why this and not HTTP/1.1: every heartbeat is one small request and one small answer on a
connection that stays open for days. A JSON line needs no header parsing, no chunking and no
per-request allocation beyond the JSON itself, which is what lets one Python process serve
10,000 pools (20,000 heartbeats every 2 s) on one core; the agent-side client in Python 3.6 is
~50 lines of ssl + socket. Requests carry an ``id`` echoed in the answer, so several may be in
flight on one connection. One message is at most ``MAX_LINE`` bytes.

TLS is done here on ``ssl.MemoryBIO`` rather than with asyncio's SSL transport: it costs less
per message, it keeps a per-connection read buffer small (asyncio's keeps 256 KiB per
connection, 5 GB for 20,000 connections), and it lets the server delay a handshake from a
source that keeps failing (rate limiting) before spending CPU on it.

Rate limiting (per source address) never locks a valid node out: failures (bad handshake,
unknown or expired credential, malformed request) drain a token bucket; when it is empty, new
connections from that source wait before their handshake, at most ``MAX_DELAY`` seconds (well
under one lease), and are then served normally if their credential is valid. Connections
already authenticated are never slowed.
"""
import asyncio
import json
import logging
import ssl
import time

from .pki import fingerprint_der

LOG = logging.getLogger("iscsi-ha-mediator")

MAX_LINE = 64 * 1024
HANDSHAKE_TIMEOUT = 10.0
MAX_DELAY = 2.0
READ_CHUNK = 16 * 1024 + 256


def server_context(cert, key, ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return ctx


class SourceLimiter(object):
    """Token bucket of failures per source address."""

    def __init__(self, capacity=10.0, refill_per_s=0.5, clock=time.monotonic):
        self.capacity = capacity
        self.refill = refill_per_s
        self.clock = clock
        self._b = {}

    def _tokens(self, src):
        now = self.clock()
        tokens, last = self._b.get(src, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill)
        return tokens, now

    def failed(self, src):
        tokens, now = self._tokens(src)
        self._b[src] = (max(-self.capacity, tokens - 1.0), now)

    def delay(self, src):
        """Seconds a new connection from ``src`` waits before its handshake (0 if fine)."""
        if src not in self._b:
            return 0.0
        tokens, now = self._tokens(src)
        if tokens >= self.capacity:
            del self._b[src]
            return 0.0
        if tokens > 0:
            return 0.0
        return min(MAX_DELAY, 0.2 * (1.0 - tokens))

    def sources(self):
        return len(self._b)


class NodeConnection(asyncio.Protocol):
    """One TLS connection from a node; ``server`` provides ctx, registry, limiter, handle()."""

    __slots__ = ("server", "transport", "src", "inbio", "outbio", "sslobj", "ready", "ident",
                 "buf", "timer", "closed", "last_active", "fp")

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.ident = None
        self.fp = None
        self.ready = False
        self.buf = b""
        self.timer = None
        self.sslobj = None
        self.closed = False
        self.last_active = time.monotonic()

    # -- connection setup ------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.src = peer[0] if peer else "?"
        transport.pause_reading()
        self.server.conns.add(self)
        loop = asyncio.get_running_loop()
        delay = self.server.limiter.delay(self.src)
        if delay > 0:
            self.server.stats["delayed"] += 1
            loop.call_later(delay, self._begin)
        else:
            self._begin()

    def _begin(self):
        if self.closed:
            return
        self.inbio = ssl.MemoryBIO()
        self.outbio = ssl.MemoryBIO()
        self.sslobj = self.server.ctx.wrap_bio(self.inbio, self.outbio, server_side=True)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._timeout)
        self.transport.resume_reading()

    def _timeout(self):
        if not self.ready:
            self._fail("TLS handshake timed out")

    def _fail(self, why):
        self.server.limiter.failed(self.src)
        self.server.stats["failed"] += 1
        self.server.refused(self.src, why)
        self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.conns.discard(self)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc):
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.conns.discard(self)

    def _flush(self):
        data = self.outbio.read()
        if data and not self.closed:
            self.transport.write(data)

    # -- data ------------------------------------------------------------------------------
    def data_received(self, data):
        if self.sslobj is None:
            return
        self.inbio.write(data)
        if not self.ready:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, OSError) as exc:
                self._flush()
                self._fail("TLS handshake failed: %s" % (getattr(exc, "reason", None) or exc))
                return
            self._flush()
            self.timer.cancel()
            self.timer = None
            der = self.sslobj.getpeercert(binary_form=True)
            self.fp = fingerprint_der(der) if der else None
            ident = self.server.registry.lookup(self.fp) if der else None
            if ident is None:
                self._send({"ok": False, "error": "credential not accepted: unknown, revoked "
                                                  "or expired client certificate"})
                self._fail("unknown/expired credential %s" % (
                    fingerprint_der(der)[:16] if der else "none"))
                return
            self.ident = ident
            self.ready = True
            self.server.stats["authenticated"] += 1
        chunks = []
        inbio, sslobj = self.inbio, self.sslobj
        while True:
            try:
                chunk = sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.close()
                return
            except ssl.SSLError as exc:
                LOG.info("TLS error from %s: %s", self.src, exc)
                self.close()
                return
            if not chunk:
                self.close()
                return
            chunks.append(chunk)
            if not inbio.pending and not sslobj.pending():
                break       # all read (saves the raise of SSLWantReadError per message)
        if self.outbio.pending:
            self._flush()
        if not chunks:
            return
        self.last_active = time.monotonic()
        buf = self.buf + b"".join(chunks) if self.buf else b"".join(chunks)
        if b"\n" not in buf:
            if len(buf) > MAX_LINE:
                self._send({"ok": False, "error": "message longer than %d bytes" % MAX_LINE})
                self._fail("oversized message")
                return
            self.buf = buf
            return
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        for line in lines:
            if line.strip():
                self.server.handle(self, line)
            if self.closed:
                return

    def _send(self, obj):
        if self.closed:
            return
        try:
            self.sslobj.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        except ssl.SSLError:
            self.close()
            return
        self._flush()

    send = _send

    def send_line(self, data):
        """Send one already encoded answer line (bytes ending in a newline)."""
        if self.closed:
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError:
            self.close()
            return
        self.transport.write(self.outbio.read())

    def eof_received(self):
        return False
