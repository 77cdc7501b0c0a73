"""DRBD 9's state, kept from the lines of ``drbdsetup events2 all`` (pure: no I/O).

The agent holds one ``drbdsetup events2 all`` open (:class:`iscsi_ha.wakeups.DrbdEvents`). Its
lines carry every state word ``drbdsetup status --json`` gives the agent, so a pass reads the
state folded from them instead of starting a ``drbdsetup status`` (the way drbd-reactor follows
DRBD). What drbd-utils prints (``user/v9/drbdsetup_events2.c``, ``print_*_changes()``):

- ``exists``/``create``/``change``/``destroy`` (``rename`` for a renamed resource), then the
  object (``resource``, ``connection``, ``device``, ``peer-device``, ``path``, ``helper``),
  its key words (``name:`` ``peer-node-id:`` ``conn-name:`` ``volume:``; a device also
  ``minor:``) and ``word:value`` state words; ``exists -`` ends the first snapshot;
- a ``change`` line prints only the words that changed (the device's disk, client, open and
  quorum together); ``--full`` would print all, and folding takes either;
- a resource has ``role:`` and ``suspended:`` (``no``, or why: ``user``, ``fencing`` ...); a
  connection ``connection:`` and the peer's ``role:``; a device ``disk:``; a peer device
  ``replication:``, ``peer-disk:`` and ``peer-client:``, and ``done:`` while a resync runs.

:meth:`EventsState.states` builds the same :class:`iscsi_ha.drbd.DrbdState` values as
:func:`iscsi_ha.drbd.parse_status_json` (the same replication-peer rule and connection word),
or says why it cannot (:class:`NotKnown`): the first snapshot is not complete, a line was not
understood, a resource is not up or a resync runs (its percentage is the status command's).
The caller then asks ``drbdsetup status --json``: a stream that is not understood is never
guessed from.
"""
import re

from iscsi_ha.drbd import (CONNECTION_STATES_9, DISK_STATES, PROGRESS_STATES,
                           REPLICATION_STATES_9, ROLES, DrbdParseError, DrbdState,
                           _unified_connection, _word, replication_peer)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
ACTIONS = frozenset(["exists", "create", "change", "destroy", "rename"])
OBJECTS = frozenset(["resource", "connection", "device", "peer-device", "path"])


class NotKnown(Exception):
    """The stream's state cannot stand for ``drbdsetup status`` now (the message says why)."""


def _words(tokens):
    words = {}
    for token in tokens:
        key, sep, value = token.partition(":")
        if not sep or not key:
            raise DrbdParseError("drbdsetup events2: %r is not a word:value pair" % token)
        words[key] = value
    return words


