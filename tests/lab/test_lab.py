"""The lab end to end: every scenario passes with zero lost writes, the invariant checker can
fail, and `down` leaves nothing behind. Needs root, tgt, libiscsi, arping (see README)."""
import os

import pytest

from lab_fixture import running_lab
from iscsi_ha_lab import netns
from iscsi_ha_lab.scenarios import all_scenarios, run_scenario

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from running_lab(tmp_path_factory)


@pytest.mark.parametrize("name", list(all_scenarios()))
def test_scenario_passes_with_no_lost_write(lab, name):
    result = run_scenario(lab, name)
    assert result.failures == []
    assert result.passed and result.lost_writes == 0


def test_checker_catches_the_floating_ip_on_both_hosts(lab):
    primary = lab.primary()
    other = lab.peer(primary)
    netns.exec_in(other.ns, ["ip", "addr", "add", lab.vip + "/24", "dev", "eth0"], check=True)
    try:
        lab.checker.violations = []
        lab.checker.tick()
        assert any("floating IP on both hosts" in v for v in lab.checker.violations)
    finally:
        netns.exec_in(other.ns, ["ip", "addr", "del", lab.vip + "/24", "dev", "eth0"])
        lab.checker.violations = []


def test_checker_catches_a_target_serving_from_a_secondary(lab):
    primary = lab.primary()
    other = lab.peer(primary)
    # Stop the other host's agent so it cannot undo what the test does, then export its
    # (Secondary) DRBD device by hand.
    other.stop_agent()
    try:
        assert other.exec([os.path.join(other.bin, "tgtd-service"), "start"]).returncode == 0
        device = lab.world.device_path(other.name, lab.resource)
        for args in (["--op", "new", "--mode", "target", "--tid", "1", "-T", lab.iqn],
                     ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun",
                      str(lab.lun), "-b", device]):
            other.exec(["tgtadm", "-C", str(other.ctl), "--lld", "iscsi"] + args)
        lab.checker.violations = []
        lab.checker.tick()
        assert any("host %s serves the LUN from a Secondary" % other.name in v
                   for v in lab.checker.violations)
    finally:
        other.exec([os.path.join(other.bin, "tgtd-service"), "stop"])
        lab.checker.violations = []
        other.start_agent()
