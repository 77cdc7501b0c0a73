"""The floating-IP adapter: parsers on real ip output, every branch with `run` mocked, background
announcers with real child processes, and real ip/arping between two namespaces (netns).

Fixtures: tests/fixtures/ip/ (real iproute2 6.1.0 / iputils arping 20221126 output, see
SOURCES.md there).
"""
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from iscsi_ha.adapters import vip as vip_mod
from iscsi_ha.adapters.run import CommandResult
from iscsi_ha.adapters.vip import (IpParseError, VipAdapter, VipError, VipTaken, mask_to_prefix,
                                   parse_ip_addr, parse_ip_link)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ip"
VIP = "192.0.2.100"
MAC_B = "7E:8E:2F:50:59:53"    # namespace b's MAC in the captured fixtures


def fixture(name):
    return (FIXTURES / name).read_text()


# -- parsers ---------------------------------------------------------------------------------

def test_primary_and_secondary_addresses():
    rows = parse_ip_addr(fixture("v4_dev_vip_secondary.txt"))
    assert [(a.address, a.prefixlen, a.ifname, a.flags) for a in rows] == [
        ("192.0.2.11", 24, "eth0", ()), (VIP, 24, "eth0", ("secondary",))]
    assert rows[0].scope == "global" and rows[0].label == "eth0" and rows[0].family == "inet"


def test_labels_other_prefixes_and_ipv6():
    rows = parse_ip_addr(fixture("all_families.txt"))
    by_address = dict((a.address, a) for a in rows)
    assert by_address["192.0.2.101"].label == "eth0:vip"
    assert by_address["192.0.2.101"].flags == ("secondary",)
    assert by_address["198.51.100.7"].prefixlen == 25
    assert by_address["::1"].family == "inet6" and by_address["::1"].label is None
    assert by_address["127.0.0.1"].scope == "host" and by_address["127.0.0.1"].ifname == "lo"
    assert len(rows) == 7


def test_broadcast_and_tentative():
    rows = dict((a.address, a) for a in parse_ip_addr(fixture("all_tentative_brd.txt")))
    assert rows[VIP].flags == ("secondary",) and rows[VIP].label == "eth0"
    assert rows["fe80::b0ff:23ff:fe1c:844e"].flags == ("tentative",)


def test_no_address_is_an_empty_list():
    assert parse_ip_addr(fixture("v4_dev_empty.txt")) == []


def test_unknown_address_line_is_named():
    with pytest.raises(IpParseError, match="line 2"):
        parse_ip_addr(fixture("v4_dev_primary_only.txt") + "6: eth0    link/ether b2:ff\n")


def test_links():
    up = parse_ip_link(fixture("link_up.txt"))[0]
    assert up.ifname == "eth0" and "UP" in up.flags and up.state == "UP"   # "eth0@if7"
    down = parse_ip_link(fixture("link_down.txt"))[0]
    assert "UP" not in down.flags and down.state == "DOWN"
    assert parse_ip_link(fixture("link_nocarrier.txt"))[0].state == "UNKNOWN"
    with pytest.raises(IpParseError, match="line 1"):
        parse_ip_link("eth0 is up\n")


@pytest.mark.parametrize("mask, prefix", [("255.255.255.0", 24), ("255.255.255.128", 25),
                                          ("255.255.255.255", 32), ("0.0.0.0", 0),
                                          (" 255.255.0.0 ", 16)])
def test_mask_to_prefix(mask, prefix):
    assert mask_to_prefix(mask) == prefix


@pytest.mark.parametrize("mask, message", [("255.0.255.0", "not contiguous"),
                                           ("255.255.255.1", "not contiguous"),
                                           ("255.255.256.0", "not a dotted"),
                                           ("24", "not a dotted"), ("", "not a dotted")])
def test_mask_to_prefix_refuses(mask, message):
    with pytest.raises(ValueError, match=message):
        mask_to_prefix(mask)


# -- a fake `run` answering with the captured outputs --------------------------------------

