#!/usr/bin/env python3
"""Benchmark: do alerts slow the agent's passes when the SMTP server is dead or black-holed?

Run as root:  .venv/bin/python bench/alerts_blackhole.py
A one-host rig (real ip/arping/tgtd, DRBD double) runs the daemon with MONITOR_DELAY=0.2; its
mail server is (1) a listener that accepts and never answers (black hole) and (2) nothing at
all (refused). Each run promotes the host (one role-change alert, then more as DRBD changes)
and prints the duration of the timer passes that ran while the alert worker was stuck.
"""
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from iscsi_ha_lab import netns  # noqa: E402
from iscsi_ha_lab.rig import Rig  # noqa: E402

BLACKHOLE = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.12", 2525)); s.listen(16)
held = []
end = time.time() + 60
while time.time() < end:
    s.settimeout(1)
    try:
        held.append(s.accept()[0])          # accepted, never answered
    except socket.timeout:
        pass
"""


def passes(rig, seconds):
    log = os.path.join(rig.host.root, "agent.log")
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    rig.host.start_agent()
    time.sleep(1.5)
    rig.set_pool("master")                  # promote: alerts start flowing
    time.sleep(seconds)
    rig.host.stop_agent()
    with open(log) as handle:
        handle.seek(offset)
        text = handle.read()
    durations = [float(v) for v in re.findall(r"pass \d+ \(timer, ([0-9.]+) s\)", text)]
    failures = len(re.findall(r"alert .*(?:failed|retry|not sent)", text, re.I))
    return durations, failures


def run(mode):
    with tempfile.TemporaryDirectory(prefix="iscsi-ha-bench.") as tmp:
        rig = Rig(tmp, "ihbh", ctl=57)
        holder = None
        try:
            rig.up()
            text = rig.host.read_config().replace("MONITOR_DELAY=10", "MONITOR_DELAY=0.2")
            rig.host.write_config(text + "SMTP_TIMEOUT=10\n")
            if mode == "black hole":
                holder = netns.popen_in(rig.neighbour, [sys.executable, "-c", BLACKHOLE])
                time.sleep(0.5)
            durations, failures = passes(rig, 6.0)
        finally:
            if holder is not None:
                holder.kill()
                holder.wait()
            rig.down()
    return durations, failures


def main():
    if os.geteuid() != 0:
        sys.exit("needs root")
    print("timer passes while alerts go to a dead mail server (SMTP_TIMEOUT=10 s):")
    for mode in ("black hole", "refused"):
        durations, failures = run(mode)
        print("  %-10s n=%-3d median %6.1f ms  max %6.1f ms  (alert send failures logged: %d)"
              % (mode, len(durations), statistics.median(durations) * 1000,
                 max(durations) * 1000, failures))


if __name__ == "__main__":
    main()
