"""The database of one fake XAPI pool: typed tables, generations and ``event.from``.

Objects are addressed by ``OpaqueRef:<uuid4>`` refs and carry a ``uuid`` field. Every change bumps
one global generation; each object remembers the generation it was created and last modified in,
and deleted objects leave a tombstone, which is all ``event.from`` needs (add / mod / del, one
coalesced event per object, "del" without a snapshot). Messages live on their own generation
counter, as in xapi, and make up the second half of the event token ``%020d,%020d``.

Values are kept in wire form: 64-bit ints as decimal strings, datetimes as
``xmlrpc.client.DateTime``, refs as strings (``OpaqueRef:NULL`` for none).
"""
import collections
import threading
import time
import uuid
import xmlrpc.client

NULL_REF = "OpaqueRef:NULL"

STR, INT, BOOL, FLOAT, DATE, REF, SET, MAP = ("str", "int", "bool", "float", "date", "ref",
                                              "set", "map")

# class -> ((field, kind, settable), ...). Only what the agent and the lab use; the names and
# kinds are those of the XenAPI data model.
SCHEMA = {
    "pool": (("uuid", STR, False), ("name_label", STR, True), ("name_description", STR, True),
             ("master", REF, False), ("default_SR", REF, True), ("ha_enabled", BOOL, False),
             ("other_config", MAP, True)),
    "host": (("uuid", STR, False), ("name_label", STR, True), ("name_description", STR, True),
             ("address", STR, False), ("hostname", STR, False), ("enabled", BOOL, False),
             ("metrics", REF, False), ("PBDs", SET, False), ("API_version_major", INT, False),
             ("API_version_minor", INT, False), ("other_config", MAP, True)),
    "host_metrics": (("uuid", STR, False), ("live", BOOL, False), ("last_updated", DATE, False),
                     ("memory_total", INT, False), ("memory_free", INT, False),
                     ("other_config", MAP, True)),
    "SR": (("uuid", STR, False), ("name_label", STR, True), ("name_description", STR, True),
           ("type", STR, False), ("content_type", STR, False), ("shared", BOOL, True),
           ("PBDs", SET, False), ("physical_size", INT, False),
           ("physical_utilisation", INT, False), ("virtual_allocation", INT, False),
           ("other_config", MAP, True), ("sm_config", MAP, True)),
    "PBD": (("uuid", STR, False), ("host", REF, False), ("SR", REF, False),
            ("device_config", MAP, True), ("currently_attached", BOOL, False),
            ("other_config", MAP, True)),
    "task": (("uuid", STR, False), ("name_label", STR, False), ("name_description", STR, False),
             ("status", STR, False), ("progress", FLOAT, False), ("created", DATE, False),
             ("finished", DATE, False), ("result", STR, False), ("error_info", SET, False),
             ("other_config", MAP, True)),
    "message": (("uuid", STR, False), ("name", STR, False), ("priority", INT, False),
                ("cls", STR, False), ("obj_uuid", STR, False), ("timestamp", DATE, False),
                ("body", STR, False)),
}
_DEFAULTS = {STR: "", INT: "0", BOOL: False, FLOAT: 0.0, REF: NULL_REF}
MESSAGE_CLASS = "message"
EPOCH = xmlrpc.client.DateTime("19700101T00:00:00Z")


class XapiError(Exception):
    """An API failure; ``details`` is the ErrorDescription (code first, all strings)."""

    def __init__(self, code, *params):
        Exception.__init__(self, code, *params)
        self.details = [str(code)] + [str(p) for p in params]


def new_ref():
    return "OpaqueRef:%s" % uuid.uuid4()


def now_datetime():
    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime()))


def wire_value(kind, value, field):
    """Convert ``value`` to the stored wire form of ``kind``; FIELD_TYPE_ERROR if impossible."""
    try:
        if kind == INT:
            if isinstance(value, bool):
                raise ValueError(value)
            return str(int(value))
        if kind == BOOL:
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind == FLOAT:
            return float(value)
        if kind == MAP:
            return dict((str(k), str(v)) for k, v in dict(value).items())
        if kind == SET:
            if isinstance(value, (str, bytes, dict)):
                raise ValueError(value)
            return [str(v) for v in value]
        if kind == DATE:
            return value if isinstance(value, xmlrpc.client.DateTime) else EPOCH
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        raise XapiError("FIELD_TYPE_ERROR", field)


