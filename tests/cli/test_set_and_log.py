"""``iscsi-cfg set`` (round trip keeping comments, refusals) and ``iscsi-cfg log`` (sources,
bounded tail, follow with rotation)."""
import os

import pytest

from iscsi_ha import agent_status
from iscsi_ha import config as config_mod
from iscsi_ha.cli import cfg_main, log_cmd, set_cmd
from iscsi_ha.cli.context import CliError

HALIZARD = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "halizard",
                        "iscsi-ha.conf")


def run(capsys, *argv):
    code = cfg_main.main(list(argv))
    out, err = capsys.readouterr()
    return int(code), out, err


@pytest.fixture
def halizard_conf(tmp_path):
    path = tmp_path / "iscsi-ha.conf"
    with open(HALIZARD) as handle:
        path.write_text(handle.read())
    os.chmod(str(path), 0o640)
    return path


def test_set_round_trip_keeps_every_other_line(halizard_conf, capsys):
    before = halizard_conf.read_text().split("\n")
    code, out, _ = run(capsys, "set", "DRBD_VIRTUAL_IP", "192.0.2.77", "--config",
                       str(halizard_conf))
    assert code == 0 and "DRBD_VIRTUAL_IP" in out and "restart" in out
    after = halizard_conf.read_text().split("\n")
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 1
    assert changed[0][1] == "DRBD_VIRTUAL_IP=192.0.2.77"
    assert config_mod.load(str(halizard_conf)).DRBD_VIRTUAL_IP == "192.0.2.77"
    assert oct(os.stat(str(halizard_conf)).st_mode & 0o777) == "0o640"


def test_set_quotes_values_with_spaces_and_keeps_them(halizard_conf, capsys):
    code, _, _ = run(capsys, "set", "MAIL_SUBJECT", "storage alert on $HOSTNAME", "--config",
                     str(halizard_conf))
    assert code == 0
    # single quotes: bash (and the loader) read it literally; the alert expands $HOSTNAME
    assert "MAIL_SUBJECT='storage alert on $HOSTNAME'" in halizard_conf.read_text()
    assert config_mod.load(str(halizard_conf)).MAIL_SUBJECT == "storage alert on $HOSTNAME"


def test_set_appends_a_key_that_is_absent(halizard_conf, capsys):
    code, _, _ = run(capsys, "set", "ARP_DAD_TIMEOUT", "0.4", "--config", str(halizard_conf))
    assert code == 0 and halizard_conf.read_text().endswith("ARP_DAD_TIMEOUT=0.4\n")


