"""The lab with the third-site mediator (issues 13 and 14): every mediator scenario, with zero
lost acknowledged writes and a clean invariant checker (never two DRBD Primaries), on the
SQLite backend (one instance) and on etcd (two instances over a three-member etcd cluster, the
hosts configured with both). Its own lab, its own prefix (ihlt<pid>m-), so tests/lab/test_lab.py
is unaffected. Needs root, tgt, libiscsi, arping, and for etcd etcd-server/etcd-client; run
under the lab lock:

    flock /work/lab.lock python -m pytest tests/lab/test_lab_mediator.py -k sqlite
"""
import shutil

import pytest

from lab_fixture import running_lab
from iscsi_ha_lab import netns
from iscsi_ha_lab.scenarios import all_scenarios, run_scenario

pytestmark = pytest.mark.lab
NAMES = list(all_scenarios(mediator=True))
MAX_PAUSE_MEDIATOR_DOWN = 1.5     # seconds: the mediator's absence must not touch I/O
# Known failures of the two-instance etcd backend. Strict: the day one passes, this test fails
# until it is taken off the list. (Issue 14's three -- mediator-site-isolated,
# mediator-stale-primary-returns, mediator-restart -- pass since the nodes' DRBD reports are
# shared between the instances in etcd.)
ETCD_KNOWN_FAILURES = {}


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def lab(request, tmp_path_factory):
    problems = []
    if request.param == "etcd" and (shutil.which("etcd") is None or
                                    shutil.which("etcdctl") is None):
        problems.append("etcd is not installed: apt-get install etcd-server etcd-client")
    yield from running_lab(tmp_path_factory, tag="m", extra_problems=problems,
                           mediator=request.param)


@pytest.mark.parametrize("name", NAMES)
def test_mediator_scenario(request, lab, name):
    if lab.mediator_backend == "etcd" and name in ETCD_KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=ETCD_KNOWN_FAILURES[name]))
    result = run_scenario(lab, name)
    print("mediator %s %s: longest I/O pause %.3f s, lost writes %s; %s" % (
        lab.mediator_backend, name, result.io_pause_s, result.lost_writes,
        "; ".join(result.notes)))
    assert result.failures == []
    assert result.passed and result.lost_writes == 0
    if name == "mediator-down":
        assert result.io_pause_s < MAX_PAUSE_MEDIATOR_DOWN


def test_agents_heartbeat_the_mediator_and_down_removes_it(lab):
    """Both agents really heartbeat the mediator (it saw both recently), the namespace of the
    third site is the lab's, and nothing else with the prefix is left after down (checked on a
    second lab object for the same prefix: what down() would remove is all recorded)."""
    rec = lab.mediator_pool_record()
    ages = dict((n["node"], n["last_seen_ms"]) for n in rec["nodes"])
    assert set(ages) == {"a", "b"} and all(a is not None and a < 3000 for a in ages.values())
    namespaces, links = lab.names()
    assert lab.prefix + "m" in namespaces
    assert set(n for n in netns.list_namespaces() if n.startswith(lab.prefix)) <= set(namespaces)
    assert set(netns.list_links(lab.prefix)) <= set(links)


def _until(predicate, timeout, what):
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.2)


def test_mediator_fault_verbs(lab):
    """The lab's mediator faults, each seen by the agents or by a real request: cut/restore a
    host's path, stall (SIGSTOP), slow (netem), restart (a new grace)."""
    from iscsi_ha_lab.faults import FaultError, apply_fault

    def reachable(host):
        return bool(((lab.status(host) or {}).get("witness") or {}).get("reachable"))
    a, b = lab.hosts
    apply_fault(lab, "cut-mediator", "b")
    _until(lambda: not reachable(b), 15, "b to lose the mediator")
    assert reachable(a)
    apply_fault(lab, "restore-mediator", "b")
    _until(lambda: reachable(b), 15, "b to reach the mediator again")
    assert "stall-mediator done" in apply_fault(lab, "stall-mediator")
    _until(lambda: not reachable(a) and not reachable(b), 15, "a stalled mediator")
    _until(lambda: reachable(a) and reachable(b), 30, "the mediator running on")
    apply_fault(lab, "restart-mediator")
    status = lab.mediator.admin({"op": "status"})
    assert status.get("ok") and status.get("grace_left_s", 0) > 0, status
    with pytest.raises(FaultError):
        apply_fault(lab, "cut-mediator")          # needs a host
    if not _kernel_has_netem(lab):
        pytest.skip("the kernel has no sch_netem (qdisc netem unknown): slow-mediator untested")
    apply_fault(lab, "slow-mediator", "a")
    try:
        slow = lab.mediator.call("a", a.mediator_dir, lab.mediator_pool, "ping", timeout=5.0)
        assert slow.get("ok") and slow["rtt_s"] >= 0.8, slow
    finally:
        apply_fault(lab, "restore-mediator", "a")
    fast = lab.mediator.call("a", a.mediator_dir, lab.mediator_pool, "ping", timeout=5.0)
    assert fast.get("ok") and fast["rtt_s"] < 0.8, fast


def _kernel_has_netem(lab):
    """netem is a kernel module (sch_netem): asked on the mediator namespace's loopback."""
    ns = lab.mediator.ns["m"]
    added = netns.exec_in(ns, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                               "1ms"])
    if added.returncode == 0:
        netns.exec_in(ns, ["tc", "qdisc", "del", "dev", "lo", "root"])
        return True
    if "unknown" in added.stderr:
        return False
    raise AssertionError("tc qdisc add netem: %s" % added.stderr.strip())
