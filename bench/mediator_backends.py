"""Cost of a promote and of a heartbeat on each mediator storage backend, side by side.

Starts its own etcd (one member, then three) on 127.0.0.1 with the test harness, and measures
on the same machine in the same run:
  promote   = a linearizable read of the pool + one CAS transaction (record + audit entry)
              -- what the mediator does to grant a promote (the decision logic is excluded)
  heartbeat = what a heartbeat costs the storage layer: etcd backend -> node_seen + a cache
              read, never a write (the number of etcd revisions during the run is printed)
  floor     = a plain dict update (heartbeat floor) and one etcd range (promote floor)

    python bench/mediator_backends.py [--promotes N] [--heartbeats N] [--json FILE]
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "mediator"))
sys.path.insert(0, os.path.join(ROOT, "tests", "mediator_etcd"))

import etcd_cluster  # noqa: E402
from iscsi_ha_mediator import etcd_backend as eb  # noqa: E402
from iscsi_ha_mediator import etcd_client as ec  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def summary(samples):
    ms = [s * 1000.0 for s in samples]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
            "mean_ms": statistics.mean(ms)}


def bench_heartbeat_floor(n):
    d = {}
    out = []
    for i in range(n):
        t = time.perf_counter()
        d[("p%d" % (i % 100), "A")] = time.monotonic()
        out.append(time.perf_counter() - t)
    return summary(out)


def bench_etcd(size, promotes, heartbeats):
    with etcd_cluster.EtcdCluster(size=size) as cluster:
        settings = ec.EtcdSettings(cluster.endpoints)
        backend = eb.EtcdBackend(settings, lease=10, margin=2).start()
        try:
            pools = ["bench-%d" % i for i in range(100)]
            revs = {}
            for p in pools:
                revs[p] = backend.commit(p, 0, {"generation": 1, "primary": "A",
                                                "eligible": ["A", "B"], "outdated": []},
                                         {"event": "create"})
            # floor: one linearizable range
            floor = []
            for i in range(promotes):
                t = time.perf_counter()
                backend.client.get(backend._k_pool(pools[i % 100]))
                floor.append(time.perf_counter() - t)
            # promote: fresh read + CAS txn with presence compare
            prom = []
            for i in range(promotes):
                p = pools[i % 100]
                t = time.perf_counter()
                record, rev = backend.read(p)
                new = dict(record, generation=record["generation"] + 1,
                           primary="B" if record["primary"] == "A" else "A")
                backend.commit(p, rev, new, {"event": "promote", "node": new["primary"]},
                               absent_presence=[record["primary"]])
                prom.append(time.perf_counter() - t)
            # heartbeat: memory only
            for p in pools:  # first sight of each node writes presence once; not measured
                backend.node_seen(p, "A")
                backend.node_seen(p, "B")
            time.sleep(0.5)
            rev_before = int(backend.client.status()["header"]["revision"])
            hb = []
            for i in range(heartbeats):
                p = pools[i % 100]
                t = time.perf_counter()
                backend.node_seen(p, "A" if i % 2 else "B")
                backend.cached(p)
                hb.append(time.perf_counter() - t)
            time.sleep(0.3)
            rev_after = int(backend.client.status()["header"]["revision"])
        finally:
            backend.stop()
    return {"promote": summary(prom), "promote_floor_range": summary(floor),
            "heartbeat": summary(hb), "etcd_writes_during_heartbeats": rev_after - rev_before}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--promotes", type=int, default=300)
    ap.add_argument("--heartbeats", type=int, default=100000)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if etcd_cluster.etcd_binary() is None:
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2
    results = {"heartbeat_floor_dict": bench_heartbeat_floor(args.heartbeats)}
    for size in (1, 3):
        results["etcd%d" % size] = bench_etcd(size, args.promotes, args.heartbeats)
    floor = results["heartbeat_floor_dict"]["p50_ms"]
    print("%-28s %10s %10s %10s" % ("backend / operation", "p50 ms", "p99 ms", "mean ms"))
    for name in ("etcd1", "etcd3"):
        r = results[name]
        for op in ("promote", "promote_floor_range", "heartbeat"):
            s = r[op]
            print("%-28s %10.3f %10.3f %10.3f" % ("%s %s" % (name, op), s["p50_ms"],
                                                  s["p99_ms"], s["mean_ms"]))
        print("%-28s %10d" % ("%s etcd writes/hb run" % name, r["etcd_writes_during_heartbeats"]))
        print("%-28s %10.1fx floor range, heartbeat %.1fx dict floor" % (
            name + " ratios", r["promote"]["p50_ms"] / r["promote_floor_range"]["p50_ms"],
            r["heartbeat"]["p50_ms"] / max(floor, 1e-6)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
