"""Fencing, the agent's side: drbdadm dump parsing, the proof, frozen I/O tracking, the handler's
exit codes (never 5), the drbd-config stanza and the alerts."""
import json
import os
import subprocess
import sys

import pytest

from iscsi_ha import config as config_mod, fence_peer, fencing, statepaths
from iscsi_ha.fencing_policy import keeps_earlier_proof
from iscsi_ha.alerts.events import alerts_for_transition
from iscsi_ha.cli import drbd_config_cmd
from iscsi_ha.drbd import DrbdState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMP_84 = """# resource iscsi1 on a: not ignored, not stacked
resource iscsi1 {
    on a {
        device           minor 1;
    }
    disk {
        fencing          resource-and-stonith;
    }
    handlers {
        fence-peer       /usr/libexec/iscsi-ha/drbd-fence-peer;
        split-brain      "/usr/libexec/iscsi-ha/drbd-split-brain-handler";
    }
}
"""


@pytest.fixture
def config(tmp_path):
    text = ("DRBD_RESOURCES=iscsi1\nSTATE_DIR=%s\nFENCE_PEER_TIMEOUT=2\nDRBD_TIMEOUT=5\n"
            "XAPI_TIMEOUT=1\nMONITOR_SCANRATE=5\n" % (tmp_path / "state"))
    path = tmp_path / "iscsi-ha.conf"
    path.write_text(text)
    return config_mod.load(str(path))


OK, FAILED = {"ok": True}, {"ok": False}
CLEAN, UNREAD = {"problems": []}, {"problems": ["drbdadm dump failed: timed out"]}
WRONG = {"problems": ["fencing is dont-care, needs resource-and-stonith"]}
KEEP_ROWS = [
    # earlier, mine, theirs, peer error -> keep the earlier proof
    ("both read, clean", OK, CLEAN, CLEAN, "", False),
    ("peer unreachable", OK, CLEAN, None, "cannot ask the peer: timed out", True),
    ("peer's dump failed", OK, CLEAN, UNREAD, "", True),
    ("our dump failed", OK, UNREAD, CLEAN, "", True),
    ("peer unreachable, no earlier proof", None, CLEAN, None, "cannot ask the peer: x", False),
    ("peer unreachable, earlier proof failed", FAILED, CLEAN, None, "cannot ask: x", False),
    ("peer unreachable, our finding", OK, WRONG, None, "cannot ask the peer: x", False),
    ("peer's dump failed, our finding", OK, WRONG, UNREAD, "", False),
    ("our dump failed, peer's finding", OK, UNREAD, WRONG, "", False),
    ("resource unknown at the peer", OK, CLEAN, None, "", False),
]


@pytest.mark.parametrize("name,earlier,mine,theirs,peer_error,keep", KEEP_ROWS,
                         ids=[r[0] for r in KEEP_ROWS])
def test_a_recheck_keeps_the_earlier_proof_only_when_a_side_was_unread(
        name, earlier, mine, theirs, peer_error, keep):
    assert keeps_earlier_proof(earlier, mine, theirs, peer_error) is keep


def test_parse_dump_and_problems(config):
    parsed = fencing.parse_dump(DUMP_84)
    assert parsed["iscsi1"]["fencing"] == "resource-and-stonith"
    assert parsed["iscsi1"]["handlers"]["fence-peer"] == "/usr/libexec/iscsi-ha/drbd-fence-peer"
    assert fencing.problems_of(parsed["iscsi1"], config) == []
    plain = fencing.parse_dump(DUMP_84.replace("fencing          resource-and-stonith;", ""))
    assert fencing.problems_of(plain["iscsi1"], config) == [
        "fencing is dont-care, needs resource-and-stonith"]
    assert fencing.problems_of(None, config) == ["not in drbdadm dump"]


@pytest.mark.parametrize("rc,outcome", [(0, "outdated"), (17, "primary"), (5, "inconsistent"),
                                        (20, "failed"), (11, "failed")])
