"""DrbdAdapter with ``run`` replaced at its boundary and /proc/drbd in tmp files.

Command outputs are real; see tests/fixtures/drbd/SOURCES.md for each one's origin.
"""
import logging
import os
import shutil
from pathlib import Path

import pytest

from iscsi_ha.adapters import drbd as adapter_module
from iscsi_ha.adapters.drbd import DrbdAdapter, DrbdUnavailable
from iscsi_ha.adapters.run import CommandError, CommandResult
from iscsi_ha.drbd import DrbdParseError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "drbd"

# Captured here (drbd-utils 9.22.0-1, no DRBD module): drbdadm sh-minor of an unknown resource.
SH_MINOR_UNKNOWN = "'nosuch' not defined in your config (for this host).\n"
# Captured here: drbdsetup status --json without the module (this host also lacks modprobe).
STATUS_NO_MODULE = ("sh: 1: /sbin/modprobe: not found\n"
                    "Failed to modprobe drbd (No such file or directory)\n")
# ClusterLabs/ha_cluster_exporter#117: drbdsetup status --json with an 8.4 kernel module.
STATUS_ON_84 = "status: unrecognized option '--json'\n"
# LINBIT/drbd#74 (8.4 kernel, drbd-utils 9.11).
HELD_OPEN = ("1: State change failed: (-12) Device is held open by someone\n"
             "Command 'drbdsetup-84 secondary 1' terminated with exit code 11\n")
# A public notes file quoting drbdadm primary on 8.x.
NO_UP_TO_DATE = ("0: State change failed: (-2) Need access to UpToDate data\n"
                 "Command 'drbdsetup 0 primary' terminated with exit code 17\n")
# LINBIT/drbd-reactor#8 (DRBD 9, the message drbdsetup printed).
TWO_PRIMARIES = "linstor_db: State change failed: (-1) Multiple primaries not allowed by config\n"


def result(argv, returncode=0, stdout="", stderr="", timed_out=False):
    return CommandResult(argv, returncode, stdout, stderr, 0.01, timed_out)


class FakeRun(object):
    """Answers by argv; records every call with its timeout."""

    def __init__(self, answers):
        self.answers = answers            # tuple(argv) -> (returncode, stdout, stderr[, timed_out])
        self.calls = []

    def __call__(self, argv, timeout, **kwargs):
        self.calls.append((list(argv), timeout))
        answer = self.answers.get(tuple(argv))
        if answer is None:
            raise AssertionError("unexpected command %r" % (argv,))
        return result(argv, *answer)


@pytest.fixture
def fake_run(mocker):
    def install(answers):
        fake = FakeRun(answers)
        mocker.patch.object(adapter_module, "run", side_effect=fake)
        return fake
    return install


@pytest.fixture
def proc_file(tmp_path):
    def write(name):
        path = tmp_path / "drbd"
        shutil.copyfile(str(FIXTURES / "proc" / name), str(path))
        return str(path)
    return write


def status9(name):
    return (FIXTURES / "status9" / (name + ".json")).read_text()


# ---- construction ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(resources=[]), "non-empty list"),
    (dict(resources=["iscsi1", ""]), "non-empty list"),
    (dict(resources=["iscsi1"], version="9.1"), "one of 8.4, 9 or auto, got '9.1'"),
    (dict(resources=["iscsi1"], timeout=0), "timeout must be positive"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DrbdAdapter(**kwargs)


# ---- 8.4 observe ----------------------------------------------------------------------------

def test_84_observe_resolves_the_minor_once_and_reads_proc_each_time(fake_run, proc_file):
    # ganeti_proc_drbd84.txt: minor 1 is Connected Secondary/Primary UpToDate/UpToDate
    run = fake_run({("drbdadm", "-c", "/etc/drbd.conf", "sh-minor", "iscsi1"): (0, "1\n", "")})
    drbd = DrbdAdapter(["iscsi1"], drbdadm="drbdadm -c /etc/drbd.conf",
                       proc_drbd=proc_file("ganeti_proc_drbd84.txt"), timeout=3)
    first = drbd.observe()
    second = drbd.observe()
    assert first == second
    state = first["iscsi1"]
    assert (state.resource, state.minor) == ("iscsi1", "1")
    assert state.describe() == "Secondary/Primary Connected UpToDate/UpToDate"
    assert run.calls == [(["drbdadm", "-c", "/etc/drbd.conf", "sh-minor", "iscsi1"], 3.0)]


def test_84_observe_sees_a_changed_proc_file(fake_run, proc_file, tmp_path):
    fake_run({("drbdadm", "sh-minor", "iscsi1"): (0, "1\n", "")})
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=proc_file("issue_trinity_651_wfconnection.txt"))
    assert drbd.observe()["iscsi1"].connection == "WFConnection"
    proc_file("issue_trinity_651_standalone.txt")
    assert drbd.observe()["iscsi1"].describe() == "Primary/Unknown StandAlone UpToDate/Inconsistent"


