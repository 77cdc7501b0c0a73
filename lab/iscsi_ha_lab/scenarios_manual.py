"""Lab scenarios for manual mode (issue 4): the HA-Lizard manual's 14-step maintenance procedure
("Example Maintenance Operations") with ``iscsi-cfg`` verbs run inside the host namespaces, and
the same moves with ``iscsi-cfg switchover``. Both reboot each host cleanly while it is the
storage secondary and end with manual mode off and the storage on the pool master.

A clean reboot of a lab host (:func:`clean_reboot`): its agent stops (SIGTERM; manual mode keeps
it secondary across the reboot), tgtd is stopped by its service script, DRBD goes down cleanly
(``drbdadm down``: the peer sees the connection close), xapi stops, the addresses and links go;
after ``down_for`` seconds the host boots (links, DRBD up and resync, agent, xapi).

The peer is reached as in a pool: ``host.call_plugin(peer, "iscsi-ha", fn, args)``. The fake
XAPI runs :func:`iscsi_ha_lab.hostexec.plugin_handler` in the lab process, which runs the plugin module inside the
peer's namespace (``python -m iscsi_ha.cli.plugin fn key=value``), so it acts there.
"""
import os
import re
import signal
import time

from iscsi_ha_lab import netns
from iscsi_ha_lab.hostexec import host_exec, register_plugins
from iscsi_ha_lab.probe import GOOD
from iscsi_ha_lab.probe_control import read_records
from iscsi_ha_lab.scenario_kit import scenario, settled

CLI_TIMEOUT = 90


def cfg(run, host, *args):
    """Run ``iscsi-cfg ARGS`` in ``host``; checks exit 0; returns (seconds, stdout)."""
    started = time.monotonic()
    proc = host_exec(host, ["iscsi-cfg"] + list(args), CLI_TIMEOUT)
    took = time.monotonic() - started
    output = (proc.stdout + proc.stderr).strip()
    run.check(proc.returncode == 0, "iscsi-cfg %s on %s: exit %d: %s" % (
        " ".join(args), host.name, proc.returncode, output[-600:]))
    return took, output


# -- reboots ---------------------------------------------------------------------------------------
def clean_reboot(lab, run, host, down_for=2.0):
    """A planned reboot of ``host`` (it must be the storage secondary)."""
    ref = lab.xapi.refs[host.name]
    host.stop_agent(signal.SIGTERM)
    host.exec([os.path.join(host.bin, "tgtd-service"), "stop"])
    down = host.exec(["drbdadm", "down", lab.resource])
    run.check(down.returncode == 0, "drbdadm down on %s: %s" % (host.name, down.stderr))
    lab.xapi.pool.endpoint(ref).stop()
    for link in ("eth0", "rep0"):
        netns.set_link(host.ns, link, False)
    run.check(_flushed(host), "the addresses of %s's eth0 did not go away" % host.name)
    lab.down_hosts.add(host.name)
    time.sleep(down_for)
    lab.boot(host)
    lab.xapi.pool.host_returns(ref)


def _flushed(host, attempts=5):
    """Remove eth0's IPv4 addresses, as a power-off does; True once none is left (bounded)."""
    for _ in range(attempts):
        netns.exec_in(host.ns, ["ip", "-4", "addr", "flush", "dev", "eth0"], check=True)
        shown = netns.exec_in(host.ns, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        if shown.returncode == 0 and not shown.stdout.strip():
            return True
        time.sleep(0.1)
    return False


def rejoined(lab, host):
    """Back as Secondary, connected, UpToDate, with its agent holding it in manual mode."""
    view = lab.world.snapshot()["views"][lab.resource][host.name]
    status = lab.status(host) or {}
    return (view["role"] == "Secondary" and view["cstate"] == "Connected"
            and view["disk"] == "UpToDate" and status.get("manual_mode") == "become_secondary"
            and status.get("agent", {}).get("pid") == (host.agent.pid if host.agent else None))


# -- measuring ---------------------------------------------------------------------------------------
def _records(lab, run):
    return read_records(os.path.join(lab.directory, "probe", run.name + ".jsonl"))


def io_pause(lab, run, start, end, timeout=30):
    """Longest gap between two successful client I/Os around a move made between ``start`` and
    ``end`` (monotonic); waits (bounded) until the client is served after ``end``."""
    deadline = time.monotonic() + timeout
    while True:
        good = sorted(r["t_end"] for r in _records(lab, run)
                      if r.get("kind") in ("write", "read") and r.get("status") == GOOD)
        if any(t >= end for t in good) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    gaps = [after - before for before, after in zip(good, good[1:])
            if after >= start and before <= end]
    return max(gaps) if gaps else None


def _reached(output):
    found = re.findall(r"(primary|secondary) reached ([0-9.]+) s", output)
    return ", ".join("%s %s s" % item for item in found)


def pool_record(lab):
    other = lab.xapi.pool.db.get("pool", lab.xapi.pool.pool_ref, "other_config")
    return dict(other).get("MANUAL_MODE", "")


_VIP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*floating IP: ip addr "
                       r"(add|del) ")


