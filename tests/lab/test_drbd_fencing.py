"""The DRBD double is strict about fencing: it runs the configured fence-peer handler for real,
with DRBD's environment, maps its exit code as conn_try_outdate_peer() does, freezes I/O of a
resource-and-stonith Primary until the kernel's rules let it resume, and never outdates a peer
by itself (sources cited in lab/iscsi_ha_lab/drbd_double.py)."""
import json
import os
import subprocess
import time

import pytest

from iscsi_ha_lab.drbd_double import World, install_wrappers
from iscsi_ha_lab.drbd_double_cli import invoke

# A handler as a test double of ours: it reaches the peer "by another path" (here: the peer's
# own drbdadm wrapper), records its environment, and maps drbdadm outdate's exit code.
HANDLER = """#!/bin/sh
env | grep -E '^(DRBD_|UP_TO_DATE_NODES)' | sort > "{record}.$$"
mv "{record}.$$" "{record}"
[ -f "{unreachable}" ] && exit 1
"{peer_drbdadm}" outdate "$DRBD_RESOURCE"
case $? in 0) exit 4 ;; 5) exit 3 ;; 17) exit 6 ;; *) exit 1 ;; esac
"""


def adm(world, host, *args):
    return invoke(world, host, "drbdadm", list(args))


def view(world, host):
    return world.snapshot()["views"]["iscsi1"][host]


def disk(world, host):
    return world.snapshot()["disks"]["iscsi1"][host]


@pytest.fixture(params=["8.4", "9"])
def fenced(request, tmp_path):
    """Both hosts resource-and-stonith with the handler; returns (world, paths)."""
    world = World.create(str(tmp_path / "world"), version=request.param,
                         fencing="resource-and-stonith")
    paths = {"unreachable": str(tmp_path / "unreachable")}
    for host in ("a", "b"):
        install_wrappers(str(tmp_path / ("bin-" + host)), world.directory, host)
    for host, peer in (("a", "b"), ("b", "a")):
        script = tmp_path / ("fence-" + host)
        paths["record-" + host] = str(tmp_path / ("env-" + host))
        script.write_text(HANDLER.format(record=paths["record-" + host],
                                         unreachable=paths["unreachable"],
                                         peer_drbdadm=str(tmp_path / ("bin-" + peer) /
                                                          "drbdadm")))
        script.chmod(0o755)
        world.set_handler(host, "fence-peer", [str(script)])
    return world, paths


@pytest.fixture
def holder(fenced):
    """A process holding a's device open, as tgtd does; stopped when I/O freezes."""
    world = fenced[0]
    proc = subprocess.Popen(["sh", "-c", 'exec 3<>"$0"; while :; do sleep 0.05; done',
                             world.device_path("a", "iscsi1")])
    deadline = time.monotonic() + 5
    from iscsi_ha_lab.drbd_double import openers
    while proc.pid not in openers(world.device_path("a", "iscsi1")):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield proc
    proc.kill()
    proc.wait(5)


def process_state(pid):
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def test_link_cut_freezes_runs_the_handler_and_resumes_when_the_peer_is_outdated(fenced,
                                                                                holder):
    world, paths = fenced
    adm(world, "a", "primary", "iscsi1")
    generations = len(disk(world, "a")["generations"])
    world.set_link(False)
    assert process_state(holder.pid) == "T"          # frozen: I/O blocks, nothing acknowledged
    assert world.wait_fences(20)
    a, b = view(world, "a"), view(world, "b")
    assert (b["disk"], a["peer_disk"], a["suspended"]) == ("Outdated", "Outdated", False)
    assert process_state(holder.pid) != "T"
    assert len(disk(world, "a")["generations"]) == generations + 1   # new data from now on
    env = dict(line.split("=", 1) for line in open(paths["record-a"]).read().splitlines())
    assert env["DRBD_RESOURCE"] == "iscsi1" and env["DRBD_MINOR"] == "1"
    assert env["DRBD_PEER_ADDRESS"] == "192.0.2.12" and env["DRBD_PEER_AF"] == "ipv4"
    if world.snapshot()["version"] == "9":
        assert env["DRBD_PEER_NODE_ID"] == "1" and env["DRBD_NODE_ID_1"] == "b"
    else:
        assert env["DRBD_PEERS"] == "b"
    results = [e["result"] for e in world.events("a") if e["command"] == "fence-peer"]
    assert any("returned 4 (peer was fenced)" in r for r in results)
    rc, _, err = adm(world, "b", "primary", "iscsi1")          # b knows it is outdated
    assert rc == 17 and "Need access to UpToDate data" in err
    world.set_link(True)
    assert view(world, "b")["repl"] == "SyncTarget"            # resync on heal


def test_an_unreachable_peer_keeps_io_frozen_until_the_link_returns(fenced, holder):
    world, paths = fenced
    open(paths["unreachable"], "w").close()
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert world.wait_fences(20)
    a = view(world, "a")
    assert (a["suspended"], a["peer_disk"], view(world, "b")["disk"]) == (
        True, "DUnknown", "UpToDate")
    assert process_state(holder.pid) == "T"
    assert any("returned 1 (fence-peer helper broken)" in e["result"]
               for e in world.events("a") if e["command"] == "fence-peer")
    world.set_link(True)                                       # case2: connection is back
    assert view(world, "a")["suspended"] is False and view(world, "a")["connected"]
    assert process_state(holder.pid) != "T"


