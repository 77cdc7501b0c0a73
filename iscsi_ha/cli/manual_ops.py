"""Manual mode and the role verbs: ``manual-mode-enable``, ``manual-mode-disable``,
``become-primary``, ``become-secondary``. The CLI and the XAPI plugin both run this code.

The CLI never acts on storage itself: it checks, writes the role into the manual mode file while
holding the agent's pass lock (so no pass is running and the next pass reads the new role), and
waits, bounded, for the agent's status to show the role reached. HA-Lizard's races (a pass
re-applying the old role while the CLI switches, a peer in role Unknown taken as safe, one
``ping`` deciding that the floating IP is free, a role check that broke with two resources) have
no counterpart here.
"""
import time

from iscsi_ha import model, preflight
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.run import CommandError
from iscsi_ha.adapters.vip import VipError
from iscsi_ha.cli import pool_manual
from iscsi_ha.cli.context import CliError, Refused

WORD = {model.PRIMARY: "Primary", model.SECONDARY: "Secondary"}
MODE_OF = {model.PRIMARY: model.MANUAL_PRIMARY, model.SECONDARY: model.MANUAL_SECONDARY}
WAIT_TIMEOUT = 30.0
WAIT_POLL = 0.05
FORCED_MARGIN = 30.0   # a forced promotion stays in force this long after the CLI's wait
HA_NOTE = ("note: disable pool HA (ha-cfg) before shutting down or rebooting a host, and run "
           "this on both hosts")


def describe_mode(mode):
    return {model.MANUAL_OFF: "off", model.MANUAL_HOLD: "on, holding the current roles",
            model.MANUAL_PRIMARY: "on, role primary",
            model.MANUAL_SECONDARY: "on, role secondary"}.get(mode, mode)


def bullet(sentences):
    return "".join("\n  - " + s for s in sentences)


# -- manual-mode-enable / -disable ---------------------------------------------------------------
def _pin(ctx):
    """The manual mode that keeps this host as it is now, and why."""
    states, error = ctx.drbd_states()
    return preflight.pin(states, error, ctx.config.DRBD_RESOURCES)


def enable(ctx):
    """Manual mode on for this host, pinned to the role it has now."""
    with ctx.pass_lock():
        current = ctx.manual_mode()
        if current != model.MANUAL_OFF:
            mode = current
            ctx.say("manual mode is already %s here" % describe_mode(current))
        else:
            mode, why = _pin(ctx)
            ctx.write_manual(mode)
            ctx.say("manual mode %s: %s" % (describe_mode(mode), why))
    pool_manual.publish_and_say(ctx, mode)
    ctx.say(HA_NOTE)
    return 0


def native_role_problems(ctx):
    """Sentences naming each resource that is not in this host's native role."""
    pool = ctx.pool_role()
    if pool.role not in (model.MASTER, model.SLAVE):
        return preflight.native_role_problems(pool, {}, "", ctx.config.DRBD_RESOURCES)
    states, error = ctx.drbd_states()
    return preflight.native_role_problems(pool, states, error, ctx.config.DRBD_RESOURCES)


def disable(ctx):
    """Manual mode off, only when every resource is in its native role."""
    with ctx.pass_lock():
        current = ctx.manual_mode()
        if current == model.MANUAL_OFF:
            ctx.say("manual mode is already off here")
        else:
            problems = native_role_problems(ctx)
            if problems:
                raise Refused("manual mode stays on:" + bullet(problems))
            ctx.write_manual(model.MANUAL_OFF)
            ctx.say("manual mode off: the agent follows the pool role again")
    pool_manual.publish_and_say(ctx, model.MANUAL_OFF)
    return 0


# -- become-primary ------------------------------------------------------------------------------
def _peer_released(ctx, states):
    """Every resource Connected with its peer Secondary: the peer's agent demotes in the order
    floating IP off, target stop, DRBD Secondary, so the peer released the address (the rule
    of :func:`iscsi_ha.agent.peer_released_address`, which the agent applies to the same step)."""
    names = ctx.config.DRBD_RESOURCES
    return bool(states) and all(
        n in states and states[n].connection == "Connected" and states[n].peer_role ==
        "Secondary" for n in names)


