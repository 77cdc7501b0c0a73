"""The stdlib etcd client against real etcd (single member, three members, TLS, auth)."""
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.etcd

from iscsi_ha_mediator import etcd_client as ec
from etcd_cluster import HOST, free_port


def settings(endpoints, **kw):
    return ec.EtcdSettings(endpoints, **kw)


# -- settings validation (no etcd needed) ----------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(endpoints=[]), "none given"),
    (dict(endpoints=["127.0.0.1:2379"]), "scheme"),
    (dict(endpoints=["ftp://127.0.0.1:2379"]), "scheme"),
    (dict(endpoints=["http://127.0.0.1"]), "give the port"),
    (dict(endpoints=["http://127.0.0.1:99999"]), "port"),
    (dict(endpoints=["http://127.0.0.1:2379/v3"]), "only scheme://host:port"),
    (dict(endpoints=["http://127.0.0.1:2379", "http://127.0.0.1:2379"]), "twice"),
    (dict(endpoints=["http://127.0.0.1:2379", "https://127.0.0.1:2380"]), "mix"),
    (dict(endpoints=["http://127.0.0.1:2379"], timeout=0), "timeout"),
    (dict(endpoints=["http://127.0.0.1:2379"], timeout="2"), "timeout"),
    (dict(endpoints=["http://127.0.0.1:2379"], timeout=3, total_timeout=2), "below timeout"),
    (dict(endpoints=["https://127.0.0.1:2379"], cert_file="/etc/hostname"), "both cert_file"),
    (dict(endpoints=["http://127.0.0.1:2379"], ca_file="/etc/hostname"), "https://"),
    (dict(endpoints=["https://127.0.0.1:2379"], ca_file="/nonexistent/ca.pem"), "readable"),
    (dict(endpoints=["http://127.0.0.1:2379"], username="u"), "password is empty"),
    (dict(endpoints=["http://127.0.0.1:2379"], password="p"), "username is not"),
    (dict(endpoints=["http://192.0.2.7:2379"], username="u", password="p"), "clear text"),
    (dict(endpoints=["http://127.0.0.1:2379"], prefix="noslash"), "prefix"),
])
def test_bad_settings_get_one_line(kwargs, words):
    with pytest.raises(ec.EtcdSettingsError) as err:
        ec.EtcdSettings(**kwargs).validate()
    text = str(err.value)
    assert words in text and "\n" not in text


def test_good_settings_pass():
    s = ec.EtcdSettings("http://127.0.0.1:2379, http://127.0.0.1:2380", username="u",
                        password="p").validate()
    assert s.parsed_endpoints() == [("http", "127.0.0.1", 2379), ("http", "127.0.0.1", 2380)]


def test_prefix_end():
    assert ec.prefix_end(b"/a/") == b"/a0"
    assert ec.prefix_end(b"a\xff") == b"b"


# -- against one real member ------------------------------------------------------------------
def test_put_get_range_delete(etcd1):
    c = ec.EtcdClient(settings(etcd1.endpoints))
    rev = c.put("/t/a", b"1")
    c.put("/t/b", "2")
    c.put("/u/c", b"3")
    kv = c.get("/t/a")
    assert kv.value == b"1" and kv.mod_revision == rev
    kvs, header_rev = c.range("/t/", prefix=True)
    assert [k.key for k in kvs] == [b"/t/a", b"/t/b"] and header_rev >= rev
    assert c.get("/missing") is None
    assert c.delete("/t/", prefix=True) == 2
    assert c.range("/t/", prefix=True)[0] == []
    # What the harness reads directly (not through this client) agrees.
    assert etcd1.get("/u/c")[0] == b"3"


def test_txn_compare_on_mod_revision(etcd1):
    c = ec.EtcdClient(settings(etcd1.endpoints))
    # Create only if absent (mod revision 0).
    r = c.txn([ec.cmp_mod_revision("/k", 0)], [ec.op_put("/k", b"v1")], [ec.op_range("/k")])
    assert r.succeeded
    rev = c.get("/k").mod_revision
    again = c.txn([ec.cmp_mod_revision("/k", 0)], [ec.op_put("/k", b"x")], [ec.op_range("/k")])
    assert not again.succeeded and again.ranges()[0][0].value == b"v1"
    # Compare-and-set on the revision we read; a second writer with the same old revision loses.
    ok = c.txn([ec.cmp_mod_revision("/k", rev)], [ec.op_put("/k", b"v2"), ec.op_put("/log/1", b"a")])
    lost = c.txn([ec.cmp_mod_revision("/k", rev)], [ec.op_put("/k", b"v3")])
    assert ok.succeeded and not lost.succeeded
    assert c.get("/k").value == b"v2" and c.get("/log/1").value == b"a"
    with pytest.raises(ValueError):
        c.txn([], [ec.op_put("/k", b"z")])


def test_bad_request_is_one_line(etcd1):
    c = ec.EtcdClient(settings(etcd1.endpoints))
    with pytest.raises(ec.EtcdRequestError) as err:
        c.call("/v3/kv/put", {"key": "!!!"})
    assert "base64" in str(err.value) and "\n" not in str(err.value)


