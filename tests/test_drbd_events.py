"""DRBD 9's state folded from ``drbdsetup events2`` lines, against what ``drbdsetup status
--json`` says of the same state, and the adapter's choice between them.

The lines are drbd-utils' (``user/v9/drbdsetup_events2.c``, ``print_*_changes()``): a first
snapshot of ``exists`` lines with every word, ``exists -``, then ``change`` lines with only
the words that changed (a device's info words together).
"""
import os
import stat
import sys
import time

import pytest

from iscsi_ha import wakeups
from iscsi_ha.adapters.drbd import DrbdAdapter
from iscsi_ha.drbd import DrbdState, parse_status_json
from iscsi_ha.drbd_events import EventsState, NotKnown

SNAPSHOT = """\
exists resource name:iscsi1 role:Secondary suspended:no force-io-failures:no may_promote:no promotion_score:10101
exists connection name:iscsi1 peer-node-id:0 conn-name:a connection:Connected role:Primary
exists device name:iscsi1 volume:0 minor:1 backing_dev:/dev/vg/iscsi disk:UpToDate client:no open:no quorum:yes
exists peer-device name:iscsi1 peer-node-id:0 conn-name:a volume:0 replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no
exists path name:iscsi1 peer-node-id:0 conn-name:a local:ipv4:198.51.100.12:7789 peer:ipv4:198.51.100.11:7789 established:yes
exists -
"""

STATUS_JSON = """[{"name": "iscsi1", "node-id": 1, "role": "%s", "suspended": %s,
  "devices": [{"volume": 0, "minor": 1, "disk-state": "%s", "client": false, "quorum": true}],
  "connections": [{"peer-node-id": 0, "name": "a", "connection-state": "%s",
    "congested": false, "peer-role": "%s",
    "peer_devices": [{"volume": 0, "replication-state": "%s", "peer-disk-state": "%s",
      "peer-client": false, "resync-suspended": "no"}]}]}]"""


def fold(text):
    state = EventsState()
    for line in text.splitlines():
        state.feed(line)
    return state


def status(role, peer_role, cstate, repl, disk, peer_disk, suspended="false"):
    return parse_status_json(STATUS_JSON % (role, suspended, disk, cstate, peer_role, repl,
                                            peer_disk))["iscsi1"]


def test_the_first_snapshot_gives_what_drbdsetup_status_gives():
    state = fold(SNAPSHOT)
    assert state.states(["iscsi1"]) == {"iscsi1": status(
        "Secondary", "Primary", "Connected", "Established", "UpToDate", "UpToDate")}


def test_change_lines_carry_only_what_changed():
    """A planned switchover seen from the peer that takes over, then a cut link."""
    state = fold(SNAPSHOT + "change connection name:iscsi1 peer-node-id:0 conn-name:a "
                 "role:Secondary\n")
    assert state.states(["iscsi1"])["iscsi1"] == status(
        "Secondary", "Secondary", "Connected", "Established", "UpToDate", "UpToDate")
    state.feed("change resource name:iscsi1 role:Primary may_promote:no promotion_score:10102")
    assert state.states(["iscsi1"])["iscsi1"].role == "Primary"
    for line in ("change peer-device name:iscsi1 peer-node-id:0 conn-name:a volume:0 "
                 "replication:Off peer-disk:DUnknown peer-client:no",
                 "change connection name:iscsi1 peer-node-id:0 conn-name:a "
                 "connection:Connecting role:Unknown",
                 "change resource name:iscsi1 suspended:fencing"):
        state.feed(line)
    assert state.states(["iscsi1"])["iscsi1"] == status(
        "Primary", "Unknown", "Connecting", "Off", "UpToDate", "DUnknown", suspended="true")


def test_nothing_is_said_before_the_first_snapshot_ends():
    state = fold(SNAPSHOT.replace("exists -\n", ""))
    with pytest.raises(NotKnown, match="not complete"):
        state.states(["iscsi1"])


