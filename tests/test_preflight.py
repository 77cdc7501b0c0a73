"""The admin's operations as tables (iscsi_ha.preflight), and beside each become-primary row
what decide() does with the same DRBD state on a pool master in manual mode "primary": they
agree, or the row names the rule that makes them differ."""
import collections

import pytest

from iscsi_ha import model, preflight
from iscsi_ha.decide import decide
from iscsi_ha.drbd import DrbdState
from iscsi_ha.fencing_policy import FencingObservation
from iscsi_ha.model import TargetObservation, VipObservation


def st(role, peer, conn, disk, peer_disk, sync=None, name="iscsi1"):
    return DrbdState(resource=name, minor="1", role=role, peer_role=peer, connection=conn,
                     disk=disk, peer_disk=peer_disk, sync_percent=sync)


SEC = st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate")
PRI = st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate")
PEER_PRI = st("Secondary", "Primary", "Connected", "UpToDate", "UpToDate")
ALONE = st("Secondary", "Unknown", "WFConnection", "UpToDate", "DUnknown")
SYNCING = st("Secondary", "Secondary", "SyncTarget", "Inconsistent", "UpToDate", sync=42.0)
CONSISTENT_ALONE = st("Secondary", "Unknown", "WFConnection", "Consistent", "DUnknown")
FENCED = {"iscsi1": "fencing verified on both hosts"}

# id, state, fenced, blocker words, risk words, what decide() does, rule when they differ
PROMOTION = [
    ("peer Secondary, UpToDate", SEC, {}, None, None, "promote", None),
    ("peer Primary", PEER_PRI, FENCED, "the peer is Primary", None, "no-promote", None),
    ("unknown peer, fencing proven", ALONE, FENCED, None, None, "promote", None),
    ("unknown peer, fencing unproven", ALONE, {}, None, "may be Primary", "no-promote",
     preflight.RULE_ADMIN_ACCEPTS_RISK),
    ("resync running", SYNCING, FENCED, "not UpToDate (resync 42.0% done)", None,
     "promote", preflight.RULE_UPTODATE_ONLY),
    ("Consistent after a restart, fencing proven", CONSISTENT_ALONE, FENCED,
     "the local disk is Consistent", None, "promote", preflight.RULE_UPTODATE_ONLY),
]


def _decide_promotes(state, fenced, forced=()):
    fencing = FencingObservation(proven=dict(fenced), unproven={} if fenced else {
        "iscsi1": "never verified"}, forced=forced)
    observation = model.Observation(
        pool=model.PoolRole(model.MASTER, detail="master"), manual=model.MANUAL_PRIMARY,
        drbd={"iscsi1": state}, drbd_error="", target=TargetObservation(running=False,
                                                                          serving=False),
        vip=VipObservation(local=False), split_brain=(), witness=None, resources=("iscsi1",),
        fencing=fencing)
    return any(isinstance(a, model.PromoteDrbd) for a in decide(observation).actions)


@pytest.mark.parametrize("row", PROMOTION, ids=[r[0] for r in PROMOTION])
def test_promotion_table_and_decide(row):
    _, state, fenced, blocker, risk, agent, rule = row
    blockers, risks = preflight.promotion(model.MANUAL_SECONDARY, [], {"iscsi1": state}, "",
                                          ("iscsi1",), fenced)
    assert (blocker is None) == (not blockers) and (risk is None) == (not risks)
    assert blocker is None or blocker in blockers[0]
    assert risk is None or risk in risks[0]
    admin_may = not blockers                # a risk may be accepted: --force, confirmed
    promotes = _decide_promotes(state, fenced)
    assert promotes == (agent == "promote")
    # where the admin's check and the agent part, a named rule says why
    assert (admin_may == promotes) == (rule is None), "%s: rule %s" % (row[0], rule)
    if risks:    # the confirmed force is recorded, and then the agent does promote
        assert _decide_promotes(state, fenced, forced=("iscsi1",))


@pytest.mark.parametrize("mode,flagged,error,words", [
    (model.MANUAL_OFF, [], "", "manual mode is off on this host"),     # RULE_MANUAL_ONLY
    (model.MANUAL_SECONDARY, ["iscsi1"], "", "split brain flagged on iscsi1"),
    (model.MANUAL_HOLD, [], "drbdsetup timed out", "cannot read DRBD state: drbdsetup"),
])
def test_promotion_blockers_beside_the_resources(mode, flagged, error, words):
    blockers, risks = preflight.promotion(mode, flagged, {} if error else {"iscsi1": SEC},
                                          error, ("iscsi1",), {})
    assert any(words in b for b in blockers) and risks == []


Pool = collections.namedtuple("Pool", "role detail")


@pytest.mark.parametrize("states,error,mode", [
    ({"a": PRI, "b": PRI}, "", model.MANUAL_PRIMARY),
    ({"a": SEC, "b": SEC}, "", model.MANUAL_SECONDARY),
    ({"a": PRI, "b": SEC}, "", model.MANUAL_HOLD),
    ({}, "not loaded", model.MANUAL_HOLD),
])
def test_pin_keeps_the_host_as_it_is(states, error, mode):
    assert preflight.pin(states, error, ("a", "b"))[0] == mode


