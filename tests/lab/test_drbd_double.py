"""The DRBD double: DRBD's rules, its error texts and exit codes, and its output formats.

Expected texts come from drbd-utils / DRBD sources and real outputs (cited in
lab/iscsi_ha_lab/drbd_double_cli.py); the real-format comparisons below use the captured fixtures in
tests/fixtures/drbd/ (their provenance is in their file names and .msgs files).
"""
import json
import os
import re
import subprocess
import sys

import pytest

from iscsi_ha_lab.paths import pythonpath
from iscsi_ha_lab import drbd_double_cli
from iscsi_ha_lab.drbd_double import DoubleError, World, install_wrappers
from iscsi_ha_lab.drbd_double_cli import invoke

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "drbd")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64 * 1024 * 1024


class FakeClock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(params=["8.4", "9"])
def world(request, tmp_path, clock):
    return World.create(str(tmp_path / "world"), version=request.param, clock=clock)


def adm(world, host, *args):
    return invoke(world, host, "drbdadm", list(args))


def setup(world, host, *args):
    return invoke(world, host, "drbdsetup", list(args))


def version(world):
    return world.snapshot()["version"]


def write(world, host, data, offset=0):
    with open(world.device_path(host, "iscsi1"), "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(world, host, size, offset=0):
    with open(world.device_path(host, "iscsi1"), "rb") as f:
        f.seek(offset)
        return f.read(size)


def view(world, host):
    return world.snapshot()["views"]["iscsi1"][host]


def state_error(world, code, text, rc, setup_obj):
    """stderr of a refused state change as drbdadm prints it (obj: the drbdsetup object)."""
    v84 = version(world) == "8.4"
    obj = "1" if v84 else "iscsi1"
    argv = ("/lib/drbd/drbdsetup-84 %s" if v84 else "drbdsetup %s") % setup_obj
    return ("%s: State change failed: (%d) %s\nCommand '%s' terminated with exit code %d\n"
            % (obj, code, text, argv, rc))


def promote_argv(world, force=False):
    base = "primary 1" if version(world) == "8.4" else "primary iscsi1"
    return base + (" --force" if force else "")


# -- creation and plain queries --------------------------------------------------------------
def test_create_makes_one_device_file_per_host_and_connects(world):
    for host in ("a", "b"):
        path = world.device_path(host, "iscsi1")
        assert path == os.path.join(world.directory, host, "drbd1")
        assert os.path.getsize(path) == SIZE
        assert os.path.exists(world.proc_drbd_path(host))
        v = view(world, host)
        assert (v["role"], v["disk"], v["connected"]) == ("Secondary", "UpToDate", True)


def test_queries_in_each_versions_format(world):
    assert adm(world, "a", "primary", "iscsi1") == (0, "", "")
    v84 = version(world) == "8.4"
    assert adm(world, "a", "role", "iscsi1") == (0, "Primary/Secondary\n" if v84 else "Primary\n", "")
    assert adm(world, "b", "role", "iscsi1")[1] == ("Secondary/Primary\n" if v84 else "Secondary\n")
    assert adm(world, "a", "cstate", "iscsi1") == (0, "Connected\n", "")
    assert adm(world, "a", "dstate", "iscsi1") == (0, "UpToDate/UpToDate\n", "")
    assert adm(world, "a", "sh-minor", "iscsi1") == (0, "1\n", "")


def test_status_text_connected(world):
    adm(world, "a", "primary", "iscsi1")
    rc, out, err = adm(world, "a", "status", "iscsi1")
    if version(world) == "8.4":   # 8.4 compat: connection named "peer", Established shown
        expected = ("iscsi1 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n"
                    "    replication:Established peer-disk:UpToDate\n\n")
    else:
        expected = ("iscsi1 role:Primary\n  disk:UpToDate\n  b role:Secondary\n"
                    "    peer-disk:UpToDate\n\n")
    assert (rc, out, err) == (0, expected, "")


def test_proc_drbd_connected_matches_the_real_layout(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="8.4", clock=clock)
    adm(world, "a", "primary", "iscsi1")
    ours = world.proc_drbd_text("a")
    with open(world.proc_drbd_path("a")) as f:
        assert f.read() == ours
    with open(os.path.join(FIXTURES, "proc", "issue_ha_cluster_exporter_141_connected.txt")) as f:
        real = f.read()
    normalise = lambda text: re.sub(r"\d+", "N", re.sub(r"srcversion: \S+", "", text))
    assert normalise(ours) == normalise(real)


def test_proc_drbd_of_version_9_has_only_the_header(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="9", clock=clock)
    text = world.proc_drbd_text("a")
    assert text.startswith("version: 9.") and "Transports" in text and "cs:" not in text


def test_status_json_has_the_real_shape(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="9", clock=clock)
    adm(world, "a", "primary", "iscsi1")
    rc, out, err = setup(world, "a", "status", "iscsi1", "--json")
    assert (rc, err) == (0, "")
    ours = json.loads(out)
    with open(os.path.join(FIXTURES, "status9", "status9_connected_primary.json")) as f:
        real = json.load(f)
    newer_only = {"open", "tls"}        # keys added by drbd-utils releases after 9.22

    def compare(mine, theirs):
        assert set(mine) <= set(theirs)
        assert set(theirs) - set(mine) <= newer_only
    compare(ours[0], real[0])
    compare(ours[0]["devices"][0], real[0]["devices"][0])
    compare(ours[0]["connections"][0], real[0]["connections"][0])
    compare(ours[0]["connections"][0]["peer_devices"][0],
            real[0]["connections"][0]["peer_devices"][0])
    conn = ours[0]["connections"][0]
    assert (ours[0]["role"], ours[0]["devices"][0]["disk-state"]) == ("Primary", "UpToDate")
    assert (conn["connection-state"], conn["peer-role"], conn["name"]) == (
        "Connected", "Secondary", "b")
    assert '"connection-state": "Connected", \n' in out      # drbdsetup's own stray space


def test_status_json_is_refused_by_84_drbdsetup(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="8.4", clock=clock)
    assert setup(world, "a", "status", "--json") == (
        20, "", "status: unrecognized option '--json'\n")


# -- the rules -------------------------------------------------------------------------------
def test_second_primary_while_connected_is_refused(world):
    assert adm(world, "a", "primary", "iscsi1")[0] == 0
    rc, out, err = adm(world, "b", "primary", "iscsi1")
    assert rc == 11
    assert err == state_error(world, -1, "Multiple primaries not allowed by config", 11,
                              promote_argv(world))
    assert world.snapshot()["primaries_while_connected"] == []


def test_a_link_cut_outdates_nobody_by_itself(world):
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    b = view(world, "b")
    assert (b["disk"], b["connected"], b["peer_role"], b["peer_disk"]) == (
        "UpToDate", False, "Unknown", "DUnknown")
    assert view(world, "a")["peer_disk"] == "DUnknown"
    expected = "WFConnection" if version(world) == "8.4" else "Connecting"
    assert adm(world, "b", "cstate", "iscsi1")[1] == expected + "\n"


def test_without_fencing_the_secondary_stays_uptodate(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), fencing=False, clock=clock)
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert view(world, "b")["disk"] == "UpToDate"
    assert adm(world, "b", "primary", "iscsi1")[0] == 0


