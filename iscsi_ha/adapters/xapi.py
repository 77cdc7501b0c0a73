"""The agent's XAPI client: a socket timeout on every call, and two kinds of error.

XML-RPC is spoken through our own transports (``XenAPI.Session`` has no timeout and its
``xapi_local()`` cannot name a socket path containing ``_``). URL: ``unix:///any/path`` or
``http(s)://host[:port]``. :class:`XapiUnavailable`: XAPI cannot answer now (timeout, refused,
reset, HTTP error, garbled answer, emergency mode, ``HOST_IS_SLAVE``). :class:`XapiFailure`: an
API failure (``code``, ``params``). Login is lazy (originator ``iscsi-ha``); ``SESSION_INVALID``
and a refused/reset connection each cause one fresh login and one retry; a timeout is never
retried. Calls are serialised by a lock; the agent only calls from background workers.
:class:`OtherConfigCache` keeps the pool other-config keys a slave needs without a master.
"""
import collections
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import xml.parsers.expat
import xmlrpc.client

from urllib.parse import unquote

from iscsi_ha import files, xapi_url

log = logging.getLogger("iscsi-ha")

ORIGINATOR = "iscsi-ha"
API_VERSION = "1.2"
ISCSI_SR_TYPES = ("lvmoiscsi",)
# ErrorDescription codes meaning "this xapi cannot serve API calls now" (emergency mode, a slave
# reached over TCP, a host still starting): see xenapi.md section 3.
UNAVAILABLE_CODES = frozenset([
    "HOST_STILL_BOOTING", "HOST_HAS_NO_MANAGEMENT_IP", "HOST_MASTER_CANNOT_TALK_BACK",
    "HOST_UNKNOWN_TO_MASTER", "HOST_BROKEN", "HOST_ITS_OWN_SLAVE", "HOST_IS_SLAVE"])

PbdInfo = collections.namedtuple("PbdInfo", "ref sr_name attached")
SESSION = object()   # an argument replaced by the current session ref (session.get_this_host)


class XapiError(Exception):
    """Base of the two errors below."""


class XapiUnavailable(XapiError):
    """XAPI cannot answer now. ``code``/``params`` are set when XAPI itself said so."""

    def __init__(self, message, code=None, params=(), reconnect=False, refused=False,
                 timed_out=False):
        XapiError.__init__(self, message)
        self.code = code
        self.params = list(params)
        self.reconnect = reconnect   # a fresh connection and login may succeed at once
        self.refused = refused       # nothing listens (connection refused, no socket file)
        self.timed_out = timed_out   # no answer within the socket timeout


class XapiFailure(XapiError):
    """XAPI answered with ``Status: Failure``; ``code`` and ``params`` are its ErrorDescription."""

    def __init__(self, code, params=(), method=""):
        self.code = code
        self.params = list(params)
        self.method = method
        text = "%s failed: %s" % (method, code) if method else code
        if self.params:
            text += " " + " ".join(repr(p) for p in self.params)
        XapiError.__init__(self, text)


