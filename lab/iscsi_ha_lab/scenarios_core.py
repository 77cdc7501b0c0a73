"""The first scenarios: pool master crash and handover, tgtd killed, the replication link cut,
XAPI hanging, an invalid configuration."""
import os
import signal
import time

from iscsi_ha_lab.scenario_kit import alerts_of, pool_conf_changed_at, scenario, settled


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
