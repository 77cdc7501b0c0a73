"""The tgtd adapter: parser on real tgtadm output, every branch with `run` mocked, and a real
tgtd in network namespaces (marked netns).

Fixtures: tests/fixtures/tgtadm/ (real output of Debian 12's tgt 1.0.85, see SOURCES.md there).
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from iscsi_ha.adapters import target as target_mod
from iscsi_ha.adapters.run import CommandResult
from iscsi_ha.adapters.target import (STOP_COMMAND, STOP_KILL, STOP_NOT_RUNNING,
                                      STOP_TGTADM_DELETE, TargetAdapter, TargetError,
                                      TargetParseError, TargetStopError, parse_tgtadm_system,
                                      parse_tgtadm_targets, service_pids)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tgtadm"
REPO = Path(__file__).resolve().parents[2]
IQN = "iqn.2015.com.halizard:noSAN"
SECOND = "iqn.2024-01.net.example:second"
LUN1 = "/tmp/ihv/lun1.img"   # the backing stores named in the fixtures
LUN2 = "/tmp/ihv/lun2.img"
# stderr lines of the real tgtadm (SOURCES.md lists where each came from)
NOT_CONNECTED = ("tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not "
                 "connected\n")
INVALID = "tgtadm: invalid request\n"
LU_ACTIVE = "tgtadm: this logical unit is still active\n"


def fixture(name):
    return (FIXTURES / name).read_text()


# -- parser ----------------------------------------------------------------------------------

def test_no_target_prints_nothing():
    assert parse_tgtadm_targets(fixture("empty.txt")) == {}


def test_new_target_has_only_the_controller_lun():
    info = parse_tgtadm_targets(fixture("target_no_lun_no_acl.txt"))[IQN]
    assert (info.tid, info.driver, info.state) == (1, "iscsi", "ready")
    assert list(info.luns) == [0]
    controller = info.luns[0]
    assert controller.type == "controller"
    assert controller.backing_store is None and controller.backing_store_type == "null"
    assert (controller.scsi_id, controller.scsi_sn) == ("IET     00010000", "beaf10")
    assert info.acl == [] and info.accounts == [] and info.connections == 0


def test_file_lun_with_acl_all():
    info = parse_tgtadm_targets(fixture("target_lun10_acl_all.txt"))[IQN]
    lun = info.luns[10]
    assert lun.backing_store == LUN1 and lun.backing_store_type == "rdwr"
    assert (lun.scsi_id, lun.scsi_sn) == ("IET     0001000a", "beaf110")
    assert (lun.size_mb, lun.block_size, lun.online, lun.readonly) == (67, 512, True, False)
    assert lun.backing_store_flags == ""
    assert lun.attrs["Thin-provisioning"] == "No"
    assert info.acl == ["ALL"]


def test_connected_initiators():
    info = parse_tgtadm_targets(fixture("target_two_initiators.txt"))[IQN]
    assert info.initiators == 2 and info.connections == 2
    assert [n.initiator for n in info.nexuses] == ["iqn.2024-01.test:client-b",
                                                   "iqn.2024-01.test:client-c"]
    assert [n.nexus_id for n in info.nexuses] == [2, 3]
    assert info.nexuses[0].alias == "none"
    assert info.nexuses[0].connections[0].cid == 0
    assert info.nexuses[0].connections[0].address == "192.0.2.12"


def test_two_targets_accounts_acls_and_offline_state():
    targets = parse_tgtadm_targets(fixture("two_targets_chap_acl_offline.txt"))
    assert sorted(targets) == [IQN, SECOND]
    second = targets[SECOND]
    assert (second.tid, second.state) == (4, "offline")
    assert second.accounts == ["chapuser", "outuser (outgoing)"]
    assert second.acl == ["192.0.2.0/24", "iqn.2024-01.test:allowed"]
    assert second.luns[1].backing_store_type == "aio"
    assert second.luns[2].backing_store_flags == "direct"


def test_custom_identity_and_lun_without_backing_store():
    second = parse_tgtadm_targets(fixture("with_cd_lun.txt"))[SECOND]
    assert (second.luns[1].scsi_id, second.luns[1].scsi_sn) == ("halizard-lun1", "0a1b2c3d")
    cd = second.luns[3]
    assert cd.type == "cd/dvd" and cd.backing_store is None and cd.online is False


def test_system_state():
    assert parse_tgtadm_system(fixture("sys_ready.txt"))["State"] == "ready"
    assert parse_tgtadm_system(fixture("sys_offline.txt"))["State"] == "offline"


def _replace_line(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("old, new, line", [
    ("    LUN information:", "    Portal information:", 6),        # unknown section
    ("        LUN: 10", "        LUN: ten", 21),                   # LUN not a number
    ("            Online: Yes", "           Online: Yes", 12),     # 11 spaces
    ("Target 1: iqn", "Target one: iqn", 1),
    ("            SWP: No", "            SWP No", 16),             # no "key: value"
    ("        ALL", "        ALL\n            extra", 38),          # child of an ACL entry
])
def test_unknown_structure_names_the_line(old, new, line):
    text = _replace_line(fixture("target_lun10_acl_all.txt"), old, new)
    with pytest.raises(TargetParseError, match=r"line %d\b" % line):
        parse_tgtadm_targets(text)


def test_unexpected_nexus_line_names_the_line():
    text = _replace_line(fixture("target_two_initiators.txt"), "            Connection: 0",
                         "            Session: 0")
    with pytest.raises(TargetParseError, match=r"line 8\b.*I_T nexus 2"):
        parse_tgtadm_targets(text)


def test_text_before_first_target_is_refused():
    with pytest.raises(TargetParseError, match="line 1"):
        parse_tgtadm_targets("    ACL information:\n" + fixture("target_lun10_acl_all.txt"))


def test_system_output_without_state_is_refused():
    with pytest.raises(TargetParseError, match="State"):
        parse_tgtadm_system(fixture("sys_ready.txt").replace("State", "Mood"))


# -- a fake `run` that answers like the real tools ------------------------------------------

def _kind(argv):
    """Name a command: the adapter's own commands by their script, tgtadm by op/mode."""
    if argv[0] in ("status", "start", "stop"):
        return argv[0]
    words = " ".join(argv)
    for key, kind in (("--op show --mode target", "show"), ("--op show --mode sys", "sys"),
                      ("State -v offline", "offline"), ("State -v ready", "sys-ready"),
                      ("--name state -v ready", "target-ready"),
                      ("--name state -v offline", "target-offline"),
                      ("--op new --mode target", "new-target"),
                      ("--op new --mode logicalunit", "new-lun"),
                      ("--op update --mode logicalunit", "lun-params"),
                      ("--op update --mode target --tid 1 --name Default", "target-params"),
                      ("--op bind", "bind"), ("--op delete --mode target", "delete-target"),
                      ("--op delete --mode system", "delete-system")):
        if key in words:
            return kind
    raise AssertionError("unexpected command %s" % words)


