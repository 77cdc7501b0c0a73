"""One simulated host's xapi: XML-RPC over a Unix socket and TCP 127.0.0.1, faults, call log.

Every request is served in its own thread, with HTTP/1.0 (one request per connection). A stopped
endpoint closes its listeners but leaves its Unix socket file behind, as a dead xapi does, so
clients get ``ConnectionRefusedError``. ``stop()`` wakes every waiting request thread (hangs,
event.from, forwarded calls), shuts their connections down and joins the threads.
"""
import collections
import logging
import os
import socket
import socketserver
import stat
import threading
import time
import xmlrpc.client
from http.server import BaseHTTPRequestHandler

from iscsi_ha_lab.fake_xapi_calls import Abort, Http500, canonical, handle_call
from iscsi_ha_lab.fake_xapi_db import new_ref

log = logging.getLogger("iscsi-ha.fake-xapi")

CallRecord = collections.namedtuple("CallRecord", "method params via time")
FAULT_KINDS = ("refuse", "hang", "error", "delay", "http500", "drop")
JOIN_SECONDS = 5.0


def wait_any(events, seconds):
    """Wait up to ``seconds``; True as soon as one of ``events`` is set."""
    deadline = time.monotonic() + seconds
    while True:
        if any(e.is_set() for e in events):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        events[-1].wait(min(remaining, 0.05))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = 30.0

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
            params, method = xmlrpc.client.loads(self.rfile.read(length))
            if method is None or _has_none(params):
                raise ValueError("no method name or a nil parameter")
        except Exception as exc:  # malformed XML-RPC: xapi answers with HTTP 500
            log.debug("fake xapi: malformed request: %s", exc)
            return self._send(500, b"<html><body>Internal Error</body></html>", "text/html")
        try:
            response = self.server.endpoint.handle(method, params, self.server.via)
        except Http500:
            return self._send(500, b"<html><body>Internal Error</body></html>", "text/html")
        except Abort:
            self.close_connection = True
            return None
        self._send(200, _marshal(response), "text/xml")

    def _send(self, code, body, ctype):
        self.send_response(code, "Internal Error" if code == 500 else "OK")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        log.debug("fake xapi http: " + fmt, *args)


def _has_none(value):
    if value is None:
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_none(v) for v in value)
    if isinstance(value, dict):
        return any(_has_none(v) for v in value.values())
    return False


def _marshal(response):
    try:
        return xmlrpc.client.dumps((response,), methodresponse=True).encode("utf-8")
    except Exception as exc:  # a bug in the fake, reported the way xapi reports its own
        log.exception("fake xapi: cannot marshal %r", response)
        failure = {"Status": "Failure", "ErrorDescription": ["INTERNAL_ERROR", str(exc)]}
        return xmlrpc.client.dumps((failure,), methodresponse=True).encode("utf-8")