def test_outdate_outcome(rc, outcome):
    assert fencing.outdate_outcome(rc) == outcome


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def answer(outcome):
    return lambda timeout: {"outcome": outcome, "host": "lab-b", "detail": "x"}


@pytest.mark.parametrize("outcome,code", [("outdated", 4), ("inconsistent", 3), ("primary", 6)])
def test_handler_maps_the_peers_answer(config, outcome, code):
    assert fence_peer.fence(config, "iscsi1", call=answer(outcome))[0] == code


def test_handler_keeps_io_frozen_when_the_peer_cannot_be_reached(config):
    clock, calls = Clock(), []

    def unreachable(timeout):
        calls.append(timeout)
        clock.now += 0.6
        raise RuntimeError("HOST_OFFLINE")
    code, outcome, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable)
    assert code == 1 and code != 5 and "HOST_OFFLINE" in outcome
    assert 2 <= len(calls) <= 5 and all(t <= config.XAPI_TIMEOUT for t in calls)


def test_handler_reports_fenced_only_with_a_fresh_promotion_grant(config):
    clock = Clock()

    def unreachable(timeout):
        clock.now += 1.0
        raise RuntimeError("HOST_OFFLINE")
    fencing.write_grant(config.STATE_DIR, "iscsi1", "promoting: proven", now=1000.0)
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable,
                                  now=lambda: 1001.0)
    assert code == 7
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable,
                                  now=lambda: 5000.0)
    assert code == 1


class Offline(Exception):
    code = "HOST_OFFLINE"


def test_handler_stops_at_host_offline_only_with_a_promotion_grant(config):
    """With the agent's grant, XAPI's HOST_OFFLINE ends the attempts at once (exit 7); without
    a grant, or for an error that is not HOST_OFFLINE, it tries until FENCE_PEER_TIMEOUT."""
    clock, calls = Clock(), []

    def offline(timeout):
        calls.append(timeout)
        clock.now += 0.1
        raise Offline("cannot reach the peer through XAPI: HOST_OFFLINE")

    def timing_out(timeout):
        calls.append(timeout)
        clock.now += 0.1
        raise RuntimeError("timed out")
    sleep = lambda seconds: setattr(clock, "now", clock.now + seconds)
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=offline, sleep=sleep)
    assert code == 1 and len(calls) >= 3          # no grant: every attempt until the timeout
    fencing.write_grant(config.STATE_DIR, "iscsi1", "promoting: proven", now=1000.0)
    del calls[:]
    code, outcome, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=offline,
                                        now=lambda: 1001.0, sleep=sleep)
    assert code == 7 and len(calls) == 1 and "HOST_OFFLINE" in outcome
    del calls[:]

    def refused(timeout):
        calls.append(timeout)
        clock.now += 0.01
        exc = RuntimeError("cannot reach the peer through XAPI: connection refused")
        exc.refused = True
        raise exc
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=refused,
                                  now=lambda: 1001.0, sleep=sleep)
    assert code == 7 and len(calls) == 1
    del calls[:]
    start = clock.now
    answer, _ = fence_peer.ask_peer_to_outdate(config, "iscsi1", clock.now + 2, clock=clock,
                                               sleep=sleep, call=timing_out,
                                               stop_when_offline=True)
    assert answer is None and len(calls) >= 3 and clock.now - start >= 1.5


