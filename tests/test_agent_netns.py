"""The real agent against real ip, arping and tgtd in namespaces this test creates (DRBD is the
lab's double): one pass promotes in order, one pass demotes in order, a second pass does nothing.
"""
import pytest

from iscsi_ha_lab.rig import Rig

pytestmark = pytest.mark.netns


@pytest.fixture
def rig(ns_prefix, tmp_path):
    rig = Rig(str(tmp_path), ns_prefix, ctl=47)
    try:
        rig.up()
        yield rig
    finally:
        rig.down()


def actions(document):
    return [(a["action"], a["ok"]) for a in document["last_actions"]]


def test_one_pass_promotes_in_order_and_a_second_does_nothing(rig):
    code, doc = rig.run_once()
    assert code == 0, rig.last_stderr
    assert doc["decision"]["reason"].startswith("no action: secondary")
    rig.set_pool("master")
    code, doc = rig.run_once()
    assert code == 0, rig.last_stderr
    assert actions(doc) == [("promote iscsi1", True), ("start target", True),
                            ("add floating IP", True), ("announce floating IP", True)]
    assert rig.role() == "Primary" and rig.exported_luns() == [10] and rig.vip_local()
    code, doc = rig.run_once()
    assert doc["decision"]["actions"] == []
    assert doc["decision"]["reason"].startswith("no action: primary as expected")
    assert doc["health"] == "ok"


def test_one_pass_demotes_in_reverse_order(rig):
    rig.set_pool("master")
    rig.run_once()
    rig.set_pool("slave:192.0.2.12")
    code, doc = rig.run_once()
    assert code == 0, rig.last_stderr
    assert actions(doc) == [("remove floating IP", True), ("stop target", True),
                            ("demote iscsi1", True)]
    assert rig.role() == "Secondary" and rig.exported_luns() is None and not rig.vip_local()
    code, doc = rig.run_once()
    assert doc["decision"]["actions"] == []


def test_floating_ip_held_by_a_neighbour_is_not_taken(rig):
    rig.neighbour_takes_vip()
    rig.set_pool("master")
    code, doc = rig.run_once()
    assert code == 1
    outcome = actions(doc)
    assert outcome[:2] == [("promote iscsi1", True), ("start target", True)]
    assert outcome[2] == ("add floating IP", False)
    assert not rig.vip_local()
    assert doc["health"] == "failed"
    assert any("add floating IP failed" in p for p in doc["problems"])


def test_dry_run_prints_the_plan_and_touches_nothing(rig):
    rig.set_pool("master")
    code, _ = rig.run_once("--dry-run")
    assert code == 0
    assert "decision: promoting: this host is pool master" in rig.last_stdout
    assert "1. promote iscsi1" in rig.last_stdout and "4. announce floating IP" in rig.last_stdout
    assert rig.role() == "Secondary" and not rig.vip_local() and rig.exported_luns() is None
