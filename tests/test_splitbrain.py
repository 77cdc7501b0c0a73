"""Split brain: the parsers on real outputs, the handler script with DRBD's environment, and
inspect/recover against the DRBD double (a real split brain: link cut with fencing off, both
hosts promoted, different bytes written on each, link restored)."""
import os
import subprocess
import time

import pytest

from iscsi_ha import config as config_mod, splitbrain
from iscsi_ha.adapters.drbd import DrbdAdapter
from iscsi_ha_lab.drbd_double import World, install_wrappers
from iscsi_ha.splitbrain import (SplitBrainError, SplitBrainRefused, clear_flag,
                                 compare_generations, flag_path, format_report, inspect,
                                 local_facts, local_part, parse_gi, parse_json_oos,
                                 parse_proc_oos, read_flag, recover, recover_local_part,
                                 wait_resync, write_flag)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HANDLER = os.path.join(REPO, "scripts", "drbd-split-brain-handler")
FIXTURES = os.path.join(HERE, "fixtures", "drbd")
RES = "iscsi1"

# Real `get-gi` outputs, captured on this machine (Debian 12, drbd-utils 9.22.0) from drbdmeta on
# a loop device: `drbdmeta 0 v08 /dev/loop0 internal get-gi` (DRBD 8.4 meta data) and
# `drbdmeta 1 v09 /dev/loop1 internal get-gi --node-id 1` (DRBD 9), after `set-gi` with the
# generation identifiers of the two sides of a real split brain quoted in ganeti/ganeti#846
# ("self 9E4DEF0B06A6DA9D:41C26508159C156A:CA64B93EC801717D:CA63B93EC801717D", "peer
# 35BBB10CCF212668:41C26508159C156A:CA64B93EC801717C:CA63B93EC801717D"). drbdadm get-gi runs
# `drbdsetup get-gi` (falling back to these drbdmeta commands), which prints the same format.
GI_84_SIDE_A = "9E4DEF0B06A6DA9D:41C26508159C156A:CA64B93EC801717D:CA63B93EC801717D:1:1:1:0:0:0:0\n"
GI_84_SIDE_B = "35BBB10CCF212668:41C26508159C156A:CA64B93EC801717C:CA63B93EC801717D:1:1:1:0:0:0:0\n"
GI_84_BEFORE = "41C26508159C156A:0000000000000000:CA64B93EC801717D:CA63B93EC801717D:1:1:0:1:0:0:0\n"
GI_9_SIDE_A = ("9E4DEF0B06A6DA9D:41C26508159C156A:CA64B93EC801717D:CA63B93EC801717D:"
               "1:1:1:0:0:0:0:0:0:0:0:1\n")
GI_84_NEW = "0000000000000004:0000000000000000:0000000000000000:0000000000000000:0:0:0:0:0:0:0\n"

# The environment of a real DRBD 9 handler, from the log quoted in LINBIT/drbd-utils#11
# (crm-unfence-peer.9.sh); the addresses are replaced by documentation addresses.
DRBD9_ENV = {"DRBD_BACKING_DEV": "/dev/mapper/audio_pool-audio_volume",
             "DRBD_CONF": "/usr/local/etc/drbd.conf", "DRBD_CSTATE": "Connected",
             "DRBD_MINOR": "0", "DRBD_MY_ADDRESS": "192.0.2.11", "DRBD_MY_AF": "ipv4",
             "DRBD_MY_NODE_ID": "0", "DRBD_PEER_ADDRESS": "192.0.2.12", "DRBD_PEER_AF": "ipv4",
             "DRBD_PEER_NODE_ID": "3", "DRBD_RESOURCE": "audiodata", "DRBD_VOLUME": "0"}


# -- parsers on real outputs -------------------------------------------------------------------
def test_get_gi_of_84_and_9():
    a = parse_gi(GI_84_SIDE_A)
    assert a.current == "9E4DEF0B06A6DA9D" and a.bitmap == "41C26508159C156A"
    assert a.history == ("CA64B93EC801717D", "CA63B93EC801717D")
    assert parse_gi(GI_9_SIDE_A) == a
    assert parse_gi(GI_84_NEW).current == "0000000000000004"
    for bad in ("", "drbdadm: Unknown command 'get-gi'\n", GI_84_SIDE_A.replace(":1:1", ":x:1")):
        with pytest.raises(ValueError):
            parse_gi(bad)


