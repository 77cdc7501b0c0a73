"""The harness itself: real etcd members start, fail, restart and are always cleaned up."""
import os

import pytest

import etcd_cluster

pytestmark = pytest.mark.etcd


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_single_member_starts_and_is_removed():
    etcd_cluster.need_etcd()
    with etcd_cluster.EtcdCluster(size=1) as cluster:
        (m,) = cluster.members
        assert m.healthy() and cluster.leader() is m
        assert all(url.startswith("http://127.0.0.1:") for url in cluster.endpoints)
        pid, base = m.proc.pid, cluster.base_dir
        assert os.path.isdir(os.path.join(base, "m0.etcd", "member"))
    assert not _alive(pid)
    assert not os.path.exists(base)


def test_cleanup_when_the_test_body_fails():
    etcd_cluster.need_etcd()
    with pytest.raises(RuntimeError):
        with etcd_cluster.EtcdCluster(size=3) as cluster:
            pids = [m.proc.pid for m in cluster.members]
            base = cluster.base_dir
            raise RuntimeError("test failed inside")
    assert not any(_alive(p) for p in pids)
    assert not os.path.exists(base)


def test_cleanup_when_start_fails(monkeypatch):
    """A member that cannot start: start() gives up in bounded time and leaves nothing."""
    etcd_cluster.need_etcd()
    bases = []
    cluster = etcd_cluster.EtcdCluster(size=1)
    real_argv = cluster._argv

    def broken(member, initial, token):
        bases.append(cluster.base_dir)
        argv = real_argv(member, initial, token)
        argv[argv.index("--data-dir") + 1] = "/dev/null/cannot-be-a-dir"
        return argv

    monkeypatch.setattr(cluster, "_argv", broken)
    with pytest.raises(etcd_cluster.EtcdError) as err:
        with cluster:
            pass  # pragma: no cover
    assert "exited" in str(err.value)
    assert bases and not any(os.path.exists(b) for b in bases)
    assert not cluster.running_members()


def test_three_members_kill_follower_kill_leader_restart(etcd3):
    assert len({m.client_port for m in etcd3.members} | {m.peer_port for m in etcd3.members}) == 6
    leader = etcd3.leader()
    follower = etcd3.followers()[0]
    etcd3.kill(follower)
    assert not follower.running()
    assert etcd3.leader() is leader  # two of three keep quorum and the same leader
    etcd3.restart(follower)
    etcd3.wait_healthy()
    old = etcd3.kill_leader()
    new = etcd3.leader(timeout=10)
    assert new is not old and new.running()
    etcd3.restart(old)
    etcd3.wait_healthy()
    assert len(etcd3.running_members()) == 3
