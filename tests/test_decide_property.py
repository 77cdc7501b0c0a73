"""Exhaustive property test of decide() (issue 10): every combination of pool role x manual mode
x DRBD role, peer role, connection state, disk and peer disk (the words of DRBD 8.4 and 9, as
iscsi_ha.drbd accepts them) x target and floating-IP states, and the safety invariants checked
on every plan:

  * no promote while the peer is Primary, StandAlone, split brain is flagged, DRBD or the
    manual-mode file is unreadable, the witness refused an isolated promote, or without UpToDate
    data (here, or on a peer reachable over an up link);
  * target start and floating IP only with every resource Primary or promoted earlier in the
    same plan; floating IP only after the target serves or is started;
  * demote order the reverse of promote order: floating IP off, then target stopped, then DRBD
    demoted; never promote-side and demote-side steps in one plan;
  * after the plan, no target running or floating IP held while a resource is not Primary;
  * the verdict agrees with the actions and the blockers (ok = nothing to do; acting = steps
    and no blockers; waiting = only wait-blockers and only stop-side steps; blocked = a refusal
    and only stop-side steps; holding = only stop-side steps), and a host that must serve is
    only "ok" when it serves (or, pinned secondary, when its peer does).

The row counts are printed ([rows] ...) and asserted, so a shrunken enumeration fails.
"""
import itertools

import pytest

from iscsi_ha import model
from iscsi_ha.decide import decide
from iscsi_ha.drbd import CONNECTION_WORDS, DISK_STATES, LINK_UP_STATES, ROLES, DrbdState
from iscsi_ha.model import (AddFloatingIp, AnnounceFloatingIp, DemoteDrbd, PromoteDrbd,
                            RemoveFloatingIp, StartTarget, StopTarget, TargetObservation,
                            Verdict, VipObservation, WitnessGrant)

POOLS = [model.PoolRole(model.MASTER), model.PoolRole(model.SLAVE, "192.0.2.11"),
         model.PoolRole(model.BROKEN), model.PoolRole(model.MISSING),
         model.PoolRole(model.UNKNOWN, detail="junk")]
# (manual word, manual_error)
MANUALS = [(model.MANUAL_OFF, ""), (model.MANUAL_HOLD, ""), (model.MANUAL_PRIMARY, ""),
           (model.MANUAL_SECONDARY, ""), (model.MANUAL_HOLD, "manual file holds 'junk'")]
TARGETS = [None, TargetObservation(running=False, serving=False),
           TargetObservation(running=True, serving=False, missing=("LUN 10",)),
           TargetObservation(running=True, serving=True)]
VIPS = [None, VipObservation(local=False), VipObservation(local=True),
        VipObservation(local=True, interface_up=False),
        VipObservation(local=True, carrier=False),
        VipObservation(local=True, conflict=("02:00:00:00:00:0B",)),
        VipObservation(local=True, conflict_error="ARP frame not sent"),
        VipObservation(local=False, interface_exists=False, error="no interface")]
# Target x floating-IP pairs for the full DRBD product: unknown, all down, half up, all up.
SERVICE_PAIRS = [(TARGETS[0], VIPS[0]), (TARGETS[1], VIPS[1]), (TARGETS[2], VIPS[2]),
                 (TARGETS[3], VIPS[2])]
CONNECTIONS = sorted(CONNECTION_WORDS)
DISKS = sorted(DISK_STATES)
ROLE_WORDS = sorted(ROLES)

PROMOTE_SIDE = (PromoteDrbd, StartTarget, AddFloatingIp, AnnounceFloatingIp)
STOP_SIDE = (RemoveFloatingIp, StopTarget, DemoteDrbd)


def observation(pool, manual, states, target, vip, split_brain=(), witness=None,
                drbd_error=""):
    word, error = manual
    return model.Observation(pool=pool, manual=word, drbd=states, drbd_error=drbd_error,
                             target=target, vip=vip, split_brain=split_brain, witness=witness,
                             resources=tuple(sorted(states)) or ("r0",), manual_error=error)


