"""``iscsi-cfg check`` (tools, DRBD, agent, identity of both hosts' targets, the SR) and the XAPI
plugin functions (in-process, as ``python -m iscsi_ha.cli.plugin`` and as plugins/iscsi-ha)."""
import json
import os
import subprocess
import sys

import pytest

from iscsi_ha import model
from iscsi_ha.adapters.target import TargetAdapter, TargetState, parse_tgtadm_targets
from iscsi_ha.cli import check_cmd, plugin
from iscsi_ha.cli.context import HostContext

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
TGTADM = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "tgtadm")


def tgtadm_targets(name):
    with open(os.path.join(TGTADM, name)) as handle:      # real tgtadm output (SOURCES.md)
        return parse_tgtadm_targets(handle.read())


def serving(mocker, fixture):
    targets = tgtadm_targets(fixture)
    mocker.patch.object(TargetAdapter, "observe", autospec=True, return_value=TargetState(
        True, True, targets, [], 0, "ready", [1], ""))
    return targets


def test_default_identity_matches_real_tgtd_output():
    lun = tgtadm_targets("target_lun10_acl_all.txt")["iqn.2015.com.halizard:noSAN"].luns[10]
    assert check_cmd.default_identity(1, 10) == (lun.scsi_id, lun.scsi_sn)


def side(iqn, luns, exported=None):
    return {"iqn": iqn, "luns": dict((str(n), "/dev/drbd%d" % n) for n in luns),
            "running": bool(exported), "exported": exported or {}, "error": ""}


def test_compare_identity():
    iqn = "iqn.2015.com.halizard:noSAN"
    live = {iqn: {"tid": 1, "luns": {"10": {"scsi_id": "IET     0001000a", "scsi_sn":
                                             "beaf110", "backing_store": "/dev/drbd1"}}}}
    found = check_cmd.compare_identity(side(iqn, [10], live), side(iqn, [10]))
    assert [k for k, _ in found] == ["ok", "ok", "ok"]
    assert "tid 1 when started" in found[2][1]
    moved = {iqn: {"tid": 2, "luns": {"10": {"scsi_id": "IET     0002000a", "scsi_sn":
                                              "beaf210", "backing_store": "/dev/drbd1"}}}}
    found = check_cmd.compare_identity(side(iqn, [10], moved), side(iqn, [10]))
    assert found[-1][0] == "PROBLEM" and "SR would not recognise" in found[-1][1]
    assert check_cmd.compare_identity(side(iqn, [10]), side(iqn, [10, 11]))[-1] == (
        "PROBLEM", "LUN numbers differ: here [10], on the peer [10, 11]")
    assert check_cmd.compare_identity(side(iqn, [10]), side("iqn.2026-01.x:y", [10]))[0][0] == \
        "PROBLEM"


def test_local_identity_from_real_tgtadm_output(host, mocker):
    serving(mocker, "two_targets_chap_acl_offline.txt")
    found = check_cmd.local_identity(host.ctx)
    assert found["running"] and sorted(found["exported"]) == [
        "iqn.2015.com.halizard:noSAN", "iqn.2024-01.net.example:second"]
    second = found["exported"]["iqn.2024-01.net.example:second"]
    assert second["tid"] == 4 and sorted(second["luns"]) == ["1", "2"]
    # our IQN is not exported there: it would get the lowest free tid (2)
    ours = check_cmd.effective_identity(found, host.config.ISCSI_TARGET_IQN)
    assert ours[10][:2] == check_cmd.default_identity(2, 10)


