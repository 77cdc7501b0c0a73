"""PBD replug: keep this host's iSCSI SRs (lvmoiscsi) plugged, from a background worker.

After a failover XenServer often leaves a host's PBD of the iSCSI SR unplugged. The agent never
waits for XAPI: it tells a :class:`PbdReplugger` what it saw and the replugger's own thread does
the XAPI calls (each bounded by the client's timeout).

* A round lists this host's iSCSI PBDs (one ``iscsi_pbds_of_this_host`` listing) and plugs the
  ones that are not attached. A round where everything is attached costs that listing only.
* Rounds run on :meth:`PbdReplugger.kick` (the agent kicks when this host starts serving the
  storage, or when it sees the peer serving it) and every ``interval`` seconds while the storage
  is served by someone (``serving``) and replug is ``enabled``. After a round that could not
  finish, the next one comes sooner (``retry_after_failure``).
* ``PBD.plug`` failing with a code that may pass (``OTHER_OPERATION_IN_PROGRESS``,
  ``HOST_OFFLINE``, XAPI not answering) is tried again after each of ``retry_delays``; any other
  failure (``SR_BACKEND_FAILURE_*``, ``SR_NOT_SHARABLE``...) ends the attempt at once.
* Alerts: ``sr-replugged`` when a PBD was plugged (or is attached again after failures),
  ``sr-replug-failed`` once per failure streak of an SR, not once per round.

Wiring, for the daemon (see the report of issue 6)::

    replugger = PbdReplugger(lambda: XapiClient.from_config(config), dispatcher,
                             config.PBD_REPLUG_INTERVAL, enabled=config.PBD_REPLUG)
    ... after each pass:  replugger.observe(record.observation)      # never blocks
    ... at exit:          replugger.close(timeout=2)
"""
import collections
import logging
import threading
import time

from iscsi_ha.adapters.xapi import XapiError, XapiFailure, XapiUnavailable
from iscsi_ha.alerts import events

log = logging.getLogger("iscsi-ha")

# PBD.plug failures worth trying again in the same round (xenapi.md section 4(c)).
TRANSIENT_CODES = frozenset(["OTHER_OPERATION_IN_PROGRESS", "HOST_OFFLINE"])
RETRY_DELAYS = (1.0, 2.0, 4.0)
RETRY_AFTER_FAILURE = 5.0
TICK = 30.0             # longest an idle worker sleeps: every change of what it waits for
                        # notifies it, and a timer is waited for exactly

# What one round did: listed (the listing worked), plugged [SR names], failed {SR: error},
# error (why the round could not list, or "").
RoundOutcome = collections.namedtuple("RoundOutcome", "reason listed plugged failed error")


def storage_served(observation):
    """(served by this host, served by the peer) as one observation shows it."""
    states = list((observation.drbd or {}).values())
    target = observation.target
    local = bool(states) and all(s.role == "Primary" for s in states) and (
        target is not None and target.serving)
    peer = any(s.peer_role == "Primary" for s in states)
    return local, peer