def _kind(argv):
    words = " ".join(argv)
    for key, kind in (("link show", "link"), ("addr show", "addrs"), ("addr add", "add"),
                      ("addr del", "del"), ("arping -D", "dad")):
        if key in words:
            return kind
    raise AssertionError("unexpected command %s" % words)


class FakeChild(object):
    """An arping child: finished with (code, out, err), or still waiting (``None``)."""

    def __init__(self, answer):
        self.answer, self.killed = answer, False

    def poll(self):
        return None if self.answer is None or self.killed else self.answer[0]

    @property
    def returncode(self):
        return -9 if self.killed else self.poll()

    def communicate(self, timeout=None):
        return ("", "") if self.answer is None else tuple(self.answer[1:3])

    def kill(self):
        self.killed = True


class FakeNet(object):
    def __init__(self):
        self.answers = {"link": (0, fixture("link_up.txt"), ""),
                        "addrs": (0, fixture("v4_dev_primary_only.txt"), ""),
                        "dad": (0, fixture("arping_dad_free.out"), "")}
        self.calls = []

    def run(self, argv, timeout, **kwargs):
        assert timeout > 0
        kind = _kind(argv)
        self.calls.append((kind, list(argv)))
        answer = self.answers.get(kind, (0, "", ""))
        code, out, err = answer[:3]
        timed_out = len(answer) > 3 and answer[3]
        return CommandResult(argv, -9 if timed_out else code, out, err, 0.01, timed_out)

    def spawn(self, argv):
        self.calls.append(("dad", list(argv)))
        return FakeChild(self.answers["dad"])

    def kinds(self):
        return [k for k, _ in self.calls]

    def argv(self, kind):
        return [a for k, a in self.calls if k == kind][-1]


@pytest.fixture
def net(mocker):
    fake = FakeNet()
    mocker.patch.object(vip_mod, "run", fake.run)
    mocker.patch.object(VipAdapter, "_spawn", lambda self, argv: fake.spawn(argv))
    return fake


def adapter(**kwargs):
    return VipAdapter(VIP, kwargs.pop("prefixlen", "255.255.255.0"), kwargs.pop("iface", "eth0"),
                      **kwargs)


def test_constructor_accepts_mask_or_length():
    assert adapter().prefixlen == 24 and adapter(prefixlen=25).cidr == VIP + "/25"
    with pytest.raises(ValueError, match="not contiguous"):
        adapter(prefixlen="255.0.255.0")
    with pytest.raises(ValueError):
        VipAdapter("192.0.2.300", 24, "eth0")
    with pytest.raises(ValueError, match="interface"):
        adapter(iface="eth 0")


def test_observe_not_local(net):
    state = adapter().observe()
    assert (state.local, state.interface_exists, state.interface_up) == (False, True, True)
    assert [a.address for a in state.addresses] == ["192.0.2.11"] and state.elsewhere == []
    assert net.argv("link") == ["ip", "-o", "link", "show", "dev", "eth0"]
    assert net.argv("addrs") == ["ip", "-o", "-4", "addr", "show"]


def test_observe_local_and_down(net):
    net.answers["link"] = (0, fixture("link_down.txt"), "")
    net.answers["addrs"] = (0, fixture("v4_dev_vip_secondary.txt"), "")
    state = adapter().observe()
    assert state.local is True and state.interface_up is False


def test_observe_address_on_another_interface(net):
    net.answers["addrs"] = (0, fixture("all_families.txt"), "")
    state = VipAdapter("192.0.2.101", 24, "lo").observe()
    assert state.local is False
    assert [(a.ifname, a.label) for a in state.elsewhere] == [("eth0", "eth0:vip")]


def test_observe_missing_interface(net):
    net.answers["link"] = (1, "", fixture("ip_link_no_device.err"))
    state = adapter(iface="nosuch").observe()
    assert (state.local, state.interface_exists, state.interface_up) == (False, False, False)
    assert net.kinds() == ["link"]


