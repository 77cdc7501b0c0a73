"""The fencing rules of the policy, as pure functions that :func:`iscsi_ha.decide.decide` calls.

Why a disconnected Secondary may be promoted at all: with ``fencing resource-and-stonith`` and
our fence-peer handler on BOTH hosts, a Primary that loses its peer freezes its I/O and
acknowledges no write until the handler has outdated the peer (DRBD's ``susp_fen``). So while
this host's disk is still UpToDate, the peer cannot hold an acknowledged write that this host
lacks: promoting here loses nothing. That is only true when it was verified on both hosts
(``drbdadm dump`` while connected, remembered with its time), or when a witness grants it. Any
other case is refused, unless the admin opted into HA-Lizard's old behaviour
(``ALLOW_UNFENCED_FAILOVER=1``), which may lose acknowledged writes.

Self-fencing: a Primary whose I/O stays frozen longer than ``SELF_FENCE_AFTER`` could not fence
its peer (unreachable, or the handler failed). It drops the floating IP, stops the target and
demotes, so that when the network heals clients cannot be served by two sides; then it holds
(no automatic promotion) until the replication link is back or an admin decides.
"""
from dataclasses import dataclass, field
from typing import Mapping, Tuple

FORCE_HINT = "to accept the risk of losing acknowledged writes: iscsi-cfg become-primary --force"
DUMP_FAILED = "drbdadm dump failed"   # how a side's problems say its configuration was unread


def keeps_earlier_proof(earlier, mine, theirs, peer_error):
    """Whether a fencing re-check keeps the earlier proof of a resource instead of replacing it.

    ``earlier``: the remembered proof entry (or None); ``mine``/``theirs``: this host's and the
    peer's ``drbdadm dump`` entries ({"problems": [...]}; ``theirs`` None when the peer did not
    say); ``peer_error``: why the peer could not be asked ("" when it answered). A side whose
    configuration could not be read now (the peer unreachable, or its or our dump failing, as
    on a host going down) proves nothing either way: an earlier ok proof stands and is checked
    again later, so a crash of the peer during a re-check does not take failover away. A
    finding about a configuration always replaces it."""
    unreadable = (theirs is None and bool(peer_error)) or _unread(mine) or _unread(theirs)
    return bool(unreadable and (earlier or {}).get("ok") and not _findings(mine)
                and not _findings(theirs))


def _problems(entry):
    return (entry or {}).get("problems", [])


def _findings(entry):
    return [p for p in _problems(entry) if not p.startswith(DUMP_FAILED)]


def _unread(entry):
    return any(p.startswith(DUMP_FAILED) for p in _problems(entry))


@dataclass(frozen=True)
class FencingObservation:
    """What the agent knows about fencing on this host (built by :mod:`iscsi_ha.fencing`)."""
    proven: Mapping[str, str] = field(default_factory=dict)     # resource -> how it was proven
    unproven: Mapping[str, str] = field(default_factory=dict)   # resource -> why it is not
    allow_unfenced: bool = False          # ALLOW_UNFENCED_FAILOVER=1
    frozen_s: Mapping[str, float] = field(default_factory=dict)  # resource -> seconds frozen
    self_fence_after: float = 30.0        # SELF_FENCE_AFTER
    self_fenced: Tuple[str, ...] = ()     # resources this host self-fenced (until reconnected)
    forced: Tuple[str, ...] = ()          # the admin's confirmed become-primary --force
    records: Mapping[str, Mapping] = field(default_factory=dict)  # last fence-peer run, per res


def unfenced_promotion(name, state, obs):
    """(blocker, risk) for promoting resource ``name`` whose link is down.

    ``blocker`` is '' when it may be promoted; ``risk`` is '' unless the promotion is allowed
    only by ALLOW_UNFENCED_FAILOVER (the sentence names the risk)."""
    fencing = obs.fencing
    self_fenced_here = fencing is not None and name in fencing.self_fenced
    # A grant outweighs the self-fence only while the mediator answers: the self-fence says
    # this host lost its peer and the mediator, so a grant it holds from before is no proof.
    if obs.witness is not None and obs.witness.granted and (
            not self_fenced_here or obs.witness.failover_allowed):
        return "", ""
    if fencing is not None and name in fencing.forced and (
            name not in fencing.proven or name in fencing.self_fenced):
        return "", ("%s promoted by the admin's forced become-primary, without proof that its "
                    "data is current (%s): writes the peer acknowledged may be lost and a split "
                    "brain may follow" % (name, fencing.unproven.get(name) or (
                        "this host self-fenced" if name in fencing.self_fenced else
                        "fencing not proven")))
    if fencing is not None and name in fencing.self_fenced:
        return ("%s: this host self-fenced (it could not outdate its peer); it is not promoted "
                "again until the replication link is back, or: %s" % (name, FORCE_HINT)), ""
    if fencing is not None and name in fencing.proven:
        return "", ""
    why = (fencing.unproven.get(name) if fencing is not None else "") or \
        "fencing was never verified on both hosts"
    if fencing is not None and fencing.allow_unfenced:
        return "", ("%s promoted without proof that its data is current (%s): "
                    "ALLOW_UNFENCED_FAILOVER=1 accepts that writes the peer acknowledged "
                    "may be lost and a split brain may follow" % (name, why))
    return ("%s: automatic failover is off: the peer is unreachable and this host cannot "
            "prove its data is current (%s); %s" % (name, why, FORCE_HINT)), ""