def test_resume_io_by_hand_thaws_a_frozen_primary(fenced, holder):
    world, paths = fenced
    open(paths["unreachable"], "w").close()
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert world.wait_fences(20)
    assert adm(world, "a", "resume-io", "iscsi1")[0] == 0
    assert view(world, "a")["suspended"] is False and process_state(holder.pid) != "T"


def test_no_handler_configured_leaves_io_frozen(tmp_path):
    world = World.create(str(tmp_path / "w"), fencing="resource-and-stonith")
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert world.wait_fences(20)
    assert view(world, "a")["suspended"] is True           # drbdadm exits 0: "broken"


def test_resource_only_does_not_freeze_but_still_fences(fenced, holder):
    world, _ = fenced
    for host in "ab":
        world.set_fencing(host, "resource-only")
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert process_state(holder.pid) != "T"
    assert world.wait_fences(20)
    assert view(world, "b")["disk"] == "Outdated" and view(world, "a")["suspended"] is False


def test_promoting_a_disconnected_node_runs_the_handler_first(fenced):
    world, paths = fenced
    world.set_link(False)                  # both Secondary: nobody fences on the cut
    assert world.wait_fences(5)
    open(paths["unreachable"], "w").close()
    rc, _, err = adm(world, "b", "primary", "iscsi1")
    assert rc == 11 and "(-7) Refusing to be Primary while peer is not outdated" in err
    assert os.path.exists(paths["record-b"])                  # the handler really ran
    os.unlink(paths["unreachable"])
    assert adm(world, "b", "primary", "iscsi1")[0] == 0       # a outdated through "its" path
    assert view(world, "a")["disk"] == "Outdated"
    rc, _, err = adm(world, "a", "primary", "iscsi1")        # a's handler: b is Primary (6)
    assert rc == 17 and view(world, "a")["role"] == "Secondary"


def test_handler_exit_6_outdates_myself(fenced):
    world, paths = fenced
    world.set_link(False)
    assert world.wait_fences(5)
    open(paths["unreachable"], "w").close()
    assert adm(world, "b", "primary", "--force", "iscsi1")[0] == 0   # a left UpToDate
    os.unlink(paths["unreachable"])
    rc, _, _ = adm(world, "a", "primary", "iscsi1")
    assert rc != 0 and view(world, "a")["disk"] == "Outdated"
    assert any("returned 6 (peer is active" in e["result"]
               for e in world.events("a") if e["command"] == "fence-peer")


def test_force_promotion_without_fencing_is_a_forced_split_brain(fenced):
    world, paths = fenced
    world.set_link(False)
    open(paths["unreachable"], "w").close()
    assert adm(world, "b", "primary", "--force", "iscsi1")[0] == 0
    assert view(world, "b")["peer_disk"] == "Outdated"


def test_outdate_is_refused_on_a_primary_and_while_connected(fenced):
    world, _ = fenced
    adm(world, "a", "primary", "iscsi1")
    rc, _, err = adm(world, "b", "outdate", "iscsi1")
    assert rc == 20 and "(-6) Refusing to be Outdated while Connected" in err
    world.set_fencing("a", "dont-care")
    world.set_link(False)
    rc, _, err = adm(world, "a", "outdate", "iscsi1")
    assert rc == 17 and "(-2) Need access to UpToDate data" in err
    assert adm(world, "b", "outdate", "iscsi1") == (0, "", "")
    assert view(world, "b")["disk"] == "Outdated"
    assert adm(world, "b", "down", "iscsi1")[0] == 0
    assert adm(world, "b", "outdate", "iscsi1")[0] == 0      # drbdmeta on the meta-data


def test_restart_without_the_peer_comes_back_consistent(fenced):
    world, paths = fenced
    world.crash("a")
    world.crash("b")
    world.set_link(False)
    world.boot("b")
    assert view(world, "b")["disk"] == "Consistent"
    open(paths["unreachable"], "w").close()
    rc, _, err = adm(world, "b", "primary", "iscsi1")
    assert rc == 17 and "Need access to UpToDate data" in err
    world.boot("a")
    os.unlink(paths["unreachable"])
    assert adm(world, "b", "primary", "iscsi1")[0] == 0       # handler outdated a
    assert view(world, "b")["disk"] == "UpToDate" and view(world, "a")["disk"] == "Outdated"


def test_dont_care_comes_back_uptodate(tmp_path):
    world = World.create(str(tmp_path / "w"), fencing="dont-care")
    world.crash("b")
    world.boot("b")
    world.set_link(False)
    assert view(world, "b")["disk"] == "UpToDate"


def test_graceful_down_of_the_secondary_outdates_it_over_the_link(fenced, holder):
    world, _ = fenced
    adm(world, "a", "primary", "iscsi1")
    assert adm(world, "b", "down", "iscsi1")[0] == 0
    assert view(world, "a")["peer_disk"] == "Outdated" and not view(world, "a")["suspended"]
    assert process_state(holder.pid) != "T"
    assert disk(world, "a")["fence"] is None


def test_status_outputs_show_the_suspension(fenced, holder):
    world, paths = fenced
    open(paths["unreachable"], "w").close()
    adm(world, "a", "primary", "iscsi1")
    world.set_link(False)
    assert world.wait_fences(20)
    if world.snapshot()["version"] == "8.4":
        assert " s-----" in open(world.proc_drbd_path("a")).read()
    else:
        doc = json.loads(invoke(world, "a", "drbdsetup", ["status", "--json"])[1])
        assert doc[0]["suspended-fencing"] is True and doc[0]["suspended"] is True
