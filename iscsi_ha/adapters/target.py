"""The iSCSI target (tgtd): observe it, start it with our target and LUNs, stop it for sure.

``tgtadm --lld iscsi --op show --mode target`` is the source of truth for what is exported; its
parsers (and the layout they accept) are in :mod:`iscsi_ha.adapters.tgtadm`.

LUN identity: tgtd derives a LUN's SCSI ID ("IET     0001000a") and serial ("beaf110") from the
target id and the LUN number. A tgtd that serves only this target gives it tid 1 on both hosts,
so both export the same identity, and an existing XenServer/XCP-ng SR stays bound to it across a
failover. That is why custom ``scsi_id``/``scsi_sn`` are only set when ``lun_params`` asks for
them (set them identically on both hosts, or not at all: a different identity after a failover
makes the SR inaccessible). If the two tgtd also serve other targets, the tids may differ: then
``lun_params`` is needed.
"""
import collections
import logging
import os
import re
import shlex
import signal
import time

import psutil

from iscsi_ha.adapters.run import run, split_command

# The parsers and their types, re-exported for the adapter's importers.
from iscsi_ha.adapters.tgtadm import (  # noqa: F401
    Connection, LunInfo, Nexus, TargetError, TargetInfo, TargetParseError, parse_tgtadm_system,
    parse_tgtadm_targets)

log = logging.getLogger("iscsi-ha")

STOP_NOT_RUNNING = "not-running"
STOP_COMMAND = "stop-command"
STOP_TGTADM_DELETE = "tgtadm-delete"
STOP_KILL = "sigkill"


class TargetStopError(TargetError):
    """Every stop step ran and the target daemon is still alive."""


TargetState = collections.namedtuple(
    "TargetState", "running serving targets missing connections system_state processes error")


class TargetResult(str):
    """What start()/stop() did, as a sentence (the agent logs it); ``step`` and ``changes``
    say the same for code and tests."""

    def __new__(cls, sentence, step="", changes=()):
        self = str.__new__(cls, sentence)
        self.step = step
        self.changes = list(changes)
        return self


# tgtd's management socket is "<prefix>.<control port>" (fujita/tgt usr/tgtadm.h
# TGT_IPC_NAMESPACE, usr/mgmt.c ipc_init); the prefix moved twice: tgt 1.0.58 and later (2015),
# 1.0.41-1.0.57, and before. A tgtd started with TGT_IPC_SOCKET set uses that prefix: configure
# the path then.
TGTD_SOCKET_PREFIXES = ("/var/run/tgtd/socket", "/var/run/tgtd.ipc_abstract_namespace",
                        "/tmp/.TGT_IPC_ABSTRACT_NAMESPACE")


def control_socket(setting, tgtadm, service):
    """The paths where the management socket of the target daemon the agent watches may be
    (tried in order), or () (no watch: its death is polled). ``setting`` is
    TGTD_CONTROL_SOCKET: a path, 'none', or 'auto' = tgtd's socket for the control port that
    ``tgtadm`` (the TGTADM command line) talks to, when the service is tgtd."""
    if setting == "none":
        return ()
    if setting != "auto":
        return (setting,)
    if service != "tgtd":
        return ()
    argv = split_command(tgtadm)
    port = "0"
    for i, arg in enumerate(argv):
        if arg in ("-C", "--control-port") and i + 1 < len(argv):
            port = argv[i + 1]
        elif arg.startswith("--control-port="):
            port = arg.split("=", 1)[1]
        elif arg.startswith("-C") and len(arg) > 2:
            port = arg[2:]
    if not port.isdigit():
        return ()
    return tuple("%s.%d" % (prefix, int(port)) for prefix in TGTD_SOCKET_PREFIXES)


# -- processes -----------------------------------------------------------------------------

def _netns_id(pid="self"):
    try:
        return os.readlink("/proc/%s/ns/net" % pid)
    except OSError:
        return None