def _vip_changes(host, verb, since):
    """Wall-clock times at which ``host``'s agent ran ``ip addr add|del`` of the floating IP."""
    try:
        with open(os.path.join(host.root, "agent.log")) as handle:
            lines = handle.read().splitlines()[-400:]
    except (OSError, IOError):
        return []
    found = []
    for line in lines:
        match = _VIP_LINE.match(line)
        if match and match.group(3) == verb:
            at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + \
                int(match.group(2)) / 1000.0
            if at >= since - 1:
                found.append(at)
    return found


def _move_note(lab, run, label, started, outputs, old, new, since):
    """Note the client's longest I/O pause and the floating IP's gap for one move."""
    pause = io_pause(lab, run, started, time.monotonic())
    run.check(pause is not None, "%s: no client I/O around the move" % label)
    off, on = _vip_changes(old, "del", since), _vip_changes(new, "add", since)
    gap = "floating IP off %s -> on %s: %.2f s; " % (old.name, new.name, on[0] - off[0]) \
        if off and on else ""
    run.note("%s: longest client I/O pause %s (%sagent: %s)" % (
        label, "n/a" if pause is None else "%.2f s" % pause, gap,
        "; ".join(_reached(o) for o in outputs)))
    return pause


def _leave_manual_mode(lab, run, native, other):
    for host in (other, native):                  # either order works once roles are native
        cfg(run, host, "manual-mode-disable")
    run.check(pool_record(lab) == "", "pool record MANUAL_MODE still %r" % pool_record(lab))
    for host in lab.hosts:
        run.check(not os.path.exists(os.path.join(host.root, "state", "manual")),
                  "manual mode file left on %s" % host.name)
    run.wait(lambda: settled(lab, native), 30, "the pool back to automatic on %s" % native.name)


# -- the scenarios -----------------------------------------------------------------------------------
@scenario("planned-switchover", "maintenance procedure of the HA-Lizard manual: manual mode, "
          "move the storage, reboot each host, move back, leave manual mode (iscsi-cfg verbs)")
def planned_switchover(lab, run):
    register_plugins(lab)
    first = lab.primary()                         # the pool master, rebooted first
    second = lab.peer(first)
    run.note("steps 1 and 14 (pool HA off/on) and 3 and 8 (VM migration): no pool HA and no VMs "
             "in the lab; the client keeps its I/O running throughout")
    for host in (first, second):                                      # step 2
        cfg(run, host, "manual-mode-enable")
    run.check(pool_record(lab).count("=") == 2, "pool record MANUAL_MODE is %r" %
              pool_record(lab))
    started, since = time.monotonic(), time.time()
    _, down = cfg(run, first, "become-secondary")                     # step 4
    _, up = cfg(run, second, "become-primary")                        # step 5
    _move_note(lab, run, "move %s->%s (become-secondary, become-primary)" % (
        first.name, second.name), started, [down, up], first, second, since)
    run.wait(lambda: settled(lab, second), 10, "%s serving after step 5" % second.name)
    clean_reboot(lab, run, first)                                     # steps 6-7
    run.wait(lambda: rejoined(lab, first), 60, "%s rejoined after its reboot" % first.name)
    started, since = time.monotonic(), time.time()
    _, down = cfg(run, second, "become-secondary")                    # step 9
    _, up = cfg(run, first, "become-primary")                         # step 10
    _move_note(lab, run, "move %s->%s (become-secondary, become-primary)" % (
        second.name, first.name), started, [down, up], second, first, since)
    clean_reboot(lab, run, second)                                    # steps 11-12
    run.wait(lambda: rejoined(lab, second), 60, "%s rejoined after its reboot" % second.name)
    _leave_manual_mode(lab, run, first, second)                       # step 13


@scenario("switchover", "the same maintenance moves with `iscsi-cfg switchover` on the primary "
          "(the peer driven through the XAPI plugin)")
def switchover_scenario(lab, run):
    register_plugins(lab)
    first = lab.primary()
    second = lab.peer(first)
    started, since = time.monotonic(), time.time()
    _, out = cfg(run, first, "switchover")
    _move_note(lab, run, "switchover %s->%s" % (first.name, second.name), started, [out],
               first, second, since)
    run.check("switchover done" in out, "switchover did not report success")
    run.wait(lambda: settled(lab, second), 10, "%s serving after the switchover" % second.name)
    clean_reboot(lab, run, first)
    run.wait(lambda: rejoined(lab, first), 60, "%s rejoined after its reboot" % first.name)
    started, since = time.monotonic(), time.time()
    _, out = cfg(run, second, "switchover")
    _move_note(lab, run, "switchover %s->%s" % (second.name, first.name), started, [out],
               second, first, since)
    clean_reboot(lab, run, second)
    run.wait(lambda: rejoined(lab, second), 60, "%s rejoined after its reboot" % second.name)
    _leave_manual_mode(lab, run, first, second)
