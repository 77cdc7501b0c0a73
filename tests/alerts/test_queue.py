"""The alert dispatcher: deduplication and summaries (injected clock, no threads), back-off and
give-up, the bounded queue, and with real worker threads: a hung or black-holed server never
blocks submit(), the other sender, or close(). Ends with an end-to-end run: status documents ->
alerts -> a real SMTP server and the fake XAPI's messages."""
import logging
import statistics
import threading
import time

import pytest
from smtp_servers import black_hole, make_config, smtp_server

from iscsi_ha import statepaths
from iscsi_ha.adapters.xapi import OtherConfigCache, XapiClient
from iscsi_ha import status as status_module
from iscsi_ha.alerts import StatusAlerts, build_dispatcher, events, load_previous
from iscsi_ha.alerts.email import EmailSender
from iscsi_ha.alerts.events import SendError
from iscsi_ha.alerts.queue import AlertDispatcher, XapiMessageSender
from iscsi_ha_lab.fake_xapi import FakePool


class FakeClock(object):
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Recorder(object):
    """A sender that records entries; ``failures`` scripts what the next sends raise."""

    def __init__(self, name="rec", max_attempts=5):
        self.name, self.max_attempts = name, max_attempts
        self.sent, self.attempts, self.failures = [], 0, []
        self.gate = None

    def send(self, entry):
        self.attempts += 1
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.failures:
            failure = self.failures.pop(0)
            if failure is not None:
                raise failure
        self.sent.append(entry)


def dispatcher(screen_minutes=30, senders=None, **kwargs):
    clock = FakeClock()
    config = make_config(25, MAIL_SCREEN_TIME=str(screen_minutes))
    senders = senders or [Recorder()]
    made = AlertDispatcher(config, senders, clock=clock, wall=lambda: 1.7e9 + clock.now,
                           start=False, **kwargs)
    return made, clock, senders


def link_down(resource="r0"):
    return events.make("drbd-disconnected", resource, "%s: replication link down" % resource)


def test_duplicates_are_held_and_summarised_once_per_window():
    d, clock, (rec,) = dispatcher(30)
    d.submit(link_down())
    assert d.pump() == 1 and rec.sent[0].repeat is None
    for step in range(12):
        clock.now = 10.0 + step * 10
        assert d.submit(link_down()) is True
    d.submit(link_down("r1"))                     # another resource is not a duplicate
    assert d.pump() == 1 and rec.sent[1].alert.resource == "r1"
    clock.now = 1799.0
    assert d.pump() == 0
    clock.now = 1800.0
    assert d.pump() == 1
    summary = rec.sent[2]
    assert summary.alert.kind == "drbd-disconnected" and summary.repeat["count"] == 12
    assert summary.repeat["minutes"] == 30
    clock.now = 1900.0
    d.submit(link_down())                         # the summary opened a new window
    assert d.pump() == 0
    clock.now = 3600.0
    assert d.pump() == 1 and rec.sent[3].repeat["count"] == 1
    clock.now = 5400.0
    assert d.pump() == 0                          # a quiet window ends silently
    clock.now = 5500.0
    d.submit(link_down())
    assert d.pump() == 1 and rec.sent[4].repeat is None
    assert len(rec.sent) == 5


def test_screen_time_zero_sends_everything():
    d, clock, (rec,) = dispatcher(0)
    for _ in range(3):
        d.submit(link_down())
    assert d.pump() == 3


def test_transient_failures_back_off_then_deliver_in_order():
    d, clock, (rec,) = dispatcher(0)
    rec.failures = [SendError("down"), SendError("down"), SendError("down")]
    d.submit(link_down("r0"))
    d.submit(link_down("r1"))
    attempts_at = {}
    for second in range(0, 40):
        clock.now = float(second)
        if d.pump():
            attempts_at[second] = rec.attempts
    # back-off 5, 10, 20 s after the 1st, 2nd, 3rd failure; then both go out
    assert sorted(attempts_at) == [0, 5, 15, 35]
    assert [e.alert.resource for e in rec.sent] == ["r0", "r1"]


