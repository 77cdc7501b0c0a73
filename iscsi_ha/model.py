"""The agent's data: what it observed, what it decided, what its actions did.

Everything here is frozen data with no behaviour beyond small derived properties, so that the
policy in :mod:`iscsi_ha.decide` stays a pure function of an :class:`Observation`.
"""
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
    actions: Tuple[Action, ...]
    reason: str                    # "<verb-ing | no action | holding | refusing>: <why>"
    desired: str = ""              # PRIMARY, SECONDARY or "" when holding
    healthy: bool = True           # False when the host is not as it should be


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
