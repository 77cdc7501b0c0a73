"""Failures of real etcd under the backend: a member killed, the leader killed, etcd cut off
from one instance."""
import threading
import time

import pytest

from iscsi_ha_mediator import etcd_backend as eb
from iscsi_ha_mediator import etcd_client as ec
from tcp_proxy import LossyProxy

pytestmark = pytest.mark.etcd

LEASE, MARGIN = 2.0, 0.5
LEADER_PAUSE_BOUND = 6.0  # election timeout 1 s + client timeouts; documented bound


def wait_for(cond, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def make_backend(endpoints, **kw):
    s = ec.EtcdSettings(endpoints, timeout=1.0, total_timeout=3.0)
    return eb.EtcdBackend(s, lease=LEASE, margin=MARGIN, **kw).start()


class Writer(object):
    """Commits generation after generation in a thread, like a mediator under change load,
    and records what each commit answered, with times."""

    def __init__(self, backend, pool="p"):
        self.b = backend
        self.pool = pool
        self.ok = []          # (time, generation)
        self.refused = []     # (time, reason) -- StorageUnavailable: nothing written
        self.unknown = []     # (time, generation) -- StorageUnknown
        self._stop = threading.Event()
        self.rev = self.b.commit(pool, 0, {"generation": 1}, {"event": "create"})
        self.gen = 1
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                rev = self.b.commit(self.pool, self.rev, {"generation": self.gen + 1},
                                    {"event": "change"})
                self.gen += 1
                self.rev = rev
                self.ok.append((time.monotonic(), self.gen))
            except eb.Conflict as exc:  # an earlier unknown applied after all
                self.rev, self.gen = exc.revision, exc.record["generation"]
            except eb.StorageUnknown:
                self.unknown.append((time.monotonic(), self.gen + 1))
                self._stop.wait(0.05)
                try:
                    rec, self.rev = self.b.read(self.pool)
                    self.gen = rec["generation"]
                except eb.StorageError:
                    pass
            except eb.StorageUnavailable as exc:
                self.refused.append((time.monotonic(), str(exc)))
                self._stop.wait(0.05)
            self._stop.wait(0.02)

    def start(self):
        self.t.start()
        return self

    def stop(self):
        self._stop.set()
        self.t.join(15)

    def longest_gap(self, since):
        times = [since] + [t for t, _ in self.ok if t >= since]
        return max(b - a for a, b in zip(times, times[1:])) if len(times) > 1 else float("inf")

    def check_no_lost_change(self):
        """Every acknowledged generation is in etcd's audit, each exactly once, contiguous."""
        record, _ = self.b.read(self.pool)
        gens = [e["generation"] for e in self.b.audit(self.pool, limit=100000)]
        assert gens == list(range(1, record["generation"] + 1))
        assert {g for _, g in self.ok} <= set(gens)


def test_one_member_killed_has_no_effect(etcd3):
    b = make_backend(etcd3.endpoints)
    try:
        w = Writer(b).start()
        time.sleep(0.5)
        # Kill the member the client is talking to, unless it is the leader: then another.
        victim = etcd3.followers()[0]
        t_kill = time.monotonic()
        etcd3.kill(victim)
        time.sleep(1.5)
        w.stop()
        assert not w.refused and not w.unknown
        assert b.available
        assert len([t for t, _ in w.ok if t > t_kill]) > 5
        assert w.longest_gap(t_kill) < 3.0  # loose: a loaded 2-core machine
        w.check_no_lost_change()
    finally:
        b.stop()


def test_leader_killed_bounded_pause_no_lost_change(etcd3):
    b = make_backend(etcd3.endpoints)
    try:
        w = Writer(b).start()
        time.sleep(0.5)
        t_kill = time.monotonic()
        old = etcd3.kill_leader()
        assert wait_for(lambda: len([t for t, _ in w.ok if t > t_kill + 0.1]) >= 3,
                        LEADER_PAUSE_BOUND + 2)
        pause = w.longest_gap(t_kill)
        etcd3.restart(old)
        time.sleep(0.5)
        w.stop()
        assert pause < LEADER_PAUSE_BOUND, "writes paused %.1fs" % pause
        w.check_no_lost_change()
        print("leader kill: longest pause between acknowledged changes %.2fs, %d refused, "
              "%d unknown" % (pause, len(w.refused), len(w.unknown)))
    finally:
        b.stop()


def test_etcd_unreachable_from_one_instance(etcd1):
    proxy = LossyProxy(etcd1.members[0].client_port)
    x = make_backend([proxy.url])
    y = make_backend(etcd1.endpoints)
    try:
        rev = y.commit("p", 0, {"generation": 1, "primary": "A"}, {"event": "create"})
        x.node_seen("p", "A")
        assert wait_for(lambda: y.heard_elsewhere("p", "A") == [x.instance], 3)
        proxy.cut()
        assert wait_for(lambda: not x.available, 3)
        assert "unreachable" in x.unavailable_reason
        with pytest.raises(eb.StorageUnavailable) as err:
            x.commit("p", rev, {"generation": 2, "primary": "A"}, {"event": "fence"})
        assert "no change made" in str(err.value) and "\n" not in str(err.value)
        assert x.grant_allowed("p", "B")[0] is False
        # The other instance is unaffected and, once X's lease has run out, no longer counts
        # A as heard (X cannot vouch for anything now).
        rev2 = y.commit("p", rev, {"generation": 2, "primary": "A", "note": "y"}, {"event": "x"})
        assert wait_for(lambda: y.heard_elsewhere("p", "A") == [], LEASE + 3)
        assert y.read("p")[1] == rev2
        # Back: X resyncs its cache, says it is available and announces A again.
        proxy.restore()
        assert wait_for(lambda: x.available, 8)
        assert wait_for(lambda: x.cached("p")[1] == rev2, 3)
        x.node_seen("p", "A")
        assert wait_for(lambda: y.heard_elsewhere("p", "A") == [x.instance], 5)
    finally:
        x.stop()
        y.stop()
        proxy.close()
