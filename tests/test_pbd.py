"""PbdReplugger against the fake XAPI pool (real XML-RPC over Unix sockets): plugging after a
kick, retries for errors that pass, one alert per failure streak, a hung XAPI never blocking the
caller, and the rounds the agent's observations start."""
import threading
import time

import pytest

from iscsi_ha import model
from iscsi_ha.adapters.xapi import XapiClient
from iscsi_ha.drbd import DrbdState
from iscsi_ha_lab.fake_xapi import FakePool, XapiError
from iscsi_ha.pbd import PbdReplugger, storage_served

A_IP, B_IP = "192.0.2.11", "192.0.2.12"
SR = "iscsi_ha_sr"
FAST = (0.01, 0.02)          # retry delays for tests


def wait_rounds(worker, count, timeout):
    """Wait (bounded) until the replugger has finished ``count`` rounds; True if it has."""
    deadline = time.monotonic() + timeout
    while worker.rounds < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Recorder(object):
    """Stands in for the AlertDispatcher: submit() records the alerts."""

    def __init__(self):
        self.alerts = []
        self.lock = threading.Lock()

    def submit(self, alert, status=None):
        with self.lock:
            self.alerts.append(alert)
        return True

    def kinds(self):
        with self.lock:
            return [(a.kind, a.resource) for a in self.alerts]


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def lab(tmp_path):
    """A two-host fake pool with one lvmoiscsi SR; clients talk to the slave b's Unix socket
    (calls are forwarded to the master a, as on a real slave)."""
    pool = FakePool(str(tmp_path), fuse_delay=0.3, restart_delay=0.1, live_timeout=0.2,
                    hang_limit=20.0)
    a = pool.add_host("xcp_a", A_IP, str(tmp_path / "a_etc" / "pool.conf"),
                      uds_path=str(tmp_path / "a_run" / "xapi"))
    b = pool.add_host("xcp_b", B_IP, str(tmp_path / "b_etc" / "pool.conf"),
                      uds_path=str(tmp_path / "b_run" / "xapi"))
    sr = pool.add_iscsi_sr(SR, "192.0.2.10", "iqn.2024-01.org.example:ha", "36001405abc")
    made = []

    def factory(timeout=2.0):
        def make():
            client = XapiClient("unix://" + pool.endpoint(b).uds_path, "root", "", timeout)
            made.append(client)
            return client
        return make
    replugger_list = []

    def replugger(**kwargs):
        kwargs.setdefault("retry_delays", FAST)
        made_one = PbdReplugger(kwargs.pop("factory", factory()), kwargs.pop("recorder"),
                                kwargs.pop("interval", 60.0), **kwargs)
        replugger_list.append(made_one)
        return made_one
    try:
        pool.start()
        yield pool, a, b, sr, replugger
    finally:
        for one in replugger_list:
            one.close(timeout=0.5)
        for one in replugger_list:
            one.wait_stopped(30.0)
        for client in made:
            client.close()
        pool.stop()


def pbd_of(pool, host, sr):
    return [p for p in pool.db.get("SR", sr, "PBDs") if pool.db.get("PBD", p, "host") == host][0]


def attached(pool, pbd):
    return pool.db.get("PBD", pbd, "currently_attached")


def plug_calls(pool, host):
    return pool.endpoint(host).calls("PBD.plug")


def test_unplugged_pbd_is_plugged_after_a_kick(lab):
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)
    alerts = Recorder()
    worker = replugger(recorder=alerts)
    assert worker.kick("this host became storage primary") is True
    assert wait_rounds(worker, 1, 20.0)
    assert attached(pool, pbd) is True
    assert attached(pool, pbd_of(pool, a, sr)) is True           # a's PBD was never touched
    assert len(plug_calls(pool, a)) == 1                         # forwarded to the master
    assert plug_calls(pool, a)[0].params[1] == pbd
    assert alerts.kinds() == [("sr-replugged", SR)]
    assert "this host became storage primary" in alerts.alerts[0].details["detail"]
    assert worker.last_outcome.plugged == [SR]


def test_a_round_with_everything_attached_only_lists(lab):
    pool, a, b, sr, replugger = lab
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False)
    pool.endpoint(a).clear_calls()
    outcome = worker.run_round("timer")
    assert outcome.listed and outcome.plugged == [] and outcome.failed == {}
    methods = [c.method for c in pool.endpoint(b).calls()]
    assert "PBD.plug" not in methods
    assert sorted(set(methods) - {"session.login_with_password", "session.get_this_host"}) == [
        "PBD.get_all_records", "SR.get_all_records"]
    assert alerts.alerts == []


