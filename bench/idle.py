#!/usr/bin/env python3
"""Benchmark: what one idle agent costs, primary and secondary, on DRBD 8.4 and 9.

Run as root, under the lab lock:  flock /work/lab.lock .venv/bin/python bench/idle.py
[--seconds 60] [--versions 8.4,9] [--json FILE]

The lab runs both agents with the production defaults (MONITOR_DELAY 10 s, and the interval
keys the lab shortens for its tests set back to their configspec defaults: FENCING_RECHECK,
VIP_CHECK_INTERVAL, DRBD_POLL_INTERVAL, POOL_POLL_INTERVAL); once the pool is settled, each agent process is sampled for
``--seconds``: CPU share of one core (its own user+system time, and separately the time of the
commands it ran, reaped or still runs), wake-ups (times its threads were run, from each thread's
schedstat) and RSS (largest sample); the JSON has the same per thread.
The lab's DRBD commands are a Python double, so the children's share is far above what C
drbdsetup costs on a real dom0: the figure to compare with the 0.2 % goal is the agent's own.
For scale, the same run measures an idle ``sleep`` process (the floor).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from iscsi_ha_lab.lab import Lab, LabError, wait_until  # noqa: E402
from iscsi_ha_lab.scenarios import settled  # noqa: E402

PRODUCTION_MONITOR_DELAY = 10
# The lab's config shortens these for its tests; an idle agent in production runs the
# configspec defaults (read from iscsi_ha.config, not copied here).
PRODUCTION_KEYS = ("FENCING_RECHECK", "VIP_CHECK_INTERVAL", "DRBD_POLL_INTERVAL",
                   "POOL_POLL_INTERVAL")


def production_values():
    """{key: the configspec default} for :data:`PRODUCTION_KEYS`."""
    import re
    from iscsi_ha import config as config_mod
    found = {}
    for key in PRODUCTION_KEYS:
        match = re.search(r"^%s = \w+\(.*default=([0-9.]+)\)" % key, config_mod.CONFIGSPEC,
                          re.M)
        if match is None:
            raise SystemExit("bench-idle: no default for %s in the configspec" % key)
        found[key] = match.group(1)
    return found


def _times(proc):
    t = proc.cpu_times()
    return t.user + t.system, t.children_user + t.children_system


def _live_children(proc):
    """{pid: cpu seconds} of the children still running (e.g. a DRBD event stream)."""
    out = {}
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
            out[child.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def _threads(pid):
    """{tid: (run time ns, times run)} of each thread of ``pid`` (/proc/PID/task/TID/schedstat:
    the scheduler's own figures; /proc/PID/status counts the main thread's switches only)."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as handle:
                ran, _, runs = handle.read().split()[:3]
            out[int(tid)] = (int(ran), int(runs))
        except (OSError, IOError, ValueError):
            continue
    return out


def _per_thread(before, after, elapsed):
    """[{tid, cpu_pct, runs_per_s}] of the threads alive at the end, busiest first (a thread
    born during the sample counts from zero; one that ended is missing)."""
    rows = []
    for tid, (ran, runs) in after.items():
        ran0, runs0 = before.get(tid, (0, 0))
        rows.append({"tid": tid, "cpu_pct": round(100.0 * (ran - ran0) / 1e9 / elapsed, 3),
                     "runs_per_s": round((runs - runs0) / elapsed, 1)})
    return sorted(rows, key=lambda r: -r["cpu_pct"])