def violations(obs, plan):
    """Every broken invariant of ``plan`` for ``obs`` (an empty list when it is safe)."""
    found = []
    actions = plan.actions
    kinds = [type(a) for a in actions]
    states = obs.drbd
    promoted = set()
    if any(k in PROMOTE_SIDE for k in kinds) and any(k in STOP_SIDE for k in kinds):
        found.append("promote-side and stop-side steps in one plan")
    for index, action in enumerate(actions):
        if isinstance(action, PromoteDrbd):
            state = states[action.resource]
            link_up = state.connection in LINK_UP_STATES
            if obs.drbd_error or obs.manual_error:
                found.append("promote with DRBD or manual mode unreadable")
            if state.peer_role == "Primary":
                found.append("promote while the peer is Primary")
            if state.connection == "StandAlone":
                found.append("promote while StandAlone")
            if action.resource in obs.split_brain:
                found.append("promote with split brain flagged")
            if state.disk != "UpToDate" and not (link_up and state.peer_disk == "UpToDate"):
                found.append("promote without UpToDate data")
            if not link_up and obs.witness is not None and not obs.witness.granted:
                found.append("isolated promote the witness refused")
            promoted.add(action.resource)
        elif isinstance(action, (StartTarget, AddFloatingIp, AnnounceFloatingIp)):
            if not all(s.role == "Primary" or name in promoted for name, s in states.items()) \
                    or not states:
                found.append("%s before every resource is Primary" % action.describe())
            if isinstance(action, AddFloatingIp) and StartTarget not in kinds[:index] and not (
                    obs.target is not None and obs.target.serving):
                found.append("floating IP before the target serves")
        elif isinstance(action, DemoteDrbd):
            later = kinds[index:]
            if RemoveFloatingIp in later or StopTarget in later:
                found.append("demote before the floating IP and target are down")
        elif isinstance(action, StopTarget) and RemoveFloatingIp in kinds[index:]:
            found.append("target stopped before the floating IP is removed")
    if (obs.drbd_error or obs.manual_error) and any(
            isinstance(a, (PromoteDrbd, DemoteDrbd)) for a in actions):
        found.append("DRBD action on an unreadable state")
    # After the plan: nothing serves from a Secondary.
    if not obs.drbd_error:
        roles = {name: s.role for name, s in states.items()}
        for action in actions:
            if isinstance(action, PromoteDrbd):
                roles[action.resource] = "Primary"
            elif isinstance(action, DemoteDrbd):
                roles[action.resource] = "Secondary"
        target_up = (obs.target is None or obs.target.running) and StopTarget not in kinds
        target_up = target_up or StartTarget in kinds
        vip_up = (obs.vip is None or obs.vip.local) and RemoveFloatingIp not in kinds
        vip_up = vip_up or AddFloatingIp in kinds
        if (target_up or vip_up) and not all(r == "Primary" for r in roles.values()):
            found.append("target or floating IP may stay up on a Secondary")
    found.extend(_verdict_violations(obs, plan, kinds))
    return found


def _verdict_violations(obs, plan, kinds):
    found = []
    verdict, blockers = plan.verdict, plan.blockers
    stop_only = all(k in STOP_SIDE for k in kinds)
    if verdict == Verdict.OK:
        if kinds or blockers:
            found.append("ok with steps or blockers")
        if plan.must_serve and plan.desired == model.PRIMARY and not (
                all(s.role == "Primary" for s in obs.drbd.values()) and obs.target.serving
                and obs.vip.local):
            found.append("ok for a host that must serve and does not")
        if obs.vip is not None and obs.vip.local and (obs.vip.trouble or obs.vip.conflict) \
                and plan.desired == model.PRIMARY:
            found.append("ok while the held floating IP cannot reach clients")
    elif verdict == Verdict.ACTING:
        if not kinds or blockers:
            found.append("acting without steps or with blockers")
    elif verdict == Verdict.WAITING:
        if not blockers or not all(b.waits for b in blockers) or not stop_only:
            found.append("waiting without wait-blockers, or with promote-side steps")
    elif verdict == Verdict.BLOCKED:
        if not any(not b.waits for b in blockers) or not stop_only:
            found.append("blocked without a refusal, or with promote-side steps")
    elif verdict == Verdict.HOLDING:
        if not all(k in (RemoveFloatingIp, StopTarget) for k in kinds):
            found.append("holding with DRBD or promote-side steps")
    if plan.desired == model.SECONDARY and not stop_only:
        found.append("promote-side steps for a secondary")
    if plan.desired == model.PRIMARY and DemoteDrbd in kinds:
        found.append("demote for a primary")
    if plan.unserved and not plan.must_serve:
        found.append("unserved without must_serve")
    return found


def _check(rows):
    count, bad = 0, []
    for obs in rows:
        plan = decide(obs)
        count += 1
        problems = violations(obs, plan)
        if problems and len(bad) < 5:
            bad.append((obs, plan, problems))
    return count, bad


def _state(role, peer, conn, disk, peer_disk, name="r0"):
    return DrbdState(name, "1", role, peer, conn, disk, peer_disk)


@pytest.mark.parametrize("pool", POOLS, ids=[p.role for p in POOLS])
def test_every_single_resource_state_gives_a_safe_plan(pool, capsys):
    """pool role (parametrized) x 5 manual modes x 3 x 3 roles x every connection word x 10 x
    10 disk states x 4 target/floating-IP pairs."""
    def rows():
        for manual, (role, peer, conn, disk, peer_disk), (target, vip) in itertools.product(
                MANUALS, itertools.product(ROLE_WORDS, ROLE_WORDS, CONNECTIONS, DISKS, DISKS),
                SERVICE_PAIRS):
            yield observation(pool, manual, {"r0": _state(role, peer, conn, disk, peer_disk)},
                              target, vip)
    count, bad = _check(rows())
    expected = len(MANUALS) * 3 * 3 * len(CONNECTIONS) * 10 * 10 * len(SERVICE_PAIRS)
    with capsys.disabled():
        print("\n[rows] decide() property, pool %s: %d rows" % (pool.role, count))
    assert count == expected
    assert not bad, bad


