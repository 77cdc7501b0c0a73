"""One pass of the agent (observe -> decide -> apply -> publish) and the loop that runs passes.

A pass reads like a sentence and the daemon logs that sentence every pass. The loop wakes on a
pool.conf change, a manual-mode change or a DRBD state change (polled cheaply), and on the
MONITOR_DELAY timer. Passes never overlap; a pass that outlives its budget
(MONITOR_MAX_STARTS x MONITOR_SCANRATE) has its child processes killed (MONITOR_KILLALL=1).
"""
import dataclasses
import logging
import os
import time

from iscsi_ha import early_dad, fencing, fencing_policy, model, statepaths, status, tickle
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.pool import read_pool_role
from iscsi_ha.decide import decide
from iscsi_ha.faults import Faults
from iscsi_ha.model import (ActionResult, AddFloatingIp, AnnounceFloatingIp, DemoteDrbd,
                            HealSplitBrain, PassRecord, PromoteDrbd, RemoveFloatingIp,
                            StartTarget, StopTarget)
from iscsi_ha.wiring import Adapters, observe_drbd, observe_target, observe_vip

log = logging.getLogger("iscsi-ha")


def peer_released_address(observation):
    """True when every resource is Connected with the peer Secondary: the peer's agent demotes
    in the order floating IP off, target stop, DRBD Secondary, so a connected Secondary peer has
    released the address (a planned switchover or handover). A crash or a cut link never
    qualifies (the connection is down), and then the full duplicate-address window applies."""
    states = [observation.drbd.get(name) for name in observation.resources]
    return bool(states) and all(
        s is not None and s.connection == "Connected" and s.peer_role == "Secondary"
        for s in states)