class PbdReplugger(object):
    """One worker thread that plugs this host's unattached iSCSI PBDs; see the module doc."""

    def __init__(self, client_factory, dispatcher, interval, clock=time.monotonic,
                 enabled=True, retry_delays=RETRY_DELAYS,
                 retry_after_failure=RETRY_AFTER_FAILURE, close_client=True, start=True):
        if not interval or interval <= 0:
            raise ValueError("PBD replug interval must be positive, got %r" % (interval,))
        self.client_factory = client_factory
        self.dispatcher = dispatcher
        self.interval = float(interval)
        self.clock = clock
        self.retry_delays = tuple(float(d) for d in retry_delays)
        self.retry_after_failure = min(float(retry_after_failure), self.interval)
        self.close_client = close_client
        self.rounds = 0
        self.last_outcome = None
        self._cond = threading.Condition()
        self._enabled = bool(enabled)
        self._serving = False
        self._kicks = []
        self._next_due = None
        self._closing = False
        self._client = None
        self._failing = {}           # SR name -> error of its current failure streak
        self._listing_failed = False
        self._seen = (False, False)  # (local, peer) serving, from the last observation
        self._thread = None
        if start:
            self._thread = threading.Thread(target=self._run, name="pbd-replug")
            self._thread.daemon = True
            self._thread.start()

    # -- the agent's side (never blocks) ----------------------------------------------------
    @property
    def serving(self):
        return self._serving

    @serving.setter
    def serving(self, value):
        with self._cond:
            value = bool(value)
            if value and not self._serving and self._next_due is None:
                self._next_due = self.clock() + self.interval
            self._serving = value
            self._cond.notify_all()

    @property
    def enabled(self):
        return self._enabled

    @enabled.setter
    def enabled(self, value):
        with self._cond:
            self._enabled = bool(value)
            if not self._enabled:
                del self._kicks[:]
            self._cond.notify_all()

    def kick(self, reason="requested"):
        """Ask for a round now; returns at once. False when disabled or closing."""
        with self._cond:
            if self._closing or not self._enabled:
                return False
            self._kicks.append(reason)
            self._cond.notify_all()
        return True

    def observe(self, observation):
        """Follow one pass: ``serving`` while anyone serves the storage, and a kick when this
        host or its peer starts serving it. Returns the kick reason or None."""
        local, peer = storage_served(observation)
        before_local, before_peer = self._seen
        self._seen = (local, peer)
        self.serving = local or peer
        reason = None
        if local and not before_local:
            reason = "this host is now serving the storage"
        elif peer and not before_peer and not local:
            reason = "the peer is now serving the storage"
        if reason is not None:
            self.kick(reason)
        return reason

    # -- the worker --------------------------------------------------------------------------
    def pending(self):
        """The reason a round is due now ("kick reasons" or "timer"), else None; consumes kicks."""
        with self._cond:
            return self._take_due()

    def _take_due(self):
        if self._closing:
            return None
        if self._kicks:
            reasons = "; ".join(sorted(set(self._kicks), key=self._kicks.index))
            del self._kicks[:]
            return reasons
        if (self._enabled and self._serving and self._next_due is not None
                and self.clock() >= self._next_due):
            return "timer"
        return None

    def _idle_wait(self):
        """Seconds the worker sleeps with nothing due: until the timer, or TICK. Only a timer
        that can fire shortens it (disabled, a past due time woke the worker every 10 ms)."""
        if self._enabled and self._serving and self._next_due is not None:
            return min(TICK, max(0.01, self._next_due - self.clock()))
        return TICK

    def _wait_for_work(self):
        with self._cond:
            while not self._closing:
                reason = self._take_due()
                if reason is not None:
                    return reason
                self._cond.wait(self._idle_wait())
            return None

    def _run(self):
        try:
            while True:
                reason = self._wait_for_work()
                if reason is None:
                    return
                try:
                    self.run_round(reason)
                except Exception:  # a bug here must not end the worker
                    log.exception("PBD replug round failed unexpectedly")
        finally:
            self._close_client()

    def run_round(self, reason="requested"):
        """One round in the calling thread (the worker's, or a test's); returns RoundOutcome."""
        outcome = self._round(reason)
        with self._cond:
            clean = outcome.listed and not outcome.failed
            self._next_due = self.clock() + (self.interval if clean else
                                             self.retry_after_failure)
            self.rounds += 1
            self.last_outcome = outcome
            self._cond.notify_all()
        return outcome

    def _round(self, reason):
        try:
            client = self._get_client()
            pbds = client.iscsi_pbds_of_this_host()
        except (XapiError, ValueError) as exc:
            self._listing_problem(exc)
            return RoundOutcome(reason, False, [], {}, str(exc))
        if self._listing_failed:
            log.info("PBD replug: XAPI answers again")
            self._listing_failed = False
        plugged, failed = [], {}
        for pbd in pbds:
            if self._closing:
                break
            if pbd.attached:
                self._attached_again(pbd)
                continue
            log.info("PBD replug (%s): SR %s is not plugged on this host: plugging %s",
                     reason, pbd.sr_name, pbd.ref)
            ok, error, attempts = self._plug(client, pbd)
            if ok:
                plugged.append(pbd.sr_name)
                self._plugged(pbd, attempts, reason)
            else:
                failed[pbd.sr_name] = error
                self._plug_failed(pbd, error, attempts)
        return RoundOutcome(reason, True, plugged, failed, "")

    def _get_client(self):
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def _listing_problem(self, exc):
        level = logging.INFO if self._listing_failed else logging.WARNING
        self._listing_failed = True
        log.log(level, "PBD replug: cannot list this host's iSCSI PBDs: %s", exc)

    def _plug(self, client, pbd):
        """(ok, error text, attempts): PBD.plug, tried again after each retry delay while the
        failure may pass."""
        error, attempts = "", 0
        for delay in self.retry_delays + (None,):
            attempts += 1
            try:
                client.plug_pbd(pbd.ref)
                return True, "", attempts
            except XapiFailure as exc:
                if exc.code not in TRANSIENT_CODES:
                    return False, str(exc), attempts
                error = str(exc)
            except XapiUnavailable as exc:
                error = str(exc)
            if delay is None or self._interrupted(delay):
                break
            log.info("PBD replug: %s (attempt %d): trying again in %.1f s", error, attempts,
                     delay)
        return False, error, attempts

    def _interrupted(self, delay):
        """Sleep ``delay`` seconds unless closing; True when closing."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closing, delay)

    # -- alerts --------------------------------------------------------------------------------
    def _plugged(self, pbd, attempts, reason):
        was = self._failing.pop(pbd.sr_name, None)
        detail = "plugged by iscsi-ha (%s) after %d attempt(s)" % (reason, attempts)
        if was:
            detail += "; it had failed with: %s" % was
        log.info("PBD replug: SR %s plugged (%s)", pbd.sr_name, detail)
        self.dispatcher.submit(events.sr_replugged(pbd.sr_name, detail))

    def _attached_again(self, pbd):
        was = self._failing.pop(pbd.sr_name, None)
        if was:
            log.info("PBD replug: SR %s is attached again (not by iscsi-ha)", pbd.sr_name)
            self.dispatcher.submit(events.sr_replugged(
                pbd.sr_name, "attached again (not by iscsi-ha); it had failed with: %s" % was))

    def _plug_failed(self, pbd, error, attempts):
        if pbd.sr_name in self._failing:
            log.info("PBD replug: SR %s still cannot be plugged: %s", pbd.sr_name, error)
            self._failing[pbd.sr_name] = error
            return
        self._failing[pbd.sr_name] = error
        log.error("PBD replug: SR %s cannot be plugged on this host after %d attempt(s): %s",
                  pbd.sr_name, attempts, error)
        self.dispatcher.submit(events.sr_replug_failed(pbd.sr_name, error, attempts))

    # -- shutdown ------------------------------------------------------------------------------
    def close(self, timeout=5.0):
        """Stop: no new round, retry sleeps end at once; waits at most ``timeout`` seconds for
        a XAPI call in flight (bounded by the client's own timeout). True when the worker
        ended."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is None:
            self._close_client()
            return True
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            log.warning("PBD replug worker still in a XAPI call at shutdown; left to time out")
            return False
        return True

    def wait_stopped(self, timeout):
        """After close(): wait (bounded) for the worker to end; True when it has."""
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            return not self._thread.is_alive()
        return True

    def _close_client(self):
        client, self._client = self._client, None
        if client is not None and self.close_client:
            try:
                client.close()
            except Exception as exc:  # closing a broken client: nothing more to do
                log.debug("PBD replug: closing the XAPI client: %s", exc)
