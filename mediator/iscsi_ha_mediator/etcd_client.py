"""A small etcd v3 client over etcd's JSON gateway, standard library only.

Why the standard library and not a client library (checked 2026-12):
- ``etcd3`` (kragniz/python-etcd3), the best known one, has had no release since 0.12.0 (2020);
  with current protobuf (4.x/5.x) ``import etcd3`` fails ("Descriptors cannot be created
  directly", issues #2000, #2242, #2709 still open) and its fix PRs (#2616, #2708, #2716) are
  unmerged. It also pulls grpcio (a ~10 MB native wheel) into a service that is otherwise small.
- ``etcd3-py`` (gateway-based): last release 0.1.6, May 2019.
- ``etcd3gw`` (OpenStack, gateway-based) is maintained (2.5.0), but it is synchronous, brings
  requests, urllib3, futurist and pbr, and hides the transaction body we need to build exactly.
The mediator needs eight calls (range, put, delete, txn, lease grant/keepalive/revoke, status,
plus authenticate); each is one JSON POST with base64 keys and values. ~300 lines of stdlib code
with our own timeouts, failover and error mapping are easier to audit than any of the above.

What it does
- ``EtcdSettings``: endpoints (``http://`` or ``https://`` host:port, several for failover), TLS
  (CA file, optional client certificate and key), user and password, per-request timeout and
  key prefix. ``validate()`` raises ``EtcdSettingsError`` with one line naming what is wrong.
- ``EtcdClient``: one persistent HTTP/1.1 connection per endpoint and thread. A request goes to
  the endpoint that answered last; on a transport error, a timeout or an "unavailable" answer
  (no leader, request timed out, 5xx) it moves to the next endpoint, at most once round the list
  and never past ``total_timeout``. It then raises ``EtcdUnavailable``. Each request has its
  own socket timeout, so no call can hang.
- Outcome of a failed write: a transport error after the request was sent leaves it unknown
  whether etcd applied it. The client does not hide that: it may send a ``txn`` again to the next
  endpoint, which is safe only because every write the mediator makes is a ``txn`` guarded by a
  compare on a mod revision (a duplicate then fails its compare). Callers resolve "did my first
  attempt land?" by reading (see ``etcd_backend``); plain ``put``/``delete`` are not retried.
- Auth: with a user, the client calls ``/v3/auth/authenticate`` and sends the token in the
  ``Authorization`` header; an "invalid auth token" answer (tokens expire) re-authenticates
  once. Wrong credentials raise ``EtcdAuthError`` (never retried: that would not help).

The mediator is a threaded or asyncio service on a modern Python; from asyncio call these
methods through ``asyncio.to_thread`` (writes are rare: a promote, a fence; heartbeats never
reach etcd).
"""
import base64
import http.client
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse

DEFAULT_TIMEOUT = 2.0
DEFAULT_TOTAL_TIMEOUT = 6.0
DEFAULT_PREFIX = "/iscsi-ha-mediator/"

# gRPC status codes that etcd's gateway returns in the JSON error body.
_UNAVAILABLE_CODES = {4, 14}  # DEADLINE_EXCEEDED, UNAVAILABLE ("no leader", "request timed out")
_UNAUTHENTICATED = 16
_PERMISSION_DENIED = 7
_INVALID_TOKEN_TEXT = "invalid auth token"
_NO_USER_TEXT = "user name is empty"  # etcd's answer to a request without a token


class EtcdError(Exception):
    """An etcd call failed; ``str()`` is one line naming the cause."""


class EtcdSettingsError(EtcdError):
    """The etcd settings are invalid."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (or every one said it cannot serve now).

    ``maybe_sent`` is False only when no attempt can have reached etcd (every connection was
    refused or closed before the request was read): a write then certainly did not apply."""

    def __init__(self, message, maybe_sent=True):
        EtcdError.__init__(self, message)
        self.maybe_sent = maybe_sent


class EtcdAuthError(EtcdError):
    """etcd refused the credentials or the permission."""


class EtcdRequestError(EtcdError):
    """etcd answered with an error that retrying elsewhere would not fix."""


def _b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text or "")


def prefix_end(prefix):
    """The range_end that selects every key starting with ``prefix`` (bytes)."""
    if isinstance(prefix, str):
        prefix = prefix.encode("utf-8")
    buf = bytearray(prefix)
    while buf:
        if buf[-1] < 0xFF:
            buf[-1] += 1
            return bytes(buf)
        buf.pop()
    return b"\0"  # every key


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NotSent(Exception):
    """The request certainly did not reach etcd; safe to send elsewhere."""

    def __init__(self, cause, reused):
        Exception.__init__(self, str(cause))
        self.cause = cause
        self.reused = reused