def test_gives_up_after_max_attempts_and_on_permanent_errors(caplog):
    rec = Recorder(max_attempts=3)
    d, clock, _ = dispatcher(0, senders=[rec])
    rec.failures = [SendError("down")] * 3 + [SendError("550 no such user", transient=False)]
    d.submit(link_down("r0"))
    with caplog.at_level(logging.WARNING, logger="iscsi-ha"):
        for second in range(0, 100):
            clock.now = float(second)
            d.pump()
        d.submit(link_down("r1"))
        d.pump()
        d.submit(link_down("r2"))
        d.pump()
    assert rec.attempts == 5 and [e.alert.resource for e in rec.sent] == ["r2"]
    assert d.dropped == 2
    assert "after 3 attempt(s)" in caplog.text and "(permanent failure)" in caplog.text


def test_full_queue_drops_the_oldest_with_a_log_line(caplog):
    d, clock, (rec,) = dispatcher(0, queue_size=3)
    with caplog.at_level(logging.WARNING, logger="iscsi-ha"):
        for number in range(5):
            d.submit(link_down("r%d" % number))
    d.pump()
    assert [e.alert.resource for e in rec.sent] == ["r2", "r3", "r4"]
    assert d.dropped == 2
    assert caplog.text.count("dropped the oldest alert") == 2


def test_manual_mode_does_not_silence_failures():
    d, clock, (rec,) = dispatcher(30)
    watcher = StatusAlerts(d)
    base = {"agent": {"pid": 1, "started": 1.0}, "manual_mode": "become_primary",
            "desired_role": "primary", "drbd": {},
            "decision": {"reason": "promoting: manual mode, admin chose primary",
                         "healthy": False, "actions": ["promote r0"]}}
    watcher.observe(dict(base, last_actions=[]))
    found = watcher.observe(dict(base, last_actions=[
        {"action": "promote r0", "ok": False, "detail": "drbdadm: exit 11", "at": 5.0}]))
    assert [a.kind for a in found] == ["promote-failed"]
    assert d.pump() == 1 and rec.sent[0].status["manual_mode"] == "become_primary"


def test_restart_detected_from_the_status_file_left_behind(tmp_path):
    path = str(tmp_path / "status")
    assert load_previous(path) is None
    old = {"agent": {"pid": 41, "started": 1.0}, "updated_iso": "then", "health": "ok",
           "drbd": {}, "decision": {"reason": "no action", "healthy": True, "actions": []}}
    status_module.write(path, old)
    d, clock, (rec,) = dispatcher(30)
    watcher = StatusAlerts(d, previous=load_previous(path))
    found = watcher.observe(dict(old, agent={"pid": 42, "started": 9.0}))
    assert [(a.kind, a.details["previous_pid"]) for a in found] == [("agent-restarted", 41)]
    assert watcher.observe(dict(old, agent={"pid": 42, "started": 9.0})) == []


def test_mail_on_zero_keeps_only_xapi_messages():
    config = make_config(25, MAIL_ON="0")
    assert build_dispatcher(config, start=False).lanes == []
    made = build_dispatcher(config, client=object(), start=False)
    assert [lane.name for lane in made.lanes] == ["xapi"]
    assert [lane.name for lane in build_dispatcher(make_config(25), start=False).lanes] == [
        "email"]


