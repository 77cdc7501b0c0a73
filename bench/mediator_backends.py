"""Cost of a promote and of a heartbeat on each mediator storage backend, side by side.

SQLite (the default, a file in a temporary directory) and etcd (its own one-member and
three-member clusters on 127.0.0.1, started with the test harness), on the same machine in
the same run:
  promote   = a linearizable read of the pool + one CAS transaction (record + audit entry)
              -- what the mediator does to grant a promote (the decision logic is excluded)
  heartbeat = what a heartbeat costs the storage layer: node_seen + a cache read, never a
              write (etcd: the number of etcd revisions during the heartbeats is printed)
  floor     = a plain dict update (heartbeat floor); one etcd range / one SQLite SELECT
              (promote floor)

    python bench/mediator_backends.py [--promotes N] [--heartbeats N] [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "mediator"))
sys.path.insert(0, os.path.join(ROOT, "tests", "mediator_etcd"))

import etcd_cluster  # noqa: E402
from iscsi_ha_mediator import etcd_backend as eb  # noqa: E402
from iscsi_ha_mediator import etcd_client as ec  # noqa: E402
from iscsi_ha_mediator import storage as st  # noqa: E402
from iscsi_ha_mediator.sqlite_store import SqliteStorage  # noqa: E402


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


def bench_sqlite(promotes, heartbeats):
    tmp = tempfile.mkdtemp(prefix="iscsi-ha-bench-")
    try:
        backend = SqliteStorage(os.path.join(tmp, "state.db"), lease=10, margin=2).start()
        try:
            floor_fn = lambda p: backend.read(p)  # noqa: E731  one SELECT
            revision_fn = lambda: int(backend._need().execute(  # noqa: E731
                "SELECT value FROM meta WHERE key='revision'").fetchone()[0])
            out = _bench_backend(backend, promotes, heartbeats, floor_fn, revision_fn)
        finally:
            backend.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _bench_backend(backend, promotes, heartbeats, floor_fn, revision_fn=None):
    pools = ["bench-%d" % i for i in range(100)]
    for p in pools:
        rec = st.new_record(p, ["A", "B"])
        rec.update(primary="A", eligible=["A", "B"])
        backend.commit(p, 0, rec, {"event": "create"})
    floor = []
    for i in range(promotes):
        t = time.perf_counter()
        floor_fn(pools[i % 100])
        floor.append(time.perf_counter() - t)
    # promote: fresh read + CAS commit (record + audit), deposing the primary
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
    for p in pools:  # first sight of each node (etcd: one presence write each); not measured
        backend.node_seen(p, "A")
        backend.node_seen(p, "B")
    time.sleep(0.5)
    before = revision_fn() if revision_fn else 0
    hb = []
    for i in range(heartbeats):
        p = pools[i % 100]
        t = time.perf_counter()
        backend.node_seen(p, "A" if i % 2 else "B")
        backend.cached(p)
        hb.append(time.perf_counter() - t)
    time.sleep(0.3)
    after = revision_fn() if revision_fn else 0
    return {"promote": summary(prom), "promote_floor": summary(floor),
            "heartbeat": summary(hb), "store_writes_during_heartbeats": after - before}


def bench_etcd(size, promotes, heartbeats):
    with etcd_cluster.EtcdCluster(size=size) as cluster:
        settings = ec.EtcdSettings(cluster.endpoints)
        backend = eb.EtcdBackend(settings, lease=10, margin=2).start()
        try:
            return _bench_backend(
                backend, promotes, heartbeats,
                lambda p: backend.client.get(backend._k_pool(p)),
                lambda: int(backend.client.status()["header"]["revision"]))
        finally:
            backend.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--promotes", type=int, default=300)
    ap.add_argument("--heartbeats", type=int, default=100000)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if etcd_cluster.etcd_binary() is None:
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 2
    results = {"heartbeat_floor_dict": bench_heartbeat_floor(args.heartbeats),
               "sqlite": bench_sqlite(args.promotes, args.heartbeats)}
    for size in (1, 3):
        results["etcd%d" % size] = bench_etcd(size, args.promotes, args.heartbeats)
    floor = results["heartbeat_floor_dict"]["p50_ms"]
    print("%-26s %9s %9s %9s %9s %9s" % ("backend", "promote", "promote", "heartbeat",
                                         "heartbeat", "writes"))
    print("%-26s %9s %9s %9s %9s %9s" % ("", "p50 ms", "p99 ms", "p50 us", "p99 us",
                                         "per hbs"))
    for name, label in (("sqlite", "sqlite (file, FULL sync)"), ("etcd1", "etcd, 1 member"),
                        ("etcd3", "etcd, 3 members")):
        r = results[name]
        print("%-26s %9.3f %9.3f %9.2f %9.2f %9d" % (
            label, r["promote"]["p50_ms"], r["promote"]["p99_ms"],
            r["heartbeat"]["p50_ms"] * 1000, r["heartbeat"]["p99_ms"] * 1000,
            r["store_writes_during_heartbeats"]))
    print()
    print("floors in this run: dict update p50 %.2f us; promote floor (one read) p50: %s" % (
        floor * 1000, ", ".join("%s %.3f ms" % (n, results[n]["promote_floor"]["p50_ms"])
                                for n in ("sqlite", "etcd1", "etcd3"))))
    for name in ("sqlite", "etcd1", "etcd3"):
        r = results[name]
        print("%-8s promote = %5.1fx its read floor, %5.1fx sqlite promote; heartbeat = "
              "%4.1fx dict floor" % (
                  name, r["promote"]["p50_ms"] / r["promote_floor"]["p50_ms"],
                  r["promote"]["p50_ms"] / results["sqlite"]["promote"]["p50_ms"],
                  r["heartbeat"]["p50_ms"] / max(floor, 1e-9)))
    print("(%d promotes, %d heartbeats per backend)" % (args.promotes, args.heartbeats))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