def test_lease_grant_keepalive_revoke(etcd1):
    c = ec.EtcdClient(settings(etcd1.endpoints))
    lease, ttl = c.lease_grant(5)
    assert ttl == 5
    c.put("/leased", b"x", lease=lease)
    assert c.get("/leased").lease == lease
    assert c.lease_keepalive(lease) == 5
    c.lease_revoke(lease)
    assert c.get("/leased") is None
    assert c.lease_keepalive(lease) == 0


def test_failover_skips_a_refusing_endpoint(etcd1):
    dead = "http://%s:%d" % (HOST, free_port())
    c = ec.EtcdClient(settings([dead] + etcd1.endpoints))
    c.put("/x", b"1")
    assert c.last_endpoint == etcd1.endpoints[0].split("//")[1]


def test_failover_skips_an_endpoint_that_never_answers(etcd1):
    """A listener that accepts TCP but never replies: the per-request timeout moves on."""
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(8)
    try:
        ep = "http://%s:%d" % (HOST, silent.getsockname()[1])
        c = ec.EtcdClient(settings([ep] + etcd1.endpoints, timeout=0.5, total_timeout=3))
        t0 = time.monotonic()
        assert c.txn([ec.cmp_mod_revision("/y", 0)], [ec.op_put("/y", b"1")]).succeeded
        took = time.monotonic() - t0
        assert 0.4 < took < 2.5
    finally:
        silent.close()


def test_every_endpoint_down_raises_unavailable_in_bounded_time():
    eps = ["http://%s:%d" % (HOST, free_port()) for _ in range(3)]
    c = ec.EtcdClient(settings(eps, timeout=0.5, total_timeout=1.5))
    t0 = time.monotonic()
    with pytest.raises(ec.EtcdUnavailable) as err:
        c.get("/a")
    assert time.monotonic() - t0 < 2.0
    assert "unreachable" in str(err.value) and "\n" not in str(err.value)


def test_threads_share_one_client(etcd1):
    c = ec.EtcdClient(settings(etcd1.endpoints))
    errors = []

    def work(n):
        try:
            for i in range(20):
                c.put("/th/%d/%d" % (n, i), b"v")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(c.range("/th/", prefix=True)[0]) == 80


# -- three members ----------------------------------------------------------------------------
def test_three_members_one_killed_then_leader_killed(etcd3):
    c = ec.EtcdClient(settings(etcd3.endpoints, timeout=1.0, total_timeout=5.0))
    c.put("/a", b"1")
    etcd3.kill(etcd3.followers()[0])
    c.put("/a", b"2")
    assert c.get("/a").value == b"2"
    # Kill the leader of the remaining two: no quorum, so etcd must refuse, not answer stale.
    etcd3.kill_leader()
    with pytest.raises(ec.EtcdUnavailable):
        c.get("/a")


# -- TLS and auth over real sockets -------------------------------------------------------------
def test_tls_with_client_certificate(etcd1_tls, tls_files):
    s = settings(etcd1_tls.endpoints, ca_file=tls_files.ca_cert,
                 cert_file=tls_files.client_cert, key_file=tls_files.client_key)
    c = ec.EtcdClient(s)
    c.put("/tls", b"ok")
    assert c.get("/tls").value == b"ok"


def test_tls_wrong_ca_is_refused(etcd1_tls, tls_files):
    other_ca, _ = tls_files.make_ca("other")
    s = settings(etcd1_tls.endpoints, ca_file=other_ca, cert_file=tls_files.client_cert,
                 key_file=tls_files.client_key)
    with pytest.raises(ec.EtcdAuthError) as err:
        ec.EtcdClient(s).get("/tls")
    assert "certificate" in str(err.value) and "\n" not in str(err.value)


def test_tls_without_client_certificate_is_refused(etcd1_tls, tls_files):
    s = settings(etcd1_tls.endpoints, ca_file=tls_files.ca_cert, timeout=1, total_timeout=2)
    with pytest.raises(ec.EtcdError):
        ec.EtcdClient(s).put("/tls", b"no")
    assert etcd1_tls.get("/tls") == (None, 0)


def _enable_auth(client, password):
    client.call("/v3/auth/user/add", {"name": "root", "password": password})
    client.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
    client.call("/v3/auth/enable", {})


def test_user_and_password(etcd1):
    _enable_auth(ec.EtcdClient(settings(etcd1.endpoints)), "s3cret")
    good = ec.EtcdClient(settings(etcd1.endpoints, username="root", password="s3cret"))
    good.put("/auth", b"1")
    assert good.get("/auth").value == b"1"
    bad = ec.EtcdClient(settings(etcd1.endpoints, username="root", password="wrong"))
    with pytest.raises(ec.EtcdAuthError) as err:
        bad.get("/auth")
    assert "refused" in str(err.value)
    anonymous = ec.EtcdClient(settings(etcd1.endpoints))
    with pytest.raises(ec.EtcdAuthError):
        anonymous.put("/auth", b"2")
    assert good.get("/auth").value == b"1"
