"""iscsi_ha.agent_status: the one answer to "running? stale? healthy?" that iscsi-cfg, the
plugin and the watchdog share (one staleness rule, derived from the pass budget)."""
import json
import os
import subprocess
import sys
import time

import pytest

from iscsi_ha import agent_status
from iscsi_ha import config as config_mod
from iscsi_ha.watchdog import Settings


@pytest.fixture
def config(tmp_path):
    pool = tmp_path / "pool.conf"
    pool.write_text("master")
    return config_mod.loads("\n".join([
        "POOL_CONF=%s" % pool, "STATE_DIR=%s" % (tmp_path / "state"),
        "STATUS_FILE=%s" % (tmp_path / "state" / "status.json"),
        "LOCK_FALLBACK_DIR=%s" % (tmp_path / "run"), "SYSLOG_SOCKET=",
        "MONITOR_DELAY=10", "MONITOR_SCANRATE=5", "MONITOR_MAX_STARTS=5", "WATCH_MARGIN=5",
        ""]), "test.conf")


def _publish(path, updated, pid=12345, health="ok"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"updated": updated, "agent": {"pid": pid}, "health": health}, handle)


def test_one_staleness_rule_for_the_cli_and_the_watchdog(config):
    # a pass may run its whole budget (5 x 5 s) after a timer period (10 s), plus the margin
    assert agent_status.stale_after(config) == 10 + 25 + 5
    assert Settings.from_config(config).STALE_AFTER == agent_status.stale_after(config)


def test_view_says_stale_only_past_the_rule(config):
    now = time.time()
    _publish(config.STATUS_FILE, now - 39)
    assert agent_status.view(config, now)["stale"] is False
    _publish(config.STATUS_FILE, now - 41)
    document = agent_status.view(config, now)
    assert document["stale"] is True and agent_status.exit_code(document) == 2
    assert not agent_status.healthy(document)


def test_the_newer_fallback_copy_is_the_status(config):
    now = time.time()
    _publish(config.STATUS_FILE, now - 100, health="ok")
    _publish(os.path.join(config.LOCK_FALLBACK_DIR, "status"), now - 1, health="failed")
    document = agent_status.view(config, now)
    assert document["health"] == "failed" and document["stale"] is False


def test_missing_status_is_unknown_not_running(config):
    document = agent_status.view(config)
    assert document["health"] == "unknown" and document["agent_running"] is False
    assert agent_status.exit_code(document) == 2


def test_running_needs_a_live_process_with_the_agents_command_line():
    assert not agent_status.running({"agent": {"pid": os.getpid()}})   # pytest is no agent
    assert not agent_status.running({"agent": {"pid": True}})
    assert not agent_status.running({"agent": {"pid": "1"}})
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             "iscsi-ha", "run"])
    try:
        import psutil
        for _ in range(200):          # until the child has exec'd (bounded: 10 s)
            if "run" in psutil.Process(proc.pid).cmdline():
                break
            time.sleep(0.05)
        assert agent_status.running({"agent": {"pid": proc.pid}})
    finally:
        proc.kill()
        proc.wait(10)
    assert not agent_status.running({"agent": {"pid": proc.pid}})
