"""The policy: one :class:`Observation` in, one :class:`Decision` out. No I/O, no clock, no log.

Promote order: DRBD Primary -> target serving -> floating IP (after duplicate-address detection,
done by the action) -> gratuitous ARP. Demote order is the reverse. A reason is one sentence in
the grammar ``<verb-ing | no action | holding | waiting | refusing>: <why>``.
"""
import dataclasses

from iscsi_ha import fencing_policy, model
from iscsi_ha.drbd import LINK_UP_STATES
from iscsi_ha.model import (AddFloatingIp, AnnounceFloatingIp, Blocker, BlockerKind, Decision,
                            DemoteDrbd, HealSplitBrain, PromoteDrbd, RemoveFloatingIp,
                            StartTarget, StopTarget, Verdict)

PRIMARY_WORD = "Primary"
UP_TO_DATE = "UpToDate"


def decide(obs):
    """Return the :class:`Decision` (the plan, with its verdict and blockers) for one
    observation."""
    plan = _decide(obs)
    serving = (not obs.drbd_error and all(r in obs.drbd for r in obs.resources)
               and _serving_here(obs) and not obs.vip.trouble and not obs.vip.conflict)
    return _with_must_serve(plan, must_serve(obs), serving)


def _decide(obs):
    healing = _witness_heals(obs)
    if healing is not None:
        return healing
    blockers = _unreadable(obs)
    if blockers:
        return _hold_unreadable(obs, blockers)
    desired, why = desired_role(obs)
    fenced = _fencing_freeze(obs, desired)
    if fenced is not None:
        return fenced
    if desired is None:
        return _hold(obs, why)
    if desired == model.PRIMARY:
        return _plan_primary(obs, why)
    return _plan_secondary(obs, why)


def _fencing_freeze(obs, desired):
    """A Primary whose I/O DRBD froze for fencing: self-fence once it lasted too long
    (:mod:`iscsi_ha.fencing_policy`), else wait: the target is frozen, not broken."""
    due = fencing_policy.self_fence_due(obs)
    if due:
        actions = list(_cleanup(obs))
        actions.extend(DemoteDrbd(name) for name, state in _states(obs)
                       if state.role == PRIMARY_WORD)
        reason = fencing_policy.self_fence_reason(obs, due)
        return Decision(tuple(actions), reason, desired or "", healthy=False,
                        verdict=Verdict.BLOCKED, blockers=tuple(
                            Blocker(BlockerKind.SELF_FENCED, name, reason) for name in due))
    frozen = fencing_policy.frozen_reason(obs)
    if frozen and desired != model.SECONDARY:
        return Decision((), "holding: " + frozen, desired or "", healthy=False,
                        verdict=Verdict.WAITING, blockers=tuple(
                            Blocker(BlockerKind.IO_FROZEN, name, frozen)
                            for name, _ in fencing_policy.frozen_resources(obs)))
    return None


def _with_must_serve(plan, value, serving=False):
    return dataclasses.replace(plan, must_serve=value, serving=serving)


def must_serve(obs):
    """Should this host be serving: it is pool master (whatever manual mode says, unless it
    pins the host secondary while the peer serves: see the pinned-secondary blocker), or manual
    mode chose primary."""
    if obs.manual == model.MANUAL_PRIMARY and not obs.manual_error:
        return True
    return obs.pool.role == model.MASTER


def desired_role(obs):
    """(PRIMARY | SECONDARY | None, why). Manual mode wins over the pool role."""
    manual = obs.manual
    if manual == model.MANUAL_PRIMARY:
        return model.PRIMARY, "manual mode, admin chose primary"
    if manual == model.MANUAL_SECONDARY:
        return model.SECONDARY, "manual mode, admin chose secondary"
    if manual == model.MANUAL_HOLD:
        return None, "manual mode is on and no role was chosen"
    pool = obs.pool
    if pool.role == model.MASTER:
        return model.PRIMARY, "this host is pool master"
    if pool.role == model.SLAVE:
        return model.SECONDARY, "this host is a pool slave of %s" % (pool.master_address or "?")
    if pool.role == model.BROKEN:
        return None, "pool.conf says broken (xapi is changing the master)"
    return None, "cannot tell the pool role (%s)" % (pool.detail or pool.role)


