"""Preflight: the checks of the admin's storage operations (``iscsi-cfg manual-mode-enable``,
``manual-mode-disable``, ``become-primary``, ``switchover``), as pure functions beside
:func:`iscsi_ha.decide.decide`. The CLI gathers the facts (DRBD state, manual mode, flags, the
published status documents) and asks here; nothing here reads or changes anything.

They agree with ``decide()`` except where an operation must differ; each difference is a named
rule, said where it applies:

- ``RULE_MANUAL_ONLY``: become-primary works only in manual mode. ``decide()`` follows the pool
  role; outside manual mode the next pass would undo a role the admin chose.
- ``RULE_ADMIN_ACCEPTS_RISK``: a disconnected peer whose role is unknown, without proven
  fencing, is a *risk* an admin may accept (``--force``, confirmed); ``decide()`` refuses it
  (``fencing-unproven``), since no one is there to accept it.
- ``RULE_UPTODATE_ONLY``: become-primary wants the local disk UpToDate. ``decide()`` also takes
  a ``Consistent`` disk after a restart when fencing is proven (DRBD runs the fence-peer handler
  before promoting it); an admin is shown the state and waits for UpToDate instead.
- ``RULE_SWITCHOVER_CONNECTED``: a planned switchover wants both sides Connected and UpToDate:
  it is the one move that loses no acknowledged write *by construction* (the demotion here
  flushes to a connected peer), so it refuses any state in which ``decide()`` would merely fail
  over.
- ``RULE_SWITCHOVER_HANDOFF``: in a switchover the new primary's role is set while the old one
  is still Primary, Connected and both disks UpToDate (it demotes meanwhile): its Primary peer
  is then no blocker, because ``decide()`` waits for a Primary peer (``peer-primary``) and
  promotes at the demotion it sees, with no CLI poll between. Any other Primary peer refuses.
"""
from iscsi_ha import model

RULE_MANUAL_ONLY = "manual-only"
RULE_ADMIN_ACCEPTS_RISK = "admin-accepts-risk"
RULE_UPTODATE_ONLY = "uptodate-only"
RULE_SWITCHOVER_CONNECTED = "switchover-connected"
RULE_SWITCHOVER_HANDOFF = "switchover-handoff"


# -- manual-mode-enable ------------------------------------------------------------------------
def pin(states, error, resources):
    """(manual mode, why): the mode that keeps this host as it is now."""
    if error:
        return model.MANUAL_HOLD, "DRBD cannot be read (%s): the agent holds everything as " \
            "it is until you choose a role" % error
    roles = set(states[name].role for name in resources)
    if roles == {"Primary"}:
        return model.MANUAL_PRIMARY, "this host holds the storage, so it stays primary"
    if roles == {"Secondary"}:
        return model.MANUAL_SECONDARY, "this host is secondary and stays secondary"
    return model.MANUAL_HOLD, "the resources are in mixed roles (%s): the agent holds them " \
        "as they are until you choose a role" % ", ".join(
            "%s %s" % (n, states[n].role) for n in resources)


# -- manual-mode-disable ---------------------------------------------------------------------------
def native_role_problems(pool, states, error, resources):
    """Sentences naming each resource that is not in this host's native role (``pool``: a
    :class:`iscsi_ha.adapters.pool` role with ``role`` and ``detail``)."""
    if pool.role == model.MASTER:
        want, who, verb = "Primary", "pool master", "become-primary"
    elif pool.role == model.SLAVE:
        want, who, verb = "Secondary", "a pool slave", "become-secondary"
    else:
        return ["this host's pool role is %s (%s), so its native storage role is unknown"
                % (pool.role, pool.detail)]
    if error:
        return ["cannot read DRBD state: %s" % error]
    return ["%s is %s, but this host is %s, so its native role is %s: run `iscsi-cfg %s` "
            "first" % (name, states[name].role, who, want, verb)
            for name in resources if states[name].role != want]


def left_alone(states, error, resources):
    """Resources Primary here whose peer is not Primary (after manual mode was left)."""
    if error:
        return []
    return [n for n in resources
            if states[n].role == "Primary" and states[n].peer_role != "Primary"]


# -- become-primary ------------------------------------------------------------------------------
def resource_check(name, state, fenced=""):
    """(blocker, risk) for promoting resource ``name``; each '' when there is none. ``fenced``:
    why DRBD fencing is proven for it ('' when it is not): then DRBD runs the fence-peer handler
    before it promotes a disconnected disk and refuses when the peer may be Primary, so an
    unknown peer is no risk of ours to name (as in ``decide()``)."""
    blocker = risk = ""
    if state.peer_role == "Primary":
        blocker = "%s: the peer is Primary: run `iscsi-cfg become-secondary` on the peer " \
                  "first" % name
    elif state.peer_role != "Secondary" and not (fenced and not state.is_connected):
        # RULE_ADMIN_ACCEPTS_RISK
        risk = ("%s: the peer's role is %s (connection %s, peer disk %s): the peer may be "
                "Primary; promoting here can make two Primaries (split brain), and the writes "
                "made on the side whose data is later discarded are lost" % (
                    name, state.peer_role, state.connection, state.peer_disk))
    if not blocker and state.disk != "UpToDate":              # RULE_UPTODATE_ONLY
        progress = "" if state.sync_percent is None else " (resync %.1f%% done)" % (
            state.sync_percent)
        blocker = "%s: the local disk is %s, not UpToDate%s: wait until it is" % (
            name, state.disk, progress)
    return blocker, risk


