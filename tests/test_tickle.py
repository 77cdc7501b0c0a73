"""Tickle ACKs: which connections are noted, what the packet looks like, which ARP frame ends
the wait. (The raw sockets themselves run in the lab: make bench-floor.)"""
import socket
import struct

from iscsi_ha import tickle

# /proc/net/tcp lines: a listener on 0.0.0.0:3260, two initiators on the portal 192.0.2.100
# (one ESTABLISHED, one in FIN_WAIT1), a connection to another port, and a torn line.
PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0CBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 640200C0:0CBC 320200C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 640200C0:0CBC 330200C0:D432 04 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 640200C0:0016 320200C0:D433 01 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 640200C0:0CBC zz
"""


def test_established_clients_of_the_portal_only(tmp_path):
    path = tmp_path / "tcp"
    path.write_text(PROC_NET_TCP)
    assert tickle.established_clients("192.0.2.100", 3260, str(path)) == [("192.0.2.50", 54321)]
    assert tickle.established_clients("192.0.2.101", 3260, str(path)) == []


def test_unreadable_proc_net_tcp_gives_no_clients(tmp_path):
    assert tickle.established_clients("192.0.2.100", 3260, str(tmp_path / "none")) == []


def test_tickle_packet_is_a_valid_bare_ack():
    packet = tickle.tickle_packet("192.0.2.100", 3260, "192.0.2.50", 54321)
    assert len(packet) == 40
    assert tickle._checksum(packet[:20]) == 0                      # IPv4 header checksum
    version_ihl, _, total, _, frag, ttl, proto = struct.unpack("!BBHHHBB", packet[:10])
    assert (version_ihl, total, proto) == (0x45, 40, socket.IPPROTO_TCP)
    assert socket.inet_ntoa(packet[12:16]) == "192.0.2.100"
    assert socket.inet_ntoa(packet[16:20]) == "192.0.2.50"
    sport, dport, seq, ack, offset_flags = struct.unpack("!HHIIH", packet[20:34])
    assert (sport, dport, seq, ack) == (3260, 54321, 0, 0)
    assert offset_flags & 0x3F == 0x10                             # ACK only: no RST, no SYN
    pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    assert tickle._checksum(pseudo + packet[20:]) == 0             # TCP checksum


def _arp(sender_mac, sender_ip, op=1):
    eth = b"\xff" * 6 + sender_mac + b"\x08\x06"
    return eth + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sender_mac + \
        socket.inet_aton(sender_ip) + b"\0" * 6 + socket.inet_aton(sender_ip)


def test_arp_sender_of_a_gratuitous_arp():
    mac = b"\x02\x00\x00\x00\x00\x12"
    assert tickle.parse_arp_sender(_arp(mac, "192.0.2.100")) == (mac, "192.0.2.100")
    assert tickle.parse_arp_sender(b"\x00" * 12 + b"\x08\x00" + b"\x00" * 40) is None  # IPv4
    assert tickle.parse_arp_sender(b"short") is None


class _Config(object):
    DRBD_VIRTUAL_IP, DRBD_INTERFACE, ISCSI_PORT = "192.0.2.100", "eth0", 3260

    def __init__(self, wait):
        self.TICKLE_WAIT = wait


def test_tickling_off_just_removes():
    calls = []
    assert tickle.remove_with_tickle(_Config(0), lambda: calls.append("rm") or "removed") == \
        "removed"
    assert calls == ["rm"]


def test_no_connections_no_thread(tmp_path):
    path = tmp_path / "tcp"
    path.write_text(PROC_NET_TCP.splitlines()[0] + "\n")
    tickler = tickle.HandoverTickler("192.0.2.100", "eth0", wait=5, proc_net_tcp=str(path))
    assert tickler.before_release() == []
    assert tickler.after_release() is None