def test_a_word_not_understood_is_not_used_until_drbd_replaces_it():
    state = fold(SNAPSHOT + "change resource name:iscsi1 role:Leader\n")
    with pytest.raises(NotKnown, match="Leader"):
        state.states(["iscsi1"])
    state.feed("change resource name:iscsi1 role:Primary")     # DRBD's word again
    assert state.states(["iscsi1"])["iscsi1"].role == "Primary"


@pytest.mark.parametrize("line", [
    "bogus", "change gizmo name:iscsi1", "change resource role:Primary",
    "change connection name:iscsi1 role:Primary", "change resource iscsi1",
    "rename resource name:iscsi1"])
def test_a_line_not_understood_is_never_guessed_past(line):
    state = fold(SNAPSHOT + line + "\n")
    with pytest.raises(NotKnown):
        state.states(["iscsi1"])
    state.feed("change resource name:iscsi1 role:Primary")     # broken: stays so
    with pytest.raises(NotKnown):
        state.states(["iscsi1"])


def test_a_resource_that_is_down_or_syncing_is_left_to_drbdsetup_status():
    state = fold(SNAPSHOT + "destroy peer-device name:iscsi1 peer-node-id:0 conn-name:a "
                 "volume:0\ndestroy connection name:iscsi1 peer-node-id:0 conn-name:a\n"
                 "destroy device name:iscsi1 volume:0\ndestroy resource name:iscsi1\n")
    with pytest.raises(NotKnown, match="not in the stream"):
        state.states(["iscsi1"])
    assert not state.connections and not state.devices and not state.peer_devices
    syncing = fold(SNAPSHOT + "change peer-device name:iscsi1 peer-node-id:0 conn-name:a "
                   "volume:0 replication:SyncSource done:12.50\n")
    with pytest.raises(NotKnown, match="resync"):
        syncing.states(["iscsi1"])


def test_no_connection_reads_standalone_and_a_diskless_tiebreaker_is_not_the_peer():
    alone = fold(SNAPSHOT + "destroy peer-device name:iscsi1 peer-node-id:0 conn-name:a "
                 "volume:0\ndestroy connection name:iscsi1 peer-node-id:0 conn-name:a\n")
    got = alone.states(["iscsi1"])["iscsi1"]
    assert (got.connection, got.peer_role, got.peer_disk) == ("StandAlone", "Unknown",
                                                              "DUnknown")
    three = fold(SNAPSHOT + "create connection name:iscsi1 peer-node-id:2 conn-name:tb "
                 "connection:Connected role:Secondary\ncreate peer-device name:iscsi1 "
                 "peer-node-id:2 conn-name:tb volume:0 replication:Established "
                 "peer-disk:Diskless peer-client:yes\n")
    assert three.states(["iscsi1"])["iscsi1"].peer_role == "Primary"     # node 0, not 2


def test_colours_and_handler_lines_are_no_state():
    state = fold(SNAPSHOT + "call helper name:iscsi1 peer-node-id:0 conn-name:a volume:0 "
                 "helper:fence-peer\nchange resource name:iscsi1 role:\x1b[1;36mPrimary"
                 "\x1b[0m\n")
    assert state.states(["iscsi1"])["iscsi1"].role == "Primary"


def test_a_renamed_resource_keeps_its_objects():
    state = fold(SNAPSHOT + "rename resource name:iscsi1 new_name:store\n")
    assert state.states(["store"])["store"].peer_role == "Primary"


# -- the stream in the daemon, and the adapter's choice ------------------------------------
def _events2(tmp_path, text, then_lines=(), pause=0.3):
    """A stand-in ``drbdsetup events2 all``: prints ``text``, then each of ``then_lines``
    after ``pause`` s, then stays."""
    script = tmp_path / "events2.py"
    script.write_text(
        "import sys, time\n"
        "sys.stdout.write(%r); sys.stdout.flush()\n"
        "for line in %r:\n"
        "    time.sleep(%r); sys.stdout.write(line + '\\n'); sys.stdout.flush()\n"
        "time.sleep(30)\n" % (text, list(then_lines), pause))
    return wakeups.DrbdEvents([sys.executable, str(script)])