def consistent_is_current(name, state, obs):
    """A disk that came back ``Consistent`` after a restart without its peer holds current data
    when fencing is proven on both hosts: a peer that acknowledged writes after losing this host
    had first outdated it (its meta-data would say Outdated). DRBD still runs the fence-peer
    handler before it promotes such a disk."""
    fencing = obs.fencing
    return (state.disk == "Consistent" and fencing is not None and name in fencing.proven
            and name not in fencing.self_fenced)


def self_fenced(name, obs):
    return obs.fencing is not None and name in obs.fencing.self_fenced


def frozen_resources(obs):
    """[(resource, seconds)] whose I/O DRBD froze for fencing (suspended), longest first."""
    fencing = obs.fencing
    if fencing is None:
        return []
    return sorted(fencing.frozen_s.items(), key=lambda item: -item[1])


def self_fence_due(obs):
    """The resources frozen for longer than SELF_FENCE_AFTER, or frozen while the witness's
    lease runs out or the witness deposed this host ([] when none)."""
    fencing = obs.fencing
    if fencing is None:
        return []
    if witness_step_down(obs):
        return [name for name, _ in frozen_resources(obs)]
    return [name for name, seconds in frozen_resources(obs)
            if seconds >= fencing.self_fence_after]


def witness_step_down(obs):
    """'' or why a Primary whose I/O is frozen must step down now because of the witness.

    With a mediator, the peer may be granted the primary role lease + margin after the
    mediator last heard this host. A frozen Primary acknowledges nothing, but it must also be
    Secondary before the peer is promoted (never two Primaries, and no serving again when the
    network heals): so it steps down when its lease, counted from the sending of the last
    heartbeat the mediator answered (no later than the mediator's own mark), has fewer than
    ``step_down_lead_s`` seconds left, or no heartbeat was answered since the agent started;
    and at once when the mediator deposed it (another node is primary there)."""
    w = obs.witness
    if w is None or not frozen_resources(obs):
        return ""
    if w.deposed:
        return "the mediator deposed this host (%s)" % (w.reason or "another node is primary")
    if w.lease_left_s is None:
        return "no heartbeat answered by the mediator since the agent started, so its lease " \
            "may have run out"
    if w.lease_left_s < w.step_down_lead_s:
        return "its lease at the mediator runs out in %.1f s (no answer since), after which " \
            "the peer may be granted the primary role" % max(0.0, w.lease_left_s)
    return ""


def frozen_reason(obs):
    """'' or the sentence for a Primary whose I/O is frozen but not yet for too long."""
    frozen = frozen_resources(obs)
    if not frozen:
        return ""
    name, seconds = frozen[0]
    return ("I/O on %s frozen by DRBD fencing for %.0f s while the fence-peer handler tries "
            "to outdate the peer (self-fencing after %.0f s)"
            % (name, seconds, obs.fencing.self_fence_after))


def self_fence_reason(obs, names):
    why = witness_step_down(obs)
    if why:
        return ("stopping service: self-fencing, I/O on %s is frozen by DRBD fencing and %s: "
                "this host stops serving (floating IP, target, DRBD Secondary) before the peer "
                "can be promoted; see iscsi-cfg status" % (", ".join(names), why))
    return ("stopping service: self-fencing, I/O on %s stayed frozen for more than %.0f s: the fence-peer handler "
            "could not outdate the peer, so this host stops serving (floating IP, target, DRBD "
            "Secondary) before the network heals; see iscsi-cfg status"
            % (", ".join(names), obs.fencing.self_fence_after))