class FakeHost(object):
    """Answers each command kind from a queue of (exit code, stdout, stderr[, timed out]);
    the last answer repeats. ``pids`` plays the processes found in this namespace."""

    def __init__(self, **answers):
        self.answers = {"status": [(0, "", "")], "sys": [(0, fixture("sys_ready.txt"), "")]}
        self.answers.update(answers)
        self.calls, self.pids, self.killed = [], [], []
        self.on = {}   # kind -> callback(argv), to change state (e.g. the daemon exits)
        self.frozen = False       # a daemon process is SIGSTOPped
        self.kill_works = False   # SIGKILL ends the daemon

    def run(self, argv, timeout, **kwargs):
        assert timeout > 0
        kind = _kind(argv)
        self.calls.append((kind, list(argv)))
        if kind in self.on:
            self.on[kind](argv)
        queue = self.answers.get(kind, [(0, "", "")])
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        code, out, err = answer[:3]
        timed_out = len(answer) > 3 and answer[3]
        return CommandResult(argv, -9 if timed_out else code, out, err, 0.01, timed_out)

    def kinds(self):
        return [k for k, _ in self.calls]

    def changes(self):
        return [k for k in self.kinds() if k not in ("status", "show", "sys")]

    def dies(self, *_):
        self.pids = []
        self.answers["status"] = [(3, "", "")]

    def kill(self, pids):
        self.killed.extend(pids)
        if self.kill_works:
            self.dies()


