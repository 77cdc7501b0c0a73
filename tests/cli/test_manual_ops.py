"""manual-mode-enable/-disable, become-primary/-secondary: every refusal and its message, the
pass lock, the pool record (fake XAPI, or none at all), and the wait for the agent."""
import fcntl
import threading
import time

import pytest

from iscsi_ha import model
from iscsi_ha.cli import manual_ops
from iscsi_ha.cli.context import CliError, Refused

from .conftest import drbd, host_uuid, other_config


# -- manual-mode-enable ---------------------------------------------------------------------------
@pytest.mark.parametrize("roles,mode", [
    (("Primary", "Primary"), model.MANUAL_PRIMARY),
    (("Secondary", "Secondary"), model.MANUAL_SECONDARY),
    (("Primary", "Secondary"), model.MANUAL_HOLD),
])
def test_enable_pins_the_current_role(host, roles, mode):
    host.set_drbd(drbd(roles[0], name="iscsi1"), drbd(roles[1], name="iscsi2"))
    assert manual_ops.enable(host.ctx) == 0
    assert host.manual() == mode
    assert "disable pool HA" in host.text()


def test_enable_with_unreadable_drbd_holds(host):
    from iscsi_ha.adapters.drbd import DrbdAdapter, DrbdUnavailable
    DrbdAdapter.observe.side_effect = DrbdUnavailable("not loaded")   # the host's autospec mock
    manual_ops.enable(host.ctx)
    assert host.manual() == model.MANUAL_HOLD and "not loaded" in host.text()


def test_enable_twice_keeps_the_role(host):
    host.set_manual(model.MANUAL_SECONDARY)
    manual_ops.enable(host.ctx)
    assert host.manual() == model.MANUAL_SECONDARY
    assert "already on, role secondary" in host.text()


def test_enable_without_xapi_switches_locally_and_says_so(host):
    manual_ops.enable(host.ctx)                       # no socket at XAPI_URL: unreachable
    assert host.manual() == model.MANUAL_PRIMARY
    assert "pool record (other-config MANUAL_MODE) could not be updated" in host.text()
    assert "local manual mode file is in effect" in host.text()


def test_enable_and_disable_write_the_pool_record(host, pool):
    fake, me, peer = pool
    uuid, peer_uuid = host_uuid(fake, me), host_uuid(fake, peer)
    fake.db.update("pool", fake.pool_ref, other_config={
        "MANUAL_MODE": "%s=secondary" % peer_uuid, "HA_X": "1"})
    manual_ops.enable(host.ctx)
    assert other_config(fake)["MANUAL_MODE"] == "%s=secondary,%s=primary" % (peer_uuid, uuid)
    manual_ops.disable(host.ctx)                      # master + Primary: native
    assert other_config(fake)["MANUAL_MODE"] == "%s=secondary" % peer_uuid
    assert other_config(fake)["HA_X"] == "1"
    assert host.manual() == model.MANUAL_OFF


def test_inventory_uuid_wins_over_xapi(host, pool):
    fake, _, _ = pool
    with open(host.ctx.inventory, "w") as handle:
        handle.write("PRIMARY_DISK='/dev/sda'\nINSTALLATION_UUID='1234-abcd'\n")
    manual_ops.enable(host.ctx)
    assert other_config(fake)["MANUAL_MODE"] == "1234-abcd=primary"


# -- manual-mode-disable ----------------------------------------------------------------------------
def test_disable_refuses_naming_each_resource_not_native(host):
    host.set_manual(model.MANUAL_SECONDARY)
    host.set_pool("master")
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Primary", name="iscsi2"))
    with pytest.raises(Refused) as refused:
        manual_ops.disable(host.ctx)
    message = str(refused.value)
    assert "iscsi1 is Secondary, but this host is pool master" in message
    assert "iscsi2 is Secondary" in message and "become-primary" in message
    assert host.manual() == model.MANUAL_SECONDARY


def test_disable_on_a_slave_needs_secondary(host):
    host.set_manual(model.MANUAL_PRIMARY)
    host.set_pool("slave:192.0.2.11")
    host.set_drbd(drbd("Secondary", name="iscsi1"), drbd("Primary", name="iscsi2"))
    with pytest.raises(Refused) as refused:
        manual_ops.disable(host.ctx)
    assert "iscsi2 is Primary, but this host is a pool slave" in str(refused.value)
    assert "iscsi1" not in str(refused.value)
    host.set_drbd(drbd("Secondary", name="iscsi1"), drbd("Secondary", name="iscsi2"))
    manual_ops.disable(host.ctx)
    assert host.manual() == model.MANUAL_OFF


