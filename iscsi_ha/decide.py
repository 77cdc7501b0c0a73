"""The policy: one :class:`Observation` in, one :class:`Decision` out. No I/O, no clock, no log.

Promote order: DRBD Primary -> target serving -> floating IP (after duplicate-address detection,
done by the action) -> gratuitous ARP. Demote order is the reverse. A reason is one sentence in
the grammar ``<verb-ing | no action | holding | waiting | refusing>: <why>``.
"""
from iscsi_ha import model
from iscsi_ha.drbd import LINK_UP_STATES
from iscsi_ha.model import (AddFloatingIp, AnnounceFloatingIp, Decision, DemoteDrbd,
                            HealSplitBrain, PromoteDrbd, RemoveFloatingIp, StartTarget,
                            StopTarget)

PRIMARY_WORD = "Primary"
UP_TO_DATE = "UpToDate"


def decide(obs):
    """Return the :class:`Decision` for one observation."""
    healing = _witness_heals(obs)
    if healing is not None:
        return healing
    problem = _unreadable(obs)
    if problem:
        return _hold_unreadable(obs, problem)
    desired, why = desired_role(obs)
    if desired is None:
        return _hold(obs, why)
    if desired == model.PRIMARY:
        return _plan_primary(obs, why)
    return _plan_secondary(obs, why)


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
        return Decision((), "waiting: split brain being healed as the witness decided "
                        "(resync running)", healthy=False)
    if any(a.role == "victim" for a in actions):
        actions = list(_cleanup(obs)) + actions     # stop serving before the demote
    return Decision(tuple(actions), "healing split brain: " + "; ".join(words),
                    healthy=False)


def _hold_unreadable(obs, problem):
    """No DRBD action on a guess. A host that must be secondary anyway may still stop serving
    (floating IP off, target stopped: always safe there), unless DRBD itself is unreadable."""
    desired, why = desired_role(obs)
    if desired == model.SECONDARY and not obs.drbd_error and not obs.manual_error:
        cleanup = _cleanup(obs)
        if cleanup:
            return Decision(cleanup, "stopping service: %s, and %s" % (why, problem),
                            model.SECONDARY, healthy=False)
    return Decision((), "holding: " + problem, healthy=False)


def _cleanup(obs):
    actions = []
    if obs.vip is None or obs.vip.local:
        actions.append(RemoveFloatingIp())
    if obs.target is None or obs.target.running:
        actions.append(StopTarget())
    return tuple(actions)


def _unreadable(obs):
    """Why no storage action may be taken at all, or ''."""
    if obs.manual_error:
        return obs.manual_error
    if obs.drbd_error:
        return "cannot read DRBD state: %s" % obs.drbd_error
    missing = [r for r in obs.resources if r not in obs.drbd]
    if missing:
        return "DRBD resource %s not found" % ", ".join(missing)
    if obs.split_brain:
        return "split brain on %s: no automatic action until an admin recovers it" % (
            ", ".join(obs.split_brain))
    return ""


def _states(obs):
    return [(name, obs.drbd[name]) for name in obs.resources]


def _serving_risk(obs):
    """Target or floating IP up while some resource is not Primary: clients would reach a
    Secondary. Returns the demote-side actions that remove the risk."""
    if all(state.role == PRIMARY_WORD for _, state in _states(obs)):
        return ()
    return _cleanup(obs)


def _hold(obs, why):
    risk = _serving_risk(obs)
    if risk:
        return Decision(risk, "stopping service: %s, and the target must not serve from a "
                        "Secondary" % why, healthy=False)
    return Decision((), "holding: " + why, healthy=obs.manual == model.MANUAL_HOLD)


def _promote_blocker(name, state, obs):
    """Why resource ``name`` may not be promoted now, or '' when it may."""
    if state.peer_role == PRIMARY_WORD:
        return "%s: peer is still Primary" % name
    if state.connection == "StandAlone":
        # Not looking for its peer: a split brain (DRBD dropped the connection) or an admin's
        # disconnect. Promoting could fork the data: an admin connects or recovers it first.
        return "%s: StandAlone (split brain or disconnected by hand); connect or recover it " \
            "first" % name
    link_up = state.connection in LINK_UP_STATES
    if state.disk != UP_TO_DATE and not (link_up and state.peer_disk == UP_TO_DATE):
        return "%s: no UpToDate data here (disk %s, peer disk %s)" % (
            name, state.disk, state.peer_disk)
    if not link_up and obs.witness is not None and not obs.witness.granted:
        return "%s: peer unreachable and the witness refused (%s)" % (
            name, obs.witness.reason or "no grant")
    return ""


def _plan_primary(obs, why):
    if obs.witness is not None and obs.witness.deposed and any(
            state.role == PRIMARY_WORD for _, state in _states(obs)):
        # The mediator granted the peer after this host lost it: this host's data is stale
        # and its fence-peer calls are refused; serving on would fork the data.
        actions = list(_cleanup(obs))
        actions.extend(DemoteDrbd(name) for name, state in _states(obs)
                       if state.role == PRIMARY_WORD)
        return Decision(tuple(actions), "demoting: %s, but the witness deposed this host (%s)"
                        % (why, obs.witness.reason), model.SECONDARY, healthy=False)
    to_promote, blockers = [], []
    for name, state in _states(obs):
        if state.role == PRIMARY_WORD:
            continue
        blocker = _promote_blocker(name, state, obs)
        if blocker:
            blockers.append(blocker)
        else:
            to_promote.append(PromoteDrbd(name))
    if blockers:
        verb = "waiting" if all("still Primary" in b for b in blockers) else "refusing"
        return Decision(_serving_risk(obs), "%s: %s, but %s" % (verb, why, "; ".join(blockers)),
                        model.PRIMARY, healthy=False)
    actions = list(to_promote)
    if obs.target is None or not obs.target.serving:
        actions.append(StartTarget())
    if obs.vip is None or not obs.vip.local:
        actions.extend([AddFloatingIp(), AnnounceFloatingIp()])
    if not actions:
        return Decision((), "no action: primary as expected (%s), target serving, floating IP "
                        "local" % why, model.PRIMARY)
    first = actions[0]
    verb = ("promoting" if isinstance(first, PromoteDrbd) else
            "starting target" if isinstance(first, StartTarget) else "taking floating IP")
    return Decision(tuple(actions), "%s: %s" % (verb, why), model.PRIMARY, healthy=False)


def _plan_secondary(obs, why):
    actions = list(_cleanup(obs))      # an unreadable IP or target counts as maybe up
    actions.extend(DemoteDrbd(name) for name, state in _states(obs)
                   if state.role == PRIMARY_WORD)
    if not actions:
        return Decision((), "no action: secondary as expected (%s)" % why, model.SECONDARY)
    only_cleanup = not any(isinstance(a, DemoteDrbd) for a in actions)
    verb = "stopping service" if only_cleanup else "demoting"
    return Decision(tuple(actions), "%s: %s" % (verb, why), model.SECONDARY, healthy=False)