# -- real worker threads ------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_hung_sender_blocks_neither_submit_nor_the_other_sender_nor_close():
    hung, fine = Recorder("hung"), Recorder("fine")
    hung.gate = threading.Event()
    config = make_config(25, MAIL_SCREEN_TIME="0")
    d = AlertDispatcher(config, [hung, fine])
    try:
        for number in range(20):
            d.submit(link_down("r%d" % number))   # would deadlock here if submit waited
        assert wait_until(lambda: len(fine.sent) == 20)
        assert hung.attempts == 1 and hung.sent == []
        left = d.close(timeout=0.5)               # bounded although a send is stuck
        assert left == 19
        assert d.submit(link_down()) is False
    finally:
        hung.gate.set()
        d.close(timeout=5)


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.timeout(120)
def test_black_holed_smtp_server_submit_returns_at_once(capsys):
    """Behaviour: submit() returns while the email worker sits in a connect/read timeout, and
    the XAPI-side sender still delivers everything. Also prints how long submit() took."""
    other = Recorder("xapi-like")
    with black_hole() as port:
        config = make_config(port, MAIL_SCREEN_TIME="0", SMTP_TIMEOUT="2")
        email = EmailSender(config)
        d = AlertDispatcher(config, [email, other])
        try:
            durations = []
            for number in range(80):           # fewer than the queue holds: nothing dropped
                start = time.perf_counter()
                d.submit(link_down("r%d" % number))
                durations.append(time.perf_counter() - start)
            assert wait_until(lambda: len(other.sent) == 80)
            assert d.pending() > 0                # the mail is still waiting for the server
        finally:
            d.close(timeout=1)
    with capsys.disabled():
        print("\n[measurement] submit() with SMTP black-holed: mean %.1f us, median %.1f us, "
              "max %.1f us over %d calls" % (
                  statistics.mean(durations) * 1e6, statistics.median(durations) * 1e6,
                  max(durations) * 1e6, len(durations)))


# -- end to end: status documents -> mail + XAPI messages ---------------------------------------
UP = {"role": "Primary", "peer_role": "Secondary", "connection": "Connected",
      "disk": "UpToDate", "peer_disk": "UpToDate", "sync_percent": None}
DOWN = dict(UP, peer_role="Unknown", connection="WFConnection", peer_disk="DUnknown")


def status(drbd, number):
    return {"hostname": "xcp-a", "agent": {"pid": 1, "started": 1.0}, "updated": 1000.0 + number,
            "pass": {"number": number}, "pool": {"role": "master", "master_address": ""},
            "desired_role": "primary", "drbd": {"r0": drbd}, "last_actions": [],
            "decision": {"reason": "no action: primary as expected", "healthy": True,
                         "actions": []}, "health": "ok", "problems": []}


@pytest.mark.timeout(120)
def test_link_cut_gives_one_disconnected_and_one_reconnected_mail_and_message(tmp_path):
    pool = FakePool(str(tmp_path), hang_limit=30.0)
    a = pool.add_host("xcp_a", "192.0.2.11", str(tmp_path / "a_etc" / "pool.conf"),
                      uds_path=str(tmp_path / "a_run" / "xapi"))
    pool.start()
    cache = OtherConfigCache(str(tmp_path / "state" / statepaths.OTHER_CONFIG_CACHE))
    client = XapiClient("unix://" + pool.endpoint(a).uds_path, "root", "", 2.0, cache=cache)
    try:
        with smtp_server("plain") as (sink, port):
            config = make_config(port, tmp_path, MAIL_SCREEN_TIME="30")
            d = build_dispatcher(config, client, cache)
            watcher = StatusAlerts(d)
            states = [UP, UP, DOWN, DOWN, DOWN, UP, UP]
            for number, drbd in enumerate(states):
                watcher.observe(status(drbd, number))
            assert d.wait_idle(30)
            subjects = [m["Subject"] for m in sink.messages()]
            d.close(timeout=5)
    finally:
        client.close()
        pool.stop()
    assert len(subjects) == 2
    assert "r0: replication link down (WFConnection)" in subjects[0]
    assert "r0: replication link up again (Connected)" in subjects[1]
    names = [m["name"] for m in pool.messages() if m["name"].startswith("ISCSI_HA_")]
    assert names == ["ISCSI_HA_DRBD_DISCONNECTED", "ISCSI_HA_DRBD_RECONNECTED"]
    priorities = [str(m["priority"]) for m in pool.messages() if m["name"] in names]
    assert priorities == ["2", "4"]


