"""The mediator service (iscsi_ha_mediator.service.Mediator) on the etcd backend, several
instances over one real etcd: the failure cases of issue 14."""
import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from iscsi_ha_mediator import etcd_backend as eb
from iscsi_ha_mediator import etcd_client as ec
from iscsi_ha_mediator import storage as st
from tcp_proxy import LossyProxy

# The service is issue 13's (branch i13); until it is merged this module has nothing to drive.
Mediator = pytest.importorskip("iscsi_ha_mediator.service").Mediator

pytestmark = pytest.mark.etcd

HERE = os.path.dirname(os.path.abspath(__file__))
LEASE, MARGIN = 1.0, 0.3
UUID = "ABCDEF0123456788"
IN_SYNC = {"role": "Secondary", "disk": "UpToDate", "conn": "Connected",
           "peer_disk": "UpToDate", "current_uuid": UUID}
CUT_OFF = {"role": "Secondary", "disk": "UpToDate", "conn": "StandAlone",
           "peer_disk": "DUnknown", "current_uuid": UUID}
PRIMARY_CUT = dict(CUT_OFF, role="Primary")


def backend(endpoints):
    s = ec.EtcdSettings(endpoints, timeout=1.0, total_timeout=3.0)
    return eb.EtcdBackend(s, lease=LEASE, margin=MARGIN).start()


def golden_pool(store, pool):
    """A pool whose two nodes were proven in sync, a primary: what enrolment + sync leave."""
    rec = st.new_record(pool, ["a", "b"], lease=LEASE)
    rec.update(primary="a", eligible=["a", "b"], synced_uuid=UUID)
    return store.commit(pool, 0, rec, {"event": "pool-add"})


async def beat(med, pool, node, drbd, seconds, period=0.1):
    """``node`` heartbeats to ``med`` for ``seconds`` (like the agent, faster)."""
    end = time.monotonic() + seconds
    answer = None
    while time.monotonic() < end:
        answer = med.heartbeat(pool, node, {"gen": med.store.cached(pool)[0]["generation"],
                                            "drbd": drbd})
        await asyncio.sleep(period)
    return answer


async def wait_cached(store, pool, rev, timeout=3.0):
    end = time.monotonic() + timeout
    while store.cached(pool)[1] < rev and time.monotonic() < end:
        await asyncio.sleep(0.02)
    assert store.cached(pool)[1] >= rev


async def golden_at_two(x_store, y_store, pool="p"):
    """Two Mediators over the two instances' stores; ``pool`` golden (written through X and
    seen in Y's cache)."""
    x, y = Mediator(x_store), Mediator(y_store)
    await wait_cached(y_store, pool, golden_pool(x_store, pool))
    return x, y


def primaries(store, pool):
    rec, _ = store.read(pool)
    return rec["primary"], rec


def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        pending = asyncio.all_tasks(loop)  # background audit writes of the service
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.close()


def test_two_instances_primary_heard_at_one_candidate_at_other(etcd3):
    """A talks to X, B to Y; the link A-B is cut. A's fence-peer (at X) and B's promote (at Y)
    arrive together: Y must not depose A, which X hears; A wins; B stays out."""
    x_store, y_store = backend(etcd3.endpoints), backend(etcd3.endpoints[::-1])
    try:
        async def body():
            x, y = await golden_at_two(x_store, y_store)
            await asyncio.gather(beat(x, "p", "a", PRIMARY_CUT, LEASE + MARGIN + 0.3),
                                 beat(y, "p", "b", CUT_OFF, LEASE + MARGIN + 0.3))
            assert y_store.heard_elsewhere("p", "a") == [x_store.instance]
            fence, promote = await asyncio.gather(
                x.fence_peer("p", "a", {"gen": 1}),
                y.promote("p", "b", {"gen": 1, "drbd": CUT_OFF}))
            return fence, promote
        fence, promote = run(body())
        assert fence["result"] == "outdated" and fence["exit"] == 4
        assert promote["result"] in ("retry", "refused"), promote
        primary, rec = primaries(x_store, "p")
        assert primary == "a" and rec["outdated"] == ["b"] and rec["generation"] == 2
        assert [e["event"] for e in x_store.audit("p") if e.get("result") in
                ("granted", "outdated")] == ["fence-peer"]
    finally:
        x_store.stop()
        y_store.stop()


