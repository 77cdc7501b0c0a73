#!/usr/bin/env python3
"""Benchmark: each storage move done by the bare commands (the floor) and by the agent, in one
run on this machine, and the ratio between them.

Run as root, under the lab lock:  flock /work/lab.lock .venv/bin/python bench/floor.py
[--rounds N] [--json FILE] [--drbd-version 8.4|9] [--moves switchover,handover,crash]

Moves, each ``--rounds`` times (alternating direction):
- planned switchover: floor = the bare demote on the primary then the bare promote on the
  peer; agent = ``iscsi-cfg switchover`` on the primary (role change = the command starts);
- pool-master handover: floor = the same bare sequence; agent = pool.designate_new_master
  (role change = the first pool.conf rewrite);
- master crash: the primary crashes (its xapi too) and the pool makes the survivor master
  (role change = its pool.conf says so); floor = then the bare promote on the survivor; agent =
  its agent's own promotion.
Bare demote: floating IP off, target stop, DRBD Secondary. Bare promote: DRBD Primary, target
with its LUN, floating IP, one gratuitous ARP (not waited for). Both lab hosts run DRBD fencing
(resource-and-stonith with the project's fence-peer handler), so DRBD runs the handler when a
disconnected survivor is promoted (``drbd_set_role()``: ``SS_PRIMARY_NOP``): the bare promote
leaves the same promotion grant the agent leaves (STATE_DIR/promote-grant-RES, removed after),
so the floor pays the handler's run as the agent does, and no more.

Two probes run in the client namespace for every move: a fast one (command deadline 0.1 s,
connect 0.02 s, 2 ms between attempts: the server-side pause to the millisecond) and a patient one
(command deadline 30 s: its connection dies only when the network ends it, as an open-iscsi
connection would). The open-iscsi model (:mod:`iscsi_ha_lab.client_model`) replays each
outage for an XCP-ng host with default and with advised initiator settings.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lab"))

from iscsi_ha_lab import client_model  # noqa: E402
from iscsi_ha_lab.lab import Lab, LabError, wait_until  # noqa: E402
from iscsi_ha_lab.probe_control import ProbeRun  # noqa: E402
from iscsi_ha_lab.scenarios import pool_conf_changed_at, settled  # noqa: E402

MOVES = ("switchover", "handover", "crash")
# A write every ~2 ms (fast) and ~10 ms (patient): fine enough, and light enough that two
# probes do not starve the agents of a 2-core machine.
FAST = dict(io_timeout=0.1, connect_timeout=0.02, retry_sleep=0.002, lba_offset=0, blocks=2048,
            pace=0.002)
PATIENT = dict(io_timeout=30.0, connect_timeout=0.3, retry_sleep=0.002, lba_offset=4096,
               blocks=2048, pace=0.01)

DEMOTE = """set -e
ip addr del {vip}/24 dev eth0
{bin}/tgtd-service stop
drbdadm secondary {res}
"""
PROMOTE = """set -e
printf '{{"time": %s, "reason": "bench floor"}}' "$(date +%s.%N)" > {grant}
drbdadm primary {res}
rm -f {grant}
{bin}/tgtd-service start
tgtadm -C {ctl} --lld iscsi --op new --mode target --tid 1 -T {iqn}
tgtadm -C {ctl} --lld iscsi --op new --mode logicalunit --tid 1 --lun {lun} -b {dev}
tgtadm -C {ctl} --lld iscsi --op bind --mode target --tid 1 -I ALL
ip addr add {vip}/24 dev eth0
arping -q -U -I eth0 -c 1 {vip} </dev/null >/dev/null 2>&1 &
"""


class BenchError(Exception):
    pass


# --- the floor: bare commands ---------------------------------------------------------------------
def _script(lab, host, template):
    return template.format(vip=lab.vip, bin=host.bin, res=lab.resource, ctl=host.ctl,
                           iqn=lab.iqn, lun=lab.lun,
                           dev=lab.world.device_path(host.name, lab.resource),
                           grant=os.path.join(host.root, "state",
                                              "promote-grant-" + lab.resource))


STEP_TIMES = []


def bare(lab, host, template):
    script = "".join(line + "\necho \"$(date +%s.%N) " + line.split()[0] + "\"\n"
                     if line and not line.startswith("set ") else line + "\n"
                     for line in _script(lab, host, template).split("\n"))
    proc = host.exec(["sh", "-c", "echo \"$(date +%s.%N) start\"\n" + script], timeout=30)
    stamps = [line.split(None, 1) for line in proc.stdout.split("\n") if line.strip()]
    STEP_TIMES.append(["%s %.3f" % (what, float(t) - float(prev))
                       for (prev, _), (t, what) in zip(stamps, stamps[1:])])
    if proc.returncode != 0:
        raise BenchError("bare %s on %s failed: %s" % (
            "demote" if template is DEMOTE else "promote", host.name,
            (proc.stdout + proc.stderr).strip()[-400:]))


def drbd_settled(lab, primary):
    views = lab.world.snapshot()["views"][lab.resource]
    mine, theirs = views[primary.name], views[lab.peer(primary).name]
    return (mine["role"] == "Primary" and theirs["role"] == "Secondary"
            and mine["cstate"] == "Connected" and mine["disk"] == theirs["disk"] == "UpToDate")


def floor_move(lab, kind, old):
    new = lab.peer(old)
    if kind in ("switchover", "handover"):
        t_change = time.monotonic()
        bare(lab, old, DEMOTE)
        bare(lab, new, PROMOTE)
        return new, t_change, None
    # As in the agent's move: the host and its xapi die, the pool makes the survivor master
    # (its xapi restarts), and the role change is the survivor's pool.conf saying so.
    lab.crash(old)
    lab.xapi.master_dies(old)
    # not waited for: the bare promote starts at the role change, as the agent may
    pool = lab.xapi.pool
    transition = pool.emergency_transition_to_master(lab.xapi.refs[new.name], wait=False)
    t_change = pool_conf_changed_at(new, "master")
    bare(lab, new, PROMOTE)

    def recover():
        # the old master is recovered by the new one once its xapi restarted as master: a
        # floor move that ends within the fuse must wait for it
        if transition is not None:
            transition.join(pool.fuse_delay + pool.restart_delay + 15.0)
        lab.xapi.host_returns(old, new)
        lab.boot(old, agent=False)            # powered on, no agent
    return new, t_change, recover


# --- the agent -----------------------------------------------------------------------------------
def _cfg(host, *args):
    from iscsi_ha_lab.hostexec import host_exec
    proc = host_exec(host, ["iscsi-cfg"] + list(args), 90)
    if proc.returncode != 0:
        raise BenchError("iscsi-cfg %s on %s: exit %d: %s" % (
            " ".join(args), host.name, proc.returncode, (proc.stdout + proc.stderr)[-400:]))
    return proc.stdout


def agent_move(lab, kind, old):
    new = lab.peer(old)
    if kind == "switchover":
        t_change = time.monotonic()
        _cfg(old, "switchover")
        return new, t_change, None
    if kind == "handover":
        lab.xapi.designate_new_master(new)
        t_change = min(pool_conf_changed_at(old, "slave:" + new.address),
                       pool_conf_changed_at(new, "master"))
        return new, t_change, None
    lab.crash(old)
    lab.xapi.drop_pbd(new)
    lab.xapi.master_dies(old)
    lab.xapi.emergency_transition(new)
    t_change = pool_conf_changed_at(new, "master")

    def recover():
        lab.xapi.host_returns(old, new)
        lab.boot(old)
    return new, t_change, recover


# --- one measured move ---------------------------------------------------------------------------
def measure(lab, kind, old, mover, serving, index):
    fast = ProbeRun(lab, "%s-%d-fast" % (kind, index), **FAST)
    patient = ProbeRun(lab, "%s-%d-patient" % (kind, index), **PATIENT)
    recover = None
    for probe in (fast, patient):
        probe.start()
    try:
        for probe in (fast, patient):
            probe.wait_for_io(20)
        time.sleep(0.3)
        new, t_change, recover = mover(lab, kind, old)
        wait_until(lambda: serving(new), 30, what="%s serving" % new.name)
        if not (fast.wait_for_io_after(time.monotonic(), 30)
                and patient.wait_for_io_after(time.monotonic(), 60)):
            raise BenchError("a probe was not served again after the %s" % kind)
        time.sleep(0.2)
    finally:
        for probe in (fast, patient):
            probe.stop()
    fast_report, patient_report = fast.analyse(), patient.analyse()
    lost = (fast_report.lost_writes or 0) + (patient_report.lost_writes or 0)
    model = client_model.model_report(fast._records(), patient._records(),
                                      (client_model.XCPNG_DEFAULT, client_model.ADVISED))
    row = {"move": kind, "from": old.name, "to": new.name,
           "pause_s": round(fast_report.longest_pause_s or 0.0, 4),
           "serve_s": _round(fast.time_to_serve(t_change)),
           "tcp_client_pause_s": round(patient_report.longest_pause_s or 0.0, 4),
           "lost_writes": lost,
           "open_iscsi_default_s": model.get(client_model.XCPNG_DEFAULT.name, {}).get("pause_s"),
           "open_iscsi_advised_s": model.get(client_model.ADVISED.name, {}).get("pause_s"),
           "open_iscsi": model}
    return new, row, recover


def _round(value):
    return None if value is None else round(value, 4)


def run_phase(lab, label, moves, rounds, mover, serving, settle, log):
    rows = []
    current = lab.primary()
    for kind in moves:
        for index in range(rounds):
            wait_until(lambda: settle(current), 90, what="a settled pool before %s" % kind)
            steps = len(STEP_TIMES)
            new, row, recover = measure(lab, kind, current, mover, serving, index)
            row["who"], row["steps"] = label, STEP_TIMES[steps:]
            rows.append(row)
            log("%-6s %-10s %s->%s  pause %.3f s  serve %s  tcp-client %.3f s  "
                "open-iscsi default %s / advised %s  lost %d" % (
                    label, kind, row["from"], row["to"], row["pause_s"],
                    "-" if row["serve_s"] is None else "%.3f s" % row["serve_s"],
                    row["tcp_client_pause_s"], row["open_iscsi_default_s"],
                    row["open_iscsi_advised_s"], row["lost_writes"]))
            for steps in row["steps"]:
                log("         steps: " + ", ".join(steps))
            if recover is not None:
                recover()
            current = new
    return rows


# --- the table -----------------------------------------------------------------------------------
FIGURES = (("pause_s", "client I/O pause"), ("serve_s", "role change -> serving"),
           ("tcp_client_pause_s", "TCP client pause"),
           ("open_iscsi_default_s", "open-iscsi default"),
           ("open_iscsi_advised_s", "open-iscsi advised"))


def summarise(rows):
    out = {}
    for kind in MOVES:
        for key, _ in FIGURES:
            for who in ("floor", "agent"):
                values = [r[key] for r in rows if r["move"] == kind and r["who"] == who
                          and r[key] is not None]
                if values:
                    out.setdefault(kind, {}).setdefault(key, {})[who] = {
                        "median": round(statistics.median(values), 4),
                        "worst": round(max(values), 4), "n": len(values)}
            figures = out.get(kind, {}).get(key, {})
            if "floor" in figures and "agent" in figures:
                for stat in ("median", "worst"):
                    floor = figures["floor"][stat]
                    figures["ratio_" + stat] = round(figures["agent"][stat] / floor, 2) \
                        if floor > 0 else None
    return out


def table(summary):
    lines = ["%-11s %-24s %17s %17s %13s" % ("move", "figure", "floor med/worst",
                                              "agent med/worst", "ratio med/w")]
    for kind in MOVES:
        for key, title in FIGURES:
            f = summary.get(kind, {}).get(key)
            if not f:
                continue
            cell = lambda who: "%7.3f/%7.3f" % (f[who]["median"], f[who]["worst"]) \
                if who in f else "%15s" % "-"
            ratio = "%5s/%5s" % (f.get("ratio_median"), f.get("ratio_worst")) \
                if "ratio_median" in f else "-"
            lines.append("%-11s %-24s %17s %17s %13s" % (kind, title, cell("floor"),
                                                         cell("agent"), ratio))
    return "\n".join(lines)


def override(lab, assignments):
    """Append KEY=VALUE lines to both agents' configs (the last assignment wins) and restart
    the agents."""
    for host in lab.hosts:
        host.write_config(host.read_config() + "".join(a + "\n" for a in assignments))
        host.stop_agent()
        host.start_agent()
    wait_until(lambda: next((h for h in lab.hosts if settled(lab, h)), None), 60,
               what="a settled pool after the config override")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--drbd-version", choices=("8.4", "9"), default="8.4")
    parser.add_argument("--moves", default=",".join(MOVES))
    parser.add_argument("--only", choices=("floor", "agent"), help="run one side only")
    parser.add_argument("--dir", help="lab directory (default: a fresh temporary one)")
    parser.add_argument("--prefix", default="ihbf-", help="the lab's name prefix (%(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an agent config key (what-if runs), repeatable")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-floor needs root (network namespaces, tgtd)")
    moves = [m for m in args.moves.split(",") if m]
    unknown = sorted(set(moves) - set(MOVES))
    if unknown:
        sys.exit("unknown move(s) %s; known: %s" % (", ".join(unknown), ", ".join(MOVES)))

    def log(line):
        print(line, flush=True)
    rows, started = [], time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iscsi-ha-floor.") as tmp:
        lab = Lab(args.dir or tmp, drbd_version=args.drbd_version, prefix=args.prefix)
        try:
            if args.only != "agent":
                lab.up(start_agents=False)
                bare(lab, lab.hosts[0], PROMOTE)
                rows += run_phase(lab, "floor", moves, args.rounds, floor_move,
                                  lambda h: lab.primary() is h,
                                  lambda h: drbd_settled(lab, h), log)
                lab.down()
            if args.only != "floor":
                lab.up()
                if args.set:
                    override(lab, args.set)
                rows += run_phase(lab, "agent", [m for m in moves if m == "switchover"],
                                  args.rounds, agent_move, lab.serving,
                                  lambda h: settled(lab, h), log)
                if "switchover" in moves:   # back to the native roles: manual mode off
                    current = lab.primary()
                    if current is not lab.hosts[0]:          # an odd number of switchovers
                        _cfg(current, "switchover")
                        wait_until(lambda: settled(lab, lab.hosts[0]), 60,
                                   what="the storage back on the pool master")
                    for host in lab.hosts:
                        _cfg(host, "manual-mode-disable")
                rows += run_phase(lab, "agent", [m for m in moves if m != "switchover"],
                                  args.rounds, agent_move, lab.serving,
                                  lambda h: settled(lab, h), log)
        except (BenchError, LabError) as exc:
            log("bench-floor: %s" % exc)
            return 1
        finally:
            lab.down()
    summary = summarise(rows)
    print(table(summary))
    print("%d moves in %.0f s (DRBD %s)" % (len(rows), time.monotonic() - started,
                                            args.drbd_version))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"drbd_version": args.drbd_version, "rounds": args.rounds,
                       "overrides": args.set,
                       "summary": summary, "moves": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