def _wait(predicate, what, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _status_tool(tmp_path, role="Secondary", peer_role="Primary"):
    """A stand-in drbdsetup that answers ``status --json`` and counts its calls."""
    tool = tmp_path / "drbdsetup"
    calls = tmp_path / "calls"
    tool.write_text("#!/bin/sh\necho \"$@\" >> %s\ncat <<'EOF'\n%s\nEOF\n" % (
        calls, STATUS_JSON % (role, "false", "UpToDate", "Connected", peer_role,
                              "Established", "UpToDate")))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(tool), calls


def _known(events):
    try:
        events.states(["iscsi1"])
        return True
    except NotKnown:
        return False


def test_a_look_a_stream_line_woke_reads_the_stream_and_runs_no_drbdsetup(tmp_path):
    tool, calls = _status_tool(tmp_path)
    events = _events2(tmp_path, SNAPSHOT, ["change connection name:iscsi1 peer-node-id:0 "
                                           "conn-name:a role:Secondary"])
    adapter = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tool)
    adapter.events = events
    try:
        assert adapter.observe(from_stream=True)["iscsi1"].peer_role == "Primary"
        assert calls.read_text().splitlines() == ["status --json"]     # no stream yet
        events.ensure()
        _wait(lambda: _known(events), "the snapshot never came")
        os.unlink(str(calls))
        _wait(lambda: adapter.observe(from_stream=True)["iscsi1"].peer_role == "Secondary",
              "the change line never reached the state")
        assert adapter.last_source == "events2" and not calls.exists()
        # any other look (the timer's, pool.conf's) asks DRBD itself
        assert adapter.observe()["iscsi1"].peer_role == "Primary"
        assert adapter.last_source == "status" and calls.exists()
    finally:
        events.close()
    with pytest.raises(NotKnown):
        events.states(["iscsi1"])                       # closed: nothing known


def test_after_its_own_command_the_stream_waits_until_status_agrees(tmp_path):
    """The event of a change just made may still be on its way: until a status read agrees
    with the stream, the stream is not read, so the view never goes back in time."""
    tool, calls = _status_tool(tmp_path, role="Primary", peer_role="Secondary")
    adapter = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tool, drbdadm=tool)
    primary = SNAPSHOT.replace("role:Secondary suspended", "role:Primary suspended").replace(
        "connection:Connected role:Primary", "connection:Connected role:Secondary")
    events = _events2(tmp_path, SNAPSHOT.replace("exists -\n", ""),
                      ["exists -", "change resource name:iscsi1 role:Primary",
                       "change connection name:iscsi1 peer-node-id:0 conn-name:a "
                       "role:Secondary"], pause=1.0)
    adapter.events = events
    try:
        events.ensure()
        _wait(lambda: _known(events), "the snapshot never came")
        assert adapter.observe(from_stream=True)["iscsi1"].role == "Secondary"
        assert not calls.exists()
        adapter.promote("iscsi1")
        # the stream has not printed the promotion yet: status, and again, never Secondary
        assert adapter.observe(from_stream=True)["iscsi1"].role == "Primary"
        assert adapter.observe(from_stream=True)["iscsi1"].role == "Primary"
        assert calls.read_text().splitlines() == ["primary iscsi1", "status --json",
                                                  "status --json"]
        _wait(lambda: fold(primary).states(["iscsi1"]) == events.states(["iscsi1"]),
              "the stream never printed the promotion")
        adapter.observe(from_stream=True)       # status, which now agrees
        assert adapter.last_source == "status"
        assert adapter.observe(from_stream=True)["iscsi1"].role == "Primary"
        assert adapter.last_source == "events2"
    finally:
        events.close()


