"""The lab's etcd members inside a network namespace (its own 127.0.0.1)."""
import os

import pytest

from iscsi_ha_lab import netns
from iscsi_ha_lab.etcd_members import EtcdMembers

import etcd_cluster

pytestmark = [pytest.mark.netns, pytest.mark.etcd]


def test_three_members_in_a_namespace_survive_one_kill_and_are_removed(ns_prefix, tmp_path):
    etcd_cluster.need_etcd()
    ns = ns_prefix + "m"
    netns.add_namespace(ns)
    members = EtcdMembers(ns, str(tmp_path / "etcd"))
    try:
        members.start()
        assert all(members.healthy(i) for i in range(3))
        # Not reachable from the root namespace: the ports are on the namespace's loopback.
        import socket
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", members.client_ports[0]), timeout=1).close()
        members.kill_member(1)
        assert members.healthy(0) and members.healthy(2)
        members.start_member(1)
        members.wait_healthy(30)
    finally:
        members.stop()
        netns.delete_namespace(ns)
    assert not os.path.exists(str(tmp_path / "etcd" / "etcd0.etcd"))
    assert not members.procs
