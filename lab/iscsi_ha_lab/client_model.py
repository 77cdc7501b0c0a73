"""What an XCP-ng host's open-iscsi initiator would see of an outage the lab measured.

The lab's clients are libiscsi probes that reconnect at once. dom0's initiator is open-iscsi,
which reconnects by its own rules; this module replays them against the server-side timeline
that two lab probes measured in the same outage:

- the *fast* probe (short command and connect deadlines, 2 ms between attempts) tells, to a few
  milliseconds, when the portal was silent (nobody held the address), refused connections (the
  address is held, nothing listens), rejected the login, or served again;
- the *patient* probe (a command deadline far beyond the outage) keeps its TCP connection until
  the network ends it: its first failed command tells when and how an established initiator
  connection with I/O in flight died (reset by the old target, or by the new address holder when
  a retransmission or a tickle ACK reached it).

open-iscsi's rules, from its sources (open-iscsi/open-iscsi, usr/initiator.c, etc/iscsid.conf,
include/iscsi_proto.h, usr/login.c at bc23614):

- after a connection error, iscsid waits the session's DefaultTime2Wait before reconnecting
  (``__session_conn_reopen``: ``delay = session->def_time2wait``, then zeroed, so only the first
  reopen waits). The initiator offers ``node.session.iscsi.DefaultTime2Wait`` (default 2,
  ``ISCSI_DEF_TIME2WAIT``); the target's answer is what the session keeps (login.c stores the
  value the target returns); RFC 7143 makes the result the larger of both offers;
- a reconnect whose TCP connect fails (RST: ``poll error``) is retried after
  ``ISCSI_CONN_ERR_REOPEN_DELAY`` = 3 s; a refused or failed login is retried at once;
- NOP-Out every ``noop_out_interval`` (5 s) with ``noop_out_timeout`` (5 s) fails a silent
  connection at the latest interval + timeout after the last data received;
- I/O is failed up to the SCSI layer (and so to the VM) after ``replacement_timeout`` (open-iscsi
  default 120 s; XCP-ng sets 144 s, 15 s with multipath).

Linux TCP facts used: an unanswered SYN is retransmitted after 1 s, then doubling
(TCP_TIMEOUT_INIT, RFC 6298); a data segment after RTO >= 200 ms (TCP_RTO_MIN), doubling.
"""
import collections

from iscsi_ha_lab.probe import GOOD

SILENT, REFUSED, REJECTED, SERVING = "silent", "refused", "rejected", "serving"
REOPEN_DELAY_AFTER_CONNECT_ERROR = 3.0   # open-iscsi ISCSI_CONN_ERR_REOPEN_DELAY
SYN_RTO = 1.0                            # Linux TCP_TIMEOUT_INIT
WITNESS_MARGIN = 0.05                    # see _reset_witness
LOGIN_TIME = 0.005                       # one login on a LAN, as the lab measures it

Settings = collections.namedtuple(
    "Settings", "name time2wait target_time2wait noop_interval noop_timeout "
                "replacement_timeout login_timeout")

# XCP-ng dom0: open-iscsi defaults, replacement timeout 144 s; tgtd offers DefaultTime2Wait 2.
XCPNG_DEFAULT = Settings("XCP-ng default", 2, 2, 5, 5, 144, 15)
XCPNG_MULTIPATH = XCPNG_DEFAULT._replace(name="XCP-ng multipath", replacement_timeout=15)
# What iscsi-cfg check advises: no Time2Wait on either side; NOP-Out catches a silent drop in
# 2 s when nothing announced the move (the agent's tickle normally does it at once).
ADVISED = Settings("advised", 0, 0, 1, 1, 144, 15)


def classify(record):
    """SERVING, SILENT, REFUSED or REJECTED for one probe record (connect, write or read)."""
    status = record.get("status")
    if status == GOOD:
        return SERVING
    text = str(status).lower()
    if "no answer within" in text or "timed out" in text:
        return SILENT
    if "refused" in text or "connect" in text and "fail" in text and record["kind"] == "connect":
        return REFUSED
    return REJECTED


class Outage(object):
    """One outage as the server side showed it: ``last_good`` (last completion before it),
    ``served`` (a login that went on to serve started then), ``states`` [(t, state)] in between
    and how the established connection died (``conn_dead_at``, ``conn_death``)."""

    def __init__(self, last_good, served, states, conn_dead_at=None, conn_death=None,
                 first_send=None):
        self.last_good, self.served, self.states = last_good, served, states
        self.conn_dead_at, self.conn_death, self.first_send = conn_dead_at, conn_death, first_send

    def state_at(self, t):
        if t >= self.served:
            return SERVING
        state = SILENT
        for start, what in self.states:
            if start > t:
                break
            state = what
        return state

    def answered_from(self):
        """First moment someone held the address (refused, rejected or served)."""
        for start, what in self.states:
            if what != SILENT:
                return start
        return self.served


def _longest_gap(records):
    good = sorted(r["t_end"] for r in records
                  if r["kind"] in ("write", "read") and r["status"] == GOOD)
    best = (0.0, None, None)
    for before, after in zip(good, good[1:]):
        if after - before > best[0]:
            best = (after - before, before, after)
    return best


