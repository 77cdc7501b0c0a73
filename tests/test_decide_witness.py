"""decide() with a witness (mediator): grant needed over a cut link, deposed primary demotes,
split brain healed only when the witness says who was deposed."""
from iscsi_ha import model
from iscsi_ha.decide import decide
from iscsi_ha.drbd import DrbdState

MASTER = model.PoolRole(model.MASTER)


def st(role, conn="Connecting", disk="UpToDate", peer_disk="DUnknown", peer_role="Unknown"):
    return DrbdState("r1", "1", role, peer_role, conn, disk, peer_disk)


def obs(state, witness, split=(), pool=MASTER, serving=False):
    return model.Observation(pool=pool, manual=model.MANUAL_OFF, drbd={"r1": state},
                             target=model.TargetObservation(running=serving, serving=serving),
                             vip=model.VipObservation(local=serving), split_brain=split,
                             witness=witness, resources=("r1",))


def names(decision):
    return [a.describe() for a in decision.actions]


def test_cut_link_promotes_only_with_grant():
    refused = decide(obs(st("Secondary"), model.WitnessGrant(False, "retry: lease live")))
    assert not any(isinstance(a, model.PromoteDrbd) for a in refused.actions)
    assert "witness refused (retry: lease live)" in refused.reason
    granted = decide(obs(st("Secondary"), model.WitnessGrant(True, "granted at generation 4")))
    assert names(granted)[0] == "promote r1"


def test_link_up_needs_no_grant():
    d = decide(obs(st("Secondary", "Connected", peer_disk="UpToDate", peer_role="Secondary"),
                   model.WitnessGrant(False, "x")))
    assert names(d)[0] == "promote r1"


def test_deposed_primary_demotes_after_cleanup():
    d = decide(obs(st("Primary"), model.WitnessGrant(False, "b is primary", deposed=True),
                   serving=True))
    assert names(d) == ["remove floating IP", "stop target", "demote r1"]
    assert d.reason.startswith("demoting:") and "deposed" in d.reason


def test_split_brain_victim_when_deposed():
    d = decide(obs(st("Primary", "StandAlone"), model.WitnessGrant(False, "gen 5", deposed=True),
                   split=("r1",), serving=True))
    assert names(d) == ["remove floating IP", "stop target", "heal split brain of r1 as victim"]


def test_split_brain_survivor_when_peer_outdated():
    d = decide(obs(st("Primary", "StandAlone"), model.WitnessGrant(True, "primary",
                                                                   peer_outdated=True),
                   split=("r1",), serving=True))
    assert names(d) == ["heal split brain of r1 as survivor"]


def test_split_brain_held_when_witness_cannot_tell():
    for w in (None, model.WitnessGrant(False, "unreachable", failover_allowed=False),
              model.WitnessGrant(True, "primary", peer_outdated=False)):
        d = decide(obs(st("Primary", "StandAlone"), w, split=("r1",)))
        assert not d.actions and "split brain" in d.reason


def test_split_brain_flag_cleared_once_in_sync_and_waits_while_resyncing():
    w = model.WitnessGrant(False, "gen 5", deposed=True)
    d = decide(obs(st("Secondary", "SyncTarget", disk="Inconsistent"), w, split=("r1",)))
    assert not d.actions and "split brain" in d.reason         # held while it resyncs
    d = decide(obs(st("Secondary", "SyncTarget", disk="Inconsistent"), w, split=("r1",),
                   serving=True))
    assert names(d) == ["remove floating IP", "stop target"]
    d = decide(obs(st("Secondary", "Connected", peer_disk="UpToDate", peer_role="Primary"), w,
                   split=("r1",)))
    assert names(d) == ["clear split-brain flag of r1"]
    d = decide(obs(st("Secondary", "Connected", peer_disk="UpToDate", peer_role="Primary"), w,
                   split=("r1",), serving=True))
    assert names(d) == ["remove floating IP", "stop target", "clear split-brain flag of r1"]


def frozen_obs(witness, seconds=2.0):
    from iscsi_ha.fencing_policy import FencingObservation
    state = DrbdState("r1", "1", "Primary", "Unknown", "WFConnection", "UpToDate", "DUnknown",
                      suspended=True)
    return model.Observation(pool=MASTER, manual=model.MANUAL_OFF, drbd={"r1": state},
                             target=None, vip=model.VipObservation(local=True), witness=witness,
                             resources=("r1",), fencing=FencingObservation(
                                 proven={"r1": "dump"}, frozen_s={"r1": seconds},
                                 self_fence_after=30.0))


def test_frozen_primary_steps_down_before_its_mediator_lease_runs_out():
    """With a mediator the peer can be granted lease + margin after the mediator last heard
    this host: a frozen Primary whose lease (from the send of its last answered heartbeat) is
    about to run out self-fences long before SELF_FENCE_AFTER, so two Primaries never exist."""
    live = model.WitnessGrant(True, "primary", lease_left_s=5.0, step_down_lead_s=3.0)
    held = decide(frozen_obs(live))
    assert held.actions == () and held.reason.startswith("holding:")   # the handler may win
    for w in (model.WitnessGrant(False, "unreachable", failover_allowed=False,
                                 lease_left_s=2.5, step_down_lead_s=3.0),
              model.WitnessGrant(False, "no answer yet", failover_allowed=False),
              model.WitnessGrant(False, "b is primary", deposed=True, lease_left_s=9.0,
                                 step_down_lead_s=3.0)):
        d = decide(frozen_obs(w))
        assert names(d) == ["remove floating IP", "stop target", "demote r1"], w
        assert d.reason.startswith("stopping service: self-fencing") and "mediator" in d.reason
    # without a witness only SELF_FENCE_AFTER counts
    assert decide(frozen_obs(None)).actions == ()