def sample(procs, seconds):
    """{label: figures} for psutil processes sampled over ``seconds``."""
    first, rss, ctx, live, threads = {}, dict((k, 0) for k in procs), {}, {}, {}
    for label, proc in procs.items():
        first[label] = _times(proc)
        live[label] = _live_children(proc)
        ctx[label] = proc.num_ctx_switches().voluntary
        threads[label] = _threads(proc.pid)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for label, proc in procs.items():
            rss[label] = max(rss[label], proc.memory_info().rss)
        time.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - start))))
    elapsed = time.monotonic() - start
    out = {}
    for label, proc in procs.items():
        own, children = _times(proc)
        now_live = _live_children(proc)
        children += sum(t - live[label].get(pid, 0.0) for pid, t in now_live.items())
        out[label] = {
            "cpu_own_pct": round(100.0 * (own - first[label][0]) / elapsed, 3),
            "cpu_children_pct": round(100.0 * (children - first[label][1]) / elapsed, 3),
            "main_thread_wakeups_per_s": round(
                (proc.num_ctx_switches().voluntary - ctx[label]) / elapsed, 1),
            "threads": _per_thread(threads[label], _threads(proc.pid), elapsed),
            "rss_mb": round(rss[label] / 1048576.0, 1), "seconds": round(elapsed, 1)}
        out[label]["wakeups_per_s"] = round(sum(t["runs_per_s"] for t in out[label]["threads"]),
                                            1)
    return out


def measure(version, seconds, base, log, prefix):
    lab = Lab(os.path.join(base, "drbd" + version), drbd_version=version,
              monitor_delay=PRODUCTION_MONITOR_DELAY, prefix=prefix)
    try:
        lab.up()
        wait_until(lambda: next((h for h in lab.hosts if settled(lab, h)), None), 90,
                   what="a settled pool")
        values = production_values()
        for host in lab.hosts:        # the last assignment wins; restart with it
            host.write_config(host.read_config() + "".join(
                "%s=%s\n" % item for item in sorted(values.items())))
            host.stop_agent()
            host.start_agent()
        primary = wait_until(lambda: next((h for h in lab.hosts if settled(lab, h)), None), 90,
                             what="a settled pool with the production intervals")
        secondary = lab.peer(primary)
        # Let the settling passes finish, and the fast window every (re)start opens (the loop
        # looks every FAST_POLL s for FAST_WINDOW s after a start or a pool.conf change): the
        # sample is of an agent at rest, not of its start.
        from iscsi_ha.loop import FAST_WINDOW
        time.sleep(max(2.0, FAST_WINDOW + 1.0))
        lab.checker.stop()                    # the lab's own checker would wake tgtd and DRBD
        sleeper = subprocess.Popen(["sleep", str(seconds + 30)])
        try:
            procs = {"primary": psutil.Process(primary.agent.pid),
                     "secondary": psutil.Process(secondary.agent.pid),
                     "sleep (floor)": psutil.Process(sleeper.pid)}
            figures = sample(procs, seconds)
        finally:
            sleeper.kill()
            sleeper.wait()
        for label, f in figures.items():
            log("DRBD %-3s %-13s own CPU %6.3f %%  children %7.3f %%  %5.1f wake-ups/s  "
                "RSS %5.1f MB" % (version, label, f["cpu_own_pct"], f["cpu_children_pct"],
                                  f["wakeups_per_s"], f["rss_mb"]))
            busy = [t for t in f["threads"] if t["cpu_pct"] >= 0.001][:4]
            if len(f["threads"]) > 1 and busy:
                log("    %d threads; busiest: %s" % (len(f["threads"]), ", ".join(
                    "%.3f %% %.1f/s" % (t["cpu_pct"], t["runs_per_s"]) for t in busy)))
        return figures
    finally:
        lab.down()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--versions", default="8.4,9")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--prefix", default="ihbi-", help="the lab's name prefix (%(default)s)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-idle needs root (network namespaces, tgtd)")

    def log(line):
        print(line, flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="iscsi-ha-idle.") as tmp:
        try:
            for version in [v for v in args.versions.split(",") if v]:
                results[version] = measure(version, args.seconds, tmp, log, args.prefix)
        except LabError as exc:
            log("bench-idle: %s" % exc)
            return 1
    print("goal: below 0.2 % of one core (own) and below 40 MB RSS per agent")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"seconds": args.seconds, "monitor_delay": PRODUCTION_MONITOR_DELAY,
                       "production_values": production_values(),
                       "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
