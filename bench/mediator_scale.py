"""Scale benchmark of iscsi-ha-mediator: one mediator process against simulated pools.

For each size (default 100, 1000, 10000 pools; two nodes each): a fresh state (own CA, one
client certificate per node, pools seeded golden with node a primary, as in steady state), the
mediator started as its own process pinned to CPU 0 (one core), and a load generator
(bench/mediator_load.py) pinned to CPU 1: one kept-alive TLS connection per node, a heartbeat
every 2 s each. After a warm-up it measures, over --duration seconds:
- heartbeat latency p50/p99/max (client side, send to answer, on 127.0.0.1),
- the mediator's CPU share of one core (utime+stime from /proc over the window) and its RSS,
- the latency of promotes (real grants, committed to SQLite with fsync) sent once a second to
  dedicated pools whose primary is silent,
- the floor: p50 of ``ping`` round trips on an idle mediator in the same run (TLS + framing +
  loopback, no decision), and each p99 as a ratio of that floor.
Goal (issue 13): 10,000 pools with heartbeat p99 < 50 ms on one core.

With ``--backends sqlite,etcd`` (the default: both, side by side in one run) each size runs
once per storage backend; for etcd the benchmark starts its own three-member etcd on
127.0.0.1 (pinned to CPU 1 with the load generator, so the mediator keeps CPU 0) and reports
the etcd members' CPU share as well. A heartbeat never reaches etcd; a promote is one etcd
transaction (bench/mediator_bench_etcd.py).

Usage: python bench/mediator_scale.py [--pools 100,1000,10000] [--duration 20]
       [--backends sqlite,etcd] [--json FILE]
Needs the ``cryptography`` package (20,000 client certificates in seconds; the openssl CLI the
mediator itself uses takes ~80 ms each). Only 127.0.0.1 is used.
"""
import argparse
import datetime
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "mediator"))
sys.path.insert(0, ROOT)

from iscsi_ha_mediator import cli as mcli          # noqa: E402
from iscsi_ha_mediator import config as mconfig    # noqa: E402
from iscsi_ha_mediator import storage as st        # noqa: E402
from iscsi_ha_mediator.sqlite_store import SqliteStorage   # noqa: E402

import mediator_bench_etcd as mbe                  # noqa: E402  (issue 14: etcd backend)

UUID = "8E0E9B2D3B0E1B4C"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(tls_dir, out_dir, names):
    """One key + client certificate per (pool, node), signed by the state's CA; PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
    ca_key = serialization.load_pem_private_key(open(os.path.join(tls_dir, "ca.key"),
                                                     "rb").read(), None)
    ca_crt = x509.load_pem_x509_certificate(open(os.path.join(tls_dir, "ca.crt"),
                                                 "rb").read())
    now = datetime.datetime.now(datetime.timezone.utc)
    fps = {}
    for pool, node in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            "%s@%s" % (node, pool))]))
                .issuer_name(ca_crt.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
                .sign(ca_key, hashes.SHA256()))
        pem = os.path.join(out_dir, "%s_%s.pem" % (pool, node))
        with open(pem, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        fps[(pool, node)] = (cert.fingerprint(hashes.SHA256()).hex(), pem)
    return fps


def seed(state_dir, pools, promote_pools, fps):
    """Pools golden with a primary (steady state), credentials listed; one fast transaction
    per write (synchronous=OFF only for this setup; the mediator reopens with FULL)."""
    store = SqliteStorage(os.path.join(state_dir, "mediator.db")).start()
    store._db.execute("PRAGMA synchronous=OFF")
    for pool in pools + promote_pools:
        rec = st.new_record(pool, ["a", "b"])
        rec.update(generation=2, primary="a", eligible=["a", "b"], synced_uuid=UUID)
        store.commit(pool, 0, rec, {"event": "bench-seed"})
        doc = {"nodes": {n: [{"id": "bench-%s" % n, "fp": fps[(pool, n)][0], "issued": 0,
                              "expires": None, "cn": "%s@%s" % (n, pool)}]
                         for n in ("a", "b") if (pool, n) in fps}}
        store.put_doc("cred/" + pool, json.dumps(doc), 0)
    store.stop()


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(CLK)


def proc_rss_mb(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def wait_admin(settings, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return mcli.admin_call(settings, {"op": "status", "pools": False}, timeout=5)
        except mcli.CliError:
            time.sleep(0.1)
    raise SystemExit("mediator did not start")


def ping_floor(state_dir, port, pem, n=300):
    """p50 of ping round trips on one kept-alive connection (idle mediator)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(state_dir, "tls", "ca.crt"))
    ctx.load_cert_chain(pem)
    lat = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            f = s.makefile("rb")
            for i in range(n):
                t0 = time.perf_counter()
                s.sendall(b'{"id":%d,"op":"ping"}\n' % i)
                f.readline()
                lat.append(time.perf_counter() - t0)
    return pct(lat, 0.5)