def test_two_instances_race_at_etcd_exactly_one_primary(etcd3):
    """A was silent long enough that Y may depose it; A comes back and calls fence-peer at X
    while B's promote at Y is under way. etcd orders the two: exactly one wins, every round."""
    x_store, y_store = backend(etcd3.endpoints), backend(etcd3.endpoints[::-1])
    outcomes = {"fence": 0, "promote": 0}
    try:
        async def round_(n):
            x, y = Mediator(x_store), Mediator(y_store)
            pool = "race-%d" % n
            rev = golden_pool(x_store, pool)
            await wait_cached(y_store, pool, rev)
            # B heartbeats to Y for lease + margin; A is heard nowhere.
            await beat(y, pool, "b", CUT_OFF, LEASE + MARGIN + 0.2)
            fence, promote = await asyncio.gather(
                x.fence_peer(pool, "a", {"gen": 1}),
                y.promote(pool, "b", {"gen": 1, "drbd": CUT_OFF}))
            won = [k for k, r in (("fence", fence), ("promote", promote))
                   if r["result"] in ("outdated", "granted")]
            assert len(won) == 1, (fence, promote)
            primary, rec = primaries(x_store, pool)
            assert rec["generation"] == 2
            if won == ["fence"]:
                assert primary == "a" and rec["outdated"] == ["b"]
                assert promote["result"] in ("refused", "retry")
            else:
                assert primary == "b" and rec["outdated"] == ["a"]
                assert fence["result"] in ("deposed", "retry") and fence["exit"] in (6, 1)
            outcomes[won[0]] += 1

        async def body():
            for n in range(6):
                await round_(n)
        run(body())
    finally:
        x_store.stop()
        y_store.stop()
    print("race outcomes:", outcomes)


def test_etcd_unreachable_from_one_instance(etcd1):
    """X loses etcd: it refuses every change and says so; its heartbeat answers say it cannot
    grant. Y, on the same etcd, grants once A's lease has run out."""
    proxy = LossyProxy(etcd1.members[0].client_port)
    x_store, y_store = backend([proxy.url]), backend(etcd1.endpoints)
    try:
        async def body():
            x, y = Mediator(x_store), Mediator(y_store)
            rev = golden_pool(y_store, "p")
            await wait_cached(x_store, "p", rev)
            proxy.cut()
            end = time.monotonic() + 5
            while x_store.available and time.monotonic() < end:
                await asyncio.sleep(0.05)
            hb = x.heartbeat("p", "b", {"gen": 1, "drbd": CUT_OFF})
            prom = await x.promote("p", "b", {"gen": 1, "drbd": CUT_OFF})
            fence = await x.fence_peer("p", "a", {"gen": 1})
            # Y: B heartbeats there for lease + margin, then is granted.
            await beat(y, "p", "b", CUT_OFF, LEASE + MARGIN + 0.3)
            granted = await y.promote("p", "b", {"gen": 1, "drbd": CUT_OFF})
            return hb, prom, fence, granted
        hb, prom, fence, granted = run(body())
        assert hb["can_grant"] is False and "storage unavailable" in hb["cannot_grant_reason"]
        assert "etcd unreachable" in hb["cannot_grant_reason"]
        assert prom["result"] in ("refused", "retry") and "storage unavailable" in prom["reason"]
        assert fence["result"] == "retry" and fence["exit"] == 1
        assert granted["result"] == "granted" and granted["gen"] == 2
        assert [e["event"] for e in y_store.audit("p") if e.get("result") == "granted"] == \
            ["promote"]
    finally:
        x_store.stop()
        y_store.stop()
        proxy.close()


