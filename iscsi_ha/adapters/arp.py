"""ARP on a raw packet socket (AF_PACKET, Linux, stdlib only): duplicate-address probes that know
they went out, and gratuitous ARP without forking ``arping``.

Frames are built as RFC 826 / RFC 5227 describe them: Ethernet II, ethertype 0x0806, hardware
type 1, protocol 0x0800, lengths 6 and 4. A *probe* (RFC 5227 2.1.1) has sender IP 0.0.0.0 and
target IP the address under test, so no neighbour learns anything from it; any host that holds
the address answers it (Linux ``arp_process`` replies to a request whose target is one of its
addresses, also when the sender IP is 0.0.0.0). A *gratuitous* ARP is a broadcast request with
sender IP = target IP = the address (what ``arping -U`` sends).

A probe counts only when ``send`` put every byte on the wire: an interface that is down gives
ENETDOWN and the probe is a failed check (:class:`ArpError`), never "nobody answered".
"""
import errno
import os
import select
import socket
import struct
import threading
import time

from iscsi_ha import files

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
ARP_REQUEST, ARP_REPLY = 1, 2
PACKET_OUTGOING = 4          # sll_pkttype of a frame this host sent (linux/if_packet.h)
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ETH = struct.Struct("!6s6sH")
FRAME_LEN = _ETH.size + _ARP.size      # 42; the NIC pads to 60


class ArpError(Exception):
    """The socket could not be opened or a probe could not be sent: the check did not run."""


def mac_text(raw):
    return ":".join("%02X" % b for b in bytearray(raw))


def mac_bytes(text):
    parts = text.strip().split(":")
    if len(parts) != 6:
        raise ValueError("not a MAC address: %r" % text)
    return bytes(bytearray(int(p, 16) for p in parts))


def build(op, src_mac, sender_ip, target_ip, dst_mac=BROADCAST, target_mac=ZERO_MAC):
    """One Ethernet frame carrying an ARP packet; IPs as dotted text."""
    return _ETH.pack(dst_mac, src_mac, ETH_P_ARP) + _ARP.pack(
        1, ETH_P_IP, 6, 4, op, src_mac, socket.inet_aton(sender_ip), target_mac,
        socket.inet_aton(target_ip))


def probe_frame(src_mac, address):
    return build(ARP_REQUEST, src_mac, "0.0.0.0", address)


def gratuitous_frame(src_mac, address):
    return build(ARP_REQUEST, src_mac, address, address)


def parse(frame):
    """(op, sender MAC, sender IP, target MAC, target IP) of an Ethernet ARP frame, or None."""
    if len(frame) < FRAME_LEN:
        return None
    _dst, _src, ethertype = _ETH.unpack_from(frame, 0)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    return op, sha, socket.inet_ntoa(spa), tha, socket.inet_ntoa(tpa)


def claims(packet, address, own_mac):
    """True when ``packet`` (from :func:`parse`) shows another MAC using ``address``: a reply
    from it, or a request or announcement with it as the sender IP."""
    if packet is None:
        return False
    op, sha, spa, _tha, _tpa = packet
    return spa == address and sha != own_mac and op in (ARP_REQUEST, ARP_REPLY)


def interface_mac(interface, sys_class_net="/sys/class/net"):
    try:
        return mac_bytes(files.read_text(os.path.join(sys_class_net, interface, "address"),
                                         files.SMALL_LIMIT))
    except (OSError, IOError, ValueError) as exc:
        raise ArpError("cannot read the MAC address of %s: %s" % (interface, exc))


