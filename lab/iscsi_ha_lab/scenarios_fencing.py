"""Lab scenarios for DRBD fencing (issue 12). Both hosts run ``fencing resource-and-stonith``
with the project's fence-peer handler (the lab's default); the DRBD double really runs it, in the
host's namespace, and it reaches the peer through the fake XAPI's plugin call. The runner checks
every time that no acknowledged write is lost and no invariant is broken; each function checks
its own story:

- fence-link-cut: the link dies; A's I/O pauses while its handler outdates B, then resumes;
  resync on heal and B UpToDate (eligible) again.
- fence-link-cut-then-crash: the link dies (B outdated), then A crashes and the pool makes B
  master: B refuses (its data is old) until A returns.
- fence-primary-crash: A crashes with the link up; the pool makes B master; B takes over (its
  handler cannot reach A, the agent's proof lets it report A fenced).
- fence-isolated-primary: A loses both networks: its I/O stays frozen, it self-fences; B is
  promoted only once the pool makes it master.
- fence-not-configured: no fencing on either host: B refuses and alerts; with
  ALLOW_UNFENCED_FAILOVER=1 it promotes and the alert names the risk.
- fence-forced-promotion: no fencing, A crashes, B refuses; the admin on B runs what the alert
  says (`iscsi-cfg manual-mode-enable`, `become-primary --force --yes`): B serves, the alert
  names the risk, and manual mode is left once A is back.
"""
import json
import os
import signal
import time

from iscsi_ha_lab.faults import apply_fault
from iscsi_ha_lab.scenario_kit import (alerts_of, fence_record, pool_conf_changed_at, scenario,
                                       settled)
from iscsi_ha_lab.hostexec import host_exec

PASSES = 2.5          # agent passes to wait when checking that something does NOT happen


def _view(lab, host):
    return lab.world.snapshot()["views"][lab.resource][host.name]


def _reason(lab, host):
    return ((lab.status(host) or {}).get("decision") or {}).get("reason", "")


def _proven(lab, host):
    fencing = (lab.status(host) or {}).get("fencing") or {}
    return lab.resource in (fencing.get("proven") or {})


def _wait_proven(lab, run, hosts, proven=True):
    run.wait(lambda: all(_proven(lab, h) == proven for h in hosts), 40,
             "fencing %s on %s" % ("proven" if proven else "unproven",
                                   " and ".join(h.name for h in hosts)))


def _hold(lab, seconds):
    time.sleep(seconds * lab.monitor_delay)


def _crash_and_make_master(lab, run, old, new):
    apply_fault(lab, "crash", old.name)
    apply_fault(lab, "make-master", new.name)
    return pool_conf_changed_at(new, "master")


def _unfenced_crash_refused(lab, run, old, new, hold=False):
    """Fencing removed: ``old`` crashes, ``new`` is made master and refuses (checked over a
    few passes with ``hold``). Returns the wall time before the crash."""
    _wait_proven(lab, run, lab.hosts, proven=False)
    since = time.time()
    _crash_and_make_master(lab, run, old, new)
    run.wait(lambda: "automatic failover is off" in _reason(lab, new), 20,
             "%s to refuse: fencing not proven" % new.name)
    if hold:
        _hold(lab, PASSES)
    run.check(_view(lab, new)["role"] == "Secondary", "%s promoted without proof" % new.name)
    return since


def _power_on(lab, run, old, new):
    apply_fault(lab, "power-on", old.name)
    run.wait(lambda: settled(lab, new), 90, "%s back, resynced, %s serving" % (old.name,
                                                                             new.name))


@scenario("fence-link-cut", "link cut: the primary's I/O pauses for the handler, then resumes")
def fence_link_cut(lab, run):
    primary = lab.primary()
    secondary = lab.peer(primary)
    _wait_proven(lab, run, lab.hosts)
    apply_fault(lab, "cut-replication")
    run.wait(lambda: _view(lab, secondary)["disk"] == "Outdated", 20,
             "the handler to outdate %s over XAPI" % secondary.name)
    run.wait(lambda: not _view(lab, primary)["suspended"], 20, "I/O on the primary to resume")
    record = fence_record(lab, primary) or {}
    run.check(record.get("exit") == 4, "fence-peer record on %s: %r" % (primary.name, record))
    run.note("fence-peer handler took %s s" % record.get("duration_s"))
    _hold(lab, PASSES)
    run.check(_view(lab, secondary)["role"] == "Secondary", "the outdated secondary was promoted")
    run.check(lab.serving(primary), "the primary does not serve while the link is down")
    apply_fault(lab, "heal-replication")
    run.wait(lambda: settled(lab, primary), 60, "resync after the link came back")
    run.check(_view(lab, secondary)["disk"] == "UpToDate", "the secondary is not UpToDate "
              "(eligible) again after the resync")


