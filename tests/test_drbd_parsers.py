"""DRBD parsers against real outputs (tests/fixtures/drbd/SOURCES.md says where each came from)."""
import json
from pathlib import Path

import pytest

from iscsi_ha.drbd import (DrbdParseError, DrbdState, DrbdUnavailable, drbd_error_text,
                           parse_proc_drbd,
                           parse_status_json)

FIXTURES = Path(__file__).parent / "fixtures" / "drbd"


def proc(name):
    return (FIXTURES / "proc" / name).read_text()


def status9(name):
    return (FIXTURES / "status9" / (name + ".json")).read_text()


def words(state):
    return (state.role, state.peer_role, state.connection, state.disk, state.peer_disk,
            state.sync_percent)


# ---- DrbdState ------------------------------------------------------------------------------

def state(role="Primary", peer="Secondary", conn="Connected", disk="UpToDate",
          peer_disk="UpToDate", sync=None):
    return DrbdState("r0", "1", role, peer, conn, disk, peer_disk, sync)


@pytest.mark.parametrize("kwargs, bad", [
    (dict(role="Primery"), "Primery"),
    (dict(peer="primary"), "primary"),
    (dict(conn="Conected"), "Conected"),
    (dict(conn="Unconfigured"), "Unconfigured"),
    (dict(disk="Uptodate"), "Uptodate"),
    (dict(peer_disk=None), "None"),
])
def test_state_refuses_words_drbd_does_not_use(kwargs, bad):
    with pytest.raises(DrbdParseError, match=bad):
        state(**kwargs)


@pytest.mark.parametrize("sync", [-0.1, 100.5])
def test_state_refuses_a_percentage_outside_0_100(sync):
    with pytest.raises(DrbdParseError, match="outside 0-100"):
        state(conn="SyncSource", sync=sync)


@pytest.mark.parametrize("conn, connected, syncing, standalone", [
    ("Connected", True, False, False),
    ("Established", True, False, False),
    ("SyncSource", True, True, False),
    ("PausedSyncT", True, True, False),
    ("WFBitMapS", True, True, False),
    ("VerifyS", True, False, False),
    ("Ahead", True, False, False),
    ("WFConnection", False, False, False),
    ("Connecting", False, False, False),
    ("WFReportParams", False, False, False),
    ("StandAlone", False, False, True),
])
def test_state_link_properties(conn, connected, syncing, standalone):
    s = state(conn=conn)
    assert (s.is_connected, s.is_syncing, s.is_standalone) == (connected, syncing, standalone)


def test_state_role_properties_and_description():
    s = state(role="Secondary", peer="Primary", conn="SyncTarget", disk="Inconsistent",
              sync=37.5)
    assert (s.is_primary, s.peer_is_primary) == (False, True)
    assert s.describe() == "Secondary/Primary SyncTarget Inconsistent/UpToDate 37.5%"
    assert state().is_primary and not state().peer_is_primary


# ---- /proc/drbd -----------------------------------------------------------------------------

def test_proc_connected_primary():
    states = parse_proc_drbd(proc("issue_ha_cluster_exporter_141_connected.txt"))
    assert list(states) == ["1"]
    s = states["1"]
    assert (s.resource, s.minor) == (None, "1")
    assert words(s) == ("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", None)
    assert s.is_connected and not s.is_syncing


@pytest.mark.parametrize("name, expected", [
    ("issue_trinity_651_wfconnection.txt",
     ("Secondary", "Unknown", "WFConnection", "Inconsistent", "DUnknown", None)),
    ("issue_trinity_651_standalone.txt",
     ("Primary", "Unknown", "StandAlone", "UpToDate", "Inconsistent", None)),
    ("blog_serchaofan_syncsource.txt",
     ("Primary", "Secondary", "SyncSource", "UpToDate", "Inconsistent", 3.0)),
    ("blog_serchaofan_synctarget.txt",
     ("Secondary", "Primary", "SyncTarget", "Inconsistent", "UpToDate", 6.0)),
])
def test_proc_single_device(name, expected):
    states = parse_proc_drbd(proc(name))
    assert list(states) == ["1"]
    assert words(states["1"]) == expected


