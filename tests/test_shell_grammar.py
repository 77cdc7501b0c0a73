"""The configuration is read exactly as bash reads it (issue 11: D1, D2, D4, D8, D9).

The corpus (tests/shell_corpus.py) holds over 100 tricky files. Each is sourced by real bash
(``env -i``, no rc files, HOSTNAME set) which prints every key; our reader must give the same
value for every key, and bash must not have run anything (no stderr). Files in which bash would
run something (or whose value would come from the environment) must be refused by our reader,
naming the line; for those that try ``touch X``, bash is shown to really run it.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from iscsi_ha import config, shell_assign
from iscsi_ha.cli import cfg_main

sys.path.insert(0, os.path.dirname(__file__))
import shell_corpus as corpus  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDLER = os.path.join(REPO, "scripts", "drbd-split-brain-handler")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture(scope="module")
def internal(tmp_path_factory):
    return corpus.bash_internal_names(str(tmp_path_factory.mktemp("bash")))


def test_the_corpus_is_large_enough():
    assert len(corpus.AGREE) >= 100 and len(corpus.REFUSE) >= 40
    names = [n for n, _ in corpus.AGREE + corpus.REFUSE]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name,text", corpus.AGREE, ids=[n for n, _ in corpus.AGREE])
def test_reader_agrees_with_bash(name, text, tmp_path, internal):
    ours, _ = shell_assign.values(text, corpus.HOSTNAME)
    names = (set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - internal) | set(ours)
    theirs, stderr = corpus.source(str(tmp_path / "c.conf"), text, sorted(names))
    assert stderr == ""                          # bash ran nothing and saw no error
    assert ours == theirs


@pytest.mark.parametrize("name,text", corpus.REFUSE, ids=[n for n, _ in corpus.REFUSE])
def test_reader_refuses_what_bash_would_run_or_take_from_outside(name, text, tmp_path):
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values(text, corpus.HOSTNAME)
    assert re.match(r"line \d+", str(refused.value))
    assert "\n" not in str(refused.value)
    if "touch X" in text:                       # the danger is real: bash runs it
        corpus.source(str(tmp_path / "c.conf"), text, [])
        assert (tmp_path / "X").exists()


def test_refusals_name_the_key_and_line():
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values("A=1\n\nMAIL_SUBJECT=\"x $(touch X)\"\n")
    assert (refused.value.line, refused.value.key) == (3, "MAIL_SUBJECT")
    with pytest.raises(config.ConfigError) as bad:
        config.loads("A=1\nSMTP_PASS='abc\n", "t.conf")
    assert "SMTP_PASS (line 2)" in str(bad.value) and "unterminated ' quote" in str(bad.value)


# -- D1: '#' inside an unquoted value; the handler and the agent agree --------------------------
def test_d1_hash_inside_an_unquoted_value_is_kept_like_bash(tmp_path):
    c = config.loads("SMTP_PASS=ab#cd\nMAIL_TO=ops@example.com #who\n")
    assert c.SMTP_PASS == "ab#cd" and c.MAIL_TO == "ops@example.com"
    theirs, _ = corpus.source(str(tmp_path / "c.conf"), "SMTP_PASS=ab#cd\n", ["SMTP_PASS"])
    assert theirs == {"SMTP_PASS": "ab#cd"}


def test_d1_triple_quotes_read_as_bash_concatenates_them():
    c = config.loads('SMTP_PASS="""a # b"""\nMAIL_FROM=\'\'\'x@y\'\'\'\n')
    assert c.SMTP_PASS == "a # b" and c.MAIL_FROM == "x@y"


STATE_VALUES = ["{d}/sb#ate", "'{d}/with space'", '"{d}/dq #x"', "{d}/a\\ b", "{d}/cont\\\nued",
                "'{d}/it'\\''s'", "{d}/$HOSTNAME", '"{d}/${{HOSTNAME}}.d"', "{d}/x   # comment",
                "{d}/t\t#tab comment", "{d}/u\u00e9", "{d}/a=b", "{d}/['x']", "{d}/{{a,b}}"]