@scenario("fence-link-cut-then-crash", "link cut, then the primary crashes: B refuses")
def fence_link_cut_then_crash(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    since = time.time()
    apply_fault(lab, "cut-replication")
    run.wait(lambda: _view(lab, new)["disk"] == "Outdated", 20, "%s outdated" % new.name)
    _crash_and_make_master(lab, run, old, new)
    run.wait(lambda: _reason(lab, new).startswith("refusing:"), 20,
             "%s to refuse the promotion" % new.name)
    _hold(lab, PASSES)
    run.check(_view(lab, new)["role"] == "Secondary", "the outdated host was promoted")
    run.check((lab.status(new) or {}).get("health") == "failed", "health is not failed")
    run.check("no UpToDate data" in _reason(lab, new), "reason: %s" % _reason(lab, new))
    run.wait(lambda: alerts_of(lab, "service-blocked", since)[0], 20, "the refusal's alert")
    run.note("refusal: %s" % _reason(lab, new))
    run.role_changed()
    apply_fault(lab, "heal-replication")
    _power_on(lab, run, old, new)


@scenario("fence-primary-crash", "the primary crashes with the link up: B takes over")
def fence_primary_crash(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    _wait_proven(lab, run, [new])
    run.role_changed(_crash_and_make_master(lab, run, old, new))
    run.wait(lambda: lab.serving(new), 30, "%s serving" % new.name)
    record = fence_record(lab, new) or {}
    run.check(record.get("exit") == 7, "fence-peer record on %s: %r" % (new.name, record))
    _power_on(lab, run, old, new)


@scenario("fence-isolated-primary", "the primary is isolated: frozen, self-fenced; B promoted "
          "only when made master")
def fence_isolated_primary(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    _wait_proven(lab, run, lab.hosts)
    since = time.time()
    apply_fault(lab, "isolate", old.name)
    run.wait(lambda: _view(lab, old)["suspended"], 10, "I/O frozen on %s" % old.name)
    run.wait(lambda: (fence_record(lab, old) or {}).get("exit") == 1, 20,
             "%s's handler to fail (peer unreachable)" % old.name)
    run.check(_view(lab, old)["suspended"], "I/O resumed on %s without fencing" % old.name)
    run.check(_view(lab, new)["disk"] == "UpToDate" and _view(lab, new)["role"] == "Secondary",
              "%s changed without being made master: %r" % (new.name, _view(lab, new)))
    run.wait(lambda: old.name and lab.resource in (((lab.status(old) or {}).get("fencing") or {})
                                                   .get("self_fenced") or []), 40,
             "%s to self-fence" % old.name)
    run.check(_view(lab, old)["role"] == "Secondary" and old.tgtd_pid() is None,
              "%s self-fenced but still Primary or running tgtd" % old.name)
    run.check(_view(lab, new)["role"] == "Secondary", "%s promoted before it was made master"
              % new.name)
    run.role_changed()
    apply_fault(lab, "make-master", new.name)
    run.wait(lambda: lab.serving(new), 30, "%s serving once made master" % new.name)
    apply_fault(lab, "rejoin", old.name)
    run.wait(lambda: settled(lab, new), 90, "%s back as Secondary and resynced" % old.name)
    # A's alert could not leave while it was isolated: it arrives once it is back
    run.wait(lambda: alerts_of(lab, "self-fenced", since)[0], 60, "the self-fenced alert")


@scenario("fence-not-configured", "no fencing: B refuses and alerts; the opt-in key promotes")
def fence_not_configured(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    for host in lab.hosts:
        host.remove_fencing(lab.world)
    good = new.read_config()
    try:
        since = _unfenced_crash_refused(lab, run, old, new, hold=True)
        mail = run.wait(lambda: alerts_of(lab, "failover-refused", since)[0], 20,
                        "the failover-refused alert") or []
        run.check(any("become-primary --force" in json.dumps(m) for m in mail),
                  "the alert does not say how to accept the risk")
        run.note("refusal: %s" % _reason(lab, new))
        new.stop_agent(signal.SIGTERM)
        new.write_config(good + "ALLOW_UNFENCED_FAILOVER=1\n")
        run.role_changed()
        new.start_agent()
        run.wait(lambda: lab.serving(new), 30, "%s serving with the opt-in key" % new.name)
        risky = run.wait(lambda: alerts_of(lab, "unfenced-failover", since)[0], 20,
                         "the unfenced-failover alert") or []
        run.check(any("may be lost" in json.dumps(m) for m in risky),
                  "the alert does not name the risk")
    finally:
        new.stop_agent(signal.SIGTERM)
        new.write_config(good)
        new.start_agent()
        for host in lab.hosts:
            host.install_fencing(lab.world)
    _power_on(lab, run, old, new)
    _wait_proven(lab, run, lab.hosts)


@scenario("fence-forced-promotion", "no fencing, A crashes: B refuses; the admin's "
          "become-primary --force promotes B, and the alert names the risk")
def fence_forced_promotion(lab, run):
    old = lab.primary()
    new = lab.peer(old)
    for host in lab.hosts:
        host.remove_fencing(lab.world)
    try:
        since = _unfenced_crash_refused(lab, run, old, new)
        for argv in (["iscsi-cfg", "manual-mode-enable"],
                     ["iscsi-cfg", "become-primary", "--force", "--yes", "--timeout", "30"]):
            if argv[1] == "become-primary":
                run.role_changed()
            done = host_exec(new, argv, 90)
            run.check(done.returncode == 0, "%s: %s" % (" ".join(argv[1:2]), (
                done.stdout + done.stderr).strip()[-300:]))
        run.wait(lambda: lab.serving(new), 30, "%s serving after the forced promotion" % new.name)
        risky = run.wait(lambda: alerts_of(lab, "unfenced-failover", since)[0], 20,
                         "the unfenced-failover alert") or []
        run.check(any("forced become-primary" in json.dumps(m) for m in risky),
                  "the alert does not name the admin's forced promotion")
        run.check(not os.path.exists(os.path.join(new.root, "state", "forced-promotion.json")),
                  "the forced promotion was not cleared once done")
    finally:
        for host in lab.hosts:
            host.install_fencing(lab.world)
    _power_on(lab, run, old, new)
    done = host_exec(new, ["iscsi-cfg", "manual-mode-disable"], 90)
    run.check(done.returncode == 0, "manual-mode-disable: %s" % (done.stdout + done.stderr)
              .strip()[-300:])
    _wait_proven(lab, run, lab.hosts)