def test_lease_left_counts_from_the_send_of_the_last_answered_heartbeat(tmp_path):
    from iscsi_ha.witness import MediatorError, WitnessMonitor

    class Clock(object):
        now = 100.0

        def __call__(self):
            return self.now

    clock = Clock()

    class Client(object):
        address, pool, node = "m:1", "p", "a"
        fail = False

        def call(self, op, **fields):
            clock.now += 0.4                       # the request takes 0.4 s
            if self.fail:
                raise MediatorError("unreachable")
            return {"ok": True, "gen": 3, "lease_ms": 6000, "can_grant": True}

        def close(self):
            pass
    client = Client()
    monitor = WitnessMonitor(client, str(tmp_path / "state.json"), clock=clock)
    assert monitor.lease_left() is None
    monitor.beat()                                  # sent at 100.0, answered at 100.4
    assert abs(monitor.lease_left() - 5.6) < 1e-9
    client.fail = True
    clock.now += 3.0
    monitor.beat()                                  # no answer: the old send time stays
    assert abs(monitor.lease_left() - 2.2) < 1e-9


def self_fenced_obs(witness):
    """The isolated old primary after its self-fence (issue 13, mediator-site-isolated): pool
    master, Secondary, the link down, fencing proven, self-fenced."""
    from iscsi_ha.fencing_policy import FencingObservation
    return model.Observation(pool=MASTER, manual=model.MANUAL_OFF, drbd={"r1": st("Secondary")},
                             target=None, vip=model.VipObservation(local=False),
                             witness=witness, resources=("r1",), fencing=FencingObservation(
                                 proven={"r1": "dump"}, self_fenced=("r1",)))


def test_a_self_fenced_host_is_promoted_on_a_grant_only_while_the_mediator_answers():
    """The self-fence says this host lost its peer and the mediator: a grant it still holds
    is then no proof that the peer was not promoted since. Only a mediator that answers (and
    names this host primary) outweighs the self-fence."""
    held = decide(self_fenced_obs(model.WitnessGrant(True, "granted at generation 6",
                                                     failover_allowed=False)))
    assert not any(isinstance(a, model.PromoteDrbd) for a in held.actions)
    assert "self-fenced" in held.reason
    live = decide(self_fenced_obs(model.WitnessGrant(True, "this node is the primary at "
                                                     "generation 6")))
    assert names(live)[0] == "promote r1"


class _Clock(object):
    now = 100.0

    def __call__(self):
        return self.now


def _witness_with_grant(tmp_path, clock, grant_age, gen=6):
    """An AgentWitness of node b holding a grant at ``gen`` persisted ``grant_age`` s ago; its
    mediator answers (lease 10 s, b primary at ``gen``) until ``client.fail`` is set."""
    import json
    import time
    from iscsi_ha.witness import AgentWitness, MediatorError

    class Client(object):
        address, pool, node = "m:1", "p", "b"
        fail = False

        def call(self, op, **fields):
            if self.fail:
                raise MediatorError("unreachable")
            return {"ok": True, "gen": gen, "primary": "b", "lease_ms": 10000,
                    "can_grant": True}

        def close(self):
            pass
    grant_file = tmp_path / "grant.json"
    grant_file.write_text(json.dumps({"pool": "p", "node": "b", "gen": gen,
                                      "time": time.time() - grant_age}))
    client = Client()
    return AgentWitness(client, str(tmp_path / "state.json"), str(grant_file),
                        clock=clock), client


def test_an_old_grant_is_void_once_the_mediator_is_unreachable(tmp_path):
    """Issue 13: B, granted at generation 6 in an earlier failover, serves; its last answer
    still says "b primary at 6" when it loses peer and mediator (isolated within a heartbeat
    of the mediator's next generation). That cached answer must not make the grant stand:
    the self-fenced B was promoted again on it (handler exit 7) while A was granted."""
    clock = _Clock()
    w, client = _witness_with_grant(tmp_path, clock, grant_age=300.0)
    w.beat()
    assert w.grant() is not None and w.observation().granted          # the mediator says so
    client.fail = True
    clock.now += 0.5
    w.beat()
    assert not w.state().reachable and w.state().answer["primary"] == "b"   # cached answer
    assert w.grant() is None
    assert w.observation().granted is False


def test_a_fresh_grant_stands_while_unreachable_only_while_the_lease_is_live(tmp_path):
    """Granted, then unreachable: the promotion asked for may go on while this node's lease
    is live by more than the step-down lead; not after, and not after a restart (no lease
    known)."""
    clock = _Clock()
    w, client = _witness_with_grant(tmp_path, clock, grant_age=1.0)
    w.beat()
    client.fail = True
    clock.now += 1.0
    w.beat()
    assert not w.state().reachable
    assert w.grant() is not None and w.observation().granted
    clock.now += 10.0 - 1.0 - w.step_down_lead() + 0.1                 # lead not kept any more
    assert w.grant() is None
    restarted, client = _witness_with_grant(tmp_path, _Clock(), grant_age=1.0)
    client.fail = True
    restarted.beat()                                # max_gen 6 persisted, no lease known
    assert restarted.state().max_gen == 6 and restarted.grant() is None
