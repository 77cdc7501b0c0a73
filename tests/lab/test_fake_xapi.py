"""The fake XAPI, driven with the real XenAPI client over TCP 127.0.0.1 and Unix sockets.

Socket paths live in pytest's tmp_path, whose names contain "_", which XenAPI.xapi_local()
could not express; the custom transport in iscsi_ha_lab.fake_xapi takes the path as given.
"""
import http.client
import os
import re
import socket
import threading
import time
import xmlrpc.client

import pytest
import XenAPI

from iscsi_ha_lab import fake_xapi_roles
from iscsi_ha_lab.fake_xapi import FakePool, XapiError, tcp_session, uds_session

A_IP, B_IP, C_IP = "192.0.2.11", "192.0.2.12", "192.0.2.13"
TOKEN = re.compile(r"^\d{20},\d{20}$")
SR_47 = ["SR_BACKEND_FAILURE_47", "", "The SR is not available", ""]


def wait_for(predicate, timeout=10.0):
    """Poll ``predicate`` (bounded); return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(0.02)
        value = predicate()
    return value


def make_pool(tmp_path, names=("xcp_a", "xcp_b")):
    pool = FakePool(str(tmp_path), fuse_delay=0.3, restart_delay=0.1, live_timeout=0.2,
                    hang_limit=10.0)
    refs = []
    for name, ip in zip(names, (A_IP, B_IP, C_IP)):
        root = tmp_path / name
        refs.append(pool.add_host(name, ip, str(root / "etc_xensource" / "pool.conf"),
                                  uds_path=str(root / "var_lib_xcp" / "xapi")))
    pool.add_iscsi_sr("iscsi_ha", "192.0.2.10", "iqn.2024-01.org.example:ha", "36001405abc")
    return pool, refs


@pytest.fixture
def lab(tmp_path):
    pool, refs = make_pool(tmp_path)
    try:
        pool.start()
        yield pool, refs[0], refs[1]
    finally:
        pool.stop()


def uds(pool, host, timeout=3.0):
    session = uds_session(pool.endpoint(host).uds_path, timeout)
    session.login_with_password("root", "", "1.1", "test")
    return session


def tcp(pool, host, timeout=3.0, login=True):
    session = tcp_session(pool.endpoint(host).url, timeout)
    if login:
        session.login_with_password("root", "", "1.1", "test")
    return session


def failure(call, *args):
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return info.value.details


def own_pbd(session, host):
    sr = session.xenapi.SR.get_by_name_label("iscsi_ha")[0]
    for pbd in session.xenapi.SR.get_PBDs(sr):
        if session.xenapi.PBD.get_host(pbd) == host:
            return pbd
    raise AssertionError("no PBD for %s" % host)


# -- login, roles, forwarding ---------------------------------------------------------------------
def test_tcp_login_on_master_checks_password(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    assert session.xenapi.session.get_this_host(session.handle) == a
    assert failure(tcp(pool, a, login=False).login_with_password, "root", "wrong") == [
        "SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]


def test_tcp_login_on_slave_names_the_master(lab):
    pool, _, b = lab
    assert failure(tcp(pool, b, login=False).login_with_password, "root", "") == [
        "HOST_IS_SLAVE", A_IP]


def test_uds_calls_on_slave_are_forwarded_to_master(lab):
    pool, a, b = lab
    session = uds(pool, b)
    assert session.xenapi.session.get_this_host(session.handle) == b
    pool_ref = session.xenapi.pool.get_all()[0]
    assert session.xenapi.pool.get_master(pool_ref) == a
    assert session.xenapi.host.get_address(a) == A_IP
    assert [c.via for c in pool.endpoint(b).calls("pool.get_master")] == ["uds"]
    assert [c.via for c in pool.endpoint(a).calls("pool.get_master")] == ["forward"]
    session.xenapi.session.logout()
    assert pool.endpoint(a).sessions == {}


def test_method_errors_and_alternative_names(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    assert failure(session.xenapi.pool.no_such_thing) == [
        "MESSAGE_METHOD_UNKNOWN", "pool.no_such_thing"]
    assert failure(session.xenapi.pool.get_master) == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH", "pool.get_master", "1", "0"]
    assert failure(session.xenapi.host.get_address, "OpaqueRef:nope") == [
        "HANDLE_INVALID", "host", "OpaqueRef:nope"]
    assert failure(session.xenapi.SR.get_by_uuid, "nope") == ["UUID_INVALID", "SR", "nope"]
    assert failure(session.xenapi.host.set_address, a, "x") == [
        "MESSAGE_METHOD_UNKNOWN", "host.set_address"]
    assert session.xenapi.pool_get_all() == session.xenapi.pool.get_all()
    assert session.xenapi.host_metrics.get_all() != []


def test_wire_types_ints_as_strings_and_void_as_empty_string(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    raw = xmlrpc.client.ServerProxy(pool.endpoint(a).url)
    reply = raw.host.get_API_version_major(session.handle, a)
    assert reply == {"Status": "Success", "Value": "2"}
    pool_ref = session.xenapi.pool.get_all()[0]
    assert raw.pool.set_name_label(session.handle, pool_ref, "lab") == {
        "Status": "Success", "Value": ""}
    record = session.xenapi.host.get_record(a)
    assert record["enabled"] is True and record["address"] == A_IP
    assert isinstance(record["PBDs"], list) and len(record["PBDs"]) == 1
    assert raw.pool.get_all("OpaqueRef:bogus") == {
        "Status": "Failure", "ErrorDescription": ["SESSION_INVALID", "OpaqueRef:bogus"]}


def test_malformed_request_gets_http_500(lab):
    pool, a, _ = lab
    conn = http.client.HTTPConnection("127.0.0.1", pool.endpoint(a).tcp_port, timeout=3)
    try:
        conn.request("POST", "/", body=b"<methodCall><oops", headers={"Content-Type": "text/xml"})
        assert conn.getresponse().status == 500
    finally:
        conn.close()
    session = tcp(pool, a)
    with pytest.raises(xmlrpc.client.ProtocolError):
        session.xenapi.host.get_address(None)  # XML-RPC <nil/> is not part of xapi's protocol


def test_client_logs_in_again_after_xapi_restart(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    pool.restart_host(a)
    assert session.xenapi.pool.get_all() != []
    assert len(pool.endpoint(a).calls("session.login_with_password")) == 2


# -- pool other-config ------------------------------------------------------------------------------
def test_other_config_round_trip(lab):
    pool, a, b = lab
    session = uds(pool, b)
    pool_ref = session.xenapi.pool.get_all()[0]
    pool_uuid = session.xenapi.pool.get_uuid(pool_ref)
    assert session.xenapi.pool.add_to_other_config(pool_ref, "iscsi_ha_vip", "192.0.2.10") == ""
    assert failure(session.xenapi.pool.add_to_other_config, pool_ref, "iscsi_ha_vip", "x") == [
        "MAP_DUPLICATE_KEY", "pool", "other_config", pool_uuid, "iscsi_ha_vip"]
    assert session.xenapi.pool.get_other_config(pool_ref) == {"iscsi_ha_vip": "192.0.2.10"}
    session.xenapi.pool.remove_from_other_config(pool_ref, "iscsi_ha_vip")
    session.xenapi.pool.remove_from_other_config(pool_ref, "absent")
    session.xenapi.pool.set_other_config(pool_ref, {"a": "1", "b": "2"})
    assert session.xenapi.pool.get_record(pool_ref)["other_config"] == {"a": "1", "b": "2"}


# -- event.from ------------------------------------------------------------------------------------
def test_event_from_empty_token_returns_every_object_as_add(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    batch = session.xenapi.event_from(["pool", "HOST"], "", 1.0)
    assert TOKEN.match(batch["token"])
    by_ref = dict((ev["ref"], ev) for ev in batch["events"])
    assert set(by_ref) == {a, b, session.xenapi.pool.get_all()[0]}
    assert all(ev["operation"] == "add" for ev in batch["events"])
    assert by_ref[a]["class"] == "host"
    assert by_ref[a]["snapshot"] == session.xenapi.host.get_record(a)
    assert batch["valid_ref_counts"]["host"] == 2


def test_event_from_blocks_until_a_change(lab):
    pool, a, _ = lab
    watcher, writer = tcp(pool, a, timeout=10), tcp(pool, a)
    token = watcher.xenapi.event_from(["pool"], "", 1.0)["token"]
    pool_ref = writer.xenapi.pool.get_all()[0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        watcher.xenapi.event_from(["pool"], token, 8.0)))
    thread.start()
    try:
        assert wait_for(lambda: len(pool.endpoint(a).calls("event.from")) == 2)
        thread.join(0.3)
        assert thread.is_alive(), "event.from returned without any change"
        writer.xenapi.pool.add_to_other_config(pool_ref, "k", "v")
    finally:
        thread.join(9)
    assert [(e["operation"], e["ref"]) for e in result["events"]] == [("mod", pool_ref)]
    assert result["events"][0]["snapshot"]["other_config"] == {"k": "v"}
    assert result["token"] > token


def test_event_from_timeout_gives_empty_batch_and_new_token(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    token = session.xenapi.event_from(["pool"], "", 1.0)["token"]
    session.xenapi.host.add_to_other_config(b, "unrelated", "1")
    batch = session.xenapi.event_from(["pool"], token, 0.3)
    assert batch["events"] == []
    assert TOKEN.match(batch["token"]) and batch["token"] > token


def test_event_from_coalesces_changes_per_object(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    token = session.xenapi.event_from(["*"], "", 1.0)["token"]
    for value in ("1", "2", "3"):
        session.xenapi.host.set_name_label(b, "b" + value)
    batch = session.xenapi.event_from(["host/" + b], token, 1.0)
    assert [(e["operation"], e["ref"]) for e in batch["events"]] == [("mod", b)]
    assert batch["events"][0]["snapshot"]["name_label"] == "b3"


def test_event_from_messages_and_deletes(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    token = session.xenapi.event_from(["message"], "", 0.1)["token"]
    host_uuid = session.xenapi.host.get_uuid(a)
    ref = session.xenapi.message.create("ISCSI_HA_ALERT", 3, "Host", host_uuid, "hello")
    batch = session.xenapi.event_from(["message"], token, 1.0)
    assert [(e["operation"], e["class"], e["id"]) for e in batch["events"]] == [
        ("add", "message", "0")]
    session.xenapi.message.destroy(ref)
    deleted = session.xenapi.event_from(["message"], batch["token"], 1.0)["events"]
    assert [(e["operation"], e["ref"]) for e in deleted] == [("del", ref)]
    assert "snapshot" not in deleted[0]


def test_event_from_ends_with_session_invalid_when_its_session_dies(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    raw = xmlrpc.client.ServerProxy(pool.endpoint(a).url)
    token = session.xenapi.event_from(["pool"], "", 1.0)["token"]
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        getattr(raw.event, "from")(session.handle, ["pool"], token, 8.0)))
    thread.start()
    try:
        assert wait_for(lambda: len(pool.endpoint(a).calls("event.from")) == 2)
        handle = session.handle
        session.xenapi.session.logout()
    finally:
        thread.join(9)
    assert result == {"Status": "Failure", "ErrorDescription": ["SESSION_INVALID", handle]}


def test_event_from_bad_token(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    assert failure(session.xenapi.event_from, ["pool"], "garbage", 1.0) == [
        "EVENT_FROM_TOKEN_PARSE_FAILURE", "garbage"]


# -- PBDs, messages, plugins ---------------------------------------------------------------------------
def test_pbd_plug_and_unplug_are_idempotent(lab):
    pool, a, b = lab
    changes = []
    pool.set_pbd_handler(b, lambda pbd, record, attach: changes.append(attach))
    session = uds(pool, b)
    pbd = own_pbd(session, b)
    assert session.xenapi.PBD.get_record(pbd)["device_config"] == {
        "target": "192.0.2.10", "targetIQN": "iqn.2024-01.org.example:ha",
        "SCSIid": "36001405abc", "port": "3260"}
    for _ in range(2):
        assert session.xenapi.PBD.unplug(pbd) == ""
    assert session.xenapi.PBD.get_currently_attached(pbd) is False
    for _ in range(2):
        assert session.xenapi.PBD.plug(pbd) == ""
    assert session.xenapi.PBD.get_currently_attached(pbd) is True
    assert changes == [False, True]
    assert session.xenapi.SR.scan(session.xenapi.PBD.get_SR(pbd)) == ""


def test_pbd_handler_failure_reaches_the_client(lab):
    pool, _, b = lab

    def refuse(pbd, record, attach):
        raise XapiError(*SR_47)
    pool.set_pbd_handler(b, refuse)
    session = uds(pool, b)
    pbd = own_pbd(session, b)
    assert failure(session.xenapi.PBD.unplug, pbd) == SR_47
    assert session.xenapi.PBD.get_currently_attached(pbd) is True


def test_pbd_plug_on_a_dead_host_is_host_offline(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    pbd = own_pbd(session, b)
    pool.host_dies(b)
    assert failure(session.xenapi.PBD.plug, pbd) == ["HOST_OFFLINE", b]
    metrics = session.xenapi.host.get_metrics(b)
    assert wait_for(lambda: session.xenapi.host_metrics.get_live(metrics) is False)


def test_async_plug_returns_a_finished_task(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    task = session.xenapi.Async.PBD.plug(own_pbd(session, b))
    assert session.xenapi.task.get_status(task) == "success"


def test_message_create_is_stored(lab):
    pool, a, _ = lab
    session = uds(pool, a)
    pool_uuid = session.xenapi.pool.get_uuid(session.xenapi.pool.get_all()[0])
    ref = session.xenapi.message.create("ISCSI_HA_ALERT", 2, "Pool", pool_uuid, "DRBD split")
    record = session.xenapi.message.get_all_records()[ref]
    assert (record["name"], record["priority"], record["cls"], record["obj_uuid"],
            record["body"]) == ("ISCSI_HA_ALERT", "2", "Pool", pool_uuid, "DRBD split")
    assert [m["body"] for m in pool.messages("ISCSI_HA_ALERT")] == ["DRBD split"]
    assert failure(session.xenapi.message.create, "X", 1, "Host", "no-such-uuid", "") == [
        "UUID_INVALID", "Host", "no-such-uuid"]


def test_call_plugin_dispatches_to_registered_python(lab):
    pool, a, b = lab
    pool.register_plugin(b, "iscsi-ha", "status", lambda args: "role=" + args["want"])

    def broken(args):
        raise ValueError("boom")
    pool.register_plugin(b, "iscsi-ha", "broken", broken)
    session = uds(pool, a)
    assert session.xenapi.host.call_plugin(b, "iscsi-ha", "status", {"want": "x"}) == "role=x"
    assert failure(session.xenapi.host.call_plugin, b, "nope", "status", {}) == [
        "XENAPI_MISSING_PLUGIN", "nope"]
    assert failure(session.xenapi.host.call_plugin, b, "iscsi-ha", "other", {}) == [
        "UNKNOWN_XENAPI_PLUGIN_FUNCTION", "other"]
    assert failure(session.xenapi.host.call_plugin, b, "iscsi-ha", "broken", {}) == [
        "XENAPI_PLUGIN_FAILURE", "broken", "ValueError", "boom"]
    assert failure(session.xenapi.host.call_plugin, a, "iscsi-ha", "status", {}) == [
        "XENAPI_MISSING_PLUGIN", "iscsi-ha"]


# -- failover -------------------------------------------------------------------------------------
def test_designate_new_master_rewrites_both_pool_confs(lab, monkeypatch):
    pool, a, b = lab
    written = []
    real_write = fake_xapi_roles.write_pool_conf
    monkeypatch.setattr(fake_xapi_roles, "write_pool_conf",
                        lambda path, text: written.append((path, text)) or real_write(path, text))
    pool.designate_new_master(b)
    assert pool.pool_conf(a) == "slave:" + B_IP
    assert pool.pool_conf(b) == "master"
    b_conf = pool.endpoint(b).pool_conf_path
    assert [text for path, text in written if path == b_conf] == ["broken", "master"]
    assert [n for n in os.listdir(os.path.dirname(b_conf))] == ["pool.conf"]
    session = uds(pool, a)
    assert session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0]) == b
    assert failure(tcp(pool, a, login=False).login_with_password, "root", "") == [
        "HOST_IS_SLAVE", B_IP]
    b_uuid = session.xenapi.host.get_uuid(b)
    assert [m["obj_uuid"] for m in pool.messages("POOL_MASTER_TRANSITION")] == [b_uuid]


def test_designate_new_master_over_xmlrpc_drops_sessions(lab):
    pool, a, b = lab
    session = tcp(pool, a)
    old_handle = session.handle
    assert session.xenapi.pool.designate_new_master(b) == ""
    assert wait_for(lambda: pool.master_endpoint() is not None
                    and pool.master_endpoint().host_ref == b)
    assert wait_for(lambda: pool.endpoint(a).running)
    assert old_handle not in pool.endpoint(a).sessions
    assert failure(tcp(pool, a, login=False).login_with_password, "root", "") == [
        "HOST_IS_SLAVE", B_IP]


def test_master_death_makes_slave_calls_time_out(lab):
    pool, a, b = lab
    session = uds(pool, b, timeout=1.0)
    pool.master_dies()
    with pytest.raises(socket.timeout):
        session.xenapi.pool.get_all()
    with pytest.raises(ConnectionRefusedError):
        tcp(pool, a)
    with pytest.raises(ConnectionRefusedError):
        uds(pool, a)


def test_slave_restarted_without_master_is_in_emergency_mode(lab):
    pool, a, b = lab
    pool.master_dies()
    pool.restart_host(b)
    assert failure(uds_session(pool.endpoint(b).uds_path, 3).login_with_password, "root", "") \
        == ["HOST_STILL_BOOTING"]
    assert failure(tcp(pool, b, login=False).login_with_password, "root", "") == [
        "HOST_STILL_BOOTING"]
    local = uds_session(pool.endpoint(b).uds_path, 3)
    local.slave_local_login_with_password("root", "")
    assert local.xenapi.host.is_in_emergency_mode() is True
    assert failure(local.xenapi.host.local_assert_healthy) == ["HOST_STILL_BOOTING"]
    assert failure(local.xenapi.pool.get_all) == ["HOST_STILL_BOOTING"]
    local.xenapi.session.logout()
    assert pool.endpoint(b).sessions == {}


def test_emergency_error_is_configurable_and_pool_sessions_reach_local_calls(lab):
    pool, a, b = lab
    session = uds(pool, b)
    assert session.xenapi.host.is_in_emergency_mode() is False
    pool.set_emergency_error(b, ["HOST_MASTER_CANNOT_TALK_BACK", B_IP])
    pool.master_dies()
    pool.restart_host(b)
    assert failure(uds_session(pool.endpoint(b).uds_path, 3).login_with_password, "root", "") \
        == ["HOST_MASTER_CANNOT_TALK_BACK", B_IP]


def test_emergency_transition_then_old_master_returns_as_slave(lab):
    pool, a, b = lab
    pool.master_dies()
    pool.restart_host(b)
    local = uds_session(pool.endpoint(b).uds_path, 3)
    local.slave_local_login_with_password("root", "")
    assert local.xenapi.pool.emergency_transition_to_master() == ""
    assert pool.pool_conf(b) == "master"
    assert wait_for(lambda: pool.endpoint(b).is_master())
    session = uds(pool, b)
    assert session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0]) == b
    assert session.xenapi.host.is_in_emergency_mode() is False
    metrics = session.xenapi.host.get_metrics(a)
    assert wait_for(lambda: session.xenapi.host_metrics.get_live(metrics) is False)
    assert pool.recover_slaves() == []
    pool.host_returns(a)
    assert pool.pool_conf(a) == "slave:" + B_IP
    assert failure(tcp(pool, a, login=False).login_with_password, "root", "") == [
        "HOST_IS_SLAVE", B_IP]
    assert session.xenapi.host_metrics.get_live(metrics) is True


def test_recover_slaves_repoints_an_emergency_slave(tmp_path):
    pool, (a, b, c) = make_pool(tmp_path, ("xcp_a", "xcp_b", "xcp_c"))
    try:
        pool.start()
        pool.master_dies(a)
        pool.restart_host(c)
        assert pool.endpoint(c).emergency_error == ["HOST_STILL_BOOTING"]
        pool.emergency_transition_to_master(b)
        assert pool.endpoint(b).is_master()
        session = uds(pool, b)
        assert session.xenapi.pool.recover_slaves() == [c]
        assert pool.pool_conf(c) == "slave:" + B_IP
        c_xapi = pool.endpoint(c)
        assert wait_for(lambda: c_xapi.running and c_xapi.emergency_error is None)
        session = uds(pool, c)
        assert session.xenapi.session.get_this_host(session.handle) == c
        assert session.xenapi.pool.get_master(session.xenapi.pool.get_all()[0]) == b
    finally:
        pool.stop()


# -- fault injection --------------------------------------------------------------------------------
def test_fault_refuse_then_clear(lab):
    pool, a, _ = lab
    pool.endpoint(a).inject_fault("refuse")
    with pytest.raises(ConnectionRefusedError):
        tcp(pool, a)
    with pytest.raises(ConnectionRefusedError):
        uds(pool, a)
    pool.endpoint(a).clear_faults()
    assert tcp(pool, a).xenapi.pool.get_all() != []


def test_fault_hang_only_on_the_named_method(lab):
    pool, a, _ = lab
    session = tcp(pool, a, timeout=0.5)
    pool.endpoint(a).inject_fault("hang", "pool.get_all")
    with pytest.raises(socket.timeout):
        session.xenapi.pool.get_all()
    assert session.xenapi.host.get_all() != []


def test_fault_error_counted_and_seen_through_forwarding(lab):
    pool, a, b = lab
    session = uds(pool, b)
    pbd = own_pbd(session, b)
    pool.endpoint(a).inject_fault("error", "PBD_plug", error=SR_47, times=1)
    assert failure(session.xenapi.PBD.plug, pbd) == SR_47
    assert session.xenapi.PBD.plug(pbd) == ""


def test_fault_delay(lab):
    pool, a, _ = lab
    pool.endpoint(a).inject_fault("delay", "pool.get_all", seconds=1.0)
    with pytest.raises(socket.timeout):
        tcp(pool, a, timeout=0.3).xenapi.pool.get_all()
    assert tcp(pool, a, timeout=5.0).xenapi.pool.get_all() != []


def test_fault_http500(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    pool.endpoint(a).inject_fault("http500", "pool.get_all")
    with pytest.raises(xmlrpc.client.ProtocolError) as info:
        session.xenapi.pool.get_all()
    assert info.value.errcode == 500


def test_fault_drop_is_retried_once_by_the_client(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    pool.endpoint(a).inject_fault("drop", "pool.get_all")
    with pytest.raises(http.client.RemoteDisconnected):
        session.xenapi.pool.get_all()
    assert len(pool.endpoint(a).calls("pool.get_all")) == 2


def test_call_log_records_method_and_params(lab):
    pool, a, _ = lab
    session = tcp(pool, a)
    session.xenapi.host.get_address(a)
    (call,) = pool.endpoint(a).calls("host.get_address")
    assert (call.method, call.params, call.via) == ("host.get_address", (session.handle, a), "tcp")


def test_stop_ends_hung_calls_threads_and_sockets(tmp_path):
    pool, (a, b) = make_pool(tmp_path)
    pool.start()
    try:
        pool.endpoint(a).inject_fault("hang")
        session = uds_session(pool.endpoint(b).uds_path, 1.0)
        with pytest.raises(socket.timeout):
            session.login_with_password("root", "")
        assert pool.endpoint(b).calls("session.login_with_password")
        url = pool.endpoint(a).url
    finally:
        pool.stop()
    assert [t.name for t in threading.enumerate() if t.name.startswith("fake-xapi")] == []
    assert not os.path.exists(pool.endpoint(a).uds_path)
    with pytest.raises(ConnectionRefusedError):
        tcp_session(url, 1.0).login_with_password("root", "")


def test_emergency_transition_behind_a_cut_management_network_makes_a_second_master(lab):
    """xapi's check_no_other_masters asks over the management network: with it cut, a slave
    made master by emergency_transition_to_master does not see the live master and stays
    master (two masters: what a split pool looks like); with it up, it becomes a slave."""
    pool, a, b = lab
    pool.set_management_link(b, False)
    pool.emergency_transition_to_master(b)
    assert wait_for(lambda: pool.endpoint(b).is_master())
    assert pool.pool_conf(b) == "master" and pool.endpoint(a).is_master()
    pool.set_management_link(b, True)
    pool.restart_host(b)
    assert wait_for(lambda: pool.pool_conf(b) == "slave:" + A_IP)
