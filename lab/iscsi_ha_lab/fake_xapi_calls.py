"""The XenAPI methods of the fake XAPI and the routing of one call arriving at one host.

Routing follows xapi: look the method up (``class.method`` or the alternative ``class_method``)
-> MESSAGE_METHOD_UNKNOWN; check the count of arguments (session excluded) ->
MESSAGE_PARAMETER_COUNT_MISMATCH; a host in emergency mode answers every non-emergency call with
its stored error; a slave answers TCP calls with HOST_IS_SLAVE and forwards Unix-socket calls to
its master; then the session is checked (SESSION_INVALID) and the method runs.
"""
import collections
import logging

from iscsi_ha_lab.fake_xapi_db import MAP, SCHEMA, XapiError, now_datetime

log = logging.getLogger("iscsi-ha.fake-xapi")

LOGIN, LOCAL_LOGIN, LOCAL, NORMAL, NOSESSION = "login", "local_login", "local", "normal", "none"
MESSAGE_CLASSES = ("VM", "Host", "SR", "Pool", "VMPP", "VMSS", "PVS_proxy", "VDI", "Certificate")

Method = collections.namedtuple("Method", "name low high fn kind")


class Abort(Exception):
    """Close the client's connection without an answer (the serving xapi went away)."""


class Http500(Exception):
    """Answer with ``HTTP/1.1 500 Internal Error`` instead of an XML-RPC response."""


class CallContext(object):
    """One call being served: where it arrived, on whose behalf, and how to abandon it."""

    def __init__(self, endpoint, via, origin, halts):
        self.endpoint = endpoint
        self.pool = endpoint.pool
        self.db = endpoint.pool.db
        self.via = via
        self.origin = origin or endpoint.host_ref
        self.halts = list(halts) + [endpoint.halt]
        self.session = None

    def check(self):
        """Raise if the call must end now: an endpoint on its path stopped, or its session died."""
        if any(h.is_set() for h in self.halts):
            raise Abort()
        if self.session is not None and self.session not in self.endpoint.sessions:
            raise XapiError("SESSION_INVALID", self.session)

    def sleep(self, seconds):
        """Wait ``seconds`` (bounded by the pool's hang limit) unless the call is abandoned."""
        remaining = min(float(seconds), self.pool.hang_limit)
        while remaining > 0:
            self.check()
            self.halts[-1].wait(min(remaining, 0.05))
            remaining -= 0.05
        self.check()


# -- explicit methods ------------------------------------------------------------------------
def _login(ctx, user, password, version="1.1", originator=""):
    if ctx.via == "tcp":
        ctx.pool.check_credentials(user, password)
    return ctx.endpoint.new_session(ctx.origin, str(originator), local=False)


def _slave_local_login(ctx, user, password):
    if ctx.via == "tcp":
        ctx.pool.check_credentials(user, password)
    return ctx.endpoint.new_session(ctx.endpoint.host_ref, "", local=True)


def _logout(ctx):
    ctx.endpoint.sessions.pop(ctx.session, None)
    return ""


def _get_this_host(ctx, session):
    record = ctx.endpoint.sessions.get(session)
    if record is None:
        raise XapiError("HANDLE_INVALID", "session", session)
    return record["this_host"]


def _host_arg(ctx, host):
    if not ctx.db.exists("host", _text(host)):
        raise XapiError("HANDLE_INVALID", "host", host)
    return host


def _assert_ha_disabled(ctx):
    if ctx.db.get("pool", ctx.pool.pool_ref, "ha_enabled"):
        raise XapiError("HA_IS_ENABLED")


def _designate_new_master(ctx, host):
    _assert_ha_disabled(ctx)
    ctx.pool.request_designate(_host_arg(ctx, host))
    return ""


def _emergency_transition_to_master(ctx):
    _assert_ha_disabled(ctx)
    ctx.pool.become_master_after_fuse(ctx.endpoint)
    return ""


def _emergency_reset_master(ctx, master_address):
    _assert_ha_disabled(ctx)
    ctx.pool.become_slave_of(ctx.endpoint, _text(master_address))
    return ""


def _recover_slaves(ctx):
    return ctx.pool.recover_slaves_from(ctx.endpoint)


def _call_plugin(ctx, host, plugin, fn, args):
    if not isinstance(args, dict):
        raise XapiError("FIELD_TYPE_ERROR", "args")
    return ctx.pool.call_plugin(_host_arg(ctx, host), _text(plugin), _text(fn), args,
                                caller=ctx.endpoint.host_ref)


def _is_in_emergency_mode(ctx):
    return ctx.endpoint.emergency_error is not None


def _local_assert_healthy(ctx):
    if ctx.endpoint.emergency_error is not None:
        raise XapiError(*ctx.endpoint.emergency_error)
    return ""


def _sr_scan(ctx, sr):
    ctx.db.get("SR", _text(sr))
    return ""


def _pbd_plug(ctx, pbd):
    ctx.pool.set_pbd_attached(_text(pbd), True)
    return ""