@pytest.fixture
def messages(caplog):
    """INFO messages of the iscsi-ha logger (which may not propagate to the root logger)."""
    logger = logging.getLogger("iscsi-ha")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)


@pytest.fixture
def host(mocker):
    fake = FakeHost()
    mocker.patch.object(target_mod, "run", fake.run)
    mocker.patch.object(target_mod, "service_pids", lambda name: list(fake.pids))
    mocker.patch.object(target_mod, "kill_pids", fake.kill)
    mocker.patch.object(TargetAdapter, "_frozen", lambda self: fake.frozen)
    mocker.patch.object(TargetAdapter, "poll_interval", 0.01)
    mocker.patch.object(TargetAdapter, "stop_grace", 0.05)
    mocker.patch.object(TargetAdapter, "kill_grace", 0.05)
    return fake


def adapter(iqn=IQN, luns=None, **kwargs):
    kwargs.setdefault("ready_timeout", 0.2)
    return TargetAdapter(iqn, {10: LUN1} if luns is None else luns, "tgtd", "status",
                         "start", "stop", tgtadm="tgtadm -C 7", **kwargs)


def shows(*names):
    return [(0, fixture(n), "") for n in names]


# -- observe ---------------------------------------------------------------------------------

def test_observe_stopped(host):
    host.answers["status"] = [(3, "", "")]
    state = adapter().observe()
    assert (state.running, state.serving) == (False, False)
    assert state.missing == ["tgtd is not running"]
    assert host.kinds() == ["status"]


def test_observe_stopped_but_a_process_lives(host):
    host.answers["status"] = [(3, "", "")]
    host.pids = [77]
    state = adapter().observe()
    assert state.missing == ["tgtd is not running (yet process 77 lives here)"]
    assert state.processes == [77]


def test_observe_status_ok_but_tgtadm_silent(host):
    host.pids = [4242]
    host.answers["show"] = [(107, "", NOT_CONNECTED)]
    state = adapter().observe()
    assert state.running is False and "does not answer" in state.error
    assert state.processes == [4242]


def test_observe_serving(host):
    host.answers["show"] = shows("target_two_initiators.txt")
    state = adapter().observe()
    assert (state.running, state.serving, state.missing) == (True, True, [])
    assert state.connections == 2 and state.system_state == "ready"
    assert host.calls[1][1][:3] == ["tgtadm", "-C", "7"]


def test_observe_names_what_is_missing(host):
    host.answers["show"] = shows("target_no_lun_no_acl.txt")
    state = adapter().observe()
    assert state.running and not state.serving
    assert state.missing == ["LUN 10 (/tmp/ihv/lun1.img) not exported",
                             "target %s has no ACL: no initiator may log in" % IQN]


def test_observe_target_not_defined(host):
    host.answers["show"] = shows("empty.txt")
    assert adapter().observe().missing == ["target %s not defined" % IQN,
                                           "LUN 10 (/tmp/ihv/lun1.img) not exported"]


def test_observe_wrong_backing_store(host):
    host.answers["show"] = shows("target_lun10_acl_all.txt")
    state = adapter(luns={10: "/dev/drbd1"}).observe()
    assert state.missing == ["LUN 10 exports /tmp/ihv/lun1.img, expected /dev/drbd1"]