def vip_blocker(ctx, states=None):
    """Why the floating IP may not be taken here ('' when it may): duplicate-address
    detection, unless the address is already local; the short one (ARP_DAD_RELEASED_TIMEOUT,
    one probe) when ``states`` show that the peer released the address."""
    vip = ctx.adapters.vip
    released = getattr(ctx.config, "ARP_DAD_RELEASED_TIMEOUT", None)
    try:
        state = vip.observe()
        if state.local:
            return ""
        if not state.interface_exists:
            return "interface %s (DRBD_INTERFACE) does not exist" % vip.interface
        if released is not None and _peer_released(ctx, states):
            if released <= 0 or vip.is_free(count=1, timeout=released):
                return ""
        elif vip.is_free():
            return ""
    except (VipError, CommandError) as exc:
        return "duplicate-address detection for the floating IP failed: %s" % exc
    return ("the floating IP %s answers from %s: another host holds it; run `iscsi-cfg "
            "become-secondary` there first" % (vip.address, ", ".join(vip.last_responders)
                                               or "another host"))


def promotion_checks(ctx, handoff=False):
    """(blockers, risks): blockers always refuse; risks refuse unless forced and confirmed
    (:func:`iscsi_ha.preflight.promotion`, then the floating-IP probe). ``handoff``: a
    switchover's promotion, set while the peer still demotes; while a peer is Primary it holds
    the floating IP, so the probe is the agent's, in the pass that takes the address."""
    states, error = ctx.drbd_states()
    blockers, risks = preflight.promotion(
        ctx.manual_mode(), ctx.split_brain_flags(), states, error, ctx.config.DRBD_RESOURCES,
        {} if error else ctx.fencing_proven(), handoff=handoff)
    if not blockers and preflight.probes_floating_ip(states, error, handoff):
        blocker = vip_blocker(ctx, states)
        blockers.extend([blocker] if blocker else [])
    return blockers, risks


def risk_question(risks):
    return ("FORCED PROMOTION. " + " ".join(risks) + "\nType 'yes' to promote this host "
            "anyway and accept that risk of losing data: ")


class RoleTimeout(CliError):
    """The agent did not reach the role in time (it is running)."""


class RoleChanged(CliError):
    """Another command changed the manual role while this one waited for the agent."""


def become_primary(ctx, force=False, confirm=None, timeout=WAIT_TIMEOUT, wait_peer=0.0):
    """Check, write the role under the pass lock, wait for the agent. ``confirm(question)``
    answers the forced-promotion question (None: nobody can answer, so no). With
    ``wait_peer`` seconds (a switchover), a connected peer still Primary is handing over: the
    role is set at once and the agent promotes when it sees the peer demote, within
    ``wait_peer`` + ``timeout`` s (``RULE_SWITCHOVER_HANDOFF``)."""
    handoff = wait_peer > 0
    confirmed = []
    for attempt in (1, 2):
        with ctx.pass_lock():
            blockers, risks = promotion_checks(ctx, handoff=handoff)
            if blockers:
                raise Refused("refusing to become primary:" + bullet(blockers + risks))
            if all(r in confirmed for r in risks):
                if confirmed:
                    _record_forced(ctx, timeout)
                ctx.write_manual(model.MANUAL_PRIMARY)
                written = time.time()
                break
        if not force:
            raise Refused("refusing to become primary:" + bullet(risks) + "\n  nothing was "
                          "changed; --force promotes anyway after a confirmation")
        if attempt == 2:
            raise Refused("refusing to become primary: the situation changed while you "
                          "answered:" + bullet(risks))
        if confirm is None:
            raise Refused("a forced promotion needs a confirmation: run it at a terminal or "
                          "add --yes; nothing was changed:" + bullet(risks))
        if not confirm(risk_question(risks)):
            raise Refused("forced promotion not confirmed: nothing was changed")
        confirmed = list(risks)
    ctx.say("checks passed; manual mode role set to primary%s" % (
        " (forced, risk accepted)" if confirmed else ""))
    try:
        return wait_and_publish(ctx, model.PRIMARY, timeout + max(0.0, wait_peer), written)
    except RoleTimeout as exc:
        raise RoleTimeout("%s%s" % (exc, _hold_if_not_primary(ctx)))
    except RoleChanged:
        if confirmed:                      # the forced promotion is not wanted any more
            with ctx.pass_lock():
                if ctx.manual_mode() != model.MANUAL_PRIMARY:
                    _clear_forced(ctx)
        raise
    except CliError as exc:
        if not handoff:
            raise
        # A handoff's role was set beside a Primary peer: left behind, it would promote this
        # host whenever that peer demotes, for whatever reason. Hold instead.
        raise CliError("%s%s" % (exc, _hold_if_not_primary(ctx)), exc.code)
    except BaseException:
        if handoff:
            try:
                _hold_if_not_primary(ctx)
            except Exception:  # the first error is the one to report
                pass
        raise