def test_promote_while_disconnected_starts_a_new_generation(world):
    before = world.snapshot()["disks"]["iscsi1"]["a"]["generations"]
    adm(world, "a", "disconnect", "iscsi1")
    adm(world, "a", "primary", "iscsi1")
    after = world.snapshot()["disks"]["iscsi1"]["a"]["generations"]
    assert after[:-1] == before and after[-1] not in before


def test_demote_refused_while_the_device_is_open(world):
    adm(world, "a", "primary", "iscsi1")
    handle = open(world.device_path("a", "iscsi1"), "rb")
    try:
        rc, _, err = adm(world, "a", "secondary", "iscsi1")
        assert rc == 11
        setup_obj = "secondary 1" if version(world) == "8.4" else "secondary iscsi1"
        assert err == state_error(world, -12, "Device is held open by someone", 11, setup_obj)
        rc, _, err = adm(world, "a", "down", "iscsi1")
        assert rc == 11 and "(-12) Device is held open by someone" in err
        assert view(world, "a")["role"] == "Primary"
    finally:
        handle.close()
    assert adm(world, "a", "secondary", "iscsi1") == (0, "", "")
    assert view(world, "a")["role"] == "Secondary"


def test_secondary_force_ignores_openers_only_on_9(world):
    adm(world, "a", "primary", "iscsi1")
    with open(world.device_path("a", "iscsi1"), "rb"):
        rc, _, err = adm(world, "a", "secondary", "--force", "iscsi1")
        if version(world) == "8.4":
            assert (rc, err) == (1, "drbdadm: unrecognized option '--force'\n"
                                    "try 'drbdadm help secondary'\n")
            assert setup(world, "a", "secondary", "1", "--force")[0] == 20
        else:
            assert rc == 0 and view(world, "a")["role"] == "Secondary"


