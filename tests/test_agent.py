"""One pass with the adapters mocked at their boundary: order, failure handling, status."""
import json
import os
import threading
import time

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha import fencing, model
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.alerts import StatusAlerts
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
        "SYSLOG_SOCKET=", "LOCK_FALLBACK_DIR=%s" % (tmp_path / "run"), ""])
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
    adapters.vip.add.side_effect = lambda **kw: calls.append(("vip", "add"))
    adapters.vip.announce.side_effect = lambda: calls.append(("vip", "announce"))
    record = Agent(config, adapters).run_pass()
    assert calls == [("promote", "iscsi1"), ("target", "start"), ("vip", "add"),
                     ("vip", "announce")]
    # the peer is a connected Secondary: it released the address, so DAD is the short one
    adapters.vip.add.assert_called_once_with(released_timeout=config.ARP_DAD_RELEASED_TIMEOUT)
    assert all(r.ok for r in record.results)


def test_failed_step_skips_the_steps_that_depend_on_it(config, adapters):
    adapters.target.start.side_effect = RuntimeError("tgtd did not answer")
    record = Agent(config, adapters).run_pass()
    outcome = [(r.action.describe(), r.ok, r.skipped) for r in record.results]
    assert outcome == [("promote iscsi1", True, False), ("start target", False, False),
                       ("add floating IP", False, True), ("announce floating IP", False, True)]
    adapters.vip.add.assert_not_called()
    assert record.results[1].detail == "tgtd did not answer"


def test_status_file_is_published_with_the_decision(config, adapters):
    agent = Agent(config, adapters)
    agent.run_pass("start")
    document = json.loads(open(config.STATUS_FILE).read())
    assert document["decision"]["reason"] == "promoting: this host is pool master"
    assert document["pool"]["role"] == "master"
    assert document["drbd"]["iscsi1"]["role"] == "Secondary"
    assert [a["action"] for a in document["last_actions"]] == [
        "promote iscsi1", "start target", "add floating IP", "announce floating IP"]
    assert document["pass"]["trigger"] == "start"


def test_dry_run_acts_on_nothing_and_writes_no_status(config, adapters):
    record = Agent(config, adapters, dry_run=True).run_pass()
    adapters.drbd.promote.assert_not_called()
    adapters.target.start.assert_not_called()
    assert [a.describe() for a in record.decision.actions][0] == "promote iscsi1"
    import os
    assert not os.path.exists(config.STATUS_FILE)


def test_unreadable_drbd_holds_and_touches_nothing(config, adapters):
    adapters.drbd.observe.side_effect = ValueError("unrecognised line 'xyz' in /proc/drbd")
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    record = Agent(config, adapters).run_pass()
    assert record.decision.actions == ()
    assert "unrecognised line" in record.decision.reason
    adapters.target.stop.assert_not_called()


def test_adapter_observation_errors_do_not_stop_the_pass(config, adapters):
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.side_effect = RuntimeError("tgtadm hung")
    adapters.vip.observe.return_value = FakeVip(local=True)
    record = Agent(config, adapters).run_pass()
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
    original = agent.run_pass
    changed = []

    def cycle(trigger="timer"):
        record = original(trigger)
        if not changed:                     # the first pass: the role changes while it runs
            with open(config.POOL_CONF, "w") as handle:
                handle.write("slave:192.0.2.12")
            changed.append(True)
        return record
    agent.run_pass = cycle
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
    record = Agent(config, adapters).run_pass()
    assert [a.describe() for a in record.decision.actions] == ["stop target", "demote iscsi1"]


def test_once_does_not_act_while_another_process_holds_the_pass_lock(config, adapters):
    from iscsi_ha.passlock import PassLock
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


