"""The config loader: HA-Lizard files load unchanged, bad files are refused key by key."""
import os
import socket
import subprocess
import sys

import pytest

from iscsi_ha import config

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "halizard")
SHIPPED = os.path.join(os.path.dirname(__file__), "..", "etc", "iscsi-ha", "iscsi-ha.conf")


def test_halizard_file_loads_unchanged_with_its_values():
    c = config.load(os.path.join(FIXTURES, "iscsi-ha.conf"))
    assert c.DRBD_RESOURCES == ["iscsi1"]
    assert c.ISCSI_TARGET_SERVICE == "tgtd"
    assert c.DRBD_VIRTUAL_IP == "10.10.10.3"
    assert c.DRBD_VIRTUAL_MASK == 24
    assert c.DRBD_INTERFACE == "xenbr1"
    assert (c.MONITOR_MAX_STARTS, c.MONITOR_DELAY, c.MONITOR_KILLALL, c.MONITOR_SCANRATE) == (
        5, 10.0, True, 5.0)
    # bash expands $HOSTNAME inside double quotes when it sources the file: so do we
    assert c.MAIL_SUBJECT == "HA-Lizard noSAN SYSTEM ALERT - FROM HOST: " + socket.gethostname()
    assert c.MAIL_FROM == "root@localhost" and c.SMTP_USER == "" and c.SMTP_PORT == 25
    assert c.MAIL_SCREEN_TIME == 30
    assert c.warnings == []


def test_new_keys_get_their_defaults_when_absent():
    c = config.load(os.path.join(FIXTURES, "iscsi-ha.conf"))
    assert c.POOL_CONF == "/etc/xensource/pool.conf"
    assert c.STATUS_FILE == "/etc/iscsi-ha/state/status"
    assert c.MANUAL_FILE == "/etc/iscsi-ha/state/manual"
    assert c.ARP_COUNT == 5 and c.ARP_INTERVAL == 0.2
    assert c.TARGET_START_COMMAND == "systemctl start tgtd"
    assert c.PASS_BUDGET == 25.0


def test_refactor_branch_file_with_legacy_keys_and_quotes():
    c = config.load(os.path.join(FIXTURES, "iscsi-ha-refactor.conf"))
    assert c.DRBD_RESOURCES == ["iscsi1", "iscsi2"]
    assert c.ISCSI_TARGET_SERVICE == "tgtd"          # HA-Lizard took the basename too
    assert c.SMTP_PASS == "s3cret # not a comment"  # a quoted '#' is not a comment
    assert c.MAIL_ON is False and c.SMTP_PORT == 465
    assert c.warnings == []                         # MANUAL_MODE, REPLICATION_IP_* are known


def test_hostname_is_expanded_like_bash():
    c = config.load(os.path.join(FIXTURES, "iscsi-ha-refactor.conf"))
    assert c.expand(c.MAIL_SUBJECT) == "noSAN alert from " + socket.gethostname()
    assert c.expand("at $HOSTNAME") == "at " + socket.gethostname()


def test_shipped_file_is_valid_and_equals_the_defaults():
    shipped = config.load(SHIPPED).as_dict()
    empty = config.loads("").as_dict()
    # tests/conftest.py points absolute-path tool defaults (ARPING) at stand-ins: those keys
    # are compared with the configspec's own defaults
    real = config._spec()
    moved = [k for k in config.SPEC if config.SPEC[k] != real[k]]
    assert moved == ["ARPING"]
    for key in moved:
        assert shipped.pop(key) == real[key][3]
        empty.pop(key)
    assert shipped == empty
    assert config.load(SHIPPED).warnings == []


