"""Failures of real etcd under the backend: a member killed, the leader killed, etcd cut off
from one instance."""
import threading
import time

import pytest

from iscsi_ha_mediator import etcd_backend as eb
from iscsi_ha_mediator import etcd_client as ec
from etcd_cluster import wait_for
from tcp_proxy import LossyProxy

pytestmark = pytest.mark.etcd

LEASE, MARGIN = 2.0, 0.5
LEADER_PAUSE_BOUND = 6.0  # election timeout 1 s + client timeouts; documented bound


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


# -- mediator instances racing and dying (decisions: model_decisions, a test model) ----------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import model_decisions as md  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
POOL0 = {"generation": 5, "primary": "A", "eligible": ["A", "B"], "outdated": []}


def _promotes(backend, pool):
    return [e for e in backend.audit(pool) if e["event"] == "promote"]


@pytest.mark.parametrize("kill_after", [None, 0.0, 0.004, 0.03])
def test_instance_killed_mid_promote_one_grant_or_none(etcd1, kill_after):
    """Instance 1 (its own process) is SIGKILLed between reading the pool and committing, or
    while its transaction is in flight, or after. Whatever etcd holds then is one grant or
    none; B's agent moves on to instance 2, which ends with exactly one grant."""
    y = make_backend(etcd1.endpoints)
    pool = "kill-%s" % ("pause" if kill_after is None else int(kill_after * 1000))
    try:
        y.commit(pool, 0, dict(POOL0), {"event": "create"})
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.join(os.path.dirname(os.path.dirname(HERE)), "mediator"), HERE]))
        pause = 5.0 if kill_after is None else 0.0
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "model_decisions.py"), ",".join(etcd1.endpoints),
             pool, "B", "5", str(pause), "0.5", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            line = proc.stdout.readline()  # READ: the decision is made, the commit is next
            assert line == b"READ\n", line
            time.sleep(0.5 if kill_after is None else kill_after)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        first = _promotes(y, pool)
        print("killed %s after READ: %d grant(s) in etcd" % (kill_after, len(first)))
        assert len(first) in (0, 1)
        record, _ = y.read(pool)
        if first:
            assert record["primary"] == "B" and record["generation"] == 6
        else:
            assert record == POOL0
        if kill_after is None:
            assert not first  # killed before its commit: nothing may have been written
        # B's agent retries at instance 2 (fresh: it must watch the pool for L + M first).
        t_end = time.monotonic() + LEASE + MARGIN + 2
        granted = None
        while time.monotonic() < t_end and granted is None:
            y.node_seen(pool, "B")
            try:
                granted = md.promote(y, pool, "B", 5)
            except md.Refused as exc:
                assert "retry after" in str(exc)
                time.sleep(0.1)
        assert granted == 6
        assert len(_promotes(y, pool)) == 1
        assert y.read(pool)[0]["primary"] == "B"
    finally:
        y.stop()


def test_two_instances_two_nodes_of_one_pool_exactly_one_primary(etcd3):
    """The link A-B is cut. A (primary) calls fence-peer at instance X while B calls promote at
    instance Y, at the same moment, 20 times over. Each round exactly one of them wins."""
    x = make_backend(etcd3.endpoints)
    y = make_backend(etcd3.endpoints[::-1])
    outcomes = {"fence": 0, "promote": 0}
    try:
        for round_no in range(20):
            pool = "race-%d" % round_no
            rev = x.commit(pool, 0, dict(POOL0), {"event": "create"})
            assert wait_for(lambda: y.cached(pool)[1] == rev, 3)
            # Y has watched this pool for L + M and A was never heard anywhere: B's promote
            # passes every check; only the etcd order decides.
            y._pools[pool].watch_since = time.monotonic() - (LEASE + MARGIN + 1)
            y._pools[pool].heard = time.monotonic()
            barrier = threading.Barrier(2)
            result = {}

            def run(name, fn):
                barrier.wait(5)
                try:
                    result[name] = fn()
                except (md.Refused, eb.Conflict) as exc:
                    result[name] = exc

            t1 = threading.Thread(target=run, args=("fence", lambda: md.fence_peer(x, pool, "A", 5)))
            t2 = threading.Thread(target=run, args=("promote", lambda: md.promote(y, pool, "B", 5)))
            t1.start(), t2.start()
            t1.join(15), t2.join(15)
            winners = [k for k, v in result.items() if v == 6]
            assert len(winners) == 1, result
            outcomes[winners[0]] += 1
            record, _ = x.read(pool)
            assert record["generation"] == 6
            if winners == ["fence"]:
                assert record["primary"] == "A" and record["outdated"] == ["B"]
            else:
                assert record["primary"] == "B" and record["outdated"] == ["A"]
            events = [e["event"] for e in x.audit(pool)]
            assert events == ["create", {"fence": "fence-peer", "promote": "promote"}[winners[0]]]
    finally:
        x.stop()
        y.stop()
    print("race outcomes over 20 rounds:", outcomes)