@pytest.mark.parametrize("value", STATE_VALUES)
def test_d1_split_brain_handler_and_agent_use_the_same_state_dir(value, tmp_path):
    base = str(tmp_path / "st")
    text = "DRBD_RESOURCES=iscsi1\nSTATE_DIR=/nonexistent/early\nSTATE_DIR=%s\n" % \
        value.format(d=base)
    path = tmp_path / "iscsi-ha.conf"
    path.write_text(text)
    ours = config.loads(text, hostname=corpus.HOSTNAME).STATE_DIR
    assert ours.startswith(base)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": corpus.HOSTNAME,
           "ISCSI_HA_CONFIG": str(path), "DRBD_RESOURCE": "iscsi1"}
    done = subprocess.run(["/bin/sh", HANDLER], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert (done.returncode, done.stderr) == (0, "")
    assert os.path.exists(os.path.join(ours, "split-brain-iscsi1"))


# -- D2: set writes values that bash reads back literally ---------------------------------------
TRICKY = ["$(touch X)", "`touch X`", "a'b\"c", "it's", "x $HOSTNAME y", "${HOSTNAME}", "a#b",
          " #lead", "back\\slash\\", "semi;colon & pipe | <in >out (sub)", "~/home", "a:~/b",
          "-starts-with-dash", "tab\there", "\u00e9t\u00e9 \u2603", "!bang", "*?[glob]",
          "'", "''", "\"", "\\'", "$", "$$", "trailing space ", "{a,b}", "a=b"]


@pytest.mark.parametrize("value", TRICKY)
def test_d2_set_writes_values_bash_reads_back_literally(value, tmp_path, capsys):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("# mail\nMAIL_SUBJECT=\"old $HOSTNAME\"\n")
    code = cfg_main.main(["set", "--config", str(path), "MAIL_SUBJECT", "--", value])
    assert int(code) == 0, capsys.readouterr()
    theirs, stderr = corpus.source(str(tmp_path / "iscsi-ha.conf"), path.read_text(),
                                   ["MAIL_SUBJECT"])
    assert theirs == {"MAIL_SUBJECT": value} and stderr == ""
    assert not (tmp_path / "X").exists()          # sourcing ran nothing
    assert config.load(str(path)).MAIL_SUBJECT == value


# -- D4, D8, D9: sections, a BOM, form feed and U+2028 ------------------------------------------
def _entry_points(path):
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=REPO)
    argvs = [[py, "-m", "iscsi_ha.cli.agent_main", "check", "--config", path],
             [py, "-m", "iscsi_ha.cli.agent_main", "run", "--once", "--dry-run", "--config",
              path],
             [py, "-m", "iscsi_ha.cli.cfg_main", "get", "--config", path],
             [py, "-m", "iscsi_ha.cli.cfg_main", "status", "--config", path]]
    return [subprocess.run(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=60) for a in argvs]


@pytest.mark.parametrize("text,words", [
    ("[main]\nDRBD_RESOURCES=iscsi1\n", "no [sections]"),
    ("\ufeffDRBD_RESOURCES=iscsi1\n", "byte order mark"),
])
def test_d4_d8_sections_and_a_bom_are_refused_by_every_entry_point_exit_2(text, words,
                                                                          tmp_path):
    path = tmp_path / "c.conf"
    path.write_text(text, encoding="utf-8")
    for done in _entry_points(str(path)):
        assert done.returncode == 2, done.args
        assert "Traceback" not in done.stderr and words in done.stderr
        assert "line 1" in done.stderr


def test_d8_a_bom_no_longer_drops_the_first_key():
    with pytest.raises(config.ConfigError) as bad:
        config.loads("\ufeffDRBD_VIRTUAL_IP=192.0.2.9\n")
    assert "byte order mark" in str(bad.value)


