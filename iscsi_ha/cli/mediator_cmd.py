"""``iscsi-cfg mediator enroll|status|test|reset``: this host and the third-site witness.

- enroll BUNDLE: install the credential the mediator admin issued for this host
  (``iscsi-ha-mediator node credential issue POOL NODE -o FILE``) into MEDIATOR_DIR (0700, files
  0600), check it against the mediator, and set MEDIATOR, MEDIATOR_POOL and MEDIATOR_NODE. A
  rotated credential is enrolled the same way; the running agent picks it up at its next
  connection (the old one stays valid during the overlap window).
- status: the agent's view of the witness, from its status document (no network).
- test: one live ping and heartbeat with this host's credential; prints what the mediator
  knows of the pool.
- reset: after the mediator was rolled back or reinstalled (and an admin checked which host
  has the current data), accept its generation as the new baseline.
"""
import json
import os
import time

from iscsi_ha import statepaths
from iscsi_ha.cli.context import CliError


class ExitCode(object):      # as iscsi-cfg's: 0 ok, 1 degraded/refused, 2 usage/config error
    OK, DEGRADED, ERROR = 0, 1, 2

from iscsi_ha.witness import (MediatorClient, MediatorError, parse_addresses, persist_json,
                              read_json)

BUNDLE_FORMAT = "iscsi-ha-mediator-credential/1"
FILES = tuple(zip(("ca", "cert", "key"), statepaths.MEDIATOR_CREDENTIAL))


def _read_bundle(path):
    try:
        with open(path) as handle:
            bundle = json.load(handle)
    except (OSError, IOError) as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror or exc), ExitCode.ERROR)
    except ValueError:
        raise CliError("%s is not a mediator credential bundle (not JSON)" % path,
                       ExitCode.ERROR)
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise CliError("%s is not a mediator credential bundle (format %r, expected %s)"
                       % (path, bundle.get("format") if isinstance(bundle, dict) else None,
                          BUNDLE_FORMAT), ExitCode.ERROR)
    for key in ("pool", "node", "ca", "cert", "key"):
        if not isinstance(bundle.get(key), str) or not bundle[key]:
            raise CliError("%s: the bundle has no %s" % (path, key), ExitCode.ERROR)
    return bundle


def _write_private(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _client(config, directory=None, addresses=None, pool=None, node=None):
    directory = directory or config.MEDIATOR_DIR
    try:
        ca, cert, key = statepaths.mediator_credential(directory)
        return MediatorClient(addresses or parse_addresses(config.MEDIATOR), ca, cert, key,
                              pool or config.MEDIATOR_POOL, node or config.MEDIATOR_NODE,
                              timeout=config.MEDIATOR_TIMEOUT)
    except (OSError, IOError, ValueError) as exc:
        raise CliError("mediator credential in %s unusable: %s" % (directory, exc))


def enroll(ctx, path, addresses=None, check=True, config_path=None):
    config = ctx.config
    bundle = _read_bundle(path)
    addrs = addresses or bundle.get("addresses") or []
    if isinstance(addrs, str):
        addrs = [addrs]
    try:
        parsed = parse_addresses(",".join(addrs))
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.ERROR)
    if not parsed:
        raise CliError("no mediator address in the bundle: give --address HOST[:PORT]",
                       ExitCode.ERROR)
    directory = config.MEDIATOR_DIR
    staging = directory + ".new"
    for d in (staging, directory):
        if not os.path.isdir(d):
            os.makedirs(d, 0o700)
        os.chmod(d, 0o700)
    for key, name in FILES:
        _write_private(os.path.join(staging, name), bundle[key])
    if check:
        client = _client(config, staging, parsed, bundle["pool"], bundle["node"])
        try:
            answer = client.call("heartbeat")
        except MediatorError as exc:
            for _key, name in FILES:
                os.unlink(os.path.join(staging, name))
            os.rmdir(staging)
            raise CliError("credential NOT installed: %s" % exc)
        finally:
            client.close()
        ctx.say("mediator %s accepts %s of pool %s (generation %s)" % (
            client.address, bundle["node"], bundle["pool"], answer.get("gen")))
    for _key, name in FILES:
        os.rename(os.path.join(staging, name), os.path.join(directory, name))
    os.rmdir(staging)
    ctx.say("credential %s installed in %s" % (bundle.get("cred_id", "?"), directory))
    from iscsi_ha.cli import set_cmd
    path = config_path or config.path
    for key, value in (("MEDIATOR_POOL", bundle["pool"]), ("MEDIATOR_NODE", bundle["node"]),
                       ("MEDIATOR", ",".join("%s:%d" % a for a in parsed))):
        set_cmd.set_value(path, key, value, ctx.say)
    return ExitCode.OK


