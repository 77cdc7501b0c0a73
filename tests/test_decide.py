"""The policy as tables: one observation in, the exact actions and sentence out."""
import re

import pytest

from iscsi_ha import model
from iscsi_ha.decide import decide
from iscsi_ha.fencing_policy import FORCE_HINT, FencingObservation
from iscsi_ha.drbd import DrbdState
from iscsi_ha.model import (AddFloatingIp, AnnounceFloatingIp, DemoteDrbd, PromoteDrbd,
                            RemoveFloatingIp, StartTarget, StopTarget, TargetObservation,
                            VipObservation, WitnessGrant)
from iscsi_ha.model import BlockerKind, Verdict

MASTER = model.PoolRole(model.MASTER, detail="master")
SLAVE = model.PoolRole(model.SLAVE, master_address="192.0.2.11", detail="slave:192.0.2.11")

SERVING = TargetObservation(running=True, serving=True)
RUNNING = TargetObservation(running=True, serving=False, missing=("LUN 10 not exported",))
STOPPED = TargetObservation(running=False, serving=False)
LOCAL = VipObservation(local=True)
AWAY = VipObservation(local=False)

UP = (AddFloatingIp(), AnnounceFloatingIp())


def st(role, peer, conn, disk, peer_disk, name="iscsi1"):
    return DrbdState(resource=name, minor="1", role=role, peer_role=peer, connection=conn,
                     disk=disk, peer_disk=peer_disk, sync_percent=None)


PRI = st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate")
SEC = st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate")
SEC_PEER_PRI = st("Secondary", "Primary", "Connected", "UpToDate", "UpToDate")
SEC_ALONE = st("Secondary", "Unknown", "WFConnection", "UpToDate", "DUnknown")
OUTDATED_ALONE = st("Secondary", "Unknown", "WFConnection", "Outdated", "DUnknown")
SYNC_TARGET = st("Secondary", "Secondary", "SyncTarget", "Inconsistent", "UpToDate")
INCONSISTENT_ALONE = st("Secondary", "Unknown", "StandAlone", "Inconsistent", "DUnknown")
DISKLESS_GOOD_PEER = st("Secondary", "Secondary", "Connected", "Diskless", "UpToDate")
PRI_ALONE = st("Primary", "Unknown", "WFConnection", "UpToDate", "DUnknown")
DRBD9_SEC = st("Secondary", "Secondary", "Established", "UpToDate", "UpToDate")
CONSISTENT = st("Secondary", "Secondary", "Connected", "Consistent", "Outdated")


PROVEN = FencingObservation(proven={"iscsi1": "verified on both hosts"})
UNPROVEN = FencingObservation(unproven={"iscsi1": "peer runs fencing dont-care"})


def obs(drbd, pool=MASTER, target=STOPPED, vip=AWAY, manual=model.MANUAL_OFF, witness=None,
        split_brain=(), drbd_error="", resources=None, fencing=PROVEN):
    if not isinstance(drbd, dict):
        drbd = {"iscsi1": drbd}
    return model.Observation(pool=pool, manual=manual, drbd=drbd, drbd_error=drbd_error,
                             target=target, vip=vip, split_brain=split_brain, witness=witness,
                             resources=tuple(resources or sorted(drbd)), fencing=fencing)


P = "this host is pool master"
S = "this host is a pool slave of 192.0.2.11"

