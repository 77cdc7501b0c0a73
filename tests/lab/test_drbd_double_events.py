"""``drbdsetup events2 all`` of the DRBD double (9, and 8.4): the exists dump, then a change line
when another command changes the state; the agent's DrbdEvents wakes on it."""
import os
import subprocess
import time

from iscsi_ha import wakeups
from iscsi_ha_lab.drbd_double import World, install_wrappers


def _world(tmp_path, version):
    world = World.create(str(tmp_path / "world"), hosts=("a", "b"),
                         resources={"iscsi1": {"minor": 1, "size_mb": 8}}, version=version)
    paths = install_wrappers(str(tmp_path / "bin"), world.directory, "a")
    return world, dict(zip(("drbdadm", "drbdsetup"), paths))


def _read_until(proc, needle, timeout=10.0):
    """Lines of ``proc`` until one contains ``needle`` (bounded)."""
    lines, deadline = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buffer += chunk
            lines = buffer.decode().splitlines()
            if any(needle in line for line in lines):
                return lines
        time.sleep(0.02)
    raise AssertionError("no %r within %.0f s; got %r" % (needle, timeout, lines))


def _dump_then_change(tmp_path, version):
    world, tools = _world(tmp_path, version)
    proc = subprocess.Popen([tools["drbdsetup"], "events2", "all"], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        dump = _read_until(proc, "exists -")
        subprocess.run([tools["drbdadm"], "primary", "iscsi1"], check=True, timeout=30)
        lines = _read_until(proc, "change resource")
        assert proc.poll() is None            # the stream goes on
        return dump, lines
    finally:
        proc.kill()
        proc.wait(5)


def test_events2_dumps_then_streams_changes(tmp_path):
    dump, change = _dump_then_change(tmp_path, "9")
    assert dump[0] == "exists resource name:iscsi1 role:Secondary suspended:no"
    assert [line.split()[1] for line in dump[:4]] == ["resource", "connection", "device",
                                                      "peer-device"]
    assert dump[2].endswith(" client:no") and dump[4] == "exists -"
    # a change line names the object and only what changed (drbd-utils keeps the last state)
    assert change == ["change resource name:iscsi1 role:Primary"]


def test_events2_on_84_has_no_node_ids(tmp_path):
    """8.4 (from 8.4.6) streams events2 as drbd-utils' user/v84/drbdsetup.c prints it:
    ``peer-node-id:0`` and ``conn-name:peer`` in the key, no ``client:`` on a device."""
    dump, change = _dump_then_change(tmp_path, "8.4")
    assert dump[:5] == [
        "exists resource name:iscsi1 role:Secondary suspended:no",
        "exists connection name:iscsi1 peer-node-id:0 conn-name:peer connection:Connected "
        "role:Secondary",
        "exists device name:iscsi1 volume:0 minor:1 disk:UpToDate",
        "exists peer-device name:iscsi1 peer-node-id:0 conn-name:peer volume:0 "
        "replication:Established peer-disk:UpToDate",
        "exists -"], dump
    assert change == ["change resource name:iscsi1 role:Primary"]


def test_agent_stream_wakes_on_a_role_change(tmp_path):
    world, tools = _world(tmp_path, "9")
    events = wakeups.DrbdEvents([tools["drbdsetup"]])
    events.ensure()
    try:
        deadline = time.monotonic() + 10
        while not events.take():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)
        events.take()                          # the dump is consumed
        assert events.take() is False          # nothing changes: no wake-up
        subprocess.run([tools["drbdadm"], "primary", "iscsi1"], check=True, timeout=30)
        deadline = time.monotonic() + 10
        while not events.take():
            assert time.monotonic() < deadline, "the role change did not wake the agent"
            time.sleep(0.02)
        assert events.streaming
    finally:
        events.close()


def test_the_agents_state_from_the_double_stream_matches_its_status(tmp_path):
    """Through a promotion, a cut link and a demotion, the state the agent folds from the
    double's events2 stream equals what the double's ``drbdsetup status --json`` says: the
    double's two outputs tell one story, as DRBD's do."""
    from iscsi_ha.adapters.drbd import DrbdAdapter
    from iscsi_ha.drbd_events import NotKnown
    world, tools = _world(tmp_path, "9")
    events = wakeups.DrbdEvents([tools["drbdsetup"]])
    status = DrbdAdapter(["iscsi1"], version="9", drbdsetup=tools["drbdsetup"])

    def agree(what, settled=True):
        """Wait (bounded) until both say the same; during a resync the stream leaves the
        state to drbdsetup status (the progress is its), which the agent then asks."""
        deadline = time.monotonic() + 20
        while True:
            want = status.observe()
            try:
                got = events.states(["iscsi1"])
            except NotKnown as exc:
                got = "not known: %s" % exc
            if got == want or (not settled and want["iscsi1"].sync_percent is not None
                               and "resync" in str(got)):
                return
            assert time.monotonic() < deadline, "%s: stream %r, status %r" % (what, got, want)
            time.sleep(0.02)

    events.ensure()
    try:
        agree("at start")
        subprocess.run([tools["drbdadm"], "primary", "iscsi1"], check=True, timeout=30)
        agree("after the promotion")
        world.set_link(False)
        agree("with the link cut")
        world.set_link(True)
        agree("with the link back (a resync may run)", settled=False)
        agree("after the resync")
        subprocess.run([tools["drbdadm"], "secondary", "iscsi1"], check=True, timeout=30)
        agree("after the demotion")
    finally:
        events.close()
