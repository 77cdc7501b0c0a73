"""Lab scenarios for running as a service (issue 5): the project's own SysV scripts and the
watchdog run each host's agent, as in dom0."""
import os
import signal
import time

from iscsi_ha_lab.scenario_kit import scenario


def _service(host, *args):
    return host.exec([os.path.join(host.bin, "iscsi-ha-service")] + list(args), timeout=60)


def _pid(host, name):
    try:
        with open(os.path.join(host.root, "run", name)) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def as_services(lab, run):
    """Hand both agents over to `service iscsi-ha start -w` (agent + watchdog)."""
    for host in lab.hosts:
        host.stop_agent()
        result = _service(host, "start", "-w")
        run.check(result.returncode == 0, "service iscsi-ha start -w on %s: exit %d %s" % (
            host.name, result.returncode, (result.stdout + result.stderr).strip()[-200:]))
        run.wait(lambda h=host: _pid(h, "watchdog.pid") and _pid(h, "agent.pid"), 15,
                 "agent and watchdog running on %s" % host.name)


def back_to_lab(lab, run):
    for host in lab.hosts:
        _service(host, "stop", "-w")
        host.agent = None
        host.start_agent()


@scenario("agent-killed", "kill -9 of the agent on the primary, then the secondary: the watchdog "
          "restarts it and the storage does not move")
def agent_killed(lab, run):
    as_services(lab, run)
    try:
        primary = lab.primary()
        for host in (primary, lab.peer(primary)):
            pid = _pid(host, "agent.pid")
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            config_budget = 1 + 2 + 2 * lab.monitor_delay       # WATCH_INTERVAL + pass + margin
            back = run.wait(lambda h=host: _pid(h, "agent.pid") not in (None, pid) and
                            (lab.status(h) or {}).get("updated", 0) > killed_at + 0.01,
                            config_budget + 20, "the watchdog to restart the agent on %s"
                            % host.name)
            if back:
                run.note("agent on %s restarted, status fresh %.2f s after kill -9" % (
                    host.name, time.time() - killed_at))
            run.check(lab.primary() is primary, "the storage moved after the agent died")
        for host in lab.hosts:
            # The watchdog records the restart once the start command returns (it waits for
            # the agent to settle), which can be after the new agent's first pass.
            history = os.path.join(host.root, "state", "watchdog.json")
            run.wait(lambda: os.path.exists(history), 10,
                     "the watchdog on %s to record its restart" % host.name)
    finally:
        back_to_lab(lab, run)


@scenario("service-stop", "service iscsi-ha stop (with and without -w): nothing restarts it")
def service_stop(lab, run):
    as_services(lab, run)
    try:
        host = lab.peer(lab.primary())
        result = _service(host, "stop")                      # watchdog still running
        run.check(result.returncode == 0, "service iscsi-ha stop: exit %d" % result.returncode)
        time.sleep(3.5)                                      # three watchdog intervals
        run.check(_pid(host, "agent.pid") is None, "the watchdog undid a plain stop")
        run.check(_service(host, "status").returncode == 3, "status after stop is not 3")
        _service(host, "start", "-w")
        result = _service(host, "stop", "-w")
        run.check(result.returncode == 0, "service iscsi-ha stop -w: exit %d" % result.returncode)
        time.sleep(3.5)
        run.check(_pid(host, "agent.pid") is None and _pid(host, "watchdog.pid") is None,
                  "something restarted the agent or the watchdog after stop -w")
        run.check(lab.primary() is not host and lab.serving(lab.primary()),
                  "the storage moved while the secondary's agent was stopped")
    finally:
        back_to_lab(lab, run)
