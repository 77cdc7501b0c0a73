"""XAPI_URL's form, checked without loading the XAPI client and what it imports (http.client,
ssl, xmlrpc: some 20 ms): the configuration is read by every command and by the fence-peer
handler, which DRBD runs inside the promotion of a failover. The client runs the same check
(:func:`iscsi_ha.adapters.xapi.check_url`) before every connection."""
from urllib.parse import unquote, urlsplit

FORMS = "unix:///PATH or http(s)://HOST[:PORT] (port 1-65535)"


class UrlError(ValueError):
    """XAPI_URL cannot be used: one line saying which form is expected."""


def check(url, error=UrlError):
    """``urlsplit(url)`` when ``url`` is a usable XAPI URL, else ``error`` (a subclass of
    :class:`UrlError`) naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise error("XAPI URL is empty; expected " + FORMS)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise error("XAPI URL %r holds a blank or control character; expected %s"
                    % (url, FORMS))
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:
        raise error("XAPI URL %r cannot be parsed (%s); expected %s" % (url, exc, FORMS))
    if parts.scheme == "unix":
        if not unquote(parts.path):
            raise error("XAPI URL %r names no socket path (unix:///var/lib/xcp/xapi)" % url)
        return parts
    if parts.scheme not in ("http", "https") or not hostname:
        raise error("XAPI URL %r is neither %s" % (url, FORMS.replace(" or ", " nor ")))
    if port is not None and not 1 <= port <= 65535:
        raise error("XAPI URL %r: port %d is not from 1 to 65535" % (url, port))
    if parts.netloc.endswith(":"):
        raise error("XAPI URL %r: ':' without a port; expected %s" % (url, FORMS))
    return parts