def test_generations_of_a_split_brain_have_diverged():
    verdict, sentence = compare_generations(parse_gi(GI_84_SIDE_A), parse_gi(GI_84_SIDE_B))
    assert verdict == "diverged"
    assert sentence == ("both sides wrote since they split from generation 41C26508159C156A: "
                        "neither is newer")


def test_generations_ancestor_same_and_unknown():
    before, after = parse_gi(GI_84_BEFORE), parse_gi(GI_84_SIDE_A)
    assert compare_generations(after, before)[0] == "local-newer"
    assert compare_generations(before, after)[0] == "peer-newer"
    assert compare_generations(after, after)[0] == "same"
    # the lowest bit marks a Primary; DRBD ignores it when comparing
    flipped = after._replace(current="9E4DEF0B06A6DA9C")
    assert compare_generations(after, flipped)[0] == "same"
    assert compare_generations(None, after)[0] == "unknown"


def test_out_of_sync_amounts_from_real_outputs():
    with open(os.path.join(FIXTURES, "proc", "issue_trinity_651_standalone.txt")) as f:
        text = f.read()
    assert parse_proc_oos(text, "1") == 40448716
    assert parse_proc_oos(text, "2") is None
    with open(os.path.join(FIXTURES, "status9", "status9_syncsource_primary.json")) as f:
        assert parse_json_oos(f.read(), "some-resource") == 2500
    with open(os.path.join(FIXTURES, "status9", "status9_standalone_primary.json")) as f:
        text = f.read()
    assert parse_json_oos(text, "some-resource") == 0
    assert parse_json_oos(text, "other") is None


# -- the flag and the handler script -----------------------------------------------------------
def _run_handler(env, tmp_path):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full.update(env)
    return subprocess.run(["/bin/sh", HANDLER], env=full, capture_output=True, text=True,
                          timeout=20, cwd=str(tmp_path))


def _write_conf(tmp_path, state_line):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("# test\nDRBD_RESOURCES=iscsi1\nSTATE_DIR=/nonexistent/early\n%s\n"
                    % state_line)
    return str(path)


@pytest.mark.parametrize("line", ['STATE_DIR="{d}"', "export STATE_DIR='{d}'   # comment",
                                  "STATE_DIR='{d}'"])
