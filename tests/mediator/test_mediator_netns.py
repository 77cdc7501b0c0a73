"""The mediator in its own network namespace on a third network (198.51.100.64/27), hosts a and
b in theirs, the agent's own client, and the fault verbs: cut, restore, stall, stop, start.
Lease 3 s + margin 0.5 s (each request here is a new process in a namespace: ~0.3 s)."""
import time

import pytest

from iscsi_ha_lab.mediator_net import MediatorNet

pytestmark = pytest.mark.netns

UUID = "8E0E9B2D3B0E1B4C"


def drbd(role="Secondary", conn="Connected", peer_disk="UpToDate"):
    return {"role": role, "disk": "UpToDate", "conn": conn, "peer_disk": peer_disk,
            "current_uuid": UUID}


@pytest.fixture
def net(ns_prefix, tmp_path):
    state = str(tmp_path / "state")
    n = MediatorNet(ns_prefix, state)
    try:
        n.up()
        n.init(lease=3.0, margin=0.5)
        n.start()
        yield n
    finally:
        n.down()


def beat(net, host, cred, gen, role):
    return net.call(host, cred, "p1", "heartbeat", {"gen": gen, "drbd": drbd(role)})


def test_faults_on_the_mediator_path(net, tmp_path):
    assert net.admin({"op": "pool-add", "pool": "p1", "nodes": ["a", "b"]})["ok"]
    cred = {h: net.enroll("p1", h, str(tmp_path / ("cred-" + h))) for h in ("a", "b")}
    gen = None
    for _ in range(30):                     # both in sync, a primary: golden
        gen = beat(net, "a", cred["a"], gen, "Primary")["gen"]
        gen = beat(net, "b", cred["b"], gen, "Secondary")["gen"]
        pool = net.admin({"op": "pool-show", "pool": "p1"})["pool"]
        if pool["eligible"] == ["a", "b"] and pool["primary"] == "a" and \
                pool["generation"] == gen:      # the answers carry the in-sync change
            break
        time.sleep(0.1)
    assert pool["eligible"] == ["a", "b"] and pool["generation"] == gen

    # the mediator's path to a is cut (replication and management untouched in this rig)
    net.cut("a")
    assert "error" in beat(net, "a", cred["a"], gen, "Primary")
    t0 = time.monotonic()
    results = []
    while True:
        beat(net, "b", cred["b"], gen, "Secondary")
        ans = net.call("b", cred["b"], "p1", "promote", {"gen": gen, "drbd": drbd(
            conn="Connecting", peer_disk="DUnknown")})
        results.append(ans.get("result"))
        if ans.get("result") != "retry":
            break
        assert time.monotonic() - t0 < 15, results
        time.sleep(0.2)
    assert ans["result"] == "granted" and ans["gen"] == gen + 1 and "retry" in results

    # a comes back: deposed, its fence-peer says "outdate yourself"
    net.restore("a")
    hb = beat(net, "a", cred["a"], gen, "Primary")
    assert hb["deposed"] is True and hb["primary"] == "b"
    assert net.call("a", cred["a"], "p1", "fence-peer", {"gen": gen})["exit"] == 6

    # the mediator is stopped: no answer, nothing changes; restarted: grace, then as before
    net.stop()
    assert "error" in beat(net, "b", cred["b"], gen + 1, "Primary")
    net.start()
    hb = beat(net, "b", cred["b"], gen + 1, "Primary")
    assert hb["primary"] == "b" and hb["gen"] == gen + 1 and hb["grace_left_ms"] > 0
    ans = net.call("a", cred["a"], "p1", "promote", {"gen": gen + 1, "drbd": drbd()})
    assert ans["result"] in ("retry", "refused")
    assert net.admin({"op": "pool-show", "pool": "p1"})["pool"]["primary"] == "b"

    # the mediator is slow (frozen 1.5 s): the answer still comes, later; nothing is lost
    net.stall(1.5)
    hb = net.call("b", cred["b"], "p1", "heartbeat", {"gen": gen + 1, "drbd": drbd("Primary")},
                  timeout=4.0)
    assert hb.get("ok") and hb["rtt_s"] >= 1.0 and hb["primary"] == "b"
    assert beat(net, "b", cred["b"], gen + 1, "Primary")["rtt_s"] < 1.0


def test_credential_of_the_other_node_refused_over_the_third_network(net, tmp_path):
    assert net.admin({"op": "pool-add", "pool": "p1", "nodes": ["a", "b"]})["ok"]
    cred_b = net.enroll("p1", "b", str(tmp_path / "cred-b"))
    before = net.admin({"op": "pool-show", "pool": "p1"})["pool"]
    ans = net.call("a", cred_b, "p1", "fence-peer", {"gen": 1})     # b's credential as a
    assert "may act only as node b of pool p1" in ans["error"]
    after = net.admin({"op": "pool-show", "pool": "p1"})["pool"]
    assert (before["generation"], before["outdated"]) == (after["generation"],
                                                          after["outdated"])
