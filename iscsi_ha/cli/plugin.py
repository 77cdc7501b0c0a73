"""The XAPI host plugin ``iscsi-ha`` (installed as /etc/xapi.d/plugins/iscsi-ha), so that a peer
can be driven with ``host.call_plugin(host, "iscsi-ha", fn, args)``.

Functions (each runs the same library code as the ``iscsi-cfg`` verb on this host and answers a
JSON string):

- ``status`` {} -> the agent's status document (as ``iscsi-cfg status --json``).
- ``become_primary`` {timeout, wait_peer} and ``become_secondary`` {timeout} -> {ok, code,
  lines, elapsed_s, host}: ``lines`` is what ``iscsi-cfg`` would have printed. No forced
  promotion. ``wait_peer`` (s): a switchover's promotion, started while the old primary
  demotes: a connected peer still Primary is no refusal, and the agent here gets that much
  longer to see it demote and promote.
- ``manual_mode`` {mode: enable|disable} -> {ok, code, lines, host}.
- ``identity`` {} -> this host's target IQN, LUNs and SCSI identities (``iscsi-cfg check``).
- ``outdate`` {resource} -> runs ``drbdadm outdate RES`` here for the peer's fence-peer handler
  (refused by DRBD on a Primary); ``fencing`` {} -> this host's fencing per ``drbdadm dump``.

Every function answers JSON, never an exception: an expected error (invalid configuration, a
refusal, a tool or XAPI that failed) is ``{ok: false, code, lines: [one line]}``; anything else
is code 70 with one line naming the file that holds the trace (:mod:`iscsi_ha.errors`).

Without XenAPIPlugin (tests, the lab) the module runs as ``python -m iscsi_ha.cli.plugin FN
[key=value ...]`` and prints the answer.
"""
import json
import math
import socket
import sys

from iscsi_ha import config as config_mod, errors
from iscsi_ha.adapters.manual import ManualModeError
from iscsi_ha.adapters.run import CommandError
from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha.cli import check_cmd, manual_ops
from iscsi_ha.cli.context import CliError, HostContext
from iscsi_ha.drbd import DrbdParseError
from iscsi_ha.errors import ExitCode

# Errors that need no trace: their sentence is the whole story.
EXPECTED = (ManualModeError, CommandError, XapiError, DrbdParseError, OSError, IOError)

MAX_WAIT = 120.0


class BadArgument(ValueError):
    pass


def _seconds(args, key="timeout", default=manual_ops.WAIT_TIMEOUT, least=1.0):
    """A number of seconds from ``args`` (default when absent), clamped to [least, MAX_WAIT];
    not a finite, non-negative number is :class:`BadArgument` (refused before anything is
    written)."""
    raw = args.get(key)
    if raw is None or raw == "":
        value = default
    else:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise BadArgument("%s=%r is not a number of seconds" % (key, raw))
        if not math.isfinite(value) or value < 0:
            raise BadArgument("%s=%r must be a finite number of seconds, 0 or more (at most "
                              "%.0f is used)" % (key, raw, MAX_WAIT))
    return min(max(value, least), MAX_WAIT)


def _flag(args, key):
    """A boolean argument: exactly true/false/1/0 (absent: false); else :class:`BadArgument`."""
    raw = args.get(key)
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise BadArgument("%s=%r is not a boolean: expected true, false, 1 or 0" % (key, raw))


def _known(args, *keys):
    unknown = sorted(k for k in args if k not in keys)
    if unknown:
        raise BadArgument("unknown argument %s (expected %s)" % (
            ", ".join(repr(k) for k in unknown), ", ".join(keys)))


def _refused(message):
    return json.dumps({"ok": False, "code": 2, "host": socket.gethostname(),
                       "lines": [message]}, sort_keys=True)


def _context(lines, config_path=None):
    config = config_mod.load(config_path or config_mod.default_path())
    errors.note_config(config)
    return HostContext(config, say=lines.append)


def _failure(code, line):
    return json.dumps({"ok": False, "code": int(code), "lines": [line], "error": line,
                       "host": socket.gethostname()}, sort_keys=True)


def answers_json(function):
    """Every plugin function: expected errors become a JSON refusal, anything else goes through
    the shared boundary (JSON with the trace file's path)."""
    def expected(session, args):
        try:
            return function(session, args if isinstance(args, dict) else {})
        except config_mod.ConfigError as exc:
            return _failure(ExitCode.USAGE, "invalid configuration %s" % exc)
        except CliError as exc:
            return _failure(exc.code, str(exc))
        except EXPECTED as exc:
            return _failure(ExitCode.FAILED, " ".join(str(exc).split()) or
                            type(exc).__name__)
    expected.__name__ = function.__name__
    return errors.guard_json("iscsi-ha-plugin", expected)


def run_verb(verb, config_path=None):
    """Run ``verb(ctx)`` collecting its lines; the JSON answer of a plugin function."""
    lines, answer = [], {"host": socket.gethostname()}
    try:
        ctx = _context(lines, config_path)
        try:
            result = verb(ctx)
        finally:
            ctx.close()
        code = 0 if result is None or isinstance(result, float) else int(result)
        if isinstance(result, float):
            answer["elapsed_s"] = round(result, 3)
    except config_mod.ConfigError as exc:
        code = 2
        lines.append("invalid configuration %s" % exc)
    except CliError as exc:
        code = exc.code
        lines.append(str(exc))
    except EXPECTED as exc:
        code = 1
        lines.append(" ".join(str(exc).split()) or type(exc).__name__)
    answer.update(ok=code == 0, code=code, lines=lines)
    return json.dumps(answer, sort_keys=True)