def test_proc_many_minors_with_gaps_unconfigured_and_diskless():
    states = parse_proc_drbd(proc("ganeti_proc_drbd84.txt"))
    assert sorted(states, key=int) == ["0", "1", "4", "6", "8"]   # 2 is Unconfigured
    assert words(states["4"]) == ("Primary", "Unknown", "WFConnection", "UpToDate", "DUnknown",
                                  None)
    assert words(states["6"]) == ("Secondary", "Primary", "Connected", "Diskless", "UpToDate",
                                  None)
    assert words(states["8"]) == ("Secondary", "Unknown", "StandAlone", "UpToDate", "DUnknown",
                                  None)
    assert all(s.minor == minor for minor, s in states.items())


def test_proc_syncsource_progress_belongs_to_its_device():
    states = parse_proc_drbd(proc("ganeti_proc_drbd84_sync.txt"))
    assert sorted(states, key=int) == ["0", "5"]                  # 3 is Unconfigured
    assert words(states["0"]) == ("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown",
                                  None)
    assert words(states["5"]) == ("Secondary", "Secondary", "SyncSource", "UpToDate",
                                  "Inconsistent", 68.5)
    assert states["5"].is_syncing


def test_proc_83_progress_and_finish_on_one_line():
    states = parse_proc_drbd(proc("ganeti_proc_drbd83_sync_krnl2.6.39.txt"))
    assert states["3"].sync_percent == 2.4
    assert states["1"].connection == "Connected"                  # line ends in a NUL byte


def test_proc_84_header_alone_means_no_devices():
    # The first two lines of the ha_cluster_exporter#141 capture: what DRBD 8.4 prints when no
    # device is configured (drbd_proc.c prints the header, then one block per device).
    header = "".join(proc("issue_ha_cluster_exporter_141_connected.txt").splitlines(True)[:2])
    assert parse_proc_drbd(header) == {}


def test_proc_of_drbd9_is_refused_with_a_hint():
    with pytest.raises(DrbdParseError, match=r"DRBD 9\.0\.6-1.*drbdsetup status --json"):
        parse_proc_drbd(proc("pastebin_EnK64YSw_drbd9.txt"))


def test_proc_drbd8_st_format_is_refused_naming_the_line():
    with pytest.raises(DrbdParseError, match=r"ro:ROLE/ROLE.*line 3 .*st:Primary/Secondary"):
        parse_proc_drbd(proc("ganeti_proc_drbd8.txt"))


def test_proc_header_lines_the_parser_does_not_know_are_skipped():
    """Only device lines and their continuation lines matter: a build line wrapped in two (its
    second half indented, or not) or an unknown header line does not hide the devices."""
    text = proc("ganeti_proc_drbd84.txt")
    lines = text.splitlines(True)
    assert lines[0].startswith("version:") and lines[1].startswith(("GIT-hash:", "srcversion:"))
    expected = parse_proc_drbd(text)
    head, tail = lines[1].rstrip("\n").rsplit(" ", 1)
    for wrapped in ([head + "\n", "   " + tail + "\n"], [head + "\n", tail + "\n"],
                    [lines[1], "Transports (api:18): tcp (8.4.11)\n", "something new: 1\n"]):
        changed = "".join(lines[:1] + wrapped + lines[2:])
        assert parse_proc_drbd(changed) == expected
    assert expected     # the fixture has devices: the comparison above is not empty == empty


