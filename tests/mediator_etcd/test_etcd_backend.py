"""The etcd backend against real etcd: CAS per change, audit in the same txn, no write per
heartbeat, the watch-fed cache, presence and the grace rule for several instances."""
import json
import threading
import time

import pytest

from iscsi_ha_mediator import etcd_backend as eb
from iscsi_ha_mediator import etcd_client as ec
from etcd_cluster import wait_for
from tcp_proxy import LossyProxy

pytestmark = pytest.mark.etcd

LEASE, MARGIN = 2.0, 0.5


@pytest.fixture
def backends(etcd1):
    made = []

    def make(endpoints=None, **kw):
        kw.setdefault("lease", LEASE)
        kw.setdefault("margin", MARGIN)
        s = ec.EtcdSettings(endpoints or etcd1.endpoints, timeout=1.0, total_timeout=3.0)
        b = eb.EtcdBackend(s, **kw).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def etcd_revision(client):
    return int(client.status()["header"]["revision"])


def test_change_is_one_txn_with_its_audit(backends, etcd1):
    a = backends()
    rev1 = a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    rev2 = a.commit("p", rev1, {"generation": 2, "primary": "B"}, {"event": "promote", "node": "B"})
    assert rev2 == rev1 + 1  # one revision per change: the record and its audit together
    raw, mod = etcd1.get("/iscsi-ha-mediator/pools/p")
    assert json.loads(raw.decode()) == {"generation": 2, "primary": "B"} and mod == rev2
    trail = a.audit("p")
    assert [(e["event"], e["generation"]) for e in trail] == [("create", 1), ("promote", 2)]
    assert a.read("p") == ({"generation": 2, "primary": "B"}, rev2)


def test_stale_revision_loses_and_sees_the_winner(backends):
    a, b = backends(), backends()
    rev = a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    a.commit("p", rev, {"generation": 2, "primary": "A", "outdated": ["B"]}, {"event": "fence"})
    with pytest.raises(eb.Conflict) as err:
        b.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"})
    assert err.value.record["outdated"] == ["B"] and err.value.revision > rev
    with pytest.raises(eb.Conflict):
        b.commit("p", 0, {"generation": 1}, {"event": "create"})


def test_concurrent_commits_on_one_revision_exactly_one_wins(backends):
    instances = [backends() for _ in range(3)]
    rev = instances[0].commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    wins, losses = [], []
    barrier = threading.Barrier(6)

    def claim(backend, who):
        barrier.wait(5)
        try:
            wins.append(backend.commit("p", rev, {"generation": 2, "primary": who},
                                       {"event": "promote", "node": who}))
        except eb.Conflict:
            losses.append(who)

    threads = [threading.Thread(target=claim, args=(instances[i % 3], "N%d" % i))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(wins) == 1 and len(losses) == 5
    record, _ = instances[1].read("p")
    assert record["generation"] == 2
    assert [e["node"] for e in instances[2].audit("p") if e["event"] == "promote"] == \
        [record["primary"]]


def test_heartbeats_never_write(backends):
    a = backends()
    a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    a.node_seen("p", "A")
    a.node_seen("p", "B")
    # The two presence announcements (a node started talking to this instance) land...
    assert wait_for(lambda: len(a.client.range(a.prefix + "presence/", prefix=True)[0]) == 2)
    before = etcd_revision(a.client)
    t_end = time.monotonic() + 1.0
    beats = 0
    while time.monotonic() < t_end:  # ... and then a storm of heartbeats writes nothing.
        a.node_seen("p", "A")
        a.node_seen("p", "B")
        beats += 2
    time.sleep(0.3)
    assert beats > 1000
    assert etcd_revision(a.client) == before


def test_cache_follows_other_instance_by_watch(backends):
    a, b = backends(), backends()
    rev = a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    assert wait_for(lambda: b.cached("p") == ({"generation": 1, "primary": "A"}, rev), 3)
    rev2 = a.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"})
    assert wait_for(lambda: b.cached("p")[1] == rev2, 3)
    assert "p" in b.pools()


def test_new_instance_grants_nothing_for_lease_plus_margin(backends):
    a = backends()
    a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    t0 = time.monotonic()
    a.node_seen("p", "B")  # only the candidate talks to this (fresh) instance
    ok, retry = a.grant_allowed("p", "A")
    assert not ok and LEASE < retry <= LEASE + MARGIN
    while time.monotonic() - t0 < LEASE + MARGIN - 0.2:
        a.node_seen("p", "B")
        assert not a.grant_allowed("p", "A")[0]
        time.sleep(0.1)
    assert wait_for(lambda: (a.node_seen("p", "B"), a.grant_allowed("p", "A")[0])[1], 1.0)


def test_primary_heard_elsewhere_blocks_grant_and_the_txn(backends):
    x, y = backends(), backends()
    rev = x.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
    x.node_seen("p", "A")             # A talks to instance X
    assert wait_for(lambda: y.heard_elsewhere("p", "A") == [x.instance], 3)
    y.node_seen("p", "B")
    assert y.grant_allowed("p", "A") == (False, LEASE)  # heard elsewhere: ask in a lease
    # Even a grant that skipped the check is refused by etcd's presence compare.
    with pytest.raises(eb.Conflict) as err:
        y.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"},
                 absent_presence=["A"])
    assert "another mediator instance" in str(err.value)
    # X stops (its lease revoked): Y waits L + margin from the moment A vanished.
    x.stop()
    assert wait_for(lambda: y.heard_elsewhere("p", "A") == [], 3)
    gone = time.monotonic()
    y.node_seen("p", "B")
    ok, retry = y.grant_allowed("p", "A")
    assert not ok and retry > LEASE
    assert wait_for(lambda: (y.node_seen("p", "B"), y.grant_allowed("p", "A")[0])[1],
                    LEASE + MARGIN + 1)
    assert time.monotonic() - gone >= LEASE + MARGIN - 0.1
    assert y.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"},
                    absent_presence=["A"]) > rev