def status(ctx, document, as_json=False):
    w = (document or {}).get("witness")
    if as_json:
        ctx.say(json.dumps(w, indent=1, sort_keys=True))
        return ExitCode.OK if w and w.get("reachable") else ExitCode.DEGRADED
    if not ctx.config.MEDIATOR:
        ctx.say("no mediator configured (MEDIATOR is empty)")
        return ExitCode.OK
    if not w:
        ctx.say("the agent has not published a witness state yet (is it running?)")
        return ExitCode.ERROR
    ctx.say("mediator %s: %s" % (w.get("address") or ctx.config.MEDIATOR,
                                 "reachable" if w.get("reachable") else
                                 "UNREACHABLE (%s)" % w.get("error")))
    ctx.say("  pool %s, this node %s; generation %s (highest seen %s)" % (
        w.get("pool"), w.get("node"), w.get("generation"), w.get("max_generation_seen")))
    ctx.say("  primary %s; golden %s; outdated %s; peer %s %s" % (
        w.get("primary") or "-", ", ".join(w.get("eligible") or []) or "-",
        ", ".join(w.get("outdated") or []) or "-", w.get("peer") or "?",
        "alive at the mediator" if w.get("peer_alive") else "NOT seen by the mediator"))
    ctx.say("  automatic failover: %s" % ("on" if w.get("auto_failover") else
                                          "OFF (%s)" % w.get("auto_failover_reason")))
    if w.get("rolled_back"):
        ctx.say("  ROLLED BACK: %s" % w["rolled_back"])
    if w.get("deposed"):
        ctx.say("  DEPOSED: the mediator made %s primary" % w.get("primary"))
    ok = w.get("reachable") and w.get("auto_failover") and not w.get("rolled_back")
    return ExitCode.OK if ok else ExitCode.DEGRADED


def test(ctx):
    config = ctx.config
    if not config.MEDIATOR:
        raise CliError("no mediator configured (MEDIATOR is empty): iscsi-cfg mediator enroll "
                       "BUNDLE first", ExitCode.ERROR)
    client = _client(config)
    failures = 0
    try:
        for _ in range(len(client.addresses)):
            where = client.address
            t0 = time.monotonic()
            try:
                client.call("ping")
                answer = client.call("heartbeat")
            except MediatorError as exc:
                ctx.say("%s: FAILED: %s" % (where, exc))
                failures += 1
                continue
            ms = (time.monotonic() - t0) * 1000
            tls = client._sock.version() if client._sock is not None else "?"
            ctx.say("%s: ok (%s, ping + heartbeat %.0f ms): generation %s, primary %s, "
                    "golden %s, peer %s %s, can grant: %s" % (
                        where, tls, ms, answer.get("gen"), answer.get("primary") or "-",
                        ",".join(answer.get("eligible") or []) or "-", answer.get("peer"),
                        "alive" if answer.get("peer_alive") else "not seen",
                        "yes" if answer.get("can_grant") else answer.get("cannot_grant_reason")))
            client._next_address()
    finally:
        client.close()
    return ExitCode.OK if failures == 0 else ExitCode.DEGRADED


def reset(ctx, yes=False):
    config = ctx.config
    state_file = statepaths.mediator_state(config.MEDIATOR_DIR)
    saved = read_json(state_file)
    if not saved.get("rolled_back"):
        ctx.say("nothing to reset: no rollback recorded (highest generation seen %s)"
                % saved.get("max_gen"))
        return ExitCode.OK
    client = _client(config)
    try:
        answer = client.call("heartbeat")
    except MediatorError as exc:
        raise CliError("cannot reset while the mediator is unreachable: %s" % exc)
    finally:
        client.close()
    if not yes:
        raise CliError("the mediator is at generation %s, this host saw %s before; check which "
                       "host holds the current data, then run again with --yes"
                       % (answer.get("gen"), saved.get("max_gen")))
    persist_json(state_file, {"max_gen": int(answer.get("gen") or 0), "rolled_back": ""})
    ctx.say("baseline reset to generation %s; automatic failover resumes with the next "
            "heartbeat" % answer.get("gen"))
    return ExitCode.OK
