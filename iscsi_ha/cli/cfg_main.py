"""``iscsi-cfg``: the operator's CLI. Expected errors are one line and an exit code; anything
else goes through the shared error boundary (:mod:`iscsi_ha.errors`): one line and the path of
the file holding the trace.

Exit codes (:class:`iscsi_ha.errors.ExitCode`): 0 done / everything as expected; 1 refused,
failed, or (status) degraded; 2 usage error, invalid configuration, or (status) agent down or
status unknown; 70 unexpected error (a bug).
"""
import json
import os
import sys


from iscsi_ha import __version__, agent_status, config as config_mod, errors
from iscsi_ha.adapters.manual import ManualModeError
from iscsi_ha.adapters.run import CommandError
from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha.cli import cfg_args
from iscsi_ha.cli.context import CliError, HostContext, Refused  # noqa: F401 (re-exported)
from iscsi_ha.drbd import DrbdParseError
from iscsi_ha.errors import ExitCode  # noqa: F401 (re-exported)

# Errors a verb may end with that need no trace: what they say is the whole story.
EXPECTED = (ManualModeError, CommandError, XapiError, DrbdParseError)


def _show(value):
    if isinstance(value, list):
        return ":".join(value)
    if isinstance(value, dict):
        return ",".join("%s=%s" % item for item in sorted(value.items()))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def cmd_get(ctx, args):
    config = ctx.config
    if args.key is not None:
        if not args.key or not hasattr(config, args.key) or not args.key.isupper():
            raise CliError("unknown key %s" % args.key, 2)
        ctx.say(_show(getattr(config, args.key)))
        return ExitCode.OK
    ctx.say("# iscsi-ha configuration of %s (%s)" % (os.uname()[1], config.path))
    for key in sorted(config.lines, key=lambda k: config.lines[k]):
        if hasattr(config, key):
            ctx.say("%s=%s" % (key, _show(getattr(config, key))))
    return ExitCode.OK


def cmd_status(ctx, args):
    from iscsi_ha import peer
    from iscsi_ha.cli import status_view
    document = agent_status.view(ctx.config)
    if args.json:
        if args.peer:
            theirs, error, _ = peer.PeerWatcher(ctx).fetch_once()
            document["peer"] = theirs if theirs is not None else {"error": error}
        ctx.say(json.dumps(document, indent=1, sort_keys=True))
        return agent_status.exit_code(document)
    if document.get("status_unknown"):       # one line saying why, never a partial view
        ctx.say("status unknown: %s" % document["status_unknown"])
        return ExitCode.ERROR
    watcher = snapshot = None
    if not args.once and sys.stdout.isatty():
        watcher = peer.PeerWatcher(ctx).start()
    elif args.peer:
        snapshot = peer.PeerWatcher(ctx).fetch_once()
    document = status_view.show(ctx.config, document, once=args.once, refresh=args.refresh,
                                watcher=watcher, peer=snapshot)
    return agent_status.exit_code(document)


def cmd_log(ctx, args):
    from iscsi_ha.cli import log_cmd
    return log_cmd.show(ctx.config, args.lines, args.follow, ctx.say)


def cmd_check(ctx, args):
    from iscsi_ha.cli import check_cmd
    return check_cmd.check(ctx, with_peer=not args.local)


def _confirmer(args):
    if args.yes:
        return lambda question: True
    if not sys.stdin.isatty():
        return None

    def ask(question):
        sys.stdout.write(question)
        sys.stdout.flush()
        return sys.stdin.readline(256).strip().lower() == "yes"
    return ask


def cmd_become_primary(ctx, args):
    from iscsi_ha.cli import manual_ops
    manual_ops.become_primary(ctx, force=args.force, confirm=_confirmer(args),
                              timeout=args.timeout)
    return ExitCode.OK


def cmd_become_secondary(ctx, args):
    from iscsi_ha.cli import manual_ops
    manual_ops.become_secondary(ctx, timeout=args.timeout)
    return ExitCode.OK


def cmd_manual_enable(ctx, args):
    from iscsi_ha.cli import manual_ops
    return manual_ops.enable(ctx)


def cmd_manual_disable(ctx, args):
    from iscsi_ha.cli import manual_ops
    return manual_ops.disable(ctx)


def cmd_switchover(ctx, args):
    from iscsi_ha.cli import switchover
    return switchover.switchover(ctx, timeout=args.timeout)


def cmd_split_brain(ctx, args):
    from iscsi_ha.cli import splitbrain_cmd
    return splitbrain_cmd.split_brain(ctx, args.resource, args.keep, _confirmer(args),
                                      force=args.force, clear_flags=args.clear)


def cmd_drbd_config(ctx, args):
    from iscsi_ha.cli import drbd_config_cmd
    return drbd_config_cmd.drbd_config(ctx, args.drbd_version)


def cmd_test_alert(ctx, args):
    from iscsi_ha.cli import testalert_cmd
    return testalert_cmd.test_alert(ctx, want_email=args.email, want_xapi=args.xapi)


