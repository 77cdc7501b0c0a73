"""Fixtures that start real etcd (Debian etcd-server) on 127.0.0.1 and always stop it."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# The mediator service is its own package (it does not ship to dom0): import it from the tree.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "mediator"))

import etcd_cluster  # noqa: E402  (the harness next to this file)


_need_etcd = etcd_cluster.need_etcd


@pytest.fixture
def etcd1():
    """A single etcd member with its own ports and data dir."""
    _need_etcd()
    with etcd_cluster.EtcdCluster(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd3():
    """A three-member etcd cluster with its own ports and data dirs."""
    _need_etcd()
    with etcd_cluster.EtcdCluster(size=3) as cluster:
        yield cluster


@pytest.fixture
def tls_files(tmp_path):
    etcd_cluster.need(etcd_cluster.TlsFiles.available(),
                      "openssl not installed (Debian package openssl)")
    return etcd_cluster.TlsFiles(str(tmp_path)).create()


@pytest.fixture
def etcd1_tls(tls_files):
    """A single etcd member that speaks only TLS and requires a client certificate."""
    _need_etcd()
    with etcd_cluster.EtcdCluster(size=1, tls=tls_files) as cluster:
        yield cluster