def test_disable_refuses_with_an_unknown_pool_role(host):
    host.set_manual(model.MANUAL_HOLD)
    host.set_pool("broken")
    with pytest.raises(Refused) as refused:
        manual_ops.disable(host.ctx)
    assert "pool role is broken" in str(refused.value)


def test_disable_when_already_off(host):
    assert manual_ops.disable(host.ctx) == 0
    assert "already off" in host.text()


# -- become-primary -----------------------------------------------------------------------------------
def secondary_here(host):
    host.set_drbd(drbd("Secondary", "Secondary", name="iscsi1"),
                  drbd("Secondary", "Secondary", name="iscsi2"))
    host.set_manual(model.MANUAL_SECONDARY)


def refusal(host, **kwargs):
    with pytest.raises(Refused) as refused:
        manual_ops.become_primary(host.ctx, **kwargs)
    return str(refused.value)


def test_become_primary_refuses_without_manual_mode(host):
    secondary_here(host)
    host.set_manual(model.MANUAL_OFF)
    assert "manual mode is off on this host" in refusal(host)
    assert host.manual() == model.MANUAL_OFF


def test_become_primary_refuses_when_the_peer_is_primary_even_forced(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Secondary", name="iscsi2"))
    message = refusal(host, force=True, confirm=lambda q: True)
    assert "iscsi1: the peer is Primary" in message and "iscsi2" not in message
    assert host.manual() == model.MANUAL_SECONDARY


def test_become_primary_refuses_an_unknown_peer_and_names_the_risk(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    message = refusal(host)
    assert "iscsi1: the peer's role is Unknown (connection WFConnection" in message
    assert "split brain" in message and "--force" in message
    assert host.manual() == model.MANUAL_SECONDARY


def _proof(host, proof, self_fenced=None):
    import json
    import os
    with open(os.path.join(host.ctx.config.STATE_DIR, "fencing-proof.json"), "w") as handle:
        json.dump(proof, handle)
    if self_fenced is not None:
        with open(os.path.join(host.ctx.config.STATE_DIR, "self-fenced"), "w") as handle:
            json.dump(self_fenced, handle)


def test_become_primary_with_fencing_proven_promotes_past_an_unknown_peer(host):
    """Fencing proven on both hosts: DRBD runs the fence-peer handler before it promotes, and
    refuses if the peer may be Primary; no forced confirmation is asked for."""
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    _proof(host, {"iscsi1": {"ok": True, "verified": time.time()}})
    assert manual_ops.become_primary(host.ctx, timeout=5) >= 0
    assert host.manual() == model.MANUAL_PRIMARY and "forced" not in host.text()


@pytest.mark.parametrize("proof,marked", [
    ({"iscsi1": {"ok": False, "verified": 1, "problem": "peer: no fence-peer handler"}}, None),
    ({"iscsi2": {"ok": True, "verified": 1}}, None),          # proven for the other resource
    ({"iscsi1": {"ok": True, "verified": 1}}, ["iscsi1"]),    # this host self-fenced
    ("not a mapping", None),
])
def test_become_primary_without_a_usable_proof_still_names_the_risk(host, proof, marked):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    _proof(host, proof, marked)
    assert "iscsi1: the peer's role is Unknown" in refusal(host)
    assert host.manual() == model.MANUAL_SECONDARY


def test_forced_promotion_without_a_terminal_or_yes_is_refused(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    assert "needs a confirmation" in refusal(host, force=True, confirm=None)
    questions = []
    message = refusal(host, force=True, confirm=lambda q: questions.append(q) or False)
    assert "not confirmed" in message and host.manual() == model.MANUAL_SECONDARY
    assert "losing data" in questions[0] and "split brain" in questions[0]


def test_forced_and_confirmed_promotion_proceeds(host):
    from iscsi_ha import fencing
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    elapsed = manual_ops.become_primary(host.ctx, force=True, confirm=lambda q: True,
                                        timeout=5)
    assert elapsed >= 0 and host.manual() == model.MANUAL_PRIMARY
    assert "forced, risk accepted" in host.text()
    # the agent promotes only what the admin forced: the disconnected resource, for a while
    assert fencing.read_forced(host.config.STATE_DIR) == ("iscsi1",)
    assert fencing.read_forced(host.config.STATE_DIR, now=time.time() + 5 +
                               manual_ops.FORCED_MARGIN + 1) == ()
    manual_ops.become_secondary(host.ctx, timeout=5)                      # changed its mind
    assert fencing.read_forced(host.config.STATE_DIR) == ()


def test_an_unforced_promotion_records_no_force(host):
    from iscsi_ha import fencing
    secondary_here(host)
    manual_ops.become_primary(host.ctx, timeout=5)
    assert fencing.read_forced(host.config.STATE_DIR) == ()


def test_become_primary_refuses_a_disk_that_is_not_uptodate(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Secondary", "SyncTarget", disk="Inconsistent",
                       sync=42.0, name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    message = refusal(host, force=True, confirm=lambda q: True)
    assert "iscsi1: the local disk is Inconsistent, not UpToDate (resync 42.0% done)" in message


def test_become_primary_refuses_when_dad_hears_the_floating_ip(host):
    secondary_here(host)
    host.vip_free, host.responders = False, ["02:AA:BB:CC:DD:EE (192.0.2.100)"]
    message = refusal(host)
    assert "the floating IP 192.0.2.100 answers from 02:AA:BB:CC:DD:EE" in message
    assert host.manual() == model.MANUAL_SECONDARY


def test_become_primary_skips_dad_when_the_ip_is_already_local(host):
    secondary_here(host)
    host.vip_local, host.vip_free = True, False
    manual_ops.become_primary(host.ctx, timeout=5)
    assert host.is_free.call_count == 0


def test_become_primary_refuses_a_flagged_split_brain(host):
    secondary_here(host)
    import os
    os.makedirs(host.config.STATE_DIR, exist_ok=True)
    open(os.path.join(host.config.STATE_DIR, "split-brain-iscsi2"), "w").close()
    assert "split brain flagged on iscsi2" in refusal(host)


def test_become_primary_writes_then_waits_and_prints_the_steps(host):
    secondary_here(host)
    manual_ops.become_primary(host.ctx, timeout=5)
    text = host.text()
    assert host.manual() == model.MANUAL_PRIMARY
    assert "agent: promote iscsi1 ok" in text and "primary reached" in text
    assert host.is_free.call_count == 1


def test_become_primary_times_out_with_the_agents_reason(host):
    secondary_here(host)
    host.agent.refuse = "refusing: manual mode, admin chose primary, but iscsi1: peer busy"
    with pytest.raises(CliError) as failed:
        manual_ops.become_primary(host.ctx, timeout=0.2)
    assert "did not make this host primary within 0.2 s" in str(failed.value)
    assert "peer busy" in str(failed.value)
    # Not left "primary": the agent would promote on its own later, e.g. when the peer dies.
    assert host.manual() == model.MANUAL_HOLD
    assert "will not promote later on its own" in str(failed.value)


def test_wait_says_when_the_agent_is_not_running(host, mocker):
    from iscsi_ha import agent_status
    mocker.patch.object(agent_status, "running", return_value=False)
    secondary_here(host)
    host.write_status()
    with pytest.raises(CliError) as failed:
        manual_ops.become_primary(host.ctx, timeout=5)
    assert "the agent is not running on this host" in str(failed.value)


# -- become-secondary ---------------------------------------------------------------------------------
def test_become_secondary_always_works_and_warns_about_an_orphan(host):
    assert host.manual() == model.MANUAL_OFF
    manual_ops.become_secondary(host.ctx, timeout=5)
    text = host.text()
    assert host.manual() == model.MANUAL_SECONDARY
    assert "manual mode was off: it is now on" in text
    assert "no host will serve the storage" in text and "secondary reached" in text


# -- the pass lock --------------------------------------------------------------------------------------
def test_the_role_is_written_only_while_holding_the_agents_lock(host):
    """A pass (holding STATE_DIR/lock) is running: the CLI waits for it to end."""
    secondary_here(host)
    import os
    os.makedirs(host.config.STATE_DIR, exist_ok=True)
    held = open(host.ctx.lock_path, "a")
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)
    seen = []

    def release():
        time.sleep(0.3)
        seen.append(host.manual())          # still the old role while the pass runs
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    worker = threading.Thread(target=release)
    worker.start()
    host.ctx.sleep = time.sleep             # the lock wait really waits
    try:
        with host.ctx.pass_lock(timeout=5):
            host.ctx.write_manual(model.MANUAL_PRIMARY)
    finally:
        worker.join(5)
        held.close()
    assert seen == [model.MANUAL_SECONDARY] and host.manual() == model.MANUAL_PRIMARY


def test_a_hung_pass_makes_the_cli_give_up_without_changing_anything(host):
    secondary_here(host)
    import os
    os.makedirs(host.config.STATE_DIR, exist_ok=True)
    held = open(host.ctx.lock_path, "a")
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)
    try:
        with pytest.raises(CliError) as failed:
            with host.ctx.pass_lock(timeout=0.1):
                host.ctx.write_manual(model.MANUAL_PRIMARY)
    finally:
        held.close()
    assert "held" in str(failed.value) and "nothing was changed" in str(failed.value)
    assert host.manual() == model.MANUAL_SECONDARY


# -- switchover helpers ---------------------------------------------------------------------------
def test_a_switchover_sets_the_role_while_the_peer_still_demotes(host):
    """wait_peer (a switchover): the connected, UpToDate peer is still Primary; the role is set
    at once, with no floating-IP probe (the peer holds the address until it demotes: the
    agent probes in its promoting pass), and the agent gets wait_peer longer to promote."""
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Primary", name="iscsi2"))
    host.vip_free = False                          # the old primary still answers for it
    agent, seen = host.agent, []

    def sleep(seconds):
        seen.append(host.manual())
        host.set_drbd(drbd("Secondary", "Secondary", name="iscsi1"),   # the peer demoted
                      drbd("Secondary", "Secondary", name="iscsi2"))
        agent(seconds)
    host.ctx.sleep = sleep
    manual_ops.become_primary(host.ctx, timeout=5, wait_peer=5)
    assert seen[0] == model.MANUAL_PRIMARY and host.manual() == model.MANUAL_PRIMARY
    assert host.is_free.call_count == 0


@pytest.mark.parametrize("peer", [
    drbd("Secondary", "Primary", "WFConnection", peer_disk="DUnknown", name="iscsi1"),
    drbd("Secondary", "Primary", peer_disk="Outdated", name="iscsi1"),
    drbd("Secondary", "Primary", disk="Inconsistent", name="iscsi1")])
def test_a_primary_peer_that_is_not_handing_over_still_refuses(host, peer):
    secondary_here(host)
    host.set_drbd(peer, drbd("Secondary", name="iscsi2"))
    assert "iscsi1: " in refusal(host, wait_peer=5)
    assert host.manual() == model.MANUAL_SECONDARY


def test_without_a_switchover_a_primary_peer_refuses(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"), drbd("Secondary", name="iscsi2"))
    assert "iscsi1: the peer is Primary" in refusal(host)
    assert host.manual() == model.MANUAL_SECONDARY


def test_a_handoff_whose_agent_is_not_running_is_held_not_left_primary(host, mocker):
    """Outside a switchover, a role set while the agent is down is applied when it starts; a
    handoff's role, set beside a Primary peer, would promote this host whenever that peer
    demotes: it is held instead, on any failure."""
    from iscsi_ha import agent_status
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Primary", name="iscsi2"))
    mocker.patch.object(agent_status, "running", return_value=False)
    with pytest.raises(CliError) as failed:
        manual_ops.become_primary(host.ctx, timeout=5, wait_peer=5)
    assert "not running" in str(failed.value) and "holds it" in str(failed.value)
    assert host.manual() == model.MANUAL_HOLD


def test_a_handoff_interrupted_while_it_waits_is_held(host):
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Primary", name="iscsi2"))

    def interrupted(seconds):
        raise KeyboardInterrupt()
    host.ctx.sleep = interrupted
    with pytest.raises(KeyboardInterrupt):
        manual_ops.become_primary(host.ctx, timeout=5, wait_peer=5)
    assert host.manual() == model.MANUAL_HOLD


def test_a_handover_the_agent_never_completes_is_bounded_and_held(host):
    """The peer never demotes: after timeout + wait_peer the role is taken back to hold, so
    the agent cannot promote on its own later."""
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"),
                  drbd("Secondary", "Primary", name="iscsi2"))
    host.agent.refuse = "waiting: iscsi1: peer is still Primary"
    now = [0.0]
    host.ctx.clock = lambda: now[0]
    real = host.agent

    def sleep(seconds):
        now[0] += seconds
        real(seconds)
    host.ctx.sleep = sleep
    with pytest.raises(CliError) as failed:
        manual_ops.become_primary(host.ctx, timeout=1, wait_peer=2)
    assert 3.0 <= now[0] < 4.0, now[0]
    assert host.manual() == model.MANUAL_HOLD and "holds it" in str(failed.value)


def status_after_pass(desired, reason, planned, done, verdict="acting"):
    started = 1000.5
    return {"manual_mode": "become_primary", "desired_role": desired,
            "decision": {"reason": reason, "actions": planned, "verdict": verdict},
            "pass": {"started": started},
            "drbd": {"iscsi1": {"role": "Secondary"}},
            "target": {"running": False, "serving": False}, "floating_ip": {"local": False},
            "last_actions": [{"action": a, "ok": ok, "skipped": False, "at": started}
                             for a, ok in done]}


def test_role_reached_from_the_steps_of_the_pass():
    """The status of the acting pass still shows what it saw before acting."""
    plan = ["promote iscsi1", "start target", "add floating IP", "announce floating IP"]
    ok = status_after_pass("primary", "promoting: manual mode", plan,
                           [(a, True) for a in plan])
    assert manual_ops.role_reached(ok, model.PRIMARY, ["iscsi1"])
    failed = status_after_pass("primary", "promoting: manual mode", plan,
                               [(a, a != "add floating IP") for a in plan])
    assert not manual_ops.role_reached(failed, model.PRIMARY, ["iscsi1"])
    risk_only = status_after_pass("primary", "promoting: words are never read",
                                  ["stop target"], [("stop target", True)], verdict="blocked")
    assert not manual_ops.role_reached(risk_only, model.PRIMARY, ["iscsi1"])
    assert not manual_ops.role_reached(ok, model.SECONDARY, ["iscsi1"])


def test_become_primary_dad_is_the_short_one_when_the_connected_peer_is_secondary(host):
    """A Connected Secondary peer released the address (its agent demotes IP, target, DRBD in
    that order): one probe of ARP_DAD_RELEASED_TIMEOUT, as the agent's own address step."""
    secondary_here(host)
    manual_ops.become_primary(host.ctx, timeout=5)
    assert host.is_free.call_count == 1
    _, kwargs = host.is_free.call_args
    assert kwargs == {"count": 1, "timeout": host.config.ARP_DAD_RELEASED_TIMEOUT}


def test_become_primary_dad_is_the_full_one_when_the_peer_is_not_known_secondary(host):
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"),
                  drbd("Secondary", "Secondary", name="iscsi2"))
    host.set_manual(model.MANUAL_SECONDARY)
    manual_ops.vip_blocker(host.ctx, dict(host.states))
    _, kwargs = host.is_free.call_args
    assert kwargs == {}


def test_a_wait_ends_when_another_command_changes_the_role(host):
    """become-primary waits for the agent; meanwhile the role is set to secondary (the peer's
    switchover takes the storage back): the wait ends at once, and the new role stands."""
    secondary_here(host)
    host.agent.refuse = "waiting: iscsi1: peer is still Primary"
    real, polls = host.agent, []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 2:
            host.set_manual(model.MANUAL_SECONDARY)
        real(seconds)
    host.ctx.sleep = sleep
    with pytest.raises(CliError) as failed:
        manual_ops.become_primary(host.ctx, timeout=30)
    assert "manual mode was changed" in str(failed.value) and len(polls) == 2
    assert host.manual() == model.MANUAL_SECONDARY


def test_a_forced_promotion_whose_role_is_changed_meanwhile_leaves_no_force(host):
    """The admin confirmed a forced promotion; while it waits, the role is set to secondary
    by other means than become-secondary: the wait ends and the forced record goes with it."""
    from iscsi_ha import fencing
    secondary_here(host)
    host.set_drbd(drbd("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", "Secondary", name="iscsi2"))
    host.agent.refuse = "waiting"

    def sleep(seconds):
        host.set_manual(model.MANUAL_SECONDARY)       # written directly: no forced cleanup
    host.ctx.sleep = sleep
    with pytest.raises(manual_ops.RoleChanged):
        manual_ops.become_primary(host.ctx, force=True, confirm=lambda q: True, timeout=5)
    assert fencing.read_forced(host.config.STATE_DIR) == ()
    assert host.manual() == model.MANUAL_SECONDARY