def run_size(n_pools, args, work, backend="sqlite"):
    if backend == "etcd":
        with mbe.EtcdForBench(members=3, cpus={1} if args.pin else None) as etcd:
            return _run_size(n_pools, args, work, backend, etcd)
    return _run_size(n_pools, args, work, backend, None)


def _run_size(n_pools, args, work, backend, etcd):
    state = os.path.join(work, "state-%s-%d" % (backend, n_pools))
    certs = os.path.join(work, "certs-%s-%d" % (backend, n_pools))
    os.makedirs(certs)
    assert mcli.main(["--config", "/nonexistent", "--state-dir", state, "init", "--name",
                      "127.0.0.1"]) == 0
    pools = ["pool%05d" % i for i in range(n_pools)]
    promote_pools = ["promote%03d" % i for i in range(args.promotes)]
    names = [(p, n) for p in pools for n in ("a", "b")] + [(p, "b") for p in promote_pools]
    t0 = time.monotonic()
    # An etcd-backed instance grants nothing for a pool it has not heard for one lease plus
    # margin (several instances, issue 14): the candidates heartbeat that long first.
    warmup = args.warmup if etcd is None else max(args.warmup, st.DEFAULT_LEASE +
                                                  st.DEFAULT_MARGIN + 1.0)
    fps = make_certs(os.path.join(state, "tls"), certs, names)
    if etcd is not None:
        mbe.seed(etcd.endpoints, pools, promote_pools, fps, UUID)
    else:
        seed(state, pools, promote_pools, fps)
    setup_s = time.monotonic() - t0
    port = free_port()
    conf = os.path.join(state, "mediator.conf")
    with open(conf, "w") as handle:
        handle.write("[mediator]\nstate_dir = %s\nlisten = 127.0.0.1\nport = %d\n"
                     "log_level = warning\nidle_timeout = 120\n" % (state, port))
        if etcd is not None:
            handle.write(mbe.conf_lines(etcd.endpoints))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "mediator"))
    med_cmd = [sys.executable, "-m", "iscsi_ha_mediator", "--config", conf, "serve",
               "--allow-root"] + (["--uvloop"] if args.uvloop else [])
    med = subprocess.Popen(med_cmd, env=env, stdout=subprocess.DEVNULL,
                           stderr=open(os.path.join(work, "mediator-%s-%d.log" % (backend, n_pools)), "w"))
    load = None
    try:
        if args.pin:
            os.sched_setaffinity(med.pid, {0})
        if args.nice:
            os.setpriority(os.PRIO_PROCESS, med.pid, args.nice)
        settings = mconfig.load(conf)
        status = wait_admin(settings)
        floor = ping_floor(state, port, fps[(pools[0], "a")][1])
        while status.get("grace_left_s"):
            time.sleep(min(1.0, status["grace_left_s"]))
            status = mcli.admin_call(settings, {"op": "status", "pools": False})
        spec = {"port": port, "ca": os.path.join(state, "tls", "ca.crt"), "uuid": UUID,
                "nodes": [[p, n, fps[(p, n)][1], 2] for p in pools for n in ("a", "b")] +
                # the candidates heartbeat too, as agents do (on their own connection)
                [[p, "b", fps[(p, "b")][1], 2] for p in promote_pools],
                "promotes": [[p, "b", fps[(p, "b")][1], 2] for p in promote_pools]}
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # as few generator processes as the open-file limit allows (fewer processes taking
        # turns on the generators' core: less lateness of their own); --generators N for more
        per = max(100, hard - 200)
        if args.generators:
            per = min(per, -(-len(spec["nodes"]) // args.generators))
        chunks = [spec["nodes"][i:i + per] for i in range(0, len(spec["nodes"]), per)]
        loads = []
        for i, chunk in enumerate(chunks):
            part = dict(spec, nodes=chunk, promotes=spec["promotes"] if i == 0 else [])
            spec_path = os.path.join(work, "spec-%s-%d-%d.json" % (backend, n_pools, i))
            with open(spec_path, "w") as handle:
                json.dump(part, handle)
            out_path = os.path.join(work, "load-%s-%d-%d.json" % (backend, n_pools, i))
            load_cmd = [sys.executable, os.path.join(HERE, "mediator_load.py"), spec_path,
                        out_path, "--duration", str(args.duration), "--warmup",
                        str(warmup), "--promote-every",
                        str(max(0.2, args.duration / max(1, args.promotes)))]
            if args.uvloop:
                load_cmd.append("--uvloop")
            proc = subprocess.Popen(load_cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                                    stderr=open(out_path + ".err", "w"),
                                    universal_newlines=True)
            if args.pin:
                os.sched_setaffinity(proc.pid, {1})
            if args.nice:
                os.setpriority(os.PRIO_PROCESS, proc.pid, args.nice)
            loads.append((proc, out_path))
        load = loads
        connect_s = 0.0
        for proc, out_path in loads:
            line = proc.stdout.readline()
            if not line.startswith("CONNECTED"):
                raise SystemExit("load generator failed: %s" % open(out_path + ".err").read()[-2000:])
            connect_s = max(connect_s, float(line.split()[2]))
        for proc, _ in loads:
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        time.sleep(warmup)
        cpu0, t_start = proc_cpu(med.pid), time.monotonic()
        lcpu0 = sum(proc_cpu(p.pid) for p, _ in loads)
        etcd_cpu0 = mbe.proc_cpu_seconds(etcd.pids()) if etcd is not None else 0.0
        load1 = os.getloadavg()[0]
        window = [time.time()]
        time.sleep(args.duration)
        window.append(time.time())
        cpu = (proc_cpu(med.pid) - cpu0) / (time.monotonic() - t_start)
        etcd_cpu = ((mbe.proc_cpu_seconds(etcd.pids()) - etcd_cpu0) /
                    (time.monotonic() - t_start)) if etcd is not None else None
        lcpu = (sum(proc_cpu(p.pid) for p, _ in loads) - lcpu0) / (time.monotonic() - t_start)
        rss = proc_rss_mb(med.pid)
        res = {"heartbeat_latencies": [], "promote_latencies": [], "promote_results": {},
               "error_count": 0, "lost_connections": 0, "unanswered": 0,
               "tick_lateness_p99_ms": 0.0}
        for proc, out_path in loads:
            rc = proc.wait(120)
            if rc != 0:
                raise SystemExit("load generator failed: %s" % open(out_path + ".err").read()[-2000:])
            part = json.load(open(out_path))
            for k in ("heartbeat_latencies", "promote_latencies"):
                res[k] += part[k]
            for k, v in part["promote_results"].items():
                res["promote_results"][k] = res["promote_results"].get(k, 0) + v
            for k in ("error_count", "lost_connections", "unanswered"):
                res[k] += part[k]
            res["tick_lateness_p99_ms"] = max(res["tick_lateness_p99_ms"],
                                              part["tick_lateness_p99_ms"])
    finally:
        for proc, _ in (load or []):
            if proc.poll() is None:
                proc.kill()
        med.terminate()
        try:
            med.wait(20)
        except subprocess.TimeoutExpired:
            med.kill()
    hb = res["heartbeat_latencies"]
    pr = res["promote_latencies"]
    row = {
        "backend": backend, "etcd_cpu_share": etcd_cpu,
        "pools": n_pools, "nodes": 2 * n_pools, "heartbeats_per_s": len(hb) / args.duration,
        "hb_p50_ms": 1000 * pct(hb, 0.5), "hb_p99_ms": 1000 * pct(hb, 0.99),
        "hb_max_ms": 1000 * max(hb) if hb else float("nan"),
        "cpu_share": cpu, "rss_mb": rss,
        "promote_p50_ms": 1000 * pct(pr, 0.5), "promote_max_ms": 1000 * max(pr) if pr
        else float("nan"), "promote_results": res["promote_results"],
        "floor_ping_p50_ms": 1000 * floor,
        "p99_over_floor": pct(hb, 0.99) / floor if floor else float("nan"),
        "errors": res["error_count"], "lost_connections": res["lost_connections"],
        "unanswered_at_end": res["unanswered"],
        "loadgen_tick_lateness_p99_ms": res["tick_lateness_p99_ms"],
        "connect_all_s": connect_s, "setup_s": setup_s, "load_generators": len(loads),
        "loadavg_1m_at_start": load1, "window_wall_time": window, "loadgen_cpu_share": lcpu,
        "us_cpu_per_heartbeat": 1e6 * cpu / (len(hb) / args.duration) if hb else None,
    }
    shutil.rmtree(certs, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="100,1000,10000")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--promotes", type=int, default=15)
    ap.add_argument("--uvloop", action="store_true", help="mediator and load generator on uvloop")
    ap.add_argument("--pin", action="store_true", help="pin the mediator to CPU 0 and the load "
                    "generators to CPU 1 (only on an otherwise idle machine)")
    ap.add_argument("--generators", type=int, default=0,
                    help="load generator processes (default: as few as the open-file limit "
                    "allows, 2 at 10,000 pools)")
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling priority of the mediator and the load generators (e.g. "
                    "-10 as root on a machine shared with other work, so that it does not "
                    "preempt them in the measured window)")
    ap.add_argument("--backends", default="sqlite,etcd",
                    help="storage backends to run side by side (sqlite, etcd)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "etcd") for b in backends):
        raise SystemExit("--backends: a comma list of sqlite and etcd")
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 CPUs (mediator on CPU 0, load generator on CPU 1)")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise SystemExit("bench needs the cryptography package (scripts/install-deps installs "
                         "it into .venv)")
    sizes = [int(x) for x in args.pools.split(",")]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    capped = {}
    for i, n in enumerate(sizes):
        fit = (hard - 40 - 2 * args.promotes) // 2    # one process: 2 connections per pool
        if n > fit:
            capped[fit] = n
            sizes[i] = fit
            sys.stderr.write("open-file limit %d (hard; no CAP_SYS_RESOURCE to raise it) fits "
                             "%d pools in one process, not %d: running %d\n"
                             % (hard, fit, n, fit))
    work = tempfile.mkdtemp(prefix="mediator-bench-")
    rows = []
    try:
        for n in sizes:
            for backend in backends:
                sys.stderr.write("... %d pools, %s\n" % (n, backend))
                rows.append(run_size(n, args, work, backend))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("iscsi-ha-mediator scale benchmark: 1 mediator process%s, TLS on 127.0.0.1, heartbeat "
          "every 2 s per node, %s event loop, %.0f s window%s" % (
              " on CPU 0, load generators on CPU 1" if args.pin else " and its load generators "
              "unpinned", "uvloop" if args.uvloop else "asyncio", args.duration,
              ", nice %d" % args.nice if args.nice else ""))
    print("%-7s %7s %7s %8s %8s %8s %8s %7s %8s %9s %9s %8s %6s" % (
        "backend", "pools", "hb/s", "p50 ms", "p99 ms", "max ms", "p99/flr", "CPU %",
        "RSS MB", "prom p50", "prom max", "floor ms", "errs"))
    for r in rows:
        print("%-7s %7d %7.0f %8.2f %8.2f %8.1f %8.1f %7.1f %8.0f %9.1f %9.1f %8.3f %6d" % (
            r["backend"], r["pools"], r["heartbeats_per_s"], r["hb_p50_ms"], r["hb_p99_ms"],
            r["hb_max_ms"],
            r["p99_over_floor"], 100 * r["cpu_share"], r["rss_mb"], r["promote_p50_ms"],
            r["promote_max_ms"], r["floor_ping_p50_ms"],
            r["errors"] + r["lost_connections"]))
    for fit, asked in capped.items():
        print("  NOTE: %d pools asked, %d run: the hard open-file limit here is %d and one "
              "process needs 2 descriptors per pool" % (asked, fit, hard))
    for r in rows:
        if r.get("etcd_cpu_share") is not None:
            print("  etcd, %d pools: the three etcd members used %.1f %% of one core in the "
                  "window (a heartbeat never reaches etcd; a promote is one transaction)"
                  % (r["pools"], 100 * r["etcd_cpu_share"]))
    for r in rows:
        print("  %s, %d pools: mediator %.0f us CPU per heartbeat; load generators %.0f %% CPU; "
              "load average %.1f at start; promotes %s; connect all %.1f s; load generator tick lateness p99 "
              "%.1f ms; unanswered at end %d" % (r["backend"], r["pools"],
                                                 r["us_cpu_per_heartbeat"] or 0,
                                                 100 * r["loadgen_cpu_share"],
                                                 r["loadavg_1m_at_start"],
                                                 r["promote_results"],
                                                 r["connect_all_s"] or 0,
                                                 r["loadgen_tick_lateness_p99_ms"],
                                                 r["unanswered_at_end"]))
    largest = {}
    for r in rows:
        if r["pools"] >= largest.get(r["backend"], 0):
            largest[r["backend"]] = r["pools"]
    for r in rows:
        # only at the largest size: at small ones fixed costs (timers, etcd keepalives) are
        # divided by few heartbeats
        if r["us_cpu_per_heartbeat"] and r["pools"] == largest[r["backend"]]:
            per_core = 1e6 / r["us_cpu_per_heartbeat"]
            print("  %s, %d pools: at %.0f us per heartbeat one core would carry at most %.0f "
                  "heartbeats/s (%.0f pools at one per node per 2 s) with no headroom" % (
                      r["backend"], r["pools"], r["us_cpu_per_heartbeat"], per_core,
                      per_core))
        if r["loadgen_tick_lateness_p99_ms"] > 10 or r["loadgen_cpu_share"] > 0.9:
            print("  WARNING %s, %d pools: the load generators ran late (tick lateness p99 %.1f "
                  "ms, %.0f %% CPU, load average %.1f): their own delay is in these latencies"
                  % (r["backend"], r["pools"], r["loadgen_tick_lateness_p99_ms"],
                     100 * r["loadgen_cpu_share"], r["loadavg_1m_at_start"]))
    for backend in backends:
        big = [r for r in rows if r["backend"] == backend and
               (r["pools"] >= 10000 or r["pools"] in capped)]
        if big:
            r = big[-1]
            print("goal 10,000 pools p99 < 50 ms on one core (%s): %s at %d pools (p99 %.1f "
                  "ms, CPU %.0f %%)" % (backend, "MET" if r["hb_p99_ms"] < 50 and
                                        r["cpu_share"] <= 1.0 else "NOT MET", r["pools"],
                                        r["hb_p99_ms"], 100 * r["cpu_share"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"uvloop": args.uvloop, "duration_s": args.duration, "rows": rows,
                       "capped": {str(k): v for k, v in capped.items()}},
                      handle, indent=2)


if __name__ == "__main__":
    main()