def test_presence_of_a_silent_node_is_withdrawn(backends):
    a = backends()
    a.node_seen("p", "A")
    key = a.prefix + "presence/p/A/" + a.instance
    assert wait_for(lambda: a.client.get(key) is not None, 3)
    # No heartbeat for one lease: the instance withdraws its presence (a transition, one write).
    assert wait_for(lambda: a.client.get(key) is None, LEASE * 3)


def test_lost_answer_is_applied_once_and_reported_as_applied(backends, etcd1):
    """The first txn reaches etcd but its answer is lost; the client sends it to the next
    endpoint; the repeat fails its compare and the audit key proves the first applied."""
    proxy = LossyProxy(etcd1.members[0].client_port)
    try:
        a = backends(endpoints=[proxy.url] + etcd1.endpoints)
        rev = a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
        proxy.drop_txn_replies = 1
        rev2 = a.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"})
        assert getattr(proxy, "dropped", 0) == 1
        assert a.read("p") == ({"generation": 2, "primary": "B"}, rev2)
        assert [e["event"] for e in a.audit("p")] == ["create", "promote"]
    finally:
        proxy.close()


def test_lost_answer_settled_when_only_one_endpoint(backends, etcd1):
    proxy = LossyProxy(etcd1.members[0].client_port)
    try:
        a = backends(endpoints=[proxy.url])
        rev = a.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
        proxy.drop_txn_replies = 1
        rev2 = a.commit("p", rev, {"generation": 2, "primary": "B"}, {"event": "promote"})
        assert a.read("p") == ({"generation": 2, "primary": "B"}, rev2)
        assert len(a.audit("p")) == 2
    finally:
        proxy.close()