def _witness_heals(obs):
    """A split brain the witness can settle: the mediator deposed this host (it acknowledged no
    write after the grant moved: DRBD froze its I/O until fence-peer answered), so this side
    is discarded and resyncs from the peer; or it made this host primary and outdated the
    peer, so this side only connects again. Once a flagged resource is connected and
    UpToDate on both sides its flag is cleared. None when the witness cannot tell."""
    w = obs.witness
    if not obs.split_brain or w is None or obs.manual_error or obs.drbd_error or \
            obs.manual != model.MANUAL_OFF:
        return None
    actions, words = [], []
    for name in obs.split_brain:
        state = obs.drbd.get(name)
        if state is None:
            return None
        if state.connection == "Connected" and state.disk == UP_TO_DATE and \
                state.peer_disk == UP_TO_DATE:
            actions.append(HealSplitBrain(name, "clear"))
            words.append("%s is in sync again" % name)
        elif state.connection in LINK_UP_STATES:
            continue                    # resyncing: wait for it
        elif w.deposed:
            actions.append(HealSplitBrain(name, "victim"))
            words.append("%s: the witness deposed this host (%s), its changes since the split "
                         "are discarded" % (name, w.reason))
        elif w.granted and w.peer_outdated and state.connection == "StandAlone":
            actions.append(HealSplitBrain(name, "survivor"))
            words.append("%s: the witness made this host primary and outdated the peer" % name)
        else:
            return None
    if not actions:
        return None                     # resync running: the split-brain hold says so
    if any(a.role == "victim" for a in actions):
        actions = list(_cleanup(obs)) + actions     # stop serving before the demote
    else:
        actions = list(_serving_risk(obs)) + actions   # never serve from a Secondary
    return Decision(tuple(actions), "healing split brain: " + "; ".join(words),
                    healthy=False, verdict=Verdict.ACTING)


def _hold_unreadable(obs, blockers):
    """No DRBD action on a guess. A host that must be secondary anyway may still stop serving
    (floating IP off, target stopped: always safe there), unless DRBD itself is unreadable."""
    problem = "; ".join(b.detail for b in blockers)
    desired, why = desired_role(obs)
    if desired == model.SECONDARY and not obs.drbd_error and not obs.manual_error:
        cleanup = _cleanup(obs)
        if cleanup:
            return Decision(cleanup, "stopping service: %s, and %s" % (why, problem),
                            model.SECONDARY, healthy=False, verdict=Verdict.BLOCKED,
                            blockers=blockers)
    readable = not obs.drbd_error and all(r in obs.drbd for r in obs.resources)
    risk = _serving_risk(obs) if readable else ()
    if risk:
        # Whatever the role, a target or floating IP over a Secondary serves nothing safely.
        return Decision(risk, "stopping service: %s, and the target must not serve from a "
                        "Secondary" % problem, healthy=False, verdict=Verdict.BLOCKED,
                        blockers=blockers)
    return Decision((), "holding: " + problem, healthy=False, verdict=Verdict.BLOCKED,
                    blockers=blockers)


def _cleanup(obs):
    actions = []
    if obs.vip is None or obs.vip.local:
        actions.append(RemoveFloatingIp())
    if obs.target is None or obs.target.running:
        actions.append(StopTarget())
    return tuple(actions)


def _unreadable(obs):
    """Blockers that forbid any storage action at all (a tuple, empty when there are none)."""
    if obs.manual_error:
        return (Blocker(BlockerKind.MANUAL_UNREADABLE, "", obs.manual_error),)
    if obs.drbd_error:
        return (Blocker(BlockerKind.DRBD_UNREADABLE, "",
                        "cannot read DRBD state: %s" % obs.drbd_error),)
    missing = [r for r in obs.resources if r not in obs.drbd]
    if missing:
        return tuple(Blocker(BlockerKind.RESOURCE_MISSING, r, "DRBD resource %s not found" % r)
                     for r in missing)
    if obs.split_brain:
        return tuple(Blocker(BlockerKind.SPLIT_BRAIN, r, "split brain on %s: no automatic "
                             "action until an admin recovers it" % r) for r in obs.split_brain)
    return ()


def _states(obs):
    return [(name, obs.drbd[name]) for name in obs.resources]


