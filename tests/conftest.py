"""Shared fixtures: real network namespaces that each test creates and always removes."""
import os
import shutil

import pytest

from iscsi_ha.lab import netns


def _need(tools):
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip("missing tools: %s" % ", ".join(missing))


@pytest.fixture
def ns_prefix():
    """A prefix unique to this test process; everything named with it is removed afterwards."""
    _need(["ip"])
    prefix = "iht%d" % (os.getpid() % 100000)
    netns.cleanup(prefix)
    yield prefix
    netns.cleanup(prefix)


@pytest.fixture
def two_hosts(ns_prefix):
    """Two namespaces on one bridge: (ns_a, ns_b, bridge) with 192.0.2.11/24 and .12/24 on eth0."""
    a, b, br = ns_prefix + "a", ns_prefix + "b", ns_prefix + "br"
    netns.add_bridge(br)
    for ns, last, host_if in ((a, 11, ns_prefix + "va"), (b, 12, ns_prefix + "vb")):
        netns.add_namespace(ns)
        netns.attach_to_bridge(ns, br, host_if, "eth0", "192.0.2.%d/24" % last)
    return a, b, br