class EventsState(object):
    """The objects of every resource, folded from events2 lines fed one at a time."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Forget everything (a new stream starts with its own snapshot)."""
        self.complete = False        # the first snapshot ended (``exists -``)
        self.broken = ""             # a line that was not understood: never used again
        self.resources, self.connections, self.devices, self.peer_devices = {}, {}, {}, {}

    def feed(self, line):
        """Fold one line (text, without or with its newline)."""
        if self.broken:
            return
        try:
            self._feed(_ANSI.sub("", line).split())
        except DrbdParseError as exc:
            self.broken = str(exc)

    def _feed(self, tokens):
        if not tokens:
            return
        action = tokens[0]
        if action == "exists" and tokens[1:] == ["-"]:
            self.complete = True
            return
        if action in ("call", "response"):       # a handler DRBD runs: no state
            return
        if action not in ACTIONS or len(tokens) < 2:
            raise DrbdParseError("drbdsetup events2: unknown line %r" % " ".join(tokens))
        kind, words = tokens[1], _words(tokens[2:])
        if kind not in OBJECTS:
            raise DrbdParseError("drbdsetup events2: unknown object %r" % kind)
        name = words.get("name")
        if not name:
            raise DrbdParseError("drbdsetup events2: a %s line without a name" % kind)
        if kind == "path":
            return
        if action == "rename":
            self._rename(name, words.get("new_name"))
            return
        table, key = self._where(kind, name, words)
        if action == "destroy":
            if kind == "resource":
                self._forget(name)
            table.pop(key, None)
            return
        table.setdefault(key, {}).update(words)

    def _where(self, kind, name, words):
        """The table of ``kind`` and the object's key in it: the resource's name first."""
        try:
            if kind == "resource":
                return self.resources, (name,)
            if kind == "connection":
                return self.connections, (name, int(words["peer-node-id"]))
            if kind == "device":
                return self.devices, (name, int(words["volume"]))
            return self.peer_devices, (name, int(words["peer-node-id"]), int(words["volume"]))
        except (KeyError, ValueError):
            raise DrbdParseError("drbdsetup events2: a %s line of %s without its key words"
                                 % (kind, name))

    def _tables(self):
        return (self.resources, self.connections, self.devices, self.peer_devices)

    def _forget(self, name):
        for table in self._tables():
            for key in [k for k in table if k[0] == name]:
                del table[key]

    def _rename(self, old, new):
        if not new:
            raise DrbdParseError("drbdsetup events2: a rename of %s without new_name" % old)
        for table in self._tables():
            for key in [k for k in table if k[0] == old]:
                table[(new,) + key[1:]] = table.pop(key)
        if (new,) in self.resources:
            self.resources[(new,)]["name"] = new

    # -- the state, as drbdsetup status --json would give it -------------------------------
    def states(self, names):
        """``{name: DrbdState}`` for resources ``names``; :class:`NotKnown` when the stream
        cannot tell (see the module's text)."""
        if self.broken:
            raise NotKnown(self.broken)
        if not self.complete:
            raise NotKnown("the stream's first snapshot is not complete")
        out = {}
        for name in names:
            if (name,) not in self.resources:
                raise NotKnown("resource %s is not in the stream" % name)
            try:
                out[name] = self._state(name)
            except DrbdParseError as exc:
                raise NotKnown(str(exc))
        return out

    def _state(self, name):
        res = self.resources[(name,)]
        where = " of resource %r (drbdsetup events2)" % name
        role = _word(res.get("role"), ROLES, "role", where)
        devices = sorted(k for k in self.devices if k[0] == name)
        if len(devices) != 1:
            raise DrbdParseError("resource %s has %d volumes in the stream" % (name, len(devices)))
        device = self.devices[devices[0]]
        disk = _word(device.get("disk"), DISK_STATES, "disk state", where)
        minor = device.get("minor")
        if not minor or not minor.isdigit():
            raise DrbdParseError("the device%s has no minor" % where)
        volume = devices[0][1]
        peer_role, connection, peer_disk = self._peer(name, volume, where)
        if connection in PROGRESS_STATES:
            raise NotKnown("a resync runs on %s: its progress is drbdsetup status's" % name)
        return DrbdState(resource=name, minor=minor, role=role, peer_role=peer_role,
                         connection=connection, disk=disk, peer_disk=peer_disk,
                         sync_percent=None, suspended=res.get("suspended", "no") != "no")

    def _peer(self, name, volume, where):
        """(peer role, connection word, peer disk) of the one diskful peer, as
        :func:`iscsi_ha.drbd._json_peer` takes it."""
        peer = replication_peer(sorted(k[1] for k in self.connections if k[0] == name),
                                lambda p: self._diskless_client(name, p),
                                "drbdsetup events2: resource %s" % name)
        if peer is None:
            return "Unknown", "StandAlone", "DUnknown"
        conn = self.connections[(name, peer)]
        cstate = _word(conn.get("connection"), CONNECTION_STATES_9, "connection state", where)
        peer_role = _word(conn.get("role"), ROLES, "peer role", where)
        repl, peer_disk = "Off", "DUnknown"
        device = self.peer_devices.get((name, peer, volume))
        if device is not None:
            repl = _word(device.get("replication"), REPLICATION_STATES_9, "replication state",
                         where)
            peer_disk = _word(device.get("peer-disk"), DISK_STATES, "peer disk state", where)
        return peer_role, _unified_connection(cstate, repl), peer_disk

    def _diskless_client(self, name, peer):
        devices = [v for k, v in self.peer_devices.items() if k[0] == name and k[1] == peer]
        return bool(devices) and all(d.get("peer-client") == "yes" for d in devices)


AGREES, BEHIND, BROKEN = "agrees", "behind", "broken"


def verdict(stream, status, names, broken=""):
    """How the stream stands against a ``drbdsetup status`` read of resources ``names``:
    (AGREES, ''), (BEHIND, why) or (BROKEN, why). ``stream``: the stream's states, or the
    :class:`NotKnown` it raised; ``broken``: why its lines cannot be folded ('' when they can).
    A stream that cannot tell during a resync agrees: the progress is status's alone."""
    if broken:
        return BROKEN, broken
    if isinstance(stream, NotKnown):
        if any(s.sync_percent is not None for s in status.values()):
            return AGREES, ""
        return BEHIND, str(stream)
    if all(stream.get(n) == status.get(n) for n in names):
        return AGREES, ""
    return BEHIND, "stream %s; status %s" % (_describe(stream), _describe(status))


def _describe(states):
    return ", ".join("%s %s" % (n, states[n].describe()) for n in sorted(states))
