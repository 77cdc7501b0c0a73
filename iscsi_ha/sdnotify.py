"""systemd's service notification protocol, spoken directly (no libsystemd, no compiled code).

systemd passes a unit of ``Type=notify`` the address of a datagram socket in ``NOTIFY_SOCKET``:
a file system path, or an abstract socket name written with a leading ``@`` (sent on the wire
with a leading NUL byte instead). A message is one datagram of newline-separated ``KEY=value``
assignments: ``READY=1`` (start-up finished), ``WATCHDOG=1`` (still alive), ``STATUS=...`` (one
line shown by ``systemctl status``), ``STOPPING=1`` (shutting down). With ``WatchdogSec=`` set,
systemd also passes ``WATCHDOG_USEC`` (the timeout in microseconds) and, in newer versions,
``WATCHDOG_PID`` (the process the watchdog is meant for); a service that does not send
``WATCHDOG=1`` within the timeout is killed and, with ``Restart=on-failure``, restarted.

Without ``NOTIFY_SOCKET`` (run by hand, by the SysV script, in tests) every call is a no-op.
Sending never raises: a lost notification must not stop the agent.

How the agent uses it (see :class:`Notifier`)::

    notifier = Notifier.from_environ(unset=True)
    notifier.ready("pass 1: no action: primary, target serving")   # after the first pass
    notifier.ping("pass 7: ...")        # after every pass AND from the idle poll between passes
    notifier.stopping()                 # on SIGTERM, before the last pass ends

``ping`` is cheap to call often: it sends ``WATCHDOG=1`` at most every quarter of the timeout
(twice per recommended ping period) and ``STATUS=`` only when the text changed.
"""
import logging
import os
import socket
import time

log = logging.getLogger("iscsi-ha")

SEND_TIMEOUT = 1.0          # seconds; a datagram to systemd never blocks longer than this
STATUS_MAX = 400            # characters of STATUS= kept (systemctl shows one line)
_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value):
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None when it is not usable.

    ``@name`` is an abstract socket (``\\0name`` on the wire); ``/path`` is a socket file.
    Other forms (newer systemd's ``vsock:``) are not spoken here.
    """
    if not value or len(value) < 2:
        return None
    if value[0] == "@":
        return "\0" + value[1:]
    if value[0] == "/":
        return value
    return None


def parse_watchdog_usec(usec_text, pid_text=None, pid=None):
    """The watchdog timeout in seconds from ``WATCHDOG_USEC``, or None when there is none.

    ``WATCHDOG_PID``, when set, must name this process (``pid``, default ``os.getpid()``):
    a variable inherited from a parent is not ours to answer.
    """
    if not usec_text:
        return None
    try:
        usec = int(usec_text.strip())
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            if int(pid_text.strip()) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1e6


def _one_line(text):
    return " ".join(str(text).split())[:STATUS_MAX]


class Notifier(object):
    """Talks to systemd when started by it; does nothing otherwise."""

    def __init__(self, address=None, watchdog_timeout=None, clock=time.monotonic):
        self.address = address
        self.watchdog_timeout = watchdog_timeout if address else None
        self.clock = clock
        self.last_ping = None
        self.last_status = None
        self.sent = 0
        self._sock = None
        self._failed_once = False

    @classmethod
    def from_environ(cls, environ=None, unset=False, pid=None):
        """Read ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``; with ``unset=True``
        remove them from ``os.environ`` so that commands the agent runs do not inherit them."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path or @abstract name; systemd "
                        "notifications are off", raw)
        timeout = parse_watchdog_usec(env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"), pid)
        if unset:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(address, timeout)

    @property
    def enabled(self):
        return self.address is not None

    def watchdog_interval(self):
        """Seconds between pings that systemd recommends (half the timeout), or None."""
        if self.watchdog_timeout is None:
            return None
        return self.watchdog_timeout / 2.0

    def budget_warning(self, longest_pass):
        """A sentence when a pass may legitimately outlast the watchdog timeout, else None.

        Pings are sent between passes only (a hung pass must stop them), so ``WatchdogSec``
        must exceed the longest pass the agent tolerates (MONITOR_MAX_STARTS x
        MONITOR_SCANRATE) plus the time to kill its commands."""
        if self.watchdog_timeout is None or longest_pass < self.watchdog_timeout:
            return None
        return ("WatchdogSec=%.0f s is not longer than the pass budget %.0f s: systemd would "
                "kill the agent during a slow but healthy pass; raise WatchdogSec" %
                (self.watchdog_timeout, longest_pass))

    def send(self, *assignments):
        """Send ``KEY=value`` assignments in one datagram; True when it was sent."""
        if self.address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(payload, self.address)
        except (OSError, socket.error) as exc:
            if not self._failed_once:
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._failed_once = True
            self.close()
            return False
        self.sent += 1
        return True

    def _status(self, status, out):
        if status is not None:
            text = _one_line(status)
            if text != self.last_status:
                out.append("STATUS=" + text)
                self.last_status = text

    def ready(self, status=None):
        """Start-up is complete (call after the first pass); also counts as a ping."""
        out = ["READY=1"]
        self._status(status, out)
        if self.watchdog_timeout is not None:
            out.append("WATCHDOG=1")
            self.last_ping = self.clock()
        return self.send(*out)

    def ping(self, status=None, force=False):
        """Tell systemd the agent is alive; rate-limited to one ``WATCHDOG=1`` per quarter
        timeout unless ``force``. Sends ``STATUS=`` when ``status`` changed."""
        out = []
        self._status(status, out)
        if self.watchdog_timeout is not None:
            now = self.clock()
            due = self.last_ping is None or now - self.last_ping >= self.watchdog_timeout / 4.0
            if force or due:
                out.append("WATCHDOG=1")
                self.last_ping = now
        return self.send(*out) if out else False

    def status(self, text):
        """Only update the one-line status."""
        out = []
        self._status(text, out)
        return self.send(*out) if out else False

    def stopping(self, status=None):
        """The agent is shutting down (SIGTERM received)."""
        out = ["STOPPING=1"]
        self._status(status, out)
        return self.send(*out)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except (OSError, socket.error):
                pass
            self._sock = None


def notify(message, environ=None):
    """One-shot ``sd_notify``: send ``message`` (e.g. ``"READY=1"``) if started by systemd."""
    notifier = Notifier.from_environ(environ)
    try:
        return notifier.send(*[line for line in message.split("\n") if line])
    finally:
        notifier.close()
