"""The floating IP: observe it, add it after duplicate address detection, remove it, announce it.

Measured here with iputils arping 20221126 between two namespaces on a bridge:

- ``arping -D -I IF -c 2 -w 1 ADDR`` (DAD) takes 1.0 s for a free address (2 probes) and returns
  at the first answer (under 0.1 s) when the address is taken. ``-c 2`` alone takes 2.0 s.
  ``-w`` and ``-i`` accept whole seconds only ("invalid argument: '0.5'", exit 1, the same code
  as "address taken"), and ``-i 0`` without ``-w`` never ends. A whole second of DAD sits on the
  failover's critical path, so :meth:`VipAdapter.is_free` keeps its own sub-second deadline
  (see there); exit 1 only means "taken" when arping printed a reply line (which also names the
  MAC address that answered).
- ``arping -U -I IF -c 1 ADDR`` (gratuitous ARP) sends at once but waits 1 s before exiting, so
  ``garp_count`` announcements ``garp_interval`` apart are ``garp_count`` overlapping arping
  children started by a background thread. Linux neighbours update an existing entry for ADDR
  on such a request (a new entry is only created with arp_accept=1).
"""
import collections
import ipaddress
import logging
import math
import re
import shlex
import subprocess
import threading
import time

from iscsi_ha.adapters import arp as arp_mod
from iscsi_ha.adapters.run import run, split_command

log = logging.getLogger("iscsi-ha")


class VipError(Exception):
    """ip or arping failed, or printed something unexpected."""


class IpParseError(VipError):
    """``ip -o`` printed a line this parser does not know; the message names it."""


class VipTaken(VipError):
    """Duplicate address detection: another host answers for the floating IP."""

    def __init__(self, address, responders):
        VipError.__init__(self, "floating IP %s is in use by %s" % (
            address, ", ".join(responders) or "another host"))
        self.address = address
        self.responders = list(responders)


IpAddress = collections.namedtuple("IpAddress", "address prefixlen ifname flags family scope label")
IpLink = collections.namedtuple("IpLink", "ifname flags state")
_VipState = collections.namedtuple("VipState", "local interface_exists interface_up addresses "
                                   "elsewhere carrier")


def VipState(local, interface_exists, interface_up, addresses, elsewhere, carrier=None):
    """What :meth:`VipAdapter.observe` saw; ``carrier`` defaults to ``interface_up``."""
    return _VipState(local, interface_exists, interface_up, addresses, elsewhere,
                     interface_up if carrier is None else carrier)

_ADDR_RE = re.compile(r"^\d+:\s+(\S+)\s+(inet6?)\s+(\S+)/(\d+)(.*)$")
_LINK_RE = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<([^>]*)>(.*)$")
_VALUE_WORDS = ("brd", "scope", "peer", "metric", "proto", "label")
DAD_SPACING = 0.05   # seconds between the DAD probes
_REPLY_RE = re.compile(r"reply from (\S+) \[([0-9A-Fa-f:]{17})\]")
_SENT_RE = re.compile(r"^Sent (\d+) probe", re.M)
METHODS = ("packet", "arping")


def mask_to_prefix(mask):
    """"255.255.255.0" -> 24. Non-contiguous or malformed masks raise ValueError."""
    try:
        value = int(ipaddress.IPv4Address(str(mask).strip()))
    except ValueError:
        raise ValueError("netmask %r is not a dotted IPv4 mask such as 255.255.255.0" % (mask,))
    prefix = bin(value).count("1")
    if value != ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF):
        raise ValueError("netmask %s is not contiguous (ones then zeros)" % mask)
    return prefix


def _address_line(number, line):
    head = line.split("\\", 1)[0]
    match = _ADDR_RE.match(head.strip())
    if not match:
        raise IpParseError("ip output line %d: not an address line: %r" % (number, line))
    ifname, family, address, prefix, rest = match.groups()
    words, flags, values = rest.split(), [], {}
    while words:
        word = words.pop(0)
        if word in _VALUE_WORDS and words:
            values[word] = words.pop(0)
        else:
            flags.append(word)
    label = None
    if family == "inet" and flags:  # ip prints an IPv4 address's label (or the ifname) last
        label = flags.pop()
    return IpAddress(address, int(prefix), ifname, tuple(flags), family,
                     values.get("scope"), label)