# -- usage errors ----------------------------------------------------------------------------
def test_unknown_resource_command_and_option(world):
    assert adm(world, "a", "primary", "xyz") == (
        1, "", "'xyz' not defined in your config (for this host).\n")
    assert adm(world, "a", "frobnicate", "iscsi1") == (
        1, "", "drbdadm: Unknown command 'frobnicate'\n")
    assert adm(world, "a", "primary", "--foo", "iscsi1") == (
        1, "", "drbdadm: unrecognized option '--foo'\ntry 'drbdadm help'\n")
    assert adm(world, "a", "primary")[0:2] == (1, "")
    assert view(world, "a")["role"] == "Secondary"


def test_version_lines(world):
    rc, out, err = adm(world, "a", "--version")
    assert (rc, err) == (0, "")
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert lines["DRBDADM_VERSION"] == "9.22.0"
    expected = "0x08040b" if version(world) == "8.4" else "0x090208"
    assert lines["DRBD_KERNEL_VERSION_CODE"] == expected


def test_a_crashed_host_runs_nothing(world):
    world.crash("a")
    with pytest.raises(DoubleError):
        adm(world, "a", "role", "iscsi1")


# -- up and down -----------------------------------------------------------------------------
def test_down_resource_answers(world):
    assert adm(world, "a", "down", "iscsi1") == (0, "", "")
    assert adm(world, "a", "down", "iscsi1") == (0, "", "")      # missing_ok, like drbdsetup
    rc, _, err = adm(world, "a", "role", "iscsi1")
    if version(world) == "8.4":
        assert err == ("1: Failure: (127) Device minor not allocated\n"
                       "additional info from kernel:\nunknown minor\n"
                       "Command '/lib/drbd/drbdsetup-84 role 1' terminated with exit code 10\n")
        assert "cs:" not in world.proc_drbd_text("a")
    else:
        assert err == ("iscsi1: Unknown resource\n"
                       "Command 'drbdsetup role iscsi1' terminated with exit code 10\n")
    assert rc == 10
    assert adm(world, "a", "dstate", "iscsi1") == (0, "Consistent\n", "")   # drbdmeta fallback
    assert adm(world, "a", "status", "iscsi1")[0] == 10
    assert view(world, "b")["cstate"] == "WFConnection"
    assert adm(world, "a", "up", "iscsi1") == (0, "", "")
    rc, _, err = adm(world, "a", "up", "iscsi1")
    assert rc == 20 and err.startswith("Device '1' is configured!\n")
    assert view(world, "a")["connected"]


def test_disconnect_and_connect(world):
    assert adm(world, "a", "disconnect", "iscsi1") == (0, "", "")
    assert adm(world, "a", "disconnect", "iscsi1") == (0, "", "")   # already StandAlone: fine
    assert adm(world, "a", "cstate", "iscsi1")[1] == "StandAlone\n"
    assert adm(world, "a", "connect", "iscsi1") == (0, "", "")
    assert adm(world, "a", "cstate", "iscsi1")[1] == "Connected\n"
    rc, _, err = adm(world, "a", "connect", "iscsi1")
    assert rc == 10 and "Failure: (125) Device has a net-config (use disconnect first)" in err


