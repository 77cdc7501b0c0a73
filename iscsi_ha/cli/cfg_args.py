"""The command line of ``iscsi-cfg``: every verb with its help. A usage error is one line."""
import argparse

from iscsi_ha import __version__, config as config_mod

VERBS = ("status", "log", "get", "set", "check", "manual-mode-enable", "manual-mode-disable",
         "become-primary", "become-secondary", "switchover", "split-brain", "test-alert",
         "version")


class UsageError(Exception):
    """A one-line reason; exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s: %s (see `%s --help`)" % (self.prog, message, self.prog))


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("%s is out of range: expected seconds more than 0 and "
                                         "at most 3600" % text)
    return value


def _count(text):
    if not text.isdigit() or not 0 < int(text) <= 100000:
        raise argparse.ArgumentTypeError("%r is not a line count from 1 to 100000" % text)
    return int(text)


def _timeout(parser):
    parser.add_argument("--timeout", type=_positive, default=30.0, metavar="SECONDS",
                        help="how long to wait for the agent to reach the role "
                             "(default %(default).0f)")


def _add(sub, common, name, summary, description=None):
    return sub.add_parser(name, parents=[common], help=summary,
                          description=description or summary[0].upper() + summary[1:] + ".")


def _status(sub, common):
    p = _add(sub, common, "status", "show this host's storage state and its peer's",
             "Live view of this host (and its peer through XAPI), refreshed until Ctrl+C. "
             "Exit 0 when everything is as expected, 1 when degraded, 2 when the agent is "
             "down or its status is unknown.")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true",
                   help="print the status document (keys: see iscsi-cfg(8))")
    p.add_argument("--peer", action="store_true",
                   help="with --once or --json: also ask the peer through XAPI")
    p.add_argument("--refresh", type=_positive, default=2.0, metavar="SECONDS",
                   help="live view refresh period (default %(default).0f)")


def _manual(sub, common):
    _add(sub, common, "manual-mode-enable", "turn manual mode on for this host",
         "Turn manual mode on: the agent keeps this host in the role it has now and never "
         "applies the pool role until manual-mode-disable. Recorded locally and in the "
         "pool's other-config MANUAL_MODE.")
    _add(sub, common, "manual-mode-disable", "turn manual mode off for this host",
         "Turn manual mode off; refused unless every DRBD resource is in this host's native "
         "role (pool master: Primary, pool slave: Secondary).")
    p = _add(sub, common, "become-primary", "make this host the storage primary (manual mode)",
             "Make this host the storage primary. Refused unless manual mode is on here, the "
             "peer is Secondary on every resource, the local disk is UpToDate and the "
             "floating IP is free (duplicate-address detection).")
    p.add_argument("--force", action="store_true",
                   help="promote although the peer's role is Unknown, after a confirmation")
    p.add_argument("--yes", action="store_true",
                   help="answer the --force confirmation with yes (scripts)")
    _timeout(p)
    p = _add(sub, common, "become-secondary", "make this host the storage secondary",
             "Make this host the storage secondary (turns manual mode on if it was off).")
    _timeout(p)
    p = _add(sub, common, "switchover", "move the storage from this host to the peer",
             "Run on the storage primary: check both hosts, then manual mode on both, "
             "become-secondary here and become-primary on the peer through XAPI; refused "
             "before any change when anything is not ready.")
    _timeout(p)


def build():
    common = Parser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="configuration file (default $ISCSI_HA_CONFIG or %s)"
                        % config_mod.DEFAULT_PATH)
    parser = Parser(prog="iscsi-cfg", parents=[common],
                    description="Operate iscsi-ha (DRBD + iSCSI target + floating IP) on "
                                "this host. See iscsi-cfg(8).")
    parser.add_argument("-v", "--version", action="version", version="iscsi-cfg " + __version__)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    _status(sub, common)
    p = _add(sub, common, "log", "show the agent's log",
             "Show the agent's log: LOG_FILE, else syslog lines tagged iscsi-ha, else the "
             "journal.")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=_count, default=50, metavar="N",
                   help="how many lines to show first (default %(default)s)")
    p = _add(sub, common, "get", "print the configuration (or one key)")
    p.add_argument("key", nargs="?", metavar="KEY", help="print only this key's value")
    p = _add(sub, common, "set", "change one configuration key",
             "Set KEY to VALUE in the configuration file, validated, keeping comments.")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p = _add(sub, common, "check", "check configuration, prerequisites and the peer's target",
             "Check the configuration, the tools, DRBD, tgtd and the agent, and that both "
             "hosts export the same target IQN, LUN numbers and SCSI identity.")
    p.add_argument("--local", action="store_true", help="do not ask the peer through XAPI")
    _manual(sub, common)
    p = _add(sub, common, "split-brain", "show a DRBD split brain; recover it with --keep HOST",
             "Show both hosts' side of each resource in split brain (state, data generations, "
             "changes) and what each choice would discard. With --keep HOST, recover: the "
             "other host's changes since the split are discarded, it resyncs from HOST, and "
             "the agents resume.")
    p.add_argument("resource", nargs="?", metavar="RESOURCE", help="only this resource")
    p.add_argument("--keep", metavar="HOST",
                   help="the host whose data survives (its name, or local / peer)")
    p.add_argument("--yes", action="store_true",
                   help="answer the confirmation with yes (scripts)")
    p.add_argument("--force", action="store_true",
                   help="allow keeping the side whose data is older")
    p.add_argument("--clear", action="store_true",
                   help="remove stale split-brain flags of a resource that is connected and "
                        "UpToDate on both sides")
    p = _add(sub, common, "test-alert", "send a test alert by email and as a XAPI message",
             "Send one test alert through each alert path and print what happened: every "
             "answer of the SMTP server (or why it could not be reached) and the reference of "
             "the XAPI message. Without a flag: email when MAIL_ON=1, and the XAPI message. "
             "Exit 0 only when every path tried delivered.")
    p.add_argument("--email", action="store_true", help="send the email (even with MAIL_ON=0)")
    p.add_argument("--xapi", action="store_true", help="create the XAPI message")
    _add(sub, common, "version", "print the version")
    return parser