def _crashed_peer(adapters, config):
    """The peer is gone (a crash): the full duplicate-address window applies. These tests are
    about the address step, not fencing: the pass may promote (the fencing policy's opt-in)."""
    config.ALLOW_UNFENCED_FAILOVER = True
    adapters.drbd.observe.return_value = {
        "iscsi1": state("Secondary", peer="Unknown", conn="WFConnection", peer_disk="DUnknown")}


def _promote_pass(config, adapters, events, is_free, probe_started):
    """One promoting pass whose DRBD promote checks that the address probe (``is_free``,
    which sets ``probe_started``) began with the pass; every step must succeed."""
    def promote(resource):
        assert probe_started.wait(2), "the address probe did not start with the pass"
        events.append("promote")
    adapters.vip.is_free.side_effect = is_free
    adapters.drbd.promote.side_effect = promote
    adapters.vip.add.side_effect = lambda **kw: events.append(("add", kw))
    record = Agent(config, adapters).run_pass()
    assert all(r.ok for r in record.results)
    return record


def test_promote_after_a_crash_runs_dad_beside_the_promotion(config, adapters):
    _crashed_peer(adapters, config)
    events = []
    dad_started = threading.Event()

    def is_free():
        events.append("dad start")
        dad_started.set()
        time.sleep(0.1)
        events.append("dad end")
        return True

    _promote_pass(config, adapters, events, is_free, dad_started)
    assert events.index("dad start") < events.index("promote") < events.index("dad end")
    assert events[-1] == ("add", {"released_timeout": 0})     # DAD done: not run again


def test_early_dad_that_hears_the_address_refuses_it(config, adapters):
    from iscsi_ha.adapters.vip import VipTaken
    _crashed_peer(adapters, config)

    def taken():
        adapters.vip.last_responders = ["02:00:00:00:00:0B (192.0.2.100)"]
        return False
    adapters.vip.is_free.side_effect = taken
    record = Agent(config, adapters).run_pass()
    outcome = dict((r.action.describe(), (r.ok, r.detail)) for r in record.results)
    assert outcome["add floating IP"][0] is False
    assert "02:00:00:00:00:0B" in outcome["add floating IP"][1]
    adapters.vip.add.assert_not_called()
    assert VipTaken


def test_early_dad_is_reaped_when_an_earlier_step_fails(config, adapters):
    _crashed_peer(adapters, config)
    adapters.target.start.side_effect = RuntimeError("tgtd did not answer")
    adapters.vip.is_free.return_value = True
    agent = Agent(config, adapters)
    record = agent.run_pass()
    assert [r.skipped for r in record.results] == [False, False, True, True]
    adapters.vip.add.assert_not_called()
    assert agent._early_dad is None
    assert not any(t.name == "early-dad" and t.is_alive() for t in threading.enumerate())


def test_failing_hooks_alerts_and_status_writes_never_end_the_loop(config, adapters, caplog,
                                                                   mocker):
    """Issue 10: every hook, the alert path and the status write raise; the loop runs its
    passes, logs each place's trace once, and counts every failure in the status."""
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    adapters.vip.observe.return_value = FakeVip(local=True)
    agent = Agent(config, adapters)
    agent.alerts = mocker.Mock()
    agent.alerts.observe.side_effect = TypeError("alert rule broken")
    loop = Loop(agent)

    def boom(*args):
        raise TypeError("hook broken")
    loop.on_pass = loop.on_idle = loop.on_hung = boom
    writes = []
    real_write = __import__("iscsi_ha.status", fromlist=["write"]).write

    def flaky_write(path, document):
        if path == config.STATUS_FILE:
            writes.append(document)
            if len(writes) <= 2:
                raise OSError(30, "Read-only file system")
        real_write(path, document)
    mocker.patch("iscsi_ha.status.write", side_effect=flaky_write)
    with caplog.at_level("ERROR", logger="iscsi-ha"):
        loop.run(max_passes=4)
    assert agent.passes == 4
    last = writes[-1]
    assert last["faults"]["hook on_pass"]["count"] == 3        # the 4th runs after the write
    assert last["faults"]["alerts"]["count"] == 3
    assert last["faults"]["status write %s" % config.STATUS_FILE]["count"] == 2
    traces = [r for r in caplog.records if r.exc_info]
    assert last["health"] != "failed" and "state_dir" not in last    # writable again
    assert sorted(set(r.getMessage().split(" failed")[0] for r in traces)) == [
        "alerts", "hook on_idle", "hook on_pass", "status write %s" % config.STATUS_FILE]
    assert len(traces) == 4                                    # each place's trace once
    with open(config.STATUS_FILE) as handle:
        assert json.load(handle)["faults"]["hook on_pass"]["last_error"].startswith("TypeError")