def outage_from(fast, patient=None):
    """The longest outage of the fast probe's records, with the patient probe's view of how an
    established connection died (None when the fast probe saw no failure)."""
    gap, before, after = _longest_gap(fast)
    if before is None or not any(r.get("status") != GOOD and before <= r.get("t_start", 0) <= after
                                 for r in fast if r["kind"] != "start" and r["kind"] != "stop"):
        return None
    window = [r for r in fast if r["kind"] in ("connect", "write", "read")
              and before <= r["t_start"] < after]
    states, served = [], after
    for r in window:
        if r["kind"] == "connect":
            state = classify(r)
            if state == SERVING:
                served = r["t_start"]
                break
            # a silent attempt: its SYN, sent at the start, went unanswered
            states.append((r["t_start"], state))
    outage = Outage(before, served, states)
    if patient:
        _patient_view(outage, patient)
        _reset_witness(outage)
    return outage


def _reset_witness(outage):
    """A reset of the patient connection after a silent spell came from a host holding the
    address: from then on the portal was not silent, even if the fast probe's last silent
    attempt (a SYN a few ms earlier) could not show it yet."""
    at = outage.conn_dead_at
    if outage.conn_death != "reset" or at is None or at >= outage.served:
        return
    silent_since = next((t for t, w in outage.states if w == SILENT), None)
    # a reset within WITNESS_MARGIN of the silence starting is the old target's own close,
    # read late by the probe (the lab's crash kills tgtd a moment before the address goes)
    if outage.state_at(at) != SILENT or silent_since is None or \
            at - silent_since < WITNESS_MARGIN:
        return
    after = next((w for t, w in outage.states if t > at and w != SILENT), SERVING)
    outage.states = sorted(outage.states + [(at, after)])


def _patient_view(outage, patient):
    """The first failed command of the patient probe around the outage: when its connection
    died and whether by a reset (the command failed before its deadline) or silence."""
    start = next((r for r in patient if r["kind"] == "start"), {})
    deadline = float(start.get("io_timeout", 30.0))
    failed = [r for r in patient if r["kind"] in ("write", "read") and r["status"] != GOOD
              and r["t_end"] >= outage.last_good]
    if not failed:
        return
    first = failed[0]
    outage.first_send = first["t_start"]
    outage.conn_dead_at = first["t_end"]
    outage.conn_death = "timeout" if first["t_end"] - first["t_start"] >= deadline * 0.9 \
        else "reset"


def _retransmit_detection(outage, send):
    """When a segment sent at ``send`` and retransmitted (RTO 0.2 s, doubling) first reaches a
    host holding the address (which resets it): None when that is not within 15 retries."""
    answered, rto, t = outage.answered_from(), 0.2, send
    if send >= answered:
        return send
    for _ in range(15):
        t += rto
        if t >= answered:
            return t
        rto = min(rto * 2, 120.0)
    return None


def _detection(outage, settings):
    """(when, how) open-iscsi learns that its connection is gone.

    The patient probe is the witness: when its connection was reset, so was the initiator's at
    the same moment. When it only timed out, nothing was in flight at the TCP level (the old
    target had acknowledged the command, then stopped answering): nothing is retransmitted, and
    only NOP-Out finds it -- the NOP-Out itself is retransmitted until the new holder resets it
    or noop_out_timeout ends it. Without a patient probe, the fast probe's first failed command
    is taken as the unacknowledged segment."""
    if outage.conn_death == "reset" and outage.conn_dead_at is not None:
        found = (outage.conn_dead_at, "connection reset")
    elif outage.conn_death is None:
        send = outage.first_send if outage.first_send is not None else outage.last_good
        when = _retransmit_detection(outage, send)
        found = (when, "retransmission reset") if when is not None else (None, None)
    else:
        found = (None, None)
    nop_sent = outage.last_good + settings.noop_interval
    nop_reset = _retransmit_detection(outage, nop_sent)
    nop = (nop_reset, "NOP-Out reset") if nop_reset is not None and \
        nop_reset < nop_sent + settings.noop_timeout else \
        (nop_sent + settings.noop_timeout, "NOP-Out timeout")
    if found[0] is None or nop[0] < found[0]:
        return nop
    return found


def replay(outage, settings):
    """What open-iscsi with ``settings`` sees: a dict with detection, reconnect and pause."""
    detected, how = _detection(outage, settings)
    t = detected + max(settings.time2wait, settings.target_time2wait)
    attempts, restored = 0, None
    while attempts < 200 and t - detected < 3600:
        attempts += 1
        state = outage.state_at(t)
        if state == SERVING:
            restored = t + LOGIN_TIME
            break
        if state == REFUSED:
            t += REOPEN_DELAY_AFTER_CONNECT_ERROR
        elif state == REJECTED:
            t += 0.01
        else:  # SYN unanswered: retransmitted 1, 2, 4 s later until the login timeout
            waited, rto = 0.0, SYN_RTO
            while waited + rto <= settings.login_timeout:
                waited += rto
                if outage.state_at(t + waited) != SILENT:
                    break
                rto *= 2
            else:
                waited = settings.login_timeout
            t += waited
            if outage.state_at(t) == SERVING:
                restored = t + LOGIN_TIME
                break
            if outage.state_at(t) == REFUSED:
                t += REOPEN_DELAY_AFTER_CONNECT_ERROR
    restored = restored if restored is not None else t
    return {"settings": settings.name, "detected_after_s": round(detected - outage.last_good, 3),
            "detected_by": how, "reconnect_attempts": attempts,
            "pause_s": round(restored - outage.last_good, 3),
            "io_errors_to_vm": restored - detected > settings.replacement_timeout}


def model_report(fast, patient=None, settings=(XCPNG_DEFAULT, ADVISED)):
    """{settings name: replay} for the longest outage, or {} when there was none."""
    outage = outage_from(fast, patient)
    if outage is None:
        return {}
    return dict((s.name, replay(outage, s)) for s in settings)