ROWS = [
    # id, observation, actions, reason
    ("master: promote all the way", obs(SEC),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: settled", obs(PRI, target=SERVING, vip=LOCAL), (),
     "no action: primary as expected (%s), target serving, floating IP local" % P),
    ("master: primary, target stopped", obs(PRI), (StartTarget(),) + UP,
     "starting target: " + P),
    ("master: primary, LUN missing", obs(PRI, target=RUNNING, vip=LOCAL), (StartTarget(),),
     "starting target: " + P),
    ("master: primary, serving, IP away", obs(PRI, target=SERVING), UP,
     "taking floating IP: " + P),
    ("master: peer still Primary", obs(SEC_PEER_PRI), (),
     "waiting: %s, but iscsi1: peer is still Primary" % P),
    ("master: peer Primary and IP here", obs(SEC_PEER_PRI, vip=LOCAL), (RemoveFloatingIp(),),
     "waiting: %s, but iscsi1: peer is still Primary" % P),
    ("master: peer Primary and target here", obs(SEC_PEER_PRI, target=SERVING, vip=LOCAL),
     (RemoveFloatingIp(), StopTarget()), "waiting: %s, but iscsi1: peer is still Primary" % P),
    ("master: peer gone, UpToDate here, fencing proven", obs(SEC_ALONE),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: peer gone, UpToDate here, fencing not proven", obs(SEC_ALONE, fencing=UNPROVEN),
     (), "refusing: %s, but iscsi1: automatic failover is off: the peer is unreachable and "
     "this host cannot prove its data is current (peer runs fencing dont-care); %s"
     % (P, FORCE_HINT)),
    ("master: Consistent after a restart, fencing proven",
     obs(st("Secondary", "Unknown", "WFConnection", "Consistent", "DUnknown")),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: Consistent after a restart, fencing not proven",
     obs(st("Secondary", "Unknown", "WFConnection", "Consistent", "DUnknown"),
         fencing=UNPROVEN), (),
     "refusing: %s, but iscsi1: no UpToDate data here (disk Consistent, peer disk DUnknown)"
     % P),
    ("master: peer gone, no fencing observation at all", obs(SEC_ALONE, fencing=None),
     (), "refusing: %s, but iscsi1: automatic failover is off: the peer is unreachable and "
     "this host cannot prove its data is current (fencing was never verified on both "
     "hosts); %s" % (P, FORCE_HINT)),
    ("master: peer gone, not proven, opt-in key", obs(SEC_ALONE, fencing=FencingObservation(
        unproven={"iscsi1": "peer runs fencing dont-care"}, allow_unfenced=True)),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP,
     "promoting: %s; WARNING: iscsi1 promoted without proof that its data is current (peer "
     "runs fencing dont-care): ALLOW_UNFENCED_FAILOVER=1 accepts that writes the peer "
     "acknowledged may be lost and a split brain may follow" % P),
    ("manual primary forced by the admin, not proven", obs(
        SEC_ALONE, manual=model.MANUAL_PRIMARY, fencing=FencingObservation(
            unproven={"iscsi1": "peer runs fencing dont-care"}, forced=("iscsi1",))),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP,
     "promoting: manual mode, admin chose primary; WARNING: iscsi1 promoted by the admin's "
     "forced become-primary, without proof that its data is current (peer runs fencing "
     "dont-care): writes the peer acknowledged may be lost and a split brain may follow"),
    ("manual primary forced by the admin after a self-fence", obs(
        SEC_ALONE, manual=model.MANUAL_PRIMARY, fencing=FencingObservation(
            proven={"iscsi1": "x"}, self_fenced=("iscsi1",), forced=("iscsi1",))),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP,
     "promoting: manual mode, admin chose primary; WARNING: iscsi1 promoted by the admin's "
     "forced become-primary, without proof that its data is current (this host self-fenced): "
     "writes the peer acknowledged may be lost and a split brain may follow"),
    ("master: self-fenced earlier, link still down", obs(SEC_ALONE, fencing=FencingObservation(
        proven={"iscsi1": "x"}, self_fenced=("iscsi1",))), (),
     "refusing: %s, but iscsi1: this host self-fenced (it could not outdate its peer); it is "
     "not promoted again until the replication link is back, or: %s" % (P, FORCE_HINT)),
    ("master: I/O frozen briefly: hold", obs(PRI_ALONE, target=SERVING, vip=LOCAL,
                                             fencing=FencingObservation(frozen_s={"iscsi1": 3.2},
                                                                        self_fence_after=30)),
     (), "holding: I/O on iscsi1 frozen by DRBD fencing for 3 s while the fence-peer handler "
     "tries to outdate the peer (self-fencing after 30 s)"),
    ("master: I/O frozen too long: self-fence", obs(
        PRI_ALONE, target=SERVING, vip=LOCAL,
        fencing=FencingObservation(frozen_s={"iscsi1": 31.0}, self_fence_after=30)),
     (RemoveFloatingIp(), StopTarget(), DemoteDrbd("iscsi1")),
     "stopping service: self-fencing, I/O on iscsi1 stayed frozen for more than 30 s: the fence-peer handler "
     "could not outdate the peer, so this host stops serving (floating IP, target, DRBD "
     "Secondary) before the network heals; see iscsi-cfg status"),
    ("master: peer gone, Outdated here", obs(OUTDATED_ALONE), (),
     "refusing: %s, but iscsi1: no UpToDate data here (disk Outdated, peer disk DUnknown)" % P),
    ("master: StandAlone Inconsistent", obs(INCONSISTENT_ALONE), (),
     "refusing: %s, but iscsi1: StandAlone (split brain or disconnected by hand); connect or "
     "recover it first" % P),
    ("master: StandAlone UpToDate is not promoted",
     obs(st("Secondary", "Unknown", "StandAlone", "UpToDate", "DUnknown")), (),
     "refusing: %s, but iscsi1: StandAlone (split brain or disconnected by hand); connect or "
     "recover it first" % P),
    ("master: Primary StandAlone keeps serving",
     obs(st("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown"), target=SERVING,
         vip=LOCAL), (),
     "no action: primary as expected (%s), target serving, floating IP local" % P),
    ("master: Consistent, peer Outdated", obs(CONSISTENT), (),
     "refusing: %s, but iscsi1: no UpToDate data here (disk Consistent, peer disk "
     "Outdated)" % P),
    ("master: SyncTarget with UpToDate peer", obs(SYNC_TARGET),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: diskless with UpToDate peer", obs(DISKLESS_GOOD_PEER),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: DRBD 9 Established", obs(DRBD9_SEC),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: primary alone keeps serving", obs(PRI_ALONE, target=SERVING, vip=LOCAL), (),
     "no action: primary as expected (%s), target serving, floating IP local" % P),
    ("master: target unobservable", obs(PRI, target=None, vip=LOCAL), (StartTarget(),),
     "starting target: " + P),
    ("master: vip unobservable", obs(PRI, target=SERVING, vip=None), UP,
     "taking floating IP: " + P),
    ("master: witness refuses, peer unreachable",
     obs(SEC_ALONE, witness=WitnessGrant(False, "peer seen alive")), (),
     "refusing: %s, but iscsi1: peer unreachable and the witness refused (peer seen alive)"
     % P),
    ("master: witness grants, peer unreachable", obs(SEC_ALONE, witness=WitnessGrant(True)),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: witness refuses but link up", obs(SEC, witness=WitnessGrant(False)),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP, "promoting: " + P),
    ("master: two resources promoted in order",
     obs({"r1": st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate", "r2")},
         resources=("r2", "r1")),
     (PromoteDrbd("r2"), PromoteDrbd("r1"), StartTarget()) + UP, "promoting: " + P),
    ("master: one resource done, one to do",
     obs({"r1": st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate", "r2")}),
     (PromoteDrbd("r2"), StartTarget()) + UP, "promoting: " + P),
    ("master: one resource blocked blocks all",
     obs({"r1": st("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Secondary", "Unknown", "WFConnection", "Outdated", "DUnknown", "r2")}),
     (), "refusing: %s, but r2: no UpToDate data here (disk Outdated, peer disk DUnknown)" % P),
    ("master: one Primary, other blocked: stop serving",
     obs({"r1": st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Secondary", "Primary", "Connected", "UpToDate", "UpToDate", "r2")},
         target=SERVING, vip=LOCAL),
     (RemoveFloatingIp(), StopTarget()), "waiting: %s, but r2: peer is still Primary" % P),
    ("master: mixed blockers say refusing",
     obs({"r1": st("Secondary", "Primary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Secondary", "Unknown", "WFConnection", "Outdated", "DUnknown", "r2")}),
     (), "refusing: %s, but r1: peer is still Primary; r2: no UpToDate data here (disk "
     "Outdated, peer disk DUnknown)" % P),
    # Secondary side.
    ("slave: settled", obs(SEC, pool=SLAVE), (), "no action: secondary as expected (%s)" % S),
    ("slave: demote all the way", obs(PRI, pool=SLAVE, target=SERVING, vip=LOCAL),
     (RemoveFloatingIp(), StopTarget(), DemoteDrbd("iscsi1")), "demoting: " + S),
    ("slave: stray target", obs(SEC, pool=SLAVE, target=RUNNING), (StopTarget(),),
     "stopping service: " + S),
    ("slave: stray floating IP", obs(SEC, pool=SLAVE, vip=LOCAL), (RemoveFloatingIp(),),
     "stopping service: " + S),
    ("slave: Primary, nothing else", obs(PRI, pool=SLAVE), (DemoteDrbd("iscsi1"),),
     "demoting: " + S),
    ("slave: target unobservable", obs(SEC, pool=SLAVE, target=None), (StopTarget(),),
     "stopping service: " + S),
    ("slave: floating IP unobservable", obs(SEC, pool=SLAVE, vip=None), (RemoveFloatingIp(),),
     "stopping service: " + S),
    ("slave: demote with the floating IP unobservable",
     obs(PRI, pool=SLAVE, target=SERVING, vip=None),
     (RemoveFloatingIp(), StopTarget(), DemoteDrbd("iscsi1")), "demoting: " + S),
    ("master: peer Primary, our target and IP unobservable",
     obs(SEC_PEER_PRI, target=None, vip=None), (RemoveFloatingIp(), StopTarget()),
     "waiting: %s, but iscsi1: peer is still Primary" % P),
    ("slave: Primary while disconnected", obs(PRI_ALONE, pool=SLAVE, target=SERVING, vip=LOCAL),
     (RemoveFloatingIp(), StopTarget(), DemoteDrbd("iscsi1")), "demoting: " + S),
    ("slave: two resources demoted in order",
     obs({"r1": st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "r1"),
          "r2": st("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "r2")},
         pool=SLAVE, resources=("r1", "r2")),
     (DemoteDrbd("r1"), DemoteDrbd("r2")), "demoting: " + S),
    # Manual mode.
    ("manual primary on a slave", obs(SEC, pool=SLAVE, manual=model.MANUAL_PRIMARY),
     (PromoteDrbd("iscsi1"), StartTarget()) + UP,
     "promoting: manual mode, admin chose primary"),
    ("manual secondary on the master",
     obs(PRI, target=SERVING, vip=LOCAL, manual=model.MANUAL_SECONDARY),
     (RemoveFloatingIp(), StopTarget(), DemoteDrbd("iscsi1")),
     "demoting: manual mode, admin chose secondary"),
    ("manual primary, peer still Primary", obs(SEC_PEER_PRI, pool=SLAVE,
                                               manual=model.MANUAL_PRIMARY), (),
     "waiting: manual mode, admin chose primary, but iscsi1: peer is still Primary"),
    ("manual hold keeps a primary", obs(PRI, target=SERVING, vip=LOCAL, pool=SLAVE,
                                        manual=model.MANUAL_HOLD), (),
     "holding: manual mode is on and no role was chosen"),
    ("manual hold keeps a secondary", obs(SEC, pool=SLAVE, manual=model.MANUAL_HOLD), (),
     "holding: manual mode is on and no role was chosen"),
    ("manual hold, target on a Secondary", obs(SEC, target=SERVING, vip=LOCAL,
                                               manual=model.MANUAL_HOLD),
     (RemoveFloatingIp(), StopTarget()),
     "stopping service: manual mode is on and no role was chosen, and the target must not "
     "serve from a Secondary"),
    # Pool role unknown: hold.
    ("pool broken", obs(SEC, pool=model.PoolRole(model.BROKEN)), (),
     "holding: pool.conf says broken (xapi is changing the master)"),
    ("pool broken keeps a primary", obs(PRI, target=SERVING, vip=LOCAL,
                                        pool=model.PoolRole(model.BROKEN)), (),
     "holding: pool.conf says broken (xapi is changing the master)"),
    ("pool.conf missing", obs(PRI, pool=model.PoolRole(model.MISSING,
                                                      detail="/x/pool.conf does not exist")),
     (), "holding: cannot tell the pool role (/x/pool.conf does not exist)"),
    ("pool.conf garbage", obs(SEC, pool=model.PoolRole(model.UNKNOWN, detail="bad content")),
     (), "holding: cannot tell the pool role (bad content)"),
    ("pool broken, target on a Secondary",
     obs(SEC, target=RUNNING, pool=model.PoolRole(model.BROKEN)), (StopTarget(),),
     "stopping service: pool.conf says broken (xapi is changing the master), and the target "
     "must not serve from a Secondary"),
    # Unreadable DRBD, split brain: nothing is done on a guess.
    ("DRBD unreadable", obs({}, drbd_error="DRBD is not loaded", resources=("iscsi1",),
                            target=SERVING, vip=LOCAL), (),
     "holding: cannot read DRBD state: DRBD is not loaded"),
    ("resource missing", obs({}, resources=("iscsi1",)), (),
     "holding: DRBD resource iscsi1 not found"),
    ("split brain", obs(INCONSISTENT_ALONE, split_brain=("iscsi1",)), (),
     "holding: split brain on iscsi1: no automatic action until an admin recovers it"),
    ("split brain on a slave stops serving but keeps DRBD as it is",
     obs(PRI_ALONE, pool=SLAVE, split_brain=("iscsi1",), target=SERVING, vip=LOCAL),
     (RemoveFloatingIp(), StopTarget()),
     "stopping service: %s, and split brain on iscsi1: no automatic action until an admin "
     "recovers it" % S),
    ("split brain on a quiet slave", obs(SEC, pool=SLAVE, split_brain=("iscsi1",)), (),
     "holding: split brain on iscsi1: no automatic action until an admin recovers it"),
    ("DRBD unreadable on a slave: nothing on a guess",
     obs({}, pool=SLAVE, drbd_error="garbage in /proc/drbd", resources=("iscsi1",),
         target=SERVING, vip=LOCAL), (),
     "holding: cannot read DRBD state: garbage in /proc/drbd"),
    ("manual-mode file unreadable", model.Observation(
        pool=MASTER, manual=model.MANUAL_HOLD, drbd={"iscsi1": SEC}, target=STOPPED, vip=AWAY,
        resources=("iscsi1",), manual_error="manual mode file /x holds 'junk'"), (),
     "holding: manual mode file /x holds 'junk'"),
]


@pytest.mark.parametrize("name,observation,actions,reason", ROWS, ids=[r[0] for r in ROWS])
def test_decision_table(name, observation, actions, reason):
    decision = decide(observation)
    assert decision.actions == actions
    assert decision.reason == reason


GRAMMAR = re.compile(r"^(no action|holding|waiting|refusing|promoting|demoting|starting target|"
                     r"taking floating IP|stopping service): \S")


@pytest.mark.parametrize("name,observation,actions,reason", ROWS, ids=[r[0] for r in ROWS])
def test_every_reason_follows_the_grammar(name, observation, actions, reason):
    assert GRAMMAR.match(decide(observation).reason)


@pytest.mark.parametrize("name,observation,actions,reason", ROWS, ids=[r[0] for r in ROWS])
def test_healthy_only_when_settled_or_holding_by_choice(name, observation, actions, reason):
    decision = decide(observation)
    expected = reason.startswith("no action") or reason.startswith("holding: manual mode is on")
    assert decision.healthy is expected
    assert (decision.verdict == Verdict.OK) is reason.startswith("no action")


B = BlockerKind
PEER_PRI_ALONE = st("Secondary", "Primary", "WFConnection", "UpToDate", "DUnknown")
VERDICT_ROWS = [
    # id, observation, verdict, blocker kinds, must_serve
    ("master serving", obs(PRI, target=SERVING, vip=LOCAL), Verdict.OK, [], True),
    ("master promoting", obs(SEC), Verdict.ACTING, [], True),
    ("slave settled", obs(SEC, pool=SLAVE), Verdict.OK, [], False),
    ("slave demoting", obs(PRI, pool=SLAVE), Verdict.ACTING, [], False),
    ("master, peer still Primary", obs(SEC_PEER_PRI), Verdict.WAITING, [B.PEER_PRIMARY], True),
    ("master, StandAlone", obs(INCONSISTENT_ALONE), Verdict.BLOCKED, [B.STANDALONE], True),
    ("master, outdated alone", obs(OUTDATED_ALONE), Verdict.BLOCKED, [B.NO_UPTODATE_DATA], True),
    ("master, witness refused", obs(SEC_ALONE, witness=WitnessGrant(False, "peer alive")),
     Verdict.BLOCKED, [B.WITNESS_REFUSED], True),
    ("master, split brain", obs(SEC, split_brain=("iscsi1",)), Verdict.BLOCKED,
     [B.SPLIT_BRAIN], True),
    ("slave, split brain", obs(SEC, pool=SLAVE, split_brain=("iscsi1",)), Verdict.BLOCKED,
     [B.SPLIT_BRAIN], False),
    ("DRBD unreadable", obs({}, drbd_error="boom", resources=("iscsi1",)), Verdict.BLOCKED,
     [B.DRBD_UNREADABLE], True),
    ("resource missing", obs({}, resources=("iscsi1",)), Verdict.BLOCKED,
     [B.RESOURCE_MISSING], True),
    # Situation 4 of issue 10: nobody serves, and the plan says so with a blocker.
    ("master, manual file unknown word", model.Observation(
        pool=MASTER, manual=model.MANUAL_HOLD, drbd={"iscsi1": SEC}, target=STOPPED, vip=AWAY,
        resources=("iscsi1",), manual_error="manual mode file /x holds 'junk'"),
     Verdict.BLOCKED, [B.MANUAL_UNREADABLE], True),
    ("master in manual hold, nobody serves", obs(SEC_ALONE, manual=model.MANUAL_HOLD),
     Verdict.HOLDING, [B.MANUAL_HOLD], True),
    ("master in manual hold, peer serves", obs(SEC_PEER_PRI, manual=model.MANUAL_HOLD),
     Verdict.HOLDING, [], True),
    ("master in manual hold, serving", obs(PRI, target=SERVING, vip=LOCAL,
                                           manual=model.MANUAL_HOLD), Verdict.HOLDING, [], True),
    ("slave in manual hold", obs(SEC, pool=SLAVE, manual=model.MANUAL_HOLD), Verdict.HOLDING,
     [], False),
    ("master pinned secondary, nobody serves", obs(SEC_ALONE, manual=model.MANUAL_SECONDARY),
     Verdict.WAITING, [B.PINNED_SECONDARY], True),
    ("master pinned secondary, demoting", obs(PRI, manual=model.MANUAL_SECONDARY),
     Verdict.WAITING, [B.PINNED_SECONDARY], True),
    ("master pinned secondary, peer serves", obs(SEC_PEER_PRI, manual=model.MANUAL_SECONDARY),
     Verdict.OK, [], True),
    ("manual primary on a slave", obs(SEC, pool=SLAVE, manual=model.MANUAL_PRIMARY),
     Verdict.ACTING, [], True),
    ("pool broken", obs(SEC, pool=model.PoolRole(model.BROKEN)), Verdict.HOLDING,
     [B.POOL_ROLE_UNKNOWN], False),
    ("master, peer Primary and link down", obs(PEER_PRI_ALONE), Verdict.WAITING,
     [B.PEER_PRIMARY], True),
    # Issue 10 (5): floating-IP trouble on the holder: hold what is held, act on nothing.
    ("holder, interface down", obs(PRI, target=SERVING, vip=VipObservation(
        local=True, interface_up=False)), Verdict.WAITING, [B.FLOATING_IP_DOWN], True),
    ("holder, no carrier", obs(PRI, target=SERVING, vip=VipObservation(
        local=True, carrier=False)), Verdict.WAITING, [B.FLOATING_IP_DOWN], True),
    ("holder, another MAC answers", obs(PRI, target=SERVING, vip=VipObservation(
        local=True, conflict=("02:00:00:00:00:0B",))), Verdict.BLOCKED,
     [B.FLOATING_IP_CONFLICT], True),
    ("holder, conflict probe failed: only a problem", obs(PRI, target=SERVING, vip=VipObservation(
        local=True, conflict_error="ARP frame not sent")), Verdict.OK, [], True),
]


@pytest.mark.parametrize("vip", [VipObservation(local=True, interface_up=False),
                                 VipObservation(local=True, carrier=False),
                                 VipObservation(local=True, conflict=("02:00:00:00:00:0B",))])
def test_floating_ip_trouble_on_the_holder_holds_and_acts_on_nothing(vip):
    """The decision-table row of issue 10 (5): no hand-over (the storage follows the pool
    master), no re-announce (no ARP fight), no demote: nothing, with a blocker for the alert."""
    decision = decide(obs(PRI, target=SERVING, vip=vip))
    assert decision.actions == () and decision.desired == model.PRIMARY
    assert decision.unserved and not decision.healthy


@pytest.mark.parametrize("name,observation,verdict,kinds,serve", VERDICT_ROWS,
                         ids=[r[0] for r in VERDICT_ROWS])
def test_verdict_table(name, observation, verdict, kinds, serve):
    decision = decide(observation)
    assert decision.verdict == verdict
    assert [b.kind for b in decision.blockers] == kinds
    assert decision.must_serve is serve
    assert decision.unserved is (serve and verdict != Verdict.OK and not decision.serving and (
        verdict != Verdict.HOLDING or bool(kinds)))


def test_a_host_serving_while_blocked_is_not_unserved():
    """A serving primary whose manual file turns unreadable: blocked (health failed), but it
    serves, so no service-blocked."""
    plan = decide(model.Observation(
        pool=MASTER, manual=model.MANUAL_HOLD, drbd={"iscsi1": PRI}, target=SERVING, vip=LOCAL,
        resources=("iscsi1",), manual_error="manual mode file /x holds 'junk'"))
    assert plan.verdict == Verdict.BLOCKED and plan.serving and not plan.unserved


def test_promote_order_is_drbd_then_target_then_ip():
    kinds = [type(a) for a in decide(obs(SEC)).actions]
    assert kinds == [PromoteDrbd, StartTarget, AddFloatingIp, AnnounceFloatingIp]


def test_demote_order_is_the_promote_order_reversed():
    promote = [type(a) for a in decide(obs(SEC)).actions if not isinstance(a, AnnounceFloatingIp)]
    demote = [type(a) for a in decide(obs(PRI, pool=SLAVE, target=SERVING, vip=LOCAL)).actions]
    pairs = {PromoteDrbd: DemoteDrbd, StartTarget: StopTarget, AddFloatingIp: RemoveFloatingIp}
    assert demote == [pairs[k] for k in reversed(promote)]


def test_a_second_pass_after_promotion_does_nothing():
    assert decide(obs(PRI, target=SERVING, vip=LOCAL)).actions == ()


def test_decision_records_the_desired_role():
    assert decide(obs(SEC)).desired == model.PRIMARY
    assert decide(obs(PRI, pool=SLAVE)).desired == model.SECONDARY
    assert decide(obs(PRI, pool=model.PoolRole(model.BROKEN))).desired == ""
