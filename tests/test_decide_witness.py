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
    assert not d.actions and d.reason.startswith("waiting:")
    d = decide(obs(st("Secondary", "Connected", peer_disk="UpToDate", peer_role="Primary"), w,
                   split=("r1",)))
    assert names(d) == ["clear split-brain flag of r1"]