def test_observe_offline_system_and_target(host):
    host.answers["show"] = shows("two_targets_chap_acl_offline.txt")
    host.answers["sys"] = shows("sys_offline.txt")
    state = adapter(SECOND, {1: LUN2, 2: LUN1}).observe()
    assert state.missing == ["tgtd system state is offline", "target %s is offline" % SECOND]


def test_observe_without_iqn_only_checks_the_daemon(host):
    host.answers["show"] = shows("empty.txt")
    state = TargetAdapter(None, {}, "tgtd", "status", "start", "stop").observe()
    assert state.serving is True


@pytest.mark.parametrize("scsi_sn, missing", [
    ("0a1b2c3d", []), ("ffff0000", ["LUN 1 scsi_sn is 0a1b2c3d, expected ffff0000"])])
def test_observe_checks_configured_identity(host, scsi_sn, missing):
    host.answers["show"] = shows("with_cd_lun.txt")
    a = adapter(SECOND, {1: LUN2}, lun_params={1: {"scsi_sn": scsi_sn}})
    assert [m for m in a.observe().missing if "offline" not in m] == missing


def test_observe_parse_error_propagates(host):
    host.answers["show"] = [(0, "Targets:\n", "")]
    with pytest.raises(TargetParseError):
        adapter().observe()


# -- start -----------------------------------------------------------------------------------

def test_start_from_stopped_creates_target_lun_and_acl(host, messages):
    host.answers["status"] = [(3, "", ""), (0, "", "")]
    host.answers["show"] = [(107, "", NOT_CONNECTED)] + shows("empty.txt",
                                                              "target_lun10_acl_all.txt")
    result = adapter().start()
    assert result.step == "changed"
    assert host.changes() == ["start", "new-target", "new-lun", "bind"]
    argv = dict((k, a) for k, a in host.calls)
    assert argv["new-target"] == ("tgtadm -C 7 --lld iscsi --op new --mode target --tid 1 "
                                  "-T %s" % IQN).split()
    assert argv["new-lun"] == ("tgtadm -C 7 --lld iscsi --op new --mode logicalunit --tid 1 "
                               "--lun 10 -b /tmp/ihv/lun1.img").split()
    assert argv["bind"][-4:] == ["--tid", "1", "-I", "ALL"]
    assert result.changes == ["started tgtd", "created target %s (tid 1)" % IQN,
                              "exported LUN 10 (/tmp/ihv/lun1.img)", "ACL ALL"]
    assert ("target: tgtadm -C 7 --lld iscsi --op new --mode target --tid 1 -T %s" % IQN
            in messages.messages)


def test_start_twice_changes_nothing(host):
    host.answers["show"] = shows("target_lun10_acl_all.txt")
    result = adapter().start()
    assert result.step == "unchanged" and result.changes == []
    assert host.changes() == []


def test_start_reuses_the_existing_tid(host):
    host.answers["show"] = shows("target_no_lun_no_acl.txt", "target_lun10_acl_all.txt")
    adapter().start()
    assert host.changes() == ["new-lun", "bind"]


def test_start_takes_the_lowest_free_tid(host):
    host.answers["show"] = shows("two_targets_chap_acl_offline.txt")   # tids 1 and 4
    with pytest.raises(TargetError):   # the fake never shows the new target: still missing
        adapter("iqn.2024-01.net.example:third", {5: "/dev/drbd5"}).start()
    new = [a for k, a in host.calls if k == "new-target"][0]
    assert new[new.index("--tid") + 1] == "2"


def test_start_sets_system_and_target_ready(host):
    host.answers["show"] = shows("two_targets_chap_acl_offline.txt", "target_lun10_acl_all.txt")
    host.answers["sys"] = shows("sys_offline.txt", "sys_ready.txt")
    with pytest.raises(TargetError, match="not serving after start"):
        adapter(SECOND, {1: LUN2, 2: LUN1}).start()   # the fake keeps target 4 offline
    assert host.changes() == ["target-ready", "sys-ready"]


