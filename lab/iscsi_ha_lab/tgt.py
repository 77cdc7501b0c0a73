"""Start, configure and stop a tgtd (the Linux SCSI target daemon) inside a lab namespace.

Each tgtd instance gets its own control port ``N``: tgtd listens for ``tgtadm -C N`` on the
Unix socket ``/var/run/tgtd/socket.N``. The file system is shared between namespaces, so N must
be distinct per instance, and ``tgtadm`` can run from any namespace.
"""
import ipaddress
import logging
import os
import re
import signal
import subprocess
import time

from iscsi_ha.adapters.run import CommandError, run
from iscsi_ha_lab import netns

log = logging.getLogger("iscsi-ha.lab")

SOCKET_DIR = "/var/run/tgtd"
TGTADM_TIMEOUT = 10
MAX_CONTROL_PORT = 32767  # tgtd 1.0.85 exits 34: "-C argument value '32768' out of range"


class TgtError(Exception):
    pass


def socket_path(control_port):
    return os.path.join(SOCKET_DIR, "socket.%d" % control_port)


def tgtadm(control_port, args, timeout=TGTADM_TIMEOUT, check=True):
    """Run ``tgtadm -C N ARGS``; raise :class:`TgtError` on failure when ``check``."""
    argv = ["tgtadm", "-C", str(control_port)] + [str(a) for a in args]
    try:
        return run(argv, timeout, check=check)
    except CommandError as exc:
        raise TgtError(str(exc))


def is_answering(control_port, timeout=2):
    """True when a tgtd answers on this control port."""
    try:
        res = tgtadm(control_port, ["--op", "show", "--mode", "sys"], timeout=timeout, check=False)
    except TgtError:
        return False
    return res.ok


def start_tgtd(ns, portal_ip, control_port, port=3260, log_path=None, ready_timeout=10.0):
    """Start ``tgtd`` in the foreground inside ``ns``, serving iSCSI on ``portal_ip:port``.

    Returns the :class:`subprocess.Popen` once ``tgtadm -C control_port`` gets an answer;
    kills the daemon and raises :class:`TgtError` when it does not answer in ``ready_timeout``.
    """
    if not 0 < control_port <= MAX_CONTROL_PORT:
        raise TgtError("tgtd refuses control port %d (-C takes 1..%d)"
                       % (control_port, MAX_CONTROL_PORT))
    netns.check_address(portal_ip)
    ip = str(ipaddress.ip_address(portal_ip))
    if is_answering(control_port):
        raise TgtError("a tgtd already answers on control port %d" % control_port)
    argv = ["tgtd", "-f", "--iscsi", "portal=%s:%d" % (ip, port), "-C", str(control_port)]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        log.info("tgt: starting %s in %s", " ".join(argv), ns)
        proc = netns.popen_in(ns, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    finally:
        if log_path:
            out.close()
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if is_answering(control_port):
            return proc
        time.sleep(0.05)
    kill_tgtd(proc)
    raise TgtError("tgtd in %s on control port %d did not come up (exit %s)"
                   % (ns, control_port, proc.returncode))


def add_target(control_port, tid, iqn, luns, initiators="ALL"):
    """Create target ``tid`` named ``iqn`` with ``luns`` ({lun: backing file}), open to
    ``initiators`` (an address, or ``ALL``)."""
    base = ["--lld", "iscsi", "--tid", tid]
    tgtadm(control_port, base + ["--op", "new", "--mode", "target", "-T", iqn])
    for lun in sorted(luns):
        tgtadm(control_port, base + ["--op", "new", "--mode", "logicalunit", "--lun", lun,
                                     "-b", luns[lun]])
    tgtadm(control_port, base + ["--op", "bind", "--mode", "target", "-I", initiators])


def kill_tgtd(proc, timeout=5.0):
    """SIGKILL the daemon (a crash, as seen by initiators) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise TgtError("tgtd pid %d survived SIGKILL" % proc.pid)


def target_ids(control_port):
    """The tids of the targets this tgtd serves (from ``--op show --mode target``)."""
    res = tgtadm(control_port, ["--op", "show", "--mode", "target"], check=False)
    return [int(m.group(1)) for m in re.finditer(r"^Target (\d+): ", res.stdout, re.M)]


def stop_tgtd(control_port, proc, timeout=10.0):
    """Stop the daemon cleanly: refuse new logins, delete every target (tgtd refuses
    ``--op delete --mode system`` with "invalid request" while targets exist), then delete the
    system. SIGKILL it when it has not exited after ``timeout`` seconds; remove its socket."""
    if proc is None or proc.poll() is None:
        try:
            tgtadm(control_port, ["--op", "update", "--mode", "sys", "--name", "State",
                                  "-v", "offline"], check=False)
            for tid in target_ids(control_port):
                tgtadm(control_port, ["--lld", "iscsi", "--op", "delete", "--mode", "target",
                                      "--tid", tid, "--force"], check=False)
            tgtadm(control_port, ["--op", "delete", "--mode", "system"], check=False)
        except TgtError as exc:
            log.warning("tgt: clean stop on control port %d failed: %s", control_port, exc)
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("tgt: tgtd pid %d did not stop, killing it", proc.pid)
        kill_tgtd(proc)
    remove_socket(control_port)


def remove_socket(control_port):
    """Remove the control socket files a stopped tgtd leaves in /var/run/tgtd."""
    if is_answering(control_port):
        return
    for path in (socket_path(control_port), socket_path(control_port) + ".lock"):
        try:
            os.unlink(path)
        except OSError:
            pass
