"""One pass of the agent (observe -> decide -> apply -> publish) and the loop that runs passes.

A pass reads like a sentence and the daemon logs that sentence every pass. The loop wakes on a
pool.conf change, a manual-mode change or a DRBD state change (polled cheaply), and on the
MONITOR_DELAY timer. Passes never overlap; a pass that outlives its budget
(MONITOR_MAX_STARTS x MONITOR_SCANRATE) has its child processes killed (MONITOR_KILLALL=1).
"""
import fcntl
import logging
import os
import time

from iscsi_ha import model, status
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.pool import read_pool_role
from iscsi_ha.decide import decide
from iscsi_ha.model import (ActionResult, AddFloatingIp, AnnounceFloatingIp, DemoteDrbd,
                            HealSplitBrain, PassRecord, PromoteDrbd, RemoveFloatingIp,
                            StartTarget, StopTarget)
from iscsi_ha.wiring import Adapters, observe_drbd, observe_target, observe_vip

log = logging.getLogger("iscsi-ha")


class Agent(object):
    """Observe, decide, act and publish, once per :meth:`run_cycle`."""

    def __init__(self, config, adapters=None, dry_run=False, witness=None):
        self.config = config
        self.witness = witness        # iscsi_ha.witness.AgentWitness or None (no mediator)
        self.adapters = adapters or Adapters.from_config(config)
        self.dry_run = dry_run
        self.passes = 0
        self.started = time.time()
        self.last_actions = []
        self.last_reason = None
        self.alerts = None            # iscsi_ha.alerts.StatusAlerts, set by the daemon

    # -- observe ---------------------------------------------------------------------------
    def observe(self):
        config = self.config
        manual_error = ""
        try:
            manual = manual_adapter.read_manual(config.MANUAL_FILE)
        except manual_adapter.ManualModeError as exc:
            manual, manual_error = model.MANUAL_HOLD, str(exc)
        drbd, drbd_error = observe_drbd(self.adapters.drbd)
        witness = self._observe_witness(drbd) if self.witness is not None else None
        return model.Observation(
            pool=read_pool_role(config.POOL_CONF),
            manual=manual,
            drbd=drbd,
            drbd_error=drbd_error,
            target=observe_target(self.adapters.target),
            vip=observe_vip(self.adapters.vip),
            split_brain=self._split_brain_flags(),
            witness=witness,
            resources=tuple(config.DRBD_RESOURCES),
            manual_error=manual_error,
        )

    def _observe_witness(self, drbd):
        """The mediator's cached answer as a WitnessGrant; hands the heartbeat thread this
        pass's DRBD report (with the data generations, when the adapter can read them)."""
        from iscsi_ha.witness import drbd_report
        try:
            generations = {}
            reader = getattr(self.adapters.drbd, "generations", None)
            if reader is not None:
                for name in drbd:
                    try:
                        gi = reader(name)
                        generations[name] = getattr(gi, "current", None) or gi[0]
                    except Exception as exc:  # unknown generation: never "in sync"
                        log.info("witness: data generation of %s unreadable: %s", name, exc)
            self.witness.set_report(drbd_report(drbd, generations))
            return self.witness.observation()
        except Exception as exc:   # the witness must never stop a pass
            log.error("witness state unreadable: %s", exc)
            return model.WitnessGrant(granted=False, reason="witness state unreadable: %s"
                                      % exc, failover_allowed=False)

    def _ask_witness(self, observation, decision):
        """The decision wants this host primary but a disconnected resource waits for the
        witness: ask for a grant in the background (the next pass sees the answer)."""
        w = observation.witness
        if self.witness is None or w is None or w.granted or not w.failover_allowed or \
                self.dry_run or decision.desired != model.PRIMARY or decision.actions:
            return
        from iscsi_ha.drbd import LINK_UP_STATES
        for name in observation.resources:
            state = observation.drbd.get(name)
            if state is not None and state.role != "Primary" and \
                    state.connection not in LINK_UP_STATES:
                self.witness.want_promote()
                return

    def _split_brain_flags(self):
        """Resources that DRBD's split-brain handler flagged in STATE_DIR (split-brain-RES)."""
        flagged = []
        for name in self.config.DRBD_RESOURCES:
            if os.path.exists(os.path.join(self.config.STATE_DIR, "split-brain-" + name)):
                flagged.append(name)
        return tuple(flagged)

    # -- act -------------------------------------------------------------------------------
    def _perform(self, action):
        a = self.adapters
        if isinstance(action, PromoteDrbd):
            return a.drbd.promote(action.resource)
        if isinstance(action, DemoteDrbd):
            return a.drbd.demote(action.resource)
        if isinstance(action, StartTarget):
            return a.target.start()
        if isinstance(action, StopTarget):
            return a.target.stop()
        if isinstance(action, AddFloatingIp):
            return a.vip.add()
        if isinstance(action, RemoveFloatingIp):
            return a.vip.remove()
        if isinstance(action, AnnounceFloatingIp):
            return a.vip.announce()
        if isinstance(action, HealSplitBrain):
            return self._heal_split_brain(action)
        raise ValueError("unknown action %r" % (action,))

    def _heal_split_brain(self, action):
        """The steps of ``iscsi-cfg split-brain --keep`` for this host's side, inside the pass
        (which already holds the pass lock). No snapshot here: DRBD's before-resync-target
        handler (e.g. snapshot-resync-target-lvm.sh) takes one where the backing store allows."""
        from iscsi_ha import splitbrain
        from iscsi_ha.splitbrain_report import clear_flag, write_flag
        name = action.resource
        if action.role == "clear":
            clear_flag(self.config.STATE_DIR, name)
            return "split-brain flag cleared"
        state = dict(self.adapters.drbd.observe())[name]
        write_flag(self.config.STATE_DIR, name, reason="healing as %s (witness)" % action.role,
                   time="%d" % time.time())
        if action.role == "victim":
            steps = splitbrain._victim(self.adapters.drbd, name, state, None)
        else:
            steps = splitbrain._survivor(self.adapters.drbd, name, state)
        return ", ".join(steps) or "nothing to do"

    def apply(self, actions):
        """Run ``actions`` in order; the first failure skips the rest (they depend on it)."""
        results, failed = [], False
        for action in actions:
            if failed or self.dry_run:
                results.append(ActionResult(action, ok=not failed, duration=0.0,
                                            detail="dry run" if not failed else
                                            "skipped: an earlier step failed", skipped=True))
                continue
            start = time.monotonic()
            log.info("acting: %s", action.describe())
            try:
                outcome = self._perform(action)
                detail = outcome if isinstance(outcome, str) else ""
                ok = True
            except Exception as exc:  # every adapter error is reported, none stops the agent
                ok, detail = False, str(exc) or type(exc).__name__
                failed = True
                log.error("%s failed: %s", action.describe(), detail)
            results.append(ActionResult(action, ok, time.monotonic() - start, detail))
        return tuple(results)

    # -- one pass --------------------------------------------------------------------------
    def run_cycle(self, trigger="timer"):
        started, clock = time.time(), time.monotonic()
        observation = self.observe()
        decision = decide(observation)
        self._ask_witness(observation, decision)
        results = self.apply(decision.actions)
        self.adapters.reap()
        record = PassRecord(started, observation, decision, results,
                            time.monotonic() - clock)
        self.passes += 1
        try:
            self.publish(record, trigger)
        except (IOError, OSError) as exc:    # disk full, read-only: the pass still counts
            log.error("cannot publish the status to %s: %s", self.config.STATUS_FILE, exc)
        self._log_sentence(record, trigger)
        return record

    def publish(self, record, trigger):
        if record.results and not self.dry_run:
            self.last_actions = status.results_to_list(record.results, record.started)
        document = status.build(record, self.config, self.passes, self.started, trigger,
                                self.last_actions)
        if not self.dry_run:
            status.write(self.config.STATUS_FILE, document)
            if self.alerts is not None:
                self.alerts.observe(document)        # queues only: never blocks the pass
        return document

    def _log_sentence(self, record, trigger):
        sentence = "pass %d (%s, %.3f s): saw %s; %s%s" % (
            self.passes, trigger, record.duration, describe_observation(record.observation),
            record.decision.reason, describe_results(record.results))
        level = logging.INFO
        if any(not r.ok for r in record.results):
            level = logging.ERROR
        elif not record.decision.healthy and not record.decision.actions:
            level = logging.WARNING if record.decision.reason != self.last_reason else logging.INFO
        log.log(level, "%s", sentence)
        self.last_reason = record.decision.reason


