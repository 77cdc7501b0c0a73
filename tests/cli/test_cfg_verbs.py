"""iscsi-cfg as a command: every verb through ``main``, exit codes, one-line argument errors,
help for every verb, the status view, bash completion and the man page."""
import json
import os
import re
import shutil
import subprocess

import pytest
from rich.console import Console

from iscsi_ha import agent_status
from iscsi_ha import model
from iscsi_ha.cli import cfg_args, cfg_main, status_view

from .conftest import drbd

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
COMPLETION = os.path.join(ROOT, "etc", "bash_completion.d", "iscsi-cfg")
MAN = os.path.join(ROOT, "man", "iscsi-cfg.8")


def run(capsys, *argv):
    code = cfg_main.main(list(argv))
    out, err = capsys.readouterr()
    return int(code), out, err


# -- arguments ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: VERB"),
    (["become-primary", "--timeout", "soon"], "'soon' is not a number"),
    (["become-primary", "--timeout", "0"], "0 is out of range: expected seconds more than 0 and at most 3600"),
    (["log", "--lines", "-3"], "--lines"),
    (["set", "MONITOR_DELAY"], "required: VALUE"),
    (["status", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors_are_one_line_exit_2(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and words in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", cfg_args.VERBS)
def test_every_verb_has_help(capsys, verb):
    code, out, _ = run(capsys, verb, "--help")
    assert code == 0 and out.startswith("usage: iscsi-cfg %s" % verb)
    assert len(out.split("\n\n")[1].strip()) > 10           # a description


def test_top_level_help_lists_every_verb(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(verb in out for verb in cfg_args.VERBS)


def test_version(capsys):
    from iscsi_ha import __version__
    assert run(capsys, "version") == (0, "iscsi-cfg %s\n" % __version__, "")
    assert run(capsys, "-v")[1] == "iscsi-cfg %s\n" % __version__


# -- verbs through main -----------------------------------------------------------------------------
def test_get_one_key_and_unknown_key(host, capsys):
    assert run(capsys, "get", "DRBD_RESOURCES", "--config", host.path)[:2] == (
        0, "iscsi1:iscsi2\n")
    code, _, err = run(capsys, "get", "NOPE", "--config", host.path)
    assert code == 2 and "unknown key NOPE" in err


def test_manual_mode_verbs_and_refusal_exit_codes(host, capsys):
    code, out, _ = run(capsys, "manual-mode-enable", "--config", host.path)
    assert code == 0 and "manual mode on, role primary" in out
    assert host.manual() == model.MANUAL_PRIMARY
    host.set_pool("slave:192.0.2.12")
    code, _, err = run(capsys, "manual-mode-disable", "--config", host.path)
    assert code == 1 and "iscsi-cfg: manual mode stays on:" in err
    assert "iscsi1 is Primary, but this host is a pool slave" in err


def test_become_verbs_through_main(host, capsys, mocker):
    mocker.patch.object(host.ctx, "close")
    mocker.patch.object(cfg_main, "HostContext", return_value=host.ctx)
    host.ctx.say = print
    code, out, _ = run(capsys, "become-secondary", "--timeout", "5", "--config", host.path)
    assert code == 0 and "secondary reached" in out
    host.set_drbd(drbd("Secondary", "Unknown", "StandAlone", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", name="iscsi2"))
    code, _, err = run(capsys, "become-primary", "--config", host.path)
    assert code == 1 and "the peer's role is Unknown" in err
    code, out, err = run(capsys, "become-primary", "--force", "--yes", "--timeout", "5",
                         "--config", host.path)
    assert code == 0 and "forced, risk accepted" in out and "primary reached" in out


def test_become_primary_force_without_terminal_is_refused(host, capsys, mocker):
    host.set_manual(model.MANUAL_SECONDARY)
    host.set_drbd(drbd("Secondary", "Unknown", "StandAlone", peer_disk="DUnknown",
                       name="iscsi1"), drbd("Secondary", name="iscsi2"))
    mocker.patch("sys.stdin.isatty", return_value=False)
    code, _, err = run(capsys, "become-primary", "--force", "--config", host.path)
    assert code == 1 and "needs a confirmation" in err


def test_switchover_and_check_through_main(host, capsys):
    code, _, err = run(capsys, "switchover", "--config", host.path)
    assert code == 1 and "refusing to switch over; nothing was changed" in err
    code, out, _ = run(capsys, "check", "--config", host.path)
    assert code == 1 and "PROBLEM  peer:" in out


def test_a_damaged_manual_file_is_reported(host, capsys):
    with open(host.config.MANUAL_FILE, "w") as handle:
        handle.write("become_master")
    code, _, err = run(capsys, "become-secondary", "--config", host.path)
    assert code == 1 and "become_master" in err


# -- status -------------------------------------------------------------------------------------------
def test_status_json_with_peer_error(host, capsys):
    code, out, _ = run(capsys, "status", "--json", "--peer", "--config", host.path)
    document = json.loads(out)
    assert code == 0 and "cannot reach the peer" in document["peer"]["error"]


def test_status_json_with_peer_document(host, pool, capsys):
    fake, _, ref = pool
    fake.register_plugin(ref, "iscsi-ha", "status", lambda args: json.dumps(
        {"hostname": "test-b", "health": "degraded"}))
    code, out, _ = run(capsys, "status", "--json", "--peer", "--config", host.path)
    assert json.loads(out)["peer"]["health"] == "degraded"


def frame(host, document, peer=None):
    console = Console(record=True, width=160, force_terminal=False)
    console.print(status_view.render(host.config, document, peer))
    return console.export_text()


def test_status_frame_expected_versus_actual(host):
    document = host.write_status(manual_mode="become_primary", role="Primary")
    document.update(desired_role="primary", agent_running=True, stale=False, age_s=0.4)
    text = frame(host, document, ({"hostname": "test-b", "health": "ok", "manual_mode":
                                   "become_secondary", "agent_running": True,
                                   "drbd": {"iscsi1": {"role": "Secondary"}}}, "", 1.0))
    assert "manual mode" in text and "ON (primary)" in text
    assert "NOT AS EXPECTED" not in text and "test-b: ok" in text
    assert "iqn.2026-11.test.iscsi-ha:cli" in text and "10=/dev/drbd1" in text
    document["floating_ip"]["local"] = False
    assert "NOT AS EXPECTED" in frame(host, document)


def test_status_frame_marks_steps_being_applied(host):
    """The pass that acted still shows what it saw before acting: not 'NOT AS EXPECTED'."""
    host.set_drbd(drbd("Secondary", name="iscsi1"), drbd("Secondary", name="iscsi2"))
    plan = ["promote iscsi1", "promote iscsi2", "start target", "add floating IP"]
    document = host.write_status(manual_mode="become_primary", role="Secondary")
    started = document["pass"]["started"]
    document.update(desired_role="primary", agent_running=True, stale=False,
                    decision={"reason": "promoting: manual mode", "actions": plan,
                              "verdict": "acting"},
                    last_actions=[{"action": a, "ok": True, "skipped": False, "at": started,
                                   "duration_s": 0.1} for a in plan])
    text = frame(host, document)
    assert "being applied" in text and "NOT AS EXPECTED" not in text
    assert "the next pass shows the result" in text
    document["last_actions"][-1]["ok"] = False
    assert "NOT AS EXPECTED" in frame(host, document)


def test_status_frame_shows_peer_unknown_and_xapi_error(host):
    host.set_drbd(drbd(peer_role="Unknown", connection="WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd(name="iscsi2"))
    document = host.write_status(role="Primary")
    document.update(agent_running=True, stale=False)
    text = frame(host, document, (None, "cannot reach the peer through XAPI: timeout", 1.0))
    assert "iscsi1: peer Unknown, peer disk DUnknown, WFConnection" in text
    assert "cannot reach the peer through XAPI: timeout" in text


def test_status_banner_names_likely_causes(host):
    document = {"agent_running": False, "stale": True, "age_s": 99.0, "problems": []}
    text = frame(host, document)
    assert "not running" in text and "Likely causes" in text and "99 s old" in text


def test_status_once_exit_codes(host, capsys, mocker):
    assert run(capsys, "status", "--once", "--config", host.path)[0] == 0
    document = host.write_status(role="Primary")
    document["health"] = "degraded"
    with open(host.config.STATUS_FILE, "w") as handle:
        json.dump(document, handle)
    assert run(capsys, "status", "--once", "--config", host.path)[0] == 1
    mocker.patch.object(agent_status, "running", return_value=False)
    code, out, _ = run(capsys, "status", "--once", "--config", host.path)
    assert code == 2 and "agent is not running" in out


# -- completion and man page ---------------------------------------------------------------------------
def test_completion_lists_every_verb_and_option():
    text = open(COMPLETION).read().replace("\\\n", "")     # bash line continuations
    verbs = re.search(r'local verbs="([^"]*)"', text).group(1).split()
    assert sorted(verbs) == sorted(cfg_args.VERBS)
    for option in ("--once", "--json", "--peer", "--follow", "--lines", "--force", "--yes",
                   "--timeout", "--local", "--config"):
        assert option in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("words,expected", [
    ("iscsi-cfg be", {"become-primary", "become-secondary"}),
    ("iscsi-cfg te", {"test-alert"}),
    ("iscsi-cfg test-alert --", {"--email", "--xapi", "--config", "--help"}),
    ("iscsi-cfg become-primary --", {"--force", "--yes", "--timeout", "--config", "--help"}),
    ("iscsi-cfg set DRBD_VIRTUAL_", {"DRBD_VIRTUAL_IP", "DRBD_VIRTUAL_MASK"}),
    ("iscsi-cfg --config /x sw", {"switchover"}),
])
def test_completion_in_bash(words, expected):
    script = 'source "%s"; COMP_WORDS=(%s); COMP_CWORD=%d; _iscsi_cfg; ' \
             'printf "%%s\\n" "${COMPREPLY[@]}"' % (COMPLETION, words, len(words.split()) - 1)
    proc = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    assert set(proc.stdout.split()) == expected


def test_man_page_mentions_every_verb_and_renders():
    text = open(MAN).read()
    for verb in cfg_args.VERBS:
        assert re.search(r"^\.B %s\b" % re.escape(verb), text, re.M), verb
    if shutil.which("man"):
        proc = subprocess.run(["man", "--warnings", "-l", "-Tutf8", MAN],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == ""


def test_an_unwritable_state_directory_is_one_line_exit_1(host, capsys):
    import os
    state = host.config.STATE_DIR
    os.makedirs(state, exist_ok=True)
    # (A regular file where STATE_DIR should be is now refused by the configuration check, exit
    # 2: tests/test_validation.py.) The manual file's temporary name is taken by a directory,
    # so the write fails even for root.
    os.makedirs(os.path.join(state, "manual.tmp.%d" % os.getpid()))
    code, _, err = run(capsys, "manual-mode-enable", "--config", host.path)
    assert code == 1 and err.startswith("iscsi-cfg: ") and len(err.splitlines()) == 1


def test_completion_offers_every_configuration_key():
    from iscsi_ha.config import CONFIGSPEC
    text = open(COMPLETION).read().replace("\\\n", "")
    offered = set(re.search(r"echo ([A-Z_ ]+)\n", text).group(1).split())
    keys = set(line.split("=")[0].strip() for line in CONFIGSPEC.strip().splitlines())
    assert offered == keys
