"""DRBD adapter: reads resource states and changes roles with drbdadm / drbdsetup.

DRBD 8.4: each resource's minor is resolved once with ``drbdadm sh-minor RES`` (it only reads
the configuration), then every pass is one read of ``/proc/drbd``, no process. DRBD 9: one
``drbdsetup status --json`` call for all resources, except for a look that a line of the
daemon's ``drbdsetup events2`` stream woke (:attr:`DrbdAdapter.events`): the line proves the
stream live, and the state folded from it is read, no process. The stream is not trusted when it
cannot tell (see :mod:`iscsi_ha.drbd_events`), nor after a command of this adapter changed DRBD
until a status read agrees with it; every status read is compared with it, and a stream that
disagrees for STREAM_LAG_MAX s (drbd-utils may hold or drop a notification and go on) is
restarted. State-changing commands
(``primary``, ``secondary``, ``connect``, ``disconnect``) are logged at INFO before they run and
raise :class:`CommandError` carrying DRBD's own reason (``State change failed: (-2) Need access to
UpToDate data``). Every command runs through :func:`run` with the configured timeout.
"""
import errno
import logging
import os
import shlex
import time

from iscsi_ha import files
from iscsi_ha.adapters.run import CommandError, run, split_command
from iscsi_ha.drbd import (DrbdParseError, DrbdUnavailable, drbd_error_text, parse_gi,
                           parse_json_oos, parse_proc_drbd, parse_proc_oos, parse_status_json)
from iscsi_ha.drbd_events import AGREES, BROKEN, NotKnown, verdict

__all__ = ["DrbdAdapter", "DrbdUnavailable", "DrbdParseError", "VERSIONS"]

log = logging.getLogger("iscsi-ha")

VERSIONS = ("8.4", "9")
STREAM_LAG_MAX = 5.0


def detect_version(proc_path):
    """"8.4" or "9" from the first line of /proc/drbd ("version: 8.4.11-1 ..."), or None."""
    try:
        first = files.read_bounded(proc_path, files.PROC_LIMIT).decode("utf-8", "replace")
    except (IOError, OSError):
        return None
    if first.startswith("version: 8."):
        return "8.4"
    if first.startswith("version: 9."):
        return "9"
    return None


def _quote(argv):
    return " ".join(shlex.quote(a) for a in argv)


def _reason(result):
    """Why a finished command failed, in DRBD's words when it gave any."""
    if result.timed_out:
        return "timed out after %.1f s" % result.duration
    text = drbd_error_text(result.stderr) or (result.stdout or "").strip()
    return "exit %d%s" % (result.returncode, ": " + text if text else "")