def describe_observation(obs):
    parts = [obs.pool.role + (" of " + obs.pool.master_address if obs.pool.master_address
                              else "")]
    if obs.manual != model.MANUAL_OFF:
        parts.append("manual " + obs.manual)
    if obs.drbd_error:
        parts.append("DRBD unreadable")
    for name in obs.resources:
        state = obs.drbd.get(name)
        if state is not None:
            parts.append("%s %s/%s %s %s/%s" % (name, state.role, state.peer_role,
                                                state.connection, state.disk, state.peer_disk))
    if obs.target is not None:
        parts.append("target " + ("serving" if obs.target.serving else
                                  "running" if obs.target.running else "stopped"))
    if obs.vip is not None:
        parts.append("floating IP " + ("local" if obs.vip.local else "not local"))
    return ", ".join(parts)


def describe_results(results):
    if not results:
        return ""
    words = ["%s %s (%.2f s)" % (r.action.describe(), "ok" if r.ok and not r.skipped else
                                 "skipped" if r.skipped else "FAILED", r.duration)
             for r in results]
    return " -> " + ", ".join(words)


class PassLockBusy(Exception):
    """Another process (an iscsi-cfg command, a second agent) holds the pass lock."""


class PassLock(object):
    """An exclusive lock (STATE_DIR/lock) held for a whole pass; the CLI takes it to switch
    manual mode, so no pass can act on a role the admin has just changed. With ``timeout``
    (seconds) waiting is bounded: :class:`PassLockBusy` when it is not had in time."""

    def __init__(self, path, timeout=None, poll=0.05):
        self.path = path
        self.timeout = timeout
        self.poll = poll
        self.handle = None

    def __enter__(self):
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        self.handle = open(self.path, "a")
        if self.timeout is None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (IOError, OSError):
                if time.monotonic() >= deadline:
                    self.handle.close()
                    self.handle = None
                    raise PassLockBusy("%s is held by another process" % self.path)
                time.sleep(self.poll)

    def __exit__(self, *exc):
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None
