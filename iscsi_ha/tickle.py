"""Telling the initiators at once that the target moved (TCP "tickle ACKs", as CTDB does).

When the floating IP leaves this host, the initiators' TCP connections to it die silently: an
initiator learns it only when a retransmission reaches the new holder (Linux backs off 0.2,
0.4, 0.8 s ...) or, when nothing was in flight, from its NOP-Out timer (open-iscsi: 5 s + 5 s).

So, in a planned demote, the old holder notes the initiators' connections to the portal
(``/proc/net/tcp``) before it removes the address, and afterwards waits (bounded) for the new
holder's gratuitous ARP for the address (an AF_PACKET socket, ARP frames only). The new holder
announces only once its target serves every LUN; at that moment this host sends each initiator
a TCP ACK with sequence and acknowledgement 0 from the portal address and port (a raw IPv4
socket, header included). The initiator's TCP answers such an out-of-window ACK with an ACK of
its own (RFC 5961 section 4), which now reaches the new holder; that host has no such
connection and resets it, so the initiator reconnects at once -- into a target that serves.

Everything here is best effort: any failure is logged and the move goes on without it.
"""
import logging
import os
import select
import socket
import struct
import threading
import time

log = logging.getLogger("iscsi-ha")

ETH_P_ARP = 0x0806
TCP_ESTABLISHED = "01"
TICKLES = 3                  # ACKs per connection, SPACING apart (CTDB sends 3 as well)
SPACING = 0.02


def _hex_to_ipv4(text):
    return socket.inet_ntoa(struct.pack("<I", int(text, 16)))


def established_clients(address, port, proc_net_tcp="/proc/net/tcp"):
    """[(client address, client port)] of the ESTABLISHED connections to ``address:port``."""
    clients = []
    try:
        with open(proc_net_tcp) as handle:
            lines = handle.read().splitlines()[1:]
    except (OSError, IOError) as exc:
        log.info("tickle: cannot read %s: %s", proc_net_tcp, exc)
        return clients
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_ESTABLISHED:
            continue
        try:
            local_ip, local_port = fields[1].split(":")
            remote_ip, remote_port = fields[2].split(":")
            if _hex_to_ipv4(local_ip) == address and int(local_port, 16) == port:
                clients.append((_hex_to_ipv4(remote_ip), int(remote_port, 16)))
        except (ValueError, struct.error, OSError):
            continue
    return sorted(set(clients))


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tickle_packet(src, sport, dst, dport, seq=0, ack=0):
    """An IPv4 packet carrying a bare TCP ACK from ``src:sport`` to ``dst:dport``."""
    offset_flags = (5 << 12) | 0x10                      # 20-byte header, ACK
    tcp = struct.pack("!HHIIHHHH", sport, dport, seq, ack, offset_flags, 1024, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(
        "!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64,
                         socket.IPPROTO_TCP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + tcp


def send_tickles(address, port, clients, count=TICKLES, spacing=SPACING):
    """Send the tickle ACKs; returns how many packets left."""
    if not clients:
        return 0
    sent = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for round_ in range(count):
            if round_:
                time.sleep(spacing)
            for client, client_port in clients:
                try:
                    sock.sendto(tickle_packet(address, port, client, client_port), (client, 0))
                    sent += 1
                except OSError as exc:
                    log.info("tickle: to %s:%d: %s", client, client_port, exc)
    finally:
        sock.close()
    return sent


def parse_arp_sender(frame):
    """(sender MAC bytes, sender IPv4 text) of an Ethernet ARP frame for IPv4, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen = struct.unpack("!HHBB", frame[14:20])
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return bytes(frame[22:28]), socket.inet_ntoa(bytes(frame[28:32]))


def wait_for_new_holder(interface, address, timeout, own_mac=None):
    """Wait (at most ``timeout`` s) for an ARP frame announcing ``address`` from another MAC;
    returns that MAC as text, or None."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((interface, ETH_P_ARP))
        own_mac = own_mac or sock.getsockname()[4]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([sock], [], [], remaining)
            if not ready:
                continue
            sender = parse_arp_sender(sock.recv(2048))
            if sender and sender[1] == address and sender[0] != own_mac:
                return ":".join("%02x" % b for b in bytearray(sender[0]))
    finally:
        sock.close()


class HandoverTickler(object):
    """Used around the demote's "floating IP off": :meth:`before_release` notes the
    initiators, :meth:`after_release` starts the bounded wait-then-tickle thread."""

    def __init__(self, address, interface, port=3260, wait=30.0,
                 proc_net_tcp="/proc/net/tcp"):
        self.address, self.interface, self.port = address, interface, port
        self.wait, self.proc_net_tcp = wait, proc_net_tcp
        self.clients, self.thread, self.outcome = [], None, None

    def before_release(self):
        self.clients = established_clients(self.address, self.port, self.proc_net_tcp) \
            if self.wait > 0 else []
        return self.clients

    def after_release(self):
        if not self.clients:
            return None
        clients, self.clients = self.clients, []
        self.thread = threading.Thread(target=self._run, args=(clients,), name="tickle")
        self.thread.daemon = True
        self.thread.start()
        log.info("tickle: %d initiator connection(s) will be told when the new holder of %s "
                 "announces it (waiting at most %.0f s)", len(clients), self.address, self.wait)
        return self.thread

    def _run(self, clients):
        try:
            holder = wait_for_new_holder(self.interface, self.address, self.wait)
            if holder is None:
                self.outcome = "no new holder announced %s within %.0f s" % (self.address,
                                                                              self.wait)
                log.info("tickle: %s; the initiators find out on their own", self.outcome)
                return
            sent = send_tickles(self.address, self.port, clients)
            self.outcome = "%s announced by %s: %d tickle ACK(s) to %s" % (
                self.address, holder, sent, ", ".join("%s:%d" % c for c in clients))
            log.info("tickle: %s", self.outcome)
        except Exception as exc:  # best effort: never an error for the agent
            self.outcome = "failed: %s" % exc
            log.info("tickle: failed: %s", exc)

    def join(self, timeout=None):
        if self.thread is not None:
            self.thread.join(timeout)


def enabled():
    """Raw sockets need root (CAP_NET_RAW)."""
    return hasattr(socket, "AF_PACKET") and os.geteuid() == 0


def remove_with_tickle(config, remove):
    """Run ``remove()`` (the floating IP off) between the tickler's two steps, when tickling is
    on (TICKLE_WAIT > 0, root); the removal's outcome is returned, tickling never fails it."""
    wait = getattr(config, "TICKLE_WAIT", 0)
    if not wait or not enabled():
        return remove()
    tickler = HandoverTickler(config.DRBD_VIRTUAL_IP, config.DRBD_INTERFACE,
                              getattr(config, "ISCSI_PORT", 3260), wait)
    try:
        tickler.before_release()
    except Exception as exc:
        log.info("tickle: cannot list the initiators' connections: %s", exc)
    outcome = remove()
    try:
        tickler.after_release()
    except Exception as exc:
        log.info("tickle: cannot start: %s", exc)
    return outcome
