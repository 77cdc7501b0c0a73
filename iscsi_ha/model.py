"""The agent's data: what it observed, what it decided, what its actions did.

Everything here is frozen data with no behaviour beyond small derived properties, so that the
policy in :mod:`iscsi_ha.decide` stays a pure function of an :class:`Observation`.
"""
import enum
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

# Pool roles, from /etc/xensource/pool.conf.
MASTER = "master"
SLAVE = "slave"
BROKEN = "broken"      # xapi writes it briefly while a new master commits
MISSING = "missing"    # no pool.conf: xapi not installed or not initialised
UNKNOWN = "unknown"    # pool.conf holds something we do not recognise

# Storage roles.
PRIMARY = "primary"
SECONDARY = "secondary"

# Manual mode, as HA-Lizard's state/manual file spells it.
MANUAL_OFF = "off"
MANUAL_HOLD = "enable"            # manual mode on, no role chosen yet: hold what is
MANUAL_PRIMARY = "become_primary"
MANUAL_SECONDARY = "become_secondary"


@dataclass(frozen=True)
class PoolRole:
    role: str                      # MASTER, SLAVE, BROKEN, MISSING, UNKNOWN
    master_address: str = ""       # for SLAVE
    detail: str = ""               # raw text or error, for status and logs


@dataclass(frozen=True)
class TargetObservation:
    running: bool
    serving: bool                  # running and every expected target/LUN exported
    missing: Tuple[str, ...] = ()  # what is not exported, in words
    connections: int = 0
    error: str = ""


@dataclass(frozen=True)
class VipObservation:
    local: bool
    interface_exists: bool = True
    interface_up: bool = True
    error: str = ""
    carrier: bool = True                  # the interface has a link (no NO-CARRIER)
    conflict: Tuple[str, ...] = ()        # MACs of other hosts answering for the floating IP
    conflict_error: str = ""              # the conflict probe could not run

    @property
    def trouble(self):
        """Why clients cannot reach the floating IP held here, or '' (only when local)."""
        if not self.local:
            return ""
        if not self.interface_up or not self.carrier:
            return "interface %s" % ("down" if not self.interface_up else "without carrier")
        return ""


@dataclass(frozen=True)
class WitnessGrant:
    """A third-site witness's answer (mediator issue); None in an Observation = no witness.

    ``granted``: the mediator made this host the primary at its current generation (a grant
    persisted locally, or this host already is its recorded primary). ``deposed``: the mediator
    names another primary and lists this host as outdated. ``failover_allowed``: reachable,
    able to grant, not rolled back (else automatic failover is off). ``status``: for the
    status document."""
    granted: bool
    reason: str = ""
    deposed: bool = False
    failover_allowed: bool = True
    peer_outdated: bool = False     # this host is the primary and the mediator outdated the peer
    status: Mapping[str, object] = field(default_factory=dict)
    # Seconds left of this host's lease at the mediator, counted from the SENDING of the last
    # heartbeat it answered (the mediator counts from its receipt, later): None when no
    # heartbeat was answered since the agent started. ``step_down_lead_s``: a Primary whose
    # I/O is frozen steps down (self-fences) once fewer seconds than this are left, so it is
    # Secondary before the mediator can grant its peer (lease + margin after the receipt).
    lease_left_s: Optional[float] = None
    step_down_lead_s: float = 0.0


@dataclass(frozen=True)
class Observation:
    pool: PoolRole
    manual: str                               # MANUAL_* constant
    drbd: Mapping[str, object]                # resource -> iscsi_ha.drbd.DrbdState
    drbd_error: str = ""                      # DRBD unreadable: no storage action at all
    target: Optional[TargetObservation] = None
    vip: Optional[VipObservation] = None
    split_brain: Tuple[str, ...] = ()         # resources the split-brain handler flagged
    witness: Optional[WitnessGrant] = None
    resources: Tuple[str, ...] = ()           # configured resource names, in order
    manual_error: str = ""                    # manual-mode file unreadable: hold, unhealthy
    fencing: Optional[object] = None          # iscsi_ha.fencing_policy.FencingObservation


class Verdict(str, enum.Enum):
    """What a decision means, for health, alerts and the CLI (never parse ``reason``)."""
    OK = "ok"                  # as it should be; no action
    ACTING = "acting"          # the plan's actions bring the host to its role
    WAITING = "waiting"        # a blocker that may clear by itself (peer still Primary...)
    HOLDING = "holding"        # no role to reach (manual hold, pool role unknown): hold what is
    BLOCKED = "blocked"        # the role cannot be reached without an admin (a refusal)

    def __str__(self):
        return self.value