class KeyValue(object):
    __slots__ = ("key", "value", "mod_revision", "create_revision", "version", "lease")

    def __init__(self, raw):
        self.key = _unb64(raw.get("key"))
        self.value = _unb64(raw.get("value"))
        self.mod_revision = int(raw.get("mod_revision", 0))
        self.create_revision = int(raw.get("create_revision", 0))
        self.version = int(raw.get("version", 0))
        self.lease = int(raw.get("lease", 0))

    def __repr__(self):
        return "KeyValue(%r, mod_revision=%d)" % (self.key, self.mod_revision)


class TxnResult(object):
    __slots__ = ("succeeded", "revision", "responses")

    def __init__(self, raw):
        self.succeeded = bool(raw.get("succeeded", False))
        self.revision = int(raw.get("header", {}).get("revision", 0))
        self.responses = raw.get("responses") or []

    def ranges(self):
        """The KeyValues of every range response, in order (one list per range op)."""
        out = []
        for resp in self.responses:
            if "response_range" in resp:
                out.append([KeyValue(kv) for kv in resp["response_range"].get("kvs") or []])
        return out


# -- transaction building blocks -------------------------------------------------------------
def cmp_mod_revision(key, revision, result="EQUAL"):
    """Compare a key's mod revision (0 = the key does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": result, "mod_revision": str(int(revision))}


def cmp_version(key, version, result="EQUAL"):
    return {"key": _b64(key), "target": "VERSION", "result": result, "version": str(int(version))}


def op_put(key, value, lease=0):
    body = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(int(lease))
    return {"request_put": body}


def op_range(key, range_end=None):
    body = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_range": body}


def op_delete(key, range_end=None):
    body = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return {"request_delete_range": body}


class EtcdSettings(object):
    """Where etcd is and how to talk to it. ``validate()`` before use."""

    def __init__(self, endpoints, ca_file=None, cert_file=None, key_file=None, username=None,
                 password=None, timeout=DEFAULT_TIMEOUT, total_timeout=DEFAULT_TOTAL_TIMEOUT,
                 prefix=DEFAULT_PREFIX):
        if isinstance(endpoints, str):
            endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
        self.endpoints = list(endpoints or [])
        self.ca_file = ca_file or None
        self.cert_file = cert_file or None
        self.key_file = key_file or None
        self.username = username or None
        self.password = password
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.prefix = prefix

    def parsed_endpoints(self):
        """[(scheme, host, port)] for every endpoint; EtcdSettingsError on a bad one."""
        out = []
        for ep in self.endpoints:
            url = urllib.parse.urlsplit(ep)
            if url.scheme not in ("http", "https"):
                raise EtcdSettingsError(
                    "etcd endpoint %r: scheme must be http:// or https://" % ep)
            if not url.hostname:
                raise EtcdSettingsError("etcd endpoint %r: no host" % ep)
            try:
                port = url.port
            except ValueError:
                raise EtcdSettingsError("etcd endpoint %r: port is not a number 1-65535" % ep)
            if port is None:
                raise EtcdSettingsError("etcd endpoint %r: give the port (e.g. :2379)" % ep)
            if url.path not in ("", "/") or url.query or url.fragment or url.username:
                raise EtcdSettingsError("etcd endpoint %r: only scheme://host:port" % ep)
            out.append((url.scheme, url.hostname, port))
        return out

    def validate(self):
        """Raise EtcdSettingsError (one line) when something is wrong; return self otherwise."""
        if not self.endpoints:
            raise EtcdSettingsError("etcd endpoints: none given (e.g. https://10.0.0.5:2379)")
        parsed = self.parsed_endpoints()
        if len(set(parsed)) != len(parsed):
            raise EtcdSettingsError("etcd endpoints: the same endpoint is listed twice")
        schemes = {p[0] for p in parsed}
        if len(schemes) > 1:
            raise EtcdSettingsError("etcd endpoints: mix of http:// and https://; use one")
        tls = "https" in schemes
        for name in ("timeout", "total_timeout"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 60:
                raise EtcdSettingsError("etcd %s: %r is not a number of seconds in (0, 60]"
                                        % (name, val))
        if self.total_timeout < self.timeout:
            raise EtcdSettingsError("etcd total_timeout (%s) is below timeout (%s)"
                                    % (self.total_timeout, self.timeout))
        if (self.cert_file is None) != (self.key_file is None):
            raise EtcdSettingsError("etcd TLS: give both cert_file and key_file, or neither")
        if not tls and (self.ca_file or self.cert_file):
            raise EtcdSettingsError("etcd TLS files are set but the endpoints are http://; "
                                    "use https:// endpoints")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise EtcdSettingsError("etcd %s %s: not a readable file" % (name, path))
        if self.username is not None and not self.password:
            raise EtcdSettingsError("etcd username %r is set but password is empty"
                                    % self.username)
        if self.password and self.username is None:
            raise EtcdSettingsError("etcd password is set but username is not")
        if self.username is not None and not tls:
            remote = [p[1] for p in parsed if not _is_loopback(p[1])]
            if remote:
                raise EtcdSettingsError("etcd password would cross the network in clear text "
                                        "to %s; use https:// endpoints" % remote[0])
        if not isinstance(self.prefix, str) or not self.prefix.startswith("/") \
                or not self.prefix.endswith("/") or len(self.prefix) < 2:
            raise EtcdSettingsError("etcd prefix %r: must start and end with / (e.g. %s)"
                                    % (self.prefix, DEFAULT_PREFIX))
        return self

    def ssl_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class EtcdClient(object):
    """Thread-safe; one kept-alive connection per endpoint and thread."""

    def __init__(self, settings):
        self.settings = settings.validate()
        self._endpoints = settings.parsed_endpoints()
        self._ssl = settings.ssl_context() if self._endpoints[0][0] == "https" else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._preferred = 0
        self._token = None
        self.last_endpoint = None

    # -- transport ---------------------------------------------------------------------------
    def _conn(self, index, timeout):
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(index)
        if conn is None:
            scheme, host, port = self._endpoints[index]
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conns[index] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self, index):
        conns = getattr(self._local, "conns", {})
        conn = conns.pop(index, None)
        if conn is not None:
            conn.close()

    def close(self):
        for index in list(getattr(self._local, "conns", {})):
            self._drop(index)

    def _send(self, index, path, body, timeout):
        """One HTTP exchange: (status, decoded JSON).

        Raises ``_NotSent`` when the request certainly did not reach etcd (connect refused,
        or a kept-alive connection that the server had already closed), and OSError or
        HTTPException when it may have."""
        headers = {"Content-Type": "application/json"}
        token = self._token
        if token and not path.startswith("/v3/auth/authenticate"):
            headers["Authorization"] = token
        conn = self._conn(index, timeout)
        reused = conn.sock is not None
        try:
            conn.request("POST", path, json.dumps(body), headers)
        except (ConnectionRefusedError, BrokenPipeError, ConnectionResetError) as exc:
            self._drop(index)
            raise _NotSent(exc, reused)
        except BaseException:
            self._drop(index)
            raise
        try:
            resp = conn.getresponse()
            data = resp.read()
        except http.client.RemoteDisconnected as exc:
            self._drop(index)
            if reused:  # an idle connection the server closed before reading this request
                raise _NotSent(exc, reused)
            raise
        except BaseException:
            self._drop(index)
            raise
        try:
            decoded = json.loads(data.decode("utf-8")) if data else {}
        except ValueError:
            decoded = {"error": data[:200].decode("utf-8", "replace"), "code": -1}
        if "result" in decoded and isinstance(decoded["result"], dict):  # streaming RPC answer
            decoded = decoded["result"]
        return resp.status, decoded

    def call(self, path, body, retry=True):
        """POST ``body`` to ``path`` with failover; the decoded JSON answer.

        ``retry=False`` (a write that must not be repeated): once a request may have reached
        an endpoint, no other endpoint is tried; a request that certainly did not arrive
        (connection refused, stale kept-alive connection) still moves on."""
        deadline = time.monotonic() + self.settings.total_timeout
        count = len(self._endpoints)
        start = self._preferred
        errors = []
        reauth = True
        fresh_tried = set()
        maybe_sent = False
        attempt = 0
        while attempt < count:
            index = (start + attempt) % count
            left = deadline - time.monotonic()
            if left <= 0:
                errors.append("total timeout %.1fs" % self.settings.total_timeout)
                break
            scheme, host, port = self._endpoints[index]
            where = "%s:%d" % (host, port)
            try:
                if self.settings.username and self._token is None \
                        and not path.startswith("/v3/auth/"):
                    self._authenticate(index, min(self.settings.timeout, left))
                status, out = self._send(index, path, body, min(self.settings.timeout, left))
            except EtcdAuthError:
                raise
            except _NotSent as exc:
                if exc.reused and index not in fresh_tried:
                    fresh_tried.add(index)  # a stale kept-alive connection: once more, new one
                    continue
                errors.append("%s: %s" % (where, _short(exc.cause)))
                attempt += 1
                continue
            except ssl.SSLCertVerificationError as exc:
                raise EtcdAuthError("etcd %s: TLS certificate refused: %s"
                                    % (where, exc.verify_message or _short(exc)))
            except (OSError, http.client.HTTPException) as exc:
                errors.append("%s: %s" % (where, _short(exc)))
                maybe_sent = True
                attempt += 1
                if not retry:
                    break
                continue
            if status == 200 and "error" not in out:
                self._preferred = index
                self.last_endpoint = where
                return out
            code = out.get("code")
            message = str(out.get("message") or out.get("error") or ("HTTP %d" % status))
            if _INVALID_TOKEN_TEXT in message and self.settings.username and reauth:
                reauth = False  # tokens expire: authenticate again, same endpoint
                self._token = None
                continue
            if code == _UNAUTHENTICATED or status == 401 or _INVALID_TOKEN_TEXT in message \
                    or _NO_USER_TEXT in message:
                raise EtcdAuthError("etcd %s refused the credentials: %s" % (where, message))
            if code == _PERMISSION_DENIED or status == 403:
                raise EtcdAuthError("etcd %s: permission denied: %s" % (where, message))
            if code in _UNAVAILABLE_CODES or status >= 500:
                errors.append("%s: %s" % (where, message))
                maybe_sent = True  # "request timed out" may still be applied later
                attempt += 1
                if not retry:
                    break
                continue
            raise EtcdRequestError("etcd %s %s: %s" % (where, path, message))
        raise EtcdUnavailable("etcd unreachable (%s)" % ("; ".join(errors) or "timed out"),
                              maybe_sent)

    def _authenticate(self, index, timeout):
        status, out = self._send(index, "/v3/auth/authenticate",
                                 {"name": self.settings.username,
                                  "password": self.settings.password}, timeout)
        if status == 200 and out.get("token"):
            self._token = out["token"]
            return
        message = out.get("message") or out.get("error") or ("HTTP %d" % status)
        if out.get("code") in _UNAVAILABLE_CODES or status >= 500:
            raise OSError(message)
        raise EtcdAuthError("etcd refused user %r: %s" % (self.settings.username, message))

    # -- KV ----------------------------------------------------------------------------------
    def key(self, *parts):
        """A key under the configured prefix."""
        return self.settings.prefix + "/".join(parts)

    def get(self, key, serializable=False):
        """The KeyValue of ``key`` or None (linearizable unless ``serializable``)."""
        kvs, _ = self.range(key, serializable=serializable)
        return kvs[0] if kvs else None

    def range(self, key, range_end=None, prefix=False, serializable=False, limit=0):
        """([KeyValue], header revision)."""
        body = {"key": _b64(key)}
        if prefix:
            range_end = prefix_end(key)
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        if serializable:
            body["serializable"] = True
        if limit:
            body["limit"] = str(int(limit))
        out = self.call("/v3/kv/range", body)
        kvs = [KeyValue(kv) for kv in out.get("kvs") or []]
        return kvs, int(out.get("header", {}).get("revision", 0))

    def put(self, key, value, lease=0):
        """Unconditional put (not retried after a send); the new revision."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(int(lease))
        out = self.call("/v3/kv/put", body, retry=False)
        return int(out.get("header", {}).get("revision", 0))

    def delete(self, key, prefix=False):
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        out = self.call("/v3/kv/deleterange", body, retry=False)
        return int(out.get("deleted", 0))

    def txn(self, compare, success, failure=()):
        """One etcd transaction. Sent again to another endpoint only after a transport error:
        give it at least one compare on a revision, so a repeat cannot apply twice."""
        if not compare:
            raise ValueError("txn without a compare could be applied twice on failover")
        out = self.call("/v3/kv/txn", {"compare": list(compare), "success": list(success),
                                       "failure": list(failure)})
        return TxnResult(out)

    # -- leases ------------------------------------------------------------------------------
    def lease_grant(self, ttl):
        out = self.call("/v3/lease/grant", {"TTL": str(int(ttl))}, retry=False)
        return int(out["ID"]), int(out["TTL"])

    def lease_keepalive(self, lease_id):
        """Remaining TTL after the refresh; 0 (or absent) when the lease is gone."""
        out = self.call("/v3/lease/keepalive", {"ID": str(int(lease_id))})
        return int(out.get("TTL", 0))

    def lease_revoke(self, lease_id):
        self.call("/v3/lease/revoke", {"ID": str(int(lease_id))})

    # -- cluster -----------------------------------------------------------------------------
    def status(self):
        """The answering member's status (version, leader, member_id)."""
        return self.call("/v3/maintenance/status", {})


