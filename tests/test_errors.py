"""The shared error boundary: one line and a trace file, never a bare traceback; the XAPI plugin
answers JSON whatever happens; one set of exit codes."""
import json
import os
import subprocess
import sys

import pytest

from iscsi_ha import errors
from iscsi_ha.cli import agent_main, cfg_main, manual_ops, plugin
from iscsi_ha.errors import ExitCode

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.fixture
def trace_dirs(tmp_path, monkeypatch):
    """Traces go under tmp_path: the state dir list is emptied, LOG_DIR and TMPDIR moved."""
    monkeypatch.setattr(errors, "_state_dirs", [])
    monkeypatch.setattr(errors, "LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setattr(errors.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _bug():
    raise KeyError("a key the code forgot")


def test_unexpected_error_is_one_line_and_the_trace_is_in_the_state_dir(trace_dirs, capsys):
    class Config(object):
        STATE_DIR = str(trace_dirs / "state")
    errors.note_config(Config())
    assert errors.guard("iscsi-cfg", _bug) == ExitCode.INTERNAL == 70
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("iscsi-cfg: unexpected error") and "KeyError" in err
    path = err.strip().rsplit("full trace in ", 1)[1]
    assert os.path.dirname(path) == str(trace_dirs / "state" / "traces")
    text = open(path).read()
    assert "Traceback" in text and "a key the code forgot" in text and "_bug" in text


def test_trace_falls_back_when_the_state_dir_cannot_be_written(trace_dirs, capsys):
    blocker = trace_dirs / "blocker"
    blocker.write_text("a file where the state directory should be")

    class Config(object):
        STATE_DIR = str(blocker / "state")
    errors.note_config(Config())
    (trace_dirs / "log").write_text("not a directory either")
    assert errors.guard("iscsi-ha", _bug) == 70
    err = capsys.readouterr().err
    assert os.path.dirname(err.strip().rsplit("full trace in ", 1)[1]) == str(trace_dirs / "tmp")


def test_a_password_given_on_the_command_line_stays_out_of_the_trace(trace_dirs, capsys,
                                                                     monkeypatch):
    monkeypatch.setattr(errors.sys, "argv", ["iscsi-cfg", "set", "SMTP_PASS", "s3cret"])
    errors.guard("iscsi-cfg", _bug)
    path = capsys.readouterr().err.strip().rsplit("full trace in ", 1)[1]
    text = open(path).read()
    assert "s3cret" not in text and "'SMTP_PASS', '***'" in text


def test_expected_results_pass_through_and_interrupt_is_one_line(trace_dirs, capsys):
    assert errors.guard("x", lambda: ExitCode.FAILED) == 1
    assert errors.guard("x", lambda: None) == 0

    def interrupted():
        raise KeyboardInterrupt()
    assert errors.guard("x", interrupted) == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == "x: interrupted\n"


def test_every_entry_point_goes_through_the_boundary(trace_dirs, monkeypatch, capsys):
    from iscsi_ha import watchdog
    monkeypatch.setattr(cfg_main, "_run", lambda args: _bug())
    monkeypatch.setattr(agent_main, "cmd_check", lambda path: _bug())
    monkeypatch.setattr(watchdog, "_dispatch", lambda *args: _bug())
    config = trace_dirs / "iscsi-ha.conf"
    config.write_text("STATE_DIR=%s\n" % (trace_dirs / "state"))
    for main, argv in ((cfg_main.main, ["get", "--config", str(config)]),
                       (agent_main.main, ["check", "--config", str(config)]),
                       (watchdog.main, ["check", "--config", str(config)])):
        assert main(argv) == ExitCode.INTERNAL
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "full trace in" in err, err


def test_plugin_answers_json_for_a_bug_a_bad_config_and_a_refusal(trace_dirs, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("ISCSI_HA_CONFIG", str(tmp_path / "missing.conf"))
    answer = json.loads(plugin.FUNCTIONS["identity"](None, {}))
    assert answer["ok"] is False and answer["code"] == 2 and "missing.conf" in answer["lines"][0]
    config = tmp_path / "iscsi-ha.conf"
    config.write_text("STATE_DIR=%s\n" % (tmp_path / "state"))
    monkeypatch.setenv("ISCSI_HA_CONFIG", str(config))
    monkeypatch.setattr(manual_ops, "become_secondary", lambda ctx, timeout: _bug())
    answer = json.loads(plugin.FUNCTIONS["become_secondary"](None, {}))
    assert answer["ok"] is False and answer["code"] == 70
    assert "unexpected error" in answer["lines"][0] and "full trace in" in answer["lines"][0]
    assert "a key the code forgot" in open(answer["trace"]).read()
    monkeypatch.setattr(manual_ops, "enable", lambda ctx: _bug())
    answer = json.loads(plugin.FUNCTIONS["manual_mode"](None, {"mode": "enable"}))
    assert answer["code"] == 70


def test_the_plugin_script_answers_json_without_its_config(tmp_path):
    """plugins/iscsi-ha as xapi would run it (here through its command-line form)."""
    env = dict(os.environ, ISCSI_HA_CONFIG=str(tmp_path / "missing.conf"), PYTHONPATH=ROOT,
               TMPDIR=str(tmp_path))
    for function in ("status", "identity", "split_brain", "become_secondary"):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "plugins", "iscsi-ha"),
                               function], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert "Traceback" not in proc.stderr + proc.stdout
        answer = json.loads(proc.stdout)
        assert answer["ok"] is False and answer["code"] == 2, (function, answer)


