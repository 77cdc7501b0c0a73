"""The lab's I/O probe: a real iSCSI initiator (libiscsi through ctypes, see
:mod:`iscsi_ha_lab.libiscsi`) that measures pauses and lost writes while the storage fails over
underneath it.

The probe writes a cyclic sequence of stamped blocks (magic, run id, sequence number, LBA, CRC32)
and records every operation as a JSON line *after* it completed: ``kind``, ``seq``, ``lba``,
``t_start``, ``t_end`` (``time.monotonic()``, shared by all processes on the machine) and
``status`` (``good`` only when the target returned GOOD). On any error it destroys the session
and logs in again at once. :func:`analyse` turns the records and the final LUN content into a
:class:`ProbeReport`.

Every libiscsi call returns by a deadline (the initiator drives libiscsi's task API with its own
poll loop), so the probe never hangs on a target that stopped answering.
"""
import argparse
import collections
import json
import logging
import os
import signal
import struct
import sys
import time
import zlib

# The initiator, re-exported for the probe's importers (blockio, the lab, the tests).
from iscsi_ha_lab.libiscsi import (  # noqa: F401
    DEFAULT_INITIATOR, GOOD, Initiator, IscsiError, ProbeError, _Data, _Sense, _Task,
    load_libiscsi, read_lun_image)

log = logging.getLogger("iscsi-ha.probe")

DEFAULT_MAX_OPS = 10000000
MAGIC = b"IHAPROBE"
_HEAD = struct.Struct(">8sQQQ")  # magic, run id, sequence number, LBA
MIN_BLOCK = _HEAD.size + 4


# --- stamped blocks ----------------------------------------------------------------------------

Stamp = collections.namedtuple("Stamp", "run_id seq lba")