def _pbd_unplug(ctx, pbd):
    ctx.pool.set_pbd_attached(_text(pbd), False)
    return ""


def _message_create(ctx, name, priority, cls, obj_uuid, body):
    if cls not in MESSAGE_CLASSES:
        raise XapiError("FIELD_TYPE_ERROR", "cls")
    table = {"Host": "host", "SR": "SR", "Pool": "pool"}.get(cls)
    if table is not None and not ctx.db.find(table, uuid=obj_uuid):
        raise XapiError("UUID_INVALID", cls, obj_uuid)
    return ctx.db.create("message", name=_text(name), priority=priority, cls=cls,
                         obj_uuid=_text(obj_uuid), timestamp=now_datetime(), body=_text(body))


def _destroy(cls):
    def destroy(ctx, ref):
        ctx.db.delete(cls, _text(ref))
        return ""
    return destroy


def _event_from(ctx, classes, token, timeout):
    try:
        timeout = min(float(timeout), ctx.pool.hang_limit)
    except (TypeError, ValueError):
        raise XapiError("FIELD_TYPE_ERROR", "timeout")
    return ctx.db.events_from(classes, token, timeout, ctx.check)


def _event_inject(ctx, cls, ref):
    table = dict((c.lower(), c) for c in SCHEMA).get(_text(cls).lower())
    if table is None or not ctx.db.exists(table, _text(ref)):
        raise XapiError("HANDLE_INVALID", cls, ref)
    with ctx.db.lock:
        generation = ctx.db.generation
        ctx.db.touch(table, ref)
    return "%020d,%020d" % (generation, 0)


def _event_current_id(ctx):
    return str(ctx.db.generation)


def _list_methods(ctx, *ignored):
    names = list(EXPLICIT)
    for cls in SCHEMA:
        names.extend(cls + "." + op for op in ("get_all", "get_all_records", "get_record",
                                                "get_by_uuid"))
    return sorted(names)


def _m(name, low, fn, kind=NORMAL, high=None):
    return Method(name, low, low if high is None else high, fn, kind)


EXPLICIT = dict((m.name, m) for m in (
    _m("session.login_with_password", 2, _login, LOGIN, 4),
    _m("session.slave_local_login_with_password", 2, _slave_local_login, LOCAL_LOGIN),
    _m("session.logout", 0, _logout),
    _m("session.local_logout", 0, _logout, LOCAL),
    _m("session.get_this_host", 1, _get_this_host),
    _m("pool.designate_new_master", 1, _designate_new_master),
    _m("pool.emergency_transition_to_master", 0, _emergency_transition_to_master, LOCAL),
    _m("pool.emergency_reset_master", 1, _emergency_reset_master, LOCAL),
    _m("pool.recover_slaves", 0, _recover_slaves),
    _m("host.call_plugin", 4, _call_plugin),
    _m("host.is_in_emergency_mode", 0, _is_in_emergency_mode, LOCAL),
    _m("host.local_assert_healthy", 0, _local_assert_healthy, LOCAL),
    _m("SR.scan", 1, _sr_scan),
    _m("PBD.plug", 1, _pbd_plug),
    _m("PBD.unplug", 1, _pbd_unplug),
    _m("message.create", 5, _message_create),
    _m("message.destroy", 1, _destroy("message")),
    _m("task.destroy", 1, _destroy("task")),
    _m("event.from", 3, _event_from),
    _m("event.inject", 2, _event_inject),
    _m("event.get_current_id", 0, _event_current_id),
    _m("system.listMethods", 0, _list_methods, NOSESSION, 1),
))
CLASSES = sorted(set(SCHEMA) | set(n.split(".")[0] for n in EXPLICIT), key=len, reverse=True)


# -- implicit (generated) methods ----------------------------------------------------------------
def _text(value):
    return value if isinstance(value, str) else str(value)


def _implicit(name):
    cls, _, op = name.partition(".")
    if cls not in SCHEMA:
        return None
    fields = dict((f, (kind, rw)) for f, kind, rw in SCHEMA[cls])
    db_call = {
        "get_all": (0, lambda ctx: ctx.db.refs(cls)),
        "get_all_records": (0, lambda ctx: _all_records(ctx, cls)),
        "get_record": (1, lambda ctx, ref: ctx.db.record(cls, _text(ref))),
        "get_by_uuid": (1, lambda ctx, value: ctx.db.by_uuid(cls, _text(value))),
    }.get(op)
    if db_call is None and op == "get_by_name_label" and "name_label" in fields:
        db_call = (1, lambda ctx, label: ctx.db.find(cls, name_label=_text(label)))
    if db_call is None:
        db_call = _field_method(cls, op, fields)
    return None if db_call is None else _m(name, db_call[0], db_call[1])


def _field_method(cls, op, fields):
    for prefix in ("get_", "set_", "add_to_", "remove_from_"):
        if not op.startswith(prefix):
            continue
        field = op[len(prefix):]
        kind, settable = fields.get(field, (None, False))
        if kind is None or (prefix != "get_" and not settable):
            return None
        if prefix != "get_" and prefix != "set_" and kind != MAP:
            return None
        return _FIELD_OPS[prefix](cls, field)
    return None