def test_exit_codes_are_shared():
    from iscsi_ha import watchdog
    assert cfg_main.ExitCode is ExitCode
    assert (watchdog.EXIT_OK, watchdog.EXIT_FAIL, watchdog.EXIT_USAGE,
            watchdog.EXIT_STOPPED) == (ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE,
                                       ExitCode.STOPPED)
    assert (agent_main.EXIT_OK, agent_main.EXIT_FAIL, agent_main.EXIT_USAGE) == (0, 1, 2)
    man = open(os.path.join(ROOT, "man", "iscsi-cfg.8")).read()
    for code in ExitCode:
        assert "\n.B %d\n" % code.value in man or "\n.IP %d\n" % code.value in man, code


def test_plugin_split_brain_facts_without_drbdadm_is_json_naming_it(tmp_path, monkeypatch):
    """The peer asks this host's split-brain facts while drbdadm cannot run here: the answer
    is JSON that says so (it was a Python exception before)."""
    config = tmp_path / "iscsi-ha.conf"
    config.write_text("DRBD_RESOURCES=iscsi1\nDRBD_PROC=%s\nSTATE_DIR=%s\nDRBD_TIMEOUT=2\n" % (
        tmp_path / "no-proc-drbd", tmp_path / "state"))
    monkeypatch.setenv("ISCSI_HA_CONFIG", str(config))
    monkeypatch.setenv("PATH", str(tmp_path))                 # no drbdadm at all
    for action in ("facts", "victim", "survivor"):
        answer = json.loads(plugin.FUNCTIONS["split_brain"](None, {"action": action,
                                                                   "resource": "iscsi1"}))
        text = json.dumps(answer)
        assert "drbdadm" in text or "/proc/drbd" in text or "no-proc-drbd" in text, answer
        assert answer.get("code") != 70, answer
    facts = json.loads(plugin.FUNCTIONS["split_brain"](None, {"action": "facts"}))
    errors_seen = " ".join(facts["resources"]["iscsi1"]["errors"])
    assert "get-gi iscsi1" in errors_seen and "drbd-utils" in errors_seen


def test_trace_files_are_bounded(trace_dirs, monkeypatch):
    monkeypatch.setattr(errors, "TRACES_KEPT", 3)
    directory = trace_dirs / "d"
    paths = []
    for number in range(5):
        path = errors.write_trace("x%d" % number, "trace %d" % number, dirs=[str(directory)])
        os.utime(path, (1000 + number, 1000 + number))
        paths.append(path)
    errors._prune(str(directory), keep=3)
    assert sorted(os.listdir(str(directory))) == sorted(os.path.basename(p) for p in paths[2:])