INSTANCE_SCRIPT = r"""
import asyncio, sys, time
from iscsi_ha_mediator import etcd_backend as eb, etcd_client as ec
from iscsi_ha_mediator.service import Mediator
endpoints, pool, lease, margin, pause = sys.argv[1], sys.argv[2], float(sys.argv[3]), \
    float(sys.argv[4]), float(sys.argv[5])
store = eb.EtcdBackend(ec.EtcdSettings(endpoints.split(",")), lease=lease, margin=margin).start()
real_commit = store.commit
def commit(*args, **kw):            # the decision is made: say so, then (maybe) wait
    sys.stdout.write("COMMIT\n"); sys.stdout.flush()
    time.sleep(pause)
    return real_commit(*args, **kw)
store.commit = commit
drbd = {"role": "Secondary", "disk": "UpToDate", "conn": "StandAlone", "peer_disk": "DUnknown",
        "current_uuid": "ABCDEF0123456788"}
async def main():
    med = Mediator(store)
    end = time.monotonic() + lease + margin + 0.2
    while time.monotonic() < end:
        med.heartbeat(pool, "b", {"gen": 1, "drbd": drbd})
        await asyncio.sleep(0.05)
    print(await med.promote(pool, "b", {"gen": 1, "drbd": drbd}), flush=True)
asyncio.new_event_loop().run_until_complete(main())
"""


@pytest.mark.parametrize("pause, kill_after", [(3.0, 0.2), (0.0, 0.0), (0.0, 0.003),
                                               (0.0, 0.05)])
