"""Lab scenarios. Adding one is one small function::

    @scenario("name", "what it shows")
    def name(lab, run):
        ...                       # break something, run.role_changed(), run.check(ok, "why")

The runner around it brings the lab to a baseline (one host primary and serving, the other
Secondary, connected and UpToDate), starts the I/O probe, runs the function, stops the probe and
gives the verdict: every check passed, no invariant violated, no acknowledged write lost.
"""
import collections
import os
import signal
import time

from iscsi_ha.lab.lab import LabError, wait_until
from iscsi_ha.lab.probe_control import ProbeRun

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


# --- the scenarios ------------------------------------------------------------------------------

@scenario("pool-master-crash", "the pool master crashes; pool HA makes the slave master")
def pool_master_crash(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    lab.crash(old)
    lab.xapi.drop_pbd(new)              # as XenServer often leaves it after a failover
    lab.xapi.master_dies(old)
    lab.xapi.emergency_transition(new)
    run.role_changed(pool_conf_changed_at(new, "master"))
    run.check(run.wait(lambda: lab.serving(new), 30, "host %s serving" % new.name) is not None,
              "the new master did not take the storage")
    run.wait(lambda: lab.xapi.pbd_attached(new), 30,
             "the new master's iSCSI PBD to be plugged again")
    lab.xapi.host_returns(old, new)
    lab.boot(old)
    run.wait(lambda: settled(lab, new), 60, "old master back as Secondary and resynced")


@scenario("pool-master-handover", "planned pool.designate_new_master with both hosts up")
def pool_master_handover(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    lab.xapi.designate_new_master(new)
    run.role_changed(min(pool_conf_changed_at(old, "slave:" + new.address),
                         pool_conf_changed_at(new, "master")))
    run.wait(lambda: settled(lab, new), 30, "storage moved to %s" % new.name)


@scenario("tgtd-killed", "tgtd is killed with SIGKILL on the primary")
def tgtd_killed(lab, run):
    primary = lab.primary()
    run.role_changed()
    run.check(primary.kill_tgtd() is not None, "no tgtd was running on the primary")
    run.wait(lambda: primary.tgtd_pid() is not None and settled(lab, primary), 30,
             "tgtd restarted on %s" % primary.name)


def alerts_of(lab, kind, since):
    """(emails, XAPI messages) of alert ``kind`` since ``since`` (wall clock)."""
    mail = [m for m in lab.mail() if m["time"] >= since
            and m["alert"].strip().startswith(kind + ";")]     # the header may be folded
    name = "ISCSI_HA_" + kind.upper().replace("-", "_")
    messages = [m for m in lab.xapi.pool.messages(name)
                if _epoch(m.get("timestamp")) >= since - 1]
    return mail, messages


def _epoch(stamp):
    """XAPI's datetime (``20261122T04:40:00Z``, or an xmlrpc DateTime) as epoch seconds."""
    import calendar
    text = str(getattr(stamp, "value", stamp) or "")
    try:
        return calendar.timegm(time.strptime(text.replace("-", ""), "%Y%m%dT%H:%M:%SZ"))
    except ValueError:
        return 0


@scenario("replication-link-cut", "the replication link is cut, then restored")
def replication_link_cut(lab, run):
    primary = lab.primary()
    secondary = lab.peer(primary)
    since = time.time()
    lab.cut_replication()
    run.wait(lambda: lab.world.snapshot()["views"][lab.resource][secondary.name]["disk"]
             == "Outdated", 10, "the secondary's disk to be outdated by fencing")
    time.sleep(2 * lab.monitor_delay + 0.5)          # two agent passes on both hosts
    view = lab.world.snapshot()["views"][lab.resource]
    run.check(view[secondary.name]["role"] == "Secondary", "the secondary was promoted")
    run.check(lab.serving(primary), "the primary stopped serving while the link was down")
    status = lab.status(primary) or {}
    run.check(status.get("health") == "degraded", "the primary does not report degraded")
    lab.restore_replication()
    run.wait(lambda: settled(lab, primary), 60, "resync after the link came back")
    run.wait(lambda: all(alerts_of(lab, k, since)[0] and alerts_of(lab, k, since)[1]
                         for k in ("drbd-disconnected", "drbd-reconnected")), 20,
             "the disconnected and reconnected alerts by email and XAPI message")
    time.sleep(1.0)                                    # a duplicate would arrive by now
    for kind in ("drbd-disconnected", "drbd-reconnected"):
        mail, messages = alerts_of(lab, kind, since)
        run.check(len(mail) == 1, "%d %s emails, expected exactly 1" % (len(mail), kind))
        run.check(len(messages) == 1, "%d %s XAPI messages, expected exactly 1" % (
            len(messages), kind))


@scenario("xapi-hanging", "XAPI hangs on both hosts; the agents keep working")
def xapi_hanging(lab, run):
    primary = lab.primary()
    lab.xapi.hang(True)
    try:
        before = (lab.status(primary) or {}).get("pass", {}).get("number", 0)
        time.sleep(lab.monitor_delay * 2 + 0.5)
        after = (lab.status(primary) or {}).get("pass", {}).get("number", 0)
        run.check(after > before, "the agent's passes stopped while XAPI hung")
        run.role_changed()
        primary.kill_tgtd()
        run.wait(lambda: primary.tgtd_pid() is not None and settled(lab, primary), 30,
                 "tgtd restarted while XAPI hangs")
    finally:
        lab.xapi.hang(False)


@scenario("invalid-config", "an invalid config on the primary: its agent refuses to start")
def invalid_config(lab, run):
    host = lab.primary()
    good = host.read_config()
    host.stop_agent(signal.SIGTERM)
    events_before = len(lab.world.events(host.name))
    tgtd_before = host.tgtd_pid()
    host.write_config(good + "DRBD_VIRTUAL_IP=192.0.2.300\nMONITOR_DELAY=-1\n")
    try:
        agent = host.start_agent()
        code = run.wait(lambda: agent.poll() is not None, 20, "the agent to refuse the config")
        run.check(code is not None and agent.returncode == 2,
                  "agent exit code %r, expected 2" % agent.returncode)
        run.check(len(lab.world.events(host.name)) == events_before,
                  "the agent ran DRBD commands with an invalid config")
        run.check(host.tgtd_pid() == tgtd_before, "tgtd was touched")
        stderr = open(os.path.join(host.root, "agent.stderr")).read()
        run.check("DRBD_VIRTUAL_IP" in stderr and "MONITOR_DELAY" in stderr,
                  "the refusal does not name the bad keys")
    finally:
        host.write_config(good)
        host.agent = None
        host.start_agent()
    run.wait(lambda: settled(lab, host), 30, "the agent back with a valid config")


# --- the runner ---------------------------------------------------------------------------------

Result = collections.namedtuple("Result", "scenario passed io_pause_s time_to_serve_s "
                                "lost_writes failures notes")


def run_scenario(lab, name, settle_timeout=90):
    all_scenarios()
    found = SCENARIOS.get(name)
    if found is None:
        raise LabError("no scenario %r; known: %s" % (name, ", ".join(SCENARIOS)))
    run = ScenarioRun(lab, name)
    baseline = wait_until(lambda: next((h for h in lab.hosts if settled(lab, h)), None),
                          settle_timeout, what="a settled pool before %s" % name)
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



def all_scenarios(mediator=False):
    """Every scenario: the modules of the other issues register theirs when imported. The
    ``mediator-*`` ones (a lab with a mediator) only with ``mediator=True``, and then only
    they."""
    from iscsi_ha.lab import (scenarios_fencing, scenarios_manual,  # noqa: F401
                              scenarios_mediator, scenarios_resilience,
                              scenarios_service, scenarios_splitbrain)
    return collections.OrderedDict((name, s) for name, s in SCENARIOS.items()
                                   if name.startswith("mediator-") == bool(mediator))