def test_hung_pass_alert_hook_gets_the_killed_processes_and_the_real_alert_builds(
        config, adapters):
    import subprocess
    from iscsi_ha.alerts import events
    adapters.drbd.observe.side_effect = lambda: subprocess.run(["sleep", "30"]) and {}
    agent = Agent(config, adapters)
    loop = Loop(agent)
    alerts = []
    loop.on_hung = lambda seconds, killed: alerts.append(events.pass_hung(seconds, killed))
    loop.run_pass("test")
    assert agent.hung_passes == 1 and len(alerts) == 1          # once per hung pass
    assert alerts[0].details["killed"].endswith(" sleep")


def test_unwritable_state_dir_passes_go_on_health_failed_and_alerted(tmp_path, adapters,
                                                                     mocker):
    """Issue 10 (2): STATE_DIR stops holding the pass lock or the status while the agent runs
    (here the directory is replaced by a regular file, which even root cannot write into; the
    lab scenario uses a real read-only mount): the lock falls back to LOCK_FALLBACK_DIR, passes
    still run and act, health is failed, the status copy lands in the fallback directory, and
    the alert path gets one state-dir-failed alert naming the directory and the error."""
    from iscsi_ha.alerts import StatusAlerts
    blocker = tmp_path / "state"
    blocker.mkdir()
    pool = tmp_path / "pool.conf"
    pool.write_text("master")
    config = config_mod.loads("\n".join([
        "POOL_CONF=%s" % pool, "STATE_DIR=%s" % blocker,
        "LOCK_FALLBACK_DIR=%s" % (tmp_path / "run"), "MANUAL_FILE=%s" % (tmp_path / "manual"),
        "MONITOR_DELAY=0.2",
        "MONITOR_SCANRATE=0.1", "MONITOR_MAX_STARTS=3", "DRBD_TIMEOUT=0.2",
        "TARGET_TIMEOUT=0.2", "NET_TIMEOUT=0.2", "XAPI_TIMEOUT=0.2", "SYSLOG_SOCKET=", ""]))
    blocker.rmdir()
    blocker.write_text("")
    agent = Agent(config, adapters)
    dispatcher = mocker.Mock()
    agent.alerts = StatusAlerts(dispatcher)
    loop = Loop(agent)
    loop.run(max_passes=2)
    assert agent.passes == 2
    adapters.drbd.promote.assert_called_with("iscsi1")           # the passes acted
    with open(str(tmp_path / "run" / "status")) as handle:
        document = json.load(handle)
    assert document["health"] == "failed"
    assert str(blocker) in document["state_dir"]["error"]
    assert "File exists" in document["state_dir"]["error"]
    assert os.path.exists(str(tmp_path / "run" / "lock"))
    kinds = [call.args[0].kind for call in dispatcher.submit.call_args_list]
    assert kinds.count("state-dir-failed") == 1                  # once, not every pass
    alert = [c.args[0] for c in dispatcher.submit.call_args_list
             if c.args[0].kind == "state-dir-failed"][0]
    assert alert.resource == str(blocker) and "File exists" in alert.summary


# -- an admin's confirmed forced promotion through the real Agent -------------------------------


