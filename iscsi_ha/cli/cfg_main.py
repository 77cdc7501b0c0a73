"""``iscsi-cfg``: the operator's CLI. One error boundary turns exceptions into exit codes."""
import argparse
import enum
import json
import os
import sys
import time

import psutil

from iscsi_ha import __version__, config as config_mod


class ExitCode(enum.IntEnum):
    OK = 0            # everything as expected
    DEGRADED = 1      # status: degraded; other verbs: refused or failed
    ERROR = 2         # usage error, invalid config, agent down or status unknown


class CliError(Exception):
    def __init__(self, message, code=ExitCode.ERROR):
        Exception.__init__(self, message)
        self.code = code


def agent_running(document):
    pid = (document.get("agent") or {}).get("pid")
    if not pid or not psutil.pid_exists(pid):
        return False
    try:
        return "iscsi-ha" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def stale_after(config):
    """How old the status may be before it is stale: one timer period plus a hung-pass scan."""
    return config.MONITOR_DELAY + config.MONITOR_SCANRATE + 5


def read_status(config, now=None):
    """The agent's status document with ``agent_running``, ``age_s`` and ``stale`` added."""
    now = time.time() if now is None else now
    try:
        with open(config.STATUS_FILE) as handle:
            document = json.load(handle)
    except (OSError, IOError, ValueError) as exc:
        return {"health": "unknown", "agent_running": False, "stale": True,
                "problems": ["no readable status at %s: %s" % (config.STATUS_FILE, exc)]}
    age = now - float(document.get("updated", 0))
    document["age_s"] = round(age, 3)
    document["stale"] = age > stale_after(config)
    document["agent_running"] = agent_running(document)
    return document


def exit_code_for(document):
    if not document.get("agent_running") or document.get("stale"):
        return ExitCode.ERROR
    return ExitCode.OK if document.get("health") == "ok" else ExitCode.DEGRADED


def cmd_get(config, args):
    sys.stdout.write("# iscsi-ha configuration of %s (%s)\n" % (os.uname()[1], config.path))
    for key in sorted(config.lines, key=lambda k: config.lines[k]):
        if hasattr(config, key):
            sys.stdout.write("%s=%s\n" % (key, _show(getattr(config, key))))
    return ExitCode.OK


def _show(value):
    if isinstance(value, list):
        return ":".join(value)
    if isinstance(value, dict):
        return ",".join("%s=%s" % item for item in sorted(value.items()))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def cmd_status(config, args):
    document = read_status(config)
    if args.json:
        sys.stdout.write(json.dumps(document, indent=1, sort_keys=True) + "\n")
    else:
        from iscsi_ha.cli import status_view
        status_view.show(config, document, once=args.once)
    return exit_code_for(document)


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="configuration file (default $ISCSI_HA_CONFIG or %s)" % config_mod.DEFAULT_PATH)
    parser = argparse.ArgumentParser(prog="iscsi-cfg", parents=[common],
                                     description="Operate iscsi-ha on this host.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    sub.add_parser("get", parents=[common], help="print the configuration")
    status = sub.add_parser("status", parents=[common], help="show this host's storage state")
    status.add_argument("--json", action="store_true", help="print the status document")
    status.add_argument("--once", action="store_true", help="print one frame and exit")
    sub.add_parser("version", parents=[common], help="print the version")
    return parser


VERBS = {"get": cmd_get, "status": cmd_status}


def main(argv=None):
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ExitCode.ERROR if exc.code else ExitCode.OK
    if args.verb == "version":
        sys.stdout.write("iscsi-cfg %s\n" % __version__)
        return ExitCode.OK
    try:
        config = config_mod.load(getattr(args, "config", config_mod.default_path()))
        return VERBS[args.verb](config, args)
    except config_mod.ConfigError as exc:
        sys.stderr.write("iscsi-cfg: invalid configuration %s\n" % exc)
        return ExitCode.ERROR
    except CliError as exc:
        sys.stderr.write("iscsi-cfg: %s\n" % exc)
        return exc.code
    except KeyboardInterrupt:
        return ExitCode.OK


def main_exit():
    sys.exit(int(main()))


if __name__ == "__main__":
    main_exit()