# Representative DRBD states for the dimensions crossed with every target and IP state.
REPRESENTATIVE = [
    _state("Primary", "Secondary", "Connected", "UpToDate", "UpToDate"),
    _state("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate"),
    _state("Secondary", "Primary", "Connected", "UpToDate", "UpToDate"),
    _state("Secondary", "Unknown", "WFConnection", "UpToDate", "DUnknown"),
    _state("Secondary", "Unknown", "Connecting", "Outdated", "DUnknown"),
    _state("Secondary", "Unknown", "StandAlone", "UpToDate", "DUnknown"),
    _state("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown"),
    _state("Secondary", "Secondary", "SyncTarget", "Inconsistent", "UpToDate"),
    _state("Secondary", "Secondary", "Established", "Diskless", "UpToDate"),
    _state("Secondary", "Secondary", "Connected", "Consistent", "Outdated"),
]
SPLIT = [(), ("r0",)]
WITNESSES = [None, WitnessGrant(True), WitnessGrant(False, "peer alive")]
ERRORS = ["", "drbdadm timed out"]


def test_every_service_split_brain_witness_and_error_state_gives_a_safe_plan(capsys):
    """pool x manual x 10 representative DRBD states x 4 targets x 8 floating-IP states x split
    brain x witness x DRBD unreadable."""
    def rows():
        for pool, manual, state, target, vip, split, witness, error in itertools.product(
                POOLS, MANUALS, REPRESENTATIVE, TARGETS, VIPS, SPLIT, WITNESSES, ERRORS):
            yield observation(pool, manual, {} if error else {"r0": state}, target, vip,
                              split, witness, error)
    count, bad = _check(rows())
    with capsys.disabled():
        print("\n[rows] decide() property, service/split brain/witness/errors: %d rows" % count)
    assert count == 5 * 5 * 10 * 4 * len(VIPS) * 2 * 3 * 2
    assert not bad, bad


TWO = [_state(r, p, c, d, pd) for r, p, c, d, pd in [("Primary", "Secondary", "Connected", "UpToDate", "UpToDate"),
                              ("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate"),
                              ("Secondary", "Primary", "Connected", "UpToDate", "UpToDate"),
                              ("Secondary", "Unknown", "WFConnection", "Outdated", "DUnknown"),
                              ("Secondary", "Unknown", "WFConnection", "UpToDate", "DUnknown"),
                              ("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown")]]


def test_two_resources_keep_promote_and_demote_order(capsys):
    """Two resources in every pair of representative states: promotes before the target,
    demotes after it, every plan safe."""
    def rows():
        for pool, manual, a, b, (target, vip) in itertools.product(
                POOLS, MANUALS, TWO, TWO, SERVICE_PAIRS):
            yield observation(pool, manual, {"r0": a, "r1": b._replace(resource="r1")},
                              target, vip)
    count, bad = _check(rows())
    with capsys.disabled():
        print("\n[rows] decide() property, two resources: %d rows" % count)
    assert count == 5 * 5 * 6 * 6 * 4
    assert not bad, bad


def test_the_checker_catches_unsafe_plans():
    """The invariants are not vacuous: hand-made unsafe plans are caught."""
    peer_primary = _state("Secondary", "Primary", "Connected", "UpToDate", "UpToDate")
    obs = observation(POOLS[0], MANUALS[0], {"r0": peer_primary}, TARGETS[1], VIPS[1])
    bad = model.Decision((PromoteDrbd("r0"), StartTarget()), "x", model.PRIMARY,
                         verdict=Verdict.ACTING, must_serve=True)
    assert "promote while the peer is Primary" in violations(obs, bad)
    secondary = _state("Secondary", "Secondary", "Connected", "UpToDate", "UpToDate")
    obs = observation(POOLS[0], MANUALS[0], {"r0": secondary}, TARGETS[1], VIPS[1])
    early = model.Decision((StartTarget(), PromoteDrbd("r0")), "x", model.PRIMARY,
                           verdict=Verdict.ACTING, must_serve=True)
    assert "start target before every resource is Primary" in violations(obs, early)
    primary = _state("Primary", "Secondary", "Connected", "UpToDate", "UpToDate")
    obs = observation(POOLS[1], MANUALS[0], {"r0": primary}, TARGETS[3], VIPS[2])
    wrong_order = model.Decision((DemoteDrbd("r0"), StopTarget(), RemoveFloatingIp()), "x",
                                 model.SECONDARY, verdict=Verdict.ACTING)
    assert "demote before the floating IP and target are down" in violations(obs, wrong_order)
    lying = model.Decision((), "x", model.PRIMARY, verdict=Verdict.OK, must_serve=True)
    obs = observation(POOLS[0], MANUALS[0], {"r0": secondary}, TARGETS[1], VIPS[1])
    assert "ok for a host that must serve and does not" in violations(obs, lying)