class ArpSocket(object):
    """A raw ARP socket bound to one interface. Use as a context manager."""

    def __init__(self, interface):
        self.interface = interface
        self.mac = interface_mac(interface)
        try:
            # protocol 0: no frames until bind() names the interface and ARP, so the kernel
            # registers the socket once (each registration change waits for an RCU grace
            # period, 8-25 ms, before the first probe could go out)
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except (OSError, AttributeError) as exc:
            raise ArpError("cannot open a raw ARP socket: %s" % exc)
        try:
            self.sock.bind((interface, ETH_P_ARP))
            self.sock.setblocking(False)
        except OSError as exc:
            self.sock.close()
            raise ArpError("cannot bind a raw ARP socket to %s: %s" % (interface, exc))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_in_background()

    def close(self):
        self.sock.close()

    def close_in_background(self):
        """Close without waiting for it: releasing a bound packet socket waits for an RCU grace
        period (8-25 ms here), which would come after a probe's verdict on the failover's
        critical path."""
        closer = threading.Thread(target=self.close, name="arp-close")
        closer.daemon = True
        try:
            closer.start()
        except RuntimeError:        # no thread to be had (limits, memory): close it here
            self.close()

    def send(self, frame):
        """Send one frame; ArpError unless every byte went out (ENETDOWN: interface down)."""
        try:
            sent = self.sock.send(frame)
        except OSError as exc:
            reason = "interface down" if exc.errno == errno.ENETDOWN else exc.strerror
            raise ArpError("ARP frame not sent on %s: %s" % (self.interface, reason))
        if sent != len(frame):
            raise ArpError("ARP frame not sent on %s: %d of %d bytes" % (
                self.interface, sent, len(frame)))

    def drain(self):
        """Forget frames already queued (older than the probe about to go out)."""
        while True:
            try:
                self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def answers(self, address, deadline, first_only=True, clock=time.monotonic):
        """MACs (text) of other hosts using ``address``, heard until ``deadline``."""
        found = []
        while True:
            left = deadline - clock()
            if left <= 0:
                return found
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return found
            try:
                frame, where = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                continue
            if len(where) > 2 and where[2] == PACKET_OUTGOING:
                continue
            packet = parse(frame)
            if claims(packet, address, self.mac):
                mac = mac_text(packet[1])
                if mac not in found:
                    found.append(mac)
                if first_only:
                    return found


def probe(interface, address, count=2, timeout=0.3, spacing=0.05, clock=time.monotonic):
    """Send ``count`` RFC 5227 probes for ``address`` (``spacing`` s apart) and listen until
    ``timeout`` s after the first went out. Returns (sent, [MAC of each other holder]); raises
    :class:`ArpError` when no probe could be sent (the check did not run)."""
    with ArpSocket(interface) as arp:
        frame = probe_frame(arp.mac, address)
        arp.drain()
        start = clock()
        deadline = start + timeout
        sent, found = 0, []
        for index in range(max(1, int(count))):
            arp.send(frame)
            sent += 1
            wait_until = min(deadline, clock() + spacing) if index + 1 < count else deadline
            for mac in arp.answers(address, wait_until, first_only=True, clock=clock):
                if mac not in found:
                    found.append(mac)
            if found:
                return sent, found
        return sent, found


def announce(interface, address, count=1, interval=0.2, stop=None):
    """Send ``count`` gratuitous ARPs ``interval`` s apart; returns how many went out. ``stop``
    (a threading.Event) ends it early."""
    sent = 0
    with ArpSocket(interface) as arp:
        frame = gratuitous_frame(arp.mac, address)
        for index in range(int(count)):
            if stop is not None and stop.is_set():
                break
            arp.send(frame)
            sent += 1
            if index + 1 < count:
                if stop is not None:
                    if stop.wait(interval):
                        break
                else:
                    time.sleep(interval)
    return sent


def main(argv=None):
    """``python -m iscsi_ha.adapters.arp probe|announce IFACE ADDRESS [COUNT]``: one JSON line
    (for the lab and the tests, which run it inside a network namespace). Exit 0, or 1 when the
    frames could not be sent (the JSON says why)."""
    import json
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] not in ("probe", "announce"):
        sys.stderr.write("usage: python -m iscsi_ha.adapters.arp probe|announce IFACE ADDRESS "
                         "[COUNT]\n")
        return 2
    verb, interface, address = args[:3]
    count = int(args[3]) if len(args) > 3 else 2
    try:
        if verb == "probe":
            sent, macs = probe(interface, address, count, 0.3)
            result = {"sent": sent, "answers": macs}
        else:
            result = {"sent": announce(interface, address, count, 0.05)}
    except ArpError as exc:
        sys.stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
