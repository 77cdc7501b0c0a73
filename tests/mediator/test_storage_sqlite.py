"""Storage contract on the SQLite backend (CAS, audit in the same step, durability)."""
import os
import threading

import pytest

from iscsi_ha_mediator import storage as st
from iscsi_ha_mediator.sqlite_store import SqliteStorage


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def store(tmp_path):
    s = SqliteStorage(str(tmp_path / "state.db"), lease=10, margin=2, clock=Clock()).start()
    yield s
    s.stop()


def test_state_file_is_private(store):
    assert os.stat(store.path).st_mode & 0o077 == 0


def test_create_cas_and_conflict_carries_current(store):
    rec = st.new_record("p1", ["a", "b"])
    rev1 = store.commit("p1", 0, rec, {"event": "pool-add"})
    with pytest.raises(st.Conflict) as err:
        store.commit("p1", 0, rec, {"event": "again"})
    assert err.value.revision == rev1 and err.value.record["generation"] == 1
    rec2 = dict(rec, generation=2, primary="a")
    rev2 = store.commit("p1", rev1, rec2, {"event": "promote"})
    assert rev2 > rev1
    with pytest.raises(st.Conflict) as err:
        store.commit("p1", rev1, dict(rec, generation=2, primary="b"), {"event": "promote"})
    assert err.value.record["primary"] == "a"
    # the refused write left no audit entry and no change
    assert [e["event"] for e in store.audit("p1")] == ["pool-add", "promote"]
    assert store.cached("p1") == (rec2, rev2)
    assert store.read("p1") == (rec2, rev2)


def test_durable_across_reopen_and_revisions_never_repeat(store, tmp_path):
    rev = store.commit("p", 0, st.new_record("p", ["a", "b"]), {"event": "add"})
    store.delete_pool("p", rev, {"event": "remove"})
    store.stop()
    again = SqliteStorage(store.path).start()
    try:
        assert again.pools() == []
        rev2 = again.commit("p", 0, st.new_record("p", ["a", "b"]), {"event": "add"})
        assert rev2 > rev
        assert [e["event"] for e in again.audit("p")] == ["add", "remove", "add"]
    finally:
        again.stop()


def test_docs_cas_with_audit(store):
    r1 = store.put_doc("cred/p", b"x", 0, audit={"event": "credential-issue"}, pool="p")
    with pytest.raises(st.Conflict):
        store.put_doc("cred/p", b"y", 0)
    assert store.doc("cred/p") == (b"x", r1)
    store.put_doc("cred/p", None, r1)
    assert store.doc("cred/p") == (None, 0)
    assert store.audit("p")[0]["event"] == "credential-issue"


def test_concurrent_cas_exactly_one_wins(store):
    rev = store.commit("p", 0, st.new_record("p", ["a", "b"]), {"event": "add"})
    wins, losses = [], []

    def claim(node):
        try:
            store.commit("p", rev, dict(store.cached("p")[0], generation=2, primary=node),
                         {"event": "promote", "node": node})
            wins.append(node)
        except st.Conflict:
            losses.append(node)

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("a", "b") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(losses) == 7
    assert store.read("p")[0]["primary"] == wins[0]


def test_restart_grace_and_lease(store):
    clock = store.clock
    store.commit("p", 0, st.new_record("p", ["a", "b"]), {"event": "add"})
    ok, left = store.grant_allowed("p", None)
    assert not ok and left == pytest.approx(12)
    clock.now += 12
    assert store.grant_allowed("p", None) == (True, 0.0)
    store.node_seen("p", "a")
    ok, left = store.grant_allowed("p", "a")
    assert not ok and left == pytest.approx(12)
    clock.now += 11.9
    assert not store.grant_allowed("p", "a")[0]
    clock.now += 0.2
    assert store.grant_allowed("p", "a")[0]
