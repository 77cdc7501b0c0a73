"""iscsi-cfg split-brain: report, refusals, the recovery call, and the plugin's answer."""
import json

import pytest

from iscsi_ha import splitbrain
from iscsi_ha import peer as peer_mod
from iscsi_ha.cli import splitbrain_cmd
from iscsi_ha.cli.context import CliError, Refused

from .conftest import drbd

STANDALONE = dict(role="Secondary", peer_role="Unknown", connection="StandAlone",
                  peer_disk="DUnknown")


@pytest.fixture
def no_peer(mocker):
    return mocker.patch.object(peer_mod, "call", autospec=True, side_effect=peer_mod.PeerError("XAPI down"))


def test_nothing_in_split_brain_is_exit_0(host, no_peer):
    assert splitbrain_cmd.split_brain(host.ctx) == 0
    assert "is in split brain" in host.text() and "using what DRBD shows here" in host.text()


def test_split_brain_without_a_choice_is_exit_1_with_the_hint(host, no_peer):
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1", reason="test")
    assert splitbrain_cmd.split_brain(host.ctx) == 1
    assert "--keep" in host.text() and "iscsi1" in host.text()


def test_unknown_resource_and_unknown_host_are_usage_errors(host, no_peer):
    with pytest.raises(CliError) as info:
        splitbrain_cmd.split_brain(host.ctx, resource="nope")
    assert info.value.code == 2
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    with pytest.raises(CliError) as info:
        splitbrain_cmd.split_brain(host.ctx, keep="elsewhere", confirm=lambda q: True)
    assert info.value.code == 2 and "--keep elsewhere" in str(info.value)


PEER_FACTS = {"ok": True, "host": "test-b", "source": "DRBD", "resources": {
    "iscsi1": {"role": "Primary", "peer_role": "Unknown", "connection": "StandAlone",
               "disk": "UpToDate", "peer_disk": "DUnknown", "flag": {}, "generations": None,
               "out_of_sync_kib": None, "errors": []}}}


@pytest.fixture
def peer_facts(mocker):
    return mocker.patch.object(peer_mod, "call", autospec=True, return_value=dict(PEER_FACTS))


def test_recovery_without_a_terminal_or_yes_is_refused(host, peer_facts):
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    with pytest.raises(Refused) as info:
        splitbrain_cmd.split_brain(host.ctx, keep="local", confirm=None)
    assert "--yes" in str(info.value)


def test_recovery_is_refused_when_the_peer_cannot_be_reached(host, no_peer, mocker):
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    recover = mocker.patch.object(splitbrain, "recover")
    with pytest.raises(Refused, match="cannot be reached"):
        splitbrain_cmd.split_brain(host.ctx, keep="peer", confirm=lambda q: True)
    recover.assert_not_called()


def test_clear_removes_stale_flags_only_when_connected_and_uptodate(host, peer_facts):
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    with pytest.raises(Refused, match="flags stay"):
        splitbrain_cmd.split_brain(host.ctx, "iscsi1", clear_flags=True)
    assert splitbrain.read_flag(host.config.STATE_DIR, "iscsi1") is not None
    host.set_drbd(drbd(name="iscsi1"), drbd(name="iscsi2"))
    assert splitbrain_cmd.split_brain(host.ctx, "iscsi1", clear_flags=True) == 0
    assert splitbrain.read_flag(host.config.STATE_DIR, "iscsi1") is None
    assert peer_facts.call_args[0][2] == {"action": "clear-flag", "resource": "iscsi1"}


def test_recovery_calls_the_library_with_the_peer_part(host, peer_facts, mocker):
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    recover = mocker.patch.object(splitbrain, "recover", return_value={
        "resource": "iscsi1", "kept": "me", "state": "Secondary/Secondary Connected"})
    assert splitbrain_cmd.split_brain(host.ctx, keep="peer", confirm=lambda q: True) == 0
    args, kwargs = recover.call_args
    assert args[2] == "iscsi1" and args[3] is False            # keep_local False
    assert callable(args[5]) and callable(kwargs["release_device"])
    assert "iscsi1 recovered" in host.text()


def test_library_refusal_becomes_a_refusal(host, peer_facts, mocker):
    host.set_drbd(drbd(name="iscsi1", **STANDALONE), drbd(name="iscsi2"))
    splitbrain.write_flag(host.config.STATE_DIR, "iscsi1")
    mocker.patch.object(splitbrain, "recover",
                        side_effect=splitbrain.SplitBrainRefused("survivor is Outdated"))
    with pytest.raises(Refused, match="survivor is Outdated"):
        splitbrain_cmd.split_brain(host.ctx, keep="local", confirm=lambda q: True)


def test_plugin_answer_reports_refusals_as_json(host):
    answer = json.loads(splitbrain_cmd.plugin_answer(host.ctx, {"action": "victim",
                                                                "resource": "iscsi1"}))
    assert answer["ok"] is False and "not in split brain" in answer["error"]
    facts = json.loads(splitbrain_cmd.plugin_answer(host.ctx, {"action": "facts"}))
    assert facts["ok"] is True and set(facts["resources"]) == {"iscsi1", "iscsi2"}


def test_drbd_unreadable_here_is_not_reported_as_no_split_brain(host, no_peer, mocker):
    """drbdadm missing and /proc/drbd unreadable: the report says it cannot tell, exit 1 (not
    "no split brain", exit 0)."""
    from iscsi_ha.adapters.drbd import DrbdAdapter
    from iscsi_ha.drbd import DrbdUnavailable
    DrbdAdapter.observe.side_effect = DrbdUnavailable("DRBD is not loaded: /proc/drbd missing")
    with pytest.raises(CliError) as info:
        splitbrain_cmd.split_brain(host.ctx)
    assert info.value.code == 1 and "cannot be read here" in str(info.value)
    assert "iscsi1: cannot tell whether it is in split brain" in host.text()
    assert "/proc/drbd missing" in host.text() and "get-gi iscsi1" in host.text()