def test_84_missing_proc_means_drbd_not_loaded(fake_run, tmp_path):
    fake_run({})
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=str(tmp_path / "nothing"))
    with pytest.raises(DrbdUnavailable, match="DRBD is not loaded: .*nothing missing"):
        drbd.observe()


@pytest.mark.parametrize("minor", ["2", "3"])   # 2 Unconfigured, 3 absent
def test_84_unconfigured_or_absent_minor_names_the_resource(fake_run, proc_file, minor):
    fake_run({("drbdadm", "sh-minor", "iscsi1"): (0, minor + "\n", "")})
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=proc_file("ganeti_proc_drbd84.txt"))
    with pytest.raises(DrbdUnavailable, match="resource iscsi1 \\(minor %s\\) is not up" % minor):
        drbd.observe()


def test_84_unknown_resource_is_reported_and_retried(fake_run, proc_file):
    run = fake_run({("drbdadm", "sh-minor", "nosuch"): (1, "", SH_MINOR_UNKNOWN)})
    drbd = DrbdAdapter(["nosuch"], proc_drbd=proc_file("ganeti_proc_drbd84.txt"))
    for _ in range(2):
        with pytest.raises(DrbdUnavailable, match="minor of DRBD resource nosuch.*exit 1: "
                                                  "'nosuch' not defined in your config"):
            drbd.observe()
    assert len(run.calls) == 2                                   # a failure is not cached


def test_84_resource_with_two_volumes_is_refused(fake_run, proc_file):
    # captured here: drbdadm sh-minor of a resource with volumes 0 and 1 prints both minors
    fake_run({("drbdadm", "sh-minor", "mv"): (0, "3\n4\n", "")})
    drbd = DrbdAdapter(["mv"], proc_drbd=proc_file("ganeti_proc_drbd84.txt"))
    with pytest.raises(DrbdParseError, match="printed '3\\\\n4'; iscsi-ha handles exactly one"):
        drbd.observe()


def test_84_sh_minor_timeout(fake_run, proc_file):
    fake_run({("drbdadm", "sh-minor", "iscsi1"): (-9, "", "", True)})
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=proc_file("ganeti_proc_drbd84.txt"))
    with pytest.raises(DrbdUnavailable, match="timed out"):
        drbd.observe()


def test_84_real_drbdadm_sh_minor(proc_file, tmp_path, monkeypatch, real_tool):
    """The installed drbdadm (it reads only the config) resolves the minor used in /proc/drbd."""
    drbdadm = real_tool("drbdadm")
    conf = tmp_path / "drbd.conf"
    conf.write_text(
        "resource iscsi1 {\n  protocol C;\n"
        "  on %s { device minor 6; disk /dev/loop100; address 192.0.2.11:7789;"
        " meta-disk internal; }\n"
        "  on peerhost { device minor 6; disk /dev/loop100; address 192.0.2.12:7789;"
        " meta-disk internal; }\n}\n" % os.uname()[1])
    monkeypatch.setenv("DRBD_DRIVER_VERSION_OVERRIDE", "8.4.11")
    monkeypatch.setenv("PATH", "/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    drbd = DrbdAdapter(["iscsi1"], drbdadm="%s -c %s" % (drbdadm, conf),
                       proc_drbd=proc_file("ganeti_proc_drbd84.txt"), timeout=10)
    assert drbd.minor("iscsi1") == "6"
    assert drbd.observe()["iscsi1"].describe() == "Secondary/Primary Connected Diskless/UpToDate"


# ---- 9 observe ------------------------------------------------------------------------------

STATUS = ("drbdsetup", "status", "--json")


def test_9_observe_is_one_drbdsetup_call(fake_run):
    run = fake_run({STATUS: (0, status9("status9_syncsource_primary"), "")})
    drbd = DrbdAdapter(["some-resource"], version="9", timeout=2)
    state = drbd.observe()["some-resource"]
    assert state.describe() == "Primary/Secondary SyncSource UpToDate/Inconsistent 37.5%"
    assert run.calls == [(list(STATUS), 2.0)]


def test_9_resource_not_up(fake_run):
    fake_run({STATUS: (0, status9("status9_connected_primary"), "")})
    drbd = DrbdAdapter(["iscsi1"], version="9")
    with pytest.raises(DrbdUnavailable, match="resource iscsi1 is not up: drbdsetup status "
                                              "lists some-resource"):
        drbd.observe()
    fake_run({STATUS: (0, status9("status9_no_resources"), "")})
    with pytest.raises(DrbdUnavailable, match="lists no resources"):
        drbd.observe()