def test_status_when_nothing_is_up(world):
    for host in ("a", "b"):
        adm(world, host, "down", "iscsi1")
    assert view(world, "a")["cstate"] == "Unconfigured"
    if version(world) == "9":
        assert adm(world, "a", "status") == (0, "# No currently configured DRBD found.\n", "")
        assert setup(world, "a", "status", "--json") == (0, "[\n]\n\n", "")
    else:                           # drbdadm-84 runs "drbdsetup-84 status RES" per resource
        assert adm(world, "a", "status") == (
            10, "", "iscsi1: No such resource\nCommand '/lib/drbd/drbdsetup-84 status iscsi1'"
                    " terminated with exit code 10\n")


def test_drbdsetup_objects(world):
    assert setup(world, "a", "frobnicate", "iscsi1")[0] == 20
    rc, out, err = setup(world, "a", "role", "iscsi1")
    if version(world) == "8.4":     # 8.4's role takes a minor
        assert (rc, err) == (20, "Cannot determine minor device number of device 'iscsi1'\n")
        assert setup(world, "a", "role", "/dev/drbd1") == (0, "Secondary/Secondary\n", "")
    else:
        assert (rc, out) == (0, "Secondary\n")
    assert setup(world, "a", "dstate", "1") == (0, "UpToDate/UpToDate\n", "")
    assert setup(world, "a", "dstate", "7")[0] == 10


# -- protocol C and crashes ------------------------------------------------------------------
def test_protocol_c_copies_at_demote(world):
    adm(world, "a", "primary", "iscsi1")
    write(world, "a", b"acknowledged", 4096)
    adm(world, "a", "secondary", "iscsi1")
    assert read(world, "b", 12, 4096) == b"acknowledged"


def test_protocol_c_copies_at_crash_and_the_secondary_takes_over(world):
    adm(world, "a", "primary", "iscsi1")
    write(world, "a", b"before-crash")
    world.crash("a")
    assert read(world, "b", 12) == b"before-crash"
    assert view(world, "b")["disk"] == "UpToDate"          # a Primary that crashed fences nobody
    assert adm(world, "b", "primary", "iscsi1") == (0, "", "")
    write(world, "b", b"after-failover")
    world.boot("a")
    a = view(world, "a")
    assert (a["role"], a["disk"], a["repl"]) == ("Secondary", "Inconsistent", "SyncTarget")
    world.clock.now += 60
    assert view(world, "a")["disk"] == "UpToDate"
    assert read(world, "a", 14) == b"after-failover"


def test_link_cut_copies_then_files_diverge(world):
    adm(world, "a", "primary", "iscsi1")
    write(world, "a", b"one")
    world.set_link(False)
    write(world, "a", b"two")
    assert read(world, "b", 3) == b"one"
    world.set_link(True)
    assert view(world, "b")["repl"] == "SyncTarget"
    world.clock.now += 60
    world.settle()                      # the world moves on only when someone looks at it
    assert read(world, "b", 3) == b"two"
    assert view(world, "b")["disk"] == "UpToDate"