def test_a_stream_that_stays_behind_drbd_is_restarted(tmp_path):
    """drbd-utils can hold or drop a notification and go on: a stream that disagrees with
    status reads for STREAM_LAG_MAX s is restarted (a new snapshot)."""
    from iscsi_ha.adapters import drbd as drbd_adapter
    tool, calls = _status_tool(tmp_path, role="Primary", peer_role="Secondary")
    adapter = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tool)
    now = [100.0]
    adapter.clock = lambda: now[0]
    events = _events2(tmp_path, SNAPSHOT)          # says Secondary/Primary, forever
    events.clock = adapter.clock
    adapter.events = events
    try:
        events.ensure()
        _wait(lambda: _known(events), "the snapshot never came")
        first = events.proc
        assert adapter.observe()["iscsi1"].role == "Primary"     # disagrees: noted
        # shown behind DRBD, it is not read even by a pass a line of it woke
        assert adapter.observe(from_stream=True)["iscsi1"].role == "Primary"
        assert adapter.last_source == "status"
        now[0] += drbd_adapter.STREAM_LAG_MAX - 1
        adapter.observe()
        assert events.proc is first                 # not yet
        now[0] += 1
        adapter.observe()
        assert events.proc is None and events.restarts == 1
        events.ensure()
        assert events.proc is None                  # a new one after EVENTS_RETRY s
        now[0] += wakeups.EVENTS_RETRY
        events.ensure()
        assert events.proc is not None and events.proc is not first
    finally:
        events.close()
    if first.poll() is None:
        first.kill()


def test_a_stream_that_says_nothing_understood_is_restarted(tmp_path):
    tool, calls = _status_tool(tmp_path)
    events = _events2(tmp_path, SNAPSHOT + "change resource role:Primary\n")
    adapter = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tool)
    adapter.events = events
    try:
        events.ensure()
        _wait(lambda: events.drain() or events.broken, "the bad line never came")
        assert adapter.observe(from_stream=True)["iscsi1"] == DrbdState(
            "iscsi1", "1", "Secondary", "Primary", "Connected", "UpToDate", "UpToDate")
        assert adapter.last_source == "status" and calls.exists()
        assert not events.streaming                 # restarted at the next ensure()
    finally:
        events.close()


def test_a_stream_that_never_can_tell_outside_a_resync_is_restarted(tmp_path):
    """A first snapshot that never ends: every pass asks status (safe), and the stream is
    restarted after STREAM_LAG_MAX s, as one that disagrees."""
    from iscsi_ha.adapters import drbd as drbd_adapter
    tool, calls = _status_tool(tmp_path)
    adapter = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tool)
    now = [100.0]
    adapter.clock = lambda: now[0]
    events = _events2(tmp_path, SNAPSHOT.replace("exists -\n", ""))
    events.clock = adapter.clock
    adapter.events = events
    try:
        events.ensure()
        _wait(lambda: events.drain() or events.state.resources, "the snapshot never came")
        adapter.observe(from_stream=True)
        assert adapter.last_source == "status" and events.streaming
        now[0] += drbd_adapter.STREAM_LAG_MAX
        adapter.observe()
        assert not events.streaming and events.restarts == 1
    finally:
        events.close()


def _row(role="Secondary", peer="Primary", cstate="Connected", repl="Established",
         sync=False):
    state = status(role, peer, cstate, repl, "UpToDate", "UpToDate")
    return state._replace(sync_percent=12.5) if sync else state


@pytest.mark.parametrize("stream,status_state,broken,found", [
    ({"iscsi1": _row()}, _row(), "", "agrees"),
    ({"iscsi1": _row()}, _row(peer="Secondary"), "", "behind"),
    (NotKnown("the stream's first snapshot is not complete"), _row(), "", "behind"),
    (NotKnown("a resync runs on iscsi1"), _row(sync=True), "", "agrees"),
    (NotKnown("unknown line"), _row(), "unknown line", "broken"),
    ({"iscsi1": _row()}, _row(), "a line over 65536 bytes", "broken"),
], ids=["same", "differs", "cannot tell", "cannot tell in a resync", "broken",
        "broken wins"])
def test_the_stream_against_a_status_read(stream, status_state, broken, found):
    from iscsi_ha.drbd_events import verdict
    got, why = verdict(stream, {"iscsi1": status_state}, ["iscsi1"], broken)
    assert got == found and bool(why) == (found != "agrees")