def _all_primary(obs):
    return all(state.role == PRIMARY_WORD for _, state in _states(obs))


def _peer_serves(obs):
    """Every resource's peer is Primary (as this host's DRBD sees it): someone else serves."""
    states = _states(obs)
    return bool(states) and all(state.peer_role == PRIMARY_WORD for _, state in states)


def _serving_here(obs):
    return (_all_primary(obs) and obs.target is not None and obs.target.serving
            and obs.vip is not None and obs.vip.local)


def _serving_risk(obs):
    """Target or floating IP up while some resource is not Primary: clients would reach a
    Secondary. Returns the demote-side actions that remove the risk."""
    if _all_primary(obs):
        return ()
    return _cleanup(obs)


def _hold(obs, why):
    blockers = ()
    if obs.manual == model.MANUAL_HOLD:
        if (obs.pool.role == model.MASTER and not _serving_here(obs)
                and not _peer_serves(obs)):
            blockers = (Blocker(BlockerKind.MANUAL_HOLD, "", "manual mode holds the pool "
                                "master and no host serves the storage"),)
    else:
        blockers = (Blocker(BlockerKind.POOL_ROLE_UNKNOWN, "", why),)
    risk = _serving_risk(obs)
    if risk:
        return Decision(risk, "stopping service: %s, and the target must not serve from a "
                        "Secondary" % why, healthy=False, verdict=Verdict.HOLDING,
                        blockers=blockers)
    return Decision((), "holding: " + why, healthy=obs.manual == model.MANUAL_HOLD and
                    not blockers, verdict=Verdict.HOLDING, blockers=blockers)


def _promote_blocker(name, state, obs):
    """The :class:`Blocker` that forbids promoting resource ``name`` now, or None."""
    if state.peer_role == PRIMARY_WORD:
        return Blocker(BlockerKind.PEER_PRIMARY, name, "%s: peer is still Primary" % name)
    if state.connection == "StandAlone":
        # Not looking for its peer: a split brain (DRBD dropped the connection) or an admin's
        # disconnect. Promoting could fork the data: an admin connects or recovers it first.
        return Blocker(BlockerKind.STANDALONE, name, "%s: StandAlone (split brain or "
                       "disconnected by hand); connect or recover it first" % name)
    link_up = state.connection in LINK_UP_STATES
    if state.disk != UP_TO_DATE and not (link_up and state.peer_disk == UP_TO_DATE) and \
            not (not link_up and fencing_policy.consistent_is_current(name, state, obs)):
        return Blocker(BlockerKind.NO_UPTODATE_DATA, name, "%s: no UpToDate data here (disk "
                       "%s, peer disk %s)" % (name, state.disk, state.peer_disk))
    if not link_up and obs.witness is not None and not obs.witness.granted:
        return Blocker(BlockerKind.WITNESS_REFUSED, name, "%s: peer unreachable and the "
                       "witness refused (%s)" % (name, obs.witness.reason or "no grant"))
    if not link_up:
        refusal = fencing_policy.unfenced_promotion(name, state, obs)[0]
        if refusal:
            kind = (BlockerKind.SELF_FENCED if fencing_policy.self_fenced(name, obs)
                    else BlockerKind.FENCING_UNPROVEN)
            return Blocker(kind, name, refusal)
    return None


