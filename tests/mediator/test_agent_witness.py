"""The agent's side (iscsi_ha.witness, Python 3.6 code) against a real mediator over TLS."""
import collections
import json
import os
import shutil
import time

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha import model
from iscsi_ha.agent import Agent
from iscsi_ha.drbd import DrbdState
from iscsi_ha.witness import (AgentWitness, MediatorClient, drbd_report, from_config,
                              parse_addresses)

from harness import Running, drbd
from test_mediator_tls import sync_pool, wait_for

UUID = "8E0E9B2D3B0E1B4C"
Gi = collections.namedtuple("Gi", "current bitmap history")


def witness_for(med, cred, node, tmp_path, addresses=None, alerts=None, interval=0.1):
    client = MediatorClient(addresses or [("127.0.0.1", med.port)], cred + "/ca.pem",
                            cred + "/cert.pem", cred + "/key.pem", "p1", node, timeout=1.0)
    d = tmp_path / ("w-" + node)
    d.mkdir(exist_ok=True)
    return AgentWitness(client, str(d / "state.json"), str(d / "grant.json"),
                        interval=interval,
                        alert=(alerts.append if alerts is not None else None))


def test_parse_addresses():
    assert parse_addresses("m1, m2:7000,[::1]:9") == [("m1", 7790), ("m2", 7000), ("::1", 9)]
    with pytest.raises(ValueError):
        parse_addresses("m1:0")


def test_drbd_report_multi_resource_digest():
    a = DrbdState("r1", "1", "Primary", "Secondary", "Connected", "UpToDate", "UpToDate")
    b = DrbdState("r2", "2", "Primary", "Unknown", "Connecting", "UpToDate", "DUnknown")
    one = drbd_report({"r1": a}, {"r1": "8E0E9B2D3B0E1B4D"})
    assert one["current_uuid"] == UUID and one["role"] == "Primary"
    two = drbd_report({"r1": a, "r2": b}, {"r1": UUID, "r2": "AAAA"})
    assert two["conn"] == "Connecting" and two["peer_disk"] == "DUnknown"
    assert two["current_uuid"] not in (None, UUID)
    assert drbd_report({"r1": a, "r2": b}, {"r1": UUID})["current_uuid"] is None


