"""Every iscsi-cfg verb, as the operator runs it (a subprocess), on a host that has nothing it
needs: no DRBD/tgt/arping/xe/systemctl on PATH, XAPI not answering (a 127.0.0.1 port that is
bound but not listening: connection refused), and no state directory, pool.conf or inventory.
Each must end with one line on stderr (a refusal may list its reasons below it, each on a line
of its own starting with "  - "), never a Python traceback, and never the exit code of an
unexpected error (70): every such failure is something the verb knows how to say."""
import os
import socket
import subprocess
import sys

import pytest

from iscsi_ha.cli import cfg_args

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))

# Each verb with the arguments an operator would give it (short timeouts: nothing answers).
INVOCATIONS = [
    ["version"], ["get"], ["get", "STATE_DIR"], ["set", "MONITOR_DELAY", "15"],
    ["status", "--once"], ["status", "--json"], ["status", "--json", "--peer"],
    ["status", "--once", "--peer"], ["log", "-n", "5"], ["check"], ["check", "--local"],
    ["manual-mode-enable"], ["manual-mode-disable"],
    ["become-primary", "--timeout", "2"], ["become-primary", "--force", "--yes", "--timeout", "2"],
    ["become-secondary", "--timeout", "2"], ["switchover", "--timeout", "2"],
    ["split-brain"], ["split-brain", "iscsi1"], ["split-brain", "--keep", "peer", "--yes"],
    ["split-brain", "iscsi1", "--clear"],
    ["test-alert"], ["test-alert", "--email"], ["test-alert", "--xapi"],
    ["mediator", "status"], ["mediator", "test"], ["mediator", "reset"],
    ["mediator", "enroll"], ["mediator", "enroll", "/nonexistent/bundle.json"],
    ["support-bundle", "-o", "/nonexistent/dir/x.tgz"],
]


def test_every_verb_is_covered():
    assert set(cfg_args.VERBS) == set(argv[0] for argv in INVOCATIONS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-world")
    refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refusing.bind(("127.0.0.1", 0))          # bound, never listening: connections are refused
    port = refusing.getsockname()[1]
    empty_bin = root / "bin"
    empty_bin.mkdir()
    config = root / "iscsi-ha.conf"
    config.write_text(
        "DRBD_RESOURCES=iscsi1:iscsi2\nDRBD_VIRTUAL_IP=192.0.2.100\nDRBD_VIRTUAL_MASK=24\n"
        "DRBD_INTERFACE=eth0\nDRBD_VERSION=8.4\nISCSI_TARGET_IQN=iqn.2026-11.test:world\n"
        "ISCSI_LUNS=10=/dev/drbd1\nMONITOR_DELAY=10\n"
        "STATE_DIR={r}/missing/state\nPOOL_CONF={r}/missing/pool.conf\n"
        "INVENTORY_FILE={r}/missing/inventory\nLOG_FILE={r}/agent.log\n"
        "SYSLOG_SOCKET={r}/missing/log\nXAPI_URL=http://127.0.0.1:{port}/\nXAPI_TIMEOUT=1\n"
        "MAIL_ON=1\nSMTP_SERVER=127.0.0.1\nSMTP_PORT={port}\nSMTP_TIMEOUT=1\n"
        "MAIL_FROM=iscsi-ha@example.com\nMAIL_TO=admin@example.com\n"
        "AGENT_PID_FILE={r}/missing/agent.pid\nWATCHDOG_PID_FILE={r}/missing/watchdog.pid\n"
        "WATCHDOG_STATE_FILE={r}/missing/watchdog.json\n".format(r=root, port=port))
    env = {"PATH": str(empty_bin), "HOME": str(root), "LANG": "C", "TMPDIR": str(root),
           "PYTHONPATH": ROOT, "ISCSI_HA_CONFIG": str(config),
           "ISCSI_HA_INVENTORY": str(root / "missing" / "inventory")}
    try:
        yield env
    finally:
        refusing.close()


@pytest.mark.parametrize("argv", INVOCATIONS, ids=[" ".join(a) for a in INVOCATIONS])
def test_verb_without_its_world_is_one_line_never_a_traceback(world, argv):
    proc = subprocess.run([sys.executable, "-m", "iscsi_ha.cli.cfg_main"] + argv, env=world,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything, everything
    assert proc.returncode != 70, everything         # an unexpected error (a bug)
    lines = proc.stderr.rstrip().splitlines()
    assert len(lines) <= 1 or all(line.startswith("  - ") for line in lines[1:]), proc.stderr
    assert not lines or lines[0].startswith("iscsi-cfg"), proc.stderr
    if proc.returncode != 0:
        assert (proc.stderr + proc.stdout).strip(), "exit %d without a word" % proc.returncode


# The agent and the watchdog in the same world (not `iscsi-ha run` as a daemon, nor the
# watchdog's loop, which would try to start an agent).
DAEMON_INVOCATIONS = [
    ["iscsi_ha.cli.agent_main", "check"], ["iscsi_ha.cli.agent_main", "run", "--dry-run"],
    ["iscsi_ha.cli.agent_main", "run", "--once"], ["iscsi_ha.cli.agent_main", "run", "--once",
                                                   "--json"],
    ["iscsi_ha.watchdog", "check"], ["iscsi_ha.watchdog", "demote", "--timeout", "1"],
]


@pytest.mark.parametrize("argv", DAEMON_INVOCATIONS,
                         ids=[" ".join(a) for a in DAEMON_INVOCATIONS])
def test_agent_and_watchdog_without_their_world_never_print_a_traceback(world, argv):
    proc = subprocess.run([sys.executable, "-m"] + argv, env=world, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    everything = proc.stdout + proc.stderr
    assert "Traceback" not in everything and proc.returncode != 70, everything
    if proc.returncode != 0:
        assert everything.strip(), "exit %d without a word" % proc.returncode
