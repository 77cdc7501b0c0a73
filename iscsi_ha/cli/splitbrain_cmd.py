"""``iscsi-cfg split-brain``: show both sides of a split brain, and recover it with an explicit
choice of the survivor (``--keep HOST``), after a confirmation naming what will be discarded.

The library is :mod:`iscsi_ha.splitbrain`; the peer's share runs there through the XAPI plugin
(``split_brain`` function), so one command on either host recovers the pool.
"""
import json
import socket

from iscsi_ha import splitbrain
from iscsi_ha import peer as peer_mod
from iscsi_ha.cli.context import CliError, Refused

# A victim step may wait for the peer agent's pass lock (30 s) and run three DRBD commands.
PEER_STEP_TIMEOUT = 120.0


def _release(adapters):
    """Before a Primary victim is demoted: floating IP off, target stopped (the demote order)."""
    def release(resource):
        adapters.vip.remove()
        adapters.target.stop()
    return release


def _peer_facts(ctx):
    """The peer's facts through the plugin, else its published status, else None."""
    try:
        return peer_mod.call(ctx, "split_brain", {"action": "facts"}, PEER_STEP_TIMEOUT)
    except peer_mod.PeerError as exc:
        ctx.say("note: %s; using what DRBD shows here" % exc)
        return None


def _peer_part(ctx, resource):
    def part(action):
        answer = peer_mod.call(ctx, "split_brain", {"action": action, "resource": resource},
                               PEER_STEP_TIMEOUT)
        if not answer.get("ok", True):
            raise CliError("%s on %s: %s" % (action, answer.get("host", "the peer"),
                                             answer.get("error", "failed")))
        return answer
    return part


def _keeps_local(keep, local_host, peer_host):
    if keep in ("local", "this", local_host):
        return True
    if keep in ("peer", peer_host):
        return False
    raise CliError("--keep %s: name this host (%s) or the peer (%s)" % (
        keep, local_host, peer_host), code=2)


def clear(ctx, resource):
    """Remove stale split-brain flags (e.g. a recovery interrupted during its resync) once the
    resource is connected and UpToDate on both sides: then the agents act on it again."""
    states, error = ctx.drbd_states()
    state = states.get(resource)
    if error or state is None or not (state.is_connected and not state.is_syncing and
                                      state.disk == state.peer_disk == "UpToDate"):
        raise Refused("%s is %s: the flags stay until it is connected and UpToDate on both "
                      "sides" % (resource, error or (state.describe() if state else "unknown")))
    cleared = splitbrain.clear_flag(ctx.config.STATE_DIR, resource)
    try:
        _peer_part(ctx, resource)("clear-flag")
    except (CliError, peer_mod.PeerError) as exc:
        raise CliError("cleared here (%s); the peer's flag is not cleared: %s" % (cleared, exc))
    ctx.say("%s: split-brain flags cleared on both hosts" % resource)
    return 0


def split_brain(ctx, resource=None, keep=None, confirm=None, force=False, clear_flags=False):
    """Show the split brain; with ``keep``, recover it. Exit 0 when nothing is (left) in split
    brain, 1 when it is and no survivor was chosen, or when DRBD cannot be read here."""
    config = ctx.config
    if resource is not None and resource not in config.DRBD_RESOURCES:
        raise CliError("no DRBD resource %r here (DRBD_RESOURCES: %s)" % (
            resource, ":".join(config.DRBD_RESOURCES)), code=2)
    if clear_flags:
        return clear(ctx, resource or config.DRBD_RESOURCES[0])
    host = socket.gethostname()
    facts = _peer_facts(ctx)
    inspection = splitbrain.inspect(config, ctx.adapters.drbd, facts, host)
    ctx.say(splitbrain.format_report(inspection))
    if inspection.reports:
        ctx.say(witness_view(ctx.config))
    chosen = [r for r in inspection.reports if resource in (None, r.resource)]
    unknown = [name for name in inspection.unknown if resource in (None, name)]
    if not chosen:
        if unknown:
            raise CliError("DRBD state of %s cannot be read here, so whether it is in split "
                           "brain is unknown; nothing was changed" % ", ".join(unknown))
        return 0
    if keep is None:
        ctx.say("\nTo recover, choose the host whose data survives: iscsi-cfg split-brain "
                "--keep %s (or --keep %s)" % (inspection.local_host, inspection.peer_host))
        return 1
    keep_local = _keeps_local(keep, inspection.local_host, inspection.peer_host)
    if facts is None:
        raise Refused("the peer cannot be reached through XAPI: a recovery needs both hosts "
                      "(and the peer's own view of its data); nothing was changed")
    if confirm is None:
        raise Refused("recovery discards data: run it in a terminal to confirm, or add --yes")
    for report in chosen:
        try:
            outcome = splitbrain.recover(
                config, ctx.adapters.drbd, report.resource, keep_local, confirm,
                _peer_part(ctx, report.resource), peer_status=facts, host=host,
                progress=lambda state: ctx.say("  %s" % state.describe()),
                release_device=_release(ctx.adapters), force=force)
        except splitbrain.SplitBrainRefused as exc:
            raise Refused(str(exc))
        except splitbrain.SplitBrainError as exc:
            raise CliError(str(exc))
        ctx.say("%s recovered: kept %s's data, now %s" % (
            outcome["resource"], outcome["kept"], outcome["state"]))
    return 0


def witness_view(config):
    """What the mediator knows about who was deposed, from the agent's status document."""
    if not getattr(config, "MEDIATOR", ""):
        return "mediator: none configured, so nothing is healed automatically"
    try:
        from iscsi_ha.files import read_json
        w = (read_json(config.STATUS_FILE) or {}).get("witness") or {}
    except (IOError, OSError, ValueError):
        w = {}
    if not w.get("reachable"):
        return ("mediator: no current answer (%s): it cannot tell which side was deposed; "
                "nothing is healed automatically" % (w.get("error") or "agent status unknown"))
    who = "mediator: %s is primary at generation %s, outdated: %s" % (
        w.get("primary") or "nobody", w.get("generation"),
        ", ".join(w.get("outdated") or []) or "none")
    if w.get("deposed"):
        return who + "; this host was deposed: the agent discards its side and resyncs " \
            "from the peer automatically"
    if w.get("peer_outdated"):
        return who + "; the peer was deposed: it is healed on the peer, this host reconnects"
    return who + "; it does not say which side was deposed: nothing is healed automatically"


def plugin_answer(ctx, args):
    """The XAPI plugin's ``split_brain`` function: this host's share, as a JSON string."""
    action = args.get("action", "facts")
    resource = args.get("resource") or (ctx.config.DRBD_RESOURCES[0] if action != "facts"
                                        else None)
    try:
        answer = splitbrain.local_part(ctx.config, ctx.adapters.drbd, resource, action,
                                       release_device=_release(ctx.adapters))
        answer.setdefault("ok", True)
    except splitbrain.SplitBrainError as exc:
        answer = {"ok": False, "refused": isinstance(exc, splitbrain.SplitBrainRefused),
                  "error": str(exc)}
    return json.dumps(answer, sort_keys=True)