class _Tracked(object):
    """Thread per request, with every thread and connection tracked so stop() can end them."""

    def track(self, endpoint, via):
        self.endpoint = endpoint
        self.via = via
        self._track_lock = threading.Lock()
        self._threads = []
        self._conns = set()

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                  name="fake-xapi-%s-%s" % (self.endpoint.name, self.via))
        thread.daemon = True
        with self._track_lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            self._conns.add(request)
        thread.start()

    def _serve_one(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._track_lock:
                self._conns.discard(request)
            self.shutdown_request(request)

    def handle_error(self, request, client_address):
        log.debug("fake xapi %s: request ended with an error", self.endpoint.name, exc_info=True)

    def end_requests(self, deadline):
        """Shut every open connection down and join the request threads until ``deadline``."""
        with self._track_lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("fake xapi %s: request thread still busy", self.endpoint.name)


class _TCPServer(_Tracked, socketserver.TCPServer):
    allow_reuse_address = True


class _UnixServer(_Tracked, socketserver.UnixStreamServer):
    pass


class FakeXapiHost(object):
    """The xapi of one simulated host; created by ``FakePool.add_host``, driven by the pool."""

    def __init__(self, pool, host_ref, pool_conf_path, uds_path=None, tcp=True):
        self.pool = pool
        self.host_ref = host_ref
        self.pool_conf_path = pool_conf_path
        self.uds_path = uds_path
        self.tcp = tcp
        self.tcp_port = 0
        self.role, self.master_address, self.emergency_error = None, None, None
        self.emergency_default = ["HOST_STILL_BOOTING"]
        self.was_master = False
        self.sessions = {}
        self.running = False
        self.refusing = False
        self.halt = threading.Event()
        self.halt.set()
        self._servers = []
        self._lock = threading.Lock()
        self._faults = []
        self._calls = []

    # -- identity ----------------------------------------------------------------------------
    @property
    def name(self):
        return self.pool.db.get("host", self.host_ref, "name_label")

    @property
    def address(self):
        return self.pool.db.get("host", self.host_ref, "address")

    @property
    def url(self):
        """``http://127.0.0.1:<port>/`` once started with TCP, else None."""
        return "http://127.0.0.1:%d/" % self.tcp_port if self.tcp and self.tcp_port else None

    @property
    def serving(self):
        return self.running and not self.refusing

    def is_master(self):
        """Serving as pool master right now."""
        return self.serving and self.role == "master" and self.emergency_error is None

    def current_master(self):
        """The endpoint this slave's pool.conf points at, if it is serving as master."""
        target = self.pool.endpoint_at(self.master_address) if self.master_address else None
        return target if target is not None and target.is_master() else None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        """Boot: read pool.conf (the pool decides role / emergency mode), then listen."""
        if self.running:
            return
        self.halt = threading.Event()
        self.sessions = {}
        self.pool.boot(self)
        self._open_listeners()
        self.running, self.refusing = True, False
        log.info("fake xapi %s: started as %s%s", self.name, self.role,
                 " (emergency mode)" if self.emergency_error else "")

    def stop(self):
        """xapi goes away: listeners closed (socket file left), calls in flight abandoned."""
        if not self.running:
            return
        self.running = False
        self.halt.set()
        self.sessions = {}
        self._close_listeners()
        log.info("fake xapi %s: stopped", self.name)

    def _open_listeners(self):
        servers = []
        if self.uds_path:
            _remove_socket(self.uds_path)
            os.makedirs(os.path.dirname(os.path.abspath(self.uds_path)), exist_ok=True)
            servers.append(self._server(_UnixServer, self.uds_path, "uds"))
        if self.tcp:
            server = self._server(_TCPServer, ("127.0.0.1", self.tcp_port), "tcp")
            self.tcp_port = server.server_address[1]
            servers.append(server)
        for server in servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name="fake-xapi-%s-listen" % self.name)
            thread.daemon = True
            thread.start()
            server.listen_thread = thread
        self._servers = servers

    def _server(self, cls, address, via):
        server = cls(address, _Handler, bind_and_activate=False)
        server.track(self, via)
        try:
            server.server_bind()
            server.server_activate()
        except Exception:
            server.server_close()
            raise
        return server

    def _close_listeners(self):
        servers, self._servers = self._servers, []
        deadline = time.monotonic() + JOIN_SECONDS
        for server in servers:
            server.shutdown()
            server.server_close()
            server.listen_thread.join(max(0.0, deadline - time.monotonic()))
        for server in servers:
            server.end_requests(deadline)

    def remove_socket(self):
        """Delete the Unix socket file (final cleanup; a dead xapi leaves it behind)."""
        if self.uds_path:
            _remove_socket(self.uds_path)

    # -- sessions -----------------------------------------------------------------------------
    def new_session(self, this_host, originator, local):
        ref = new_ref()
        self.sessions[ref] = {"this_host": this_host, "originator": originator, "local": local}
        return ref

    # -- calls -------------------------------------------------------------------------------------
    def handle(self, method, params, via, origin=None, halts=()):
        """Serve one call (from the wire, or forwarded by a slave) after applying faults."""
        with self._lock:
            self._calls.append(CallRecord(method, tuple(params), via, time.time()))
        fault = self._take_fault(canonical(method))
        halts = list(halts) + [self.halt]
        if fault is not None:
            failure = self._apply_fault(fault, halts)
            if failure is not None:
                return failure
        return handle_call(self, method, params, via, origin, halts[:-1])

    def forward(self, method, params, halts):
        """A slave's Unix-socket call goes to the master; while there is none, it hangs."""
        deadline = time.monotonic() + self.pool.hang_limit
        while True:
            master = self.current_master()
            if master is not None:
                return master.handle(method, params, "forward", self.host_ref, halts)
            if wait_any(halts, 0.05) or time.monotonic() > deadline:
                raise Abort()

    def calls(self, method=None):
        """The call log: CallRecord(method, params, via, time); ``method`` in either spelling."""
        with self._lock:
            calls = list(self._calls)
        if method is None:
            return calls
        return [c for c in calls if canonical(c.method) == canonical(method)]

    def clear_calls(self):
        with self._lock:
            del self._calls[:]

    # -- faults ------------------------------------------------------------------------------------
    def inject_fault(self, kind, method=None, error=None, seconds=None, times=None):
        """Make calls misbehave until ``clear_faults()`` (or for ``times`` matching calls).

        kind: "refuse" (listeners closed: connection refused; whole endpoint, no method),
        "hang" (accept, never answer), "error" (Failure with ErrorDescription ``error``),
        "delay" (answer after ``seconds``), "http500", "drop" (close without answer).
        ``method``: one method (either spelling) or None for every method.
        """
        if kind not in FAULT_KINDS:
            raise ValueError("unknown fault %r" % kind)
        if kind == "refuse":
            if method is not None:
                raise ValueError("refuse applies to the whole endpoint")
            self.refusing = True
            self._close_listeners()
            return
        if kind == "error" and not error:
            raise ValueError("an error fault needs an ErrorDescription list")
        if kind == "delay" and seconds is None:
            raise ValueError("a delay fault needs seconds")
        with self._lock:
            self._faults.append({"kind": kind, "method": canonical(method) if method else None,
                                 "error": [str(e) for e in (error or [])],
                                 "seconds": seconds, "times": times})

    def clear_faults(self):
        with self._lock:
            del self._faults[:]
        if self.refusing and self.running:
            self._open_listeners()
        self.refusing = False

    def _take_fault(self, method):
        with self._lock:
            for fault in self._faults:
                if fault["method"] in (None, method):
                    if fault["times"] is not None:
                        fault["times"] -= 1
                        if fault["times"] <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _apply_fault(self, fault, halts):
        kind = fault["kind"]
        if kind == "error":
            return {"Status": "Failure", "ErrorDescription": list(fault["error"])}
        if kind == "http500":
            raise Http500()
        if kind == "drop":
            raise Abort()
        if kind == "delay":
            if wait_any(halts, min(float(fault["seconds"]), self.pool.hang_limit)):
                raise Abort()
            return None
        wait_any(halts, self.pool.hang_limit)  # hang
        raise Abort()


def _remove_socket(path):
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