def service_pids(name):
    """PIDs of live (not zombie) processes called ``name`` in this process's network namespace.

    In the lab several tgtd run on one machine, one per namespace: only ours are returned.
    Candidates are found by ``/proc/PID/comm`` (one small read each, the kernel's 15-character
    name) before psutil looks closer, so a pass scans the process table cheaply.
    """
    mine, pids, want = _netns_id(), [], name[:15].encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            # os-level open/read/close: no file object per process (the scan runs every pass)
            fd = os.open("/proc/%s/comm" % entry, os.O_RDONLY)
            try:
                comm = os.read(fd, 64)
            finally:
                os.close(fd)
            if comm.rstrip(b"\n") != want:
                continue
            proc = psutil.Process(int(entry))
            if proc.name() != name or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if _netns_id(proc.pid) == mine:
                pids.append(proc.pid)
        except (OSError, IOError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sorted(pids)


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass



def _quote(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def _poll(probe, seconds, interval):
    """Call ``probe`` every ``interval`` s until it returns something truthy (returned) or
    ``seconds`` have passed (None). Bounded in time and in count."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / interval) + 2):
        value = probe()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)
    return None


def _lowest_free_tid(targets):
    used = set(t.tid for t in targets.values())
    return min(set(range(1, len(used) + 2)) - used)


def _check_params(lun_params):
    checked = dict((int(k), dict(v)) for k, v in dict(lun_params or {}).items())
    for params in checked.values():
        for key, value in params.items():
            if not re.match(r"^[a-z_]+$", key) or re.search(r"[,=\s]", str(value)):
                raise ValueError("LUN parameter %s=%r is not a tgtadm --params item"
                                 % (key, value))
    return checked


class TargetAdapter(object):
    """tgtd with one target ``iqn`` exporting ``luns`` ({LUN number: device path}).

    ``status_cmd``/``start_cmd``/``stop_cmd``/``tgtadm`` are command lines (``"tgtadm -C 3"``);
    ``service`` is the daemon's process name. With ``iqn=None`` only the daemon is managed (its
    targets come from its own configuration, as in HA-Lizard). ``lun_params`` ({LUN: {"scsi_sn":
    ...}}) is applied when a LUN is created; see the module docstring before using it.
    """
    poll_interval = 0.1
    stop_grace = 1.0
    kill_grace = 2.0
    delete_attempts = 3

    def __init__(self, iqn, luns, service, status_cmd, start_cmd, stop_cmd, tgtadm="tgtadm",
                 timeout=10.0, stop_timeout=5.0, ready_timeout=5.0, lun_params=None,
                 target_params=None):
        self.iqn = iqn or None
        self.luns = dict((int(k), str(v)) for k, v in dict(luns or {}).items())
        if 0 in self.luns:
            raise ValueError("LUN 0 is tgtd's own controller LUN; export devices as LUN 1..255")
        if self.luns and not self.iqn:
            raise ValueError("LUNs %s need a target IQN" % sorted(self.luns))
        self.lun_params = _check_params(lun_params)
        self.target_params = dict(target_params or {})   # iSCSI session keys, set at creation
        self.service = service
        self.status_argv = split_command(status_cmd)
        self.start_argv = split_command(start_cmd)
        self.stop_argv = split_command(stop_cmd)
        self.tgtadm_argv = split_command(tgtadm)
        self.timeout, self.stop_timeout = timeout, stop_timeout
        self.ready_timeout = ready_timeout

    known_pids = ()
    _stat_fds = None

    def _remember_pids(self, pids):
        """Keep ``pids`` (found by this observation) and an open /proc/PID/stat of each: the
        descriptor stays bound to that process, so a reused PID never reads as alive."""
        fds = self._stat_fds or {}
        for pid in [p for p in fds if p not in pids]:
            _close(fds.pop(pid))
        for pid in pids:
            if pid not in fds:
                try:
                    fds[pid] = os.open("/proc/%d/stat" % pid,
                                       os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError:
                    continue
        self._stat_fds = fds
        self.known_pids = list(pids)

    def liveness(self):
        """Which of the daemon processes seen by the last :meth:`observe` still live (not gone,
        not a zombie): a cheap check (one pread each, no process scan, no command) the agent
        polls to notice at once that tgtd died."""
        alive, fds = [], self._stat_fds or {}
        for pid in self.known_pids:
            fd = fds.get(pid)
            if fd is None:
                continue
            try:
                data = os.pread(fd, 512, 0)
            except OSError:                 # ESRCH: the process is gone (reaped)
                continue
            end = data.rfind(b")")
            if end > 0 and data[end + 2:end + 3] not in (b"Z", b"X", b""):
                alive.append(pid)
        return tuple(alive)

    def close(self):
        for fd in (self._stat_fds or {}).values():
            _close(fd)
        self._stat_fds = {}

    # -- commands ----------------------------------------------------------------------------
    def _status_ok(self):
        return run(self.status_argv, self.timeout).ok

    def _change(self, argv, timeout, check=True):
        """A state-changing command: logged at INFO, then run; raises when ``check`` fails."""
        log.info("target: %s", _quote(argv))
        result = run(argv, timeout)
        if check and not result.ok:
            raise TargetError(result.describe())
        return result

    def _tgtadm(self, args, timeout=None, check=True):
        return self._change(self.tgtadm_argv + [str(a) for a in args],
                            timeout or self.timeout, check)

    def _show(self, timeout=None):
        """(targets, system state) when tgtadm answers, else None (parse errors raise)."""
        res = run(self.tgtadm_argv + ["--lld", "iscsi", "--op", "show", "--mode", "target"],
                  timeout or self.timeout)
        if not res.ok:
            return None
        targets = parse_tgtadm_targets(res.stdout)
        res = run(self.tgtadm_argv + ["--op", "show", "--mode", "sys"], timeout or self.timeout)
        if not res.ok:
            return None
        return targets, parse_tgtadm_system(res.stdout)["State"]

    # -- observe -----------------------------------------------------------------------------
    def observe(self):
        """A :class:`TargetState`; running = status command OK and tgtadm answers."""
        pids = service_pids(self.service)
        self._remember_pids(pids)
        if not self._status_ok():
            stray = " (yet process %s lives here)" % ", ".join(map(str, pids)) if pids else ""
            return TargetState(False, False, {}, ["%s is not running%s" % (self.service, stray)],
                               0, None, pids, "")
        shown = self._show()
        if shown is None:
            error = "%s runs but tgtadm does not answer" % self.service
            return TargetState(False, False, {}, [error], 0, None, pids, error)
        targets, system_state = shown
        missing = self._missing(targets, system_state)
        info = targets.get(self.iqn)
        return TargetState(True, not missing, targets, missing, info.connections if info else 0,
                           system_state, pids, "")

    def _missing(self, targets, system_state):
        missing = []
        if system_state != "ready":
            missing.append("%s system state is %s" % (self.service, system_state))
        if not self.iqn:
            return missing
        info = targets.get(self.iqn)
        if info is None:
            return missing + ["target %s not defined" % self.iqn] + [
                "LUN %d (%s) not exported" % item for item in sorted(self.luns.items())]
        if info.state != "ready":
            missing.append("target %s is %s" % (self.iqn, info.state))
        for number, path in sorted(self.luns.items()):
            lun = info.luns.get(number)
            if lun is None:
                missing.append("LUN %d (%s) not exported" % (number, path))
            elif lun.backing_store != path:
                missing.append("LUN %d exports %s, expected %s" % (number, lun.backing_store,
                                                                   path))
            else:
                missing.extend(self._identity_problems(lun))
        if not info.acl:
            missing.append("target %s has no ACL: no initiator may log in" % self.iqn)
        return missing

    def _identity_problems(self, lun):
        wanted = self.lun_params.get(lun.lun, {})
        return ["LUN %d %s is %s, expected %s" % (lun.lun, key, have, wanted[key])
                for key, have in (("scsi_id", lun.scsi_id), ("scsi_sn", lun.scsi_sn))
                if key in wanted and have != wanted[key]]

    # -- start -------------------------------------------------------------------------------
    def start(self):
        """Start the daemon if needed and make it serve; idempotent. Returns a TargetResult."""
        changes = []
        if not self._status_ok():
            self._change(self.start_argv, self.timeout)
            changes.append("started %s" % self.service)
        targets, system_state = self._wait_ready()
        if self.iqn:
            changes.extend(self._configure(targets))
        if system_state != "ready":
            self._tgtadm(["--op", "update", "--mode", "sys", "--name", "State", "-v", "ready"])
            changes.append("system state ready")
        if changes:
            targets, system_state = self._show() or ({}, None)
        missing = self._missing(targets, system_state)
        if missing:
            raise TargetError("target not serving after start: %s" % "; ".join(missing))
        if not changes:
            return TargetResult("%s already serving" % self.service, "unchanged")
        return TargetResult("target: " + ", ".join(changes), "changed", changes)

    def _wait_ready(self):
        deadline = time.monotonic() + self.ready_timeout
        shown = _poll(lambda: self._show(min(self.timeout, max(deadline - time.monotonic(), 0.5))),
                      self.ready_timeout, self.poll_interval)
        if shown is None:
            raise TargetError("%s did not answer tgtadm within %.1f s"
                              % (self.service, self.ready_timeout))
        return shown

    def _configure(self, targets):
        info, changes = targets.get(self.iqn), []
        if info is None:
            tid = _lowest_free_tid(targets)
            self._tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", tid,
                          "-T", self.iqn])
            changes.append("created target %s (tid %d)" % (self.iqn, tid))
            for name, value in sorted(self.target_params.items()):
                self._tgtadm(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid",
                              tid, "--name", name, "--value", value])
                changes.append("%s=%s" % (name, value))
            info = TargetInfo(tid, self.iqn, "iscsi", "ready", [], {}, [], [])
        for number, path in sorted(self.luns.items()):
            lun = info.luns.get(number)
            if lun is not None:
                if lun.backing_store != path:
                    raise TargetError("LUN %d of %s exports %s, not %s: refusing to replace an "
                                      "exported LUN" % (number, self.iqn, lun.backing_store, path))
                continue
            self._tgtadm(["--lld", "iscsi", "--op", "new", "--mode", "logicalunit",
                          "--tid", info.tid, "--lun", number, "-b", path])
            params = self.lun_params.get(number)
            if params:
                self._tgtadm(["--lld", "iscsi", "--op", "update", "--mode", "logicalunit",
                              "--tid", info.tid, "--lun", number, "--params",
                              ",".join("%s=%s" % kv for kv in sorted(params.items()))])
            changes.append("exported LUN %d (%s)" % (number, path))
        if not info.acl:
            self._tgtadm(["--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", info.tid,
                          "-I", "ALL"])
            changes.append("ACL ALL")
        if info.state != "ready":
            self._tgtadm(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid",
                          info.tid, "--name", "state", "-v", "ready"])
            changes.append("target state ready")
        return changes

    # -- stop --------------------------------------------------------------------------------
    def stop(self):
        """Stop the daemon, escalating: offline, stop command, tgtadm delete, SIGKILL.

        Every step is bounded; returns a TargetResult whose ``step`` names the step that
        worked, raises :class:`TargetStopError` if the daemon survived them all.
        """
        if self._gone():
            return TargetResult("%s not running" % self.service, STOP_NOT_RUNNING)
        quick = min(self.timeout, self.stop_timeout)
        answering = not self._frozen()
        if answering:
            answering = not self._tgtadm(["--op", "update", "--mode", "sys", "--name", "State",
                                          "-v", "offline"], quick, check=False).timed_out
        self._change(self.stop_argv, self.stop_timeout, check=False)
        if self._wait_gone(self.stop_grace):
            return TargetResult("%s stopped by the stop command" % self.service, STOP_COMMAND)
        if answering and self._delete_quietly(quick) and self._wait_gone(self.stop_grace):
            return TargetResult("%s stopped by tgtadm (targets force-deleted)" % self.service,
                                STOP_TGTADM_DELETE)
        pids = service_pids(self.service)
        log.info("target: kill -KILL %s (%s in this network namespace)",
                 " ".join(str(p) for p in pids) or "(none found)", self.service)
        kill_pids(pids)
        if self._wait_gone(self.kill_grace):
            return TargetResult("%s killed (SIGKILL to %s)" % (
                self.service, ", ".join(str(p) for p in pids)), STOP_KILL)
        raise TargetStopError("%s still running after the stop command, tgtadm delete and "
                              "SIGKILL (pids in this namespace: %s)"
                              % (self.service, service_pids(self.service) or "none"))

    def _delete_quietly(self, timeout):
        """:meth:`_delete_everything`, but an error (output we cannot parse) only means "not
        stopped this way": the escalation must go on to SIGKILL, never stop short of it."""
        try:
            return self._delete_everything(timeout)
        except Exception as exc:
            log.warning("target: tgtadm delete step failed (%s); escalating", exc)
            return False

    def _frozen(self):
        """True when a daemon process is stopped (SIGSTOP/ptrace): tgtadm would hang."""
        for pid in service_pids(self.service):
            try:
                if psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                    psutil.STATUS_TRACING_STOP):
                    return True
            except psutil.Error:
                continue
        return False

    def _delete_everything(self, timeout):
        """Set each target offline (tgtd then refuses new commands, in-flight ones drain: with
        an initiator doing I/O a forced delete otherwise fails with "this logical unit is still
        active"), force-delete it, then delete the system (tgtd exits). ``--force`` belongs to
        target deletion: ``--op delete --mode system --force`` is refused ("invalid request")
        and a system delete only succeeds once no target is left."""
        shown = self._show(timeout)
        if shown is None:
            return False
        for info in sorted(shown[0].values(), key=lambda t: t.tid):
            self._tgtadm(["--lld", "iscsi", "--op", "update", "--mode", "target", "--tid",
                          info.tid, "--name", "state", "-v", "offline"], timeout, check=False)
            for _ in range(self.delete_attempts):
                res = self._tgtadm(["--lld", "iscsi", "--op", "delete", "--mode", "target",
                                    "--force", "--tid", info.tid], timeout, check=False)
                if res.ok or res.timed_out:
                    break
                time.sleep(self.poll_interval)
        return self._tgtadm(["--op", "delete", "--mode", "system"], timeout, check=False).ok

    def _gone(self):
        return not service_pids(self.service) and not self._status_ok()

    def _wait_gone(self, grace):
        return _poll(self._gone, grace, self.poll_interval) or False