_Row = collections.namedtuple("_Row", "fields created modified")


class Database(object):
    """Thread-safe tables with per-object generations; the store behind one fake pool."""

    def __init__(self):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0
        self.message_generation = 0
        self._rows = dict((cls, {}) for cls in SCHEMA)
        self._deleted = dict((cls, {}) for cls in SCHEMA)

    # -- plain access ------------------------------------------------------------------------
    def _bump(self, cls):
        if cls == MESSAGE_CLASS:
            self.message_generation += 1
            return self.message_generation
        self.generation += 1
        return self.generation

    def create(self, table, **fields):
        """Add an object to ``table`` (missing fields get defaults) and return its ref."""
        row = {}
        for name, kind, _ in SCHEMA[table]:
            default = _DEFAULTS.get(kind, {} if kind == MAP else [] if kind == SET else EPOCH)
            row[name] = wire_value(kind, fields.pop(name, default), name)
        if fields:
            raise KeyError("unknown %s fields: %s" % (table, sorted(fields)))
        row["uuid"] = row["uuid"] or str(uuid.uuid4())
        ref = new_ref()
        with self.lock:
            gen = self._bump(table)
            self._rows[table][ref] = _Row(row, gen, gen)
            self.changed.notify_all()
        return ref

    def _row(self, cls, ref):
        row = self._rows[cls].get(ref)
        if row is None:
            raise XapiError("HANDLE_INVALID", cls, ref)
        return row

    def exists(self, cls, ref):
        with self.lock:
            return ref in self._rows[cls]

    def get(self, cls, ref, field=None):
        """A deep copy of one object's fields (or of one field); HANDLE_INVALID if unknown."""
        with self.lock:
            fields = self._row(cls, ref).fields
            if field is not None:
                return _copy(fields[field])
            return dict((k, _copy(v)) for k, v in fields.items())

    def update(self, cls, ref, **fields):
        """Change fields of one object and emit a "mod" (nothing happens if nothing changed)."""
        kinds = dict((name, kind) for name, kind, _ in SCHEMA[cls])
        with self.lock:
            row = self._row(cls, ref)
            new = dict(row.fields)
            for name, value in fields.items():
                new[name] = wire_value(kinds[name], value, name)
            if new == row.fields:
                return
            self._rows[cls][ref] = _Row(new, row.created, self._bump(cls))
            self.changed.notify_all()

    def touch(self, cls, ref):
        """Emit a "mod" for an object without changing it (xapi's heartbeat / event.inject)."""
        with self.lock:
            row = self._row(cls, ref)
            self._rows[cls][ref] = _Row(row.fields, row.created, self._bump(cls))
            self.changed.notify_all()

    def delete(self, cls, ref):
        with self.lock:
            row = self._row(cls, ref)
            del self._rows[cls][ref]
            self._deleted[cls][ref] = _Row(None, row.created, self._bump(cls))
            self.changed.notify_all()

    def refs(self, cls):
        with self.lock:
            return list(self._rows[cls])

    def find(self, cls, **match):
        """Refs of the objects of ``cls`` whose fields equal all of ``match``."""
        with self.lock:
            return [ref for ref, row in self._rows[cls].items()
                    if all(row.fields.get(k) == v for k, v in match.items())]

    def by_uuid(self, cls, value):
        found = self.find(cls, uuid=value)
        if not found:
            raise XapiError("UUID_INVALID", cls, value)
        return found[0]

    def record(self, cls, ref):
        """The object's record as ``<cls>.get_record`` returns it."""
        return self.get(cls, ref)

    def add_to_map(self, cls, ref, field, key, value):
        with self.lock:
            current = self.get(cls, ref, field)
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", cls, field, self.get(cls, ref, "uuid"), key)
            current[key] = value
            self.update(cls, ref, **{field: current})

    def remove_from_map(self, cls, ref, field, key):
        with self.lock:
            current = self.get(cls, ref, field)
            if current.pop(key, None) is not None:
                self.update(cls, ref, **{field: current})

    def token(self):
        with self.lock:
            return "%020d,%020d" % (self.generation, self.message_generation)

    # -- event.from ------------------------------------------------------------------------------
    def events_from(self, classes, token, timeout, check):
        """``event.from``: wait up to ``timeout`` s for changes after ``token`` and return them.

        ``check()`` is called about every 0.1 s while waiting; it raises to abandon the call
        (endpoint stopping, session gone). Returns the event.from struct.
        """
        since, since_msg = parse_token(token)
        subs = [parse_subscription(c) for c in _string_list(classes, "classes")]
        try:
            deadline = time.monotonic() + float(timeout)
        except (TypeError, ValueError):
            raise XapiError("FIELD_TYPE_ERROR", "timeout")
        with self.lock:
            while True:
                events = self._collect(subs, since, since_msg)
                remaining = deadline - time.monotonic()
                if events or remaining <= 0:
                    return {"events": events, "valid_ref_counts": self._ref_counts(),
                            "token": self.token()}
                self.changed.wait(min(remaining, 0.1))
                check()

    def _collect(self, subs, since, since_msg):
        found = []
        for cls in SCHEMA:
            low = cls.lower()
            if cls == MESSAGE_CLASS or not _class_wanted(subs, low):
                continue
            for ref, row in self._rows[cls].items():
                if not _object_wanted(subs, low, ref):
                    continue
                if row.created > since:
                    found.append((row.created, "add", low, ref, row.fields))
                elif row.modified > since:
                    found.append((row.modified, "mod", low, ref, row.fields))
            for ref, row in self._deleted[cls].items():
                if row.created <= since < row.modified and _object_wanted(subs, low, ref):
                    found.append((row.modified, "del", low, ref, None))
        found.sort(key=lambda item: item[0])
        events = [_event(str(gen), op, low, ref, fields) for gen, op, low, ref, fields in found]
        if _class_wanted(subs, MESSAGE_CLASS):
            events.extend(self._message_events(subs, since_msg))
        return events

    def _message_events(self, subs, since_msg):
        events = []
        for ref, row in sorted(self._rows[MESSAGE_CLASS].items(), key=lambda i: i[1].created):
            if row.created > since_msg and _object_wanted(subs, MESSAGE_CLASS, ref):
                events.append(_event("0", "add", MESSAGE_CLASS, ref, row.fields))
        for ref, row in self._deleted[MESSAGE_CLASS].items():
            if row.created <= since_msg < row.modified:
                events.append(_event("0", "del", MESSAGE_CLASS, ref, None))
        return events

    def _ref_counts(self):
        return dict((cls.lower(), len(rows)) for cls, rows in self._rows.items()
                    if cls != MESSAGE_CLASS)