@pytest.mark.parametrize("stderr, reason", [
    (STATUS_NO_MODULE, "exit 20: .*Failed to modprobe drbd"),
    (STATUS_ON_84, "exit 20: status: unrecognized option '--json'"),
])
def test_9_drbdsetup_failure_is_unavailable_with_its_reason(fake_run, stderr, reason):
    fake_run({STATUS: (20, "", stderr)})
    drbd = DrbdAdapter(["iscsi1"], version="9")
    with pytest.raises(DrbdUnavailable, match="drbdsetup status --json failed: " + reason):
        drbd.observe()


def test_9_truncated_json_is_a_parse_error(fake_run):
    fake_run({STATUS: (0, status9("status9_connected_primary")[:300], "")})
    with pytest.raises(DrbdParseError, match="not complete JSON"):
        DrbdAdapter(["some-resource"], version="9").observe()


# ---- fingerprint ----------------------------------------------------------------------------

def test_84_fingerprint_follows_state_words_not_io_counters(fake_run, proc_file):
    fake_run({})
    path = proc_file("issue_trinity_651_wfconnection.txt")
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=path)
    before = drbd.fingerprint()
    assert before == "1 Secondary/Unknown WFConnection Inconsistent/DUnknown"
    text = Path(path).read_text()
    Path(path).write_text(text.replace("ns:484 nr:72025332", "ns:9999 nr:72030000"))
    assert drbd.fingerprint() == before
    proc_file("issue_trinity_651_standalone.txt")
    assert drbd.fingerprint() != before


def test_fingerprint_never_raises(fake_run, tmp_path):
    fake_run({STATUS: (20, "", STATUS_NO_MODULE)})
    assert DrbdAdapter(["r"], proc_drbd=str(tmp_path / "x")).fingerprint() == (
        "unavailable: DRBD is not loaded: %s missing" % (tmp_path / "x"))
    assert DrbdAdapter(["r"], version="9").fingerprint().startswith(
        "unavailable: drbdsetup status --json failed: exit 20")


def test_9_fingerprint_changes_with_the_replication_state(fake_run):
    fake_run({STATUS: (0, status9("status9_synctarget_secondary"), "")})
    drbd = DrbdAdapter(["some-resource"], version="9")
    syncing = drbd.fingerprint()
    assert syncing == "some-resource Secondary/Primary SyncTarget Inconsistent/UpToDate"
    fake_run({STATUS: (0, status9("status9_connected_secondary"), "")})
    assert drbd.fingerprint() != syncing


# ---- role changes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version, call, argv", [
    ("8.4", lambda d: d.promote("iscsi1"), ["drbdadm", "primary", "iscsi1"]),
    ("8.4", lambda d: d.demote("iscsi1"), ["drbdadm", "secondary", "iscsi1"]),
    ("8.4", lambda d: d.demote("iscsi1", force=True), ["drbdadm", "secondary", "iscsi1"]),
    ("9", lambda d: d.demote("iscsi1", force=True),
     ["drbdsetup", "secondary", "iscsi1", "--force"]),
    ("9", lambda d: d.promote("iscsi1"), ["drbdadm", "primary", "iscsi1"]),
    ("8.4", lambda d: d.connect("iscsi1"), ["drbdadm", "connect", "iscsi1"]),
    ("8.4", lambda d: d.connect("iscsi1", discard_my_data=True),
     ["drbdadm", "connect", "--discard-my-data", "iscsi1"]),
    ("9", lambda d: d.disconnect("iscsi1"), ["drbdadm", "disconnect", "iscsi1"]),
])
def test_role_changes_run_drbds_command_and_log_it(fake_run, caplog, version, call, argv):
    run = fake_run({tuple(argv): (0, "", "")})
    drbd = DrbdAdapter(["iscsi1"], version=version, timeout=7)
    with caplog.at_level(logging.INFO, logger="iscsi-ha"):
        outcome = call(drbd)
    assert outcome.ok and outcome.argv == argv
    assert run.calls == [(argv, 7.0)]
    assert "drbd: " + " ".join(argv) in caplog.messages