def test_start_refuses_to_replace_an_exported_lun(host):
    host.answers["show"] = shows("target_lun10_acl_all.txt")
    with pytest.raises(TargetError, match="refusing to replace"):
        adapter(luns={10: "/dev/drbd1"}).start()
    assert host.changes() == []


def test_start_applies_configured_lun_params(host):
    host.answers["show"] = shows("target_no_lun_no_acl.txt", "target_lun10_acl_all.txt")
    adapter(lun_params={10: {"scsi_sn": "beaf110"}}).start()
    params = [argv for kind, argv in host.calls if kind == "lun-params"][0]
    assert params[-2:] == ["--params", "scsi_sn=beaf110"]


def test_start_sets_configured_target_params_when_it_creates_the_target(host):
    host.answers["status"] = [(3, "", ""), (0, "", "")]
    host.answers["show"] = [(107, "", NOT_CONNECTED)] + shows("empty.txt",
                                                              "target_lun10_acl_all.txt")
    result = adapter(target_params={"DefaultTime2Wait": "0"}).start()
    params = [argv for kind, argv in host.calls if kind == "target-params"]
    assert [p[-4:] for p in params] == [["--name", "DefaultTime2Wait", "--value", "0"]]
    assert host.kinds().index("target-params") == host.kinds().index("new-target") + 1
    assert "DefaultTime2Wait=0" in result.changes


def test_start_fails_when_tgtadm_never_answers(host):
    host.answers["show"] = [(107, "", NOT_CONNECTED)]
    with pytest.raises(TargetError, match="did not answer tgtadm within 0.2 s"):
        adapter().start()
    assert 2 <= host.kinds().count("show") <= 40   # polled, and bounded


def test_start_command_failure_is_raised(host):
    host.answers["status"] = [(3, "", "")]
    host.answers["start"] = [(1, "", "Job for tgtd.service failed.\n")]
    with pytest.raises(TargetError, match="tgtd.service failed"):
        adapter().start()


@pytest.mark.parametrize("kwargs, message", [
    (dict(luns={0: "/dev/drbd1"}), "controller"),
    (dict(iqn=None), "need a target IQN"),
    (dict(lun_params={10: {"scsi_sn": "a,b"}}), "not a tgtadm --params item"),
])
def test_constructor_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adapter(**kwargs)


# -- stop ------------------------------------------------------------------------------------

def test_stop_when_not_running(host):
    host.answers["status"] = [(3, "", "")]
    assert adapter().stop().step == STOP_NOT_RUNNING
    assert host.changes() == []


def test_stop_by_stop_command(host):
    host.pids = [100, 101]
    host.on["stop"] = host.dies
    result = adapter().stop()
    assert result.step == STOP_COMMAND
    assert host.changes() == ["offline", "stop"]
    offline = [a for k, a in host.calls if k == "offline"][0]
    assert offline == "tgtadm -C 7 --op update --mode sys --name State -v offline".split()


def test_stop_escalates_to_tgtadm_delete(host):
    host.pids = [100]
    host.answers["show"] = shows("two_targets_chap_acl_offline.txt")
    host.answers["delete-target"] = [(22, "", LU_ACTIVE), (0, "", "")]   # in-flight I/O
    host.on["delete-system"] = host.dies
    result = adapter().stop()
    assert result.step == STOP_TGTADM_DELETE
    steps = [(k, a[a.index("--tid") + 1]) for k, a in host.calls
             if k in ("target-offline", "delete-target")]
    assert steps == [("target-offline", "1"), ("delete-target", "1"), ("delete-target", "1"),
                     ("target-offline", "4"), ("delete-target", "4")]   # retried once
    assert all("--force" in a for k, a in host.calls if k == "delete-target")
    assert host.changes()[-1] == "delete-system" and host.killed == []


