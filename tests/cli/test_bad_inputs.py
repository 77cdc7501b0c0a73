"""Every bad input refused clearly (issue 11, D3 D5 D6 D7 D10 D11 D12 D13 D14; D1 D2 D4 D8 D9 are
in tests/test_shell_grammar.py). Each test names the defect it covers."""
import errno
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

from iscsi_ha import config as config_mod, files, model, status_read
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.pool import read_pool_role
from iscsi_ha.adapters.tgtadm import TargetParseError, parse_tgtadm_targets
from iscsi_ha.cli import cfg_main, plugin
from iscsi_ha.drbd import DrbdParseError, parse_proc_drbd, parse_status_json

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")


def run(capsys, *argv):
    code = cfg_main.main(list(argv))
    out, err = capsys.readouterr()
    return int(code), out, err


def refused(text, key, *words):
    with pytest.raises(config_mod.ConfigError) as bad:
        config_mod.loads(text, "t.conf")
    problems = [p for p in bad.value.problems if p[0] == key]
    assert problems, str(bad.value)
    for word in words:
        assert word in problems[0][3], problems[0][3]
    return problems[0]


# -- D3: values `check` called valid that crash an entry point later ----------------------------
@pytest.mark.parametrize("key", ["AGENT_START_COMMAND", "DRBD_ADM", "TGTADM", "IP_COMMAND",
                                 "TARGET_START_COMMAND"])
def test_d3_a_command_with_an_unbalanced_quote_is_refused(key):
    refused("%s='service \"iscsi-ha start'\n" % key, key, "not a command line", "quotes")


