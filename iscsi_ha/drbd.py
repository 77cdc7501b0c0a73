"""DRBD state as one immutable value, and the parsers that build it from DRBD's own outputs.

Pure: no I/O. Every word is checked against DRBD's vocabularies (drbd-utils
``user/v84/drbd_strings.c`` for 8.4, drbd-headers ``drbd_strings.c`` for 9); an unknown word,
a malformed line or truncated JSON raises :class:`DrbdParseError` naming what was not recognised.

``DrbdState.connection`` means the same thing for both versions:

* 8.4 ``/proc/drbd``: the ``cs:`` word as printed (``Connected``, ``WFConnection``...).
* 9 ``drbdsetup status --json``: the peer's ``connection-state`` unless it is ``Connected``; when it
  is ``Connected`` the volume's ``replication-state`` decides: ``Established`` -> ``Connected``,
  ``Off`` (handshake not finished) -> ``WFReportParams``, any other word (``SyncSource``,
  ``PausedSyncT``, ``VerifyS``, ``Ahead``...) as is. This is the inverse of the 8.4 -> 9 mapping in
  drbd-utils ``user/v84/drbdsetup.c`` (``drbd_conn_str9``/``drbd_repl_str9``). 9's own words for
  an unconnected peer are kept (``Connecting`` where 8.4 says ``WFConnection``). A resource with no
  connection at all reads ``StandAlone`` with peer ``Unknown``/``DUnknown``.
"""
import json
import re
from collections import namedtuple

ROLES = frozenset(["Primary", "Secondary", "Unknown"])
DISK_STATES = frozenset(["Diskless", "Attaching", "Detaching", "Failed", "Negotiating",
                         "Inconsistent", "Outdated", "DUnknown", "Consistent", "UpToDate"])
CONNECTION_STATES_84 = frozenset([
    "StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure",
    "ProtocolError", "WFConnection", "WFReportParams", "TearDown", "Connected",
    "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID", "SyncSource",
    "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind"])
CONNECTION_STATES_9 = frozenset([
    "StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure",
    "ProtocolError", "TearDown", "Connecting", "Connected"])
REPLICATION_STATES_9 = frozenset([
    "Off", "Established", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
    "WFSyncUUID", "SyncSource", "SyncTarget", "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT",
    "Ahead", "Behind"])