def test_cached_answer_no_network_in_pass_and_alerts_once(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    alerts = []
    w = witness_for(med, med.enroll(tmp_path, "p1", "a"), "a", tmp_path, alerts=alerts)
    w.set_report(drbd("Primary"))
    w.start()
    try:
        assert wait_for(lambda: w.state().reachable)
        port = med.port
        med.stop()                      # mediator down
        t0 = time.monotonic()
        st = w.state()                  # memory only: instant
        assert time.monotonic() - t0 < 0.05
        assert wait_for(lambda: not w.state().reachable, 5)
        ok, why = w.state().failover_allowed()
        assert not ok and "unreachable" in why
        time.sleep(0.5)
        assert len([a for a in alerts if "unreachable" in a]) == 1
        back = Running(tmp_path / "state", port=port)    # same port, same state
        try:
            assert wait_for(lambda: w.state().reachable, 10)
            assert len([a for a in alerts if "reachable again" in a]) == 1
        finally:
            back.stop()
    finally:
        w.stop()


def test_rollback_detected_failover_off(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    ca, cb = med.enroll(tmp_path, "p1", "a"), med.enroll(tmp_path, "p1", "b")
    db = os.path.join(med.state_dir, "mediator.db")
    med.stop()
    shutil.copy(db, str(tmp_path / "old.db"))          # backup at generation 1
    for suffix in ("-wal", "-shm"):
        if os.path.exists(db + suffix):
            shutil.copy(db + suffix, str(tmp_path / ("old.db" + suffix)))
    m2 = Running(tmp_path / "state")
    alerts = []
    try:
        a, b = m2.client(ca, "p1", "a"), m2.client(cb, "p1", "b")
        gen = sync_pool(m2, a, b)
        assert gen >= 2
        w = witness_for(m2, cb, "b", tmp_path, alerts=alerts)
        w.beat()
        assert w.state().max_gen == gen
        m2.stop()
        shutil.copy(str(tmp_path / "old.db"), db)       # the mediator host restored a backup
        for suffix in ("-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
            if os.path.exists(str(tmp_path / ("old.db" + suffix))):
                shutil.copy(str(tmp_path / ("old.db" + suffix)), db + suffix)
        m3 = Running(tmp_path / "state")
        try:
            w.client.addresses = [("127.0.0.1", m3.port)]
            w.client.close()
            w.beat()
            st = w.state()
            assert st.generation == 1 and st.rolled_back
            ok, why = st.failover_allowed()
            assert not ok and "rolled back" in why
            assert any("rolled back" in x for x in alerts)
            # persisted: a restarted agent still refuses
            again = witness_for(m3, cb, "b", tmp_path)
            assert again.state().rolled_back
            assert again.observation().failover_allowed is False
        finally:
            m3.stop()
    finally:
        m2.stop()


def test_address_list_fails_over(med, tmp_path):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    cred = med.enroll(tmp_path, "p1", "a")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    w = witness_for(med, cred, "a", tmp_path,
                    addresses=[("127.0.0.1", dead), ("127.0.0.1", med.port)])
    assert w.beat() is None                  # first address refused
    assert w.beat()["ok"]                    # second one answers
    assert w.client.address.endswith(":%d" % med.port)


class FakeTarget(object):
    def __init__(self):
        self.running, self.serving, self.missing, self.connections = False, False, [], 0
        self.processes, self.error = [], ""


class FakeVip(object):
    local, interface_exists, interface_up = False, True, True


def agent_config(tmp_path, node):
    pool = tmp_path / ("pool-%s.conf" % node)
    pool.write_text("master")
    return config_mod.loads("\n".join([
        "POOL_CONF=%s" % pool, "STATE_DIR=%s" % (tmp_path / ("agent-" + node)),
        "MONITOR_DELAY=0.2", "MONITOR_SCANRATE=5", "MONITOR_MAX_STARTS=10",
        "SYSLOG_SOCKET=", ""]), "test.conf")


def test_disconnected_secondary_promotes_only_with_persisted_grant(med, tmp_path, mocker):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    a = med.client(med.enroll(tmp_path, "p1", "a"), "p1", "a")
    cb = med.enroll(tmp_path, "p1", "b")
    b = med.client(cb, "p1", "b")
    gen = sync_pool(med, a, b)
    # B's agent: pool master now (A's site lost), DRBD link down, disk UpToDate
    adapters = mocker.Mock()
    adapters.drbd.observe.return_value = {"iscsi1": DrbdState(
        "iscsi1", "1", "Secondary", "Unknown", "Connecting", "UpToDate", "DUnknown")}
    adapters.drbd.generations.return_value = Gi(UUID, "0", ())
    adapters.target.observe.return_value = FakeTarget()
    adapters.vip.observe.return_value = FakeVip()
    promoted = []
    w = witness_for(med, cb, "b", tmp_path, interval=0.2)
    grant_file = w.grant_file

    def promote(res):
        promoted.append((res, json.load(open(grant_file))))   # grant already on disk
    adapters.drbd.promote.side_effect = promote
    w.start()
    agent = Agent(agent_config(tmp_path, "b"), adapters, witness=w)
    try:
        assert wait_for(lambda: w.state().reachable)
        record = agent.run_pass()
        assert not record.decision.actions or not any(
            isinstance(x, model.PromoteDrbd) for x in record.decision.actions)
        assert "witness" in record.decision.reason
        doc = json.load(open(agent.config.STATUS_FILE))
        assert doc["witness"]["granted"] is False and doc["witness"]["reachable"] is True
        # A is silent: once its lease (1 s + 0.3 s) is over the mediator grants
        t0 = time.monotonic()
        while not promoted:
            assert time.monotonic() - t0 < 8, record.decision.reason
            time.sleep(0.2)
            record = agent.run_pass()
        assert promoted[0][0] == "iscsi1" and promoted[0][1]["gen"] == gen + 1
        assert med.server.store.read("p1")[0]["primary"] == "b"
        doc = json.load(open(agent.config.STATUS_FILE))
        assert doc["witness"]["granted"] is True
    finally:
        w.stop()


def test_deposed_primary_demotes(med, tmp_path, mocker):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    ca = med.enroll(tmp_path, "p1", "a")
    a = med.client(ca, "p1", "a")
    b = med.client(med.enroll(tmp_path, "p1", "b"), "p1", "b")
    gen = sync_pool(med, a, b)
    time.sleep(1.4)
    assert b.call("promote", gen=gen, drbd=drbd())["result"] == "granted"
    adapters = mocker.Mock()
    adapters.drbd.observe.return_value = {"iscsi1": DrbdState(
        "iscsi1", "1", "Primary", "Unknown", "Connecting", "UpToDate", "DUnknown")}
    adapters.drbd.generations.return_value = Gi(UUID, "0", ())
    adapters.target.observe.return_value = FakeTarget()
    adapters.vip.observe.return_value = FakeVip()
    w = witness_for(med, ca, "a", tmp_path)
    w.set_report(drbd("Primary", conn="Connecting", peer_disk="DUnknown"))
    w.beat()
    agent = Agent(agent_config(tmp_path, "a"), adapters, witness=w)
    record = agent.run_pass()
    assert any(isinstance(x, model.DemoteDrbd) for x in record.decision.actions)
    assert "deposed" in record.decision.reason
    doc = json.load(open(agent.config.STATUS_FILE))
    assert doc["witness"]["deposed"] is True


def test_from_config_missing_credential_one_line(tmp_path):
    cfg = config_mod.loads("MEDIATOR=127.0.0.1\nMEDIATOR_POOL=p1\nSTATE_DIR=%s\n"
                           "SYSLOG_SOCKET=\n" % tmp_path, "t.conf")
    from iscsi_ha.witness import MediatorError
    with pytest.raises(MediatorError) as err:
        from_config(cfg)
    assert "iscsi-cfg mediator enroll" in str(err.value) and "\n" not in str(err.value)
    assert from_config(config_mod.loads("SYSLOG_SOCKET=\n", "t.conf")) is None


def test_fence_peer_handler_exit_codes(med, tmp_path):
    from iscsi_ha.witness import fence_peer_from_config
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    creds = {n: med.enroll(tmp_path, "p1", n) for n in ("a", "b")}
    a = med.client(creds["a"], "p1", "a")
    b = med.client(creds["b"], "p1", "b")
    gen = sync_pool(med, a, b)

    def host_config(node, port):
        d = tmp_path / ("host-" + node)
        (d / "mediator").mkdir(parents=True, exist_ok=True)
        for name in ("ca.pem", "cert.pem", "key.pem"):
            shutil.copy(os.path.join(creds[node], name), str(d / "mediator" / name))
        return config_mod.loads("MEDIATOR=127.0.0.1:%d\nMEDIATOR_POOL=p1\nMEDIATOR_NODE=%s\n"
                                "STATE_DIR=%s\nSYSLOG_SOCKET=\nMEDIATOR_TIMEOUT=1\n"
                                % (port, node, d), "t.conf")
    assert fence_peer_from_config(config_mod.loads("SYSLOG_SOCKET=\n", "t.conf")) is None
    code, _ = fence_peer_from_config(host_config("a", med.port))
    assert code == 4 and med.server.store.read("p1")[0]["outdated"] == ["b"]
    assert json.load(open(str(tmp_path / "host-a" / "mediator" / "state.json")))[
        "max_gen"] == gen + 1
    assert fence_peer_from_config(host_config("a", med.port))[0] == 3
    code, reason = fence_peer_from_config(host_config("b", med.port))
    assert code == 6 and "a is primary" in reason
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    code, reason = fence_peer_from_config(host_config("a", dead))
    assert code == 1 and "refused" in reason.lower()


class StubWitness(object):
    def __init__(self, grant):
        self.grant = grant

    def set_report(self, report):
        self.report = report

    def observation(self):
        return self.grant

    def want_promote(self):
        pass


def test_agent_heals_split_brain_as_victim_then_clears_flag(tmp_path, mocker):
    from iscsi_ha.splitbrain_report import read_flag, write_flag
    cfg = agent_config(tmp_path, "a")
    os.makedirs(cfg.STATE_DIR, exist_ok=True)
    write_flag(cfg.STATE_DIR, "iscsi1", reason="split brain detected by DRBD")
    adapters = mocker.Mock()
    standalone = DrbdState("iscsi1", "1", "Primary", "Unknown", "StandAlone", "UpToDate",
                           "DUnknown")
    adapters.drbd.observe.return_value = {"iscsi1": standalone}
    adapters.drbd.generations.return_value = Gi(UUID, "0", ())
    adapters.target.observe.return_value = FakeTarget()
    adapters.vip.observe.return_value = FakeVip()
    calls = []
    adapters.drbd.disconnect.side_effect = lambda r: calls.append("disconnect")
    adapters.drbd.demote.side_effect = lambda r: calls.append("demote")
    adapters.drbd.connect.side_effect = lambda r, discard_my_data=False: calls.append(
        "connect --discard-my-data" if discard_my_data else "connect")
    w = StubWitness(model.WitnessGrant(False, "b is primary at generation 5", deposed=True))
    agent = Agent(cfg, adapters, witness=w)
    record = agent.run_pass()
    assert [r.action.describe() for r in record.results][-1] == \
        "heal split brain of iscsi1 as victim"
    assert all(r.ok for r in record.results), [r.detail for r in record.results]
    assert calls == ["demote", "connect --discard-my-data"]
    assert read_flag(cfg.STATE_DIR, "iscsi1") is not None      # held until in sync
    adapters.drbd.observe.return_value = {"iscsi1": DrbdState(
        "iscsi1", "1", "Secondary", "Primary", "Connected", "UpToDate", "UpToDate")}
    record = agent.run_pass()
    assert [r.action.describe() for r in record.results] == ["clear split-brain flag of iscsi1"]
    assert read_flag(cfg.STATE_DIR, "iscsi1") is None


def _python36():
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([os.path.join(root, "scripts", "find-python36")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip("no Python 3.6 (dom0's version): %s" % proc.stderr.strip()[-200:])
    return proc.stdout.strip().splitlines()[-1]


def test_client_runs_on_python_36(med, tmp_path):
    """The agent-side client under dom0's Python 3.6 against the real mediator over TLS."""
    import subprocess
    PY36 = _python36()
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    cred = med.enroll(tmp_path, "p1", "a")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = (
        "import json, sys\n"
        "from iscsi_ha.witness import AgentWitness, MediatorClient\n"
        "c = MediatorClient([('127.0.0.1', %d)], '%s/ca.pem', '%s/cert.pem', '%s/key.pem', "
        "'p1', 'a', timeout=5)\n"
        "w = AgentWitness(c, '%s/st.json', '%s/grant.json')\n"
        "w.set_report({'role': 'Primary', 'disk': 'UpToDate'})\n"
        "a = w.beat()\n"
        "print(json.dumps({'gen': a['gen'], 'tls': c._sock.version(), "
        "'fence': w.fence_peer()[0]}))\n" % (med.port, cred, cred, cred, tmp_path, tmp_path))
    proc = subprocess.run([PY36, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, cwd=root,
                          env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["gen"] == 1 and out["tls"] in ("TLSv1.2", "TLSv1.3")
    assert out["fence"] == 4      # no primary recorded yet: a (DRBD Primary) outdates b