def _copy(value):
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _event(ident, op, low, ref, fields):
    ev = {"id": ident, "timestamp": "0.0", "class": low, "operation": op, "ref": ref}
    if fields is not None:
        ev["snapshot"] = dict((k, _copy(v)) for k, v in fields.items())
    return ev


def _string_list(value, field):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise XapiError("FIELD_TYPE_ERROR", field)
    return value


def parse_token(token):
    """``""`` -> (0, 0); ``"%020d,%020d"`` -> two ints; else EVENT_FROM_TOKEN_PARSE_FAILURE."""
    if not isinstance(token, str):
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", str(token))
    if token == "":
        return 0, 0
    parts = token.split(",")
    try:
        if len(parts) != 2:
            raise ValueError(token)
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token)


def parse_subscription(text):
    """``"*"`` -> ("*", None); ``"cls"`` -> (cls, None); ``"cls/ref"`` -> (cls, ref); lowercase."""
    if text == "*":
        return "*", None
    parts = text.split("/", 1)
    return parts[0].lower(), (parts[1] if len(parts) == 2 else None)


def _class_wanted(subs, low):
    return any(cls == "*" or cls == low for cls, _ in subs)


def _object_wanted(subs, low, ref):
    return any(cls == "*" or (cls == low and obj in (None, ref)) for cls, obj in subs)