# -- transports ------------------------------------------------------------------------------
class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket given by its path (any characters), with a socket timeout."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except Exception:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """xmlrpc transport to a Unix socket path (``xapi_local()`` cannot name paths with '_')."""

    def __init__(self, path, timeout):
        xmlrpc.client.Transport.__init__(self)
        self.unix_path, self.timeout = path, timeout

    def make_connection(self, host):
        if self._connection[1] is not None and self._connection[0] == host:
            return self._connection[1]
        self._connection = host, UnixConnection(self.unix_path, self.timeout)
        return self._connection[1]


class _Timeout(object):
    """Mixin: every connection the transport makes gets the socket timeout."""
    timeout = None

    def make_connection(self, host):
        connection = super(_Timeout, self).make_connection(host)
        connection.timeout = self.timeout
        return connection


class TcpTransport(_Timeout, xmlrpc.client.Transport):
    """Plain HTTP whose connections time out after ``timeout`` seconds."""

    def __init__(self, timeout=None):
        xmlrpc.client.Transport.__init__(self)
        if timeout is not None:
            self.timeout = timeout


class _TlsTransport(_Timeout, xmlrpc.client.SafeTransport):
    pass


class XapiUrlError(XapiError, xapi_url.UrlError):
    """XAPI_URL cannot be used: one line saying which form is expected."""


def check_url(url):
    """``urlsplit(url)`` when ``url`` is a usable XAPI URL, else :class:`XapiUrlError`
    (:func:`iscsi_ha.xapi_url.check`, which the configuration runs too)."""
    return xapi_url.check(url, XapiUrlError)


def make_proxy(url, timeout, verify_tls=True):
    """A ServerProxy for ``url`` whose every socket operation times out after ``timeout``.
    A URL that cannot be used is a :class:`XapiUrlError` (an expected error: one line)."""
    parts = check_url(url)
    if parts.scheme == "unix":
        return xmlrpc.client.ServerProxy("http://localhost/",
                                         transport=UnixTransport(unquote(parts.path), timeout))
    if parts.scheme == "http":
        transport = TcpTransport()
    else:
        context = ssl.create_default_context()
        if not verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        transport = _TlsTransport(context=context)
    transport.timeout = timeout
    try:
        return xmlrpc.client.ServerProxy(url, transport=transport)
    except (OSError, ValueError) as exc:     # xmlrpc's own URL parsing
        raise XapiUrlError("XAPI URL %r: %s; expected %s" % (url, exc, xapi_url.FORMS))


def _parse(method, response):
    """The Value of a XenAPI response struct, or the matching exception."""
    if not isinstance(response, dict) or "Status" not in response:
        raise XapiUnavailable("%s: malformed answer (no Status): %.200r" % (method, response))
    if response["Status"] == "Success":
        return response.get("Value", "")
    description = [str(d) for d in (response.get("ErrorDescription") or ["UNKNOWN_ERROR"])]
    code, params = description[0], description[1:]
    if code in UNAVAILABLE_CODES:
        why = "the host is a pool slave (master %s)" % params[0] if (
            code == "HOST_IS_SLAVE" and params) else "emergency mode or starting up"
        raise XapiUnavailable("%s: XAPI refused with %s %s: %s" % (
            method, code, " ".join(params), why), code, params)
    raise XapiFailure(code, params, method)


class XapiClient(object):
    """One XAPI endpoint, one lazily created session. Thread-safe (calls are serialised)."""

    def __init__(self, url, user, password, timeout, cache=None, verify_tls=True):
        if timeout is None or timeout <= 0:
            raise ValueError("XAPI timeout must be positive")
        self.url, self.user, self.password = url, user, password
        self.timeout = float(timeout)
        self.cache = cache
        self.verify_tls = verify_tls
        make_proxy(url, self.timeout, verify_tls)   # reject a bad URL now, not at first use
        self._lock = threading.RLock()
        self._proxy = None
        self._session = None
        self._this_host = None
        self._pool = None

    @classmethod
    def from_config(cls, config, cache=None):
        return cls(config.XAPI_URL, config.XAPI_USER, config.XAPI_PASSWORD, config.XAPI_TIMEOUT,
                   cache=cache)

    # -- the wire ----------------------------------------------------------------------------
    def _disconnect(self):
        """Drop the connection (the session stays: a restarted xapi says SESSION_INVALID)."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            try:
                proxy("close")()
            except Exception:  # closing a broken connection: nothing left to do
                pass

    def _invoke(self, method, params):
        """One request -> its Value. The connection is dropped after any transport error."""
        if self._proxy is None:
            self._proxy = make_proxy(self.url, self.timeout, self.verify_tls)
        where = "XAPI at %s" % self.url
        try:
            response = getattr(self._proxy, method)(*params)
        except socket.timeout:
            self._disconnect()
            raise XapiUnavailable("%s did not answer %s within %.1f s" % (
                where, method, self.timeout), timed_out=True)
        except xmlrpc.client.ProtocolError as exc:
            self._disconnect()
            raise XapiUnavailable("%s answered %s with HTTP %s %s" % (
                where, method, exc.errcode, exc.errmsg))
        except xmlrpc.client.Fault as exc:
            self._disconnect()
            raise XapiUnavailable("%s answered %s with an XML-RPC fault %s: %s" % (
                where, method, exc.faultCode, exc.faultString))
        except (ConnectionError, FileNotFoundError, http.client.RemoteDisconnected) as exc:
            self._disconnect()
            raise XapiUnavailable("%s: %s: %s" % (where, method, _describe(exc)),
                                  reconnect=True,
                                  refused=isinstance(exc, (ConnectionRefusedError,
                                                           FileNotFoundError)))
        except (OSError, http.client.HTTPException, xml.parsers.expat.ExpatError) as exc:
            self._disconnect()
            raise XapiUnavailable("%s: %s: %s" % (where, method, _describe(exc)))
        return _parse(method, response)

    def _login(self):
        if self._session is None:
            self._session = self._invoke("session.login_with_password",
                                         (self.user, self.password, API_VERSION, ORIGINATOR))
        return self._session

    def call(self, method, *args):
        """``method(session, *args)`` -> Value; logs in first if needed (see module doc)."""
        with self._lock:
            relogged = reconnected = False
            while True:
                try:
                    session = self._login()
                    params = (session,) + tuple(session if a is SESSION else a for a in args)
                    return self._invoke(method, params)
                except XapiFailure as exc:
                    if exc.code != "SESSION_INVALID" or relogged:
                        raise
                    log.info("XAPI session no longer valid: logging in again")
                    relogged, self._session, self._this_host = True, None, None
                except XapiUnavailable as exc:
                    if not exc.reconnect or reconnected:
                        raise
                    reconnected = True

    def close(self):
        """Log out (best effort, bounded by the timeout) and drop the connection."""
        with self._lock:
            if self._session is not None:
                try:
                    self._invoke("session.logout", (self._session,))
                except XapiError as exc:
                    log.debug("XAPI logout: %s", exc)
            self._disconnect()
            self._session = self._this_host = self._pool = None

    # -- the calls the agent uses --------------------------------------------------------------
    def this_host(self):
        """This host's ref (``session.get_this_host``), cached for the session's life."""
        with self._lock:
            if self._this_host is None:
                self._this_host = self.call("session.get_this_host", SESSION)
            return self._this_host

    def pool(self):
        with self._lock:
            if self._pool is None:
                pools = self.call("pool.get_all")
                if not pools:
                    raise XapiFailure("NO_POOL", (), "pool.get_all")
                self._pool = pools[0]
            return self._pool

    def pool_other_config(self):
        """The pool's other-config map; refreshes the cache."""
        values = self.call("pool.get_other_config", self.pool())
        if self.cache is not None:
            self.cache.store(values)
        return dict(values)

    def set_pool_other_config_key(self, key, value):
        pool = self.pool()
        try:
            self.call("pool.add_to_other_config", pool, key, value)
        except XapiFailure as exc:
            if exc.code != "MAP_DUPLICATE_KEY":
                raise
            self.call("pool.remove_from_other_config", pool, key)
            self.call("pool.add_to_other_config", pool, key, value)
        if self.cache is not None:
            self.cache.set_key(key, value)

    def create_message(self, name, priority, body):
        """``message.create`` on the pool object (XenCenter / Xen Orchestra show it)."""
        pool_uuid = self.call("pool.get_uuid", self.pool())
        return self.call("message.create", name, str(int(priority)), "Pool", pool_uuid, body)

    def iscsi_pbds_of_this_host(self, sr_types=ISCSI_SR_TYPES):
        """[PbdInfo(pbd ref, SR name, currently_attached)] of this host's iSCSI SRs."""
        me = self.this_host()
        srs = self.call("SR.get_all_records")
        pbds = self.call("PBD.get_all_records")
        found = []
        for ref, record in sorted(pbds.items()):
            sr = srs.get(record.get("SR"))
            if record.get("host") == me and sr is not None and sr.get("type") in sr_types:
                found.append(PbdInfo(ref, sr.get("name_label", ""),
                                     bool(record.get("currently_attached"))))
        return found

    def plug_pbd(self, ref):
        return self.call("PBD.plug", ref)

    def call_plugin(self, host_ref, plugin, fn, args):
        return self.call("host.call_plugin", host_ref, plugin, fn,
                         dict((str(k), str(v)) for k, v in args.items()))


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else "%s (%s)" % (text, type(exc).__name__)