def cmd_support_bundle(ctx, args):
    from iscsi_ha.cli import bundle_cmd
    return bundle_cmd.support_bundle(ctx, args.output)


def cmd_mediator(ctx, args):
    from iscsi_ha.cli import mediator_cmd
    if args.action == "enroll":
        if not args.bundle:
            raise CliError("mediator enroll needs the credential BUNDLE file", ExitCode.ERROR)
        return mediator_cmd.enroll(ctx, args.bundle, addresses=args.address,
                                   check=not args.no_test, config_path=args.config_path)
    if args.action == "status":
        return mediator_cmd.status(ctx, agent_status.view(ctx.config), as_json=args.json)
    if args.action == "test":
        return mediator_cmd.test(ctx)
    return mediator_cmd.reset(ctx, yes=args.yes)


VERBS = {"drbd-config": cmd_drbd_config, "get": cmd_get, "status": cmd_status, "log": cmd_log,
         "check": cmd_check,
         "become-primary": cmd_become_primary, "become-secondary": cmd_become_secondary,
         "manual-mode-enable": cmd_manual_enable, "manual-mode-disable": cmd_manual_disable,
         "switchover": cmd_switchover, "split-brain": cmd_split_brain,
         "test-alert": cmd_test_alert, "mediator": cmd_mediator,
         "support-bundle": cmd_support_bundle}


def _say_stdout(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run(args):
    path = getattr(args, "config", config_mod.default_path())
    if args.verb == "version":
        _say_stdout("iscsi-cfg %s" % __version__)
        return ExitCode.OK
    if args.verb == "set":
        from iscsi_ha.cli import set_cmd
        return set_cmd.set_value(path, args.key, args.value, _say_stdout)
    args.config_path = path
    config = config_mod.load(path)
    errors.note_config(config)
    ctx = HostContext(config, say=_say_stdout)
    try:
        return VERBS[args.verb](ctx, args)
    finally:
        ctx.close()


def _dash_hint(argv):
    """A ``set`` whose VALUE starts with '-' reads as an option: say how to pass it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "set" in argv and "--" not in argv and any(
            a.startswith("-") and a not in ("--config", "-h", "--help") for a in
            argv[argv.index("set") + 1:]):
        return ("\niscsi-cfg: a VALUE that starts with '-' must follow '--': "
                "iscsi-cfg set [--config FILE] KEY -- VALUE")
    return ""


def main(argv=None):
    """The exit code of ``iscsi-cfg ARGV``; never raises, never prints a traceback."""
    return errors.guard("iscsi-cfg", _main, argv)


def _parse(argv):
    """argparse drops every "--" among positional values (``set KEY -- --`` gave VALUE []):
    the words after the first "--" are handed to it as placeholders and put back after."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return cfg_args.build().parse_args(argv)
    cut = argv.index("--") + 1
    words = dict(("\0%d" % n, word) for n, word in enumerate(argv[cut:]))
    try:
        args = cfg_args.build().parse_args(argv[:cut] + sorted(words, key=lambda w: int(w[1:])))
    except cfg_args.UsageError as exc:
        text = str(exc)
        for placeholder, word in words.items():
            text = text.replace(placeholder, word)
        raise cfg_args.UsageError(text)
    for name, value in vars(args).items():
        if isinstance(value, str) and value in words:
            setattr(args, name, words[value])
        elif isinstance(value, list):
            setattr(args, name, [words.get(v, v) if isinstance(v, str) else v for v in value])
    return args


def _main(argv):
    try:
        args = _parse(argv)
    except cfg_args.UsageError as exc:
        sys.stderr.write("%s%s\n" % (exc, _dash_hint(argv)))
        return ExitCode.ERROR
    except SystemExit as exc:              # --help and --version
        return ExitCode.ERROR if exc.code else ExitCode.OK
    try:
        return int(_run(args))
    except config_mod.ConfigError as exc:
        sys.stderr.write("iscsi-cfg: invalid configuration %s\n" % exc)
        return ExitCode.ERROR
    except CliError as exc:
        sys.stderr.write("iscsi-cfg: %s\n" % exc)
        return exc.code
    except EXPECTED as exc:
        sys.stderr.write("iscsi-cfg: %s\n" % _one_line(exc))
        return ExitCode.FAILED
    except BrokenPipeError:                    # `iscsi-cfg log | head`: the reader is gone
        raise                                  # errors.guard ends quietly
    except (OSError, IOError) as exc:          # e.g. the state directory is not writable
        sys.stderr.write("iscsi-cfg: %s\n" % _one_line(exc))
        return ExitCode.DEGRADED
    except KeyboardInterrupt:
        sys.stderr.write("iscsi-cfg: interrupted; a role already written stays in effect\n")
        return ExitCode.DEGRADED


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__


def main_exit():
    sys.exit(int(main()))


if __name__ == "__main__":
    main_exit()