def _with(name, old, new):
    text = proc(name)
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   \n\n", "empty"),
    ("hello world\n", r"not /proc/drbd text: no 'version:' line and no device lines"),
    ("    ns:0 nr:0 dw:0\n", r"not /proc/drbd text: no 'version:' line and no device lines"),
    (proc("issue_trinity_651_standalone.txt").splitlines()[1], "no 'version:' line"),
    (_with("issue_trinity_651_standalone.txt", "cs:StandAlone", "cs:Standalone"),
     r"unknown DRBD connection state 'Standalone' in line 4"),
    (_with("issue_trinity_651_standalone.txt", "ro:Primary/", "ro:Primari/"),
     "unknown DRBD role 'Primari'"),
    (_with("issue_trinity_651_standalone.txt", "ds:UpToDate/Inconsistent",
           "ds:UpToDate/Inconsistant"), "unknown DRBD peer disk state 'Inconsistant'"),
    (_with("issue_trinity_651_standalone.txt", " ds:UpToDate/Inconsistent   r-----", ""),
     r"expected ' ro:ROLE/ROLE ds:DISK/DISK' after cs:StandAlone"),
    (_with("issue_trinity_651_standalone.txt", "version: 8.4.6", "version: eight"),
     "cannot read the DRBD version"),
    (_with("ganeti_proc_drbd84.txt", " 2: cs:Unconfigured", " 2: cs:Unconfigured ro:x"),
     "unexpected text after cs:Unconfigured"),
    (_with("ganeti_proc_drbd84.txt", " 2: cs:Unconfigured",
           " 2: cs:Unconfigured\n    ns:0 nr:0"), "indented line below an Unconfigured device"),
])
def test_proc_garbage_raises_naming_what_was_wrong(text, message):
    with pytest.raises(DrbdParseError, match=message):
        parse_proc_drbd(text)


# ---- drbdsetup status --json ----------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("status9_connected_primary",
     ("Primary", "Secondary", "Connected", "UpToDate", "UpToDate", None)),
    ("status9_connected_secondary",
     ("Secondary", "Primary", "Connected", "UpToDate", "UpToDate", None)),
    ("status9_standalone_primary",
     ("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown", None)),
    ("status9_connecting_secondary",
     ("Secondary", "Unknown", "Connecting", "Outdated", "DUnknown", None)),
    ("status9_syncsource_primary",
     ("Primary", "Secondary", "SyncSource", "UpToDate", "Inconsistent", 37.5)),
    ("status9_synctarget_secondary",
     ("Secondary", "Primary", "SyncTarget", "Inconsistent", "UpToDate", 37.5)),
    ("status9_handshake_secondary",
     ("Secondary", "Secondary", "WFReportParams", "UpToDate", "DUnknown", None)),
    ("status9_diskless_secondary",
     ("Secondary", "Primary", "Connected", "Diskless", "UpToDate", None)),
    ("status9_no_connection_primary",
     ("Primary", "Unknown", "StandAlone", "UpToDate", "DUnknown", None)),
])
def test_status_json_two_node_states(name, expected):
    states = parse_status_json(status9(name))
    assert list(states) == ["some-resource"]
    s = states["some-resource"]
    assert (s.resource, s.minor) == ("some-resource", "1000")
    assert words(s) == expected


def test_status_json_progress_is_the_resync_done_not_the_in_sync_share():
    data = json.loads(status9("status9_syncsource_primary"))
    peer = data[0]["connections"][0]["peer_devices"][0]
    assert (peer["percent-in-sync"], peer["percent-resync-done"]) == (68.75, 37.5)
    assert parse_status_json(status9("status9_syncsource_primary"))["some-resource"] \
        .sync_percent == 37.5
    del peer["percent-resync-done"]                               # older drbd-utils
    assert parse_status_json(json.dumps(data))["some-resource"].sync_percent == 68.75


def test_status_json_without_resources():
    assert parse_status_json(status9("status9_no_resources")) == {}


def test_status_json_picks_the_diskful_peer_beside_a_diskless_tiebreaker():
    data = json.loads(status9("status9_connected_primary"))
    tiebreaker = json.loads(json.dumps(data[0]["connections"][0]))
    tiebreaker.update({"name": "tiebreaker", "peer-node-id": 2, "peer-role": "Primary"})
    tiebreaker["peer_devices"][0].update({"peer-client": True, "peer-disk-state": "Diskless"})
    data[0]["connections"].insert(0, tiebreaker)
    s = parse_status_json(json.dumps(data))["some-resource"]
    assert (s.peer_role, s.peer_disk) == ("Secondary", "UpToDate")


def _json_with(name, change):
    data = json.loads(status9(name))
    change(data[0])
    return json.dumps(data)