def test_stop_escalates_to_sigkill(host):
    host.pids = [100, 101]
    host.answers["show"] = shows("target_lun10_acl_all.txt")
    host.answers["delete-system"] = [(22, "", INVALID)]
    host.kill_works = True
    result = adapter().stop()
    assert result.step == STOP_KILL and host.killed == [100, 101]
    assert "100, 101" in result


def test_stop_skips_tgtadm_when_the_daemon_is_frozen(host):
    host.pids = [100]
    host.frozen = host.kill_works = True
    assert adapter().stop().step == STOP_KILL
    assert host.changes() == ["stop"]        # no tgtadm: it would hang on a stopped tgtd


def test_stop_skips_delete_when_offline_timed_out(host):
    host.pids = [100]
    host.answers["offline"] = [(0, "", "", True)]
    host.kill_works = True
    assert adapter().stop().step == STOP_KILL
    assert "delete-target" not in host.kinds() and "show" not in host.kinds()


def test_stop_raises_when_the_daemon_survives_everything(host):
    host.pids = [100]
    host.answers["show"] = [(107, "", NOT_CONNECTED)]
    with pytest.raises(TargetStopError, match=r"\[100\]"):
        adapter().stop()
    assert host.killed == [100]


# -- processes of this network namespace only -----------------------------------------------

def test_service_pids_finds_live_processes_and_skips_zombies():
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["sleep", "0"])
    try:
        for _ in range(100):
            if psutil.Process(dead.pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.02)
        pids = service_pids("sleep")
        assert live.pid in pids and dead.pid not in pids
    finally:
        live.kill()
        live.wait()
        dead.wait()


@pytest.mark.netns
def test_service_pids_ignores_other_namespaces(ns_prefix):
    from iscsi_ha_lab import netns
    ns = ns_prefix + "p"
    netns.add_namespace(ns)
    other = netns.popen_in(ns, ["sleep", "30"])
    mine = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(100):
            if psutil.Process(other.pid).name() == "sleep":
                break
            time.sleep(0.02)
        pids = service_pids("sleep")
        assert mine.pid in pids and other.pid not in pids
    finally:
        for proc in (other, mine):
            proc.kill()
            proc.wait()


# -- a real tgtd in the lab namespaces -------------------------------------------------------

PORT_A, PORT_B = 43, 44    # tgtd control ports reserved for these tests
PORTAL_A, PORTAL_B = "192.0.2.11", "192.0.2.12"
LAB_IQN = "iqn.2024-01.test.iscsi-ha:adapter"

DRIVER = r"""
import json, logging, sys
from iscsi_ha.adapters.target import TargetAdapter
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
adapter = TargetAdapter(**json.loads(sys.argv[1]))
out = []
for op in sys.argv[2:]:
    result = getattr(adapter, op)()
    if op == "observe":
        result = dict(running=result.running, serving=result.serving, missing=result.missing,
                      connections=result.connections, processes=result.processes)
    else:
        result = dict(text=str(result), step=result.step, changes=result.changes)
    out.append(result)
print(json.dumps(out))
"""


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _tgt_commands(tmp, port, portal):
    """Start/status/stop scripts for one tgtd, as an init system would provide them."""
    pidfile = tmp / ("tgtd%d.pid" % port)
    start = _script(tmp / ("start%d" % port),
                    "exec tgtd --iscsi portal=%s:3260 -C %d -p %s </dev/null >/dev/null 2>&1\n"
                    % (portal, port, pidfile))
    status = _script(tmp / ("status%d" % port),
                     "pid=$(cat %s 2>/dev/null) || exit 3\n"   # a zombie (Z) is not running
                     "grep -q '^State:[[:space:]]*[RSDTt]' /proc/$pid/status 2>/dev/null\n"
                     % pidfile)
    # SIGTERM only, like a naive init script: tgtd ignores it while a target exists
    term = _script(tmp / ("term%d" % port), "kill -TERM $(cat %s) 2>/dev/null; exit 0\n" % pidfile)
    # what Debian's tgt.service ExecStop does: offline, remove every target, delete the system
    clean = _script(tmp / ("clean%d" % port),
                    "T='tgtadm -C %d'\n$T --op update --mode sys --name State -v offline\n"
                    "for tid in $($T --lld iscsi --op show --mode target | "
                    "sed -n 's/^Target \\([0-9]*\\):.*/\\1/p'); do\n"
                    "  $T --lld iscsi --op delete --mode target --force --tid $tid\ndone\n"
                    "$T --op delete --mode system\n" % port)
    return dict(start=start, status=status, term=term, clean=clean, pidfile=pidfile)


