"""Invariants checked on every tick while a scenario runs.

The checker is also the lab's "kernel": each tick settles the DRBD double's world (connection
loss, resync progress), as the DRBD module would on its own. Violations:
- two DRBD Primaries while connected;
- the floating IP on both hosts at once;
- a target serving a LUN from a host whose DRBD resource is not Primary;
- two DRBD Primaries at all (connected or not), unless the scenario makes one on purpose;
- the LUN exported by both hosts at once.
Reads are ordered so that a legitimate move between two reads is never taken for a violation:
a host counts as serving only if tgtd exported the LUN both before and after DRBD was read.
"""
import subprocess
import threading
import time

from iscsi_ha.adapters.target import parse_tgtadm_targets
from iscsi_ha.adapters.vip import parse_ip_addr
from iscsi_ha_lab import netns


class Checker(object):
    def __init__(self, lab, interval=0.1):
        self.lab = lab
        self.interval = interval
        self.violations = []
        self.ticks = 0
        self.allow_two_primaries = False     # only the split-brain scenario sets it
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="invariants", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self):
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a broken check must be seen, not hidden
                self.violations.append("%.3f checker error: %s" % (time.time(), exc))
            self._stop.wait(self.interval)

    def _vip_holders(self):
        holders = []
        for host in self.lab.hosts:
            if not self.lab.host_is_up(host):
                continue
            out = netns.exec_in(host.ns, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                                timeout=5).stdout
            if any(a[0] == self.lab.vip for a in parse_ip_addr(out)):
                holders.append(host.name)
        return holders

    def _exporting(self):
        """Hosts whose tgtd exports the lab's LUN right now (a tgtd stopped by a fault or by
        the DRBD double's frozen I/O answers nobody)."""
        found = set()
        for host in self.lab.hosts:
            pid = host.tgtd_pid()
            if pid is None or _stopped(pid):
                continue          # a stopped (SIGSTOP) tgtd answers nobody: it serves nothing
            try:
                proc = netns.exec_in(host.ns, ["tgtadm", "-C", str(host.ctl), "--lld", "iscsi",
                                               "--op", "show", "--mode", "target"], timeout=5)
            except subprocess.TimeoutExpired:
                if _stopped(pid):
                    continue      # stopped between the look and the question: serves nothing
                raise             # a running tgtd that does not answer: a checker error
            if proc.returncode != 0:
                continue
            targets = parse_tgtadm_targets(proc.stdout)
            info = targets.get(self.lab.iqn)
            if info is not None and self.lab.lun in info.luns:
                found.add(host.name)
        return found

    def tick(self):
        now = time.time()
        before = self._exporting()
        snap = self.lab.world.snapshot()
        after = self._exporting()
        vips = self._vip_holders()
        self.ticks += 1
        for res in snap["primaries_while_connected"]:
            self.violations.append("%.3f two DRBD Primaries while connected on %s" % (now, res))
        views = snap["views"][self.lab.resource]
        primaries = [h for h, v in views.items() if v["role"] == "Primary"]
        if len(primaries) > 1 and not self.allow_two_primaries:
            self.violations.append("%.3f two DRBD Primaries (%s): a split brain in the making"
                                   % (now, ", ".join(sorted(primaries))))
        if len(before & after) > 1:
            self.violations.append("%.3f the LUN exported by both hosts" % now)
        if len(vips) > 1:
            self.violations.append("%.3f floating IP on both hosts (%s)" % (now, ", ".join(vips)))
        for name in sorted(before & after):
            if views[name]["role"] != "Primary":
                self.violations.append("%.3f host %s serves the LUN from a %s" % (
                    now, name, views[name]["role"]))
        return snap


def _stopped(pid):
    """The process is stopped by a signal (state T in /proc/PID/stat)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IOError, IndexError):
        return False