@pytest.mark.parametrize("code", ["HOST_OFFLINE", "OTHER_OPERATION_IN_PROGRESS"])
def test_errors_that_pass_are_retried_until_the_plug_succeeds(lab, code):
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)
    # ErrorDescription shapes from xenapi.md section 4(c)
    error = [code, b] if code == "HOST_OFFLINE" else [code, "SR", sr, "pbd_plug", "OpaqueRef:t"]
    pool.endpoint(a).inject_fault("error", "PBD.plug", error=error, times=2)
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False)
    outcome = worker.run_round("kick")
    assert outcome.plugged == [SR] and outcome.failed == {}
    assert len(plug_calls(pool, a)) == 3
    assert attached(pool, pbd) is True
    assert alerts.kinds() == [("sr-replugged", SR)]
    assert "after 3 attempt(s)" in alerts.alerts[0].details["detail"]


def test_retries_are_bounded_and_give_one_alert(lab):
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)
    pool.endpoint(a).inject_fault("error", "PBD.plug", error=["HOST_OFFLINE", b])
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False)
    for _ in range(3):
        outcome = worker.run_round("timer")
        assert outcome.failed and SR in outcome.failed
    assert len(plug_calls(pool, a)) == 3 * (len(FAST) + 1)
    assert alerts.kinds() == [("sr-replug-failed", SR)]
    assert alerts.alerts[0].details["attempts"] == len(FAST) + 1


def test_backend_failure_gives_one_alert_per_streak_then_a_recovery(lab):
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)

    def backend_down(ref, record, attach):
        # SR_BACKEND_FAILURE_<n> ["", msg, ""] (xenapi.md section 4(c)); 47: "The SR is not
        # available"
        raise XapiError("SR_BACKEND_FAILURE_47", "", "The SR is not available [opterr=no "
                        "iSCSI target reachable]", "")
    pool.set_pbd_handler(b, backend_down)
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False)
    for _ in range(4):
        outcome = worker.run_round("timer")
        assert "SR_BACKEND_FAILURE_47" in outcome.failed[SR]
    assert len(plug_calls(pool, a)) == 4              # not a code that passes: no retries
    assert alerts.kinds() == [("sr-replug-failed", SR)]
    assert "The SR is not available" in alerts.alerts[0].summary
    pool.set_pbd_handler(b, None)
    assert worker.run_round("timer").plugged == [SR]
    assert alerts.kinds() == [("sr-replug-failed", SR), ("sr-replugged", SR)]
    assert "SR_BACKEND_FAILURE_47" in alerts.alerts[1].details["detail"]
    pool.set_pbd_attached(pbd, False)
    pool.set_pbd_handler(b, backend_down)
    worker.run_round("timer")                          # a new streak: a new alert
    assert [k for k, _ in alerts.kinds()].count("sr-replug-failed") == 2


def test_failure_streak_ends_when_someone_else_plugs_it(lab):
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)
    pool.endpoint(a).inject_fault("error", "PBD.plug", error=["SR_NOT_SHARABLE", sr, b])
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False)
    worker.run_round("timer")
    pool.endpoint(a).clear_faults()
    pool.set_pbd_attached(pbd, True)                   # an admin ran xe pbd-plug
    worker.run_round("timer")
    worker.run_round("timer")
    assert alerts.kinds() == [("sr-replug-failed", SR), ("sr-replugged", SR)]
    assert "not by iscsi-ha" in alerts.alerts[1].details["detail"]


@pytest.mark.timeout(60)
def test_hung_xapi_never_blocks_kick_and_close_is_bounded(lab):
    pool, a, b, sr, replugger = lab
    pool.endpoint(a).inject_fault("hang", "SR.get_all_records")
    alerts = Recorder()
    worker = replugger(recorder=alerts, factory=_factory_with_timeout(pool, b, 3.0))
    assert worker.kick("first") is True
    assert wait_until(lambda: pool.endpoint(a).calls("SR.get_all_records"), 20.0)
    assert worker.kick("while XAPI hangs") is True     # returns although the worker is stuck
    assert worker.rounds == 0
    assert worker.close(timeout=0.05) is False         # does not wait for the hung call
    assert worker.kick("after close") is False
    assert worker.wait_stopped(30.0) is True           # the client's timeout ends the call
    assert worker.rounds == 1 and worker.last_outcome.listed is False
    assert "did not answer SR.get_all_records" in worker.last_outcome.error
    assert alerts.alerts == []
    pool.endpoint(a).clear_faults()