BAD = [
    ("DRBD_VIRTUAL_IP=10.10.10.300", "DRBD_VIRTUAL_IP", "IPv4 address"),
    ("DRBD_VIRTUAL_MASK=255.0.255.0", "DRBD_VIRTUAL_MASK", "contiguous netmask"),
    ("DRBD_VIRTUAL_MASK=33", "DRBD_VIRTUAL_MASK", "contiguous netmask"),
    ("DRBD_INTERFACE=xenbr1/../x", "DRBD_INTERFACE", "interface name"),
    ("DRBD_INTERFACE=averyveryverylongname", "DRBD_INTERFACE", "interface name"),
    ("DRBD_RESOURCES='iscsi1:bad name'", "DRBD_RESOURCES", "resource names"),
    ("DRBD_RESOURCES=iscsi1:iscsi1", "DRBD_RESOURCES", "listed twice"),
    ("DRBD_RESOURCES=", "DRBD_RESOURCES", "resource names"),
    ("MONITOR_DELAY=-1", "MONITOR_DELAY", "seconds from 0.05 to 3600"),
    ("TGTD_CONTROL_SOCKET=socket.0", "TGTD_CONTROL_SOCKET", "auto, none or an absolute path"),
    ("TGTD_CONTROL_SOCKET=/run/t\u00e9t", "TGTD_CONTROL_SOCKET", "ASCII"),
    ("TGTD_CONTROL_SOCKET=/" + "s" * 107, "TGTD_CONTROL_SOCKET", "at most 107 bytes"),
    ("MONITOR_DELAY=soon", "MONITOR_DELAY", "seconds from 0.05 to 3600"),
    ("MONITOR_MAX_STARTS=0", "MONITOR_MAX_STARTS", "whole number from 1 to 1000"),
    ("MONITOR_KILLALL=yes", "MONITOR_KILLALL", "1 (yes) or 0 (no)"),
    ("SMTP_PORT=70000", "SMTP_PORT", "whole number from 1 to 65535"),
    ("ARP_COUNT=-2", "ARP_COUNT", "whole number from 0 to 100"),
    ("DRBD_VERSION=8.3", "DRBD_VERSION", "one of auto, 8.4, 9"),
    ("POOL_CONF=relative/pool.conf", "POOL_CONF", "absolute path"),
    ("ISCSI_LUNS=10:/dev/drbd1", "ISCSI_LUNS", "LUN=DEVICE"),
    ("ISCSI_LUNS=0=/dev/drbd1", "ISCSI_LUNS", "1..255"),
    ("ISCSI_TARGET_IQN=target1", "ISCSI_TARGET_IQN", "iSCSI name"),
    ("XAPI_URL=ftp://192.0.2.10", "XAPI_URL", "neither unix:///PATH nor http(s)://HOST"),
    ("XAPI_URL=unix://", "XAPI_URL", "names no socket path"),
    ("XAPI_URL=https://192.0.2.10:70000", "XAPI_URL", "cannot be parsed"),
    ("XAPI_URL=http://192.0.2.10:", "XAPI_URL", "':' without a port"),
    ("XAPI_URL='http://a b'", "XAPI_URL", "blank or control character"),
]


@pytest.mark.parametrize("line,key,words", BAD, ids=[b[1] + ":" + b[0] for b in BAD])
def test_bad_value_names_key_line_value_and_rule(line, key, words):
    text = "# first line\nMAIL_ON=1\n" + line + "\n"
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "test.conf")
    problems = info.value.problems
    assert [p[0] for p in problems] == [key]
    assert problems[0][1] == 3
    assert words in problems[0][3]
    assert key in str(info.value) and "line 3" in str(info.value)


def test_reading_the_config_does_not_load_the_xapi_client():
    """The fence-peer handler reads the config inside a failover's promotion: the XAPI_URL
    check must not pull in the client (http.client, ssl, xmlrpc), and the client runs the same
    check before it connects."""
    import subprocess
    import sys
    code = ("import sys; from iscsi_ha import config; "
            "config.loads('XAPI_URL=https://192.0.2.10:443\\n'); "
            "print(sorted(m for m in ('iscsi_ha.adapters.xapi', 'xmlrpc.client', 'ssl', "
            "'http.client') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          universal_newlines=True, timeout=60, cwd=config.__file__.rsplit(
                              "/iscsi_ha/", 1)[0])
    assert done.stdout.strip() == "[]"
    from iscsi_ha.adapters import xapi
    with pytest.raises(xapi.XapiUrlError) as info:
        xapi.make_proxy("http://192.0.2.10:", 1.0)
    assert isinstance(info.value, ValueError) and "without a port" in str(info.value)