class Collect(object):
    def __init__(self):
        self.alerts = []

    def submit(self, alert, status=None):
        self.alerts.append(alert)
        return True


def test_a_forced_promotion_is_done_and_alerted(config, adapters):
    adapters.drbd.observe.return_value = {
        "iscsi1": state("Secondary", peer="Unknown", conn="WFConnection", peer_disk="DUnknown")}
    adapters.vip.is_free.return_value = True
    agent = Agent(config, adapters)
    sink = Collect()
    agent.alerts = StatusAlerts(sink)
    record = agent.run_pass()
    assert not record.decision.actions                  # fencing unproven: refused
    manual_adapter.write_manual(config.MANUAL_FILE, model.MANUAL_PRIMARY)
    record = agent.run_pass()
    assert not record.decision.actions                  # manual primary alone: still refused
    fencing.write_forced(config.STATE_DIR, ["iscsi1"], time.time() + 60, "root")
    record = agent.run_pass()
    adapters.drbd.promote.assert_called_once_with("iscsi1")
    assert [a.kind for a in sink.alerts].count("unfenced-failover") == 1
    alert = [a for a in sink.alerts if a.kind == "unfenced-failover"][0]
    assert "forced become-primary" in alert.summary


def test_a_pass_that_acts_on_a_kept_reading_observes_afresh_first(config, adapters):
    """The floating IP's kept reading (no netlink message since) serves idle passes only: a
    pass whose decision acts drops it, observes again and decides on the fresh readings."""
    adapters.drbd.observe.return_value = {"iscsi1": state("Primary")}
    adapters.target.observe.return_value = FakeTarget(running=True, serving=True)
    readings = [FakeVip(local=False), FakeVip(local=True)]

    def observe(*args, **kwargs):
        adapters.vip.cache_used = len(readings) == 2       # the first reading was kept
        return readings.pop(0)
    adapters.vip.observe.side_effect = observe
    record = Agent(config, adapters).run_pass()
    adapters.vip.forget.assert_called_once_with()
    assert adapters.vip.observe.call_count == 2 and readings == []
    assert record.observation.vip.local and record.decision.actions == ()
    adapters.vip.add.assert_not_called()
    # only the kept reading is read again: DRBD and the target were read afresh once
    assert adapters.drbd.observe.call_count == 1
    assert adapters.target.observe.call_count == 1


def test_a_fresh_reading_that_acts_is_not_read_twice(config, adapters):
    adapters.vip.cache_used = False
    Agent(config, adapters).run_pass()
    adapters.vip.forget.assert_not_called()
    assert adapters.vip.observe.call_count == 1


def test_the_short_probe_after_an_orderly_release_also_runs_beside_the_promotion(config,
                                                                                   adapters):
    """The peer is a connected Secondary (it released the address): the one short probe
    starts with the pass and the address step takes its verdict instead of probing again."""
    events, started = [], threading.Event()

    def is_free(**window):
        events.append(("dad", window))
        started.set()
        return True

    _promote_pass(config, adapters, events, is_free, started)
    assert events[0] == ("dad", {"count": 1, "timeout": config.ARP_DAD_RELEASED_TIMEOUT})
    assert events[-1] == ("add", {"released_timeout": 0})


@pytest.mark.parametrize("trigger,from_stream", [
    ("drbd", True), ("timer", False), ("pool.conf/manual", False), ("start", False),
    ("target process gone", False)])
def test_only_a_pass_a_drbd_event_woke_may_read_drbd_from_the_stream(config, adapters, trigger,
                                                                     from_stream):
    """The line that woke the pass proves the events stream live; any other pass (the timer's
    among them, which also checks the stream against DRBD) asks DRBD itself."""
    Agent(config, adapters).run_pass(trigger)
    if from_stream:
        adapters.drbd.observe.assert_called_once_with(from_stream=True)
    else:
        adapters.drbd.observe.assert_called_once_with()
