"""The agent's XAPI client against the fake XAPI pool, over Unix sockets (paths with "_") and
TCP 127.0.0.1: sessions, the calls the agent makes, every failure shape, and the other-config
cache that outlives the master."""
import json
import os
import stat

import pytest

from iscsi_ha import statepaths
from iscsi_ha.adapters.xapi import (ORIGINATOR, OtherConfigCache, PbdInfo, XapiClient,
                                    XapiFailure, XapiUnavailable, make_proxy)
from iscsi_ha.alerts import SharedParams
from iscsi_ha_lab.fake_xapi import FakePool

A_IP, B_IP = "192.0.2.11", "192.0.2.12"
TIMEOUT = 1.5


@pytest.fixture
def lab(tmp_path):
    pool = FakePool(str(tmp_path), fuse_delay=0.3, restart_delay=0.1, live_timeout=0.2,
                    hang_limit=30.0, password="secret")
    refs = []
    for name, ip in (("xcp_a", A_IP), ("xcp_b", B_IP)):
        root = tmp_path / name
        refs.append(pool.add_host(name, ip, str(root / "etc_xensource" / "pool.conf"),
                                  uds_path=str(root / "var_lib_xcp" / "xapi")))
    pool.add_iscsi_sr("iscsi_ha_sr", "192.0.2.10", "iqn.2024-01.org.example:ha", "36001405abc")
    clients = []

    def client(host, via="uds", password="secret", cache=None):
        endpoint = pool.endpoint(host)
        url = "unix://" + endpoint.uds_path if via == "uds" else endpoint.url
        made = XapiClient(url, "root", password, TIMEOUT, cache=cache)
        clients.append(made)
        return made
    try:
        pool.start()
        yield pool, refs[0], refs[1], client
    finally:
        for made in clients:
            made.close()
        pool.stop()


def logins(pool, host):
    return pool.endpoint(host).calls("session.login_with_password")


def test_unix_socket_path_with_underscores_on_master_and_slave(lab):
    pool, a, b, client = lab
    assert "_" in pool.endpoint(b).uds_path
    master, slave = client(a), client(b)
    assert master.this_host() == a
    assert slave.this_host() == b                      # forwarded, session bound to b
    assert master.pool() == slave.pool() == pool.pool_ref
    login = logins(pool, a)[0]
    assert login.params[3] == ORIGINATOR               # the originator is always sent