@pytest.mark.parametrize("call, argv, stderr, code, reason", [
    (lambda d: d.promote("iscsi1"), ["drbdadm", "primary", "iscsi1"], NO_UP_TO_DATE, 17,
     "exit 17: 0: State change failed: (-2) Need access to UpToDate data"),
    (lambda d: d.promote("iscsi1"), ["drbdadm", "primary", "iscsi1"], TWO_PRIMARIES, 11,
     "exit 11: linstor_db: State change failed: (-1) Multiple primaries not allowed by config"),
    (lambda d: d.demote("iscsi1"), ["drbdadm", "secondary", "iscsi1"], HELD_OPEN, 11,
     "exit 11: 1: State change failed: (-12) Device is held open by someone"),
])
def test_role_change_failure_carries_drbds_reason(fake_run, call, argv, stderr, code, reason):
    fake_run({tuple(argv): (code, "", stderr)})
    with pytest.raises(CommandError) as raised:
        call(DrbdAdapter(["iscsi1"]))
    assert str(raised.value) == "drbd: %s failed: %s" % (" ".join(argv), reason)
    assert raised.value.result.returncode == code


def test_role_change_timeout(fake_run):
    fake_run({("drbdadm", "primary", "iscsi1"): (-9, "", "", True)})
    with pytest.raises(CommandError, match="drbdadm primary iscsi1 failed: timed out after"):
        DrbdAdapter(["iscsi1"]).promote("iscsi1")


def test_role_change_of_an_unconfigured_resource_is_refused(fake_run):
    run = fake_run({})
    with pytest.raises(ValueError, match="'r9' is not configured \\(known: iscsi1\\)"):
        DrbdAdapter(["iscsi1"]).promote("r9")
    assert run.calls == []


def test_auto_version_waits_for_drbd_then_reads_proc(tmp_path):
    from iscsi_ha.adapters.drbd import DrbdAdapter, DrbdUnavailable
    proc = tmp_path / "drbd"
    adapter = DrbdAdapter(["r0"], version="auto", proc_drbd=str(proc))
    with pytest.raises(DrbdUnavailable, match="not loaded"):
        adapter.version
    proc.write_text("version: 9.2.4 (api:2/proto:86-122)\n")
    assert adapter.version == "9"


# ---- split brain reads: data generations and out-of-sync amounts ------------------------------

# Captured here (drbd-utils 9.22.0-1, no DRBD module, a drbd.conf whose disk does not exist):
# drbdadm get-gi falls back to drbdmeta on the backing disk.
GET_GI_NO_DISK = ("open(/dev/loop101) failed: No such file or directory\n"
                  "Command 'drbdmeta 1 v08 /dev/loop101 internal get-gi' terminated with exit "
                  "code 20\n")
GI = "9E4DEF0B06A6DA9D:41C26508159C156A:CA64B93EC801717D:CA63B93EC801717D:1:1:1:0:0:0:0\n"


def test_generations_reads_drbdadm_get_gi(fake_run):
    run = fake_run({("drbdadm", "get-gi", "iscsi1"): (0, GI, "")})
    drbd = DrbdAdapter(["iscsi1"], timeout=3)
    gi = drbd.generations("iscsi1")
    assert gi.current == "9E4DEF0B06A6DA9D" and gi.bitmap == "41C26508159C156A"
    assert run.calls == [(["drbdadm", "get-gi", "iscsi1"], 3.0)]


def test_generations_failure_is_drbd_unavailable_in_drbds_words(fake_run):
    fake_run({("drbdadm", "get-gi", "iscsi1"): (20, "", GET_GI_NO_DISK)})
    with pytest.raises(DrbdUnavailable, match=r"data generations of iscsi1: drbdadm get-gi "
                                              r"iscsi1 failed: exit 20: open\(/dev/loop101\)"):
        DrbdAdapter(["iscsi1"]).generations("iscsi1")


def test_missing_drbdadm_is_drbd_unavailable_naming_the_package(tmp_path, monkeypatch):
    """The real run(): no drbdadm anywhere on PATH."""
    monkeypatch.setenv("PATH", str(tmp_path))
    drbd = DrbdAdapter(["iscsi1"], proc_drbd=str(tmp_path / "none"))
    with pytest.raises(DrbdUnavailable) as info:
        drbd.generations("iscsi1")
    assert "drbdadm get-gi iscsi1" in str(info.value) and "drbd-utils" in str(info.value)
    with pytest.raises(DrbdUnavailable, match="not loaded"):
        drbd.out_of_sync_kib("iscsi1")
    with pytest.raises(ValueError, match="not configured"):
        drbd.generations("other")


def test_out_of_sync_84_from_proc_drbd(fake_run, proc_file):
    fake_run({("drbdadm", "sh-minor", "r"): (0, "1\n", "")})
    drbd = DrbdAdapter(["r"], proc_drbd=proc_file("issue_trinity_651_standalone.txt"))
    assert drbd.out_of_sync_kib("r") == 40448716


def test_out_of_sync_9_from_status_json(fake_run):
    fake_run({STATUS: (0, status9("status9_syncsource_primary"), "")})
    assert DrbdAdapter(["some-resource"], version="9").out_of_sync_kib("some-resource") == 2500