def test_set_rewrites_the_last_assignment_and_keeps_a_trailing_comment(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("# head\nMONITOR_DELAY=10\n\nMONITOR_DELAY=12   # later wins\n")
    assert run(capsys, "set", "MONITOR_DELAY", "7", "--config", str(path))[0] == 0
    assert path.read_text() == "# head\nMONITOR_DELAY=10\n\nMONITOR_DELAY=7   # later wins\n"


def test_set_refuses_invalid_values_and_leaves_the_file(halizard_conf, capsys):
    original = halizard_conf.read_text()
    code, _, err = run(capsys, "set", "DRBD_VIRTUAL_IP", "192.0.2.300", "--config",
                       str(halizard_conf))
    assert code == 2 and "refusing DRBD_VIRTUAL_IP='192.0.2.300'" in err
    assert "expected an IPv4 address" in err
    # valid alone, but unsafe with the rest of the file (cross check names another key)
    code, _, err = run(capsys, "set", "MONITOR_SCANRATE", "0.1", "--config", str(halizard_conf))
    assert code == 2 and "pass budget" in err
    code, _, err = run(capsys, "set", "NO_SUCH_KEY", "1", "--config", str(halizard_conf))
    assert code == 2 and "unknown key NO_SUCH_KEY" in err
    assert halizard_conf.read_text() == original


def test_set_can_repair_an_invalid_file(tmp_path, capsys):
    path = tmp_path / "c.conf"
    path.write_text("DRBD_VIRTUAL_IP=nope\n")
    assert run(capsys, "get", "--config", str(path))[0] == 2
    assert run(capsys, "set", "DRBD_VIRTUAL_IP", "192.0.2.5", "--config", str(path))[0] == 0
    assert run(capsys, "get", "DRBD_VIRTUAL_IP", "--config", str(path))[1] == "192.0.2.5\n"


def test_quote_writes_single_quotes_bash_reads_literally():
    with pytest.raises(CliError):
        set_cmd.quote("two\nlines")
    assert set_cmd.quote("a'b\"c") == "'a'\\''b\"c'"
    assert set_cmd.quote("it's") == "'it'\\''s'" and set_cmd.quote('say "hi"') == "'say \"hi\"'"


# -- log --------------------------------------------------------------------------------------------
USER_LOG = os.path.join(os.path.dirname(__file__), "fixtures", "user.log")  # real rsyslog output


def test_log_reads_log_file_tail(host, capsys):
    with open(host.config.LOG_FILE, "w") as handle:
        handle.write("".join("line %d\n" % n for n in range(500)))
    code, out, _ = run(capsys, "log", "-n", "3", "--config", host.path)
    assert code == 0 and out == "line 497\nline 498\nline 499\n"


def test_log_filters_syslog_by_tag(tmp_path):
    path = tmp_path / "user.log"
    with open(USER_LOG) as handle:
        path.write_text(handle.read())
    config = type("C", (), {"LOG_FILE": ""})()
    kind, where, keep = log_cmd.source(config, (str(tmp_path / "nope"), str(path)))
    assert (kind, where) == ("syslog", str(path))
    lines, _ = log_cmd.tail(where, 10, keep)
    assert [l.split(": ", 1)[1][:12] for l in lines] == ["pass 1 (star", "pass 2 (time",
                                                         "start target"]
    assert log_cmd.tail(where, 1, keep)[0] == [lines[-1]]


def test_tail_is_bounded_and_skips_a_partial_first_line(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("x" * 100 + "\n" + "".join("l%d\n" % n for n in range(20000)))
    lines, _ = log_cmd.tail(str(path), 5, max_bytes=1024)
    assert lines == ["l19995", "l19996", "l19997", "l19998", "l19999"]
    lines, _ = log_cmd.tail(str(path), 100000, max_bytes=1024)
    assert len(lines) < 400 and all(l.startswith("l") for l in lines)


def test_follow_prints_new_lines_and_survives_rotation(tmp_path):
    path = tmp_path / "agent.log"
    path.write_text("old\n")
    said, polls = [], []

    def sleep(_):
        polls.append(1)
        if len(polls) == 1:
            with open(str(path), "a") as handle:
                handle.write("new 1\npartial")
        elif len(polls) == 2:
            with open(str(path), "a") as handle:
                handle.write(" done\n")
        elif len(polls) == 3:
            os.rename(str(path), str(path) + ".1")
            path.write_text("rotated\n")
    log_cmd.follow(str(path), len("old\n"), None, said.append, sleep=sleep, max_polls=5)
    assert said == ["new 1", "partial done", "rotated"]


def test_log_falls_back_to_the_journal(host, mocker, capsys):
    host.config.LOG_FILE = ""
    result = mocker.Mock(ok=True, stdout="Nov 22 10:00:01 xcp-a iscsi-ha[812]: pass 1\n")
    run_mock = mocker.patch.object(log_cmd, "run", return_value=result)
    said = []
    assert log_cmd.show(host.config, 5, False, said.append, syslog_files=()) == 0
    assert run_mock.call_args[0][0][:3] == ["journalctl", "-t", "iscsi-ha"]
    assert said == ["Nov 22 10:00:01 xcp-a iscsi-ha[812]: pass 1"]


def test_log_without_any_source_says_so(host, mocker):
    host.config.LOG_FILE = ""
    mocker.patch.object(log_cmd, "JOURNALCTL", "/nonexistent/journalctl")
    with pytest.raises(CliError) as failed:
        log_cmd.show(host.config, 5, False, print, syslog_files=())
    assert "no agent log found" in str(failed.value)


def test_set_refuses_to_move_the_state_under_a_running_agent(halizard_conf, capsys, mocker):
    mocker.patch.object(agent_status, "view", return_value={"agent_running": True})
    before = open(halizard_conf).read()
    code, _, err = run(capsys, "set", "STATE_DIR", "/var/lib/iscsi-ha", "--config",
                       str(halizard_conf))
    assert code == 1 and "while the agent runs" in err
    assert open(halizard_conf).read() == before
    mocker.patch.object(agent_status, "view", return_value={"agent_running": False})
    code, _, _ = run(capsys, "set", "STATE_DIR", "/var/lib/iscsi-ha", "--config",
                     str(halizard_conf))
    assert code == 0 and "STATE_DIR=/var/lib/iscsi-ha" in open(halizard_conf).read()