def test_observe_other_ip_failure_raises(net):
    net.answers["link"] = (0, "", "", True)
    with pytest.raises(VipError, match="timed out"):
        adapter().observe()


def test_is_free(net):
    assert adapter().is_free() is True
    assert net.argv("dad") == ["arping", "-D", "-I", "eth0", "-c", "1", "-w", "2", VIP]


def test_arping_that_never_finishes_is_a_failed_check_not_free(net):
    """Issue 10 (6): silence from an arping that was killed before it said it sent its probe
    proves nothing: the check fails instead of calling the address free."""
    net.answers["dad"] = None                    # arping never ends by itself
    with pytest.raises(VipError, match="does not prove the address free"):
        adapter(dad_timeout=0.05, timeout=0.1).is_free()


def test_arping_that_sent_no_probe_is_a_failed_check(net):
    net.answers["dad"] = (0, "ARPING 192.0.2.100 from 0.0.0.0 eth0\nSent 0 probes\n", "")
    with pytest.raises(VipError, match="sent no probe"):
        adapter().is_free()


def test_dad_sends_dad_count_probes_each_run_to_its_end(net):
    adapter(dad_count=3, dad_timeout=0.3).is_free()
    assert net.kinds().count("dad") == 3
    assert net.argv("dad")[net.argv("dad").index("-w") + 1] == "2"


def test_is_free_false_when_someone_answers(net):
    net.answers["dad"] = (1, fixture("arping_dad_taken.out"), "")
    a = adapter()
    assert a.is_free() is False
    assert a.last_responders == [MAC_B + " (192.0.2.12)"]


@pytest.mark.parametrize("answer", [
    (1, "", fixture("arping_invalid_argument.out")),   # exit 1 but nobody answered
    (2, "", fixture("arping_no_device.out")),
    (2, fixture("arping_interface_down.out"), ""),
])
def test_is_free_raises_on_arping_failure(net, answer):
    net.answers["dad"] = answer
    with pytest.raises(VipError, match="duplicate address detection failed"):
        adapter().is_free()


def test_add_when_already_local_does_nothing(net):
    net.answers["addrs"] = (0, fixture("v4_dev_vip_secondary.txt"), "")
    assert "already local" in adapter().add()
    assert net.kinds() == ["link", "addrs"]


def test_add_after_dad(net):
    assert "added" in adapter().add()
    assert net.kinds() == ["link", "addrs", "dad", "dad", "add"]     # dad_count=2 probes
    assert net.argv("add") == ["ip", "addr", "add", VIP + "/24", "dev", "eth0"]


def test_add_refuses_a_taken_address(net):
    net.answers["dad"] = (1, fixture("arping_dad_taken.out"), "")
    with pytest.raises(VipTaken, match=MAC_B) as caught:
        adapter().add()
    assert caught.value.responders == [MAC_B + " (192.0.2.12)"]
    assert "add" not in net.kinds()


def test_add_tolerates_a_concurrent_add(net):
    net.answers["add"] = (2, "", fixture("ip_addr_add_exists.err"))
    assert "added" in adapter().add()


def test_add_raises_other_ip_errors(net):
    net.answers["add"] = (2, "", "Error: Nexthop has invalid gateway.\n")
    with pytest.raises(VipError):
        adapter().add()


def test_add_on_missing_interface(net):
    net.answers["link"] = (1, "", fixture("ip_link_no_device.err"))
    with pytest.raises(VipError, match="does not exist"):
        adapter().add()
    assert "dad" not in net.kinds()


def test_remove_uses_the_observed_prefix(net):
    net.answers["addrs"] = (0, fixture("v4_dev_vip_secondary.txt"), "")
    assert "removed" in adapter(prefixlen=25).remove()
    assert net.argv("del") == ["ip", "addr", "del", VIP + "/24", "dev", "eth0"]


def test_remove_is_idempotent(net):
    assert "not local" in adapter().remove()
    assert "del" not in net.kinds()
    net.answers["addrs"] = (0, fixture("v4_dev_vip_secondary.txt"), "")
    net.answers["del"] = (2, "", fixture("ip_addr_del_missing.err"))   # removed meanwhile
    assert "removed" in adapter().remove()