def _record_forced(ctx, timeout):
    """The agent promotes an unproven, disconnected resource only for a forced promotion the
    admin confirmed: record it (caller holds the pass lock), valid while the CLI waits."""
    from iscsi_ha import fencing
    from iscsi_ha.adapters.manual import who_am_i
    states, error = ctx.drbd_states()
    names = [] if error else [n for n in ctx.config.DRBD_RESOURCES
                              if n in states and not states[n].is_connected]
    fencing.write_forced(ctx.config.STATE_DIR, names, time.time() + timeout + FORCED_MARGIN,
                         who_am_i())


def _clear_forced(ctx):
    from iscsi_ha import fencing
    fencing.clear_forced(ctx.config.STATE_DIR)


def _hold_if_not_primary(ctx):
    """After a promotion that did not happen in time: a role "primary" left behind would let the
    agent promote on its own later (when the peer disappears), long after the admin was told
    it failed. Unless every resource is Primary by now, hold the host as it is instead."""
    states, error = ctx.drbd_states()
    names = ctx.config.DRBD_RESOURCES
    if not error and all(n in states and states[n].role == "Primary" for n in names):
        return ""
    with ctx.pass_lock():
        _clear_forced(ctx)
        now = ctx.manual_mode()
        if now == model.MANUAL_PRIMARY:
            ctx.write_manual(model.MANUAL_HOLD)
    if now != model.MANUAL_PRIMARY:        # another command chose a role meanwhile: it stands
        return ("\n  this host was not promoted; manual mode is %s (set meanwhile), so it "
                "will not promote later on its own" % describe_mode(now))
    return ("\n  this host was not promoted: manual mode now holds it as it is (no role), so "
            "it will not promote later on its own; run become-primary again when ready")


def wait_and_publish(ctx, role, timeout, written):
    """Wait for the agent while the pool record is updated in the background; returns the
    seconds from ``written`` (wall clock of the role change) to the role reached."""
    publisher = pool_manual.Publisher(ctx, MODE_OF[role])
    publisher.start()
    try:
        return wait_for_role(ctx, role, timeout, written)
    finally:
        publisher.finish()


# -- become-secondary ----------------------------------------------------------------------------
def _orphan_warning(ctx):
    states, error = ctx.drbd_states()
    alone = preflight.left_alone(states, error, ctx.config.DRBD_RESOURCES)
    if not alone:
        return ""
    return ("warning: the peer is not Primary on %s: no host will serve the storage until you "
            "run `iscsi-cfg become-primary` on one" % ", ".join(alone))


def set_secondary(ctx, warn=True):
    """Write the role secondary under the pass lock; returns when it was written (wall)."""
    warning = _orphan_warning(ctx) if warn else ""
    with ctx.pass_lock():
        was = ctx.manual_mode()
        _clear_forced(ctx)
        ctx.write_manual(model.MANUAL_SECONDARY)
        written = time.time()
    if was == model.MANUAL_OFF:
        ctx.say("manual mode was off: it is now on for this host, with role secondary; leave it "
                "with `iscsi-cfg manual-mode-disable`")
    ctx.say("manual mode role set to secondary")
    if warning:
        ctx.say(warning)
    return written


def become_secondary(ctx, timeout=WAIT_TIMEOUT, warn=True):
    """Always allowed: write the role under the pass lock, wait for the agent."""
    written = set_secondary(ctx, warn)
    return wait_and_publish(ctx, model.SECONDARY, timeout, written)


