"""End to end: two mediator processes' servers (TLS on 127.0.0.1) over one three-member etcd,
and the agent's client (iscsi_ha/witness.py) with the list of both addresses."""
import os
import shutil
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "mediator"))

from harness import Running, drbd  # noqa: E402  (tests/mediator/harness.py, issue 13)
from test_mediator_tls import sync_pool  # noqa: E402

from iscsi_ha.witness import MediatorClient, MediatorError  # noqa: E402

pytestmark = pytest.mark.etcd

CUT = dict(conn="Connecting", peer_disk="DUnknown")


def two_instances(tmp_path, etcd):
    """Instance X and Y: same CA and server certificate (one service, two processes), each
    with its own state dir, both on the etcd backend."""
    over = {"backend": "etcd", "etcd_endpoints": ",".join(etcd.endpoints)}
    x = Running(tmp_path / "x", **over)
    shutil.copytree(str(tmp_path / "x" / "tls"), str(tmp_path / "y" / "tls"))
    y = Running(tmp_path / "y", **dict(over, etcd_endpoints=",".join(etcd.endpoints[::-1])))
    return x, y


def client(cred_dir, addresses, node, timeout=2.0):
    return MediatorClient(addresses, os.path.join(cred_dir, "ca.pem"),
                          os.path.join(cred_dir, "cert.pem"), os.path.join(cred_dir, "key.pem"),
                          "p1", node, timeout=timeout)


def call_until(c, op, want, seconds, beat=False, **fields):
    """Call ``op`` until the answer's result is ``want`` (errors = the client moves on);
    ``beat``: heartbeat before each call, as the agent keeps doing."""
    end = time.monotonic() + seconds
    last = None
    while time.monotonic() < end:
        try:
            if beat:
                c.call("heartbeat", gen=fields.get("gen"), drbd=fields.get("drbd"))
            last = c.call(op, **fields)
            if want is None or last.get("result") == want:
                return last
        except MediatorError as exc:
            last = exc
        time.sleep(0.1)
    return last


def test_instance_down_agent_moves_to_next_and_state_is_shared(tmp_path, etcd3):
    x, y = two_instances(tmp_path, etcd3)
    try:
        x.admin(op="pool-add", pool="p1", nodes=["a", "b"])
        addrs = [("127.0.0.1", x.port), ("127.0.0.1", y.port)]
        ca = client(x.enroll(tmp_path, "p1", "a"), addrs, "a")
        cb = client(x.enroll(tmp_path, "p1", "b"), addrs, "b")
        gen = sync_pool(x, ca, cb)
        assert ca.address == cb.address == "127.0.0.1:%d" % x.port
        x.stop()                                   # instance X dies
        with pytest.raises(MediatorError):
            ca.call("heartbeat", gen=gen, drbd=drbd("Primary"))
        assert ca.address == "127.0.0.1:%d" % y.port   # moved on
        # Y knows the pool and the credentials X issued (etcd), and answers.
        ans = call_until(ca, "heartbeat", None, 3, gen=gen, drbd=drbd("Primary"))
        assert ans["gen"] == gen and ans["primary"] == "a" and ans["can_grant"] is True
        # B loses A. Y has just taken the pool over: it may not depose A before A's lease
        # plus margin, as seen from Y.
        t0 = time.monotonic()
        first = call_until(cb, "promote", "retry", 3, gen=gen, drbd=drbd(**CUT))
        assert first["result"] == "retry", first
        granted = None
        while time.monotonic() - t0 < 8:
            cb.call("heartbeat", gen=gen, drbd=drbd(**CUT))
            ans = cb.call("promote", gen=gen, drbd=drbd(**CUT))
            if ans["result"] == "granted":
                granted = ans
                break
            time.sleep(0.1)
        assert granted is not None and granted["gen"] == gen + 1
        assert time.monotonic() - t0 >= 1.0 + 0.3 - 0.05
        grants = [e for e in y.server.store.audit("p1", 1000) if e.get("result") == "granted"]
        assert len(grants) == 1 and grants[0]["node"] == "b"
    finally:
        x.stop()
        y.stop()


def test_primary_alive_at_other_instance_is_never_deposed(tmp_path, etcd3):
    """A heartbeats to X only, B to Y only (its path to X is broken). B's promote at Y is
    refused with "retry" for as long as A is alive at X, well past one lease; once A stops,
    B is granted after lease + margin."""
    x, y = two_instances(tmp_path, etcd3)
    try:
        x.admin(op="pool-add", pool="p1", nodes=["a", "b"])
        da, db = x.enroll(tmp_path, "p1", "a"), x.enroll(tmp_path, "p1", "b")
        ca = client(da, [("127.0.0.1", x.port)], "a")
        cb_x = client(db, [("127.0.0.1", x.port)], "b")
        gen = sync_pool(x, ca, cb_x)
        cb = client(db, [("127.0.0.1", y.port)], "b")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:             # three leases
            ca.call("heartbeat", gen=gen, drbd=drbd("Primary", **CUT))
            cb.call("heartbeat", gen=gen, drbd=drbd(**CUT))
            ans = cb.call("promote", gen=gen, drbd=drbd(**CUT))
            assert ans["result"] == "retry", ans
            time.sleep(0.1)
        assert y.server.store.read("p1")[0]["primary"] == "a"
        # A dies. Y learns it from X's presence being withdrawn, then waits lease + margin.
        t_dead = time.monotonic()
        granted = call_until(cb, "promote", "granted", 8, beat=True, gen=gen, drbd=drbd(**CUT))
        assert granted["result"] == "granted", granted
        took = time.monotonic() - t_dead
        assert took >= 1.0 + 0.3  # lease + margin after A's presence went, at least
        print("B granted %.2fs after A stopped heartbeating at the other instance" % took)
        rec = x.server.store.read("p1")[0]
        assert rec["primary"] == "b" and rec["outdated"] == ["a"]
        # A comes back at X: deposed.
        ans = call_until(ca, "heartbeat", None, 3, gen=gen, drbd=drbd("Primary", **CUT))
        assert ans["deposed"] is True and ans["primary"] == "b"
        assert ca.call("fence-peer", gen=gen)["exit"] == 6
    finally:
        x.stop()
        y.stop()