def test_a_stuck_local_xapi_ends_the_attempts_only_with_a_grant(config):
    """Under a grant, a local xapi that cannot ask the peer now (a slave of a dead master
    hangs on the login) ends the attempts before the first one: exit 7. Without a grant the
    probe is not asked and the attempts run until FENCE_PEER_TIMEOUT."""
    clock, calls, probes = Clock(), [], []
    sleep = lambda seconds: setattr(clock, "now", clock.now + seconds)

    def timing_out(timeout):
        calls.append(timeout)
        clock.now += 0.5
        raise RuntimeError("timed out")

    def stuck():
        probes.append(1)
        return "this host's xapi cannot ask the peer now: login did not answer"
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=timing_out, sleep=sleep,
                                  probe=stuck)
    assert code == 1 and probes == [] and len(calls) >= 3
    fencing.write_grant(config.STATE_DIR, "iscsi1", "promoting: proven", now=1000.0)
    del calls[:]
    code, outcome, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=timing_out,
                                        now=lambda: 1001.0, sleep=sleep, probe=stuck)
    assert code == 7 and calls == [] and probes == [1] and "login did not answer" in outcome
    code, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=timing_out,
                                  now=lambda: 1001.0, sleep=sleep, probe=lambda: None)
    assert code == 7 and len(calls) >= 3      # a working local xapi: attempts as before


def test_new_master_fuse_reads_pool_conf(tmp_path):
    import types
    conf = tmp_path / "pool.conf"
    config = types.SimpleNamespace(POOL_CONF=str(conf))
    assert fence_peer.new_master_fuse(config) is None                  # no pool.conf
    conf.write_text("slave:192.0.2.10\n")
    assert fence_peer.new_master_fuse(config) is None                  # still a slave
    conf.write_text("master\n")
    written = os.stat(str(conf)).st_mtime
    why = fence_peer.new_master_fuse(config, now=written + 2.5)
    assert "became pool master 2.5 s ago" in why
    assert fence_peer.new_master_fuse(config, now=written + fence_peer.MASTER_FUSE) is None
    assert fence_peer.new_master_fuse(config, now=written - 5) is None  # clock stepped back


def _handler_under_grant(tmp_path, pool_conf_age):
    """Run scripts/drbd-fence-peer under a grant, its XAPI a Unix socket that accepts and never
    answers (a slave of a dead master); returns (exit code, record, connections seen)."""
    import socket
    import time
    tmp_path.mkdir()
    state = tmp_path / "state"
    conf = tmp_path / "pool.conf"
    conf.write_text("master\n")
    then = time.time() - pool_conf_age
    os.utime(str(conf), (then, then))
    xapi = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    xapi.bind(str(tmp_path / "xapi.sock"))
    xapi.listen(8)
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("DRBD_RESOURCES=iscsi1\nSTATE_DIR=%s\nFENCE_PEER_TIMEOUT=5\n"
                    "XAPI_TIMEOUT=1\nPOOL_CONF=%s\nXAPI_URL=unix://%s\nLOG_FILE=\n"
                    % (state, conf, tmp_path / "xapi.sock"))
    fencing.write_grant(str(state), "iscsi1", "promoting: proven")
    env = dict(os.environ, PYTHONPATH=REPO, ISCSI_HA_CONFIG=str(path), DRBD_RESOURCE="iscsi1")
    try:
        done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "drbd-fence-peer")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        xapi.settimeout(0.01)
        seen = 0
        for _ in range(20):
            try:
                xapi.accept()[0].close()
                seen += 1
            except socket.timeout:
                break
    finally:
        xapi.close()
    record = json.load(open(str(state / "fence-peer-iscsi1.json")))
    return done.returncode, record, seen


def test_handler_just_after_becoming_master_does_not_wait_for_its_xapi(tmp_path):
    """The crash failover: pool.conf turned master a moment ago, so the local xapi is the dead
    master's slave until its restart. The handler, run for real, exits 7 at once under the
    grant without touching XAPI; with a pool.conf older than the fuse it probes the login as
    before (and still exits 7 when that hangs)."""
    code, record, seen = _handler_under_grant(tmp_path / "fresh", 1.0)
    assert code == 7 and seen == 0, record
    assert "became pool master" in record["outcome"]
    code, record, seen = _handler_under_grant(tmp_path / "old", fence_peer.MASTER_FUSE + 30)
    assert code == 7 and seen == 1, record
    assert "did not answer" in record["outcome"] or "cannot ask the peer" in record["outcome"]


