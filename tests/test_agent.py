"""One pass with the adapters mocked at their boundary: order, failure handling, status."""
import json
import threading
import time

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha import model
from iscsi_ha.agent import Agent
from iscsi_ha.drbd import DrbdState
from iscsi_ha.loop import Loop


def state(role, peer="Secondary", conn="Connected", disk="UpToDate", peer_disk="UpToDate"):
    return DrbdState(resource="iscsi1", minor="1", role=role, peer_role=peer, connection=conn,
                     disk=disk, peer_disk=peer_disk, sync_percent=None)


class FakeTarget(object):
    def __init__(self, running=False, serving=False, processes=()):
        self.running, self.serving, self.missing, self.connections = running, serving, [], 0
        self.processes, self.error = list(processes), ""


class FakeVip(object):
    def __init__(self, local=False):
        self.local, self.interface_exists, self.interface_up = local, True, True


@pytest.fixture
def config(tmp_path):
    pool = tmp_path / "pool.conf"
    pool.write_text("master")
    text = "\n".join([
        "POOL_CONF=%s" % pool, "STATE_DIR=%s" % (tmp_path / "state"),
        "MONITOR_DELAY=0.2", "MONITOR_SCANRATE=0.1", "MONITOR_MAX_STARTS=3",
        "DRBD_TIMEOUT=0.2", "TARGET_TIMEOUT=0.2", "NET_TIMEOUT=0.2", "XAPI_TIMEOUT=0.2",
        "SYSLOG_SOCKET=", ""])
    return config_mod.loads(text, "test.conf")


@pytest.fixture
def adapters():
    """The three adapters as autospec mocks: a call the real adapters do not have, or with
    arguments they would not take, fails the test."""
    from unittest import mock
    from iscsi_ha.adapters.drbd import DrbdAdapter
    from iscsi_ha.adapters.target import TargetAdapter
    from iscsi_ha.adapters.vip import VipAdapter
    from iscsi_ha.wiring import Adapters
    a = Adapters(mock.create_autospec(DrbdAdapter, instance=True),
                 mock.create_autospec(TargetAdapter, instance=True),
                 mock.create_autospec(VipAdapter, instance=True))
    a.drbd.resources = ("iscsi1",)
    a.drbd.observe.return_value = {"iscsi1": state("Secondary")}
    a.drbd.fingerprint.return_value = "fp"
    a.target.observe.return_value = FakeTarget()
    a.vip.observe.return_value = FakeVip()
    return a


def test_promote_pass_runs_every_step_in_order(config, adapters):
    calls = []
    for name in ("promote", "demote"):
        getattr(adapters.drbd, name).side_effect = lambda r, n=name: calls.append((n, r))
    adapters.target.start.side_effect = lambda: calls.append(("target", "start"))
    adapters.vip.add.side_effect = lambda: calls.append(("vip", "add"))
    adapters.vip.announce.side_effect = lambda: calls.append(("vip", "announce"))
    record = Agent(config, adapters).run_cycle()
    assert calls == [("promote", "iscsi1"), ("target", "start"), ("vip", "add"),
                     ("vip", "announce")]
    assert all(r.ok for r in record.results)


def test_failed_step_skips_the_steps_that_depend_on_it(config, adapters):
    adapters.target.start.side_effect = RuntimeError("tgtd did not answer")
    record = Agent(config, adapters).run_cycle()
    outcome = [(r.action.describe(), r.ok, r.skipped) for r in record.results]
    assert outcome == [("promote iscsi1", True, False), ("start target", False, False),
                       ("add floating IP", False, True), ("announce floating IP", False, True)]
    adapters.vip.add.assert_not_called()
    assert record.results[1].detail == "tgtd did not answer"


def test_status_file_is_published_with_the_decision(config, adapters):
    agent = Agent(config, adapters)
    agent.run_cycle("start")
    document = json.loads(open(config.STATUS_FILE).read())
    assert document["decision"]["reason"] == "promoting: this host is pool master"
    assert document["pool"]["role"] == "master"
    assert document["drbd"]["iscsi1"]["role"] == "Secondary"
    assert [a["action"] for a in document["last_actions"]] == [
        "promote iscsi1", "start target", "add floating IP", "announce floating IP"]
    assert document["pass"]["trigger"] == "start"


def test_dry_run_acts_on_nothing_and_writes_no_status(config, adapters):
    record = Agent(config, adapters, dry_run=True).run_cycle()
    adapters.drbd.promote.assert_not_called()
    adapters.target.start.assert_not_called()
    assert [a.describe() for a in record.decision.actions][0] == "promote iscsi1"
    import os
    assert not os.path.exists(config.STATUS_FILE)


