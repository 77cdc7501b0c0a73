"""``iscsi-cfg switchover``: the planned move of the storage from this host (the storage
primary) to its peer, as one command.

Everything is checked before anything changes: this host serves (every resource Primary,
Connected, UpToDate on both sides, target serving, floating IP local), the peer answers through
the XAPI plugin and is Secondary, connected and UpToDate with its agent running, no split brain
is flagged, and manual mode does not already pull either host the other way. Then: manual mode
on both hosts, ``become-secondary`` here, ``become_primary`` on the peer through
``host.call_plugin`` (which waits for the peer's agent to serve). If the peer does not take the
storage, this host takes it back.
"""
import threading
import time

from iscsi_ha import model, preflight
from iscsi_ha import peer as peer_mod
from iscsi_ha.cli import manual_ops
from iscsi_ha.cli.context import CliError, Refused
from iscsi_ha.cli.manual_ops import bullet

PLUGIN_MARGIN = 15.0   # seconds the XAPI call may outlive the peer's own wait


def local_problems(ctx):
    """Why this host is not ready to hand the storage over (:mod:`iscsi_ha.preflight`)."""
    states, error = ctx.drbd_states()
    return preflight.switchover_local(ctx.status(), ctx.manual_mode(), ctx.split_brain_flags(),
                                      states, error, ctx.config.DRBD_RESOURCES)


def _say_peer(ctx, answer):
    for line in answer.get("lines") or []:
        ctx.say("  peer: %s" % line)


def _take_back(ctx, why, timeout, promotion=None):
    ctx.say("the peer did not take the storage (%s): taking it back here" % why)
    # The peer set "primary" beside this Primary host (the handoff) and may still wait for
    # it to demote: make it secondary first, or both hosts would be left set to primary and
    # the waiting one would promote on its own later. Its pending promotion then ends (its
    # role changed), and only after that is the storage taken back here.
    try:
        answer = peer_mod.call(ctx, "become_secondary", {"timeout": "%d" % timeout},
                               timeout + 30)
        if not answer.get("ok"):
            ctx.say("the peer's become-secondary: %s" % "; ".join(answer.get("lines") or []))
    except peer_mod.PeerError as exc:
        ctx.say("could not make the peer secondary first: %s" % exc)
    if promotion is not None:
        promotion.finish()
    try:
        manual_ops.become_primary(ctx, timeout=timeout)
    except CliError as exc:
        raise CliError("switchover failed: %s; taking the storage back also failed: %s; "
                       "check `iscsi-cfg status` on both hosts" % (why, exc))
    raise CliError("switchover failed: %s; the storage is back on this host" % why)


class _PeerPromotion(threading.Thread):
    """``become_primary`` on the peer, started while this host demotes: the peer makes every
    check of become-primary except that this host is still Primary, sets its role, and its
    agent promotes as soon as it sees this host's DRBD Secondary (its events stream)."""

    def __init__(self, ctx, timeout):
        threading.Thread.__init__(self, name="peer-promotion")
        self.daemon = True
        self.ctx, self.timeout = ctx, timeout
        self.answer, self.error = None, "the peer did not answer"

    def run(self):
        try:
            self.answer = peer_mod.call(self.ctx, "become_primary", {
                "timeout": self.timeout, "wait_peer": self.timeout},
                timeout=2 * self.timeout + PLUGIN_MARGIN)
        except peer_mod.PeerError as exc:
            self.error = str(exc)

    def finish(self):
        """The peer's answer (its lines said) or None; bounded by the XAPI call's timeout."""
        self.join(2 * self.timeout + 2 * PLUGIN_MARGIN)
        if self.answer is not None:
            _say_peer(self.ctx, self.answer)
        return self.answer


def _enable_both(ctx, name):
    answer = peer_mod.call(ctx, "manual_mode", {"mode": "enable"})
    _say_peer(ctx, answer)
    if not answer.get("ok"):
        raise CliError("%s refused manual mode; nothing else was changed" % name)
    manual_ops.enable(ctx)


def switchover(ctx, timeout=manual_ops.WAIT_TIMEOUT):
    """Move the storage to the peer; 0 when the peer serves. Refuses before any change."""
    ctx.say("checking this host and the peer ...")
    problems = local_problems(ctx)
    try:
        theirs = peer_mod.status(ctx)
        problems += preflight.switchover_peer(theirs, ctx.config.DRBD_RESOURCES)
    except peer_mod.PeerError as exc:
        theirs = {}
        problems.append(str(exc))
    if problems:
        raise Refused("refusing to switch over; nothing was changed:" + bullet(problems))
    name = theirs.get("hostname") or theirs.get("host") or "the peer"
    ctx.say("ready: this host serves; %s is Secondary, connected and UpToDate" % name)
    try:
        _enable_both(ctx, name)
    except peer_mod.PeerError as exc:
        raise CliError("cannot turn manual mode on at %s: %s" % (name, exc))
    written = manual_ops.set_secondary(ctx, warn=False)
    promotion = _PeerPromotion(ctx, timeout)
    promotion.start()
    try:
        demoted = manual_ops.wait_and_publish(ctx, model.SECONDARY, timeout, written)
    except CliError as exc:
        # the peer waits for this host's demotion: tell it at once, do not wait it out
        return _take_back(ctx, "demoting here failed: %s" % exc, timeout, promotion)
    answer = promotion.finish()
    if answer is None:
        return _take_back(ctx, promotion.error, timeout)
    if not answer.get("ok"):
        return _take_back(ctx, "%s refused or failed to become primary" % name, timeout)
    ctx.say("switchover done: %s serves the storage %.2f s after this host began to demote "
            "(demote %.2f s; promotion reached on the peer %.2f s after its role change)" % (
                name, time.time() - written, demoted, answer.get("elapsed_s") or 0.0))
    ctx.say("manual mode stays on on both hosts: move back with `iscsi-cfg switchover` on %s, "
            "or leave it with `iscsi-cfg manual-mode-disable` on both once each host is in "
            "its native role" % name)
    return 0