def test_every_bad_key_is_reported_at_once_in_line_order():
    text = "DRBD_INTERFACE=a/b\nDRBD_VIRTUAL_IP=nope\nMONITOR_DELAY=-5\n"
    with pytest.raises(config.ConfigError) as info:
        config.loads(text)
    assert [(p[0], p[1]) for p in info.value.problems] == [
        ("DRBD_INTERFACE", 1), ("DRBD_VIRTUAL_IP", 2), ("MONITOR_DELAY", 3)]


def test_last_assignment_wins_as_in_bash():
    c = config.loads("MONITOR_DELAY=10\nMONITOR_DELAY=3\n")
    assert c.MONITOR_DELAY == 3.0 and c.lines["MONITOR_DELAY"] == 2


def test_unknown_key_is_a_warning_not_an_error():
    c = config.loads("DRBD_RESOURCES=iscsi1\nDRBD_RESORCES=typo\n")
    assert c.warnings == ["DRBD_RESORCES (line 2): unknown key, ignored"]


def test_unsafe_timeout_longer_than_the_pass_budget_is_refused():
    with pytest.raises(config.ConfigError) as info:
        config.loads("MONITOR_MAX_STARTS=1\nMONITOR_SCANRATE=2\nDRBD_TIMEOUT=3\n")
    keys = [p[0] for p in info.value.problems]
    assert "DRBD_TIMEOUT" in keys and "pass budget" in str(info.value)


def test_iqn_without_luns_is_refused():
    with pytest.raises(config.ConfigError) as info:
        config.loads("ISCSI_TARGET_IQN=iqn.2015.com.halizard:noSAN\n")
    assert info.value.problems[0][0] == "ISCSI_LUNS"


def test_luns_parse_into_a_map():
    c = config.loads("ISCSI_TARGET_IQN=iqn.2015.com.halizard:noSAN\n"
                     "ISCSI_LUNS='10=/dev/drbd1, 11=/dev/drbd2'\n")
    assert c.ISCSI_LUNS == {10: "/dev/drbd1", 11: "/dev/drbd2"}


def test_not_key_value_syntax_is_an_error():
    with pytest.raises(config.ConfigError) as info:
        config.loads("DRBD_RESOURCES=iscsi1\nthis is not a setting\n")
    assert "KEY=value" in str(info.value)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(config.ConfigError) as info:
        config.load(str(tmp_path / "nope.conf"))
    assert "nope.conf" in str(info.value) and "cannot read" in str(info.value)


def _check(path):
    return subprocess.run([sys.executable, "-m", "iscsi_ha.cli.agent_main", "check", "--config",
                           str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def test_check_command_exit_codes(tmp_path):
    good = _check(os.path.join(FIXTURES, "iscsi-ha.conf"))
    assert good.returncode == 0 and "is valid" in good.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text("DRBD_VIRTUAL_IP=1.2.3\nFOO=1\n")
    result = _check(bad)
    assert result.returncode == 2
    assert "DRBD_VIRTUAL_IP (line 1)" in result.stderr
    assert "FOO (line 2): unknown key" in result.stderr


def test_target_params_are_parsed_and_checked():
    from iscsi_ha import config as cfg
    assert cfg._target_params("DefaultTime2Wait=0, DefaultTime2Retain=0") == {
        "DefaultTime2Wait": "0", "DefaultTime2Retain": "0"}
    assert cfg._target_params("") == {}
    for bad in ("DefaultTime2Wait", "Time2Wait=0", "DefaultTime2Wait=-1"):
        with pytest.raises(Exception, match="Key=number"):
            cfg._target_params(bad)