# Every word DrbdState.connection accepts (the parsers emit 8.4 words plus 9's unconnected ones).
CONNECTION_WORDS = CONNECTION_STATES_84 | CONNECTION_STATES_9 | REPLICATION_STATES_9
# A resync running, paused or about to start (not online verify).
RESYNC_STATES = frozenset(["StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
                           "WFSyncUUID", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT"])
# The replication link is up: 8.4's ``conn >= C_CONNECTED`` (plus 9's word Established).
LINK_UP_STATES = RESYNC_STATES | frozenset(["Connected", "Established", "VerifyS", "VerifyT",
                                            "Ahead", "Behind"])
# States in which DRBD reports a progress percentage.
PROGRESS_STATES = frozenset(["SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT",
                             "VerifyS", "VerifyT"])
UNCONFIGURED = "Unconfigured"


class DrbdParseError(ValueError):
    """DRBD output that was not recognised; the message names the line or field."""


class DrbdUnavailable(DrbdParseError):
    """DRBD cannot tell the state: module not loaded, resource not up, tool failed."""


def _word(value, vocabulary, what, where=""):
    if not isinstance(value, str) or value not in vocabulary:
        raise DrbdParseError("unknown DRBD %s %r%s" % (what, value, where))
    return value


_FIELDS = ("resource", "minor", "role", "peer_role", "connection", "disk", "peer_disk",
           "sync_percent", "suspended")


class DrbdState(namedtuple("DrbdState", _FIELDS)):
    """One resource (or 8.4 minor) as DRBD reports it, in DRBD's own words.

    ``resource``/``minor`` may be None (``/proc/drbd`` has no names). ``sync_percent`` is the
    progress of a running resync or verify (0-100), None when none runs. ``suspended``: DRBD
    froze the device's I/O (8.4: the ``s`` flag of ``drbd_seq_show()``; 9: ``suspended`` in
    ``drbdsetup status --json``), e.g. while the fence-peer handler runs.
    """
    __slots__ = ()

    def __new__(cls, resource, minor, role, peer_role, connection, disk, peer_disk,
                sync_percent=None, suspended=False):
        _word(role, ROLES, "role")
        _word(peer_role, ROLES, "peer role")
        _word(connection, CONNECTION_WORDS, "connection state")
        _word(disk, DISK_STATES, "disk state")
        _word(peer_disk, DISK_STATES, "peer disk state")
        if sync_percent is not None:
            sync_percent = float(sync_percent)
            if not 0.0 <= sync_percent <= 100.0:
                raise DrbdParseError("sync percentage %r is outside 0-100" % sync_percent)
        return super(DrbdState, cls).__new__(cls, resource, minor, role, peer_role, connection,
                                             disk, peer_disk, sync_percent, bool(suspended))

    @property
    def is_primary(self):
        return self.role == "Primary"

    @property
    def peer_is_primary(self):
        return self.peer_role == "Primary"

    @property
    def is_connected(self):
        """The replication link is up (Connected, or a sync/verify/congestion state)."""
        return self.connection in LINK_UP_STATES

    @property
    def is_syncing(self):
        """A resync is running, paused or starting (online verify does not count)."""
        return self.connection in RESYNC_STATES

    @property
    def is_standalone(self):
        """Not even trying to connect (admin disconnect or split brain); needs an admin."""
        return self.connection == "StandAlone"

    def describe(self):
        """``Primary/Secondary Connected UpToDate/UpToDate`` (+ `` 37.5%`` while syncing)."""
        text = "%s/%s %s %s/%s" % (self.role, self.peer_role, self.connection, self.disk,
                                   self.peer_disk)
        if self.sync_percent is not None:
            text += " %.1f%%" % self.sync_percent
        return text


def _own_errors(parse):
    """Only :class:`DrbdParseError` leaves a parser: a RecursionError (deeply nested JSON), a
    stray ValueError/TypeError become one, naming the parser."""
    def wrapper(text):
        try:
            return parse(text)
        except DrbdParseError:
            raise
        except RecursionError:
            raise DrbdParseError("%s: input nested too deeply" % parse.__name__)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise DrbdParseError("%s: unreadable input: %s" % (parse.__name__, exc))
    wrapper.__name__ = parse.__name__
    wrapper.__doc__ = parse.__doc__
    return wrapper


def _require_text(text, source):
    if not isinstance(text, str) or not text.strip():
        raise DrbdParseError("%s is empty" % source)


# ---- DRBD 8.4 /proc/drbd --------------------------------------------------------------------

_MINOR_LINE = re.compile(r"^\s*([0-9]+): cs:(\S+)(.*)$")
_ROLES_DISKS = re.compile(r"^ ro:([^/\s]+)/(\S+) ds:([^/\s]+)/(\S+)(?:\s|$)")
_FLAGS = re.compile(r"\s[ABC ]\s([rs])[-a-z]{5}\s*$")
_PROGRESS = re.compile(r"\] (?:sync'ed|verified):\s*([0-9]+(?:\.[0-9]+)?)%")
_VERSION = re.compile(r"^version: (([0-9]+)\.[0-9]+\S*)")


@_own_errors
def parse_proc_drbd(text):
    """``{minor: DrbdState}`` from DRBD 8.4 ``/proc/drbd`` (``resource`` is None).

    Only device lines (``N: cs:...``) and their indented continuation lines matter: any other
    line (a build line wrapped in two, a header a later DRBD adds) is skipped, except a
    ``version:`` line that cannot be read. Unconfigured minors are left out. Text without device
    lines raises, except an 8.x header alone (module loaded, nothing configured), which gives
    ``{}``.
    """
    _require_text(text, "/proc/drbd")
    version, states, seen, current, unconfigured = None, {}, [], None, False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = " in line %d of /proc/drbd: %r" % (number, line)
        match = _MINOR_LINE.match(line)
        if match:
            if match.group(1) in seen:
                raise DrbdParseError("minor %s is listed twice%s" % (match.group(1), where))
            seen.append(match.group(1))
            state = _proc_device(match, where)
            current = match.group(1) if state else None
            unconfigured = state is None
            if state:
                states[current] = state
        elif line[:1].isspace():
            if current is not None:
                _proc_detail(states, current, line, where)
            elif unconfigured:
                raise DrbdParseError("indented line below an Unconfigured device" + where)
            # else: the continuation of a header line (a wrapped build line): skipped
        else:
            version = _proc_header(line, where) or version
            current, unconfigured = None, False
    _check_devices_listed(version, seen)
    return states


def _proc_device(match, where):
    """The DrbdState of one ``N: cs:...`` line, or None when it is Unconfigured."""
    minor, cstate, rest = match.groups()
    if cstate == UNCONFIGURED:
        if rest.strip():
            raise DrbdParseError("unexpected text after cs:Unconfigured" + where)
        return None
    _word(cstate, CONNECTION_STATES_84, "connection state", where)
    fields = _ROLES_DISKS.match(rest)
    if not fields:
        raise DrbdParseError("expected ' ro:ROLE/ROLE ds:DISK/DISK' after cs:%s%s"
                             % (cstate, where))
    role, peer_role, disk, peer_disk = fields.groups()
    _word(role, ROLES, "role", where)
    _word(peer_role, ROLES, "peer role", where)
    _word(disk, DISK_STATES, "disk state", where)
    _word(peer_disk, DISK_STATES, "peer disk state", where)
    flags = _FLAGS.search(rest)
    return DrbdState(None, minor, role, peer_role, cstate, disk, peer_disk,
                     suspended=bool(flags and flags.group(1) == "s"))


def _proc_detail(states, current, line, where):
    """An indented line below a device: statistics, or the resync/verify progress."""
    progress = _PROGRESS.search(line)
    if progress:
        states[current] = states[current]._replace(sync_percent=_percent(progress.group(1)))


def _proc_header(line, where):
    """(version text, major) for the version line, None for any other line (GIT-hash:,
    srcversion:, Transports, or a line this parser does not know: skipped)."""
    if line.startswith("version:"):
        match = _VERSION.match(line)
        if not match:
            raise DrbdParseError("cannot read the DRBD version" + where)
        return match.group(1), int(match.group(2))
    return None


def _check_devices_listed(version, seen):
    if seen:
        return
    if version is None:
        raise DrbdParseError("not /proc/drbd text: no 'version:' line and no device lines")
    if version[1] >= 9:
        raise DrbdParseError("DRBD %s: /proc/drbd lists no devices; DRBD 9 reports state "
                             "through 'drbdsetup status --json' (set the DRBD version to 9)"
                             % version[0])


def _percent(value):
    """A progress percentage 0-100; anything else (NaN, 250) is refused, never clamped."""
    number = float(value)
    if not 0.0 <= number <= 100.0:
        raise DrbdParseError("sync percentage %r is outside 0-100" % (value,))
    return number


# ---- DRBD 9 drbdsetup status --json ---------------------------------------------------------

@_own_errors
def parse_status_json(text):
    """``{resource name: DrbdState}`` from DRBD 9 ``drbdsetup status --json``."""
    _require_text(text, "drbdsetup status --json output")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise DrbdParseError("drbdsetup status --json output is not complete JSON: %s" % exc)
    if not isinstance(data, list):
        raise DrbdParseError("drbdsetup status --json: expected a list of resources, got %s"
                             % type(data).__name__)
    states, minors = {}, {}
    for index, item in enumerate(data):
        state = _json_resource(item, "resource #%d" % index)
        if state.resource in states:
            raise DrbdParseError("drbdsetup status --json: resource %r is listed twice"
                                 % state.resource)
        if state.minor in minors:
            raise DrbdParseError("drbdsetup status --json: minor %s belongs to both %r and %r"
                                 % (state.minor, minors[state.minor], state.resource))
        states[state.resource] = state
        minors[state.minor] = state.resource
    return states


def _no_constant(name):
    raise DrbdParseError("drbdsetup status --json output holds %s, not a JSON number" % name)


def _field(obj, key, where, kind=str):
    if not isinstance(obj, dict):
        raise DrbdParseError("drbdsetup status --json: %s is not an object" % where)
    if key not in obj:
        raise DrbdParseError("drbdsetup status --json: %s has no %r field" % (where, key))
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DrbdParseError("drbdsetup status --json: field %r of %s is %r, expected %s"
                             % (key, where, value, kind.__name__))
    return value


def _json_resource(item, where):
    name = _field(item, "name", where)
    where = "resource %r" % name
    role = _word(_field(item, "role", where), ROLES, "role", " of " + where)
    devices = _field(item, "devices", where, list)
    if len(devices) != 1:
        raise DrbdParseError("drbdsetup status --json: %s has %d volumes; iscsi-ha handles "
                             "exactly one volume per resource" % (where, len(devices)))
    device = devices[0]
    minor = str(_field(device, "minor", "the device of " + where, int))
    disk = _word(_field(device, "disk-state", "the device of " + where), DISK_STATES,
                 "disk state", " of " + where)
    peer_role, connection, peer_disk, progress = _json_peer(item, device.get("volume", 0), where)
    return DrbdState(resource=name, minor=minor, role=role, peer_role=peer_role,
                     connection=connection, disk=disk, peer_disk=peer_disk,
                     sync_percent=progress, suspended=item.get("suspended") is True)


def _json_peer(item, volume, where):
    """(peer_role, connection, peer_disk, sync_percent) from the replication peer."""
    connection = _replication_peer(_field(item, "connections", where, list), where)
    if connection is None:
        return "Unknown", "StandAlone", "DUnknown", None
    where = "connection %r of %s" % (connection.get("name"), where)
    cstate = _word(_field(connection, "connection-state", where), CONNECTION_STATES_9,
                   "connection state", " of " + where)
    peer_role = _word(_field(connection, "peer-role", where), ROLES, "peer role", " of " + where)
    device = _peer_device(connection, volume, where)
    repl, peer_disk = "Off", "DUnknown"
    if device is not None:
        repl = _word(_field(device, "replication-state", where), REPLICATION_STATES_9,
                     "replication state", " of " + where)
        peer_disk = _word(_field(device, "peer-disk-state", where), DISK_STATES,
                          "peer disk state", " of " + where)
    word = _unified_connection(cstate, repl)
    return peer_role, word, peer_disk, _json_progress(device, word, where)


def replication_peer(peers, diskless, where):
    """The one diskful peer among ``peers`` (None without any); diskless clients
    (tie-breakers, ``diskless(peer)`` true) are not replication peers."""
    if len(peers) <= 1:
        return peers[0] if peers else None
    diskful = [p for p in peers if not diskless(p)]
    if len(diskful) != 1:
        raise DrbdParseError("%s has %d peers with a disk; iscsi-ha handles two-node "
                             "resources" % (where, len(diskful)))
    return diskful[0]


def _replication_peer(connections, where):
    for connection in connections:
        if not isinstance(connection, dict):
            raise DrbdParseError("drbdsetup status --json: a connection of %s is not an object"
                                 % where)
    return replication_peer(connections, _is_diskless_client, "drbdsetup status --json: "
                            + where)


def _is_diskless_client(connection):
    devices = connection.get("peer_devices") if isinstance(connection, dict) else None
    return bool(devices) and all(isinstance(d, dict) and d.get("peer-client") is True
                                 for d in devices)


def _peer_device(connection, volume, where):
    for device in _field(connection, "peer_devices", where, list):
        if isinstance(device, dict) and device.get("volume", 0) == volume:
            return device
    return None


def _unified_connection(cstate, repl):
    if cstate != "Connected":
        return cstate
    if repl == "Established":
        return "Connected"
    if repl == "Off":
        return "WFReportParams"
    return repl


def _json_progress(device, connection, where):
    if device is None or connection not in PROGRESS_STATES:
        return None
    value = device.get("percent-resync-done", device.get("percent-in-sync"))
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise DrbdParseError("drbdsetup status --json: sync percentage %r of %s is not a number"
                             % (value, where))
    return _percent(value)


# ---- DRBD 8.4 drbdadm role / cstate / dstate ------------------------------------------------

# ---- split brain: data generations (drbdadm get-gi) and data marked out of sync ------------

Generations = namedtuple("Generations", "current bitmap history")
_GI = re.compile(r"^([0-9A-F]{16}):([0-9A-F]{16}):((?:[0-9A-F]{16}:)*)([01](?::[01])*)$")


def parse_gi(text):
    """``drbdadm get-gi`` (``CURRENT:BITMAP:HISTORY...:FLAGS``, drbd-utils dt_print_uuids /
    dt_print_v9_uuids) -> Generations of upper-case hex strings."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    match = _GI.match(lines[-1]) if lines else None
    if not match:
        raise DrbdParseError("not drbdadm get-gi output: %r" % (text,))
    history = tuple(h for h in match.group(3).split(":") if h)
    return Generations(match.group(1), match.group(2), history)


def parse_proc_oos(text, minor):
    """KiB marked out of sync (``oos:``) of ``minor`` in DRBD 8.4's /proc/drbd, or None."""
    found = False
    for line in text.splitlines():
        head = re.match(r"^\s*(\d+): cs:", line)
        if head:
            found = head.group(1) == str(minor)
        elif found:
            oos = re.search(r"\boos:(\d+)", line)
            if oos:
                return int(oos.group(1))
    return None


def parse_json_oos(text, resource):
    """KiB marked out of sync towards the peer in ``drbdsetup status --json``, or None."""
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise DrbdParseError("drbdsetup status --json: not JSON: %s" % exc)
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("name") != resource:
            continue
        for connection in item.get("connections") or []:
            for device in connection.get("peer_devices") or []:
                if device.get("volume", 0) == 0 and "out-of-sync" in device:
                    try:
                        return int(device["out-of-sync"])
                    except (TypeError, ValueError):
                        raise DrbdParseError("drbdsetup status --json: out-of-sync of %s is %r"
                                             % (resource, device["out-of-sync"]))
    return None


# ---- drbdadm / drbdsetup error output -------------------------------------------------------

_COMMAND_EXIT = re.compile(r"^Command '.*' terminated with exit code \d+$")
_KEY_ERROR = re.compile(r"State change failed|Failure: \(|Error code \d+ unknown")


def drbd_error_text(stderr):
    """DRBD's own reason from a failed command's stderr, on one line.

    ``1: State change failed: (-12) Device is held open by someone`` rather than drbdadm's
    trailing ``Command '...' terminated with exit code 11``.
    """
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    key = [line for line in lines if _KEY_ERROR.search(line)]
    if key and "additional info from kernel:" in lines:
        following = lines.index("additional info from kernel:") + 1
        if following < len(lines) and not _COMMAND_EXIT.match(lines[following]):
            key.append("kernel: " + lines[following])
    if not key:
        key = [line for line in lines if not _COMMAND_EXIT.match(line)]
    return "; ".join(key)
