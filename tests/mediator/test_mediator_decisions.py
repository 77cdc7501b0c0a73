"""Promote / fence-peer / unfence / handover / force / observer over real TLS on 127.0.0.1.

Lease 1 s and margin 0.3 s so the timing rules run for real in a short test."""
import threading
import time

import pytest

from harness import Running, drbd
from test_mediator_tls import sync_pool, wait_for

U1 = "8E0E9B2D3B0E1B4C"
U2 = "1234567890ABCDE0"


@pytest.fixture
def pool(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    a = med.client(med.enroll(tmp_path, "p1", "a"), "p1", "a")
    b = med.client(med.enroll(tmp_path, "p1", "b"), "p1", "b")
    gen = sync_pool(med, a, b)
    return a, b, gen


def events(med, pool="p1"):
    return [(e["event"], e.get("result")) for e in med.server.store.audit(pool, 1000)]


def test_promote_waits_for_primary_lease_then_granted_once(med, pool):
    a, b, gen = pool
    time.sleep(1.4)                     # restart grace over; A keeps heartbeating
    a.call("heartbeat", gen=gen, drbd=drbd("Primary"))
    ans = b.call("promote", gen=gen, drbd=drbd(conn="Connecting", peer_disk="DUnknown"))
    assert ans["result"] == "retry" and 0 < ans["retry_after_ms"] <= 1400
    assert "lease" in ans["reason"]
    # A goes silent; B keeps heartbeating; after lease + margin the grant comes
    t0 = time.monotonic()
    while True:
        b.call("heartbeat", gen=gen, drbd=drbd(conn="Connecting", peer_disk="DUnknown"))
        ans = b.call("promote", gen=gen, drbd=drbd(conn="Connecting", peer_disk="DUnknown"))
        if ans["result"] != "retry":
            break
        assert time.monotonic() - t0 < 5
        time.sleep(0.1)
    assert ans["result"] == "granted" and ans["gen"] == gen + 1
    assert time.monotonic() - t0 >= 1.0     # never before A's lease ran out
    rec = med.server.store.read("p1")[0]
    assert rec["primary"] == "b" and rec["outdated"] == ["a"] and rec["eligible"] == ["b"]
    # its answer lost: asking again gives the same grant, no second change
    again = b.call("promote", gen=gen, drbd=drbd())
    assert again["result"] == "granted" and again["gen"] == gen + 1
    assert med.server.store.read("p1")[0]["generation"] == gen + 1
    assert ("promote", "granted") in events(med) and ("promote", "retry") in events(med)


def test_stale_primary_returns_deposed(med, pool):
    a, b, gen = pool
    time.sleep(1.4)
    assert b.call("promote", gen=gen, drbd=drbd())["result"] == "granted"
    hb = a.call("heartbeat", gen=gen, drbd=drbd("Primary", conn="Connecting",
                                                peer_disk="DUnknown"))
    assert hb["deposed"] is True and hb["primary"] == "b" and "a" in hb["outdated"]
    ans = a.call("fence-peer", gen=gen)
    assert ans["result"] == "deposed" and ans["exit"] == 6
    # A demotes and resyncs from B; both in sync on B's data: A golden again
    gen2 = gen + 1
    for _ in range(20):
        b.call("heartbeat", gen=gen2, drbd=drbd("Primary", uuid=U2))
        gen2 = a.call("heartbeat", gen=gen2, drbd=drbd("Secondary", uuid=U2))["gen"]
        if med.server.store.cached("p1")[0]["outdated"] == []:
            break
        time.sleep(0.05)
    rec = med.server.store.cached("p1")[0]
    assert rec["primary"] == "b" and rec["eligible"] == ["a", "b"] and rec["synced_uuid"] == U2


def test_link_cut_both_reach_mediator_primary_fences_peer(med, pool):
    a, b, gen = pool
    ans = a.call("fence-peer", gen=gen)
    assert ans["result"] == "outdated" and ans["exit"] == 4 and ans["gen"] == gen + 1
    # repeat (handler run again): already outdated, no change
    again = a.call("fence-peer", gen=gen + 1)
    assert again["exit"] == 3 and med.server.store.read("p1")[0]["generation"] == gen + 1
    time.sleep(1.4)
    hb = b.call("heartbeat", gen=gen, drbd=drbd(conn="Connecting", peer_disk="DUnknown"))
    assert "b" in hb["outdated"]
    for g in (gen, gen + 1):
        ans = b.call("promote", gen=g, drbd=drbd(conn="Connecting", peer_disk="DUnknown"))
        assert ans["result"] == "refused"
    assert med.server.store.read("p1")[0]["primary"] == "a"


def test_both_claim_at_once_exactly_one_wins(med, pool):
    a, b, gen = pool
    time.sleep(1.4)                     # A's lease over (silent), grace over
    results = {}

    def run(name, fn):
        results[name] = fn()

    ta = threading.Thread(target=run, args=("a", lambda: a.call("fence-peer", gen=gen)))
    tb = threading.Thread(target=run, args=("b", lambda: b.call("promote", gen=gen,
                                                                 drbd=drbd())))
    ta.start(), tb.start()
    ta.join(10), tb.join(10)
    a_won = results["a"]["result"] == "outdated"
    b_won = results["b"]["result"] == "granted"
    assert a_won != b_won, results
    rec = med.server.store.read("p1")[0]
    assert rec["primary"] == ("a" if a_won else "b") and rec["generation"] == gen + 1
    if b_won:
        assert results["a"]["exit"] == 6
    else:
        assert results["b"]["result"] == "refused"


def test_two_secondaries_claim_exactly_one(med, tmp_path):
    med.admin(op="pool-add", pool="p2", nodes=["a", "b"])
    a = med.client(med.enroll(tmp_path, "p2", "a"), "p2", "a")
    b = med.client(med.enroll(tmp_path, "p2", "b"), "p2", "b")
    gen = None
    for _ in range(20):      # both Secondary, in sync: golden with no primary
        gen = a.call("heartbeat", gen=gen, drbd=drbd())["gen"]
        gen = b.call("heartbeat", gen=gen, drbd=drbd())["gen"]
        rec = med.server.store.cached("p2")[0]
        # the in-sync change is applied after b's answer: wait until the answers carry it
        if rec["eligible"] == ["a", "b"] and rec["generation"] == gen:
            break
        time.sleep(0.05)
    assert rec["eligible"] == ["a", "b"] and rec["generation"] == gen, rec
    time.sleep(1.4)
    out = []
    ts = [threading.Thread(target=lambda c=c: out.append(c.call("promote", gen=gen,
                                                                 drbd=drbd())))
          for c in (a, b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert sorted(o["result"] for o in out) == ["granted", "refused"], out


def test_restart_grants_nothing_inside_grace(med, pool, tmp_path):
    a, b, gen = pool
    med.stop()
    again = Running(tmp_path / "state", lease=1.0, margin=0.3)
    try:
        b2 = b                          # same credential, the restarted process
        b2.addresses = [("127.0.0.1", again.port)]
        b2.close()
        t0 = time.monotonic()
        ans = b2.call("promote", gen=gen, drbd=drbd())
        assert ans["result"] == "retry" and ans["reason"] == "a's lease may still be live"
        assert again.server.store.read("p1")[0]["primary"] == "a"
        while ans["result"] == "retry":
            assert time.monotonic() - t0 < 4
            time.sleep(0.1)
            ans = b2.call("promote", gen=gen, drbd=drbd())
        assert ans["result"] == "granted"
        assert time.monotonic() - t0 >= 1.2    # lease + margin after the restart
    finally:
        again.stop()


def test_refusals_not_eligible_wrong_data_auto_off_observer(med, pool):
    a, b, gen = pool
    time.sleep(1.4)
    ans = b.call("promote", gen=gen, drbd=drbd(uuid=U2))
    assert ans["result"] == "refused" and "not the synced one" in ans["reason"]
    ans = b.call("promote", gen=gen, drbd=drbd(disk="Outdated"))
    assert ans["result"] == "refused" and "not UpToDate" in ans["reason"]
    ans = b.call("promote", gen=gen - 1, drbd=drbd())
    assert ans["result"] == "refused" and "stale generation" in ans["reason"]
    med.admin(op="pool-set", pool="p1", auto_failover=False)
    ans = b.call("promote", gen=gen, drbd=drbd())
    assert ans["result"] == "refused" and "automatic failover is off" in ans["reason"]
    med.admin(op="pool-set", pool="p1", auto_failover=True, observer=True)
    ans = b.call("promote", gen=gen, drbd=drbd())
    assert ans["result"] == "refused" and "observer" in ans["reason"]
    assert a.call("fence-peer", gen=gen)["exit"] == 1
    sim = med.admin(op="simulate", pool="p1", node="b", what="promote")
    assert sim["result"] == "refused" and "observer" in sim["reason"]
    med.admin(op="pool-set", pool="p1", observer=False)
    before = med.server.store.read("p1")
    sim = med.admin(op="simulate", pool="p1", node="b", what="promote")
    assert sim["result"] == "granted"
    sim = med.admin(op="simulate", pool="p1", node="a", what="fence-peer")
    assert sim["result"] == "outdated" and sim["exit"] == 4
    assert med.server.store.read("p1") == before       # simulate changed nothing
    assert med.server.store.read("p1")[0]["primary"] == "a"
    assert ("promote", "refused") in events(med)


def test_handover_and_force_promote(med, pool):
    a, b, gen = pool
    a.call("heartbeat", gen=gen, drbd=drbd("Primary"))
    b.call("heartbeat", gen=gen, drbd=drbd())
    ans = b.call("handover", gen=gen, target="a")
    assert ans["result"] == "refused" and "only the primary" in ans["reason"]
    ans = a.call("handover", gen=gen, target="b")
    assert ans["result"] == "granted" and ans["primary"] == "b"
    from iscsi_ha_mediator.cli import CliError
    with pytest.raises(CliError):
        med.admin(op="force-promote", pool="p1", node="a")
    out = med.admin(op="force-promote", pool="p1", node="a", accept_data_loss=True)
    assert out["generation"] == gen + 2
    rec = med.server.store.read("p1")[0]
    assert rec["primary"] == "a" and rec["outdated"] == ["b"]
    assert ("force-promote", "granted") in events(med)
    assert ("handover", "granted") in events(med)


def test_planned_switchover_over_live_link_moves_recorded_primary(med, pool):
    a, b, gen = pool
    for _ in range(20):                  # the agents switched over: b Primary, a Secondary
        gen = b.call("heartbeat", gen=gen, drbd=drbd("Primary"))["gen"]
        gen = a.call("heartbeat", gen=gen, drbd=drbd("Secondary"))["gen"]
        if med.server.store.cached("p1")[0]["primary"] == "b":
            break
        time.sleep(0.05)
    rec = med.server.store.cached("p1")[0]
    assert rec["primary"] == "b" and rec["eligible"] == ["a", "b"]
    assert ("in-sync", None) in events(med)
    # a later link cut: b (the real primary) fences a, not the other way round
    assert b.call("fence-peer", gen=rec["generation"])["exit"] == 4