def test_instance_killed_mid_promote_then_agent_moves_on(etcd1, pause, kill_after):
    """Instance 1 (its own process) decides to grant B and is SIGKILLed before, during or just
    after its etcd transaction. etcd then holds one grant or none; B's agent moves on to
    instance 2, which answers with that grant again or decides afresh: exactly one grant."""
    y_store = backend(etcd1.endpoints)
    pool = "kill-%d-%d" % (int(pause), int(kill_after * 1000))
    try:
        golden_pool(y_store, pool)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.join(os.path.dirname(os.path.dirname(HERE)), "mediator")] +
            [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        proc = subprocess.Popen([sys.executable, "-c", INSTANCE_SCRIPT, ",".join(etcd1.endpoints),
                                 pool, str(LEASE), str(MARGIN), str(pause)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            line = proc.stdout.readline()
            assert line == b"COMMIT\n", (line, proc.stderr.read(2000) if proc.poll() else b"")
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        grants = [e for e in y_store.audit(pool) if e.get("result") == "granted"]
        assert len(grants) in (0, 1)
        if pause:
            assert not grants  # killed before its transaction: nothing written
        before = len(grants)

        async def retry_elsewhere():
            y = Mediator(y_store)
            end = time.monotonic() + LEASE + MARGIN + 3
            while time.monotonic() < end:
                y.heartbeat(pool, "b", {"gen": 1, "drbd": CUT_OFF})
                answer = await y.promote(pool, "b", {"gen": 1, "drbd": CUT_OFF})
                if answer["result"] == "granted":
                    return answer
                assert answer["result"] == "retry", answer
                await asyncio.sleep(0.1)
            return answer
        answer = run(retry_elsewhere())
        assert answer["result"] == "granted" and answer["gen"] == 2
        assert bool(answer.get("again")) == (before == 1)
        grants = [e for e in y_store.audit(pool) if e.get("result") == "granted"]
        assert len(grants) == 1
        assert primaries(y_store, pool)[0] == "b"
        print("killed %.3fs after COMMIT (pause %.1f): %d grant before the retry"
              % (kill_after, pause, before))
    finally:
        y_store.stop()


def test_leader_killed_promote_after_bounded_pause(etcd3):
    store = backend(etcd3.endpoints)
    try:
        async def body():
            med = Mediator(store)
            golden_pool(store, "p")
            await beat(med, "p", "b", CUT_OFF, LEASE + MARGIN + 0.2)
            etcd3.kill_leader()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 8:
                med.heartbeat("p", "b", {"gen": 1, "drbd": CUT_OFF})
                answer = await med.promote("p", "b", {"gen": 1, "drbd": CUT_OFF})
                if answer["result"] == "granted":
                    return answer, time.monotonic() - t0
                await asyncio.sleep(0.1)
            return answer, time.monotonic() - t0
        answer, took = run(body())
        assert answer["result"] == "granted" and answer["gen"] == 2, answer
        assert took < 6.0
        print("promote granted %.2fs after the etcd leader was killed" % took)
    finally:
        store.stop()


def after_failover(store, pool):
    """B was granted (A outdated), A has resynced from B: what the lab's failover scenarios
    leave before the mediator may mark both nodes eligible again."""
    rec = st.new_record(pool, ["a", "b"], lease=LEASE)
    rec.update(generation=3, primary="b", eligible=["b"], outdated=["a"], synced_uuid=UUID)
    return store.commit(pool, 0, rec, {"event": "pool-add"})


def test_nodes_at_two_instances_are_proven_in_sync(etcd3):
    """After a failover the two nodes may talk to two instances (an agent moves to the next
    address when one fails). Each instance then hears one node: the in-sync proof needs the
    other node's report, published by its instance in etcd. Found by the lab
    (mediator-site-isolated, mediator-stale-primary-returns, mediator-restart on etcd: the pool
    never became golden again)."""
    x_store, y_store = backend(etcd3.endpoints), backend(etcd3.endpoints[::-1])
    synced = dict(IN_SYNC, current_uuid="1234567890ABCDE0")
    try:
        async def body():
            x, y = Mediator(x_store), Mediator(y_store)
            rev = after_failover(x_store, "p")
            await wait_cached(y_store, "p", rev)
            await asyncio.gather(beat(x, "p", "a", synced, 1.0),
                                 beat(y, "p", "b", dict(synced, role="Primary"), 1.0))
        run(body())
        rec, _ = x_store.read("p")
        assert rec["eligible"] == ["a", "b"] and rec["outdated"] == [], rec
        assert rec["primary"] == "b" and rec["synced_uuid"] == "1234567890ABCDE0"
        assert rec["generation"] == 4
        assert [e["event"] for e in x_store.audit("p")][-1] == "in-sync"
    finally:
        x_store.stop()
        y_store.stop()


def test_shared_reports_are_written_only_when_they_change(etcd1):
    """A report published in etcd is rewritten only when it changes (DRBD state, data
    generation, the node's generation or the record's revision): a storm of identical
    heartbeats writes nothing."""
    x_store, y_store = backend(etcd1.endpoints), backend(etcd1.endpoints)
    try:
        async def body():
            x = Mediator(x_store)
            rev = after_failover(x_store, "p")
            await wait_cached(y_store, "p", rev)
            x.heartbeat("p", "a", {"gen": 3, "drbd": CUT_OFF})
            end = time.monotonic() + 3
            while (y_store.shared_report("p", "a") or {}).get("conn") != "StandAlone":
                assert time.monotonic() < end
                await asyncio.sleep(0.02)
            before = int(x_store.client.status()["header"]["revision"])
            for _ in range(2000):
                x.heartbeat("p", "a", {"gen": 3, "drbd": CUT_OFF})
            await asyncio.sleep(0.5)
            quiet = int(x_store.client.status()["header"]["revision"]) - before
            x.heartbeat("p", "a", {"gen": 3, "drbd": dict(CUT_OFF, conn="Connecting")})
            end = time.monotonic() + 3
            while (y_store.shared_report("p", "a") or {}).get("conn") != "Connecting":
                assert time.monotonic() < end
                await asyncio.sleep(0.02)
            return quiet, int(x_store.client.status()["header"]["revision"]) - before
        quiet, changed = run(body())
        assert quiet == 0 and changed == 1, (quiet, changed)
        assert x_store.shared_report("p", "a") is None     # its own report is not "shared"
        print("2000 identical heartbeats: %d etcd writes; one changed report: %d"
              % (quiet, changed))
    finally:
        x_store.stop()
        y_store.stop()


def test_a_shared_report_from_before_a_record_change_does_not_count(etcd1):
    """B's report (in sync) was taken at Y before A's fence-peer at X outdated B: X must not
    use it to undo the fence. It counts again once B reports at the new revision."""
    x_store, y_store = backend(etcd1.endpoints), backend(etcd1.endpoints)
    try:
        async def body():
            x, y = await golden_at_two(x_store, y_store)
            y.heartbeat("p", "b", {"gen": 1, "drbd": IN_SYNC})
            end = time.monotonic() + 3
            while x_store.shared_report("p", "b") is None:
                assert time.monotonic() < end
                await asyncio.sleep(0.02)
            fence = await x.fence_peer("p", "a", {"gen": 1})
            rec, rev2 = x_store.cached("p")
            stale = x._fresh_report("p", "b", rec, time.monotonic(), rev2)
            await wait_cached(y_store, "p", rev2)
            y.heartbeat("p", "b", {"gen": 2, "drbd": IN_SYNC})      # taken after the fence
            end = time.monotonic() + 3
            while (x_store.shared_report("p", "b") or {}).get("rev") != rev2:
                assert time.monotonic() < end
                await asyncio.sleep(0.02)
            return fence, stale, rec, x._fresh_report("p", "b", rec, time.monotonic(), rev2)
        fence, stale, rec, fresh = run(body())
        assert fence["result"] == "outdated" and rec["outdated"] == ["b"]
        assert stale is None
        assert fresh is not None and fresh.in_sync() and fresh.gen == 2
    finally:
        x_store.stop()
        y_store.stop()


def test_both_instances_restarted_grant_nothing_within_their_own_grace(etcd3):
    """The lab's mediator-restart on etcd: A at X, B at Y; both instances stop, A dies; two
    new instances start over the same etcd (whose pool record, audit and everything else
    survived). B heartbeats and asks to be promoted at the new instances over and over: no
    grant before lease + margin after the start of the instance that grants."""
    x_store, y_store = backend(etcd3.endpoints), backend(etcd3.endpoints[::-1])
    try:
        async def before():
            x, y = await golden_at_two(x_store, y_store)
            await asyncio.gather(beat(x, "p", "a", dict(IN_SYNC, role="Primary"), 0.5),
                                 beat(y, "p", "b", IN_SYNC, 0.5))
        run(before())
    finally:
        x_store.stop()
        y_store.stop()
    time.sleep(LEASE + MARGIN + 0.2)          # A's lease is long over, for any instance
    started = {}
    x2 = backend(etcd3.endpoints)
    started[x2.instance] = time.monotonic()
    y2 = backend(etcd3.endpoints[::-1])
    started[y2.instance] = time.monotonic()
    try:
        async def after():
            meds = [Mediator(x2), Mediator(y2)]
            end = time.monotonic() + 3 * (LEASE + MARGIN)
            n = 0
            while time.monotonic() < end:
                med = meds[n % 2]                 # B's agent moves between the instances
                n += 1
                med.heartbeat("p", "b", {"gen": 1, "drbd": CUT_OFF})
                answer = await med.promote("p", "b", {"gen": 1, "drbd": CUT_OFF})
                if answer["result"] == "granted":
                    return med.store.instance, time.monotonic()
                assert answer["result"] == "retry", answer
                await asyncio.sleep(0.05)
            return None, None
        who, when = run(after())
        assert who is not None, "B was never granted"
        print("granted by a restarted instance %.2f s after its start (lease + margin %.1f s)"
              % (when - started[who], LEASE + MARGIN))
        assert when - started[who] >= LEASE + MARGIN
    finally:
        x2.stop()
        y2.stop()