def _factory_with_timeout(pool, host, timeout):
    clients = []

    def make():
        clients.append(XapiClient("unix://" + pool.endpoint(host).uds_path, "root", "",
                                  timeout))
        return clients[-1]
    return make


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_master_gone_then_back(lab):
    """The listing fails while the master is dead (no alert), and works once it is back."""
    pool, a, b, sr, replugger = lab
    pbd = pbd_of(pool, b, sr)
    pool.set_pbd_attached(pbd, False)
    alerts = Recorder()
    worker = replugger(recorder=alerts, start=False,
                       factory=_factory_with_timeout(pool, b, 0.5))
    pool.endpoint(a).inject_fault("refuse")
    outcome = worker.run_round("kick")
    assert outcome.listed is False and alerts.alerts == []
    pool.endpoint(a).clear_faults()
    assert worker.run_round("retry").plugged == [SR]
    assert alerts.kinds() == [("sr-replugged", SR)]


# -- when rounds run ---------------------------------------------------------------------------
def _observation(role, peer_role, serving):
    state = DrbdState("iscsi1", "1", role, peer_role, "Connected", "UpToDate", "UpToDate")
    target = model.TargetObservation(running=serving, serving=serving)
    return model.Observation(pool=model.PoolRole(model.MASTER), manual=model.MANUAL_OFF,
                             drbd={"iscsi1": state}, target=target, resources=("iscsi1",))


def test_storage_served_reads_drbd_roles_and_the_target():
    assert storage_served(_observation("Primary", "Secondary", True)) == (True, False)
    assert storage_served(_observation("Primary", "Secondary", False)) == (False, False)
    assert storage_served(_observation("Secondary", "Primary", False)) == (False, True)
    assert storage_served(_observation("Secondary", "Secondary", False)) == (False, False)


def test_observations_kick_on_a_new_server_and_the_timer_runs_only_while_served():
    clock = Clock()
    worker = PbdReplugger(lambda: None, Recorder(), 60.0, clock=clock, start=False)
    assert worker.observe(_observation("Secondary", "Secondary", False)) is None
    assert worker.pending() is None
    clock.now += 600
    assert worker.pending() is None                    # nobody serves: no timer rounds
    reason = worker.observe(_observation("Primary", "Secondary", True))
    assert reason == "this host is now serving the storage"
    assert worker.pending() == reason
    assert worker.observe(_observation("Primary", "Secondary", True)) is None   # no new kick
    assert worker.pending() is None
    clock.now += 60
    assert worker.pending() == "timer"
    worker.observe(_observation("Secondary", "Secondary", False))
    clock.now += 600
    assert worker.pending() is None
    assert worker.observe(_observation("Secondary", "Primary", False)) == (
        "the peer is now serving the storage")
    worker.enabled = False
    assert worker.pending() is None and worker.kick("x") is False
    worker.close()


def test_a_round_that_failed_is_retried_sooner(lab):
    pool, a, b, sr, replugger = lab
    clock = Clock()
    worker = replugger(recorder=Recorder(), start=False, interval=60.0, clock=clock,
                       retry_after_failure=5.0, factory=_factory_with_timeout(pool, b, 0.5))
    worker.serving = True
    pool.endpoint(a).inject_fault("refuse")
    worker.run_round("kick")
    clock.now += 5
    assert worker.pending() == "timer"
    pool.endpoint(a).clear_faults()
    worker.run_round("timer")
    clock.now += 5
    assert worker.pending() is None
    clock.now += 55
    assert worker.pending() == "timer"


def test_the_worker_runs_timer_rounds_while_serving(lab):
    pool, a, b, sr, replugger = lab
    worker = replugger(recorder=Recorder(), interval=0.05)
    worker.serving = True
    assert wait_rounds(worker, 3, 20.0)
    worker.serving = False
    assert worker.close(timeout=10.0) is True


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        PbdReplugger(lambda: None, Recorder(), 0, start=False)


def test_a_disabled_worker_sleeps_a_full_tick_past_its_due_time():
    """PBD_REPLUG=0 while the storage is served: the due time passes but no round may run, so
    the worker must not wake every 10 ms (it did, for ever)."""
    from iscsi_ha.pbd import TICK
    clock = Clock()
    worker = PbdReplugger(lambda: None, Recorder(), 60.0, clock=clock, enabled=False,
                          start=False)
    worker.observe(_observation("Primary", "Secondary", True))
    clock.now += 600
    assert worker.pending() is None and worker._idle_wait() == TICK
    worker.enabled = True
    assert worker._idle_wait() == 0.01 and worker.pending() == "timer"
    worker.close()
