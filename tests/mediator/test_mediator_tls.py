"""The mediator over real TLS sockets on 127.0.0.1, with the agent's own client."""
import json
import ssl
import socket
import time

import pytest

from iscsi_ha.witness import MediatorError

from harness import drbd


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def sync_pool(med, ca, cb, pool="p1", uuid="8E0E9B2D3B0E1B4C"):
    """Heartbeat both nodes (a Primary) with their answers' generation until golden."""
    gen = None
    for _ in range(20):
        gen = ca.call("heartbeat", gen=gen, drbd=drbd("Primary", uuid=uuid))["gen"]
        gen = cb.call("heartbeat", gen=gen, drbd=drbd(uuid=uuid))["gen"]
        rec = med.server.store.cached(pool)[0]
        if rec["eligible"] == ["a", "b"] and rec["primary"] == "a" and \
                rec["generation"] == gen:
            return gen
        time.sleep(0.05)
    raise AssertionError("pool never became golden: %s" % (rec,))


def test_heartbeat_and_ping_proxy(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    ca = med.client(med.enroll(tmp_path, "p1", "a"), "p1", "a")
    cb = med.client(med.enroll(tmp_path, "p1", "b"), "p1", "b")
    ans = ca.call("heartbeat", drbd=drbd("Primary"))
    assert ans["gen"] == 1 and ans["peer"] == "b" and ans["peer_alive"] is False
    assert cb.call("heartbeat", drbd=drbd())["peer_alive"] is True
    # both in sync at the current generation: golden, primary adopted
    sync_pool(med, ca, cb)
    rec = med.server.store.cached("p1")[0]
    assert rec["primary"] == "a" and rec["synced_uuid"] == "8E0E9B2D3B0E1B4C"
    assert rec["eligible"] == ["a", "b"] and rec["outdated"] == []


def test_credential_of_other_pool_or_node_refused_with_no_change(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    med.admin(op="pool-add", pool="p2", nodes=["a", "b"])
    cred_p2a = med.enroll(tmp_path, "p2", "a")
    cred_p1b = med.enroll(tmp_path, "p1", "b")
    before = {p: med.server.store.read(p) for p in ("p1", "p2")}
    audit_before = len(med.server.store.audit("p1"))
    # p2's credential claiming to be p1/a, and p1/b's claiming to be p1/a
    for cred, pool, node in ((cred_p2a, "p2", "a"), (cred_p1b, "p1", "b")):
        c = med.client(cred, pool, node)
        c.pool, c.node = "p1", "a"
        for op in ("heartbeat", "promote", "fence-peer"):
            with pytest.raises(MediatorError) as err:
                c.call(op, gen=1, drbd=drbd("Primary"))
            assert "may act only as node %s of pool %s" % (node, pool) in str(err.value)
    assert {p: med.server.store.read(p) for p in ("p1", "p2")} == before
    assert med.server.mediator._seen.get(("p1", "a")) is None
    assert wait_for(lambda: any(e["event"] == "refused" for e in med.server.store.audit("p2")))
    assert len(med.server.store.audit("p1")) >= audit_before
    assert med.server.stats["wrong_identity"] == 6


def test_unknown_and_revoked_certificates_refused(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    cred = med.enroll(tmp_path, "p1", "a")
    c = med.client(cred, "p1", "a")
    assert c.call("heartbeat")["ok"]
    med.admin(op="cred-revoke", pool="p1", node="a")
    c2 = med.client(cred, "p1", "a")
    with pytest.raises(MediatorError) as err:
        c2.call("heartbeat")
    assert "credential not accepted" in str(err.value) or "closed" in str(err.value)
    # the kept-alive connection of the revoked credential was closed too
    with pytest.raises(MediatorError):
        c.call("heartbeat")


def test_tls_below_1_2_and_no_client_cert_refused(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    cred = med.enroll(tmp_path, "p1", "a")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cred + "/ca.pem")
    ctx.load_cert_chain(cred + "/cert.pem", cred + "/key.pem")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with socket.create_connection(("127.0.0.1", med.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b'{"op":"ping"}\n')
                assert s.recv(100) == b""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cred + "/ca.pem")
    with socket.create_connection(("127.0.0.1", med.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b'{"op":"ping"}\n')
                if not s.recv(100):
                    raise ConnectionResetError("closed")


def test_rotation_overlap_no_missed_heartbeat(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    old = med.client(med.enroll(tmp_path, "p1", "a"), "p1", "a")
    assert old.call("heartbeat")["ok"]
    new_dir = med.enroll(tmp_path, "p1", "a", rotate=True, overlap=1.5)
    new = med.client(new_dir, "p1", "a")
    assert old.call("heartbeat")["ok"] and new.call("heartbeat")["ok"]
    events = [e["event"] for e in med.server.store.audit("p1")]
    assert "credential-issue" in events and "credential-rotate" in events
    time.sleep(1.6)
    with pytest.raises(MediatorError):
        for _ in range(3):
            old.call("heartbeat")
    assert new.call("heartbeat")["ok"]


def test_rate_limit_slows_failing_source_but_valid_node_still_served(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    cred = med.enroll(tmp_path, "p1", "a")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cred + "/ca.pem")   # no client certificate: fails
    for _ in range(20):
        if med.server.limiter.delay("127.0.0.1") > 0.5:
            break
        try:
            with socket.create_connection(("127.0.0.1", med.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"{}\n")
                    s.recv(10)
        except (ssl.SSLError, OSError):
            pass
    assert med.server.limiter.delay("127.0.0.1") > 0
    t0 = time.monotonic()
    c = med.client(cred, "p1", "a", timeout=5)
    assert c.call("heartbeat")["ok"]
    waited = time.monotonic() - t0
    assert med.server.stats["delayed"] >= 1
    assert waited < 2.0 + 1.0
