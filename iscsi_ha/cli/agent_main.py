"""``iscsi-ha``: the agent. ``run`` is the daemon (foreground); ``check`` validates a config."""
import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from iscsi_ha import __version__, config as config_mod, errors, logsetup
from iscsi_ha.errors import ExitCode

EXIT_OK, EXIT_FAIL, EXIT_USAGE = ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="configuration file (default $ISCSI_HA_CONFIG or %s)" % config_mod.DEFAULT_PATH)
    parser = argparse.ArgumentParser(prog="iscsi-ha", parents=[common],
                                     description="iscsi-ha agent: keeps DRBD + iSCSI target + "
                                     "floating IP on the pool master.")
    parser.add_argument("--version", action="version", version="iscsi-ha " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", parents=[common], help="run the agent in the foreground")
    run.add_argument("--once", action="store_true", help="run one pass and exit")
    run.add_argument("--dry-run", action="store_true",
                     help="observe and decide, print the plan, act on nothing (implies --once)")
    run.add_argument("--json", action="store_true", help="with --once: print the status document")
    sub.add_parser("check", parents=[common], help="validate the configuration file")
    return parser


def _load(path):
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        sys.stderr.write("iscsi-ha: invalid configuration %s\n" % exc)
        return None


def cmd_check(path):
    try:
        config = config_mod.load(path)
    except config_mod.ConfigError as exc:
        sys.stderr.write("invalid: %s\n" % exc)
        for warning in getattr(exc, "warnings", []):
            sys.stderr.write("  warning: %s\n" % warning)
        return EXIT_USAGE
    for warning in config.warnings:
        sys.stdout.write("warning: %s\n" % warning)
    sys.stdout.write("ok: %s is valid\n" % path)
    return EXIT_OK


def cmd_run(path, once, dry_run, as_json):
    config = _load(path)
    if config is None:
        return EXIT_USAGE
    errors.note_config(config)
    logsetup.setup(config, stderr=once or dry_run or sys.stderr.isatty())
    if config.ALLOW_UNFENCED_FAILOVER:
        logging.getLogger("iscsi-ha").warning(
            "ALLOW_UNFENCED_FAILOVER=1: a Secondary whose peer is unreachable is promoted "
            "WITHOUT proof that its data is current; writes the peer acknowledged may be lost "
            "(HA-Lizard's old behaviour). Set it to 0 and configure DRBD fencing "
            "(iscsi-cfg drbd-config) to be safe.")
    from iscsi_ha.agent import Agent, describe_observation
    from iscsi_ha.loop import Loop
    agent = Agent(config, dry_run=dry_run, witness=_witness(config))
    if once or dry_run:
        if agent.witness is not None:
            agent.witness.beat()        # one bounded heartbeat (MEDIATOR_TIMEOUT)
        record = run_once(agent, config, dry_run)
        if record is None:
            return EXIT_FAIL
        if as_json:
            document = agent.publish(record, "once") if dry_run else None
            sys.stdout.write(json.dumps(document or _read_status(config), indent=1) + "\n")
        else:
            sys.stdout.write("observed: %s\n" % describe_observation(record.observation))
            sys.stdout.write("decision: %s\n" % record.decision.reason)
            sys.stdout.write("verdict: %s%s\n" % (record.decision.verdict.value, "".join(
                "; blocked by %s" % b.describe() for b in record.decision.blockers)))
            for number, action in enumerate(record.decision.actions, 1):
                sys.stdout.write("  %d. %s\n" % (number, action.describe()))
        agent.adapters.close()
        return EXIT_OK if all(r.ok for r in record.results) else EXIT_FAIL
    from iscsi_ha.sdnotify import Notifier
    notifier = Notifier.from_environ(unset=True)
    warning = notifier.budget_warning(config.PASS_BUDGET)
    if warning:
        logging.getLogger("iscsi-ha").warning("%s", warning)
    stop = threading.Event()

    def on_signal(*_):
        notifier.stopping("stopping: signal received")
        stop.set()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    wait_for_xapi(config, stop, notifier)
    restore_manual_mode(config)
    if agent.witness is not None:
        agent.witness.start()
    loop = Loop(agent, stop)
    from iscsi_ha import wakeups as wakeups_mod
    wakeups = wakeups_mod.for_agent(config, agent.adapters.drbd)
    wakeups.install_signal_wakeup()
    loop.set_wakeups(wakeups)
    agent.adapters.vip.change_watch = wakeups.network   # no `ip` while the network is quiet
    agent.adapters.drbd.events = wakeups.events         # DRBD 9: no `drbdsetup status` a pass
    services = DaemonServices(config)
    services.attach(agent, loop)
    def on_pass(record):
        services.after_pass(record)
        tell_systemd(notifier, agent, record)
    loop.on_pass = on_pass
    loop.on_idle = notifier.ping
    loop.max_idle = notifier.watchdog_interval()   # an idle loop still pings in time
    try:
        loop.run()
    finally:
        wakeups.close()
        services.close()
        agent.adapters.close()
        if agent.witness is not None:
            agent.witness.stop()
    return EXIT_OK


def _witness(config):
    """The mediator client (iscsi_ha.witness) or None (MEDIATOR empty). A broken mediator setup
    is logged and gives a witness that never grants (no failover over a cut link on a guess)."""
    from iscsi_ha import witness
    try:
        return witness.from_config(config, alert=lambda text: logging.getLogger(
            "iscsi-ha").warning("witness: %s", text))
    except witness.MediatorError as exc:
        logging.getLogger("iscsi-ha").error("witness not usable: %s", exc)
        return witness.BrokenWitness(str(exc))


def restore_manual_mode(config):
    """A host that lost its manual-mode file (reinstalled) gets back the role the admin chose,
    from the pool's MANUAL_MODE record (bounded by XAPI_TIMEOUT; failures are logged)."""
    from iscsi_ha.cli.context import HostContext
    from iscsi_ha.cli.pool_manual import restore_local
    context = HostContext(config, say=lambda text: None)
    try:
        return restore_local(context)
    except Exception as exc:  # never a reason not to start
        logging.getLogger("iscsi-ha").warning("manual mode not restored from the pool: %s",
                                              exc)
        return None
    finally:
        context.close()


def tell_systemd(notifier, agent, record):
    """READY=1 after the first pass, WATCHDOG=1 after each later one (a no-op without
    systemd). A hung pass sends nothing, so systemd's WatchdogSec can act."""
    sentence = record.decision.reason if record is not None else "pass failed"
    if agent.passes <= 1:
        notifier.ready(sentence)
    else:
        notifier.ping(sentence)


def wait_for_xapi(config, stop, notifier, clock=time.monotonic):
    """Wait (at most XAPI_INIT_WAIT seconds) for xapi's init-complete cookie, saying so. The
    agent needs no XAPI to act (the role comes from pool.conf), so it goes on after the wait."""
    log = logging.getLogger("iscsi-ha")
    cookie = config.XAPI_INIT_COOKIE
    if not cookie or os.path.exists(cookie):
        return True
    log.info("waiting up to %.0f s for xapi to finish starting (%s)", config.XAPI_INIT_WAIT,
             cookie)
    start = clock()
    deadline = start + config.XAPI_INIT_WAIT
    while clock() < deadline and not stop.is_set():
        notifier.ping("waiting for xapi")
        if stop.wait(1.0) or os.path.exists(cookie):
            break
    if os.path.exists(cookie):
        log.info("xapi is ready")
        return True
    if stop.is_set():
        log.info("stopped while waiting for xapi to finish starting (after %.0f s of at most "
                 "%.0f s; %s still missing)", clock() - start, config.XAPI_INIT_WAIT, cookie)
        return False
    log.warning("xapi did not finish starting within %.0f s (%s missing); going on without it",
                config.XAPI_INIT_WAIT, cookie)
    return False


class DaemonServices(object):
    """What only the daemon runs beside the passes: the XAPI client and the alert workers."""

    def __init__(self, config):
        from iscsi_ha.adapters.xapi import OtherConfigCache, XapiClient
        from iscsi_ha.alerts import build_dispatcher
        self.config = config
        self.cache = OtherConfigCache.in_state_dir(config.STATE_DIR)
        self.client = XapiClient.from_config(config, cache=self.cache)
        self.dispatcher = build_dispatcher(config, self.client, self.cache)
        from iscsi_ha.pbd import PbdReplugger
        # Its own XAPI client: a hung PBD.plug must not delay the alerts' XAPI messages.
        self.replugger = PbdReplugger(lambda: XapiClient.from_config(config), self.dispatcher,
                                      config.PBD_REPLUG_INTERVAL, enabled=config.PBD_REPLUG)
        from iscsi_ha.cli.context import HostContext
        from iscsi_ha.cli.pool_manual import RecordSync
        # A manual-mode change made while XAPI was unreachable reaches the pool record later.
        self.record_sync = RecordSync(lambda: HostContext(config, say=lambda text: None))
        self.record_sync.start()

    def attach(self, agent, loop):
        from iscsi_ha.alerts import StatusAlerts, events, load_previous
        agent.alerts = StatusAlerts(self.dispatcher, previous=load_previous(
            self.config.STATUS_FILE), primary_only=self.config.REPLICATION_ALERTS_FROM ==
            "primary")
        loop.on_hung = lambda seconds, killed: self.dispatcher.submit(
            events.pass_hung(seconds, killed))

    def after_pass(self, record):
        """Per pass: only hands the observation to the replugger's thread (no XAPI here)."""
        if record is not None:
            self.replugger.observe(record.observation)

    def close(self):
        self.record_sync.close(timeout=2)
        self.replugger.close(timeout=2)
        self.dispatcher.close(5)
        self.client.close()


def run_once(agent, config, dry_run):
    """One pass; unless it is a dry run, under the pass lock (bounded), as the daemon's passes
    are, so that it can never act beside a running daemon's pass or an iscsi-cfg switch."""
    from iscsi_ha.passlock import PassLock, PassLockBusy
    if dry_run:
        return agent.run_pass("once")
    try:
        lock = PassLock.of(config, timeout=config.PASS_BUDGET)
        with lock:
            agent.lock_problem = lock.problem
            return agent.run_pass("once")
    except PassLockBusy as exc:
        sys.stderr.write("iscsi-ha: not run: %s\n" % exc)
        return None


def _read_status(config):
    from iscsi_ha.agent_status import latest
    return latest(config).document


def main(argv=None):
    """The exit code of ``iscsi-ha ARGV``; an unexpected error is one line on stderr and in the
    log, its trace in a file (:mod:`iscsi_ha.errors`)."""
    return errors.guard("iscsi-ha", _main, argv)


def _main(argv):
    args = _parser().parse_args(argv)
    path = getattr(args, "config", config_mod.default_path())
    if args.command == "check":
        return cmd_check(path)
    return cmd_run(path, args.once, args.dry_run, args.json)


def main_exit():
    sys.exit(int(main()))


if __name__ == "__main__":
    main_exit()
