"""The peer host, reached through XAPI: ``host.call_plugin(peer, "iscsi-ha", fn, args)`` runs
the iscsi-ha plugin (plugins/iscsi-ha) in the peer's dom0, which runs the same library code as
``iscsi-cfg`` there. Every call is bounded by a socket timeout; the plugin answers JSON.
"""
import json
import threading
import time

from iscsi_ha.adapters.xapi import XapiError

PLUGIN = "iscsi-ha"


class PeerError(Exception):
    """The peer could not be reached or answered something unusable."""


def peer_ref(xapi):
    """The other host of this two-host pool."""
    me = xapi.this_host()
    others = [ref for ref in xapi.call("host.get_all") if ref != me]
    if len(others) != 1:
        raise PeerError("the pool has %d other host(s); iscsi-ha needs exactly one peer"
                        % len(others))
    return others[0]


def call(ctx, fn, args=None, timeout=None):
    """Run plugin function ``fn`` on the peer; its decoded JSON answer. ``timeout`` bounds
    each XAPI call (default XAPI_TIMEOUT)."""
    xapi = ctx.xapi(timeout)
    try:
        ref = peer_ref(xapi)
        name = xapi.call("host.get_name_label", ref)
        text = xapi.call_plugin(ref, PLUGIN, fn, args or {})
    except XapiError as exc:
        raise PeerError("cannot reach the peer through XAPI: %s" % exc)
    finally:
        xapi.close()
    try:
        answer = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError, TypeError):
        raise PeerError("the peer's plugin answered %s with something that is not JSON: %.120r"
                        % (fn, text))
    if not isinstance(answer, dict):
        raise PeerError("the peer's plugin answered %s with %.120r" % (fn, text))
    answer.setdefault("host", name)
    return answer


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


def status(ctx, timeout=None):
    """The peer's status document as its agent published it (plus agent_running, stale),
    checked by the same defensive reader as this host's (a malformed one is a PeerError)."""
    from iscsi_ha import status_read
    answer = call(ctx, "status", timeout=timeout)
    if answer.get("status_unknown") or "updated" not in answer:
        return answer            # the peer said its own status is unknown: shown as such
    try:
        status_read.check(answer)
    except status_read.Malformed as exc:
        raise PeerError("the peer's status document %s" % exc)
    return answer


class PeerWatcher(object):
    """Fetches the peer's status in a background thread so that a view never waits on XAPI.
    ``latest()`` -> (document or None, error sentence or '', wall time of the answer)."""

    def __init__(self, ctx, interval=3.0, timeout=None):
        self.ctx = ctx
        self.interval = interval
        self.timeout = timeout or min(ctx.config.XAPI_TIMEOUT, 3.0)
        self._lock = threading.Lock()
        self._latest = (None, "asking XAPI...", None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-status")
        self._thread.daemon = True

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def latest(self):
        with self._lock:
            return self._latest

    def fetch_once(self):
        try:
            found = (status(self.ctx, self.timeout), "", time.time())
        except Exception as exc:  # the view shows any failure as text
            found = (None, str(exc) or type(exc).__name__, time.time())
        with self._lock:
            self._latest = found
        return found

    def _run(self):
        while not self._stop.is_set():
            self.fetch_once()
            self._stop.wait(self.interval)
