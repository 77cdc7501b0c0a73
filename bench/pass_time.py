#!/usr/bin/env python3
"""Benchmark: how long one agent pass takes against real ip, arping and tgtd (DRBD double).

Run as root:  .venv/bin/python bench/pass_time.py [--rounds N]
Prints the pass duration the agent itself measured (observe + decide + act + publish, without
the interpreter's start-up) for an idle pass, a promote pass and a demote pass.
"""
import argparse
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from iscsi_ha_lab.rig import Rig  # noqa: E402


def summary(name, values):
    return "%-24s n=%-3d median %7.1f ms   min %7.1f ms   max %7.1f ms" % (
        name, len(values), statistics.median(values) * 1000, min(values) * 1000,
        max(values) * 1000)


def daemon_idle_passes(rig, seconds=4.0):
    """Idle passes of the running daemon (sh-minor cached, interpreter warm): timer passes
    every 0.2 s for ``seconds``; durations read from the agent's own log sentences."""
    text = rig.host.read_config().replace("MONITOR_DELAY=10", "MONITOR_DELAY=0.2")
    rig.host.write_config(text)
    log = os.path.join(rig.host.root, "agent.log")
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    rig.host.start_agent()
    time.sleep(seconds)
    rig.host.stop_agent()
    with open(log) as handle:
        handle.seek(offset)
        found = re.findall(r"pass \d+ \(timer, ([0-9.]+) s\)", handle.read())
    return [float(v) for v in found]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, tgtd)")
    figures = {"idle (secondary)": [], "idle (primary)": [], "promote": [], "demote": []}
    with tempfile.TemporaryDirectory(prefix="iscsi-ha-bench.") as tmp:
        rig = Rig(tmp, "ihbench", ctl=59)
        try:
            rig.up()
            for _ in range(args.rounds):
                figures["idle (secondary)"].append(rig.run_once()[1]["pass"]["duration_s"])
                rig.set_pool("master")
                start = time.monotonic()
                code, doc = rig.run_once()
                if code != 0:
                    sys.exit("promote pass failed: %s" % doc["problems"])
                figures["promote"].append(doc["pass"]["duration_s"])
                promote_doc = doc
                figures["idle (primary)"].append(rig.run_once()[1]["pass"]["duration_s"])
                rig.set_pool("slave:192.0.2.12")
                code, doc = rig.run_once()
                if code != 0:
                    sys.exit("demote pass failed: %s" % doc["problems"])
                figures["demote"].append(doc["pass"]["duration_s"])
            figures["daemon idle (secondary)"] = daemon_idle_passes(rig)
            rig.set_pool("master")
            rig.run_once()
            figures["daemon idle (primary)"] = daemon_idle_passes(rig)
        finally:
            rig.down()
    print("agent pass duration (iscsi-ha run --once in a namespace, real tgtd/ip/arping):")
    for name, values in figures.items():
        if values:
            print("  " + summary(name, values))
    print("steps of the last promote pass:")
    for action in promote_doc["last_actions"]:
        print("  %-22s %7.1f ms" % (action["action"], action["duration_s"] * 1000))


if __name__ == "__main__":
    main()