def status(session, args):
    from iscsi_ha.agent_status import view
    config = config_mod.load(config_mod.default_path())
    return json.dumps(view(config), sort_keys=True)


def become_primary(session, args):
    try:
        _known(args, "timeout", "wait_peer", "force")
        timeout = _seconds(args)
        wait_peer = _seconds(args, "wait_peer", 0.0, 0.0)
        if _flag(args, "force"):
            raise BadArgument("force=true is not offered through the plugin (no forced "
                              "promotion from a peer): run iscsi-cfg become-primary --force on "
                              "that host")
    except BadArgument as exc:
        return _refused("become_primary: %s" % exc)
    return run_verb(lambda ctx: manual_ops.become_primary(ctx, force=False, timeout=timeout,
                                                          wait_peer=wait_peer))


def become_secondary(session, args):
    try:
        _known(args, "timeout")
        timeout = _seconds(args)
    except BadArgument as exc:
        return _refused("become_secondary: %s" % exc)
    return run_verb(lambda ctx: manual_ops.become_secondary(ctx, timeout=timeout))


def manual_mode(session, args):
    mode = args.get("mode")
    if mode == "enable":
        return run_verb(manual_ops.enable)
    if mode == "disable":
        return run_verb(manual_ops.disable)
    return json.dumps({"ok": False, "code": 2, "host": socket.gethostname(),
                       "lines": ["manual_mode needs mode=enable or mode=disable, got %r"
                                 % (mode,)]})


def identity(session, args):
    lines = []
    ctx = _context(lines)
    try:
        return json.dumps(check_cmd.local_identity(ctx), sort_keys=True)
    finally:
        ctx.close()


def split_brain(session, args):
    from iscsi_ha.cli import splitbrain_cmd
    ctx = _context([])
    try:
        return splitbrain_cmd.plugin_answer(ctx, args)
    finally:
        ctx.close()


def outdate(session, args):
    """``outdate`` {resource}: ``drbdadm outdate RES`` here, for the peer's fence-peer handler
    (DRBD itself refuses it while this host is Primary). -> {ok, outcome, rc, detail, host}:
    outcome outdated | inconsistent | primary | connected | failed."""
    from iscsi_ha import fencing
    answer = {"host": socket.gethostname(), "ok": False}
    try:
        config = config_mod.load(config_mod.default_path())
    except config_mod.ConfigError as exc:
        answer.update(outcome="failed", rc=None, detail="invalid configuration %s" % exc)
        return json.dumps(answer, sort_keys=True)
    resource = args.get("resource", "")
    if resource not in config.DRBD_RESOURCES:
        answer.update(outcome="failed", rc=None,
                      detail="resource %r is not one of DRBD_RESOURCES" % (resource,))
        return json.dumps(answer, sort_keys=True)
    ctx = HostContext(config, say=lambda line: None)
    try:
        result = ctx.adapters.drbd.outdate(resource)
    finally:
        ctx.close()
    outcome = fencing.outdate_outcome(result.returncode, result.timed_out, result.stderr)
    answer.update(ok=outcome == "outdated", outcome=outcome, rc=result.returncode,
                  detail=result.describe())
    return json.dumps(answer, sort_keys=True)


def fencing_config(session, args):
    """``fencing`` {}: this host's DRBD fencing (from ``drbdadm dump``) and its problems."""
    from iscsi_ha import fencing
    config = config_mod.load(config_mod.default_path())
    ctx = HostContext(config, say=lambda line: None)
    try:
        resources = fencing.local_fencing(ctx.adapters.drbd, config)
    finally:
        ctx.close()
    return json.dumps({"host": socket.gethostname(), "resources": resources,
                       "handler": config.FENCE_PEER_HANDLER}, sort_keys=True)


FUNCTIONS = dict((name, answers_json(function)) for name, function in (
    ("status", status), ("become_primary", become_primary),
    ("become_secondary", become_secondary), ("manual_mode", manual_mode),
    ("identity", identity), ("split_brain", split_brain), ("outdate", outdate),
    ("fencing", fencing_config)))


USAGE = "usage: iscsi-ha-plugin {%s} [key=value ...]" % ",".join(sorted(FUNCTIONS))


def _cli(argv):
    """``FN [key=value ...]`` -> prints the answer; exit 0, or 2 on a usage error."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n(xapi calls it as /etc/xapi.d/plugins/iscsi-ha with an "
                         "XML-RPC document)\n")
        return 0
    if not argv or argv[0] not in FUNCTIONS:
        sys.stderr.write(USAGE + "\n")
        return 2
    args = dict(item.partition("=")[::2] for item in argv[1:])
    sys.stdout.write(FUNCTIONS[argv[0]](None, args) + "\n")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or not argv[0].lstrip().startswith("<"):   # xapi passes an XML-RPC document
        return _cli(argv)
    try:
        import XenAPIPlugin   # only in dom0
    except ImportError as exc:
        sys.stderr.write("iscsi-ha-plugin: cannot answer xapi: %s (XenAPIPlugin is part of "
                         "dom0's xapi)\n" % exc)
        return 2
    XenAPIPlugin.dispatch(FUNCTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