def test_handler_writes_the_flag_from_drbd_84_environment(tmp_path, line):
    state = tmp_path / "state dir"
    conf = _write_conf(tmp_path, line.format(d=state))
    env = {"ISCSI_HA_CONFIG": conf, "DRBD_RESOURCE": RES, "DRBD_MINOR": "1",
           "DRBD_CONF": "/etc/drbd.conf", "DRBD_PEER_AF": "ipv4",
           "DRBD_PEER_ADDRESS": "192.0.2.12", "DRBD_PEERS": "xcp-b"}
    done = _run_handler(env, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert os.listdir(str(state)) == ["split-brain-iscsi1"]           # no temporary left
    flag = read_flag(str(state), RES)
    assert flag["resource"] == RES and flag["minor"] == "1"
    assert flag["peer_address"] == "192.0.2.12" and flag["peers"] == "xcp-b"
    assert abs(int(flag["time"]) - time.time()) < 3600 and flag["time_iso"]


def test_handler_with_drbd_9_environment_and_a_second_run(tmp_path):
    state = tmp_path / "state"
    env = dict(DRBD9_ENV, ISCSI_HA_CONFIG=_write_conf(tmp_path, "STATE_DIR=%s" % state))
    assert _run_handler(env, tmp_path).returncode == 0
    first = read_flag(str(state), "audiodata")
    assert (first["peer_node_id"], first["my_node_id"], first["volume"]) == ("3", "0", "0")
    env["DRBD_PEER_ADDRESS"] = "192.0.2.99\nSTATE=evil"                # one line, always
    assert _run_handler(env, tmp_path).returncode == 0
    again = read_flag(str(state), "audiodata")
    assert again["peer_address"] == "192.0.2.99STATE=evil" and "STATE" not in again


@pytest.mark.parametrize("resource", ["", "../etc", "a/b", ".hidden", "x y"])
def test_handler_refuses_a_bad_resource_name(tmp_path, resource):
    state = tmp_path / "state"
    conf = _write_conf(tmp_path, "STATE_DIR=%s" % state)
    done = _run_handler({"ISCSI_HA_CONFIG": conf, "DRBD_RESOURCE": resource}, tmp_path)
    assert done.returncode == 1 and "DRBD_RESOURCE" in done.stderr
    assert not state.exists()


def test_handler_reports_an_unwritable_state_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = _write_conf(tmp_path, "STATE_DIR=%s/state" % blocker)
    done = _run_handler({"ISCSI_HA_CONFIG": conf, "DRBD_RESOURCE": RES}, tmp_path)
    assert done.returncode == 2


def test_flag_round_trip(tmp_path):
    state = str(tmp_path)
    assert read_flag(state, RES) is None and clear_flag(state, RES) is False
    write_flag(state, RES, reason="two\nlines", time=5)
    assert read_flag(state, RES) == {"resource": RES, "reason": "two lines", "time": "5"}
    open(flag_path(state, "other"), "w").close()          # an admin's `touch`
    assert read_flag(state, "other") == {}
    assert clear_flag(state, RES) is True and read_flag(state, RES) is None


# -- against the DRBD double -----------------------------------------------------------------
class Host(object):
    def __init__(self, name, world, tmp_path, version):
        self.name = name
        self.state = str(tmp_path / ("state_" + name))
        self.config = config_mod.loads("DRBD_RESOURCES=%s\nSTATE_DIR=%s\n" % (RES, self.state))
        bin_dir = str(tmp_path / ("bin_" + name))
        adm, setup = install_wrappers(bin_dir, world.directory, name)
        self.drbd = DrbdAdapter([RES], version=version, drbdadm=adm, drbdsetup=setup,
                                proc_drbd=world.proc_drbd_path(name), timeout=20)
        self.device = world.device_path(name, RES)

    def read(self, size=16):
        with open(self.device, "rb") as f:
            return f.read(size)

    def write(self, data):
        with open(self.device, "r+b") as f:
            f.write(data)

    def part(self, action):
        return local_part(self.config, self.drbd, RES, action, host=self.name)


@pytest.fixture(params=["8.4", "9"])
def split(request, tmp_path):
    """Hosts a and b in split brain: a wrote "kept by a", b wrote "written by b"."""
    world = World.create(str(tmp_path / "world"), version=request.param, fencing=False,
                         resources={RES: {"minor": 1, "size_mb": 4}})
    a, b = (Host(n, world, tmp_path, request.param) for n in "ab")
    world.set_link(False)
    a.drbd.promote(RES)
    b.drbd.promote(RES)
    a.write(b"kept by a.......")
    b.write(b"written by b....")
    world.set_link(True)
    snap = world.snapshot()
    assert snap["links"][RES]["split_brain"] is True
    assert [snap["views"][RES][h]["cstate"] for h in "ab"] == ["StandAlone", "StandAlone"]
    for host in (a, b):
        write_flag(host.state, RES, detected_by="test")
    return world, a, b


def ticking(world):
    """The sleep the recovery uses: real time passes and the double's "kernel" ticks."""
    def sleep(seconds):
        time.sleep(min(seconds, 0.05))
        world.settle()
    return sleep


def test_inspect_reports_both_sides_and_what_each_choice_discards(split):
    world, a, b = split
    inspection = inspect(a.config, a.drbd, peer_status=b.part("facts"), host="a")
    assert (inspection.local_host, inspection.peer_host) == ("a", "b")
    [report] = inspection.reports
    assert report.split_brain and report.flagged
    assert report.local["connection"] == report.peer["connection"] == "StandAlone"
    assert report.local["role"] == report.peer["role"] == "Primary"
    text = format_report(inspection)
    assert text.startswith("iscsi1: SPLIT BRAIN\n")
    assert "  this host (a): Primary/Unknown StandAlone UpToDate/DUnknown, flagged" in text
    assert "  peer (b): Primary/Unknown StandAlone UpToDate/DUnknown, flagged" in text
    assert "--keep a: keeping a discards every change b made to iscsi1 since the split" in text
    assert "--keep b: keeping b discards every change a made to iscsi1 since the split" in text


def test_inspect_from_the_peers_published_status(split):
    world, a, b = split
    status = {"hostname": "b", "updated_iso": "2024-01-01T00:00:00+0000", "split_brain": [RES],
              "drbd": {RES: {"role": "Primary", "peer_role": "Unknown",
                             "connection": "StandAlone", "disk": "UpToDate",
                             "peer_disk": "DUnknown"}}}
    [report] = inspect(a.config, a.drbd, peer_status=status, host="a").reports
    assert report.peer_host == "b" and report.peer["connection"] == "StandAlone"
    assert report.more_changes() == "which side changed more is unknown"


def test_nothing_to_report_when_connected(tmp_path):
    world = World.create(str(tmp_path / "world"), resources={RES: {"minor": 1, "size_mb": 4}})
    a = Host("a", world, tmp_path, "8.4")
    assert inspect(a.config, a.drbd, host="a").reports == []
    assert format_report(inspect(a.config, a.drbd, host="a")) == (
        "no DRBD resource of a is in split brain")
    write_flag(a.state, RES, reason="stale")
    [report] = inspect(a.config, a.drbd, host="a").reports
    assert not report.split_brain and "the flag is stale" in report.text()
    with pytest.raises(SplitBrainRefused, match="not in split brain"):
        recover(a.config, a.drbd, RES, True, lambda q: True, lambda action: {}, host="a")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("keep_local", [True, False])
def test_recover_keeps_the_chosen_side(split, keep_local):
    world, a, b = split
    questions, seen, peer_calls = [], [], []

    def peer_part(action):
        peer_calls.append(action)
        return b.part(action)
    result = recover(a.config, a.drbd, RES, keep_local, lambda q: questions.append(q) or True,
                     peer_part, peer_status=b.part("facts"), host="a", progress=seen.append,
                     timeout=60, connect_timeout=30, poll=0.05, sleep=ticking(world))
    kept, lost = (a, b) if keep_local else (b, a)
    [question] = questions
    # (the double does not model DRBD's bitmap: its oos / out-of-sync stays 0 after the split;
    # its drbdadm get-gi gives the lost side's current generation)
    assert question.startswith("Recover the split brain of iscsi1: keeping %s discards every "
                               "change %s made to iscsi1 since the split (0 KiB marked out of "
                               "sync there, its generation " % (kept.name, lost.name))
    assert "; %s then resyncs from %s (data: " % (lost.name, kept.name) in question
    assert question.endswith("Type yes to go on: ")
    assert lost.read() == kept.read() == (b"kept by a......." if keep_local
                                          else b"written by b....")
    assert result["kept"] == kept.name and result["state"].endswith("Connected UpToDate/UpToDate")
    assert result["victim"]["steps"] == ["secondary", "connect --discard-my-data"]
    assert peer_calls == (["victim", "clear-flag"] if keep_local else ["survivor", "clear-flag"])
    assert read_flag(a.state, RES) is None and read_flag(b.state, RES) is None
    assert seen[-1].describe().endswith("Connected UpToDate/UpToDate")
    snap = world.snapshot()
    assert snap["links"][RES]["split_brain"] is False
    assert snap["disks"][RES][lost.name]["role"] == "Secondary"
    assert snap["disks"][RES][kept.name]["role"] == "Primary"


def test_not_confirmed_changes_nothing(split):
    world, a, b = split
    before = len(world.events())
    with pytest.raises(SplitBrainRefused, match="not confirmed"):
        recover(a.config, a.drbd, RES, True, lambda q: False, b.part, host="a")
    commands = [e["command"][1] for e in world.events()[before:] if e["host"]]
    assert not set(commands) & {"connect", "disconnect", "secondary", "primary"}
    assert read_flag(a.state, RES) is not None and read_flag(b.state, RES) is not None


def test_victim_with_its_device_held_open_is_refused(split):
    world, a, b = split
    with open(b.device, "rb"):                          # like tgtd exporting it
        with pytest.raises(SplitBrainRefused, match="Device is held open.*stop whatever holds"):
            recover(a.config, a.drbd, RES, True, lambda q: True, b.part, host="a")
    assert world.snapshot()["views"][RES]["b"]["role"] == "Primary"
    assert read_flag(b.state, RES) is not None


def test_release_hook_runs_before_the_victim_is_demoted(split):
    world, a, b = split
    released = []
    holder = open(a.device, "rb")

    def release(resource):
        released.append(resource)
        holder.close()
    try:
        result = recover_local_part(a.config, a.drbd, RES, "victim", host="a",
                                    release_device=release)
    finally:
        holder.close()
    assert released == [RES]
    assert result["steps"] == ["released the device", "secondary", "connect --discard-my-data"]
    assert "Secondary" in result["state"]


def test_survivor_must_hold_uptodate_data(split):
    world, a, b = split
    with world.transaction() as st:                     # make b's disk Outdated
        st["disks"][RES]["b"]["disk"] = "Outdated"
    with pytest.raises(SplitBrainRefused, match="b's disk is Outdated"):
        recover(a.config, a.drbd, RES, False, lambda q: True, b.part,
                peer_status=b.part("facts"), host="a")
    with pytest.raises(SplitBrainRefused, match="not UpToDate"):
        recover_local_part(b.config, b.drbd, RES, "survivor", host="b")


def test_a_failing_peer_first_step_leaves_this_host_alone(split):
    world, a, b = split

    def broken(action):
        raise RuntimeError("XENAPI_PLUGIN_FAILURE")
    with pytest.raises(SplitBrainRefused, match="nothing was changed on this host"):
        recover(a.config, a.drbd, RES, True, lambda q: True, broken, host="a")
    assert world.snapshot()["views"][RES]["a"]["cstate"] == "StandAlone"


def test_watch_is_bounded_when_the_peer_never_connects(split):
    world, a, b = split
    recover_local_part(b.config, b.drbd, RES, "victim", host="b")       # a never connects
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        world.settle()
    with pytest.raises(SplitBrainError, match="did not connect within 5 s"):
        wait_resync(b.drbd, RES, timeout=60, connect_timeout=5, poll=1.0, sleep=sleep,
                    clock=lambda: now[0])
    assert now[0] == 5.0


def test_a_connected_host_refuses_a_recovery_part(tmp_path):
    world = World.create(str(tmp_path / "world"), resources={RES: {"minor": 1, "size_mb": 4}})
    a = Host("a", world, tmp_path, "8.4")
    with pytest.raises(SplitBrainRefused, match="Connected UpToDate/UpToDate on this host"):
        a.part("victim")
    with pytest.raises(SplitBrainRefused, match="unknown action"):
        a.part("explode")
    with pytest.raises(SplitBrainRefused, match="not a configured DRBD resource"):
        local_part(a.config, a.drbd, "other", "victim")
    write_flag(a.state, RES, reason="stale")
    assert a.part("clear-flag") == {"resource": RES, "cleared": True}
    facts = local_facts(a.config, a.drbd, host="a")
    assert facts["resources"][RES]["connection"] == "Connected"
    assert facts["resources"][RES]["flag"] is None


def test_a_survivor_failure_after_the_peer_acted_says_so(split):
    world, a, b = split

    def victim_then_break_drbdadm(action):
        done = b.part(action)
        os.chmod(a.drbd.drbdadm[0], 0o644)             # this host's drbdadm cannot run now
        return done
    try:
        with pytest.raises(SplitBrainError, match="the peer already ran its victim steps: "
                                                  "secondary, connect --discard-my-data"):
            recover(a.config, a.drbd, RES, True, lambda q: True, victim_then_break_drbdadm,
                    host="a")
    finally:
        os.chmod(a.drbd.drbdadm[0], 0o755)
    assert world.snapshot()["views"][RES]["b"]["role"] == "Secondary"
    assert world.snapshot()["views"][RES]["a"]["cstate"] == "StandAlone"


def test_keeping_the_older_side_needs_force():
    older = splitbrain.Generations("A0", "B0", ("C0",))
    newer = splitbrain.Generations("D0", "A0", ("B0",))
    local = {"role": "Secondary", "connection": "StandAlone", "disk": "UpToDate",
             "generations": older._asdict()}
    peer = {"role": "Primary", "connection": "StandAlone", "disk": "UpToDate",
            "generations": newer._asdict()}
    report = splitbrain.ResourceReport("iscsi1", local, peer, "a", "b")
    assert report.verdict == "peer-newer"
    assert report.keeps_older(True) and not report.keeps_older(False)