def test_d9_form_feed_and_u2028_do_not_split_lines():
    c = config.loads("MAIL_SUBJECT=a\u2028DRBD_VIRTUAL_IP=192.0.2.200\n", hostname="h")
    assert c.MAIL_SUBJECT == "a\u2028DRBD_VIRTUAL_IP=192.0.2.200"      # one value, as in bash
    assert c.DRBD_VIRTUAL_IP == "10.10.10.3"                           # never assigned
    with pytest.raises(config.ConfigError) as bad:
        config.loads("MAIL_SUBJECT=a\fDRBD_VIRTUAL_IP=192.0.2.200\n")
    assert "control character" in str(bad.value) and "MAIL_SUBJECT (line 1)" in str(bad.value)
    with pytest.raises(config.ConfigError) as bad:
        config.loads("MAIL_ON=1\n\f\nMAIL_ON=0\n")
    assert "line 2" in str(bad.value)


def test_crlf_values_are_refused_with_the_reason():
    with pytest.raises(config.ConfigError) as bad:
        config.loads("MONITOR_DELAY=10\r\n")
    assert "CRLF" in str(bad.value) and "dos2unix" in str(bad.value)


# -- review of issue 11, defect 3: backslash-newline goes before words are read ----------------
@pytest.mark.parametrize("name,key,joined_late", corpus.CONTINUATION_DIFFERS,
                         ids=[c[0] for c in corpus.CONTINUATION_DIFFERS])
def test_continuation_is_removed_before_names_are_read_like_bash(name, key, joined_late,
                                                                tmp_path):
    text = dict(corpus.REFUSE)[name]
    theirs, _ = corpus.source(str(tmp_path / "c.conf"), text, [key])
    assert theirs.get(key) != joined_late          # bash did not read what the file seems to say
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values(text, corpus.HOSTNAME)
    assert refused.value.key == key


def test_continuation_keeps_line_numbers_of_the_file_as_written():
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values("A=1 \\\nB=2\n\nC=\"x\\\ny\" D=$HOST\\\nX\n")
    assert (refused.value.line, refused.value.key) == (5, "D")
    found = shell_assign.parse("A=x\\\n\\\nB=\"1\\\n2\"\n")
    assert [(a.name, a.value, a.line) for a in found] == [("A", "xB=12", 1)]


def test_tilde_refusal_says_why():
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values("X=\\\n~/x\n")
    assert "home directory" in refused.value.message and "quote it" in refused.value.message


def test_set_replaces_a_value_written_across_a_continuation(tmp_path, capsys):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("MAIL_TO=a\\\nb MAIL_FROM=x@y\n")
    assert cfg_main.main(["set", "--config", str(path), "MAIL_TO", "c@d"]) == 0
    theirs, stderr = corpus.source(str(path), path.read_text(), ["MAIL_TO", "MAIL_FROM"])
    assert stderr == "" and theirs == {"MAIL_TO": "c@d", "MAIL_FROM": "x@y"}


# -- review of issue 11, defect 7: bash's own variables ----------------------------------------
@pytest.mark.parametrize("name", corpus.BASH_OWN)
def test_bash_own_variables_are_refused_as_keys_bash_does_not_keep_them(name, tmp_path):
    text = "%s=zz1\n" % name
    theirs, stderr = corpus.source(str(tmp_path / "c.conf"), text, [name])
    assert theirs.get(name) != "zz1" or "readonly" in stderr      # bash refuses or overrides
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values(text, corpus.HOSTNAME)
    assert refused.value.key == name and "bash sets itself" in refused.value.message


@pytest.mark.parametrize("name", ["UID", "RANDOM", "LINENO", "PPID", "_", "BASHPID"])
def test_bash_own_variables_are_refused_as_references(name):
    with pytest.raises(shell_assign.ShellSyntaxError) as refused:
        shell_assign.values("MAIL_SUBJECT=\"x ${%s}\"\n" % name, corpus.HOSTNAME)
    assert refused.value.key == "MAIL_SUBJECT" and "bash sets itself" in refused.value.message


def test_hostname_append_gives_bashs_result(tmp_path):
    text = "HOSTNAME+=-x\nMAIL_SUBJECT=$HOSTNAME\n"
    theirs, _ = corpus.source(str(tmp_path / "c.conf"), text, ["MAIL_SUBJECT"])
    ours, _ = shell_assign.values(text, corpus.HOSTNAME)
    assert ours["MAIL_SUBJECT"] == theirs["MAIL_SUBJECT"] == corpus.HOSTNAME + "-x"