def test_tool_findings(host, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    found = dict((s.split(" (")[0], k) for k, s in check_cmd.tool_findings(host.config))
    assert found["tool drbdadm"] == "PROBLEM"
    (tmp_path / "drbdadm").write_text("#!/bin/sh\n")
    os.chmod(str(tmp_path / "drbdadm"), 0o755)
    found = dict((s.split(" (")[0], k) for k, s in check_cmd.tool_findings(host.config))
    assert found["tool drbdadm"] == "ok" and "tool drbdsetup" not in found   # 8.4


def test_check_with_the_peer_through_xapi(host, pool, mocker):
    fake, _, ref = pool
    serving(mocker, "target_lun10_acl_all.txt")
    mocker.patch("shutil.which", return_value="/usr/sbin/x")
    host.config.ISCSI_TARGET_IQN = "iqn.2015.com.halizard:noSAN"
    host.config.ISCSI_LUNS = {10: "/tmp/ihv/lun1.img"}
    fake.register_plugin(ref, "iscsi-ha", "identity", lambda args: json.dumps(
        side("iqn.2015.com.halizard:noSAN", [10])))
    assert check_cmd.check(host.ctx) == 0, host.text()
    text = host.text()
    assert "ok       peer test-b answers through the XAPI plugin" in text
    assert "ok       LUN numbers 10 on both hosts" in text
    assert "ok       LUN 10 SCSI identity: here 'IET     0001000a'/beaf110 (exported, tid 1)" \
        in text
    assert "DRBD iscsi1: Primary/Secondary" in text and "agent: running" in text
    assert text.splitlines()[-1] == "check: no problem found"
    fake.register_plugin(ref, "iscsi-ha", "identity", lambda args: json.dumps(
        side("iqn.2015.com.halizard:noSAN", [10, 11])))
    assert check_cmd.check(host.ctx) == 1
    assert host.text().splitlines()[-1] == "check: 1 problem(s)"


def test_check_reports_an_unreachable_peer_and_exits_1(host, mocker):
    serving(mocker, "target_lun10_acl_all.txt")
    mocker.patch("shutil.which", return_value="/usr/bin/x")
    assert check_cmd.check(host.ctx) == 1
    assert "PROBLEM  peer: cannot reach the peer through XAPI" in host.text()
    assert check_cmd.check(host.ctx, with_peer=False) == 0


def test_sr_findings(host, pool):
    fake, _, _ = pool
    fake.add_iscsi_sr("sr", "192.0.2.100", "iqn.2026-11.other:x", "1IET_00010010")
    found = check_cmd.sr_findings(host.ctx)
    assert found[0][0] == "PROBLEM" and "iqn.2026-11.other:x" in found[0][1]


# -- the plugin -------------------------------------------------------------------------------------
@pytest.fixture
def in_plugin(host, mocker, monkeypatch):
    """Plugin calls build their context from $ISCSI_HA_CONFIG; give it the fake agent."""
    monkeypatch.setenv("ISCSI_HA_CONFIG", host.path)

    def context(lines, config_path=None):
        return HostContext(host.config, say=lines.append, sleep=host.agent,
                           inventory=host.ctx.inventory)
    mocker.patch.object(plugin, "_context", side_effect=context)
    return host


def test_plugin_status_is_the_status_document(in_plugin):
    document = json.loads(plugin.status(None, {}))
    assert document["hostname"] == "test-a" and document["agent_running"] is True


def test_plugin_become_primary_refuses_like_the_cli(in_plugin):
    answer = json.loads(plugin.become_primary(None, {"timeout": "5"}))
    assert answer["ok"] is False and answer["code"] == 1
    assert "manual mode is off on this host" in answer["lines"][-1]


def test_plugin_manual_mode_and_roles(in_plugin):
    host = in_plugin
    answer = json.loads(plugin.manual_mode(None, {"mode": "enable"}))
    assert answer["ok"] and host.manual() == model.MANUAL_PRIMARY
    answer = json.loads(plugin.become_secondary(None, {"timeout": "5"}))
    assert answer["ok"] and answer["elapsed_s"] >= 0 and host.manual() == \
        model.MANUAL_SECONDARY
    assert any("secondary reached" in line for line in answer["lines"])
    # (a timeout that is not a number used to fall back to the default; it is refused now,
    # before anything is written: tests/test_bad_inputs.py covers nan/inf/negative)
    answer = json.loads(plugin.become_primary(None, {"timeout": "bogus"}))
    assert answer["code"] == 2 and host.manual() == model.MANUAL_SECONDARY
    assert "not a number of seconds" in answer["lines"][0]
    answer = json.loads(plugin.become_primary(None, {}))
    assert answer["ok"] and host.manual() == model.MANUAL_PRIMARY
    answer = json.loads(plugin.manual_mode(None, {"mode": "maybe"}))
    assert answer["code"] == 2 and "mode=enable or mode=disable" in answer["lines"][0]


def test_plugin_module_and_script_run_without_xenapiplugin(host):
    env = dict(os.environ, ISCSI_HA_CONFIG=host.path, PYTHONPATH=ROOT)
    for argv in ([sys.executable, "-m", "iscsi_ha.cli.plugin", "manual_mode", "mode=x"],
                 [sys.executable, os.path.join(ROOT, "plugins", "iscsi-ha"), "manual_mode",
                  "mode=x"]):
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["code"] == 2
    proc = subprocess.run([sys.executable, "-m", "iscsi_ha.cli.plugin"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


FENCED_84 = """resource iscsi1 {
    disk {
        fencing          resource-only;
    }
    handlers {
        fence-peer       "/usr/lib/drbd/crm-fence-peer.sh";
    }
}
"""


def test_fencing_findings(host):
    host.dumps = {"iscsi1": FENCED_84, "iscsi2": FENCED_84.replace("iscsi1", "iscsi2")}
    found = check_cmd.fencing_findings(host.ctx)
    assert [k for k, _ in found] == ["ok", "ok"] and "resource-only" in found[0][1]
    host.dumps["iscsi1"] = FENCED_84.replace("fencing          resource-only;", "")
    found = check_cmd.fencing_findings(host.ctx)
    assert found[0][0] == "PROBLEM" and "stale data" in found[0][1]
    del host.dumps["iscsi1"]                    # drbdadm dump fails
    found = check_cmd.fencing_findings(host.ctx)
    assert found[0][0] == "info" and "cannot read its configuration" in found[0][1]


DRBD_CONF = """resource iscsi1 {
  protocol C;
  %(section)s { %(fencing)s }
  handlers { %(handler)s }
  on %(me)s { device minor 1; disk /dev/loop101; address 192.0.2.11:7789; meta-disk internal; }
  on peerhost { device minor 1; disk /dev/loop101; address 192.0.2.12:7789; meta-disk internal; }
}
"""


@pytest.mark.parametrize("version, section", [("8.4.11", "disk"), ("9.2.0", "net")])
def test_fencing_findings_from_the_real_drbdadm_dump(tmp_path, monkeypatch, real_tool, version,
                                                     section):
    """The real drbdadm parses a drbd.conf this test writes (it reads only the file; the kernel
    version is given by DRBD_DRIVER_VERSION_OVERRIDE, as drbd-utils' own tests do, since no DRBD
    module is loaded here: without it drbdadm assumes 9 and refuses 8.4's disk { fencing })."""
    import types
    from iscsi_ha.adapters.drbd import DrbdAdapter
    drbdadm = real_tool("drbdadm")
    monkeypatch.setenv("DRBD_DRIVER_VERSION_OVERRIDE", version)
    monkeypatch.setenv("PATH", os.path.dirname(drbdadm) + os.pathsep + os.environ["PATH"])
    cases = [("fencing resource-only;", 'fence-peer "/usr/lib/drbd/crm-fence-peer.sh";', "ok"),
             ("fencing resource-only;", "", "PROBLEM"),
             ("", 'fence-peer "/usr/lib/drbd/crm-fence-peer.sh";', "PROBLEM")]
    for number, (fencing, handler, expected) in enumerate(cases):
        conf = tmp_path / ("drbd%d.conf" % number)
        conf.write_text(DRBD_CONF % dict(section=section if fencing else "disk", fencing=fencing,
                                         handler=handler, me=os.uname()[1]))
        adapter = DrbdAdapter(["iscsi1"], drbdadm="%s -c %s" % (drbdadm, conf), timeout=10)
        text = adapter.dump("iscsi1")
        assert "resource iscsi1 {" in text
        ctx = types.SimpleNamespace(config=types.SimpleNamespace(DRBD_RESOURCES=("iscsi1",)),
                                    adapters=types.SimpleNamespace(drbd=adapter))
        found = check_cmd.fencing_findings(ctx)
        assert [kind for kind, _ in found] == [expected], (conf.read_text(), text, found)