class Agent(object):
    """Observe, decide, act and publish, once per :meth:`run_pass`."""

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
        self.faults = Faults()        # errors survived (hooks, alerts, status writes)
        self.hung_passes = 0          # passes that outlived their budget (the loop counts)
        self.unserved_since = None    # (wall, monotonic) when this host began not to serve
        self.lock_problem = ""        # the pass lock had to leave STATE_DIR (set by the loop)
        self.state_problem = ""       # what the last pass could not write, for the log
        self.fencing = fencing.FencingTracker(config, peer_fencing=self._peer_fencing)
        self._observation = None
        self._reason = ""

    def _peer_fencing(self):
        """The peer's fencing (its plugin runs drbdadm dump there), bounded by XAPI_TIMEOUT."""
        from iscsi_ha import peer as peer_mod
        from iscsi_ha.fence_peer import _Peer
        return peer_mod.call(_Peer(self.config), "fencing", {})

    # -- observe ---------------------------------------------------------------------------
    def observe(self, from_stream=False):
        """The host as it is now. ``from_stream``: a line of the DRBD events stream woke this
        pass, which proves the stream live: DRBD 9's state is then read from it."""
        config = self.config
        manual_error = ""
        try:
            manual = manual_adapter.read_manual(config.MANUAL_FILE)
        except manual_adapter.ManualModeError as exc:
            manual, manual_error = model.MANUAL_HOLD, str(exc)
        drbd, drbd_error = observe_drbd(self.adapters.drbd, from_stream)
        try:
            fenced = self.fencing.observe(drbd, self.adapters.drbd)
        except Exception as exc:  # never lose a pass over it: unproven, nothing frozen known
            log.error("fencing: cannot observe: %s", exc)
            fenced = fencing_policy.FencingObservation(
                unproven=dict((n, "cannot observe fencing: %s" % exc)
                              for n in config.DRBD_RESOURCES),
                allow_unfenced=bool(config.ALLOW_UNFENCED_FAILOVER),
                self_fence_after=float(config.SELF_FENCE_AFTER))
        witness = self._observe_witness(drbd) if self.witness is not None else None
        return model.Observation(
            fencing=fenced,
            pool=read_pool_role(config.POOL_CONF),
            manual=manual,
            drbd=drbd,
            drbd_error=drbd_error,
            # DRBD froze I/O: tgtd is blocked on the device, its tgtadm would only time out.
            target=(None if any(getattr(st, "suspended", False) for st in drbd.values())
                    else observe_target(self.adapters.target)),
            vip=observe_vip(self.adapters.vip, config.VIP_CHECK_INTERVAL),
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
            if os.path.exists(statepaths.split_brain_flag(self.config.STATE_DIR, name)):
                flagged.append(name)
        return tuple(flagged)

    def _kept_readings_used(self):
        """True when this pass's observation reused a reading kept while the event streams
        said nothing changed (see :meth:`iscsi_ha.adapters.vip.VipAdapter.observe`)."""
        return getattr(self.adapters.vip, "cache_used", False) is True

    def _forget_kept_readings(self):
        forget = getattr(self.adapters.vip, "forget", None)
        if forget is not None:
            forget()

    # -- act -------------------------------------------------------------------------------
    def _perform(self, action):
        a = self.adapters
        if isinstance(action, PromoteDrbd):
            return self._promote(action.resource)
        if isinstance(action, DemoteDrbd):
            return a.drbd.demote(action.resource)
        if isinstance(action, StartTarget):
            return a.target.start()
        if isinstance(action, StopTarget):
            return a.target.stop()
        if isinstance(action, AddFloatingIp):
            return self._add_after_early_dad(a.vip, self._released_timeout())
        if isinstance(action, RemoveFloatingIp):
            return tickle.remove_with_tickle(self.config, a.vip.remove)
        if isinstance(action, AnnounceFloatingIp):
            return a.vip.announce()
        if isinstance(action, HealSplitBrain):
            return self._heal_split_brain(action)
        raise ValueError("unknown action %r" % (action,))

    def _promote(self, resource):
        """Promote; while disconnected, first leave the grant that tells our fence-peer handler
        (which DRBD runs during this promotion) that decide() proved it safe."""
        obs = self._observation
        state = obs.drbd.get(resource) if obs is not None else None
        granted = state is not None and not state.is_connected
        if granted:
            try:
                fencing.write_grant(self.config.STATE_DIR, resource, self._reason)
            except (OSError, IOError) as exc:
                log.error("cannot write the promotion grant for %s: %s", resource, exc)
        try:
            return self.adapters.drbd.promote(resource)
        finally:
            if granted:
                fencing.clear_grant(self.config.STATE_DIR, resource)

    def _released_timeout(self):
        """The short DAD window when the peer released the address in an orderly demote (see
        :func:`peer_released_address`), else None (the full DAD)."""
        observation = getattr(self, "_observation", None)
        if observation is None or not peer_released_address(observation):
            return None
        return getattr(self.config, "ARP_DAD_RELEASED_TIMEOUT", None)

    def _add_after_early_dad(self, vip, released=None):
        """The address step of a promote pass whose DAD ran beside the promotion (the short
        probe when ``released``, see :meth:`_released_timeout`)."""
        early, self._early_dad = getattr(self, "_early_dad", None), None
        free = early.verdict(self.config.NET_TIMEOUT) if early is not None else None
        if free is None:
            return vip.add() if released is None else vip.add(released_timeout=released)
        if not free:
            from iscsi_ha.adapters.vip import VipTaken
            raise VipTaken(self.config.DRBD_VIRTUAL_IP, early.responders)
        return vip.add(released_timeout=0)

    def _start_early_dad(self, actions):
        """Start DAD with the pass when the address comes after other steps: the full window,
        or the short probe after an orderly release (see :mod:`iscsi_ha.early_dad`)."""
        self._early_dad = None
        if self.dry_run or not any(isinstance(a, AddFloatingIp) for a in actions[1:]):
            return
        released = self._released_timeout()
        if released is None:
            self._early_dad = early_dad.start(self.adapters.vip)
        elif released > 0:   # the short probe, beside the promotion too
            self._early_dad = early_dad.start(self.adapters.vip, count=1, timeout=released)

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
        self._start_early_dad(actions)
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
        leftover, self._early_dad = getattr(self, "_early_dad", None), None
        if leftover is not None:             # the address step was skipped: reap the probe
            leftover.join(self.config.NET_TIMEOUT)
        return tuple(results)

    # -- one pass --------------------------------------------------------------------------
    def run_pass(self, trigger="timer"):
        started, clock = time.time(), time.monotonic()
        observation = self._observation = self.observe(from_stream=trigger == "drbd")
        decision = decide(observation)
        if decision.actions and self._kept_readings_used():
            # A pass that acts decides on fresh readings only: read again what was kept
            # between unchanged passes (the floating IP), and decide again. The rest was read
            # afresh a moment ago; reading it twice would only delay the move.
            self._forget_kept_readings()
            observation = self._observation = dataclasses.replace(
                observation, vip=observe_vip(self.adapters.vip, self.config.VIP_CHECK_INTERVAL))
            decision = decide(observation)
        self._observation, self._reason = observation, decision.reason
        self._ask_witness(observation, decision)
        results = self.apply(decision.actions)
        due = fencing_policy.self_fence_due(observation)
        if due and not self.dry_run:
            self.fencing.mark_self_fenced(due)
        self.faults.guard("reap", self.adapters.reap)
        record = PassRecord(started, observation, decision, results,
                            time.monotonic() - clock)
        record.service = self.service_state(decision, results)
        self.passes += 1
        # Disk full, read-only, a broken alert rule: the pass still counts and the daemon lives.
        self.faults.guard("status publish", self.publish, record, trigger)
        self.faults.guard("pass log line", self._log_sentence, record, trigger)
        return record

    def service_state(self, decision, results):
        """Whether this host should serve and does not, and whether that is "blocked": at once
        for a refusal, after SERVICE_BLOCKED_AFTER seconds for a wait or a plan that keeps
        failing. The status's health, the service-blocked alert and the CLI read this."""
        state = {"must_serve": decision.must_serve, "unserved": decision.unserved,
                 "since": None, "for_s": 0.0, "blocked": False,
                 "blockers": [b.to_dict() for b in decision.blockers]}
        if not decision.unserved:
            self.unserved_since = None
            return state
        if self.unserved_since is None:
            self.unserved_since = (time.time(), time.monotonic())
        elapsed = time.monotonic() - self.unserved_since[1]
        late = elapsed >= self.config.SERVICE_BLOCKED_AFTER
        state["since"] = self.unserved_since[0]
        state["for_s"] = round(elapsed, 3)
        state["blocked"] = decision.refused or late
        if late and not decision.blockers:
            failed = ["%s failed: %s" % (r.action.describe(), r.detail) for r in results
                      if not r.ok and not r.skipped]
            blocker = model.Blocker(model.BlockerKind.NOT_SERVING, "", "not serving after "
                                    "%.0f s of %s%s" % (elapsed, decision.verdict.value,
                                                        "; " + "; ".join(failed) if failed
                                                        else ""))
            state["blockers"] = [blocker.to_dict()]
        return state

    def publish(self, record, trigger):
        if record.results and not self.dry_run:
            self.last_actions = status.results_to_list(record.results, record.started)
        document = status.build(record, self.config, self.passes, self.started, trigger,
                                self.last_actions)
        document["faults"] = self.faults.snapshot()
        document["hung_passes"] = self.hung_passes
        if self.lock_problem:
            status.mark_state_problem(document, self.config.STATE_DIR, self.lock_problem)
        if not self.dry_run:
            self._write_status(document)
            if self.alerts is not None:      # queues only: never blocks the pass
                self.faults.guard("alerts", self.alerts.observe, document)
        return document

    def _write_status(self, document):
        """Write the status; when that fails (read-only or full state directory) the document
        says so (health failed, for the alerts), a copy goes to LOCK_FALLBACK_DIR, and the log
        (syslog) says it once per new problem."""
        path = self.config.STATUS_FILE
        try:
            status.write(path, document)
        except Exception as exc:
            self.faults.record("status write %s" % path, exc)
            status.mark_state_problem(document, self.config.STATE_DIR, "cannot write the "
                                      "status %s: %s" % (path, getattr(exc, "strerror", None)
                                                         or exc))
            fallback = statepaths.status_copy(self.config)
            if os.path.abspath(fallback) != os.path.abspath(path):
                self.faults.guard("status write %s" % fallback, status.write, fallback,
                                  document)
        problem = (document.get("state_dir") or {}).get("error", "")
        if problem and problem != self.state_problem:
            log.error("state directory %s cannot be used: %s; passes go on, health is failed",
                      self.config.STATE_DIR, problem)
        elif self.state_problem and not problem:
            log.warning("state directory %s usable again", self.config.STATE_DIR)
        self.state_problem = problem

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