def test_settings_from_config(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    s = eb.settings_from_config({"etcd_endpoints": "http://127.0.0.1:2379,http://127.0.0.1:2381",
                                 "etcd_username": "mediator", "etcd_password_file": str(pw),
                                 "etcd_timeout": "1.5"})
    assert s.password == "s3cret" and s.timeout == 1.5 and len(s.endpoints) == 2
    pw.chmod(0o644)
    with pytest.raises(ec.EtcdSettingsError) as err:
        eb.settings_from_config({"etcd_endpoints": "http://127.0.0.1:2379",
                                 "etcd_username": "m", "etcd_password_file": str(pw)})
    assert "chmod 600" in str(err.value)
    with pytest.raises(ec.EtcdSettingsError) as err:
        eb.settings_from_config({"etcd_endpoints": "http://127.0.0.1:2379", "etcd_timeout": "x"})
    assert "etcd_timeout" in str(err.value)
    with pytest.raises(ec.EtcdSettingsError):
        eb.settings_from_config({})
    with pytest.raises(ec.EtcdSettingsError) as err:
        eb.settings_from_config({"etcd_endpoints": "http://127.0.0.1:2379", "etcd_endpoint": "x"})
    assert "unknown setting 'etcd_endpoint'" in str(err.value)


def test_backend_over_tls_with_client_certificate(etcd1_tls, tls_files):
    s = ec.EtcdSettings(etcd1_tls.endpoints, ca_file=tls_files.ca_cert,
                        cert_file=tls_files.client_cert, key_file=tls_files.client_key)
    a = eb.EtcdBackend(s, lease=LEASE, margin=MARGIN).start()
    b = eb.EtcdBackend(s, lease=LEASE, margin=MARGIN).start()
    try:
        rev = a.commit("p", 0, {"generation": 1}, {"event": "create"})
        assert wait_for(lambda: b.cached("p") == ({"generation": 1}, rev), 3)  # watch over TLS
    finally:
        a.stop()
        b.stop()


# -- the storage contract (mediator/iscsi_ha_mediator/storage.py) on etcd ----------------------
from iscsi_ha_mediator import storage as st  # noqa: E402


def test_is_a_storage_and_contract_basics(backends):
    a = backends()
    assert isinstance(a, st.Storage) and a.concurrency > 1
    rec = st.new_record("pool/with/slashes", ["a", "b"])
    rev1 = a.commit(rec["pool"], 0, rec, {"event": "pool-add"})
    with pytest.raises(st.Conflict) as err:
        a.commit(rec["pool"], 0, rec, {"event": "again"})
    assert err.value.revision == rev1 and err.value.record["generation"] == 1
    rec2 = dict(rec, generation=2, primary="a")
    rev2 = a.commit(rec["pool"], rev1, rec2, {"event": "promote"})
    with pytest.raises(st.Conflict) as err:
        a.commit(rec["pool"], rev1, dict(rec, generation=2, primary="b"), {"event": "promote"})
    assert err.value.record["primary"] == "a"
    assert a.pools() == ["pool/with/slashes"]
    assert a.cached(rec["pool"]) == (rec2, rev2) == a.read(rec["pool"])
    trail = a.audit(rec["pool"])
    assert [e["event"] for e in trail] == ["pool-add", "promote"]
    assert all(e["pool"] == rec["pool"] and "time" in e for e in trail)
    assert trail[1]["generation"] == 2


def test_contract_docs_audit_and_delete(backends):
    a, b = backends(), backends()
    rev = a.commit("p", 0, st.new_record("p", ["a", "b"]), {"event": "pool-add"})
    r1 = a.put_doc("cred/p", b"x", 0, audit={"event": "credential-issue"}, pool="p")
    with pytest.raises(st.Conflict):
        a.put_doc("cred/p", b"y", 0)
    assert a.doc("cred/p") == (b"x", r1)
    assert wait_for(lambda: b.doc("cred/p") == (b"x", r1), 3)  # other instance, by watch
    assert b.docs("cred/") == {"cred/p": (b"x", r1)}
    a.append_audit("p", {"event": "refused", "why": "bad credential"})
    a.append_audit("", {"event": "unknown-pool", "peer": "192.0.2.9"})
    assert [e["event"] for e in a.audit("p")] == ["pool-add", "credential-issue", "refused"]
    assert [e["event"] for e in a.audit("")] == ["unknown-pool"]
    assert [e["event"] for e in a.audit(None)] == ["pool-add", "credential-issue", "refused",
                                                   "unknown-pool"]
    assert [e["event"] for e in a.audit(None, limit=2)] == ["refused", "unknown-pool"]
    a.delete_pool("p", rev, {"event": "pool-remove"})
    assert a.pools() == [] and a.doc("cred/p") == (None, 0)
    assert wait_for(lambda: b.pools() == [] and b.doc("cred/p") == (None, 0), 3)
    assert a.audit("p")[-1]["event"] == "pool-remove"
    r2 = a.put_doc("x", b"1", 0)
    a.put_doc("x", None, r2)
    assert a.doc("x") == (None, 0)


def test_many_nodes_arriving_announce_presence_in_batches(backends):
    """500 pools' nodes start heartbeating to a fresh instance at once (after a restart or a
    failover between instances): presence goes out in a few transactions, not 1000 writes."""
    a = backends()
    before = etcd_revision(a.client)
    for i in range(500):
        a.node_seen("p%d" % i, "a")
        a.node_seen("p%d" % i, "b")
    assert wait_for(lambda: len(a.client.range(a.prefix + "presence/", prefix=True)[0]) == 1000,
                    10)
    writes = etcd_revision(a.client) - before
    assert writes <= 20, writes


def test_a_node_expired_locally_keeps_its_lease_mark():
    """Found by the lab (mediator-primary-power-loss on etcd, lease 10 s + margin 14 s): once
    expire_local() dropped the crashed primary (not heard for one lease), its last heartbeat
    was forgotten and the peer was granted at last + L instead of last + L + M. No etcd is
    needed: the liveness rule is in memory."""
    class Clock(object):
        now = 1000.0

        def __call__(self):
            return self.now
    clock = Clock()
    clock.now = 900.0
    b = eb.EtcdBackend(ec.EtcdSettings(["http://127.0.0.1:1"]), lease=10.0, margin=14.0,
                       clock=clock)
    while clock.now < 1000.0:          # this instance has heard the pool since 900
        b.node_seen("p", "b")
        b.node_seen("p", "a")
        clock.now += 1.0
    b.node_seen("p", "a")              # a's last heartbeat at 1000
    for _ in range(12):                # b keeps heartbeating, a is gone
        clock.now += 1.0
        b.node_seen("p", "b")
        b.expire_local()
    assert "a" not in b._pools["p"].local
    assert b.lease_over_at("p", "a") == 1000.0 + 10.0 + 14.0


def test_no_grant_for_a_lease_after_a_gap_in_the_watch(etcd1, backends):
    """Y hears B; A talks to X. Y is cut off from etcd, and meanwhile A's presence at X comes
    and goes and etcd's history is compacted: Y's watch cannot replay what it missed and Y
    reloads. Y never saw A heard elsewhere, so (like a fresh start) it must grant nothing for
    one lease plus margin from the reload; before this rule it granted at once."""
    proxy = LossyProxy(etcd1.members[0].client_port)
    try:
        x, y = backends(), backends(endpoints=[proxy.url])
        x.commit("p", 0, {"generation": 1, "primary": "A", "lease": LEASE}, {"event": "create"})
        t0 = time.monotonic()
        while time.monotonic() - t0 < LEASE + MARGIN + 0.2:   # Y has heard B for long enough
            y.node_seen("p", "B")
            time.sleep(0.1)
        assert y.grant_allowed("p", "A")[0]
        proxy.cut()
        x.node_seen("p", "A")                                  # A at X, unseen by Y
        key = x.prefix + "presence/p/A/" + x.instance
        assert wait_for(lambda: x.client.get(key) is not None, 3)
        x.client.delete(key)                                   # ... and gone again
        rev = etcd_revision(x.client)
        x.client.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        assert wait_for(lambda: not y.available, 5)
        proxy.restore()
        end = time.monotonic() + 10
        while time.monotonic() < end and not y.available:       # watch reopened: reloaded
            y.node_seen("p", "B")
            time.sleep(0.02)
        back = time.monotonic()
        assert y.available, "Y did not come back after the gap"
        y.node_seen("p", "B")
        ok, retry = y.grant_allowed("p", "A")
        assert not ok and retry > LEASE, (ok, retry)
        assert wait_for(lambda: (y.node_seen("p", "B"), y.grant_allowed("p", "A")[0])[1],
                        LEASE + MARGIN + 2)
        print("after the gap: first grant allowed %.2f s after Y was back (lease + margin "
              "%.1f s)" % (time.monotonic() - back, LEASE + MARGIN))
        assert time.monotonic() - back >= LEASE + MARGIN - 0.3
    finally:
        proxy.close()
