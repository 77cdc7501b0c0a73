"""become-primary's duplicate-address detection on a real network: two namespaces on a bridge,
real ip and arping. The CLI runs here; its ip/arping commands run in host A's namespace."""
import os
import shutil

import pytest

from iscsi_ha import config as config_mod, model
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.drbd import DrbdAdapter
from iscsi_ha.cli import manual_ops
from iscsi_ha.cli.context import HostContext, Refused
from iscsi_ha_lab import netns

from .conftest import drbd

pytestmark = pytest.mark.netns
VIP = "192.0.2.100"


@pytest.fixture
def ctx_in_a(two_hosts, tmp_path, mocker):
    if shutil.which("arping") is None:
        pytest.skip("needs arping (iputils-arping)")
    ns_a, ns_b, _ = two_hosts
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("DRBD_RESOURCES=iscsi1\nDRBD_VIRTUAL_IP=%s\nDRBD_VIRTUAL_MASK=24\n"
                    "DRBD_INTERFACE=eth0\nDRBD_VERSION=8.4\nSTATE_DIR=%s\n"
                    # arping in A's namespace: the raw-socket method would probe from this
                    # (the root) namespace, outside the test's network
                    "IP_COMMAND='ip netns exec %s ip'\nARPING='ip netns exec %s arping'\n"
                    "ARP_METHOD=arping\n"
                    "XAPI_URL=unix://%s/none.sock\nXAPI_TIMEOUT=1\n"
                    % (VIP, tmp_path / "state", ns_a, ns_a, tmp_path))
    config = config_mod.load(str(path))
    manual_adapter.write_manual(config.MANUAL_FILE, model.MANUAL_SECONDARY)
    mocker.patch.object(DrbdAdapter, "observe", autospec=True, return_value={
        "iscsi1": drbd("Secondary", "Secondary", name="iscsi1")})
    lines = []
    ctx = HostContext(config, say=lines.append)
    try:
        yield ctx, ns_a, ns_b
    finally:
        ctx.close()


def test_dad_refuses_when_the_peer_holds_the_floating_ip(ctx_in_a):
    ctx, ns_a, ns_b = ctx_in_a
    netns.exec_in(ns_b, ["ip", "addr", "add", VIP + "/24", "dev", "eth0"], check=True)
    mac = netns.exec_in(ns_b, ["cat", "/sys/class/net/eth0/address"]).stdout.strip().upper()
    with pytest.raises(Refused) as refused:
        manual_ops.become_primary(ctx, timeout=1)
    assert "the floating IP %s answers from %s" % (VIP, mac) in str(refused.value)
    assert manual_adapter.read_manual(ctx.config.MANUAL_FILE) == model.MANUAL_SECONDARY


def test_dad_passes_when_nobody_holds_it(ctx_in_a):
    ctx, ns_a, _ = ctx_in_a
    assert manual_ops.vip_blocker(ctx) == ""
    netns.exec_in(ns_a, ["ip", "addr", "add", VIP + "/24", "dev", "eth0"], check=True)
    assert manual_ops.vip_blocker(ctx) == ""              # already local: no DAD at all


def test_a_missing_interface_is_a_refusal(ctx_in_a):
    ctx, ns_a, _ = ctx_in_a
    ctx.adapters.vip.interface = "eth9"
    assert "interface eth9 (DRBD_INTERFACE) does not exist" in manual_ops.vip_blocker(ctx)
    assert os.path.exists(ctx.config.MANUAL_FILE)