class BlockerKind(str, enum.Enum):
    """Why this host cannot reach (or keep) the role it should have."""
    PEER_PRIMARY = "peer-primary"              # the peer is still DRBD Primary
    STANDALONE = "standalone"                  # DRBD StandAlone: split brain or disconnected
    NO_UPTODATE_DATA = "no-uptodate-data"      # neither this disk nor a reachable peer UpToDate
    WITNESS_REFUSED = "witness-refused"        # peer unreachable and the witness said no
    SPLIT_BRAIN = "split-brain"                # flagged by DRBD's split-brain handler
    DRBD_UNREADABLE = "drbd-unreadable"
    RESOURCE_MISSING = "resource-missing"      # a configured resource DRBD does not know
    MANUAL_UNREADABLE = "manual-unreadable"    # the manual-mode file holds no known word
    MANUAL_HOLD = "manual-hold"                # pool master in manual hold, nobody serving
    PINNED_SECONDARY = "pinned-secondary"      # pool master pinned secondary, peer not Primary
    POOL_ROLE_UNKNOWN = "pool-role-unknown"    # pool.conf broken, missing or unrecognised
    FLOATING_IP_DOWN = "floating-ip-down"      # the holder's interface is down / no carrier
    FLOATING_IP_CONFLICT = "floating-ip-conflict"  # another MAC answers for the floating IP
    NOT_SERVING = "not-serving"                # acting for longer than the bound (agent-made)
    FENCING_UNPROVEN = "fencing-unproven"      # peer unreachable, fencing not proven on both
    SELF_FENCED = "self-fenced"                # frozen too long: this host stopped serving
    IO_FROZEN = "io-frozen"                    # DRBD froze I/O while fence-peer runs

    def __str__(self):
        return self.value


# Blockers that may clear without an admin: an alert only after SERVICE_BLOCKED_AFTER seconds.
WAIT_BLOCKERS = frozenset([BlockerKind.PEER_PRIMARY, BlockerKind.MANUAL_HOLD,
                           BlockerKind.IO_FROZEN,
                           BlockerKind.PINNED_SECONDARY, BlockerKind.POOL_ROLE_UNKNOWN,
                           BlockerKind.NOT_SERVING, BlockerKind.FLOATING_IP_DOWN])


@dataclass(frozen=True)
class Blocker:
    kind: BlockerKind
    resource: str = ""             # DRBD resource, or "" for the host
    detail: str = ""               # one phrase, for people

    @property
    def waits(self):
        return self.kind in WAIT_BLOCKERS

    def describe(self):
        return "%s%s%s" % (self.kind.value, " " + self.resource if self.resource else "",
                           ": " + self.detail if self.detail else "")

    def to_dict(self):
        return {"kind": self.kind.value, "resource": self.resource, "detail": self.detail,
                "waits": self.waits}


# Actions. Each is idempotent when applied; ``resource`` is None for host-wide actions.
@dataclass(frozen=True)
class Action:
    def describe(self):
        return self.name

    @property
    def name(self):
        return type(self).__name__


@dataclass(frozen=True)
class PromoteDrbd(Action):
    resource: str

    def describe(self):
        return "promote %s" % self.resource


@dataclass(frozen=True)
class DemoteDrbd(Action):
    resource: str

    def describe(self):
        return "demote %s" % self.resource


@dataclass(frozen=True)
class StartTarget(Action):
    def describe(self):
        return "start target"


@dataclass(frozen=True)
class HealSplitBrain(Action):
    """Resolve a split brain as the witness decided: ``victim`` (this host was deposed: its
    changes since the split are discarded, it resyncs from the peer), ``survivor`` (connect
    again) or ``clear`` (both sides in sync again: drop the split-brain flag)."""
    resource: str
    role: str

    def describe(self):
        if self.role == "clear":
            return "clear split-brain flag of %s" % self.resource
        return "heal split brain of %s as %s" % (self.resource, self.role)


@dataclass(frozen=True)
class StopTarget(Action):
    def describe(self):
        return "stop target"


@dataclass(frozen=True)
class AddFloatingIp(Action):
    def describe(self):
        return "add floating IP"


@dataclass(frozen=True)
class RemoveFloatingIp(Action):
    def describe(self):
        return "remove floating IP"


@dataclass(frozen=True)
class AnnounceFloatingIp(Action):
    def describe(self):
        return "announce floating IP"


@dataclass(frozen=True)
class Decision:
    """The plan of one pass. ``verdict`` and ``blockers`` are what other code reads;
    ``reason`` is for people only."""
    actions: Tuple[Action, ...]
    reason: str                    # "<verb-ing | no action | holding | refusing>: <why>"
    desired: str = ""              # PRIMARY, SECONDARY or "" when holding
    healthy: bool = True           # False when the host is not as it should be
    verdict: Verdict = Verdict.OK
    blockers: Tuple[Blocker, ...] = ()
    must_serve: bool = False       # this host should be serving (master, or manual primary)
    serving: bool = False          # it serves now: all Primary, target serving, IP reachable
    risks: Tuple[str, ...] = ()    # accepted data-loss risks of this plan (ALLOW_UNFENCED_FAILOVER,
                                   # an admin's forced become-primary): alerted

    @property
    def unserved(self):
        """This host should serve and does not (a hold with no blocker is someone's choice)."""
        if not self.must_serve or self.verdict == Verdict.OK or self.serving:
            return False
        return self.verdict != Verdict.HOLDING or bool(self.blockers)

    @property
    def refused(self):
        """A blocker that will not clear by itself."""
        return any(not b.waits for b in self.blockers)


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    duration: float
    detail: str = ""
    skipped: bool = False          # not run because an earlier step failed


@dataclass
class PassRecord:
    """One pass, for the status file and the log sentence."""
    started: float
    observation: Observation
    decision: Decision
    results: Tuple[ActionResult, ...] = field(default_factory=tuple)
    duration: float = 0.0
    service: Optional[Mapping[str, object]] = None   # the agent's service-blocked state