def test_state_changes_are_logged(net, mocker):
    info = mocker.patch.object(vip_mod.log, "info")
    adapter().add()
    assert info.call_args[0][1] == "ip addr add 192.0.2.100/24 dev eth0"


# -- background announcers (real child processes, no network) -------------------------------

def _fake_arping(tmp_path, seconds):
    path = tmp_path / "arping"
    path.write_text("#!/bin/sh\nexec sleep %s\n" % seconds)
    path.chmod(0o755)
    return str(path)


def _my_children():
    return [c for c in psutil.Process().children(recursive=True) if c.name() == "sleep"]


def test_announce_returns_at_once_and_leaves_no_zombie(tmp_path):
    a = adapter(arping=_fake_arping(tmp_path, 0.3), garp_count=3, garp_interval=0.05)
    try:
        a.announce()
        assert a.reap() == 1                      # still sending: it runs in the background
        for _ in range(200):
            if a.reap() == 0:
                break
            time.sleep(0.02)
        assert a.reap() == 0
        assert _my_children() == []               # every child was waited for
    finally:
        a.close()


def test_new_announce_cancels_the_older_one(tmp_path):
    a = adapter(arping=_fake_arping(tmp_path, 30), garp_count=2, garp_interval=5)
    try:
        a.announce()
        first = a._announcers[0]
        a.announce()
        first.join(5)
        assert not first.is_alive() and first.sent == 1
    finally:
        assert a.close() == 0
    assert _my_children() == []


def test_close_kills_running_children(tmp_path):
    a = adapter(arping=_fake_arping(tmp_path, 30), garp_count=3, garp_interval=0.01)
    a.announce()
    for _ in range(100):
        if len(_my_children()) == 3:
            break
        time.sleep(0.02)
    assert len(_my_children()) == 3
    assert a.close() == 0
    assert _my_children() == []


def test_announce_disabled_with_count_zero(mocker):
    popen = mocker.patch.object(vip_mod.subprocess, "Popen")
    a = adapter(garp_count=0)
    assert "disabled" in a.announce() and a.reap() == 0
    popen.assert_not_called()


def test_announce_argv(mocker):
    popen = mocker.patch.object(vip_mod.subprocess, "Popen")
    popen.return_value.poll.return_value = 0
    a = adapter(garp_count=2, garp_interval=0.01)
    a.announce()
    a._announcers[0].join(5)
    assert a.reap() == 0 and popen.call_count == 2
    assert popen.call_args[0][0] == ["arping", "-U", "-I", "eth0", "-c", "1", VIP]


# -- real ip and arping between two namespaces ----------------------------------------------

def _in(ns, argv):
    return subprocess.run(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=10)