def test_handler_script_refuses_bad_input_with_a_failure_code(tmp_path, config):
    env = dict(os.environ, PYTHONPATH=REPO, ISCSI_HA_CONFIG=config.path, DRBD_RESOURCE="")
    script = os.path.join(REPO, "scripts", "drbd-fence-peer")
    done = subprocess.run([sys.executable, script], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 1 and "DRBD_RESOURCE" in done.stderr
    env["DRBD_RESOURCE"] = "iscsi1"
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "drbd-unfence-peer")],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert done.returncode == 0
    record = json.load(open(os.path.join(config.STATE_DIR, "fence-peer-iscsi1.json")))
    assert record["event"] == "unfence-peer"


def state(connection="Connected", suspended=False, role="Primary"):
    return DrbdState("iscsi1", "1", role, "Secondary" if connection == "Connected" else
                     "Unknown", connection, "UpToDate",
                     "UpToDate" if connection == "Connected" else "DUnknown",
                     suspended=suspended)


class Adapter(object):
    def __init__(self, text=DUMP_84):
        self.text, self.calls = text, 0

    def dump(self, name):
        self.calls += 1
        return self.text


def test_tracker_proves_fencing_while_connected_and_remembers_it(config):
    clock = Clock()
    peer = {"host": "b", "resources": {"iscsi1": {"problems": []}}}
    tracker = fencing.FencingTracker(config, peer_fencing=lambda: peer, clock=clock,
                                     wall=lambda: 5000.0)
    adapter = Adapter()
    obs = tracker.observe({"iscsi1": state()}, adapter)
    assert "iscsi1" in obs.proven and adapter.calls == 1
    obs = tracker.observe({"iscsi1": state("WFConnection")}, adapter)
    assert "iscsi1" in obs.proven and adapter.calls == 1         # remembered, not re-read
    again = fencing.FencingTracker(config, peer_fencing=None, clock=clock)
    assert "iscsi1" in again.observe({"iscsi1": state("WFConnection")}, adapter).proven
    peer["resources"]["iscsi1"]["problems"] = ["fencing is dont-care, needs "
                                               "resource-and-stonith"]
    os.unlink(os.path.join(config.STATE_DIR, statepaths.FENCING_PROOF))
    obs = fencing.FencingTracker(config, peer_fencing=lambda: peer, clock=clock).observe(
        {"iscsi1": state()}, adapter)
    assert obs.unproven["iscsi1"] == "peer: fencing is dont-care, needs resource-and-stonith"


def test_a_recheck_that_cannot_read_a_side_keeps_the_earlier_proof(config):
    """The peer crashing during a re-check (seen in the lab: its plugin's `drbdadm dump`
    failed, or it did not answer) proves nothing: the earlier proof stands, so the crash does
    not take failover away. A finding about a configuration still replaces it."""
    clock = Clock()
    wall = [5000.0]
    peer = {"host": "b", "resources": {"iscsi1": {"problems": []}}}
    answers = [lambda: peer]
    tracker = fencing.FencingTracker(config, peer_fencing=lambda: answers[0](), clock=clock,
                                     wall=lambda: wall[0])
    adapter = Adapter()
    assert "iscsi1" in tracker.observe({"iscsi1": state()}, adapter).proven

    def recheck():
        clock.now += config.FENCING_RECHECK + 1
        wall[0] += config.FENCING_RECHECK + 1
        return tracker.observe({"iscsi1": state()}, adapter)
    peer["resources"]["iscsi1"]["problems"] = ["drbdadm dump failed: exit 20"]
    obs = recheck()
    assert "iscsi1" in obs.proven, obs.unproven

    def unreachable():
        raise RuntimeError("HOST_OFFLINE")
    answers[0] = unreachable
    assert "iscsi1" in recheck().proven
    answers[0] = lambda: peer
    broken = Adapter(text="")
    broken.dump = lambda name: (_ for _ in ()).throw(OSError("timed out"))
    clock.now += config.FENCING_RECHECK + 1
    wall[0] += config.FENCING_RECHECK + 1
    assert "iscsi1" in tracker.observe({"iscsi1": state()}, broken).proven   # our dump failed
    peer["resources"]["iscsi1"]["problems"] = ["fencing is dont-care, needs "
                                               "resource-and-stonith"]
    obs = recheck()
    assert obs.unproven["iscsi1"] == "peer: fencing is dont-care, needs resource-and-stonith"