# -- resync ----------------------------------------------------------------------------------
def test_resync_progress_in_every_format(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="8.4", clock=clock,
                         resync_rate=SIZE // 10)
    adm(world, "a", "primary", "iscsi1")
    world.crash("b")
    world.boot("b")
    clock.now += 2.5                                    # a quarter of the 10 s resync
    text = world.proc_drbd_text("a")
    assert " 1: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----\n" in text
    # DRBD computes the per-mille with bit counts shifted right by 10: 29.5% here, not 25%
    assert re.search(r"\t\[====>\.{15}\] sync'ed: 29\.5% \(49152/65536\)K\n"
                     r"\tfinish: 0:00:0\d speed: 6,553 \(6,553\) K/sec\n", text), text
    assert "want:" in world.proc_drbd_text("b")
    rc, out, _ = adm(world, "b", "status", "iscsi1")
    assert "replication:SyncTarget peer-disk:UpToDate done:25.00" in out
    assert adm(world, "a", "cstate", "iscsi1")[1] == "SyncSource\n"
    clock.now += 8                                      # past the end of the resync
    assert adm(world, "b", "dstate", "iscsi1")[1] == "UpToDate/UpToDate\n"
    snap = world.snapshot()["disks"]["iscsi1"]
    assert snap["a"]["generations"] == snap["b"]["generations"]


def test_resync_in_status_json(tmp_path, clock):
    world = World.create(str(tmp_path / "w"), version="9", clock=clock, resync_rate=SIZE // 4)
    adm(world, "a", "primary", "iscsi1")
    world.crash("b")
    world.boot("b")
    clock.now += 1
    peer = json.loads(setup(world, "a", "status", "--json")[1])[0]["connections"][0]
    pd = peer["peer_devices"][0]
    assert (pd["replication-state"], pd["peer-disk-state"], pd["has-sync-details"]) == (
        "SyncSource", "Inconsistent", True)
    assert pd["percent-resync-done"] == 25.0 and pd["percent-in-sync"] == 25.0
    assert adm(world, "a", "status")[1].splitlines()[3] == (
        "    replication:SyncSource peer-disk:Inconsistent done:25.00")


# -- split brain -----------------------------------------------------------------------------
def test_split_brain_and_recovery(world):
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    adm(world, "b", "primary", "--force", "iscsi1")
    write(world, "a", b"survivor")
    write(world, "b", b"victim!!")
    world.set_link(True)
    snap = world.snapshot()
    assert snap["links"]["iscsi1"]["split_brain"] is True
    assert [snap["views"]["iscsi1"][h]["cstate"] for h in "ab"] == ["StandAlone"] * 2
    assert any(e["command"] == "split-brain" for e in world.events())
    assert adm(world, "b", "secondary", "iscsi1")[0] == 0
    assert adm(world, "b", "connect", "--discard-my-data", "iscsi1") == (0, "", "")
    assert view(world, "b")["cstate"] == "WFConnection"
    assert adm(world, "a", "connect", "iscsi1") == (0, "", "")
    assert view(world, "b")["repl"] == "SyncTarget"
    world.clock.now += 60
    snap = world.snapshot()
    assert snap["links"]["iscsi1"]["split_brain"] is False
    assert snap["links"]["iscsi1"]["split_brains"] == 1
    assert read(world, "b", 8) == b"survivor"
    assert snap["views"]["iscsi1"]["b"]["disk"] == "UpToDate"


def test_a_primary_cannot_be_the_victim(world):
    adm(world, "a", "disconnect", "iscsi1")
    adm(world, "a", "primary", "iscsi1")
    adm(world, "b", "primary", "--force", "iscsi1")
    adm(world, "a", "connect", "iscsi1")                         # split brain: StandAlone
    assert world.snapshot()["links"]["iscsi1"]["split_brain"]
    adm(world, "b", "connect", "--discard-my-data", "iscsi1")   # b is still Primary
    adm(world, "a", "connect", "iscsi1")
    snap = world.snapshot()
    assert not snap["links"]["iscsi1"]["connected"] and snap["links"]["iscsi1"]["split_brain"]
    assert [e["command"] for e in world.events()][-2:] == [
        "handshake-refused", ["drbdadm", "connect", "iscsi1"]]
    assert [snap["views"]["iscsi1"][h]["cstate"] for h in "ab"] == ["StandAlone"] * 2


def test_crashed_secondary_is_resynced_at_boot(world):
    adm(world, "a", "primary", "iscsi1")
    world.crash("b")
    assert view(world, "a")["cstate"] == "WFConnection"
    write(world, "a", b"while-b-was-off")
    world.boot("b")
    assert view(world, "b")["repl"] == "SyncTarget"
    world.clock.now += 60
    world.settle()
    assert read(world, "b", 15) == b"while-b-was-off"


# -- event log and parsers -------------------------------------------------------------------
def test_event_log_records_each_command(world):
    adm(world, "a", "primary", "iscsi1")
    adm(world, "b", "primary", "iscsi1")
    events = world.events("b")
    assert [e["command"] for e in events] == [["drbdadm", "primary", "iscsi1"]]
    assert events[0]["rc"] == 11 and "Multiple primaries" in events[0]["result"]
    assert all(set(e) >= {"time", "host", "command", "rc", "result"} for e in world.events())
    again = World.create(world.directory, version=version(world))
    assert again.events("a") == [] and again.events("b") == []


def _parsers():
    try:
        from iscsi_ha import drbd
    except ImportError:
        pytest.skip("iscsi_ha/drbd.py (the agent's DRBD parsers) is not there yet")
    return drbd


def _parsed(world, host):
    """The agent parsers' reading of what the double prints on ``host``."""
    drbd = _parsers()
    if version(world) == "8.4":
        state = drbd.parse_proc_drbd(world.proc_drbd_text(host))["1"]
        # drbd-utils user/v84/drbdsetup.c role_scmd/dstate_scmd/cstate_scmd print
        # "%s/%s\n", "%s/%s\n" and "%s\n": the double's one-liners agree with /proc/drbd.
        assert adm(world, host, "role", "iscsi1")[1] == "%s/%s\n" % (state.role, state.peer_role)
        assert adm(world, host, "dstate", "iscsi1")[1] == "%s/%s\n" % (state.disk,
                                                                       state.peer_disk)
        assert adm(world, host, "cstate", "iscsi1")[1] == "%s\n" % state.connection
        return state
    return drbd.parse_status_json(setup(world, host, "status", "--json")[1])["iscsi1"]


def _fields(state):
    return (state.role, state.peer_role, state.disk, state.peer_disk, state.is_connected,
            state.is_syncing, state.is_standalone)


def test_outputs_parse_with_the_agents_parsers(world):
    adm(world, "a", "primary", "iscsi1")
    assert _fields(_parsed(world, "a")) == (
        "Primary", "Secondary", "UpToDate", "UpToDate", True, False, False)
    world.set_link(False)
    assert _fields(_parsed(world, "b")) == (
        "Secondary", "Unknown", "UpToDate", "DUnknown", False, False, False)
    write(world, "a", b"after-the-cut")        # b is behind: it resyncs once connected
    adm(world, "b", "disconnect", "iscsi1")
    assert _parsed(world, "b").is_standalone
    adm(world, "b", "connect", "iscsi1")
    world.set_link(True)
    state = _parsed(world, "b")
    assert _fields(state) == (
        "Secondary", "Primary", "Inconsistent", "UpToDate", True, True, False)
    assert state.sync_percent is not None and 0 <= state.sync_percent < 100
    world.clock.now += 60
    assert _fields(_parsed(world, "b"))[2:4] == ("UpToDate", "UpToDate")


# -- wrappers, end to end --------------------------------------------------------------------
@pytest.fixture
def wrapped(tmp_path):
    world = World.create(str(tmp_path / "world"), version="8.4")
    bins = {}
    for host in ("a", "b"):
        bins[host] = str(tmp_path / ("bin-" + host))
        install_wrappers(bins[host], world.directory, host)
    return world, bins


def run_wrapped(bins, host, argv, timeout=30):
    env = dict(os.environ, PATH=bins[host] + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True, timeout=timeout, cwd="/")


def test_wrappers_end_to_end(wrapped):
    world, bins = wrapped
    proc = run_wrapped(bins, "a", ["drbdadm", "primary", "iscsi1"])
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run_wrapped(bins, "b", ["drbdadm", "primary", "iscsi1"])
    assert proc.returncode == 11 and "(-1) Multiple primaries" in proc.stderr
    proc = run_wrapped(bins, "a", ["drbdsetup", "role", "1"])
    assert (proc.returncode, proc.stdout) == (0, "Primary/Secondary\n")
    proc = run_wrapped(bins, "a", ["sh", "-c", "cat %s" % world.proc_drbd_path("a")])
    assert "cs:Connected ro:Primary/Secondary" in proc.stdout


def test_concurrent_promotions_let_exactly_one_win(wrapped):
    world, bins = wrapped
    for _ in range(3):
        procs = []
        for host in ("a", "b"):
            env = dict(os.environ, PATH=bins[host] + os.pathsep + os.environ.get("PATH", ""))
            procs.append(subprocess.Popen(["drbdadm", "primary", "iscsi1"], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        codes = sorted(p.wait(timeout=30) for p in procs)
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert codes == [0, 11]
        roles = [view(world, h)["role"] for h in ("a", "b")]
        assert sorted(roles) == ["Primary", "Secondary"]
        winner = "ab"[roles.index("Primary")]
        assert run_wrapped(bins, winner, ["drbdadm", "secondary", "iscsi1"]).returncode == 0


def test_module_entry_point_reports_misuse(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "iscsi_ha_lab.drbd_double_cli", "--world",
                           str(tmp_path), "--host", "a", "drbdadm", "role", "iscsi1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=pythonpath()))
    assert proc.returncode == 20 and "no DRBD double world" in proc.stderr


def test_a_command_waits_for_the_world_lock(wrapped):
    world, bins = wrapped
    env = dict(os.environ, PATH=bins["a"] + os.pathsep + os.environ.get("PATH", ""))
    with world.transaction():
        proc = subprocess.Popen(["drbdadm", "primary", "iscsi1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    assert proc.wait(timeout=30) == 0
    assert view(world, "a")["role"] == "Primary"


def test_split_invocation():
    assert drbd_double_cli.split_invocation(
        ["--world", "w", "--host", "a", "drbdadm", "role", "r"]) == ("w", "a", "drbdadm",
                                                                     ["role", "r"])
    with pytest.raises(DoubleError):
        drbd_double_cli.split_invocation(["--world", "w", "--host", "a", "cat"])


def test_dump_shows_the_fencing_the_world_models(tmp_path):
    from iscsi_ha_lab.drbd_double_cli import invoke
    for version, section in (("8.4", "disk"), ("9", "net")):
        world = World.create(str(tmp_path / version), version=version,
                             fencing="resource-and-stonith")
        world.set_handler("a", "fence-peer", ["/usr/libexec/iscsi-ha/drbd-fence-peer"])
        rc, out, _ = invoke(world, "a", "drbdadm", ["dump", "iscsi1"])
        assert rc == 0 and "fencing          resource-and-stonith;" in out
        assert section + " {" in out
        assert 'fence-peer       /usr/libexec/iscsi-ha/drbd-fence-peer;' in out
        rc, out, _ = invoke(world, "b", "drbdadm", ["dump", "iscsi1"])
        assert "fence-peer" not in out                  # b's own drbd.conf has no handler
        unfenced = World.create(str(tmp_path / (version + "u")), version=version, fencing=False)
        rc, out, _ = invoke(unfenced, "a", "drbdadm", ["dump", "iscsi1"])
        assert rc == 0 and "fencing" not in out


def test_get_gi_prints_drbd_utils_format_and_generations(world):
    """drbdadm get-gi: the line parse_gi reads (real formats in tests/test_splitbrain.py); the
    current generation moves when a disconnected Primary starts a new one, the role bit is
    set while Primary, and two connected in-sync disks show the same masked current UUID."""
    from iscsi_ha.drbd import parse_gi
    for host in ("a", "b"):
        adm(world, host, "up", "iscsi1")
    world.settle()
    adm(world, "a", "primary", "iscsi1")
    rc, out, _ = adm(world, "a", "get-gi", "iscsi1")
    assert rc == 0
    flags = out.strip().split(":")[4:]
    assert len(flags) == (7 if version(world) == "8.4" else 12)
    a, b = parse_gi(out), parse_gi(adm(world, "b", "get-gi", "iscsi1")[1])
    assert int(a.current, 16) & 1 == 1 and int(b.current, 16) & 1 == 0
    assert int(a.current, 16) & ~1 == int(b.current, 16) & ~1
    assert flags[:3] == ["1", "1", "1"]
    rc, _, err = adm(world, "a", "get-gi", "nosuch")
    assert rc != 0 and "not defined" in err
