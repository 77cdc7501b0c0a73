"""Running the I/O probe in the lab's client namespace, and reading its verdict."""
import os
import subprocess
import sys
import time

from iscsi_ha_lab import netns
from iscsi_ha_lab.probe import GOOD, analyse, load_records

MAX_DURATION = 600
# The probe measures the server side: a command that gets no answer is given up after
# IO_TIMEOUT and the probe logs in again at once (every CONNECT_TIMEOUT at most), so a pause is
# seen to within about half a second, instead of being rounded up to a long client timeout.
IO_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.3


def read_records(path):
    """The probe's records so far: [] before it wrote any; a line being written is skipped."""
    try:
        return load_records(path)
    except (OSError, IOError, ValueError):
        return []


class ProbeRun(object):
    """One probe process in the client namespace. The defaults suit the scenarios; the
    benchmarks run a fast probe (``io_timeout`` 0.1 s, ``retry_sleep`` 2 ms: the server side to
    the millisecond) next to a patient one (a long ``io_timeout``: its TCP connection dies only
    when the network says so, as an open-iscsi connection would) on a disjoint block range."""

    def __init__(self, lab, name, io_timeout=IO_TIMEOUT, connect_timeout=CONNECT_TIMEOUT,
                 retry_sleep=0.02, lba_offset=0, blocks=2048, pace=0.0):
        self.lab = lab
        self.io_timeout, self.connect_timeout = io_timeout, connect_timeout
        self.retry_sleep, self.lba_offset, self.blocks = retry_sleep, lba_offset, blocks
        self.pace = pace
        base = os.path.join(lab.directory, "probe")
        os.makedirs(base, exist_ok=True)
        self.record = os.path.join(base, name + ".jsonl")
        self.stop_file = os.path.join(base, name + ".stop")
        self.log = os.path.join(base, name + ".log")
        self.proc = None

    def start(self):
        for stale in (self.stop_file, self.record):
            if os.path.exists(stale):
                os.unlink(stale)
        with open(self.log, "ab") as log:
            self.proc = netns.popen_in(
                self.lab.client_ns,
                [sys.executable, "-m", "iscsi_ha_lab.probe", "--portal", self.lab.vip + ":3260",
                 "--iqn", self.lab.iqn, "--lun", str(self.lab.lun), "--record", self.record,
                 "--duration", str(MAX_DURATION), "--stop-file", self.stop_file,
                 "--blocks", str(self.blocks), "--io-timeout", str(self.io_timeout),
                 "--connect-timeout", str(self.connect_timeout),
                 "--retry-sleep", str(self.retry_sleep), "--lba-offset", str(self.lba_offset),
                 "--pace", str(self.pace)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def _records(self):
        return read_records(self.record)

    def wait_for_io(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self._records()
            ours = records and records[0].get("kind") == "start" and \
                records[0].get("pid") == self.proc.pid
            if ours and any(r.get("kind") == "write" and r.get("status") == GOOD
                            for r in records):
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError("the probe did no successful write within %.0f s (see %s)" % (
            timeout, self.log))

    def wait_for_io_after(self, since, timeout):
        """Wait (bounded) for a successful I/O that started after ``since`` (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.get("kind") in ("write", "read") and r.get("status") == GOOD
                   and r.get("t_start", 0) >= since for r in self._records()):
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return False

    def stop(self):
        if self.proc is None:
            return
        open(self.stop_file, "w").close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def analyse(self):
        """The probe's report, checked against the current primary's DRBD device."""
        primary = self.lab.primary()
        image = None
        if primary is not None:
            image = self.lab.world.device_path(primary.name, self.lab.resource)
        with open(image, "rb") if image else _Null() as handle:
            return analyse(self.record, final_image=handle if image else None)

    def time_to_serve(self, t_change):
        """Seconds from ``t_change`` to the first successful I/O that started after it and
        after the first failure that followed it (the service was down in between)."""
        if t_change is None:
            return None
        io = [r for r in self._records() if r.get("kind") in ("write", "read", "connect")
              and r.get("t_start", 0) >= t_change]
        failed_at = next((r["t_end"] for r in io if r.get("status") != GOOD), None)
        after = t_change if failed_at is None else failed_at
        for record in io:
            if record["kind"] != "connect" and record.get("status") == GOOD and \
                    record["t_start"] >= after:
                return record["t_end"] - t_change
        return None


class _Null(object):
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
