"""Load generator for bench/mediator_scale.py (run as its own process, pinned to its own core).

Simulates nodes: one kept-alive TLS connection each (its own client certificate), a heartbeat
every ``--interval`` seconds at a random phase, each answer's latency measured from just before
the request is handed to TLS to just after the answer is parsed. Optionally sends promotes for
dedicated pools (one every ``--promote-every`` seconds) and measures their latency.

TLS is done on ssl.MemoryBIO (as the mediator does) so 10,000 connections fit in memory.
Input: a JSON file {"port", "ca", "nodes": [[pool, node, pemfile], ...],
"promotes": [[pool, node, pemfile, gen, uuid], ...]}. Output: JSON on stdout at the end.
Protocol on stdout: "CONNECTED <n> <seconds>" when all are connected, then the result line.
"""
import argparse
import asyncio
import gc
import json
import os
import random
import ssl
import sys
import time


class Node(asyncio.Protocol):
    pending_op = "heartbeat"
    def __init__(self, gen, ctx, pool, node, on_answer):
        self.gen = gen
        self.ctx = ctx
        self.pool = pool
        self.node = node
        self.on_answer = on_answer
        self.ready = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.sent = {}
        self.seq = 0
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport
        self.inbio = ssl.MemoryBIO()
        self.outbio = ssl.MemoryBIO()
        self.sslobj = self.ctx.wrap_bio(self.inbio, self.outbio, server_side=False,
                                        server_hostname="127.0.0.1")
        self._handshake()

    def _flush(self):
        data = self.outbio.read()
        if data:
            self.transport.write(data)

    def _handshake(self):
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        self._flush()
        if not self.ready.done():
            self.ready.set_result(True)
        return True

    def data_received(self, data):
        self.inbio.write(data)
        if not self.ready.done():
            if not self._handshake():
                return
        chunks = []
        while True:
            try:
                chunk = self.sslobj.read(17000)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:
                self.transport.close()
                return
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()
        if not chunks:
            return
        buf = self.buf + b"".join(chunks) if self.buf else b"".join(chunks)
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        now = time.perf_counter()
        for line in lines:
            fast = quick_answer(line) if self.pending_op == "heartbeat" else None
            if fast is not None:
                rid, gen = fast
                t0 = self.sent.pop(rid, None)
                if t0 is not None:
                    self.gen = gen
                    self.on_answer(self, OK, now - t0)
                continue
            msg = json.loads(line)
            t0 = self.sent.pop(msg.get("id"), None)
            if t0 is not None:
                if "gen" in msg and isinstance(msg["gen"], int):
                    self.gen = msg["gen"]
                self.on_answer(self, msg, now - t0)

    def connection_lost(self, exc):
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during handshake: %s" % exc))

    def request(self, op, **fields):
        self.seq += 1
        fields.update(id=self.seq, op=op)
        data = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
        self.sent[self.seq] = time.perf_counter()
        self.sslobj.write(data)
        self._flush()

    def heartbeat(self, tail):
        """A heartbeat whose fields after ``gen`` are pre-encoded (``tail``): only id and gen
        are formatted per request (the load generator's own cost per heartbeat)."""
        self.seq += 1
        self.sent[self.seq] = time.perf_counter()
        self.sslobj.write(b'{"id":%d,"op":"heartbeat","gen":%d,%s' % (self.seq, self.gen, tail))
        self.transport.write(self.outbio.read())


OK = {"ok": True}


def quick_answer(line):
    """(id, gen) of a successful answer in the mediator's heartbeat line form (ok first, gen,
    integer id last) without a JSON parse; None for anything else (parsed in full)."""
    if not line.startswith(b'{"ok":true,') or not line.endswith(b"}"):
        return None
    _, sep, rid = line[:-1].rpartition(b',"id":')
    i = line.find(b',"gen":')
    if not sep or i < 0 or not rid.isdigit():
        return None
    j = line.find(b",", i + 7)
    gen = line[i + 7:j]
    if not gen.isdigit():
        return None
    return int(rid), int(gen)


def make_ctx(ca, pem):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(pem)
    return ctx