def test_d3_the_watchdog_start_command_is_checked_where_the_watchdog_reads_it(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("AGENT_START_COMMAND='sh -c \"x'\n")
    done = subprocess.run([sys.executable, "-m", "iscsi_ha.watchdog", "check", "--config",
                           str(path)], env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert "Traceback" not in done.stderr and done.returncode != 0
    assert "AGENT_START_COMMAND (line 1)" in done.stderr


@pytest.mark.parametrize("mask", ["0", "0.0.0.0", "00", "-1", "33"])
def test_d3_a_zero_netmask_is_refused_with_the_range(mask):
    refused("DRBD_VIRTUAL_MASK=%s\n" % mask, "DRBD_VIRTUAL_MASK", "from 1 to 32")


def test_d3_log_file_a_directory_or_without_its_directory(tmp_path):
    refused("LOG_FILE=%s\n" % tmp_path, "LOG_FILE", "a directory")
    refused("LOG_FILE=%s/missing/agent.log\n" % tmp_path, "LOG_FILE", "does not exist")
    assert config_mod.loads("LOG_FILE=%s/agent.log\n" % tmp_path).LOG_FILE


def test_d3_syslog_socket_a_regular_file_is_refused_and_never_used(tmp_path):
    plain = tmp_path / "log"
    plain.write_text("")
    refused("SYSLOG_SOCKET=%s\n" % plain, "SYSLOG_SOCKET", "expected the syslog socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(tmp_path / "sock"))
        assert config_mod.loads("SYSLOG_SOCKET=%s\n" % (tmp_path / "sock")).SYSLOG_SOCKET
    finally:
        sock.close()
    assert config_mod.loads("SYSLOG_SOCKET=%s/absent\n" % tmp_path)   # absent: no syslog
    from iscsi_ha import logsetup
    fake = type("C", (), {"ENABLE_LOGGING": True, "SYSLOG_SOCKET": str(plain), "LOG_FILE": ""})
    logger = logsetup.setup(fake, stderr=False)
    assert logger.handlers == []                         # no handler that fails on every line


def test_d3_state_dir_a_regular_file_is_refused(tmp_path):
    plain = tmp_path / "state"
    plain.write_text("x")
    refused("STATE_DIR=%s\n" % plain, "STATE_DIR", "not a directory")
    refused("STATE_DIR=%s/below\n" % plain, "STATE_DIR", "cannot be created")
    assert config_mod.loads("STATE_DIR=%s/new/dir\n" % tmp_path).STATE_DIR


def test_d3_a_nul_byte_in_a_path_key_is_refused_before_any_action(tmp_path):
    path = tmp_path / "c.conf"
    path.write_bytes(b"STATUS_FILE=/tmp/st\x00atus\n")
    with pytest.raises(config_mod.ConfigError) as bad:
        config_mod.load(str(path))
    assert "NUL byte" in str(bad.value) and "line 1" in str(bad.value)


def test_d3_check_exits_2_naming_each_key(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("DRBD_VIRTUAL_MASK=0\nLOG_FILE=%s\nSTATE_DIR=%s\n" % (tmp_path, path))
    done = subprocess.run([sys.executable, "-m", "iscsi_ha.cli.agent_main", "check",
                           "--config", str(path)], env=dict(os.environ, PYTHONPATH=REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for key in ("DRBD_VIRTUAL_MASK (line 1)", "LOG_FILE (line 2)", "STATE_DIR (line 3)"):
        assert key in done.stderr


# -- D5: ISCSI_TARGET_SERVICE is a service name -------------------------------------------------
@pytest.mark.parametrize("value", ["'tgtd --now'", "tgtd/", "/usr/sbin/", "-tgtd", "'tgtd;x'",
                                   "..", "a/b"])
def test_d5_target_service_must_be_a_service_name(value):
    refused("ISCSI_TARGET_SERVICE=%s\n" % value, "ISCSI_TARGET_SERVICE", "service name")


def test_d5_halizard_absolute_daemon_path_still_means_its_name():
    c = config_mod.loads("ISCSI_TARGET_SERVICE=/usr/sbin/tgtd\n")
    assert c.ISCSI_TARGET_SERVICE == "tgtd" and c.TARGET_START_COMMAND == "systemctl start tgtd"
    assert config_mod.loads("ISCSI_TARGET_SERVICE=tgt@x.service\n").ISCSI_TARGET_SERVICE


# -- D6: the status file is read defensively ----------------------------------------------------
def _deep(n):
    return "[" * n + "]" * n


BAD_STATUS = [
    ("list", "[]", "not a JSON object"),
    ("null", "null", "not a JSON object"),
    ("string", '"ok"', "not a JSON object"),
    ("number", "5", "not a JSON object"),
    ("truncated", '{"updated": 1', "not complete JSON"),
    ("no-updated", '{"health": "ok"}', "updated"),
    ("updated-string", '{"updated": "now"}', "updated"),
    ("updated-nan", '{"updated": NaN}', "NaN"),
    ("updated-inf", '{"updated": Infinity}', "Infinity"),
    ("updated-future", '{"updated": %d}' % 4102444800, "in the future"),
    ("pool-wrong", '{"updated": 1, "pool": "master"}', "pool"),
    ("pool-role-number", '{"updated": 1, "pool": {"role": 5}}', "pool.role"),
    ("drbd-not-dict", '{"updated": 1, "drbd": {"r": 5}}', "drbd.r"),
    ("drbd-sync-string", '{"updated": 1, "drbd": {"r": {"role": "Primary", "peer_role": "x", '
     '"connection": "c", "disk": "d", "peer_disk": "p", "sync_percent": "50"}}}', "sync_percent"),
    ("agent-pid-string", '{"updated": 1, "agent": {"pid": "12"}}', "agent.pid"),
    ("problems-dicts", '{"updated": 1, "problems": [{}]}', "problems"),
    ("last-actions-at-nan", '{"updated": 1, "last_actions": [{"at": -1}]}', "last_actions"),
    ("deep", '{"updated": 1, "x": %s}' % _deep(40), "nested"),
    ("very-deep", _deep(100000), "nested"),
]


@pytest.mark.parametrize("name,text,words", BAD_STATUS, ids=[b[0] for b in BAD_STATUS])
def test_d6_a_malformed_status_is_status_unknown_exit_2_one_line(name, text, words, host,
                                                                 capsys):
    with open(host.config.STATUS_FILE, "w") as handle:
        handle.write(text)
    code, out, err = run(capsys, "status", "--once", "--config", host.path)
    assert code == 2 and err == "" and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1 and out.startswith("status unknown: ")
    assert words in out
    code, out, err = run(capsys, "status", "--json", "--config", host.path)
    assert code == 2 and words in json.loads(out)["status_unknown"]


def test_d6_a_huge_status_file_is_refused_by_size_at_once(host, capsys):
    with open(host.config.STATUS_FILE, "w") as handle:
        handle.truncate(files.STATUS_LIMIT + 1)          # sparse: no time spent writing it
    code, out, _ = run(capsys, "status", "--once", "--config", host.path)
    assert code == 2 and "more than" in out


def test_d6_extra_fields_of_newer_agents_are_tolerated(host, capsys):
    document = json.loads(open(host.config.STATUS_FILE).read())
    document["verdict"] = {"kind": "serving", "anything": [1, {"x": None}]}
    with open(host.config.STATUS_FILE, "w") as handle:
        json.dump(document, handle)
    code, out, _ = run(capsys, "status", "--json", "--config", host.path)
    assert code == 0 and json.loads(out)["verdict"]["kind"] == "serving"


def test_d6_reader_is_one_module_with_one_sentence():
    found = status_read.read("/nonexistent/status")
    assert found.document is None and found.missing and "no such file" in found.problem
    with pytest.raises(status_read.Malformed):
        status_read.parse('{"updated": 1e400}')


# -- D7: set edge cases -------------------------------------------------------------------------
def test_d7_set_refuses_a_file_with_unquoted_trailing_text(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("MAIL_TO=a b\n")
    code, _, err = run(capsys, "set", "--config", str(path), "MAIL_TO", "ops")
    assert code == 2 and "line 1" in err and "'b' after the value" in err
    assert path.read_text() == "MAIL_TO=a b\n"


def test_d7_set_through_a_symlink_rewrites_the_target(tmp_path, capsys):
    real = tmp_path / "real.conf"
    real.write_text("# keep\nMONITOR_DELAY=10\n")
    os.chmod(str(real), 0o600)
    link = tmp_path / "iscsi-ha.conf"
    os.symlink(str(real), str(link))
    assert run(capsys, "set", "--config", str(link), "MONITOR_DELAY", "7")[0] == 0
    assert os.path.islink(str(link)) and os.readlink(str(link)) == str(real)
    assert real.read_text() == "# keep\nMONITOR_DELAY=7\n"
    assert os.stat(str(real)).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(str(tmp_path))) == ["iscsi-ha.conf", "real.conf"]


def test_d7_set_keeps_crlf_line_endings_and_bash_reads_the_value(tmp_path, capsys):
    sys.path.insert(0, os.path.dirname(HERE))
    import shell_corpus
    path = tmp_path / "c.conf"
    original = b"# windows\r\nMONITOR_DELAY=10 # s\r\nMAIL_TO='a@b' #\r\n"
    path.write_bytes(original)
    assert run(capsys, "set", "--config", str(path), "MAIL_TO", "ops@example.com")[0] == 0
    assert run(capsys, "set", "--config", str(path), "SMTP_PORT", "2525")[0] == 0
    data = path.read_bytes()
    assert data.startswith(b"# windows\r\nMONITOR_DELAY=10 # s\r\n")
    assert data.count(b"\r\n") == data.count(b"\n") == 4
    c = config_mod.load(str(path))
    assert (c.MAIL_TO, c.SMTP_PORT, c.MONITOR_DELAY) == ("ops@example.com", 2525, 10.0)
    theirs, _ = shell_corpus.source(str(tmp_path / "b.conf"), data.decode(),
                                    ["MAIL_TO", "SMTP_PORT"])
    assert theirs == {"MAIL_TO": "ops@example.com", "SMTP_PORT": "2525"}


def test_d7_a_non_utf8_byte_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_bytes(b"# ok\nSMTP_PASS=caf\xe9\n")
    code, _, err = run(capsys, "set", "--config", str(path), "MONITOR_DELAY", "7")
    assert code == 2 and "line 2" in err and "0xe9 is not UTF-8" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(config_mod.ConfigError) as bad:
        config_mod.load(str(path))
    assert "not UTF-8" in str(bad.value)


def test_d7_a_failed_write_leaves_no_temporary_file(tmp_path, capsys, mocker):
    path = tmp_path / "c.conf"
    path.write_text("MONITOR_DELAY=10\n")
    mocker.patch.object(files.os, "rename", side_effect=OSError(errno.EPERM,
                                                               "Operation not permitted"))
    code, _, err = run(capsys, "set", "--config", str(path), "MONITOR_DELAY", "7")
    assert code == 1 and "cannot write" in err and "unchanged" in err
    assert os.listdir(str(tmp_path)) == ["c.conf"] and path.read_text() == "MONITOR_DELAY=10\n"


def test_d7_the_running_agent_guard_holds_when_the_status_is_unreadable(host, capsys):
    with open(host.config.STATUS_FILE, "w") as handle:
        handle.write("{garbage")
    before = open(host.path).read()
    code, _, err = run(capsys, "set", "--config", host.path, "STATE_DIR", "/var/lib/x")
    assert code == 1 and "cannot tell whether the agent runs" in err
    assert open(host.path).read() == before


def test_d7_a_value_starting_with_a_dash_says_to_use_double_dash(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("")
    code, _, err = run(capsys, "set", "--config", str(path), "MAIL_SUBJECT", "-x")
    assert code == 2 and "must follow '--'" in err
    assert run(capsys, "set", "--config", str(path), "MAIL_SUBJECT", "--", "-x")[0] == 0
    assert config_mod.load(str(path)).MAIL_SUBJECT == "-x"


# -- D10: bounded reads, no FIFO hangs ----------------------------------------------------------
def _bounded(function, seconds=10):
    """Run ``function`` in a thread; fail (not hang) if it does not return in time."""
    box = {}

    def target():
        try:
            box["value"] = function()
        except BaseException as exc:   # noqa: B902 (handed to the test)
            box["error"] = exc
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "hung on a FIFO"
    return box


@pytest.fixture
def fifo(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    return path


def test_d10_a_fifo_as_the_config_is_an_error_not_a_hang(fifo, capsys):
    box = _bounded(lambda: config_mod.load(fifo))
    assert isinstance(box.get("error"), config_mod.ConfigError)
    assert "FIFO" in str(box["error"])
    box = _bounded(lambda: run(capsys, "set", "--config", fifo, "MONITOR_DELAY", "7"))
    assert box["value"][0] == 2 and "FIFO" in box["value"][2]


def test_d10_dev_zero_and_huge_configs_are_refused(tmp_path):
    with pytest.raises(config_mod.ConfigError) as bad:
        config_mod.load("/dev/zero")
    assert "character device" in str(bad.value)
    big = tmp_path / "big.conf"
    with open(str(big), "w") as handle:
        handle.truncate(files.CONFIG_LIMIT + 1)
    with pytest.raises(config_mod.ConfigError) as bad:
        config_mod.load(str(big))
    assert "more than" in str(bad.value)


def test_d10_pool_conf_and_manual_file_fifos(fifo, tmp_path):
    role = _bounded(lambda: read_pool_role(fifo))["value"]
    assert role.role == model.UNKNOWN and "FIFO" in role.detail
    error = _bounded(lambda: manual_adapter.read_manual(fifo)).get("error")
    assert isinstance(error, manual_adapter.ManualModeError) and "FIFO" in str(error)
    from iscsi_ha import loop
    assert "OSError" in _bounded(lambda: loop._read(fifo))["value"]


def test_d10_log_file_fifo_is_refused_and_never_blocks_the_logger(fifo, tmp_path, capsys):
    refused("LOG_FILE=%s\n" % fifo, "LOG_FILE", "FIFO")
    from iscsi_ha import logsetup
    fake = type("C", (), {"ENABLE_LOGGING": True, "SYSLOG_SOCKET": "", "LOG_FILE": fifo})
    box = _bounded(lambda: logsetup.setup(fake, stderr=False))
    assert "value" in box and "not logging to LOG_FILE" in capsys.readouterr().err
    from iscsi_ha.cli import log_cmd
    error = _bounded(lambda: log_cmd.tail(fifo, 5)).get("error")
    assert isinstance(error, OSError) and "FIFO" in str(error)


def test_d10_a_directory_as_pool_conf_is_unknown(tmp_path):
    assert read_pool_role(str(tmp_path)).role == model.UNKNOWN


# -- D11: accepted though invalid --------------------------------------------------------------
@pytest.mark.parametrize("address,words", [
    ("0.0.0.0", "unspecified"), ("255.255.255.255", "broadcast"), ("127.0.0.1", "loopback"),
    ("224.0.0.5", "multicast"), ("240.0.0.1", "reserved"), ("010.1.2.3", "IPv4 address"),
    ("192.0.2.255", "broadcast address of 192.0.2.0/24"),
    ("192.0.2.0", "network address of 192.0.2.0/24")])
def test_d11_floating_ip_must_be_a_usable_unicast_address(address, words):
    refused("DRBD_VIRTUAL_IP=%s\nDRBD_VIRTUAL_MASK=24\n" % address, "DRBD_VIRTUAL_IP", words)


@pytest.mark.parametrize("name", [".", "..", "eth0:1", "a b", "x" * 16])
def test_d11_interface_names_as_linux_accepts_them(name):
    refused("DRBD_INTERFACE='%s'\n" % name, "DRBD_INTERFACE", "interface name")


@pytest.mark.parametrize("value", ["10=/", "10=/dev/", "10=dev/drbd1", "\u0661\u0660=/dev/drbd1",
                                   "1_0=/dev/drbd1", "10=/dev/a b"])
def test_d11_lun_map_forms(value):
    refused("ISCSI_TARGET_IQN=iqn.2015.com.halizard:noSAN\nISCSI_LUNS='%s'\n" % value,
            "ISCSI_LUNS", "LUN=DEVICE")


@pytest.mark.parametrize("line,key", [
    ("MONITOR_MAX_STARTS=\u0665", "MONITOR_MAX_STARTS"), ("SMTP_PORT=1_0", "SMTP_PORT"),
    ("MONITOR_DELAY=1_0", "MONITOR_DELAY"), ("MONITOR_DELAY=\u0661\u0660", "MONITOR_DELAY"),
    ("MONITOR_DELAY=nan", "MONITOR_DELAY"), ("MONITOR_DELAY=inf", "MONITOR_DELAY"),
    ("SMTP_PORT=+25", "SMTP_PORT"), ("MAIL_SCREEN_TIME=' 30'", "MAIL_SCREEN_TIME"),
    ("DRBD_VIRTUAL_MASK=\u0662\u0664", "DRBD_VIRTUAL_MASK")])
def test_d11_numbers_are_ascii_digits_only(line, key):
    refused(line + "\n", key)


def test_d11_pool_conf_is_its_whole_content_as_one_word(tmp_path):
    path = tmp_path / "pool.conf"
    path.write_text("master" + " " * 5000 + "garbage")
    assert read_pool_role(str(path)).role == model.UNKNOWN
    path.write_text("slave:192.0.2.1 junk")
    assert read_pool_role(str(path)).role == model.UNKNOWN
    path.write_text("master\n")
    assert read_pool_role(str(path)).role == model.MASTER
    path.write_text("slave:192.0.2.1")
    assert read_pool_role(str(path)).master_address == "192.0.2.1"


# -- D12: every message says the range or the cause ---------------------------------------------
def _ranged(kind):
    return re.findall(r"^(\w+) = %s\(min=([\d.]+), max=([\d.]+)" % kind, config_mod.CONFIGSPEC,
                      re.M)


@pytest.mark.parametrize("value", ["x", "99999999", "-99999999", "1.5", ""])
@pytest.mark.parametrize("key,low,high", _ranged("integer"))
def test_d12_every_integer_message_gives_the_allowed_range(key, low, high, value):
    refused("%s='%s'\n" % (key, value), key, "whole number from %s to %s" % (low, high))


@pytest.mark.parametrize("key,low,high", _ranged("seconds"))
def test_d12_every_seconds_message_gives_the_allowed_range(key, low, high):
    refused("%s=999999\n" % key, key, "seconds from %s to %s" % (low, high))


def test_d12_an_unbalanced_quote_names_the_key_and_the_cause(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("# x\nMAIL_SUBJECT=\"alert\nMAIL_TO=x\n")
    code, _, err = run(capsys, "get", "--config", str(path))
    assert code == 2 and "MAIL_SUBJECT (line 2)" in err and 'unterminated " quote' in err


# -- D13: parser contracts ----------------------------------------------------------------------
def _fixture(*parts):
    with open(os.path.join(FIXTURES, *parts)) as handle:
        return handle.read()


def test_d13_proc_drbd_duplicate_minor_is_refused():
    text = _fixture("drbd", "proc", "ganeti_proc_drbd84_sync.txt")
    block = " 0: cs:StandAlone ro:Primary/Unknown ds:UpToDate/DUnknown   r-----\n"
    with pytest.raises(DrbdParseError, match="listed twice"):
        parse_proc_drbd(text + block)


@pytest.mark.parametrize("percent", ["250.0", "100.1"])
def test_d13_proc_drbd_sync_above_100_is_refused_not_clamped(percent):
    text = _fixture("drbd", "proc", "ganeti_proc_drbd84_sync.txt").replace("68.5", percent)
    with pytest.raises(DrbdParseError, match="outside 0-100"):
        parse_proc_drbd(text)


def test_d13_status_json_duplicates_nan_and_overflowing_sync():
    text = _fixture("drbd", "status9", "status9_syncsource_primary.json")
    data = json.loads(text)
    with pytest.raises(DrbdParseError, match="listed twice"):
        parse_status_json(json.dumps(data + data))
    other = json.loads(text)
    other[0]["name"] = "other"
    with pytest.raises(DrbdParseError, match="minor"):
        parse_status_json(json.dumps(data + other))
    with pytest.raises(DrbdParseError, match="NaN"):
        parse_status_json(text.replace("37.50", "NaN"))
    with pytest.raises(DrbdParseError, match="outside 0-100"):
        parse_status_json(text.replace("37.50", "250"))
    assert parse_status_json(text)["some-resource"].sync_percent == 37.5


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, "[" + "{" * 5000 + "}" * 5000 + "]"])
def test_d13_parsers_raise_only_their_own_error(text):
    with pytest.raises(DrbdParseError):
        parse_status_json(text)


def test_d13_tgtadm_duplicates_and_odd_digits_are_refused():
    text = _fixture("tgtadm", "two_targets_chap_acl_offline.txt")
    assert len(parse_tgtadm_targets(text)) == 2
    first = text[:text.index("Target 4:")]
    with pytest.raises(TargetParseError, match="listed twice"):
        parse_tgtadm_targets(first + first.replace("Target 1:", "Target 2:"))
    lun = first[first.index("        LUN: 10"):first.index("    Account information:")]
    with pytest.raises(TargetParseError, match="LUN 10 listed twice"):
        parse_tgtadm_targets(first.replace(lun, lun + lun))
    with pytest.raises(TargetParseError):
        parse_tgtadm_targets(first.replace("LUN: 10", "LUN: 1\u00b2"))
    with pytest.raises(TargetParseError):
        parse_tgtadm_targets(first.replace("Target 1:", "Target \u00b9:"))


# -- D14: the plugin refuses a non-finite timeout before writing anything -----------------------
@pytest.mark.parametrize("timeout", ["nan", "inf", "-inf", "-5", "1e999", "x"])
def test_d14_plugin_refuses_bad_timeouts_before_any_write(timeout, host, mocker):
    mocker.patch.object(plugin, "_context", side_effect=lambda lines, path=None:
                        plugin.HostContext(host.config, say=lines.append, sleep=host.agent))
    host.set_manual(model.MANUAL_PRIMARY)
    for function in (plugin.become_secondary, plugin.become_primary):
        answer = json.loads(function(None, {"timeout": timeout}))
        assert answer["code"] == 2 and not answer["ok"] and "timeout" in answer["lines"][0]
        assert host.manual() == model.MANUAL_PRIMARY
    answer = json.loads(plugin.become_primary(None, {"wait_peer": timeout}))
    assert answer["code"] == 2 and host.manual() == model.MANUAL_PRIMARY
    assert not math.isnan(plugin._seconds({}))


@pytest.mark.parametrize("text", ['{"updated": NaN, "agent": {"pid": 1}}',
                                  '{"updated": 4102444800, "agent": {"pid": 1}}',
                                  '{"updated": 1, "agent": {"pid": "1"}}', "[" * 100000])
def test_d6_the_watchdog_reads_the_status_with_the_same_reader(text, tmp_path):
    from iscsi_ha import watchdog
    path = tmp_path / "status"
    path.write_text(text)
    assert watchdog._status_of((str(path), None)) is None   # never "running" forever, no crash
    path.write_text('{"updated": 5, "agent": {"pid": 7}}')
    assert watchdog._status_of((str(path), None)) == (7, 5.0)
    copy = tmp_path / "fallback-status"                   # the newer of the two counts
    copy.write_text('{"updated": 9, "agent": {"pid": 7}}')
    assert watchdog._status_of((str(path), str(copy))) == (7, 9.0)


def test_d7_set_can_repair_an_invalid_state_dir_when_no_agent_runs(tmp_path, capsys):
    plain = tmp_path / "state"
    plain.write_text("x")
    path = tmp_path / "c.conf"
    path.write_text("STATE_DIR=%s\nAGENT_PID_FILE=%s/agent.pid\n" % (plain, tmp_path))
    code, out, err = run(capsys, "set", "--config", str(path), "STATE_DIR",
                         str(tmp_path / "st"))
    assert code == 0, err
    assert config_mod.load(str(path)).STATE_DIR == str(tmp_path / "st")


# -- review of issues 9/11: XAPI_URL and DRBD_PROC ---------------------------------------------
@pytest.mark.parametrize("url,words", [
    ("garbage", "neither"), ("", "empty"), ("http://[::1", "cannot be parsed"),
    ("ftp://h/", "neither"), ("http://h:0/", "port 0"), ("http://h:99999/", "cannot be parsed"),
    ("http:///x", "neither"), ("unix://", "no socket path"), ("http://h x/", "blank")])
def test_review1_xapi_url_is_validated_by_check(url, words):
    refused("XAPI_URL='%s'\n" % url, "XAPI_URL", words)


@pytest.mark.parametrize("url", ["unix:///var/lib/xcp/xapi", "http://192.0.2.1/",
                                 "https://[2001:db8::1]:8443/", "http://h:80"])
def test_review1_good_xapi_urls_pass(url):
    assert config_mod.loads("XAPI_URL='%s'\n" % url).XAPI_URL == url


def test_review1_a_bad_url_reaching_the_client_is_an_expected_error(tmp_path, capsys):
    from iscsi_ha.adapters.xapi import XapiClient, XapiError
    with pytest.raises(XapiError) as bad:
        XapiClient("http://[::1", "root", "", 1.0)
    assert "cannot be parsed" in str(bad.value)
    path = tmp_path / "c.conf"
    path.write_text("XAPI_URL=garbage\nSTATE_DIR=%s/state\n" % tmp_path)
    for verb in (["check"], ["split-brain"], ["test-alert", "--xapi"]):
        code, out, err = run(capsys, verb[0], "--config", str(path), *verb[1:])
        assert code == 2 and "XAPI_URL (line 1)" in err and "Traceback" not in err, (verb, err)


def test_review2_drbd_proc_is_read_bounded_and_never_blocks(fifo, tmp_path):
    from iscsi_ha.adapters.drbd import DrbdAdapter, detect_version
    from iscsi_ha.drbd import DrbdUnavailable
    for path, words in (("/dev/zero", "character device"), (fifo, "FIFO"),
                        (str(tmp_path), "directory")):
        adapter = DrbdAdapter("r0", proc_drbd=path)
        error = _bounded(adapter._read_proc).get("error")
        assert isinstance(error, DrbdUnavailable) and words in str(error), (path, error)
        assert _bounded(lambda: detect_version(path))["value"] is None
    big = tmp_path / "drbd"
    with open(str(big), "w") as handle:
        handle.write("version: 8.4.11\n")
        handle.truncate(files.PROC_LIMIT + 1)
    error = _bounded(DrbdAdapter("r0", proc_drbd=str(big))._read_proc).get("error")
    assert isinstance(error, DrbdUnavailable) and "more than" in str(error)
    # /proc files say st_size 0: they are read up to the cap, not refused or read as empty
    assert "\n" in files.read_text("/proc/self/status", files.PROC_LIMIT)


def test_review2_check_refuses_a_drbd_proc_that_is_not_a_file(fifo, tmp_path):
    refused("DRBD_PROC=/dev/zero\n", "DRBD_PROC", "character device")
    refused("DRBD_PROC=%s\n" % fifo, "DRBD_PROC", "FIFO")
    refused("DRBD_PROC=%s\n" % tmp_path, "DRBD_PROC", "directory")
    assert config_mod.loads("DRBD_PROC=%s/none\n" % tmp_path).DRBD_PROC


# -- review of issues 9/11: set with "--" values, non-UTF-8 and control characters ---------------
@pytest.mark.parametrize("argv", [["--", "MAIL_SUBJECT", "--"], ["MAIL_SUBJECT", "--", "--"]])
def test_review5_set_a_value_of_double_dash(argv, tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("MAIL_SUBJECT=x\n")
    code, out, err = run(capsys, "set", "--config", str(path), *argv)
    assert code == 0 and err == "", err
    assert config_mod.load(str(path)).MAIL_SUBJECT == "--"


def test_review5_extra_words_after_double_dash_are_one_usage_line(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("MAIL_SUBJECT=x\n")
    code, out, err = run(capsys, "set", "--config", str(path), "--", "MAIL_SUBJECT", "a", "--")
    assert code == 2 and "unrecognized arguments: --" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value,words", [
    ("\udcff", "byte 0xff, which is not UTF-8"), ("a\u0085b", "U+0085"), ("a\x7f", "U+007F"),
    ("a\x1bb", "U+001B"), ("a\x9b", "U+009B")])
def test_review6_set_refuses_non_utf8_and_control_characters(value, words, tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("MAIL_SUBJECT=x\n")
    code, out, err = run(capsys, "set", "--config", str(path), "MAIL_SUBJECT", value)
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert path.read_bytes() == b"MAIL_SUBJECT=x\n"


@pytest.mark.parametrize("value", ["a\u0085b", "a\x9bb", "a\x7f"])
def test_review6_check_refuses_c1_and_del(value):
    refused("MAIL_SUBJECT='%s'\n" % value, "MAIL_SUBJECT", "control character")
    assert config_mod.loads("MAIL_SUBJECT='a\tb \u00e9'\n").MAIL_SUBJECT == "a\tb \u00e9"


# -- review of issues 9/11, defect 4: kernel and read-only file systems ------------------------
@pytest.fixture
def mounts(tmp_path, monkeypatch):
    """A mountinfo of our own: tmp_path/kern is a proc mount, tmp_path/ro is read-only."""
    for name in ("kern", "ro", "disk"):
        (tmp_path / name).mkdir()
    (tmp_path / "kern" / "version").write_text("Linux\n")
    info = tmp_path / "mountinfo"
    info.write_text("1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
                    "2 1 0:5 / %s rw,relatime - proc proc rw\n"
                    "3 1 8:2 / %s ro,relatime shared:1 - ext4 /dev/sdb1 ro\n"
                    % (tmp_path / "kern", tmp_path / "ro"))
    monkeypatch.setattr(config_mod, "MOUNTINFO", str(info))
    return tmp_path


@pytest.mark.parametrize("key,where,words", [
    ("STATE_DIR", "kern", "proc kernel file system"),
    ("STATE_DIR", "kern/sub/dir", "proc kernel file system"),
    ("STATE_DIR", "ro/state", "read-only"),
    ("LOG_FILE", "kern/version", "proc kernel file system"),
    ("LOG_FILE", "ro/agent.log", "read-only"),
    ("STATUS_FILE", "kern/version", "proc kernel file system"),
    ("MANUAL_FILE", "ro/manual", "read-only")])
def test_review4_agent_files_on_kernel_or_read_only_file_systems(key, where, words, mounts):
    refused("%s=%s\n" % (key, mounts / where), key, words)
    assert config_mod.loads("%s=%s\n" % (key, mounts / "disk" / "x")) is not None


def test_review4_the_root_directory_is_not_a_state_dir(mounts):
    refused("STATE_DIR=/\n", "STATE_DIR", "root directory")
    refused("STATE_DIR=/..//\n", "STATE_DIR", "root directory")


def test_review4_set_refuses_the_same_values(mounts, capsys):
    path = mounts / "disk" / "c.conf"
    path.write_text("MAIL_TO=a\n")
    for key, value, words in (("LOG_FILE", mounts / "kern" / "version", "kernel file system"),
                              ("DRBD_PROC", "/dev/zero", "character device"),
                              ("STATE_DIR", mounts / "kern", "kernel file system")):
        code, out, err = run(capsys, "set", "--config", str(path), key, str(value))
        assert code == 2 and words in err and "Traceback" not in err, err
    assert path.read_text() == "MAIL_TO=a\n"


def test_review4_proc_files_of_this_host_are_refused(tmp_path):
    refused("LOG_FILE=/proc/version\n", "LOG_FILE", "kernel file system")
    refused("STATE_DIR=/proc\n", "STATE_DIR", "kernel file system")


# -- review of issues 9/11, defect 8: the plugin run by hand, strict booleans ------------------
@pytest.mark.parametrize("argv,code", [(["nope"], 2), (["--help"], 0), ([], 2),
                                       (["<?xml version='1.0'?><methodCall/>"], 2)])
def test_review8_plugin_by_hand_is_one_line_never_a_traceback(argv, code):
    done = subprocess.run([sys.executable, os.path.join(REPO, "plugins", "iscsi-ha")] + argv,
                          env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) <= 1


@pytest.mark.parametrize("args,words", [
    ({"force": "maybe"}, "not a boolean"), ({"force": "yes"}, "not a boolean"),
    ({"force": "true"}, "not offered"), ({"timeout": "5", "bogus": "1"}, "unknown argument")])
def test_review8_become_primary_arguments_are_strict(args, words, mocker):
    context = mocker.patch.object(plugin, "_context")
    answer = json.loads(plugin.FUNCTIONS["become_primary"](None, args))
    assert answer["code"] == 2 and words in answer["lines"][0]
    assert not context.called                     # refused before anything is read or written


# -- review of issues 9/11, defect 11: messages ------------------------------------------------
def test_review11_missing_proc_drbd_says_it_does_not_exist(tmp_path):
    from iscsi_ha.adapters.drbd import DrbdAdapter
    from iscsi_ha.drbd import DrbdUnavailable
    with pytest.raises(DrbdUnavailable) as bad:
        DrbdAdapter("r0", version="auto", proc_drbd=str(tmp_path / "drbd")).version
    assert "does not exist" in str(bad.value) and "module is not loaded" in str(bad.value)
    (tmp_path / "drbd").write_text("no version here\n")
    with pytest.raises(DrbdUnavailable) as bad:
        DrbdAdapter("r0", version="auto", proc_drbd=str(tmp_path / "drbd")).version
    assert "has no version line" in str(bad.value)


def _small_config(tmp_path, extra=""):
    path = tmp_path / "c.conf"
    path.write_text("STATE_DIR=%s/state\nPOOL_CONF=%s/pool.conf\n%s" % (tmp_path, tmp_path, extra))
    return str(path)


def test_review11_timeout_zero_names_the_real_range(tmp_path, capsys):
    code, out, err = run(capsys, "become-primary", "--config", _small_config(tmp_path),
                         "--timeout", "0")
    assert code == 2 and "more than 0 and at most 3600" in err and "between 0" not in err


def test_review11_status_without_a_status_file_is_not_inf_seconds_old(tmp_path, capsys):
    code, out, err = run(capsys, "status", "--config", _small_config(tmp_path))
    assert code == 2 and "inf" not in out + err and "published no readable status" in out


def test_review11_get_of_an_empty_key_is_unknown(tmp_path, capsys):
    code, out, err = run(capsys, "get", "--config", _small_config(tmp_path), "")
    assert code == 2 and "unknown key" in err and out == ""


def test_review11_a_closed_pipe_ends_quietly_without_a_trace(tmp_path):
    log = tmp_path / "agent.log"
    log.write_text("".join("line %d %s\n" % (i, "x" * 60) for i in range(100000)))
    config = _small_config(tmp_path, "LOG_FILE=%s\n" % log)
    env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-m", "iscsi_ha.cli.cfg_main", "log", "--config",
                              config, "-n", "100000"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.readline()
    child.stdout.close()                              # as `| head -1` does
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=60) == 141 and stderr == "", stderr
    assert not os.path.exists(str(tmp_path / "state" / "traces"))


# -- review of issues 9/11, defect 13: the log never drives the terminal ------------------------
def test_review13_log_escapes_control_characters_but_tab(tmp_path, capsys):
    log = tmp_path / "agent.log"
    log.write_bytes(b"a\x1b[2Jb\tc\x00d\x7fe\xc2\x85f\rg\n")
    code, out, err = run(capsys, "log", "--config", _small_config(tmp_path,
                                                                 "LOG_FILE=%s\n" % log))
    assert code == 0 and out == "a\\x1b[2Jb\tc\\x00d\\x7fe\\x85f\\x0dg\n", repr(out)