def test_tcp_login_is_lazy_and_reused(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    assert logins(pool, a) == []
    assert xapi.this_host() == a
    assert xapi.pool() == pool.pool_ref
    assert len(logins(pool, a)) == 1


def test_tcp_to_a_slave_is_unavailable_and_names_the_master(lab):
    _, _, b, client = lab
    with pytest.raises(XapiUnavailable) as info:
        client(b, via="tcp").pool()
    assert info.value.code == "HOST_IS_SLAVE"
    assert info.value.params == [A_IP]
    assert A_IP in str(info.value)


def test_wrong_password_is_an_api_failure(lab):
    _, a, _, client = lab
    with pytest.raises(XapiFailure) as info:
        client(a, via="tcp", password="wrong").pool()
    assert info.value.code == "SESSION_AUTHENTICATION_FAILED"
    assert "SESSION_AUTHENTICATION_FAILED" in str(info.value)


def test_other_config_set_replace_remove_and_cache(lab, tmp_path):
    pool, _, b, client = lab
    cache = OtherConfigCache(str(tmp_path / "state_dir" / statepaths.OTHER_CONFIG_CACHE))
    xapi = client(b, cache=cache)
    xapi.set_pool_other_config_key("HA_SMTP_SERVER", "192.0.2.25")
    xapi.set_pool_other_config_key("HA_SMTP_SERVER", "192.0.2.26")   # MAP_DUPLICATE_KEY path
    xapi.set_pool_other_config_key("IHA_IHA_CONF", "YmFzZTY0")
    assert xapi.pool_other_config() == {"HA_SMTP_SERVER": "192.0.2.26",
                                        "IHA_IHA_CONF": "YmFzZTY0"}
    assert pool.db.get("pool", pool.pool_ref, "other_config")["HA_SMTP_SERVER"] == "192.0.2.26"
    assert cache.load() == {"HA_SMTP_SERVER": "192.0.2.26"}   # backups are not cached
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600


def test_create_message_lands_on_the_pool(lab):
    pool, _, b, client = lab
    ref = client(b).create_message("ISCSI_HA_TEST", 5, "hello from b")
    messages = pool.messages("ISCSI_HA_TEST")
    assert len(messages) == 1 and ref.startswith("OpaqueRef:")
    message = messages[0]
    assert message["cls"] == "Pool"
    assert message["obj_uuid"] == pool.db.get("pool", pool.pool_ref, "uuid")
    assert str(message["priority"]) == "5" and message["body"] == "hello from b"


def test_iscsi_pbds_of_this_host_plug_and_other_sr_types(lab):
    pool, a, b, client = lab
    nfs = pool.db.create("SR", name_label="nfs_sr", type="nfs", shared=True)
    pool._add_pbd(nfs, b, {}, False)
    xapi = client(b)
    found = xapi.iscsi_pbds_of_this_host()
    assert [(p.sr_name, p.attached) for p in found] == [("iscsi_ha_sr", True)]
    pbd = found[0].ref
    assert pool.db.get("PBD", pbd, "host") == b
    pool.set_pbd_attached(pbd, False)
    assert xapi.iscsi_pbds_of_this_host() == [PbdInfo(pbd, "iscsi_ha_sr", False)]
    assert xapi.plug_pbd(pbd) == ""
    assert xapi.iscsi_pbds_of_this_host()[0].attached is True


def test_plug_failure_keeps_xapi_error_code(lab):
    pool, _, b, client = lab
    xapi = client(b)
    pbd = xapi.iscsi_pbds_of_this_host()[0].ref
    pool.set_pbd_attached(pbd, False)
    error = ["SR_BACKEND_FAILURE_47", "", "The SR is not available", ""]
    pool.endpoint(pool.master_endpoint().host_ref).inject_fault("error", "PBD.plug", error=error,
                                                                 times=1)
    with pytest.raises(XapiFailure) as info:
        xapi.plug_pbd(pbd)
    assert info.value.code == "SR_BACKEND_FAILURE_47"
    assert info.value.params == ["", "The SR is not available", ""]


def test_call_plugin(lab):
    pool, a, b, client = lab
    pool.register_plugin(a, "iscsi-ha", "state", lambda args: "role=%s" % args["want"])
    xapi = client(b)
    assert xapi.call_plugin(a, "iscsi-ha", "state", {"want": 1}) == "role=1"
    with pytest.raises(XapiFailure) as info:
        xapi.call_plugin(a, "missing", "x", {})
    assert info.value.code == "XENAPI_MISSING_PLUGIN"


@pytest.mark.timeout(20)
def test_master_dead_slave_call_times_out_instead_of_hanging(lab):
    pool, a, b, client = lab
    xapi = client(b)
    assert xapi.this_host() == b
    pool.master_dies()                       # slave forwards; the fake holds calls 30 s
    with pytest.raises(XapiUnavailable) as info:
        xapi.pool_other_config()
    assert "did not answer" in str(info.value) and "pool" in str(info.value)
    assert info.value.code is None


@pytest.mark.timeout(20)
def test_black_holed_endpoint_times_out(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    xapi.pool()
    pool.endpoint(a).inject_fault("hang")
    with pytest.raises(XapiUnavailable) as info:
        xapi.create_message("X", 1, "y")
    assert "within %.1f s" % TIMEOUT in str(info.value) and not info.value.refused
    assert info.value.timed_out


@pytest.mark.timeout(20)
def test_fence_peer_probe_of_the_local_xapi(lab, tmp_path):
    """The fence-peer handler's check under a grant: a slave whose master died hangs on the
    login (stuck), a missing socket is stuck, a working master is not."""
    import types
    from iscsi_ha.fence_peer import local_xapi_stuck
    pool, a, b, _ = lab

    def config(host):
        return types.SimpleNamespace(XAPI_URL="unix://" + pool.endpoint(host).uds_path,
                                     XAPI_USER="root", XAPI_PASSWORD="secret")
    assert local_xapi_stuck(config(a), timeout=2.0) is None
    missing = types.SimpleNamespace(XAPI_URL="unix://%s" % (tmp_path / "no-xapi"),
                                    XAPI_USER="root", XAPI_PASSWORD="secret")
    assert "cannot ask the peer" in local_xapi_stuck(missing, timeout=0.5)
    pool.master_dies()                      # b: a slave of a dead master, as after a crash
    why = local_xapi_stuck(config(b), timeout=0.3)
    assert why is not None and "did not answer" in why


def test_refused_and_missing_socket(lab, tmp_path):
    pool, a, _, client = lab
    tcp = client(a, via="tcp")
    tcp.pool()
    pool.host_dies(a)
    with pytest.raises(XapiUnavailable) as info:
        tcp.pool_other_config()
    assert "refused" in str(info.value).lower() and info.value.refused
    ghost = XapiClient("unix://" + str(tmp_path / "no_such" / "xapi"), "root", "", TIMEOUT)
    with pytest.raises(XapiUnavailable) as info:
        ghost.this_host()
    assert "No such file" in str(info.value) and info.value.refused


def test_emergency_mode_is_unavailable_with_its_code(lab):
    pool, a, b, client = lab
    pool.master_dies()
    pool.restart_host(b)                     # slave restarts without a master: emergency mode
    with pytest.raises(XapiUnavailable) as info:
        client(b).this_host()
    assert info.value.code == "HOST_STILL_BOOTING"
    assert "emergency mode" in str(info.value)


def test_session_invalid_after_xapi_restart_logs_in_again_once(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    xapi.pool()
    pool.restart_host(a)                     # sessions dropped
    assert xapi.pool_other_config() == {}
    assert len(logins(pool, a)) == 2


def test_http_500_and_dropped_connections(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    xapi.pool()
    pool.endpoint(a).inject_fault("http500", "pool.get_other_config", times=1)
    with pytest.raises(XapiUnavailable) as info:
        xapi.pool_other_config()
    assert "HTTP 500" in str(info.value)
    pool.endpoint(a).inject_fault("drop", "pool.get_other_config")
    with pytest.raises(XapiUnavailable):
        xapi.pool_other_config()
    pool.endpoint(a).clear_faults()
    assert xapi.pool_other_config() == {}


def test_one_dropped_connection_is_retried_on_a_fresh_connection(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    xapi.pool()
    # xmlrpc.client itself retries a dropped request once; the client adds one more attempt,
    # keeping its session (a restarted xapi would answer SESSION_INVALID, handled above).
    pool.endpoint(a).inject_fault("drop", "pool.get_other_config", times=2)
    assert xapi.pool_other_config() == {}
    assert len(pool.endpoint(a).calls("pool.get_other_config")) == 3
    assert len(logins(pool, a)) == 1


def test_close_logs_out(lab):
    pool, a, _, client = lab
    xapi = client(a, via="tcp")
    xapi.pool()
    assert len(pool.endpoint(a).sessions) == 1
    xapi.close()
    assert pool.endpoint(a).sessions == {}
    assert xapi.pool() == pool.pool_ref      # usable again: logs in anew


def test_cache_survives_master_death(lab, tmp_path):
    pool, a, b, client = lab
    path = str(tmp_path / "state" / statepaths.OTHER_CONFIG_CACHE)
    cache = OtherConfigCache(path)
    xapi = client(b, cache=cache)
    xapi.set_pool_other_config_key("HA_MAIL_TO", "ops@example.org")
    xapi.set_pool_other_config_key("MANUAL_MODE", "")
    shared = SharedParams(cache, xapi)
    assert shared()["HA_MAIL_TO"] == "ops@example.org"
    pool.master_dies()
    with pytest.raises(XapiUnavailable):
        xapi.pool_other_config()
    fresh = SharedParams(OtherConfigCache(path), xapi)   # e.g. after an agent restart
    assert fresh() == {"HA_MAIL_TO": "ops@example.org", "MANUAL_MODE": ""}
    with open(path) as handle:
        assert json.load(handle)["values"]["HA_MAIL_TO"] == "ops@example.org"


def test_damaged_cache_reads_as_empty(tmp_path):
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    assert OtherConfigCache(str(path)).load() == {}
    assert OtherConfigCache(str(tmp_path / "absent.json")).load() == {}


def test_bad_urls_are_refused_at_construction():
    for url in ("ftp://x", "unix://", "http://", "/var/lib/xcp/xapi"):
        with pytest.raises(ValueError):
            XapiClient(url, "root", "", 1.0)
    with pytest.raises(ValueError):
        XapiClient("unix:///var/lib/xcp/xapi", "root", "", 0)
    assert make_proxy("https://192.0.2.11", 1.0, verify_tls=False) is not None