def _all_records(ctx, cls):
    with ctx.db.lock:
        return dict((ref, ctx.db.record(cls, ref)) for ref in ctx.db.refs(cls))


def _string_args(*values):
    if not all(isinstance(v, str) for v in values):
        raise XapiError("FIELD_TYPE_ERROR", "key")


def _getter(cls, field):
    return 1, lambda ctx, ref: ctx.db.get(cls, _text(ref), field)


def _setter(cls, field):
    def set_field(ctx, ref, value):
        ctx.db.update(cls, _text(ref), **{field: value})
        return ""
    return 2, set_field


def _map_adder(cls, field):
    def add_to(ctx, ref, key, value):
        _string_args(key, value)
        ctx.db.add_to_map(cls, _text(ref), field, key, value)
        return ""
    return 3, add_to


def _map_remover(cls, field):
    def remove_from(ctx, ref, key):
        _string_args(key)
        ctx.db.remove_from_map(cls, _text(ref), field, key)
        return ""
    return 2, remove_from


_FIELD_OPS = {"get_": _getter, "set_": _setter, "add_to_": _map_adder,
              "remove_from_": _map_remover}


def _async(inner):
    def run_as_task(ctx, *args):
        task = ctx.db.create("task", name_label="Async." + inner.name, status="pending",
                             created=now_datetime())
        try:
            value = inner.fn(ctx, *args)
        except XapiError as exc:
            ctx.db.update("task", task, status="failure", error_info=exc.details,
                          finished=now_datetime(), progress=1.0)
        else:
            result = "" if value == "" else "<value>%s</value>" % value
            ctx.db.update("task", task, status="success", result=result,
                          finished=now_datetime(), progress=1.0)
        return task
    return _m("Async." + inner.name, inner.low, run_as_task, NORMAL, inner.high)


def canonical(name):
    """``class_method`` -> ``class.method`` when that names a known class; else unchanged."""
    if "." in name:
        return name
    for cls in CLASSES:
        if name.startswith(cls + "_"):
            return cls + "." + name[len(cls) + 1:]
    return name


def lookup(name):
    """The Method called ``name`` (either spelling, ``Async.`` allowed) or MESSAGE_METHOD_UNKNOWN."""
    wanted = canonical(name)
    if wanted.startswith("Async."):
        inner = EXPLICIT.get(wanted[6:]) or _implicit(wanted[6:])
        if inner is not None and inner.kind == NORMAL:
            return _async(inner)
        raise XapiError("MESSAGE_METHOD_UNKNOWN", name)
    found = EXPLICIT.get(wanted) or _implicit(wanted)
    if found is None:
        raise XapiError("MESSAGE_METHOD_UNKNOWN", name)
    return found


# -- routing ---------------------------------------------------------------------------------------
def _split_args(method, name, params):
    has_session = method.kind not in (LOGIN, LOCAL_LOGIN, NOSESSION)
    session, args = (params[0], params[1:]) if has_session and params else (None, params)
    if not (method.low <= len(args) <= method.high) or (has_session and not params):
        raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", name, method.high, len(args))
    return session, args


def _must_forward(ctx, method):
    """Emergency / slave rules; True when the call goes to the master untouched."""
    endpoint = ctx.endpoint
    if method.kind in (LOCAL_LOGIN, LOCAL, NOSESSION):
        return False
    if endpoint.emergency_error is not None:
        raise XapiError(*endpoint.emergency_error)
    if endpoint.role == "master":
        return False
    if ctx.via == "tcp":
        raise XapiError("HOST_IS_SLAVE", endpoint.master_address)
    return True


def _check_session(ctx, method, session):
    endpoint = ctx.endpoint
    if isinstance(session, str) and session in endpoint.sessions:
        return session
    if method.kind == LOCAL and endpoint.role != "master":
        master = endpoint.current_master()
        if master is not None and session in master.sessions:
            return session
    raise XapiError("SESSION_INVALID", _text(session))


def handle_call(endpoint, name, params, via, origin=None, halts=()):
    """Serve one call on ``endpoint``; returns the XenAPI response struct."""
    ctx = CallContext(endpoint, via, origin, halts)
    try:
        method = lookup(name)
        session, args = _split_args(method, name, list(params))
        if _must_forward(ctx, method):
            return endpoint.forward(name, params, ctx.halts)
        if method.kind in (LOCAL, NORMAL):
            ctx.session = _check_session(ctx, method, session)
        value = method.fn(ctx, *args)
        return {"Status": "Success", "Value": "" if value is None else value}
    except XapiError as exc:
        return {"Status": "Failure", "ErrorDescription": exc.details}
    except (Abort, Http500):
        raise
    except Exception as exc:  # a bug in the fake or in a lab handler: xapi's INTERNAL_ERROR
        log.exception("fake xapi: %s failed", name)
        return {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", str(exc)]}