def parse_ip_addr(text):
    """``ip -o [-4] addr show [dev IF]`` -> [IpAddress(address, prefixlen, ifname, flags, ...)].

    ``flags`` holds words such as ``secondary``, ``tentative``, ``dynamic``; ``label`` is the
    IPv4 label (``eth0`` or ``eth0:vip``). An unknown line raises :class:`IpParseError`.
    """
    return [_address_line(number, line) for number, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def parse_ip_link(text):
    """``ip -o link show [dev IF]`` -> [IpLink(ifname, flags, state)]."""
    links = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINK_RE.match(line.strip())
        if not match:
            raise IpParseError("ip output line %d: not a link line: %r" % (number, line))
        state = re.search(r"\bstate (\S+)", match.group(3))
        links.append(IpLink(match.group(1), tuple(f for f in match.group(2).split(",") if f),
                            state.group(1) if state else None))
    return links


def _quote(argv):
    return " ".join(shlex.quote(str(a)) for a in argv)


def _stop_child(child):
    """Kill a DAD child that is still waiting and reap it (never a zombie)."""
    if child.poll() is None:
        try:
            child.kill()
        except OSError:
            pass
    try:
        child.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


class _Announcer(threading.Thread):
    """Starts ``count`` arping children ``interval`` s apart, then waits for them (bounded).

    Every child is waited for, so none is left a zombie; cancel() kills the ones still running.
    """

    def __init__(self, argv, count, interval, child_timeout):
        threading.Thread.__init__(self, name="garp")
        self.daemon = True
        self.argv, self.count, self.interval = argv, count, interval
        self.child_timeout = child_timeout
        self.cancelled = threading.Event()
        self.sent = 0

    def cancel(self):
        self.cancelled.set()

    def run(self):
        children = []
        try:
            for index in range(self.count):
                if self.cancelled.is_set():
                    break
                children.append(subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True))
                self.sent += 1
                if index + 1 < self.count:
                    self.cancelled.wait(self.interval)
            deadline = time.monotonic() + self.child_timeout
            while any(c.poll() is None for c in children) and time.monotonic() < deadline:
                if self.cancelled.wait(0.05):
                    break
        except OSError as exc:
            log.error("floating IP: cannot run %s: %s", self.argv[0], exc)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                child.wait()


class _PacketAnnouncer(threading.Thread):
    """Gratuitous ARPs from a raw socket in a thread: no child process at all."""

    def __init__(self, interface, address, count, interval):
        threading.Thread.__init__(self, name="garp")
        self.daemon = True
        self.interface, self.address = interface, address
        self.count, self.interval = count, interval
        self.cancelled = threading.Event()
        self.sent = 0

    def cancel(self):
        self.cancelled.set()

    def run(self):
        try:
            self.sent = arp_mod.announce(self.interface, self.address, self.count,
                                         self.interval, stop=self.cancelled)
        except arp_mod.ArpError as exc:
            log.error("floating IP: gratuitous ARP: %s", exc)