def test_tracker_measures_frozen_io_and_self_fenced_marks(config):
    clock = Clock()
    tracker = fencing.FencingTracker(config, clock=clock)
    adapter = Adapter()
    assert tracker.observe({"iscsi1": state("WFConnection", True)}, adapter).frozen_s == {
        "iscsi1": 0.0}
    clock.now += 12.5
    assert tracker.observe({"iscsi1": state("WFConnection", True)}, adapter).frozen_s == {
        "iscsi1": 12.5}
    tracker.mark_self_fenced(["iscsi1"])
    obs = tracker.observe({"iscsi1": state("WFConnection", False, "Secondary")}, adapter)
    assert obs.frozen_s == {} and obs.self_fenced == ("iscsi1",)
    assert tracker.observe({"iscsi1": state()}, adapter).self_fenced == ()   # reconnected


def test_tracker_reads_a_forced_promotion_until_done_or_expired(config):
    clock = Clock()
    tracker = fencing.FencingTracker(config, clock=clock, wall=lambda: 1000.0)
    adapter = Adapter()
    alone = {"iscsi1": state("WFConnection", False, "Secondary")}
    assert tracker.observe(alone, adapter).forced == ()
    fencing.write_forced(config.STATE_DIR, ["iscsi1"], until=1030.0, by="root")
    assert tracker.observe(alone, adapter).forced == ("iscsi1",)
    late = fencing.FencingTracker(config, clock=clock, wall=lambda: 1031.0)
    assert late.observe(alone, adapter).forced == ()                       # expired
    assert not os.path.exists(os.path.join(config.STATE_DIR, statepaths.FORCED_PROMOTION))
    fencing.write_forced(config.STATE_DIR, ["iscsi1"], until=1030.0, by="root")
    promoted = {"iscsi1": state("WFConnection", False, "Primary")}
    assert tracker.observe(promoted, adapter).forced == ()                 # done
    assert not os.path.exists(os.path.join(config.STATE_DIR, statepaths.FORCED_PROMOTION))
    with open(os.path.join(config.STATE_DIR, statepaths.FORCED_PROMOTION), "w") as handle:
        handle.write('{"resources": "iscsi1", "until": 2000}')              # malformed
    assert tracker.observe(alone, adapter).forced == ()


def test_drbd_config_prints_each_versions_syntax(config):
    text84 = drbd_config_cmd.stanza(config, "8.4")
    assert "    disk {\n        fencing resource-and-stonith;\n    }" in text84
    assert 'after-resync-target "/usr/libexec/iscsi-ha/drbd-unfence-peer";' in text84
    text9 = drbd_config_cmd.stanza(config, "9")
    assert "        fencing resource-and-stonith;" in text9.split("net {")[1].split("}")[0]
    assert 'unfence-peer "/usr/libexec/iscsi-ha/drbd-unfence-peer";' in text9
    for text in (text84, text9):
        assert 'fence-peer "/usr/libexec/iscsi-ha/drbd-fence-peer";' in text
        assert "resource iscsi1 {" in text and "protocol C;" in text


def doc(**fencing_part):
    base = {"agent": {"pid": 1, "started": 1}, "drbd": {}, "decision": {"reason": "x",
                                                                         "actions": []},
            "fencing": {"fence_peer": {}, "self_fenced": []}}
    base["fencing"].update(fencing_part)
    return base