# -- waiting for the agent -------------------------------------------------------------------------
def role_reached(document, role, resources):
    """The agent's status shows manual mode with ``role`` and this host fully in it: either
    what it observed, or its pass took every step of the plan for ``role`` successfully."""
    if document.get("manual_mode") != MODE_OF[role]:
        return False
    return _observed(document, role, resources) or acted(document, role)


def acted(document, role):
    """The pass that wrote ``document`` planned ``role`` and each planned step succeeded (its
    observation predates the steps, so it still shows the old state)."""
    decision = document.get("decision") or {}
    planned = decision.get("actions") or []
    started = (document.get("pass") or {}).get("started")
    if document.get("desired_role") != role or not planned or started is None:
        return False
    if decision.get("verdict") != "acting":
        return False              # waiting/blocked/holding plan only the steps that take the
                                  # service down (an agent without verdicts: no shortcut)
    done = [a.get("action") for a in document.get("last_actions") or []
            if a.get("at") == started and a.get("ok") and not a.get("skipped")]
    return done == planned


def _observed(document, role, resources):
    drbd = document.get("drbd") or {}
    if any((drbd.get(name) or {}).get("role") != WORD[role] for name in resources):
        return False
    target, vip = document.get("target"), document.get("floating_ip") or {}
    if target is None or vip.get("local") is None:
        return False
    if role == model.PRIMARY:
        return bool(target.get("serving")) and vip["local"] is True
    return not target.get("running") and vip["local"] is False


def _progress(ctx, document, since, shown):
    """Say each agent action taken since ``since`` (wall clock) once."""
    for entry in document.get("last_actions") or []:
        key = (entry.get("at"), entry.get("action"))
        if entry.get("at", 0) + 0.001 >= since and key not in shown:
            shown.add(key)
            outcome = "ok" if entry.get("ok") and not entry.get("skipped") else (
                "skipped" if entry.get("skipped") else "FAILED: %s" % entry.get("detail"))
            ctx.say("  agent: %s %s (%.2f s)" % (entry.get("action"), outcome,
                                                 entry.get("duration_s") or 0.0))


def _still_wanted(ctx, role):
    """Raise CliError when the manual role is not ``role`` any more: another command (here,
    or the peer's switchover taking the storage back) chose otherwise while this one waited."""
    try:
        mode = ctx.manual_mode()
    except manual_adapter.ManualModeError:
        return                                 # unreadable now: the agent holds; keep waiting
    if mode != MODE_OF[role]:
        raise RoleChanged("manual mode was changed while this command waited for the role "
                          "%s (now: %s): stopped waiting" % (role, describe_mode(mode)))


def wait_for_role(ctx, role, timeout, since):
    """Poll the status (bounded by ``timeout``) until ``role`` is reached; returns seconds from
    ``since`` (wall clock of the role change). Raises CliError on timeout or agent down."""
    resources = ctx.config.DRBD_RESOURCES
    start, shown, document = ctx.clock(), set(), {}
    ctx.say("waiting up to %g s for the agent to make this host %s" % (timeout, role))
    for _ in range(int(timeout / WAIT_POLL) + 2):
        _still_wanted(ctx, role)
        document = ctx.status()
        if not document.get("agent_running"):
            raise CliError("the agent is not running on this host: the role %s is recorded "
                           "and is applied when the agent starts (service iscsi-ha start)"
                           % role)
        _progress(ctx, document, since, shown)
        if role_reached(document, role, resources):
            elapsed = max(0.0, time.time() - since)
            ctx.say("%s reached %.2f s after the role change" % (role, elapsed))
            return elapsed
        if ctx.clock() - start >= timeout:
            break
        ctx.sleep(WAIT_POLL)
    decision = document.get("decision") or {}
    blockers = ", ".join(b.get("kind", "?") for b in decision.get("blockers") or [])
    raise RoleTimeout("the agent did not make this host %s within %g s; its last decision: "
                      "%s%s" % (role, timeout, decision.get("reason", "none published"),
                                " (verdict %s, blocked by %s)" % (decision.get("verdict"),
                                                                  blockers) if blockers else ""))