class VipAdapter(object):
    """The floating IP ``address``/``prefixlen`` on ``interface``.

    ``prefixlen`` is a length (24) or a dotted mask ("255.255.255.0", HA-Lizard's
    DRBD_VIRTUAL_MASK). ``ip`` and ``arping`` are command lines.
    """

    def __init__(self, address, prefixlen, interface, ip="ip", arping="arping", timeout=5.0,
                 dad_count=2, dad_timeout=1.0, garp_count=5, garp_interval=0.2,
                 method="arping"):
        self.address = str(ipaddress.IPv4Address(str(address).strip()))
        prefix = str(prefixlen).strip()
        self.prefixlen = int(prefix) if prefix.isdigit() else mask_to_prefix(prefix)
        if not 0 < self.prefixlen <= 32:
            raise ValueError("prefix length %s is not 1..32" % prefixlen)
        if not interface or re.search(r"\s|/", interface):
            raise ValueError("interface name %r is not valid" % (interface,))
        self.interface = interface
        self.ip_argv, self.arping_argv = split_command(ip), split_command(arping)
        self.timeout = timeout
        self.dad_count, self.dad_timeout = int(dad_count), dad_timeout
        self.garp_count, self.garp_interval = int(garp_count), garp_interval
        if method not in METHODS:
            raise ValueError("ARP method %r is not one of %s" % (method, ", ".join(METHODS)))
        self.method = method           # "packet": AF_PACKET (iscsi_ha.adapters.arp); "arping"
        self.last_responders = []
        self._announcers = []

    @property
    def cidr(self):
        return "%s/%d" % (self.address, self.prefixlen)

    def _ip(self, args, change=False):
        argv = self.ip_argv + list(args)
        if change:
            log.info("floating IP: %s", _quote(argv))
        return run(argv, self.timeout)

    # -- observe -----------------------------------------------------------------------------
    # The daemon sets ``change_watch`` (:class:`iscsi_ha.wakeups.NetlinkChanges`): while it
    # reports no link or address message, the last reading is returned without running ``ip``
    # (at most CACHE_MAX_AGE s old). A change of ours (add, remove) always reads afresh.
    change_watch = None
    CACHE_MAX_AGE = 60.0
    _cached = None
    cache_used = False

    def observe(self, fresh=False, clock=time.monotonic):
        """A :class:`VipState`: ``local`` = the address is on ``interface``; ``elsewhere`` lists
        the address on other interfaces of this host (a misconfiguration). With a
        ``change_watch`` and unless ``fresh``, the last reading when nothing changed since."""
        watch, self.cache_used = self.change_watch, False
        if watch is None:
            return self._observe()
        changed, now, cached = watch.take(), clock(), self._cached
        if not (fresh or changed) and cached is not None and now - cached[0] < self.CACHE_MAX_AGE:
            self.cache_used = True
            return cached[1]
        self._cached = None
        state = self._observe()
        self._cached = (now, state)
        return state

    def forget(self):
        """Drop the kept reading: the next :meth:`observe` runs ``ip``."""
        self._cached = None

    def _observe(self):
        link = self._ip(["-o", "link", "show", "dev", self.interface])
        if not link.ok:
            if "does not exist" not in link.stderr:
                raise VipError(link.describe())
            return VipState(False, False, False, [], self._carriers([]))
        links = parse_ip_link(link.stdout)
        up = bool(links) and "UP" in links[0].flags
        # ip prints NO-CARRIER (and no LOWER_UP) for an interface that is up without a link.
        carrier = up and "NO-CARRIER" not in links[0].flags
        res = self._ip(["-o", "-4", "addr", "show"])
        if not res.ok:
            raise VipError(res.describe())
        every = parse_ip_addr(res.stdout)
        mine = [a for a in every if a.ifname == self.interface]
        local = any(a.address == self.address for a in mine)
        return VipState(local, True, up, mine, self._carriers(every), carrier)

    def _carriers(self, addresses):
        return [a for a in addresses
                if a.address == self.address and a.ifname != self.interface]

    # -- duplicate address detection ---------------------------------------------------------
    def is_free(self, count=None, timeout=None):
        """True when nobody answers ARP probes for the address within ``dad_timeout``; False
        when someone does (``last_responders`` names them); VipError when the check did not
        run: a probe that was never sent proves nothing, so silence is "free" only when every
        probe is known to have gone out.

        ``packet`` (default from the config): RFC 5227 probes on a raw socket
        (:mod:`iscsi_ha.adapters.arp`), ``send`` confirms each one. ``arping``: ``dad_count``
        one-probe ``arping -D`` children started ``DAD_SPACING`` apart, each run to its own
        end (``-w``, whole seconds) so that its "Sent N probes" line says the probe went out;
        the first answer ends the check at once. ``count``/``timeout`` override the configured
        probes for this check (the short check after an orderly release).
        """
        count = self.dad_count if count is None else count
        timeout = self.dad_timeout if timeout is None else timeout
        if self.method == "packet":
            try:
                sent, macs = arp_mod.probe(self.interface, self.address, count, timeout)
            except arp_mod.ArpError as exc:
                raise VipError("duplicate address detection failed: %s" % exc)
            self.last_responders = ["%s (%s)" % (mac, self.address) for mac in macs]
            log.debug("floating IP: DAD sent %d probe(s), %d answer(s)", sent, len(macs))
            return not macs
        saved = self.dad_count, self.dad_timeout
        self.dad_count, self.dad_timeout = count, timeout
        try:
            argv = self.arping_argv + ["-D", "-I", self.interface, "-c", "1", "-w",
                                       str(int(math.ceil(self.dad_timeout)) + 1), self.address]
            log.debug("floating IP: DAD %s x%d", _quote(argv), self.dad_count)
            children = []
            try:
                outcome = self._probe(argv, children)
            finally:
                for child in children:
                    _stop_child(child)
            return outcome
        finally:
            self.dad_count, self.dad_timeout = saved

    def conflict(self):
        """On the holder: MACs of other hosts answering for the floating IP (one probe, heard
        for ``dad_timeout``). VipError when the probe could not be sent."""
        if self.method == "packet":
            try:
                _sent, macs = arp_mod.probe(self.interface, self.address, 1, self.dad_timeout)
            except arp_mod.ArpError as exc:
                raise VipError("floating IP conflict check failed: %s" % exc)
            return macs
        return [] if self.is_free() else list(self.last_responders)

    def _probe(self, argv, children):
        start = time.monotonic()
        spacing = min(DAD_SPACING, self.dad_timeout / (self.dad_count + 1))
        # arping ends by itself after -w seconds; past that (plus the command timeout) a child
        # is stuck, and what it did not say cannot count as "nobody answered".
        guard = start + int(math.ceil(self.dad_timeout)) + 1 + self.timeout
        done, sent = set(), 0
        while True:
            now = time.monotonic()
            if len(children) < self.dad_count and now >= start + spacing * len(children):
                children.append(self._spawn(argv))
            for index, child in enumerate(children):
                if index in done or child.poll() is None:
                    continue
                done.add(index)
                verdict, count = self._verdict(argv, child)
                if verdict is False:
                    return False
                sent += count
            if len(done) == self.dad_count:
                if sent < 1:
                    raise VipError("duplicate address detection failed: %s sent no probe"
                                   % _quote(argv))
                self.last_responders = []
                return True
            if now >= guard:
                raise VipError("duplicate address detection failed: %s did not finish within "
                               "%.1f s; its silence does not prove the address free"
                               % (_quote(argv), guard - start))
            time.sleep(0.005)

    def _spawn(self, argv):
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True,
                                start_new_session=True)

    def _verdict(self, argv, child):
        """(False, n) when this finished child heard an answer, (None, probes sent) when it
        heard nothing."""
        out, err = child.communicate()
        responders = ["%s (%s)" % (mac.upper(), ip) for ip, mac in _REPLY_RE.findall(out)]
        if child.returncode == 1 and responders:
            self.last_responders = responders
            return False, 0
        if child.returncode == 0:
            counts = _SENT_RE.findall(out)
            return None, int(counts[-1]) if counts else 0
        raise VipError("duplicate address detection failed: %s: exit %d\n%s" % (
            _quote(argv), child.returncode, (out + err).strip()))

    # -- change ------------------------------------------------------------------------------
    def add(self, released_timeout=None):
        """Add the address after DAD; raise :class:`VipTaken` if another host holds it.
        Idempotent: an address already local is left alone."""
        self._cached = None
        state = self.observe(fresh=True)
        if state.local:
            return "floating IP %s already local" % self.address
        if not state.interface_exists:
            raise VipError("interface %s does not exist" % self.interface)
        # ``released_timeout`` (the peer released the address in an orderly demote, or the
        # check already ran beside the promotion): one probe within that many seconds; 0: none.
        if released_timeout is None:
            free = self.is_free()
        elif released_timeout > 0:
            free = self.is_free(count=1, timeout=released_timeout)
        else:
            free = True
        if not free:
            raise VipTaken(self.address, self.last_responders)
        res = self._ip(["addr", "add", self.cidr, "dev", self.interface], change=True)
        self._cached = None
        if not res.ok and "already assigned" not in res.stderr:
            raise VipError(res.describe())
        return "floating IP %s added on %s" % (self.cidr, self.interface)

    def remove(self):
        """Remove the address from ``interface``; idempotent."""
        self._cached = None
        entries = [a for a in self.observe(fresh=True).addresses if a.address == self.address]
        if not entries:
            return "floating IP %s not local" % self.address
        cidr = "%s/%d" % (self.address, entries[0].prefixlen)
        res = self._ip(["addr", "del", cidr, "dev", self.interface], change=True)
        self._cached = None
        if not res.ok and "not found" not in res.stderr.lower():
            raise VipError(res.describe())
        return "floating IP %s removed from %s" % (cidr, self.interface)

    # -- gratuitous ARP ----------------------------------------------------------------------
    def announce(self):
        """Send ``garp_count`` gratuitous ARPs ``garp_interval`` apart in the background.

        Returns at once. An older announcer still running is cancelled first."""
        self.reap()
        for old in self._announcers:
            old.cancel()
        if self.garp_count <= 0:
            return "gratuitous ARP disabled (count 0)"
        if self.method == "packet":
            log.info("floating IP: gratuitous ARP for %s on %s (%d times, %.2f s apart, raw "
                     "socket, in the background)", self.address, self.interface,
                     self.garp_count, self.garp_interval)
            worker = _PacketAnnouncer(self.interface, self.address, self.garp_count,
                                      self.garp_interval)
            worker.start()
            self._announcers.append(worker)
            return "announcing %s on %s" % (self.address, self.interface)
        argv = self.arping_argv + ["-U", "-I", self.interface, "-c", "1", self.address]
        log.info("floating IP: %s (%d times, %.2f s apart, in the background)",
                 _quote(argv), self.garp_count, self.garp_interval)
        worker = _Announcer(argv, self.garp_count, self.garp_interval, self.timeout)
        worker.start()
        self._announcers.append(worker)
        return "announcing %s on %s" % (self.address, self.interface)

    def reap(self):
        """Forget finished announcers; returns how many are still running."""
        self._announcers = [a for a in self._announcers if a.is_alive()]
        return len(self._announcers)

    def close(self, timeout=2.0):
        """Cancel every announcer and wait (bounded) until their children are gone."""
        deadline = time.monotonic() + timeout
        for worker in self._announcers:
            worker.cancel()
        for worker in self._announcers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return self.reap()