async def main(args):
    spec = json.load(open(args.spec))
    loop = asyncio.get_running_loop()
    hb_lat, promote_lat, promote_results, errors = [], [], {}, []
    measuring = [False]

    def on_answer(node, msg, dt):
        op = getattr(node, "pending_op", "heartbeat")
        if op == "promote":
            promote_lat.append(dt)
            r = msg.get("result") or msg.get("error")
            promote_results[r] = promote_results.get(r, 0) + 1
            node.pending_op = "heartbeat"
        elif measuring[0]:
            if msg.get("ok"):
                hb_lat.append(dt)
            else:
                errors.append(msg.get("error"))

    async def connect(item, sem):
        pool, name, pem = item[:3]
        async with sem:
            ctx = make_ctx(spec["ca"], pem)
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(
                        lambda: Node(item[3] if len(item) > 3 else 1, ctx, pool, name,
                                     on_answer), "127.0.0.1", spec["port"])
                    await asyncio.wait_for(proto.ready, 30)
                    return proto
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    err = exc
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise SystemExit("connect %s/%s failed: %s" % (pool, name, err))

    t0 = time.monotonic()
    sem = asyncio.Semaphore(args.parallel)
    nodes = await asyncio.gather(*[connect(i, sem) for i in spec["nodes"]])
    promoters = await asyncio.gather(*[connect(i, sem) for i in spec.get("promotes", [])])
    # A measuring tool with a bounded run: no cyclic GC pauses (a full collection over 10,000
    # connections' objects takes 100+ ms) in the measured latencies; memory is freed by
    # reference counting as usual.
    gc.collect()
    gc.freeze()
    gc.disable()
    sys.stdout.write("CONNECTED %d %.1f\n" % (len(nodes), time.monotonic() - t0))
    sys.stdout.flush()
    # wait for GO on stdin (all load generators connected), without blocking the loop
    await loop.run_in_executor(None, sys.stdin.readline)

    uuid = spec.get("uuid", "8E0E9B2D3B0E1B4C")
    drbd_p = {"role": "Primary", "disk": "UpToDate", "conn": "Connected",
              "peer_disk": "UpToDate", "current_uuid": uuid}
    drbd_s = dict(drbd_p, role="Secondary")
    tail_p = b'"drbd":%s}\n' % json.dumps(drbd_p, separators=(",", ":")).encode()
    tail_s = b'"drbd":%s}\n' % json.dumps(drbd_s, separators=(",", ":")).encode()
    # heartbeat slots: each node at a random phase within the interval
    tick = 0.01
    slots = int(round(args.interval / tick))
    table = [[] for _ in range(slots)]
    for n in nodes:
        table[random.randrange(slots)].append(n)
    start = loop.time()
    end_warm = start + args.warmup
    end = end_warm + args.duration
    promote_every = args.promote_every
    next_promote = end_warm + promote_every
    pi = 0
    lateness = []
    k = 0
    while True:
        due = start + k * tick
        now = loop.time()
        if now >= end:
            break
        if due > now:
            await asyncio.sleep(due - now)
        elif measuring[0]:
            lateness.append(now - due)
        if not measuring[0] and loop.time() >= end_warm:
            measuring[0] = True
            sys.stdout.write("MEASURING\n")
            sys.stdout.flush()
        for n in table[k % slots]:
            if not n.lost and not n.sent:
                n.heartbeat(tail_p if n.node == "a" else tail_s)
        if promoters and measuring[0] and loop.time() >= next_promote and pi < len(promoters):
            p = promoters[pi]
            pi += 1
            next_promote += promote_every
            p.pending_op = "promote"
            p.request("promote", gen=p.gen, drbd=drbd_s)
        k += 1
    sys.stdout.write("DONE\n")
    sys.stdout.flush()
    await asyncio.sleep(0.5)
    lateness.sort()
    out = {"heartbeat_latencies": hb_lat, "promote_latencies": promote_lat,
           "promote_results": promote_results, "errors": errors[:20],
           "error_count": len(errors),
           "lost_connections": sum(1 for n in nodes if n.lost),
           "unanswered": sum(len(n.sent) for n in nodes),
           "tick_lateness_p99_ms": 1000 * lateness[int(len(lateness) * 0.99)] if lateness
           else 0.0}
    with open(args.out, "w") as handle:
        json.dump(out, handle)
    sys.stdout.write("RESULT %s\n" % args.out)
    sys.stdout.flush()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("out")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--promote-every", type=float, default=1.0)
    ap.add_argument("--parallel", type=int, default=200)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.install()
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(args))