@pytest.mark.parametrize("pool,states,words", [
    (Pool(model.MASTER, "master"), {"a": PRI}, []),
    (Pool(model.MASTER, "master"), {"a": SEC}, ["a is Secondary, but this host is pool master"]),
    (Pool(model.SLAVE, "slave:x"), {"a": PRI}, ["a is Primary, but this host is a pool slave"]),
    (Pool(model.UNKNOWN, "no pool.conf"), {}, ["pool role is unknown (no pool.conf)"]),
])
def test_native_role(pool, states, words):
    problems = preflight.native_role_problems(pool, states, "", ("a",))
    assert len(problems) == len(words)
    assert all(w in p for w, p in zip(words, problems))


SERVING_DOC = {"agent_running": True, "stale": False, "target": {"serving": True},
               "floating_ip": {"local": True}}


@pytest.mark.parametrize("document,mode,states,words", [
    (SERVING_DOC, model.MANUAL_OFF, {"iscsi1": PRI}, []),
    (dict(SERVING_DOC, stale=True), model.MANUAL_OFF, {"iscsi1": PRI}, ["stale"]),
    (SERVING_DOC, model.MANUAL_SECONDARY, {"iscsi1": PRI}, ["already says secondary"]),
    (SERVING_DOC, model.MANUAL_OFF, {"iscsi1": st("Primary", "Unknown", "WFConnection",
                                                  "UpToDate", "DUnknown")},
     ["a switchover needs Primary/Secondary Connected"]),     # RULE_SWITCHOVER_CONNECTED
    (dict(SERVING_DOC, target={"serving": False}), model.MANUAL_OFF, {"iscsi1": PRI},
     ["target is not serving"]),
])
def test_switchover_local(document, mode, states, words):
    problems = preflight.switchover_local(document, mode, [], states, "", ("iscsi1",))
    assert len(problems) == len(words) and all(w in p for w, p in zip(words, problems))


PEER = {"hostname": "b", "agent_running": True, "stale": False, "manual_mode": "off",
        "drbd": {"iscsi1": {"role": "Secondary", "connection": "Connected", "disk": "UpToDate"}},
        "target": {"running": False}, "floating_ip": {"local": False}}


@pytest.mark.parametrize("change,words", [
    ({}, []),
    ({"manual_mode": model.MANUAL_PRIMARY}, ["manual mode there says primary"]),
    ({"drbd": {}}, ["no DRBD state for iscsi1"]),
    ({"decision": {"blockers": [{"kind": "split-brain", "resource": "iscsi1"}]}},
     ["split brain: iscsi1"]),
    ({"decision": {"blockers": [{"kind": "peer-primary", "waits": True}]}}, []),
    ({"decision": {"blockers": [{"kind": "fencing-unproven", "detail": "no handler"}]}},
     ["refuses storage actions: no handler"]),
    ({"floating_ip": {"local": True}}, ["holds the floating IP"]),
])
def test_switchover_peer(change, words):
    problems = preflight.switchover_peer(dict(PEER, **change), ("iscsi1",))
    assert len(problems) == len(words) and all(w in p for w, p in zip(words, problems))


# id, state, refused in a switchover's handoff (wait_peer)
HANDOFF = [
    ("peer Primary, connected, both UpToDate: handing over", PEER_PRI, False),
    ("peer Primary, peer disk Outdated", st("Secondary", "Primary", "Connected", "UpToDate",
                                            "Outdated"), True),
    ("peer Primary, resyncing", st("Secondary", "Primary", "SyncTarget", "Inconsistent",
                                   "UpToDate", sync=10.0), True),
    ("peer Primary, link down", st("Secondary", "Primary", "WFConnection", "UpToDate",
                                   "DUnknown"), True),
]


@pytest.mark.parametrize("row", HANDOFF, ids=[r[0] for r in HANDOFF])
def test_a_handoff_accepts_only_a_connected_uptodate_primary_peer_and_decide_waits(row):
    """RULE_SWITCHOVER_HANDOFF: the role is set while the peer still demotes; decide() does
    not promote beside the Primary peer (it waits for the demotion), whatever the check."""
    _, state, refused = row
    blockers, _ = preflight.promotion(model.MANUAL_SECONDARY, [], {"iscsi1": state}, "",
                                      ("iscsi1",), FENCED, handoff=True)
    assert bool(blockers) == refused
    plain, _ = preflight.promotion(model.MANUAL_SECONDARY, [], {"iscsi1": state}, "",
                                   ("iscsi1",), FENCED)
    assert plain                                      # outside a handoff: always refused
    assert not _decide_promotes(state, FENCED)


@pytest.mark.parametrize("states,error,handoff,probes", [
    ({"iscsi1": PEER_PRI}, "", True, False),     # the peer holds the address until it demotes
    ({"iscsi1": PEER_PRI}, "", False, True),     # no handoff: probe (and refuse anyway)
    ({"iscsi1": SEC}, "", True, True),           # the peer already demoted: probe
    ({}, "cannot read DRBD", True, True),        # unreadable: never skip a check
], ids=["handoff", "no handoff", "peer released", "unreadable"])
def test_the_floating_ip_probe_is_skipped_only_while_a_handoff_peer_holds_it(
        states, error, handoff, probes):
    assert preflight.probes_floating_ip(states, error, handoff) is probes