def _second_peer(resource):
    other = json.loads(json.dumps(resource["connections"][0]))
    other["name"] = "third-node"
    resource["connections"].append(other)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    (status9("status9_connected_primary")[:400], "not complete JSON"),
    ('{"name": "r0"}', "expected a list of resources, got dict"),
    ('["r0"]', "resource #0 is not an object"),
    (status9("status9_connected_primary").replace('"Established"', '"Establishd"'),
     r"unknown DRBD replication state 'Establishd' of connection 'some-peer' of resource "
     r"'some-resource'"),
    (status9("status9_connected_primary").replace('"role": "Primary"', '"role": "primary"'),
     r"unknown DRBD role 'primary' of resource 'some-resource'"),
    (_json_with("status9_connected_primary", lambda r: r.pop("role")),
     r"resource 'some-resource' has no 'role' field"),
    (_json_with("status9_connected_primary", lambda r: r["devices"][0].update(minor="1000")),
     r"field 'minor' of the device of resource 'some-resource' is '1000', expected int"),
    (_json_with("status9_connected_primary", lambda r: r["devices"].append(r["devices"][0])),
     "has 2 volumes; iscsi-ha handles exactly one volume per resource"),
    (_json_with("status9_connected_primary", lambda r: r.update(devices=[])),
     "has 0 volumes"),
    (_json_with("status9_connected_primary", _second_peer),
     "has 2 peers with a disk; iscsi-ha handles two-node resources"),
    (_json_with("status9_connected_primary",
                lambda r: r["connections"][0].update({"connection-state": "WFConnection"})),
     "unknown DRBD connection state 'WFConnection'"),
])
def test_status_json_errors_name_what_was_wrong(text, message):
    with pytest.raises(DrbdParseError, match=message):
        parse_status_json(text)


# ---- error text -----------------------------------------------------------------------------

@pytest.mark.parametrize("stderr, expected", [
    # LINBIT/drbd#74
    ("1: State change failed: (-12) Device is held open by someone\n"
     "Command 'drbdsetup-84 secondary 1' terminated with exit code 11\n",
     "1: State change failed: (-12) Device is held open by someone"),
    # quantum/esos#129
    ("DRBD module version: 8.4.3\n   userland version: 8.4.4\n"
     "preferably kernel and userland versions should match.\n"
     "0: Failure: (127) Device minor not allocated\nadditional info from kernel:\n"
     "unknown minor\nCommand 'drbdsetup secondary 0' terminated with exit code 10\n",
     "0: Failure: (127) Device minor not allocated; kernel: unknown minor"),
    # captured here: drbd-utils 9.22.0, 8.4 path, no module and no modprobe
    ("sh: 1: /sbin/modprobe: not found\nCould not stat /proc/drbd: No such file or directory\n"
     "Make sure that the DRBD kernel module is installed and can be loaded!\n"
     "Command 'drbdsetup-84 primary 1' terminated with exit code 20\n",
     "sh: 1: /sbin/modprobe: not found; Could not stat /proc/drbd: No such file or directory; "
     "Make sure that the DRBD kernel module is installed and can be loaded!"),
    ("", ""),
])
def test_error_text_keeps_drbds_reason(stderr, expected):
    assert drbd_error_text(stderr) == expected


def test_suspended_io_is_read_from_both_formats():
    from iscsi_ha.drbd import parse_proc_drbd, parse_status_json
    proc = ("version: 8.4.11 (api:1/proto:86-101)\n"
            " 1: cs:WFConnection ro:Primary/Unknown ds:UpToDate/DUnknown C s-----\n"
            "    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0\n")
    assert parse_proc_drbd(proc)["1"].suspended is True
    assert parse_proc_drbd(proc.replace(" s-----", " r-----"))["1"].suspended is False
    doc = [{"name": "r", "role": "Primary", "suspended": True, "connections": [],
            "devices": [{"volume": 0, "minor": 1, "disk-state": "UpToDate"}]}]
    assert parse_status_json(json.dumps(doc))["r"].suspended is True
    doc[0]["suspended"] = False
    assert parse_status_json(json.dumps(doc))["r"].suspended is False