def handing_over(state):
    """The peer is Primary and hands the resource over in a switchover: Connected, both disks
    UpToDate (``RULE_SWITCHOVER_HANDOFF``)."""
    return (state.peer_role, state.connection, state.disk, state.peer_disk) == (
        "Primary", "Connected", "UpToDate", "UpToDate")


def probes_floating_ip(states, error, handoff):
    """Whether become-primary's check probes the floating IP (duplicate-address detection).
    Not in a handoff whose peer still holds the address (``RULE_SWITCHOVER_HANDOFF``): the
    agent probes in the pass that takes it, after the peer released it."""
    return not (handoff and not error and any(handing_over(s) for s in states.values()))


def promotion(manual_mode, flagged, states, error, resources, fenced, handoff=False):
    """(blockers, risks) of become-primary, before the floating-IP check (which probes the
    network, so the CLI runs it only when nothing else blocks). Blockers always refuse; risks
    refuse unless forced and confirmed. ``handoff``: a switchover's promotion, set while the
    peer still demotes (``RULE_SWITCHOVER_HANDOFF``)."""
    blockers, risks = [], []
    if manual_mode == model.MANUAL_OFF:                         # RULE_MANUAL_ONLY
        blockers.append("manual mode is off on this host: run `iscsi-cfg manual-mode-enable` "
                        "on both hosts first")
    if flagged:
        blockers.append("split brain flagged on %s: recover it first" % ", ".join(flagged))
    if error:
        blockers.append("cannot read DRBD state: %s" % error)
    for name in ([] if error else resources):
        if handoff and handing_over(states[name]):                # RULE_SWITCHOVER_HANDOFF
            continue
        blocker, risk = resource_check(name, states[name], fenced.get(name, ""))
        blockers.extend([blocker] if blocker else [])
        risks.extend([risk] if risk else [])
    return blockers, risks


# -- switchover ------------------------------------------------------------------------------------
def switchover_local(document, manual_mode, flagged, states, error, resources):
    """Why this host (its status ``document``, read through :mod:`iscsi_ha.agent_status`) is
    not ready to hand the storage over."""
    problems = []
    if not document.get("agent_running") or document.get("stale"):
        problems.append("the agent here is not running or its status is stale")
    if manual_mode == model.MANUAL_SECONDARY:
        problems.append("manual mode here already says secondary; wait for the agent or run "
                        "`iscsi-cfg become-primary`")
    if flagged:
        problems.append("split brain flagged on %s" % ", ".join(flagged))
    if error:
        return problems + ["cannot read DRBD state: %s" % error]
    for name in resources:
        state = states[name]
        if (state.role, state.peer_role, state.connection, state.disk, state.peer_disk) != (
                "Primary", "Secondary", "Connected", "UpToDate", "UpToDate"):
            # RULE_SWITCHOVER_CONNECTED
            problems.append("%s is %s; a switchover needs Primary/Secondary Connected "
                            "UpToDate/UpToDate" % (name, state.describe()))
    if not (document.get("target") or {}).get("serving"):
        problems.append("the target is not serving here: run switchover on the storage primary")
    if not (document.get("floating_ip") or {}).get("local"):
        problems.append("the floating IP is not on this host")
    return problems


def switchover_peer(document, resources):
    """Why the peer (its status document, as its plugin returned it) is not ready to take the
    storage."""
    name = document.get("hostname") or "the peer"
    problems = []
    if not document.get("agent_running") or document.get("stale"):
        problems.append("%s: its agent is not running or its status is stale" % name)
    if document.get("manual_mode") == model.MANUAL_PRIMARY:
        problems.append("%s: manual mode there says primary while this host serves" % name)
    blockers = [b for b in (document.get("decision") or {}).get("blockers") or []
                if isinstance(b, dict)]
    split = list(document.get("split_brain") or []) + [
        b.get("resource", "?") for b in blockers if b.get("kind") == "split-brain"]
    if split:
        problems.append("%s: split brain: %s" % (name, ", ".join(sorted(set(split)))))
    refusals = [b for b in blockers if b.get("kind") != "split-brain" and not b.get("waits")]
    if refusals:
        problems.append("%s: its agent refuses storage actions: %s" % (name, "; ".join(
            b.get("detail") or b.get("kind", "?") for b in refusals)))
    drbd = document.get("drbd") or {}
    for resource in resources:
        state = drbd.get(resource)
        if state is None:
            problems.append("%s: no DRBD state for %s" % (name, resource))
        elif (state["role"], state["connection"], state["disk"]) != (
                "Secondary", "Connected", "UpToDate"):                # RULE_SWITCHOVER_CONNECTED
            problems.append("%s: %s is %s %s %s; it must be Secondary, Connected, UpToDate"
                            % (name, resource, state["role"], state["connection"],
                               state["disk"]))
    if (document.get("target") or {}).get("running"):
        problems.append("%s: its target is running" % name)
    if (document.get("floating_ip") or {}).get("local"):
        problems.append("%s: it holds the floating IP" % name)
    return problems