class DrbdAdapter(object):
    """Observe and change the configured DRBD resources of this host."""

    # The daemon's iscsi_ha.wakeups.DrbdEvents: DRBD 9's state from its event stream.
    events = None

    def __init__(self, resources, version="8.4", drbdadm="drbdadm", drbdsetup="drbdsetup",
                 proc_drbd="/proc/drbd", timeout=5.0):
        if isinstance(resources, str):
            resources = [resources]
        self.resources = tuple(resources)
        if not self.resources or not all(isinstance(r, str) and r for r in self.resources):
            raise ValueError("DRBD resources must be a non-empty list of names, got %r"
                             % (resources,))
        if version not in VERSIONS + ("auto",):
            raise ValueError("DRBD version must be one of %s or auto, got %r"
                             % (", ".join(VERSIONS), version))
        if not timeout or timeout <= 0:
            raise ValueError("DRBD command timeout must be positive, got %r" % (timeout,))
        self._version = version
        self.drbdadm = split_command(drbdadm)
        self.drbdsetup = split_command(drbdsetup)
        self.proc_drbd = proc_drbd
        self.timeout = float(timeout)
        self._minors = {}
        # A command of ours changed DRBD (its event may still be on its way through the
        # stream), or a status read contradicted the stream: it is not read until a status
        # read agrees with it.
        self._stream_untrusted = False
        self._disagrees_since = None   # monotonic time of the first status read it disagreed
        self.last_source = ""          # where the last DRBD 9 look came from (events2/status)
        self.clock = time.monotonic

    @property
    def version(self):
        """"8.4" or "9"; with "auto", read from /proc/drbd's first line once DRBD is loaded
        (until then :class:`DrbdUnavailable`, so an agent started before DRBD just waits)."""
        if self._version == "auto":
            detected = detect_version(self.proc_drbd)
            if detected is None:
                if not os.path.lexists(self.proc_drbd):
                    raise DrbdUnavailable("DRBD is not loaded: %s does not exist (the drbd "
                                          "kernel module is not loaded)" % self.proc_drbd)
                raise DrbdUnavailable("cannot tell the DRBD version: %s has no version line "
                                      "(DRBD_VERSION=auto)" % self.proc_drbd)
            self._version = detected
        return self._version

    # ---- observing ---------------------------------------------------------------------------
    def observe(self, from_stream=False):
        """``{resource: DrbdState}`` for every configured resource. ``from_stream``: a line of
        the events stream woke this look (DRBD 9 may then read the stream's state).

        Raises :class:`DrbdUnavailable` when DRBD is not loaded, a tool fails or a resource is not
        up, and :class:`DrbdParseError` when DRBD's output is not recognised.
        """
        if self.version == "8.4":
            return self._observe_84()
        return self._observe_9(from_stream)

    def fingerprint(self):
        """Text that changes when any DRBD state word changes, and not on I/O counters.

        Built from the parsed states (role, connection, disks of every device or resource) so
        that the ``ns:``/``dw:`` counters of ``/proc/drbd`` and the statistics of the JSON do
        not wake the agent. Never raises for DRBD problems: they give a marker text instead.
        """
        try:
            if self.version == "8.4":
                states = parse_proc_drbd(self._read_proc())
            else:
                states = parse_status_json(self._status_json())
        except (DrbdParseError, CommandError) as exc:
            return "unavailable: %s" % exc
        return "\n".join("%s %s/%s %s %s/%s" % ((key,) + tuple(states[key])[2:7])
                         for key in sorted(states))

    def minor(self, resource):
        """The minor of ``resource`` (8.4: ``drbdadm sh-minor``), resolved once and cached."""
        self._check_resource(resource)
        if resource not in self._minors:
            self._minors[resource] = self._sh_minor(resource)
        return self._minors[resource]

    def _observe_84(self):
        states = parse_proc_drbd(self._read_proc())
        observed = {}
        for resource in self.resources:
            minor = self.minor(resource)
            state = states.get(minor)
            if state is None:
                raise DrbdUnavailable(
                    "DRBD resource %s (minor %s) is not up: %s lists it as Unconfigured or not "
                    "at all" % (resource, minor, self.proc_drbd))
            observed[resource] = state._replace(resource=resource)
        return observed

    def _observe_9(self, from_stream=False):
        states = self._stream_states() if from_stream else None
        if states is None:
            states = parse_status_json(self._status_json())
            self.last_source = "status"
            self._compare_stream(states)
        observed = {}
        for resource in self.resources:
            if resource not in states:
                raise DrbdUnavailable(
                    "DRBD resource %s is not up: drbdsetup status lists %s" % (
                        resource, ", ".join(sorted(states)) or "no resources"))
            observed[resource] = states[resource]
        return observed

    def _stream_states(self):
        """The stream's state of every resource, or None to ask ``drbdsetup status``."""
        if self.events is None or self._stream_untrusted:
            return None
        try:
            states = self.events.states(self.resources)
        except NotKnown as exc:
            log.debug("drbd: asking drbdsetup status: %s", exc)
            return None
        except Exception as exc:     # a bug here must not cost a pass: ask DRBD instead
            log.warning("drbd: the events stream's state is unreadable (%s); asking "
                        "drbdsetup status", exc)
            return None
        self.last_source = "events2"
        return states

    def _compare_stream(self, status):
        """After a status read: trust the stream again when it says the same. When it does
        not, it is not read until it does, and when it has disagreed (or could not tell,
        outside a resync) for STREAM_LAG_MAX s, or cannot fold its lines, it is restarted."""
        events = self.events
        if events is None or not events.streaming:
            return
        try:
            try:
                stream = events.states(self.resources)
            except NotKnown as exc:
                stream = exc
            found, why = verdict(stream, status, self.resources, events.broken)
        except Exception as exc:    # never lose a good status read over the stream
            log.warning("drbd: the events stream's state is unreadable (%s)", exc)
            return
        if found == BROKEN:
            self._restart(events, why)
            return
        if found == AGREES:
            self._stream_untrusted, self._disagrees_since = False, None
            return
        self._stream_untrusted = True         # behind DRBD: not read until it agrees again
        now = self.clock()
        if self._disagrees_since is None:
            self._disagrees_since = now
        elif now - self._disagrees_since >= STREAM_LAG_MAX:
            self._restart(events, "it has disagreed with drbdsetup status for %.0f s (%s)" % (
                now - self._disagrees_since, why))

    def _restart(self, events, why):
        self._disagrees_since = None
        try:
            events.restart(why)
        except Exception as exc:  # the stream is an optimisation: never a failed read
            log.warning("drbd: cannot restart the events stream: %s", exc)

    def _read_proc(self):
        try:
            return files.read_bounded(self.proc_drbd, files.PROC_LIMIT).decode("utf-8", "replace")
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                raise DrbdUnavailable("DRBD is not loaded: %s missing" % self.proc_drbd)
            raise DrbdUnavailable("cannot read %s: %s" % (self.proc_drbd, exc.strerror or exc))

    def _read(self, argv, what=""):
        """Run a read-only DRBD command; its stdout, or :class:`DrbdUnavailable` naming the
        command and why: not installed / not on PATH, timed out, or DRBD's own error."""
        try:
            result = run(argv, self.timeout)
        except CommandError as exc:        # the program could not be started at all
            raise DrbdUnavailable("%s%s: %s (is drbd-utils installed? the command comes from "
                                  "DRBD_ADM / DRBD_SETUP)" % (what, _quote(argv), exc))
        if not result.ok:
            raise DrbdUnavailable("%s%s failed: %s" % (what, _quote(argv), _reason(result)))
        return result.stdout

    def _status_json(self):
        return self._read(self.drbdsetup + ["status", "--json"])

    # ---- split brain: what each side holds ----------------------------------------------------
    def generations(self, resource):
        """``drbdadm get-gi RES`` -> :class:`iscsi_ha.drbd.Generations` (8.4 and 9).

        Raises :class:`DrbdUnavailable` when drbdadm is missing or fails, and
        :class:`DrbdParseError` when its output is not a generation line."""
        self._check_resource(resource)
        return parse_gi(self._read(self.drbdadm + ["get-gi", resource],
                                   "data generations of %s: " % resource))

    def out_of_sync_kib(self, resource):
        """KiB marked out of sync on ``resource`` (8.4: ``oos:`` of /proc/drbd; 9: the
        ``out-of-sync`` of ``drbdsetup status --json``), None when DRBD does not say.

        Raises :class:`DrbdUnavailable` when DRBD cannot be read."""
        self._check_resource(resource)
        if self.version == "8.4":
            return parse_proc_oos(self._read_proc(), self.minor(resource))
        return parse_json_oos(self._status_json(), resource)

    def _sh_minor(self, resource):
        argv = self.drbdadm + ["sh-minor", resource]
        result = self._read(argv, "cannot find the minor of DRBD resource %s: " % resource)
        minors = result.split()
        if len(minors) != 1 or not minors[0].isdigit():
            raise DrbdParseError(
                "%s printed %r; iscsi-ha handles exactly one volume (one minor) per resource"
                % (_quote(argv), result.strip()))
        return minors[0]

    # ---- changing ----------------------------------------------------------------------------
    def dump(self, resource):
        """``drbdadm dump RES``: DRBD's parsed configuration of ``resource`` (text)."""
        self._check_resource(resource)
        result = run(self.drbdadm + ["dump", resource], self.timeout)
        if not result.ok:
            raise CommandError("drbd: %s" % result.describe(), result)
        return result.stdout

    def outdate(self, resource):
        """``drbdadm outdate RES`` (the peer's fence-peer handler asks for it); the
        CommandResult, never raised: exit 0 outdated, 17 refused because Primary, 5 the disk
        is Inconsistent or worse (``adm_outdate()`` in drbd-utils' drbdadm_main.c)."""
        self._check_resource(resource)
        argv = self.drbdadm + ["outdate", resource]
        log.info("drbd: %s", _quote(argv))
        self._stream_untrusted = True
        return run(argv, self.timeout)

    def promote(self, resource):
        """``drbdadm primary RES``; returns the CommandResult, raises CommandError on failure."""
        return self._change(resource, self.drbdadm + ["primary", resource])

    def demote(self, resource, force=False):
        """``drbdadm secondary RES``; with ``force`` on DRBD 9: ``drbdsetup secondary RES
        --force`` (8.4 has no forced demotion: the plain command runs)."""
        if force and self.version == "9":
            return self._change(resource, self.drbdsetup + ["secondary", resource, "--force"])
        if force:
            log.debug("drbd: DRBD 8.4 has no forced demotion, running plain secondary")
        return self._change(resource, self.drbdadm + ["secondary", resource])

    def connect(self, resource, discard_my_data=False):
        """``drbdadm connect [--discard-my-data] RES``."""
        extra = ["--discard-my-data"] if discard_my_data else []
        return self._change(resource, self.drbdadm + ["connect"] + extra + [resource])

    def disconnect(self, resource):
        """``drbdadm disconnect RES``."""
        return self._change(resource, self.drbdadm + ["disconnect", resource])

    def _change(self, resource, argv):
        self._check_resource(resource)
        log.info("drbd: %s", _quote(argv))
        self._stream_untrusted = True
        result = run(argv, self.timeout)
        if not result.ok:
            raise CommandError("drbd: %s failed: %s" % (_quote(argv), _reason(result)), result)
        return result

    def _check_resource(self, resource):
        if resource not in self.resources:
            raise ValueError("DRBD resource %r is not configured (known: %s)"
                             % (resource, ", ".join(self.resources)))