def test_alerts_for_fencing():
    before = doc()
    ran = doc(fence_peer={"iscsi1": {"event": "fence-peer", "exit": 1, "time": 5,
                                     "outcome": "could not"}})
    kinds = [a.kind for a in alerts_for_transition(before, ran)]
    assert kinds == ["fence-peer-failed"]
    assert alerts_for_transition(ran, ran) == []
    fenced = doc(self_fenced=["iscsi1"])
    assert [a.kind for a in alerts_for_transition(before, fenced)] == ["self-fenced"]
    risky = doc()
    risky["decision"] = {"reason": "promoting: x; WARNING: ...", "actions": ["promote iscsi1"],
                         "risks": ["iscsi1 promoted without proof (y): ALLOW_UNFENCED_FAILOVER=1 "
                                   "accepts ..."]}
    alerts = alerts_for_transition(before, risky)
    assert [a.kind for a in alerts] == ["unfenced-failover"]
    assert "ALLOW_UNFENCED_FAILOVER" in alerts[0].summary
    words = doc()                   # the reason sentence alone is never read
    words["decision"] = dict(risky["decision"], risks=[])
    words["decision"]["reason"] += " ALLOW_UNFENCED_FAILOVER"
    assert alerts_for_transition(before, words) == []


def test_status_view_says_what_to_do_after_a_self_fence():
    from iscsi_ha.cli.status_view import fencing_advice
    lines = fencing_advice({"fencing": {"self_fenced": ["iscsi1"], "frozen_s": {},
                                        "unproven": {}, "fence_peer": {"iscsi1": {
                                            "event": "fence-peer", "exit": 1, "time": 0,
                                            "outcome": "the peer could not be outdated"}}}})
    text = "\n".join(lines)
    assert "SELF-FENCED" in text and "iscsi-cfg become-primary --force" in text
    assert "exit 1: the peer could not be outdated" in text
    assert fencing_advice({}) == []


def test_a_fencing_refusal_is_one_failover_refused_alert():
    before = doc()
    refusing = doc()
    refusing["service"] = {"blocked": True}
    refusing["decision"] = {"reason": "refusing: x", "actions": [], "verdict": "blocked",
                            "blockers": [{"kind": "fencing-unproven", "resource": "iscsi1",
                                          "detail": "iscsi1: automatic failover is off: ...; "
                                                    "iscsi-cfg become-primary --force"}]}
    alerts = alerts_for_transition(before, refusing)
    assert [a.kind for a in alerts] == ["failover-refused"]
    assert "become-primary --force" in alerts[0].summary
    assert alerts_for_transition(refusing, refusing) == []


def test_handler_asks_the_mediator_when_the_peer_is_unreachable(config):
    """Management network down: the mediator's answer decides (4/3 peer outdated there, 6 this
    host deposed); no answer keeps I/O frozen unless the agent left a promotion grant."""
    clock = Clock()

    def unreachable(timeout):
        clock.now += 1.0
        raise RuntimeError("HOST_OFFLINE")
    for answer_, code in (((4, ""), 4), ((3, ""), 3), ((6, "b is primary at generation 9"), 6),
                          ((1, "mediator unreachable"), 1)):
        got, outcome, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable,
                                           mediator=lambda c, a=answer_: a)
        assert got == code, outcome
        assert "mediator" in outcome
    fencing.write_grant(config.STATE_DIR, "iscsi1", "promoting: granted", now=1000.0)
    got, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable,
                                 mediator=lambda c: (1, "no answer"), now=lambda: 1001.0)
    assert got == 7
    got, _, _ = fence_peer.fence(config, "iscsi1", clock=clock, call=unreachable,
                                 mediator=lambda c: (6, "deposed"), now=lambda: 1001.0)
    assert got == 6                  # deposed wins over the local grant
    # without MEDIATOR the handler never asks one
    assert fence_peer.ask_mediator(config) is None
