"""Lab scenario for split brain (issue 6): an admin forces the secondary Primary while the
replication link is cut, both sides write, the link comes back: DRBD finds a split brain, the
handler flags it, the agents alert and hold, and `iscsi-cfg split-brain --keep` recovers it."""
import os
import sys
import time

from iscsi_ha_lab import netns
from iscsi_ha_lab.scenario_kit import alerts_of, scenario, settled
from iscsi_ha_lab.hostexec import host_exec

LBA = 4000                    # outside the probe's blocks (0..2047)


def blockio(lab, *args):
    return netns.exec_in(lab.client_ns, [sys.executable, "-m", "iscsi_ha_lab.blockio"] +
                         list(args[:1]) + ["--portal", lab.vip + ":3260", "--iqn", lab.iqn,
                                           "--lun", str(lab.lun), "--lba", str(LBA)] +
                         list(args[1:]), timeout=30)


def block_of(path):
    with open(path, "rb") as handle:
        handle.seek(LBA * 512)
        return handle.read(512).split(b"\0", 1)[0].decode()


def write_block(path, text):
    with open(path, "r+b") as handle:
        handle.seek(LBA * 512)
        handle.write(text.encode() + b"\0")
        handle.flush()
        os.fsync(handle.fileno())


def flagged(host, resource):
    return os.path.exists(os.path.join(host.root, "state", "split-brain-" + resource))


@scenario("split-brain", "both hosts forced Primary on a cut link: split brain, alert, "
          "recovery with iscsi-cfg split-brain --keep")
def split_brain(lab, run):
    keeper = lab.primary()
    other = lab.peer(keeper)
    since = time.time()
    lab.cut_replication()
    run.wait(lambda: lab.world.snapshot()["views"][lab.resource][other.name]["disk"] ==
             "Outdated", 10, "fencing to outdate %s" % other.name)
    # The admin's mistake, on the other side of the cut link.
    lab.checker.allow_two_primaries = True
    other.stop_agent()
    forced = other.exec(["drbdadm", "primary", "--force", lab.resource])
    run.check(forced.returncode == 0, "drbdadm primary --force on %s: %s" % (
        other.name, forced.stderr.strip()))
    write_block(lab.world.device_path(other.name, lab.resource), "written on %s" % other.name)
    wrote = blockio(lab, "write", "--text", "written through the initiator on %s" % keeper.name)
    run.check(wrote.returncode == 0, "initiator write failed: %s" % wrote.stderr.strip())
    lab.restore_replication()
    run.wait(lambda: flagged(keeper, lab.resource) and flagged(other, lab.resource), 10,
             "DRBD's split-brain handler to flag both hosts")
    other.start_agent()
    run.wait(lambda: all(alerts_of(lab, "split-brain", since)), 20,
             "the split-brain alert by email and as a XAPI message")
    mail, messages = alerts_of(lab, "split-brain", since)
    run.check(mail and messages, "split-brain alert: %d email(s), %d XAPI message(s)" % (
        len(mail), len(messages)))
    recovery = host_exec(keeper, ["iscsi-cfg", "split-brain", "--keep", keeper.hostname,
                                  "--yes"], 240)
    run.check(recovery.returncode == 0, "iscsi-cfg split-brain --keep: exit %d: %s" % (
        recovery.returncode, (recovery.stdout + recovery.stderr).strip()[-800:]))
    run.note("recovery output: %s" % recovery.stdout.strip().splitlines()[-1:])
    run.wait(lambda: settled(lab, keeper) and not flagged(other, lab.resource), 60,
             "the pool back to normal after the recovery")
    lab.checker.allow_two_primaries = False
    seen = blockio(lab, "read")
    expected = "written through the initiator on %s" % keeper.name
    run.check(seen.stdout.strip() == expected, "the initiator reads %r, expected the kept "
              "side's %r" % (seen.stdout.strip(), expected))
    run.check(block_of(lab.world.device_path(other.name, lab.resource)) == expected,
              "the discarded side was not resynced from the kept side")
