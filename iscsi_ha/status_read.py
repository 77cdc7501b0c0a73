"""One defensive reader of the status document the agent publishes (``STATUS_FILE``).

Whoever shows or acts on the status (``iscsi-cfg status``, ``set``'s running-agent guard, the
plugin) reads it through :func:`read`: the file is read with a size bound and a file-type check,
parsed without NaN/Infinity, and every field a reader uses is checked for its type and range. A
document that fails any check is *unknown*, with one sentence saying why; it is never partly
trusted. Fields this reader does not know (added by newer agents) are kept and ignored.
"""
import collections
import errno
import json
import math
import time

from iscsi_ha import files

MAX_DEPTH = 32
# How far in the future ``updated`` (or another time) may be before the document is refused: a
# status from the future would never go stale.
FUTURE_SLACK = 60.0

StatusRead = collections.namedtuple("StatusRead", "document problem missing")


class Malformed(ValueError):
    pass


def _constant(name):
    raise Malformed("holds %s, which is not a number JSON allows" % name)


def _depth(value, limit=MAX_DEPTH):
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise Malformed("is nested more than %d levels deep" % limit)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


_NUMBER = (int, float)


def _is(value, kinds, optional=False):
    if value is None:
        return optional
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        return False
    return isinstance(value, kinds)


def _need(document, where, key, kinds, optional=False):
    value = document.get(key)
    if key not in document and optional:
        return None
    if not _is(value, kinds, optional):
        raise Malformed("field %s%s is %s, expected %s" % (
            where, key, json.dumps(value)[:40] if key in document else "missing",
            _kind_words(kinds, optional)))
    return value


def _kind_words(kinds, optional):
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
             dict: "an object", list: "a list"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    words = " or ".join(sorted(set(names.get(k, k.__name__) for k in kinds)))
    return words + (" or null" if optional else "")


def _time(document, where, key, now, optional=True):
    value = _need(document, where, key, _NUMBER, optional)
    if value is None:
        return
    if not math.isfinite(value) or value < 0:
        raise Malformed("field %s%s is %r, not a time" % (where, key, value))
    if value > now + FUTURE_SLACK:
        raise Malformed("field %s%s is %.0f s in the future (a clock set back, or a forged "
                        "file)" % (where, key, value - now))


def _finite(document, where, key, optional=True, low=None, high=None):
    value = _need(document, where, key, _NUMBER, optional)
    if value is None:
        return
    if not math.isfinite(value) or (low is not None and value < low) or \
            (high is not None and value > high):
        raise Malformed("field %s%s is %r, out of range" % (where, key, value))


def check(document, now=None, full=True):
    """Raise :class:`Malformed` unless ``document`` has the shape every reader relies on.
    ``full=False`` checks only the core (an object, not too deep, ``updated`` a past time,
    ``agent.pid`` an integer): enough for the watchdog and the demote wait, which read no more."""
    now = time.time() if now is None else now
    if not isinstance(document, dict):
        raise Malformed("is %s, not a JSON object" % type(document).__name__.replace(
            "NoneType", "null"))
    _depth(document)
    _time(document, "", "updated", now, optional=False)
    agent = _need(document, "", "agent", dict, optional=True) or {}
    _need(agent, "agent.", "pid", int, optional=True)
    if not full:
        return document
    _need(document, "", "version", int, optional=True)
    for key in ("hostname", "updated_iso", "health", "manual_mode"):
        _need(document, "", key, str, optional=True)
    _need(document, "", "desired_role", str, optional=True)
    _need(document, "", "drbd_error", str, optional=True)
    agent = _need(document, "", "agent", dict, optional=True) or {}
    _need(agent, "agent.", "pid", int, optional=True)
    _need(agent, "agent.", "version", str, optional=True)
    _time(agent, "agent.", "started", now)
    run = _need(document, "", "pass", dict, optional=True) or {}
    _need(run, "pass.", "number", int, optional=True)
    _need(run, "pass.", "trigger", str, optional=True)
    _time(run, "pass.", "started", now)
    _finite(run, "pass.", "duration_s", low=0)
    pool = _need(document, "", "pool", dict, optional=True)
    if pool is not None:
        _need(pool, "pool.", "role", str)
        _need(pool, "pool.", "master_address", str, optional=True)
        _need(pool, "pool.", "detail", str, optional=True)
    for name, state in (_need(document, "", "drbd", dict, optional=True) or {}).items():
        where = "drbd.%s." % name
        if not isinstance(state, dict):
            raise Malformed("field drbd.%s is not an object" % name)
        for key in ("role", "peer_role", "connection", "disk", "peer_disk"):
            _need(state, where, key, str)
        _finite(state, where, "sync_percent", low=0, high=100)
    for key in ("split_brain", "problems"):
        for item in _need(document, "", key, list, optional=True) or []:
            if not isinstance(item, str):
                raise Malformed("field %s holds %s, expected strings" % (key, json.dumps(item)[:40]))
    target = _need(document, "", "target", dict, optional=True)
    if target is not None:
        _need(target, "target.", "running", bool, optional=True)
        _need(target, "target.", "serving", bool, optional=True)
        _need(target, "target.", "connections", int, optional=True)
        _need(target, "target.", "error", str, optional=True)
        for item in _need(target, "target.", "missing", list, optional=True) or []:
            if not isinstance(item, str):
                raise Malformed("field target.missing holds a non-string")
    vip = _need(document, "", "floating_ip", dict, optional=True) or {}
    for key in ("address", "interface", "error"):
        _need(vip, "floating_ip.", key, str, optional=True)
    _need(vip, "floating_ip.", "local", bool, optional=True)
    decision = _need(document, "", "decision", dict, optional=True) or {}
    _need(decision, "decision.", "reason", str, optional=True)
    for index, entry in enumerate(_need(document, "", "last_actions", list, optional=True) or []):
        where = "last_actions[%d]." % index
        if not isinstance(entry, dict):
            raise Malformed("field last_actions[%d] is not an object" % index)
        _need(entry, where, "action", str, optional=True)
        _need(entry, where, "ok", bool, optional=True)
        _need(entry, where, "skipped", bool, optional=True)
        _finite(entry, where, "duration_s", low=0)
        _time(entry, where, "at", now)
    return document


def parse(text, now=None, full=True):
    """The checked document from JSON text, or :class:`Malformed`."""
    try:
        document = json.loads(text, parse_constant=_constant)
    except RecursionError:
        raise Malformed("is nested too deeply to read")
    except ValueError as exc:
        if isinstance(exc, Malformed):
            raise
        raise Malformed("is not complete JSON (%s)" % exc)
    return check(document, now, full)


def read(path, now=None, limit=files.STATUS_LIMIT, full=True):
    """:class:`StatusRead`: (document, None, False) when usable, else (None, one sentence,
    whether the file is simply absent)."""
    try:
        text = files.read_bounded(path, limit).decode("utf-8", "replace")
    except (OSError, IOError) as exc:
        missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)   # no such file can exist
        return StatusRead(None, "no readable status at %s: %s" % (
            path, "no such file (the agent has not published one)" if missing
            else exc.strerror or exc), missing)
    try:
        return StatusRead(parse(text, now, full), None, False)
    except Malformed as exc:
        return StatusRead(None, "the status file %s %s" % (path, exc), False)