def test_unreadable_drbd_holds_and_touches_nothing(config, adapters):
    adapters.drbd.observe.side_effect = ValueError("unrecognised line 'xyz' in /proc/drbd")
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    record = Agent(config, adapters).run_cycle()
    assert record.decision.actions == ()
    assert "unrecognised line" in record.decision.reason
    adapters.target.stop.assert_not_called()


def test_adapter_observation_errors_do_not_stop_the_pass(config, adapters):
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.side_effect = RuntimeError("tgtadm hung")
    adapters.vip.observe.return_value = FakeVip(local=True)
    record = Agent(config, adapters).run_cycle()
    assert record.observation.target is None
    assert [a.describe() for a in record.decision.actions] == ["start target"]


def test_hung_pass_has_its_children_killed(config, adapters, mocker):
    import subprocess
    adapters.drbd.observe.side_effect = lambda: subprocess.run(["sleep", "30"]) and {}
    agent = Agent(config, adapters)
    loop = Loop(agent)
    start = time.monotonic()
    loop.run_pass("test")
    assert loop.hung_passes >= 1
    assert time.monotonic() - start < 25        # the sleep was killed, not waited for


def test_loop_wakes_on_pool_conf_change_and_never_overlaps(config, adapters):
    agent = Agent(config, adapters)
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    adapters.vip.observe.return_value = FakeVip(local=True)
    stop = threading.Event()
    loop = Loop(agent, stop)
    triggers = []
    loop.on_pass = lambda record: triggers.append(record.observation.pool.role)
    worker = threading.Thread(target=loop.run, kwargs={"max_passes": 3})
    worker.start()
    deadline = time.monotonic() + 10
    while len(triggers) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(config.POOL_CONF, "w") as handle:
        handle.write("slave:192.0.2.12")
    worker.join(15)
    stop.set()
    assert not worker.is_alive()
    assert triggers[0] == "master" and "slave" in triggers[1:]


def test_a_change_during_a_pass_wakes_the_next_pass_at_once(config, adapters):
    """pool.conf rewritten while a pass runs must not wait for the timer."""
    agent = Agent(config, adapters)
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    adapters.vip.observe.return_value = FakeVip(local=True)
    original = agent.run_cycle
    changed = []

    def cycle(trigger="timer"):
        record = original(trigger)
        if not changed:                     # the first pass: the role changes while it runs
            with open(config.POOL_CONF, "w") as handle:
                handle.write("slave:192.0.2.12")
            changed.append(True)
        return record
    agent.run_cycle = cycle
    config.MONITOR_DELAY = 60.0             # only a wake-up can start the second pass
    loop = Loop(agent)
    triggers = []
    loop.on_pass = lambda record: triggers.append(record.observation.pool.role)
    worker = threading.Thread(target=loop.run, kwargs={"max_passes": 2})
    worker.start()
    worker.join(10)
    loop.stop.set()
    worker.join(5)
    assert triggers == ["master", "slave"]


def test_a_tgtd_whose_status_command_fails_still_counts_as_running(config, adapters):
    """It still holds the DRBD device: the demote must stop (or kill) it first."""
    with open(config.POOL_CONF, "w") as handle:
        handle.write("slave:192.0.2.12")
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.return_value = FakeTarget(running=False, processes=[4242])
    record = Agent(config, adapters).run_cycle()
    assert [a.describe() for a in record.decision.actions] == ["stop target", "demote iscsi1"]


def test_once_does_not_act_while_another_process_holds_the_pass_lock(config, adapters):
    from iscsi_ha.agent import PassLock
    from iscsi_ha.cli.agent_main import run_once
    config.PASS_BUDGET = 0.2
    with PassLock(config.STATE_DIR + "/lock"):
        assert run_once(Agent(config, adapters), config, dry_run=False) is None
    adapters.drbd.promote.assert_not_called()
    assert run_once(Agent(config, adapters), config, dry_run=False) is not None


def test_watcher_wakes_when_a_target_process_the_last_pass_saw_is_gone(config, adapters):
    from iscsi_ha.loop import Watcher
    clock = [0.0]
    watcher = Watcher(Agent(config, adapters), clock=lambda: clock[0])
    adapters.target.liveness.return_value = (4242,)
    watcher.remember()
    watcher.remember_target()
    clock[0] += 1.0
    assert watcher.changed() is None
    adapters.target.liveness.return_value = ()          # tgtd was killed
    clock[0] += 1.0
    assert watcher.changed() == "target process gone"
