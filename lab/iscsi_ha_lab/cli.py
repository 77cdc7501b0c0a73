"""``iscsi-ha-lab``: build the two-host lab, run failover scenarios, look inside.

    iscsi-ha-lab demo [--json FILE]     up, every scenario, a table, down
    iscsi-ha-lab scenario NAME          up, one scenario, down
    iscsi-ha-lab up                     up, then hold the lab (fake XAPI, DRBD) until Ctrl+C
    iscsi-ha-lab up --mediator [sqlite|etcd]
                                        the same with the third-site mediator (etcd: two
                                        instances over a three-member etcd); the agents need
                                        its grant to fail over (demo/scenario take it too:
                                        then the mediator-* scenarios run)
    iscsi-ha-lab exec HOST -- CMD...    run CMD in host a, b or c (client), with the host's config
    iscsi-ha-lab status [--json]        both hosts' status as their agents published it;
                                        --json: each host's DRBD view, the checker's
                                        violations and the acknowledged client writes (needs a
                                        running `up`)
    iscsi-ha-lab fault NAME [HOST]      break or heal something in a running `up` lab (names:
                                        lab/iscsi_ha_lab/faults.py, `fault list`)
    iscsi-ha-lab client write LBA TEXT  write one block through the floating IP
    iscsi-ha-lab client read LBA        read one block through the floating IP
    iscsi-ha-lab down                   remove everything a lab (even a crashed one) left behind

Options before the command: --dir DIR ($ISCSI_HA_LAB_DIR, default /run/iscsi-ha-lab) and
--prefix P ($ISCSI_HA_LAB_PREFIX, default ihl-) name the lab, so that two labs can live side by
side; `up` refuses to touch namespaces with its prefix that it did not create.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time

from rich.console import Console
from rich.table import Table

from iscsi_ha_lab.lab import DIR_ENV, PREFIX_ENV, Lab, LabError, default_dir, default_prefix
from iscsi_ha_lab.netns import NetnsError


def _table(results):
    table = Table(title="iscsi-ha lab: failover scenarios")
    table.add_column("scenario", no_wrap=True, min_width=20)
    for column in ("verdict", "longest I/O pause", "role change → serving", "lost writes"):
        table.add_column(column, justify="right" if column != "verdict" else "left")
    for r in results:
        table.add_row(r.scenario, "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]",
                      "%.3f s" % r.io_pause_s,
                      "-" if r.time_to_serve_s is None else "%.3f s" % r.time_to_serve_s,
                      str(r.lost_writes))
    return table


def as_json(results):
    return [{"scenario": r.scenario, "passed": r.passed, "io_pause_s": r.io_pause_s,
             "time_to_serve_s": r.time_to_serve_s, "lost_writes": r.lost_writes,
             "failures": r.failures, "notes": r.notes} for r in results]


def run_scenarios(lab, names, console):
    from iscsi_ha_lab.scenarios import run_scenario
    results = []
    for name in names:
        console.print("[bold]scenario[/] %s ..." % name)
        start = time.monotonic()
        result = run_scenario(lab, name)
        console.print("  %s in %.1f s%s%s" % (
            "passed" if result.passed else "FAILED", time.monotonic() - start,
            "".join("\n  - " + f for f in result.failures),
            "".join("\n  note: " + n for n in result.notes)))
        results.append(result)
    return results


def cmd_demo(args, console, names=None):
    from iscsi_ha_lab.scenarios import all_scenarios
    lab = _lab(args, drbd_version=args.drbd_version)
    # the mediator-* scenarios need a lab with a mediator, and the others one without
    names = names or list(all_scenarios(mediator=bool(lab.mediator_backend)))
    started = time.monotonic()
    lab.refuse_foreign()       # before the try: a refusal must not take anything down
    try:
        console.print("bringing the lab up in %s (prefix %s) ..." % (lab.directory, lab.prefix))
        lab.up()
        results = run_scenarios(lab, names, console)
    finally:
        lab.down()
    console.print(_table(results))
    console.print("%d scenario(s) in %.0f s" % (len(results), time.monotonic() - started))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(as_json(results), handle, indent=1)
    return 0 if all(r.passed for r in results) else 1


def _lab(args, **kwargs):
    return Lab(args.dir, prefix=args.prefix, mediator=getattr(args, "mediator", None),
               **kwargs)


def _naming(lab):
    """The options that name this lab on a command line ("" for the defaults)."""
    words = ""
    if lab.directory != os.path.abspath(default_dir()):
        words += " --dir %s" % lab.directory
    if lab.prefix != default_prefix():
        words += " --prefix %s" % lab.prefix
    return words


def cmd_scenario(args, console):
    return cmd_demo(args, console, names=[args.name])


def cmd_up(args, console):
    lab = _lab(args, drbd_version=args.drbd_version)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    lab.refuse_foreign()       # before the try: a refusal must not take anything down
    control = None
    try:
        lab.up()
        from iscsi_ha_lab.faults import ControlServer
        control = ControlServer(lab)
        control.start()
        console.print("lab up in %s (prefix %s): host a is primary. Try: iscsi-ha-lab%s exec a "
                      "-- iscsi-cfg status, iscsi-ha-lab%s fault cut-replication, "
                      "iscsi-ha-lab%s client write 0 hello. Ctrl+C takes it down." % (
                          lab.directory, lab.prefix, _naming(lab), _naming(lab), _naming(lab)))
        while not stop.wait(1.0):
            pass
    finally:
        if control is not None:
            control.stop()
        lab.down()
    return 0


def cmd_down(args, console):
    _lab(args).down()
    console.print("lab down")
    return 0


def cmd_exec(args, console):
    lab = _lab(args)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("exec needs a command after --")
    if args.host not in ("a", "b", "c", "client"):
        raise LabError("exec: host must be a, b or c (client)")
    if args.host in ("a", "b"):
        os.environ["ISCSI_HA_CONFIG"] = lab.host(args.host).config_path
    return lab.exec(args.host, argv, timeout=24 * 3600).returncode


def _request(args, payload):
    from iscsi_ha_lab.faults import FaultError, request
    try:
        return request(args.dir, payload)
    except FaultError as exc:
        raise LabError(str(exc))


def cmd_fault(args, console):
    from iscsi_ha_lab.faults import FAULTS
    if args.name == "list":
        for name in sorted(FAULTS):
            console.print("%s%s" % (name, " HOST" if FAULTS[name] else ""))
        return 0
    answer = _request(args, {"op": "fault", "name": args.name, "host": args.host})
    if not answer.get("ok"):
        raise LabError("fault %s: %s" % (args.name, answer.get("error")))
    console.print(answer["result"])
    return 0


def cmd_client(args, console):
    if args.io == "write" and args.text is None:
        raise LabError("client write needs LBA and TEXT")
    answer = _request(args, {"op": "client", "io": args.io, "lba": args.lba,
                             "text": args.text})
    print(json.dumps(answer, sort_keys=True))
    return 0 if answer.get("ok") else 1


def cmd_status(args, console):
    if args.json:
        answer = _request(args, {"op": "status"})
        if not answer.get("ok"):
            raise LabError("status: %s" % answer.get("error"))
        print(json.dumps(answer["status"], indent=1, sort_keys=True))
        return 0
    lab = _lab(args)
    table = Table(title="lab hosts")
    for column in ("host", "pool role", "DRBD", "target", "floating IP", "health", "decision"):
        table.add_column(column)
    for host in lab.hosts:
        doc = lab.status(host)
        if doc is None:
            table.add_row(host.name, "-", "-", "-", "-", "no status", "")
            continue
        drbd = ", ".join("%s %s/%s %s" % (n, s["role"], s["peer_role"], s["connection"])
                         for n, s in sorted(doc["drbd"].items()))
        target = doc.get("target") or {}
        table.add_row(host.name, doc["pool"]["role"], drbd,
                      "serving" if target.get("serving") else "stopped",
                      "local" if doc["floating_ip"]["local"] else "-", doc["health"],
                      doc["decision"]["reason"])
    console.print(table)
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="iscsi-ha-lab", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=default_dir(),
                        help="lab directory (default $%s or %%(default)s)" % DIR_ENV)
    parser.add_argument("--prefix", default=default_prefix(),
                        help="prefix of the lab's namespaces and links (default $%s or "
                             "%%(default)s)" % PREFIX_ENV)
    parser.add_argument("--drbd-version", choices=("8.4", "9"), default="8.4")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser("demo", help="run every scenario and print the table")
    demo.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    one = sub.add_parser("scenario", help="run one scenario")
    one.add_argument("name")
    one.add_argument("--json", metavar="FILE")
    up = sub.add_parser("up", help="bring the lab up and hold it until Ctrl+C")
    for each in (demo, one, up):
        each.add_argument("--mediator", nargs="?", const="sqlite", choices=("sqlite", "etcd"),
                          help="with the third-site mediator (default backend sqlite; etcd: "
                               "two instances over a three-member etcd)")
    sub.add_parser("down", help="remove the lab")
    ex = sub.add_parser("exec", help="run a command in a lab host")
    ex.add_argument("host", help="a, b or c (the client)")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    st = sub.add_parser("status", help="show both hosts' status")
    st.add_argument("--json", action="store_true",
                    help="DRBD views, violations and acknowledged writes of a running lab")
    fault = sub.add_parser("fault", help="break or heal something in a running lab")
    fault.add_argument("name", help="fault name, or 'list'")
    fault.add_argument("host", nargs="?", help="a or b")
    client = sub.add_parser("client", help="one block of I/O through the floating IP")
    client.add_argument("io", choices=("write", "read"))
    client.add_argument("lba", type=int)
    client.add_argument("text", nargs="?")
    return parser


COMMANDS = {"demo": cmd_demo, "scenario": cmd_scenario, "up": cmd_up, "down": cmd_down,
            "exec": cmd_exec, "status": cmd_status, "fault": cmd_fault, "client": cmd_client}


def main(argv=None):
    args = _parser().parse_args(argv)
    console = Console()
    try:
        return COMMANDS[args.command](args, console)
    except (LabError, NetnsError) as exc:
        sys.stderr.write("iscsi-ha-lab: %s\n" % " ".join(str(exc).split()))   # one line
        return 2


def main_exit():
    from iscsi_ha import errors
    sys.exit(errors.guard("iscsi-ha-lab", main))


if __name__ == "__main__":
    main_exit()