# -- the local copy of pool other-config ------------------------------------------------------
CACHED_KEYS = ("MANUAL_MODE", "XenCenter.CustomFields.ha-lizard-enabled", "autopromote_uuid")
CACHED_PREFIXES = ("HA_",)


def wanted_key(key):
    return key in CACHED_KEYS or key.startswith(CACHED_PREFIXES)


class OtherConfigCache(object):
    """Pool other-config keys a slave needs without a master: JSON, written atomically, 0600
    (it may hold HA_SMTP_PASS). Reading never raises: a missing or damaged file is empty."""


    def __init__(self, path, keep=wanted_key):
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()

    @classmethod
    def in_state_dir(cls, state_dir):
        from iscsi_ha.statepaths import other_config_cache
        return cls(other_config_cache(state_dir))

    def _read(self):
        try:
            document = json.loads(files.read_text(self.path, files.STATUS_LIMIT))
            values = document["values"]
            if not isinstance(values, dict):
                raise ValueError("values is not a map")
            return document.get("saved"), dict((str(k), str(v)) for k, v in values.items())
        except (IOError, OSError):
            return None, {}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring damaged cache %s: %s", self.path, exc)
            return None, {}

    def _write(self, values):
        document = {"saved": time.time(), "values": values}
        try:
            _write_private(self.path, json.dumps(document, indent=1, sort_keys=True) + "\n")
        except (IOError, OSError) as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    def load(self):
        """The cached map (only the kept keys)."""
        with self._lock:
            return self._read()[1]

    def store(self, other_config):
        """Replace the cached map with the kept keys of a freshly read other-config."""
        values = dict((k, v) for k, v in other_config.items() if self.keep(k))
        with self._lock:
            self._write(values)

    def set_key(self, key, value):
        if not self.keep(key):
            return
        with self._lock:
            values = self._read()[1]
            values[key] = value
            self._write(values)


def _write_private(path, text):
    """Atomic replace of ``path``, the file never readable by others (not even briefly)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.current_thread().ident)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except Exception:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
