"""The lab's etcd members inside a network namespace (its own 127.0.0.1)."""
import os
import re
import subprocess

import pytest

from iscsi_ha_lab import netns
from iscsi_ha_lab.etcd_members import EtcdMembers

import etcd_cluster

pytestmark = [pytest.mark.netns, pytest.mark.etcd]


def root_listeners(port):
    """PIDs of the processes listening on TCP ``port`` in the root namespace."""
    out = subprocess.run(["ss", "-Hltnp", "sport = :%d" % port], stdout=subprocess.PIPE,
                         universal_newlines=True, timeout=10, check=True).stdout
    return set(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def test_three_members_in_a_namespace_survive_one_kill_and_are_removed(ns_prefix, tmp_path):
    etcd_cluster.need_etcd()
    ns = ns_prefix + "m"
    netns.add_namespace(ns)
    members = EtcdMembers(ns, str(tmp_path / "etcd"))
    try:
        members.start()
        assert all(members.healthy(i) for i in range(3))
        # Not listening in the root namespace: the ports are on the namespace's loopback. (Another
        # program of this machine may hold the same port number in the root namespace; only our
        # members listening there would be wrong.)
        ours = set(proc.pid for proc in members.procs.values())
        for port in members.client_ports:
            assert not root_listeners(port) & ours, port
        members.kill_member(1)
        # The two left keep a quorum; if member 1 led, they first elect a new leader (an
        # election timeout, 1 s by default): healthy again within a bound, not at once.
        members.wait_healthy(15)
        assert sorted(members.procs) == [0, 2]
        members.start_member(1)
        members.wait_healthy(30)
    finally:
        members.stop()
        netns.delete_namespace(ns)
    assert not os.path.exists(str(tmp_path / "etcd" / "etcd0.etcd"))
    assert not members.procs