def _mac(ns):
    line = _in(ns, ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
    return line.split("link/ether ")[1].split()[0].lower()


@pytest.fixture
def two_hosts_arping(two_hosts):
    if not shutil.which("arping"):
        pytest.skip("arping (iputils-arping) is not installed")
    return two_hosts


def _ns_adapter(ns, **kwargs):
    return VipAdapter(VIP, 24, "eth0", ip="ip netns exec %s ip" % ns,
                      arping="ip netns exec %s arping" % ns, **kwargs)


@pytest.mark.netns
def test_real_dad_add_remove(two_hosts_arping):
    ns_a, ns_b, _ = two_hosts_arping
    a, b = _ns_adapter(ns_a), _ns_adapter(ns_b)
    assert a.is_free() is True
    assert "added" in b.add()                     # the other host holds the address
    assert a.is_free() is False
    with pytest.raises(VipTaken) as caught:
        a.add()
    assert _mac(ns_b).upper() in str(caught.value)
    assert not a.observe().local
    assert "removed" in b.remove() and "not local" in b.remove()
    assert "added" in a.add() and "already local" in a.add()
    assert a.observe().local and VIP in _in(ns_a, ["ip", "-o", "-4", "addr"]).stdout
    assert "removed" in a.remove() and not a.observe().local


@pytest.mark.netns
def test_real_gratuitous_arp_updates_the_neighbour(two_hosts_arping):
    ns_a, ns_b, _ = two_hosts_arping
    # namespace b still believes the old owner (a made-up MAC) holds the floating IP
    assert _in(ns_b, ["ip", "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:01", "dev",
                      "eth0", "nud", "stale"]).returncode == 0
    a = _ns_adapter(ns_a, garp_count=3, garp_interval=0.2)
    try:
        a.add()
        mac = _mac(ns_a)
        assert mac not in _in(ns_b, ["ip", "neigh", "show", VIP]).stdout.lower()  # add is silent
        a.announce()
        assert a.reap() == 1                      # announce returned while still sending
        for _ in range(100):
            if mac in _in(ns_b, ["ip", "neigh", "show", VIP]).stdout.lower():
                break
            time.sleep(0.05)
        assert mac in _in(ns_b, ["ip", "neigh", "show", VIP]).stdout.lower()
    finally:
        a.close()
    assert a.reap() == 0


def test_add_after_an_orderly_release_makes_one_short_probe(net):
    assert "added" in adapter().add(released_timeout=0.05)
    assert net.kinds() == ["link", "addrs", "dad", "add"]


def test_add_after_an_orderly_release_still_refuses_a_taken_address(net):
    net.answers["dad"] = (1, fixture("arping_dad_taken.out"), "")
    with pytest.raises(VipTaken):
        adapter().add(released_timeout=0.05)
    assert "add" not in net.kinds()


def test_add_with_a_zero_release_window_skips_dad(net):
    assert "added" in adapter().add(released_timeout=0)
    assert net.kinds() == ["link", "addrs", "add"]


# -- ARP on a raw socket (issue 10: probes that know they went out) -----------------------------

def test_arp_frames_round_trip():
    from iscsi_ha.adapters import arp
    mac = arp.mac_bytes("02:00:00:00:00:0a")
    probe = arp.parse(arp.probe_frame(mac, VIP))
    assert probe == (arp.ARP_REQUEST, mac, "0.0.0.0", arp.ZERO_MAC, VIP)
    garp = arp.parse(arp.gratuitous_frame(mac, VIP))
    assert garp[2] == garp[4] == VIP
    assert len(arp.probe_frame(mac, VIP)) == 42
    other = arp.mac_bytes("02:00:00:00:00:0b")
    reply = arp.parse(arp.build(arp.ARP_REPLY, other, VIP, "0.0.0.0", dst_mac=mac,
                                target_mac=mac))
    assert arp.claims(reply, VIP, mac) and not arp.claims(reply, VIP, other)
    assert not arp.claims(probe, VIP, other)             # a probe claims nothing (sender 0)
    assert arp.parse(b"\x00" * 20) is None
    assert arp.mac_text(other) == "02:00:00:00:00:0B"


def _arp_in(ns, verb, count=2):
    import json
    import sys
    proc = _in(ns, [sys.executable, "-m", "iscsi_ha.adapters.arp", verb, "eth0", VIP,
                    str(count)])
    return proc.returncode, json.loads(proc.stdout or "{}")


@pytest.mark.netns
def test_real_raw_socket_probe_free_taken_and_interface_down(two_hosts):
    ns_a, ns_b, _ = two_hosts
    code, free = _arp_in(ns_a, "probe")
    assert code == 0 and free == {"sent": 2, "answers": []}
    assert _in(ns_b, ["ip", "addr", "add", VIP + "/24", "dev", "eth0"]).returncode == 0
    code, taken = _arp_in(ns_a, "probe")
    assert code == 0 and taken["answers"] == [_mac(ns_b).upper()]
    # The holder's own conflict check: a holds the address too, b still answers for it.
    assert _in(ns_a, ["ip", "addr", "add", VIP + "/24", "dev", "eth0"]).returncode == 0
    code, conflict = _arp_in(ns_a, "probe", 1)
    assert code == 0 and conflict["answers"] == [_mac(ns_b).upper()]
    assert _in(ns_a, ["ip", "link", "set", "eth0", "down"]).returncode == 0
    code, down = _arp_in(ns_a, "probe")
    assert code == 1 and "interface down" in down["error"]   # never "nobody answered"


@pytest.mark.netns
def test_real_raw_socket_gratuitous_arp_updates_the_neighbour(two_hosts):
    ns_a, ns_b, _ = two_hosts
    assert _in(ns_b, ["ip", "neigh", "replace", VIP, "lladdr", "02:00:00:00:00:01", "dev",
                      "eth0", "nud", "stale"]).returncode == 0
    assert _in(ns_a, ["ip", "addr", "add", VIP + "/24", "dev", "eth0"]).returncode == 0
    code, sent = _arp_in(ns_a, "announce", 3)
    assert code == 0 and sent == {"sent": 3}
    mac = _mac(ns_a)
    for _ in range(100):
        if mac in _in(ns_b, ["ip", "neigh", "show", VIP]).stdout.lower():
            break
        time.sleep(0.05)
    assert mac in _in(ns_b, ["ip", "neigh", "show", VIP]).stdout.lower()


@pytest.mark.netns
def test_real_carrier_loss_is_seen(two_hosts, ns_prefix):
    ns_a, _, _ = two_hosts
    a = _ns_adapter(ns_a)
    assert a.observe().carrier is True
    subprocess.run(["ip", "link", "set", ns_prefix + "va", "down"], check=True, timeout=10)
    state = a.observe()
    assert state.interface_up is True and state.carrier is False


class _Watch(object):
    def __init__(self):
        self.changed = True

    def take(self):
        changed, self.changed = self.changed, False
        return changed


def test_observe_keeps_its_reading_while_the_network_is_quiet(monkeypatch):
    """With a change watch (the daemon's rtnetlink socket), ``ip`` runs only after a link or
    address message, when the reading is older than CACHE_MAX_AGE, or for a change of ours."""
    from iscsi_ha.adapters import vip as vip_mod
    adapter = vip_mod.VipAdapter("192.0.2.100", 24, "eth0")
    reads = []
    monkeypatch.setattr(adapter, "_observe", lambda: reads.append(1) or len(reads))
    assert adapter.observe() == 1 and len(reads) == 1          # no watch: always read
    watch, now = _Watch(), [100.0]
    adapter.change_watch = watch
    clock = lambda: now[0]
    assert adapter.observe(clock=clock) == 2 and not adapter.cache_used
    assert adapter.observe(clock=clock) == 2 and adapter.cache_used
    watch.changed = True                                          # an address message
    assert adapter.observe(clock=clock) == 3 and not adapter.cache_used
    assert adapter.observe(fresh=True, clock=clock) == 4
    now[0] += adapter.CACHE_MAX_AGE
    assert adapter.observe(clock=clock) == 5
    adapter.forget()
    assert adapter.observe(clock=clock) == 6
    assert adapter.observe(clock=clock) == 6 and adapter.cache_used


def test_arp_socket_closed_in_the_background_or_at_once_without_a_thread(monkeypatch):
    """Leaving ``with ArpSocket(...)`` closes the socket off the caller's path (its release
    waits for an RCU grace period); when no thread can start, it is closed right there."""
    import threading as threading_mod
    from iscsi_ha.adapters import arp as arp_mod

    class Sock(object):
        closed = 0

        def close(self):
            self.closed += 1
    made = arp_mod.ArpSocket.__new__(arp_mod.ArpSocket)
    made.sock = Sock()
    made.__exit__(None, None, None)
    for thread in threading_mod.enumerate():
        if thread.name == "arp-close":
            thread.join(5)
    assert made.sock.closed == 1

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading_mod.Thread, "start", refuse)
    made.sock = Sock()
    made.__exit__(None, None, None)
    assert made.sock.closed == 1