def make_block(run_id, seq, lba, block_size):
    """A block stamped with ``seq``; the filler depends on ``seq`` and a CRC32 closes it."""
    if block_size < MIN_BLOCK:
        raise ValueError("block size %d is below %d" % (block_size, MIN_BLOCK))
    head = _HEAD.pack(MAGIC, run_id, seq, lba)
    fill_len = block_size - len(head) - 4
    unit = struct.pack(">Q", seq ^ 0xA5A5A5A5A5A5A5A5)
    body = head + (unit * (fill_len // 8 + 1))[:fill_len]
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def read_stamp(block):
    """The :class:`Stamp` in ``block``, or None when it is blank, torn or not a probe block."""
    block = bytes(block)
    if len(block) < MIN_BLOCK or not block.startswith(MAGIC):
        return None
    if zlib.crc32(block[:-4]) & 0xFFFFFFFF != struct.unpack(">I", block[-4:])[0]:
        return None
    _magic, run_id, seq, lba = _HEAD.unpack_from(block)
    return Stamp(run_id, seq, lba)


# --- the probe loop ----------------------------------------------------------------------------

class _StopSignals(object):
    """SIGTERM/SIGINT are blocked while the probe runs (so no libiscsi poll is interrupted) and
    picked up between operations; :meth:`sleep` wakes at once when one arrives."""
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.received = None
        self._old = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        return self

    def _take(self, timeout):
        info = signal.sigtimedwait(self.SIGNALS, timeout)
        if info is not None:
            self.received = signal.Signals(info.si_signo).name
        return info is not None

    def pending(self):
        if self.received is None and set(self.SIGNALS) & signal.sigpending():
            self._take(0)
        return self.received

    def sleep(self, seconds):
        if self.received is None:
            self._take(seconds)

    def __exit__(self, *exc):
        for _ in range(8):  # drain what arrived, so restoring the mask delivers nothing
            if not self._take(0):
                break
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old)


class Probe(object):
    """Write stamped blocks cyclically over ``blocks`` blocks of the LUN, verify some by reading
    them back, reconnect at once after any error, and record every operation."""

    def __init__(self, portal, iqn, lun, record_path, block_size=512, blocks=1024,
                 initiator_name=DEFAULT_INITIATOR, io_timeout=2.0, connect_timeout=1.0,
                 retry_sleep=0.02, verify_every=16, fua=False, lba_offset=0,
                 pace=0.0):
        if block_size < MIN_BLOCK or blocks < 1:
            raise ValueError("need block_size >= %d and blocks >= 1" % MIN_BLOCK)
        self.portal, self.iqn, self.lun, self.record_path = portal, iqn, lun, record_path
        self.block_size, self.blocks, self.initiator_name = block_size, blocks, initiator_name
        self.io_timeout, self.connect_timeout = io_timeout, connect_timeout
        self.retry_sleep, self.verify_every, self.fua = retry_sleep, max(1, verify_every), fua
        self.lba_offset = lba_offset  # two probes on one LUN write disjoint ranges
        self.pace = pace              # least seconds between two writes (0: back to back)
        self.run_id = struct.unpack(">Q", os.urandom(8))[0]
        self._ini, self._connected, self._rec = None, False, None
        self._seq, self._ops, self._attempts = 0, 0, 0
        self._acked, self._unacked = {}, {}  # lba -> last acked seq; lba -> later unacked seqs
        self._recent = collections.deque(maxlen=self.verify_every)

    def run(self, duration, max_ops=DEFAULT_MAX_OPS, stop_file=None):
        """Run until ``duration`` seconds passed, ``max_ops`` operations were made, ``stop_file``
        exists or SIGTERM/SIGINT arrives; return why it stopped. The record file is replaced."""
        deadline = time.monotonic() + duration
        self._ini = Initiator(self.iqn, self.initiator_name, self.io_timeout)
        with open(self.record_path, "w") as rec, _StopSignals() as signals:
            self._rec = rec
            self._record(kind="start", run_id="%016x" % self.run_id, portal=self.portal,
                         iqn=self.iqn, lun=self.lun, block_size=self.block_size,
                         blocks=self.blocks, lba_offset=self.lba_offset,
                         io_timeout=self.io_timeout, t=time.monotonic(), wall=time.time(),
                         pid=os.getpid())
            try:
                reason = self._loop(deadline, max_ops, stop_file, signals)
            finally:
                self._ini.close(logout=True)
            self._record(kind="stop", t=time.monotonic(), reason=reason)
        log.info("probe: stopped (%s) after %d writes", reason, self._seq)
        return reason

    def _loop(self, deadline, max_ops, stop_file, signals):
        next_look = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "duration"
            if self._ops >= max_ops:
                return "max-ops"
            if now >= next_look:
                if signals.pending():
                    return "signal %s" % signals.received
                if stop_file and os.path.exists(stop_file):
                    return "stop-file"
                next_look = now + 0.05
            if not self._connected:
                self._connect()
                if not self._connected:
                    signals.sleep(self.retry_sleep)
                continue
            if self.pace:
                signals.sleep(self.pace)
            self._write_next()
            if self._connected and self._seq % self.verify_every == 0 and self._recent:
                self._verify(self._recent[0])

    def _connect(self):
        self._ops += 1
        self._attempts += 1
        t0 = time.monotonic()
        try:
            self._ini.connect(self.portal, self.lun, self.connect_timeout)
            blocks, block_len = self._ini.capacity()
            status = GOOD
        except IscsiError as exc:
            status = str(exc)
        self._record(kind="connect", attempt=self._attempts, t_start=t0,
                     t_end=time.monotonic(), status=status)
        if status != GOOD:
            log.info("probe: connect attempt %d to %s failed: %s", self._attempts, self.portal,
                     status)
            self._ini.close()
            return
        if block_len != self.block_size or blocks < self.lba_offset + self.blocks:
            raise ProbeError("LUN %d has %d blocks of %d bytes; the probe needs %d of %d"
                             % (self.lun, blocks, block_len, self.lba_offset + self.blocks,
                                self.block_size))
        log.info("probe: connected to %s (attempt %d)", self.portal, self._attempts)
        self._connected = True

    def _fail(self, what, error):
        log.info("probe: %s failed: %s; reconnecting", what, error)
        self._ini.close()
        self._connected = False

    def _write_next(self):
        self._ops += 1
        self._seq += 1
        seq, lba = self._seq, self.lba_offset + (self._seq - 1) % self.blocks
        block = make_block(self.run_id, seq, lba, self.block_size)
        t0 = time.monotonic()
        try:
            self._ini.write(lba, block, self.block_size, self.fua)
            status = GOOD
        except IscsiError as exc:
            status = str(exc)
        self._record(kind="write", seq=seq, lba=lba, t_start=t0, t_end=time.monotonic(),
                     status=status)
        if status == GOOD:
            self._acked[lba] = seq
            self._unacked.pop(lba, None)
            self._recent.append(lba)
        else:
            self._unacked.setdefault(lba, set()).add(seq)
            self._fail("write seq %d" % seq, status)

    def _verify(self, lba):
        """Read back ``lba``: it must hold its last acked stamp or a later unacked one."""
        self._ops += 1
        expected, t0, found = self._acked[lba], time.monotonic(), None
        try:
            stamp = read_stamp(self._ini.read(lba, 1, self.block_size))
            status = GOOD
            if stamp is not None and stamp.run_id == self.run_id and stamp.lba == lba:
                found = stamp.seq
        except IscsiError as exc:
            status = str(exc)
        verified = found == expected or found in self._unacked.get(lba, ())
        self._record(kind="read", seq=expected, lba=lba, t_start=t0, t_end=time.monotonic(),
                     status=status, found=found, verified=status == GOOD and verified)
        if status != GOOD:
            self._fail("read lba %d" % lba, status)
        elif not verified:
            log.warning("probe: lba %d holds seq %s, last acked write was seq %d",
                        lba, found, expected)

    def _record(self, **fields):
        for key in ("t", "t_start", "t_end", "wall"):
            if key in fields:
                fields[key] = round(fields[key], 6)
        self._rec.write(json.dumps(fields, sort_keys=True) + "\n")
        self._rec.flush()


# --- analysis ----------------------------------------------------------------------------------

class ProbeReport(object):
    """What a probe run saw. Times in seconds. ``lost_writes`` is None when no final image was
    given; ``lost_blocks`` lists (lba, last acked seq, seq found or None)."""
    FIELDS = ("acked_writes", "failed_writes", "reads", "verify_failures", "errors",
              "connect_failures", "reconnects", "longest_pause_s", "pause_from", "pause_to",
              "outage_at_end_s", "stop_reason", "lost_writes", "lost_blocks",
              "unexplained_blocks")

    def __init__(self, **fields):
        for name in self.FIELDS:
            setattr(self, name, fields.get(name))

    def as_dict(self):
        return dict((name, getattr(self, name)) for name in self.FIELDS)

    def __repr__(self):
        return "ProbeReport(%s)" % ", ".join("%s=%r" % kv for kv in sorted(self.as_dict().items()))


def load_records(record_path):
    """The record lines as dicts; a torn last line (the probe was killed mid-write) is skipped."""
    with open(record_path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number != len(lines):
                raise ValueError("%s line %d is not JSON: %r" % (record_path, number, line[:80]))
    if not records or records[0].get("kind") != "start":
        raise ValueError("%s does not start with a probe start record" % record_path)
    return records


def _pauses(records):
    """(longest gap between two successful completions, its start, its end, outage at end)."""
    ios = [r for r in records if r["kind"] in ("write", "read")]
    good = sorted(r["t_end"] for r in ios if r["status"] == GOOD)
    longest, start, end = 0.0, None, None
    for before, after in zip(good, good[1:]):
        if after - before > longest:
            longest, start, end = after - before, before, after
    ending = [r for r in records if r["kind"] in ("write", "read", "connect")]
    outage = 0.0
    if good and ending and ending[-1]["status"] != GOOD:
        stop = [r["t"] for r in records if r["kind"] == "stop"]
        outage = (stop[0] if stop else ending[-1]["t_end"]) - good[-1]
    return longest, start, end, outage


def _block_reader(final_image, block_size):
    if callable(final_image):
        return final_image
    if hasattr(final_image, "read"):
        def read_file(lba):
            final_image.seek(lba * block_size)
            return final_image.read(block_size)
        return read_file
    image = memoryview(final_image)
    return lambda lba: image[lba * block_size:(lba + 1) * block_size].tobytes()


def _check_blocks(records, read_block):
    """Compare every block's final stamp with the last acknowledged write to it."""
    start = records[0]
    run_id, blocks = int(start["run_id"], 16), start["blocks"]
    offset = start.get("lba_offset", 0)
    acked, tried = {}, {}
    writes = [r for r in records if r["kind"] == "write"]
    for r in writes:
        if r["status"] == GOOD:
            acked[r["lba"]] = max(acked.get(r["lba"], 0), r["seq"])
        else:
            tried.setdefault(r["lba"], set()).add(r["seq"])
    if not any(r["kind"] == "stop" for r in records) and writes:
        in_flight = max(r["seq"] for r in writes) + 1  # killed while this write was out
        tried.setdefault(offset + (in_flight - 1) % blocks, set()).add(in_flight)
    lost, unexplained = [], []
    for lba in range(offset, offset + blocks):
        stamp = read_stamp(read_block(lba))
        found = stamp.seq if stamp and stamp.run_id == run_id and stamp.lba == lba else None
        last = acked.get(lba)
        if last is not None and (found is None or found < last):
            lost.append((lba, last, found))
        elif found is not None and found != last and found not in tried.get(lba, ()):
            unexplained.append((lba, last, found))
    return lost, unexplained


def analyse(record_path, final_image=None):
    """A :class:`ProbeReport` from a record file and, optionally, the LUN content after the run:
    bytes, a binary file object or a callable ``lba -> block bytes``. A block holding an older
    stamp than its last acknowledged write is a lost write; a write that failed may or may not
    be present. ``unexplained_blocks`` hold a stamp of this run that was never written there."""
    records = load_records(record_path)
    longest, start, end, outage = _pauses(records)
    by_kind = collections.Counter((r["kind"], r.get("status") == GOOD) for r in records)
    reads_good = [r for r in records if r["kind"] == "read" and r["status"] == GOOD]
    report = ProbeReport(
        acked_writes=by_kind[("write", True)], failed_writes=by_kind[("write", False)],
        reads=by_kind[("read", True)] + by_kind[("read", False)],
        verify_failures=sum(1 for r in reads_good if not r.get("verified")),
        errors=by_kind[("write", False)] + by_kind[("read", False)],
        connect_failures=by_kind[("connect", False)],
        reconnects=max(0, by_kind[("connect", True)] - 1),
        longest_pause_s=longest, pause_from=start, pause_to=end, outage_at_end_s=outage,
        stop_reason=next((r["reason"] for r in records if r["kind"] == "stop"), None))
    if final_image is not None:
        read_block = _block_reader(final_image, records[0]["block_size"])
        report.lost_blocks, report.unexplained_blocks = _check_blocks(records, read_block)
        report.lost_writes = len(report.lost_blocks)
    return report


# --- command line ------------------------------------------------------------------------------

def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m iscsi_ha_lab.probe",
                                description="iSCSI I/O probe (run), or 'analyse' a record.")
    p.add_argument("--record", required=True, help="JSON-lines record file")
    if argv[:1] == ["analyse"]:
        p.add_argument("--image", help="file holding the LUN content after the run")
        return "analyse", p.parse_args(argv[1:])
    p.add_argument("--portal", required=True, help="ADDR:PORT")
    p.add_argument("--iqn", required=True)
    p.add_argument("--lun", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--blocks", type=int, default=1024)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--max-ops", type=int, default=DEFAULT_MAX_OPS)
    p.add_argument("--stop-file")
    p.add_argument("--initiator-name", default=DEFAULT_INITIATOR)
    p.add_argument("--io-timeout", type=float, default=2.0)
    p.add_argument("--connect-timeout", type=float, default=1.0)
    p.add_argument("--retry-sleep", type=float, default=0.02,
                   help="pause between two failed connect attempts (s)")
    p.add_argument("--lba-offset", type=int, default=0, help="first block this probe writes")
    p.add_argument("--pace", type=float, default=0.0, help="sleep before each write (s)")
    p.add_argument("--verify-every", type=int, default=16)
    p.add_argument("--fua", action="store_true", help="set FUA on every write")
    return "run", p.parse_args(argv)


def main(argv=None):
    verb, args = _parse(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if verb == "analyse":
        image = open(args.image, "rb") if args.image else None
        try:
            print(json.dumps(analyse(args.record, image).as_dict(), sort_keys=True))
        finally:
            if image:
                image.close()
        return 0
    probe = Probe(args.portal, args.iqn, args.lun, args.record, args.block_size, args.blocks,
                  args.initiator_name, args.io_timeout, args.connect_timeout,
                  retry_sleep=args.retry_sleep, verify_every=args.verify_every, fua=args.fua,
                  lba_offset=args.lba_offset, pace=args.pace)
    try:
        probe.run(args.duration, args.max_ops, args.stop_file)
    except ProbeError as exc:
        log.error("probe: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