@pytest.mark.timeout(60)
def test_xapi_sender_with_a_dead_master_does_not_delay_mail(tmp_path):
    pool = FakePool(str(tmp_path), hang_limit=30.0)
    a = pool.add_host("xcp_a", "192.0.2.11", str(tmp_path / "a_etc" / "pool.conf"))
    b = pool.add_host("xcp_b", "192.0.2.12", str(tmp_path / "b_etc" / "pool.conf"),
                      uds_path=str(tmp_path / "b_run" / "xapi"))
    pool.start()
    client = XapiClient("unix://" + pool.endpoint(b).uds_path, "root", "", 1.0)
    try:
        pool.master_dies(a)                       # b's forwarded calls now hang
        with smtp_server("plain") as (sink, port):
            config = make_config(port, MAIL_SCREEN_TIME="0")
            xapi_sender = XapiMessageSender(client)
            d = AlertDispatcher(config, [EmailSender(config), xapi_sender])
            try:
                d.submit(link_down())
                assert wait_until(lambda: len(sink.envelopes) == 1)
                assert d.pending() >= 1           # the XAPI message is still being retried
            finally:
                d.close(timeout=2)
    finally:
        client.close()
        pool.stop()


def test_a_lane_whose_last_job_was_dropped_sleeps_a_full_tick():
    """After a job is dropped, the lane's old retry time must not make its worker wake every
    10 ms (it did: 100 wake-ups a second for ever, the idle agent's largest CPU cost)."""
    from iscsi_ha.alerts.queue import TICK
    rec = Recorder(max_attempts=2)
    d, clock, _ = dispatcher(0, senders=[rec])
    lane = d.lanes[0]
    rec.failures = [SendError("down")] * 2
    d.submit(link_down("r0"))
    d.pump()                                         # first failure: a retry time is set
    clock.now = lane.retry_at + 1
    d.pump()                                         # second: dropped, the retry time stays
    assert d.dropped == 1 and not lane.jobs and lane.retry_at is not None
    clock.now = 100.0
    assert d._idle_wait(lane, clock.now) == TICK
    rec.failures = [SendError("down")] * 2
    rec.max_attempts = 5
    d.submit(link_down("r1"))
    d.pump()                                         # fails: retried later, job kept
    assert lane.jobs and d._idle_wait(lane, clock.now) == pytest.approx(
        min(TICK, lane.retry_at - clock.now))
    clock.now = lane.retry_at + 5
    assert d._idle_wait(lane, clock.now) == 0.01


def test_idle_workers_sleep_until_a_submit_or_a_summary_is_due():
    """With real worker threads: idle lanes do not wake on a timer (the agent's idle cost), a
    submit wakes them at once, and a repeat wakes them to wait for its window's end, where the
    summary goes out although TICK is far longer than the window."""
    from iscsi_ha.alerts.queue import TICK
    calls = []

    def clock():
        calls.append(threading.current_thread().name)
        return time.monotonic()
    rec = Recorder()
    d = AlertDispatcher(make_config(25, MAIL_SCREEN_TIME="1"), [rec], clock=clock)
    d.screen = 0.5                                   # seconds: the window, shortened
    try:
        assert TICK >= 10 and d.wait_idle(5)
        time.sleep(0.2)
        del calls[:]
        time.sleep(2.5)                              # idle: the old 1 s tick woke twice here
        assert [c for c in calls if c.startswith("alerts-")] == []
        d.submit(link_down("r0"))
        assert d.wait_idle(5) and len(rec.sent) == 1
        sent_at = time.monotonic()
        d.submit(link_down("r0"))                    # a repeat: held for the window
        deadline = time.monotonic() + 10
        while len(rec.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(rec.sent) == 2 and rec.sent[1].repeat["count"] == 1
        assert time.monotonic() - sent_at < 5         # at the window's end, not after TICK
    finally:
        d.close(2)
