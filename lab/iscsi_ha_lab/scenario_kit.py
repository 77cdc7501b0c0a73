"""The scenario kit: the registry, the runner and the helpers every scenario module uses.
(:mod:`iscsi_ha_lab.scenarios` imports every scenario module and lists them.) Adding one is one small function::

    @scenario("name", "what it shows")
    def name(lab, run):
        ...                       # break something, run.role_changed(), run.check(ok, "why")

The runner around it brings the lab to a baseline (one host primary and serving, the other
Secondary, connected and UpToDate), starts the I/O probe, runs the function, stops the probe and
gives the verdict: every check passed, no invariant violated, no acknowledged write lost.
"""
import calendar
import collections
import json
import os
import time

from iscsi_ha import statepaths
from iscsi_ha.alerts.email import TIME_FORMAT
from iscsi_ha_lab.lab import LabError, wait_until
from iscsi_ha_lab.probe_control import ProbeRun

Scenario = collections.namedtuple("Scenario", "name title function")
SCENARIOS = collections.OrderedDict()


def scenario(name, title):
    def register(function):
        SCENARIOS[name] = Scenario(name, title, function)
        return function
    return register


class ScenarioRun(object):
    def __init__(self, lab, name):
        self.lab = lab
        self.name = name
        self.failures = []
        self.notes = []
        self.t_change = None

    def check(self, ok, message):
        if not ok:
            self.failures.append(message)
        return ok

    def note(self, message):
        self.notes.append(message)

    def role_changed(self, at=None):
        """Mark the moment the storage role had to change (monotonic clock)."""
        self.t_change = time.monotonic() if at is None else at

    def wait(self, predicate, timeout, what):
        try:
            return wait_until(predicate, timeout, what=what)
        except LabError as exc:
            self.failures.append(str(exc))
            return None


def pool_conf_changed_at(host, content):
    """Wait (bounded) until ``host``'s pool.conf says ``content``; its write time, monotonic."""
    def says():
        try:
            with open(host.pool_conf) as handle:
                return handle.read().strip() == content
        except (OSError, IOError):
            return False
    wait_until(says, 30, what="pool.conf of %s to say %s" % (host.name, content))
    age = time.time() - os.stat(host.pool_conf).st_mtime
    return time.monotonic() - max(age, 0.0)


def fence_record(lab, host):
    """The last fence-peer handler run recorded on ``host`` for the lab's resource, or None."""
    try:
        with open(statepaths.fence_record(os.path.join(host.root, "state"), lab.resource)) as f:
            return json.load(f)
    except (OSError, IOError, ValueError):
        return None


def settled(lab, serving_host):
    """``serving_host`` primary and serving, its peer Secondary, connected, both UpToDate."""
    peer = lab.peer(serving_host)
    view = lab.world.snapshot()["views"][lab.resource]
    mine, theirs = view[serving_host.name], view[peer.name]
    peer_status = lab.status(peer)
    return (lab.serving(serving_host) and mine["role"] == "Primary"
            and theirs["role"] == "Secondary" and mine["cstate"] == "Connected"
            and mine["disk"] == theirs["disk"] == "UpToDate"
            and peer_status is not None and peer_status["target"] is not None
            and not peer_status["target"]["running"]
            and not peer_status["floating_ip"]["local"])


def fencing_proven(lab, host):
    """``host``'s agent reports DRBD fencing proven for the lab's resource."""
    status = lab.status(host) or {}
    return lab.resource in ((status.get("fencing") or {}).get("proven") or {})


# --- the scenarios ------------------------------------------------------------------------------

def alerts_of(lab, kind, since):
    """(emails, XAPI messages) of alert ``kind`` about events seen since ``since`` (wall clock).
    Both carry the time the agent saw the event (``Time:``, to the second): a message sent late
    (its sender backed off while XAPI was down in an earlier scenario) belongs to that scenario,
    not to the one it arrived in."""
    floor = int(since)                              # the stamps are whole seconds
    mail = [m for m in lab.mail()
            if _seen(m.get("body"), m["time"]) >= floor
            and m["alert"].strip().startswith(kind + ";")]     # the header may be folded
    name = "ISCSI_HA_" + kind.upper().replace("-", "_")
    messages = [m for m in lab.xapi.pool.messages(name)
                if _seen(m.get("body"), _epoch(m.get("timestamp"))) >= floor]
    return mail, messages


def _seen(body, delivered):
    """The epoch second of the body's ``Time:`` line (``2026-12-03 11:42:12 +0000``), else
    ``delivered``."""
    for line in str(body or "").splitlines():
        if line.startswith("Time:"):
            try:
                stamp = time.strptime(line[len("Time:"):].strip(), TIME_FORMAT)
            except ValueError:
                break
            return calendar.timegm(stamp) - stamp.tm_gmtoff
    return delivered


def _epoch(stamp):
    """XAPI's datetime (``20261122T04:40:00Z``, or an xmlrpc DateTime) as epoch seconds."""
    text = str(getattr(stamp, "value", stamp) or "")
    try:
        return calendar.timegm(time.strptime(text.replace("-", ""), "%Y%m%dT%H:%M:%SZ"))
    except ValueError:
        return 0


Result = collections.namedtuple("Result", "scenario passed io_pause_s time_to_serve_s "
                                "lost_writes failures notes")


def run_scenario(lab, name, settle_timeout=90):
    found = SCENARIOS.get(name)
    if found is None:
        raise LabError("no scenario %r; known: %s" % (name, ", ".join(SCENARIOS)))
    run = ScenarioRun(lab, name)
    baseline = wait_until(lambda: next((h for h in lab.hosts if settled(lab, h)), None),
                          settle_timeout, what="a settled pool before %s" % name)
    if lab.fencing:
        # The lab's baseline has fencing configured and proven on both hosts. A scenario that
        # ran without it (fence-not-configured, fence-forced-promotion) leaves a failed proof,
        # which the agents re-verify at most every 30 s: a scenario that relies on the proof
        # (become-primary without --force on an unknown peer) must not start before it.
        wait_until(lambda: all(fencing_proven(lab, h) for h in lab.hosts), settle_timeout,
                   what="fencing proven on both hosts before %s" % name)
    lab.checker.violations = []
    lab.checker.allow_two_primaries = False
    ticks = lab.checker.ticks
    probe = ProbeRun(lab, name)
    probe.start()
    try:
        probe.wait_for_io(20)
        found.function(lab, run)
        run.check(probe.wait_for_io_after(time.monotonic(), 30),
                  "the client was not served again within 30 s after the scenario")
        time.sleep(0.5)
    except Exception as exc:
        run.failures.append("%s: %s" % (type(exc).__name__, exc))
    finally:
        probe.stop()
    report = probe.analyse()
    run.failures.extend(lab.checker.violations)
    if lab.checker.ticks <= ticks:
        run.failures.append("the invariant checker did not run during the scenario")
    if report.verify_failures:
        run.failures.append("%d read(s) returned older data than the last acknowledged write"
                            % report.verify_failures)
    if report.outage_at_end_s:
        run.failures.append("the client's I/O was failing when the probe stopped")
    lost = report.lost_writes
    if lost is None or lost > 0:
        run.failures.append("lost acknowledged writes: %s" % lost)
    serve = probe.time_to_serve(run.t_change)
    passed = not run.failures
    return Result(name, passed, round(report.longest_pause_s or 0.0, 3),
                  None if serve is None else round(serve, 3), lost, list(run.failures),
                  run.notes + ["baseline primary: %s" % baseline.name])