def _plan_primary(obs, why):
    if obs.witness is not None and obs.witness.deposed and any(
            state.role == PRIMARY_WORD for _, state in _states(obs)):
        # The mediator granted the peer after this host lost it: this host's data is stale
        # and its fence-peer calls are refused; serving on would fork the data.
        actions = list(_cleanup(obs))
        actions.extend(DemoteDrbd(name) for name, state in _states(obs)
                       if state.role == PRIMARY_WORD)
        return Decision(tuple(actions), "demoting: %s, but the witness deposed this host (%s)"
                        % (why, obs.witness.reason), model.SECONDARY, healthy=False,
                        verdict=Verdict.ACTING)
    to_promote, blockers = [], []
    for name, state in _states(obs):
        if state.role == PRIMARY_WORD:
            continue
        blocker = _promote_blocker(name, state, obs)
        if blocker is not None:
            blockers.append(blocker)
        else:
            to_promote.append(PromoteDrbd(name))
    if blockers:
        waiting = all(b.waits for b in blockers)
        verb = "waiting" if waiting else "refusing"
        return Decision(_serving_risk(obs), "%s: %s, but %s" % (
            verb, why, "; ".join(b.detail for b in blockers)), model.PRIMARY, healthy=False,
            verdict=Verdict.WAITING if waiting else Verdict.BLOCKED, blockers=tuple(blockers))
    actions = list(to_promote)
    risks = [fencing_policy.unfenced_promotion(a.resource, obs.drbd[a.resource], obs)[1]
             for a in to_promote if obs.drbd[a.resource].connection not in LINK_UP_STATES]
    risks = tuple(r for r in risks if r)
    if risks:
        why = "%s; WARNING: %s" % (why, "; ".join(risks))
    if obs.target is None or not obs.target.serving:
        actions.append(StartTarget())
    if obs.vip is None or not obs.vip.local:
        actions.extend([AddFloatingIp(), AnnounceFloatingIp()])
    if not actions:
        return _vip_health(obs, why) or Decision(
            (), "no action: primary as expected (%s), target serving, floating IP local" % why,
            model.PRIMARY, verdict=Verdict.OK)
    first = actions[0]
    verb = ("promoting" if isinstance(first, PromoteDrbd) else
            "starting target" if isinstance(first, StartTarget) else "taking floating IP")
    return Decision(tuple(actions), "%s: %s" % (verb, why), model.PRIMARY, healthy=False,
                    verdict=Verdict.ACTING, risks=risks)


def _vip_health(obs, why):
    """The holder's floating IP cannot reach clients: its interface is down or without carrier
    (a wait: a cable or switch may come back; alerted after SERVICE_BLOCKED_AFTER), or another
    MAC answers for it (a refusal: alerted at once). The agent keeps what it holds and acts on
    nothing: the storage follows the pool master, so handing it to the peer would leave the
    master without it, and a gratuitous-ARP fight with an unknown machine can only make clients
    flip between the two. An admin fixes the link or removes the impostor."""
    vip = obs.vip
    if vip.conflict:
        blocker = Blocker(BlockerKind.FLOATING_IP_CONFLICT, "", "another host (%s) answers for "
                          "the floating IP" % ", ".join(vip.conflict))
        return Decision((), "refusing: %s, but %s" % (why, blocker.detail), model.PRIMARY,
                        healthy=False, verdict=Verdict.BLOCKED, blockers=(blocker,))
    if vip.trouble:
        blocker = Blocker(BlockerKind.FLOATING_IP_DOWN, "", "the floating IP's %s"
                          % vip.trouble)
        return Decision((), "waiting: %s, but %s" % (why, blocker.detail), model.PRIMARY,
                        healthy=False, verdict=Verdict.WAITING, blockers=(blocker,))
    return None


def _plan_secondary(obs, why):
    actions = list(_cleanup(obs))      # an unreadable IP or target counts as maybe up
    actions.extend(DemoteDrbd(name) for name, state in _states(obs)
                   if state.role == PRIMARY_WORD)
    if obs.pool.role == model.MASTER and not _peer_serves(obs):
        # The admin pinned the pool master secondary and no peer serves: nobody does.
        blocker = Blocker(BlockerKind.PINNED_SECONDARY, "", "manual mode pins the pool master "
                          "secondary and the peer is not Primary")
        verb = ("demoting" if any(isinstance(a, DemoteDrbd) for a in actions) else
                "stopping service" if actions else "waiting")
        reason = "%s: %s" % (verb, why) if actions else "%s: %s, but the peer does not " \
            "serve" % (verb, why)
        return Decision(tuple(actions), reason, model.SECONDARY, healthy=False,
            verdict=Verdict.WAITING, blockers=(blocker,))
    if not actions:
        return Decision((), "no action: secondary as expected (%s)" % why, model.SECONDARY,
                        verdict=Verdict.OK)
    only_cleanup = not any(isinstance(a, DemoteDrbd) for a in actions)
    verb = "stopping service" if only_cleanup else "demoting"
    return Decision(tuple(actions), "%s: %s" % (verb, why), model.SECONDARY, healthy=False,
                    verdict=Verdict.ACTING)