def _config(cmds, port, lun_file, stop="clean"):
    return dict(iqn=LAB_IQN, luns={"10": str(lun_file)}, service="tgtd", status_cmd=cmds["status"],
                start_cmd=cmds["start"], stop_cmd=cmds[stop], tgtadm="tgtadm -C %d" % port,
                timeout=5.0, stop_timeout=2.0, ready_timeout=5.0)


def in_namespace(ns, config, *ops):
    """Run the adapter inside ``ns`` (as the agent runs in the lab) and return its answers."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER,
                           json.dumps(config)] + list(ops), cwd=str(REPO), timeout=60,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _answers(port):
    return subprocess.run(["tgtadm", "-C", str(port), "--op", "show", "--mode", "sys"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=5).returncode == 0


def _pid(cmds):
    try:
        return int(cmds["pidfile"].read_text().strip())
    except (OSError, ValueError):
        return None


def _wait(predicate, seconds=10.0, step=0.1):
    for _ in range(int(seconds / step)):
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _lives_in(pid, ns):
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino == os.stat("/run/netns/" + ns).st_ino
    except OSError:
        return False


@pytest.fixture
def tgt_lab(two_hosts, tmp_path):
    """Two namespaces, a 64 MiB sparse LUN file, scripts for one tgtd per namespace; every tgtd
    started here is stopped (or killed) afterwards."""
    missing = [t for t in ("tgtd", "tgtadm", "iscsi-ls", "iscsi-perf") if not shutil.which(t)]
    if missing:
        pytest.skip("missing tools: %s" % ", ".join(missing))
    for port in (PORT_A, PORT_B):
        if _answers(port):
            pytest.skip("a tgtd already answers on control port %d" % port)
    lun = tmp_path / "lun10.img"
    with open(str(lun), "wb") as handle:
        handle.truncate(64 << 20)
    lab = dict(a=two_hosts[0], b=two_hosts[1], lun=lun,
               cmds_a=_tgt_commands(tmp_path, PORT_A, PORTAL_A),
               cmds_b=_tgt_commands(tmp_path, PORT_B, PORTAL_B), children=[])
    try:
        yield lab
    finally:
        for child in lab["children"]:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        for ns in (lab["a"], lab["b"]):   # every tgtd of the test namespaces, nothing else
            for proc in psutil.process_iter():
                try:
                    if proc.name() == "tgtd" and _lives_in(proc.pid, ns):
                        proc.kill()
                        proc.wait(5)
                except psutil.Error:    # gone meanwhile
                    continue
        for port in (PORT_A, PORT_B):     # tgtd leaves its control socket file behind
            if not _answers(port):
                for suffix in ("", ".lock"):
                    path = "/var/run/tgtd/socket.%d%s" % (port, suffix)
                    if os.path.exists(path):
                        os.unlink(path)


@pytest.mark.netns
def test_real_tgtd_start_observe_idempotent_stop(tgt_lab):
    config = _config(tgt_lab["cmds_a"], PORT_A, tgt_lab["lun"])
    started, observed, again = in_namespace(tgt_lab["a"], config, "start", "observe", "start")
    assert started["changes"] == ["started tgtd", "created target %s (tid 1)" % LAB_IQN,
                                  "exported LUN 10 (%s)" % tgt_lab["lun"], "ACL ALL"]
    assert observed["running"] and observed["serving"] and observed["missing"] == []
    assert again["step"] == "unchanged" and again["changes"] == []
    listing = subprocess.run(["ip", "netns", "exec", tgt_lab["b"], "iscsi-ls", "-s",
                              "iscsi://%s/" % PORTAL_A], stdout=subprocess.PIPE,
                             universal_newlines=True, timeout=20).stdout
    assert LAB_IQN in listing and "Lun:10" in listing     # a real initiator sees the LUN
    stopped, after = in_namespace(tgt_lab["a"], config, "stop", "observe")
    assert stopped["step"] == STOP_COMMAND
    assert after["running"] is False and after["processes"] == []
    assert not _answers(PORT_A)


@pytest.mark.netns
def test_real_tgtd_stop_with_a_connected_initiator(tgt_lab):
    config = _config(tgt_lab["cmds_a"], PORT_A, tgt_lab["lun"], stop="term")
    in_namespace(tgt_lab["a"], config, "start")
    url = "iscsi://%s/%s/10" % (PORTAL_A, LAB_IQN)
    perf = subprocess.Popen(["ip", "netns", "exec", tgt_lab["b"], "iscsi-perf", "-i",
                             "iqn.2024-01.test:initiator-b", "-m", "1", "-b", "1", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    tgt_lab["children"].append(perf)
    assert _wait(lambda: in_namespace(tgt_lab["a"], config, "observe")[0]["connections"] >= 1)
    stopped, after = in_namespace(tgt_lab["a"], config, "stop", "observe")
    # SIGTERM does not stop tgtd while a target exists: tgtadm's forced deletion does
    assert stopped["step"] == STOP_TGTADM_DELETE
    assert after["running"] is False and not _answers(PORT_A)


@pytest.mark.netns
def test_real_tgtd_sigstopped_is_killed_and_other_namespace_spared(tgt_lab):
    config = _config(tgt_lab["cmds_a"], PORT_A, tgt_lab["lun"], stop="term")
    in_namespace(tgt_lab["a"], config, "start")
    other = subprocess.run(["ip", "netns", "exec", tgt_lab["b"], tgt_lab["cmds_b"]["start"]],
                           timeout=10)
    assert other.returncode == 0 and _wait(lambda: _answers(PORT_B))
    pid_a, pid_b = _pid(tgt_lab["cmds_a"]), _pid(tgt_lab["cmds_b"])
    os.kill(pid_a, signal.SIGSTOP)
    stopped, after = in_namespace(tgt_lab["a"], config, "stop", "observe")
    assert stopped["step"] == STOP_KILL
    assert after["running"] is False and after["processes"] == []
    assert psutil.pid_exists(pid_b) and psutil.Process(pid_b).status() != psutil.STATUS_ZOMBIE
    assert _answers(PORT_B)     # the tgtd of the other namespace still serves


def test_liveness_follows_the_process_and_not_its_pid():
    """liveness() reads each daemon process through the /proc/PID/stat descriptor opened when
    it was found: alive while it runs, not once it is a zombie or reaped."""
    import signal
    import subprocess
    import sys
    from iscsi_ha.adapters.target import TargetAdapter
    adapter = TargetAdapter("iqn.2026-11.test:t", {}, "tgtd", "true", "true", "true")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        adapter._remember_pids([child.pid])
        assert adapter.liveness() == (child.pid,)
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while adapter.liveness() and time.monotonic() < deadline:   # a zombie until reaped
            time.sleep(0.01)
        assert adapter.liveness() == ()
        child.wait(5)
        assert adapter.liveness() == ()
        adapter._remember_pids([])
        assert adapter._stat_fds == {} and adapter.liveness() == ()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        adapter.close()