def _short(exc):
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return "timed out"
    return text.splitlines()[0][:160]


class WatchStream(object):
    """One etcd watch over the JSON gateway, read from a raw socket.

    The gateway answers a watch with a chunked HTTP response that stays open and carries one
    JSON message per line. http.client cannot survive a read timeout on such a stream, so this
    class speaks the little HTTP it needs itself: ``next(timeout)`` returns the next message,
    or None when nothing arrived within ``timeout`` (the stream stays usable), and raises
    EtcdUnavailable when the stream broke. ``close()`` may be called from another thread.
    """

    def __init__(self, client, key, range_end, start_revision, prev_kv=True):
        self.client = client
        self.body = json.dumps({"create_request": {
            "key": _b64(key), "range_end": _b64(range_end),
            "start_revision": str(int(start_revision)), "prev_kv": bool(prev_kv)}}).encode()
        self.sock = None
        self.raw = b""       # bytes read, not yet de-chunked
        self.payload = b""   # de-chunked bytes, not yet split into lines
        self.where = None

    def open(self):
        """Connect to the first endpoint that accepts, send the request, read the headers."""
        client = self.client
        errors = []
        timeout = client.settings.timeout
        count = len(client._endpoints)
        for attempt in range(count):
            index = (client._preferred + attempt) % count
            scheme, host, port = client._endpoints[index]
            where = "%s:%d" % (host, port)
            try:
                if client.settings.username and client._token is None:
                    client._authenticate(index, timeout)
                sock = socket.create_connection((host, port), timeout=timeout)
                if scheme == "https":
                    sock = client._ssl.wrap_socket(sock, server_hostname=host)
                head = ["POST /v3/watch HTTP/1.1", "Host: %s" % where,
                        "Content-Type: application/json", "Content-Length: %d" % len(self.body)]
                if client._token:
                    head.append("Authorization: %s" % client._token)
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + self.body)
                self.sock = sock
                self.where = where
                self._read_headers(time.monotonic() + timeout)
                return self
            except EtcdAuthError:
                self.close()
                raise
            except (OSError, EtcdError) as exc:
                self.close()
                errors.append("%s: %s" % (where, _short(exc)))
        raise EtcdUnavailable("etcd watch: no endpoint (%s)" % "; ".join(errors))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock = self.sock
        if sock is None:
            raise EtcdUnavailable("etcd watch closed")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise EtcdUnavailable("etcd watch stream from %s closed" % self.where)
        self.raw += data

    def _read_headers(self, deadline):
        while b"\r\n\r\n" not in self.raw:
            if len(self.raw) > 65536:
                raise EtcdUnavailable("etcd watch: headers too long")
            self._fill(deadline)
        head, self.raw = self.raw.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise EtcdUnavailable("etcd watch: %s" % lines[0][:100])
        if not any(l.lower().replace(" ", "") == "transfer-encoding:chunked" for l in lines[1:]):
            raise EtcdUnavailable("etcd watch: answer is not a stream")

    def _dechunk(self):
        while True:
            end = self.raw.find(b"\r\n")
            if end < 0:
                return
            try:
                size = int(self.raw[:end].split(b";")[0], 16)
            except ValueError:
                raise EtcdUnavailable("etcd watch: bad chunk from %s" % self.where)
            if size == 0:
                raise EtcdUnavailable("etcd watch stream from %s ended" % self.where)
            if len(self.raw) < end + 2 + size + 2:
                return
            self.payload += self.raw[end + 2:end + 2 + size]
            self.raw = self.raw[end + 2 + size + 2:]

    def next(self, timeout):
        """The next decoded message (a dict), or None after ``timeout`` seconds of silence."""
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk()
            nl = self.payload.find(b"\n")
            if nl >= 0:
                line, self.payload = self.payload[:nl], self.payload[nl + 1:]
                if not line.strip():
                    continue
                try:
                    msg = json.loads(line.decode("utf-8"))
                except ValueError:
                    raise EtcdUnavailable("etcd watch: bad message from %s" % self.where)
                if "error" in msg:
                    raise EtcdUnavailable("etcd watch: %s" % (msg.get("error", {}).get("message")
                                                              if isinstance(msg.get("error"), dict)
                                                              else msg["error"]))
                return msg.get("result", msg)
            if self.sock is None:
                raise EtcdUnavailable("etcd watch closed")
            try:
                self._fill(deadline)
            except socket.timeout:
                return None
            except OSError as exc:
                raise EtcdUnavailable("etcd watch from %s: %s" % (self.where, _short(exc)))

    def close(self):
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
