"""iscsi-cfg get and status --json: output and exit codes."""
import json
import os
import time

import pytest

from iscsi_ha import agent_status
from iscsi_ha import config as config_mod
from iscsi_ha.cli import cfg_main


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("DRBD_RESOURCES=iscsi1:iscsi2\nDRBD_VIRTUAL_IP=192.0.2.100\n"
                    "STATE_DIR=%s\nMONITOR_DELAY=10\n" % (tmp_path / "state"))
    return str(path)


def write_status(conf, **fields):
    config = config_mod.load(conf)
    document = {"updated": time.time(), "health": "ok", "agent": {"pid": os.getpid()},
                "pool": {"role": "master"}, "problems": []}
    document.update(fields)
    os.makedirs(os.path.dirname(config.STATUS_FILE), exist_ok=True)
    with open(config.STATUS_FILE, "w") as handle:
        json.dump(document, handle)


def run(capsys, *argv):
    code = cfg_main.main(list(argv))
    out, err = capsys.readouterr()
    return int(code), out, err


def test_get_prints_the_file_keys(conf, capsys):
    code, out, _ = run(capsys, "get", "--config", conf)
    assert code == 0
    assert "DRBD_RESOURCES=iscsi1:iscsi2" in out and "DRBD_VIRTUAL_IP=192.0.2.100" in out


def test_status_json_without_status_is_unknown_exit_2(conf, capsys):
    code, out, _ = run(capsys, "status", "--json", "--config", conf)
    doc = json.loads(out)
    assert code == 2 and doc["health"] == "unknown" and doc["agent_running"] is False


def test_status_json_exit_codes(conf, capsys, mocker):
    mocker.patch.object(agent_status, "running", return_value=True)
    write_status(conf)
    assert run(capsys, "status", "--json", "--config", conf)[0] == 0
    write_status(conf, health="degraded")
    assert run(capsys, "status", "--json", "--config", conf)[0] == 1
    write_status(conf, updated=time.time() - 3600)
    code, out, _ = run(capsys, "status", "--json", "--config", conf)
    assert code == 2 and json.loads(out)["stale"] is True


def test_agent_not_running_is_exit_2(conf, capsys):
    write_status(conf, agent={"pid": 999999999})
    code, out, _ = run(capsys, "status", "--json", "--config", conf)
    assert code == 2 and json.loads(out)["agent_running"] is False


def test_status_once_renders_a_banner_when_the_agent_is_down(conf, capsys):
    write_status(conf, agent={"pid": 999999999}, drbd={}, decision={"reason": "x"},
                 floating_ip={"address": "192.0.2.100/24", "local": False}, target=None)
    code, out, _ = run(capsys, "status", "--once", "--config", conf)
    assert code == 2 and "agent is not running" in out


def test_bad_arguments_exit_2(conf, capsys):
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "status", "--bogus", "--config", conf)[0] == 2


def test_invalid_config_exit_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.conf"
    bad.write_text("DRBD_VIRTUAL_IP=nope\n")
    code, _, err = run(capsys, "get", "--config", str(bad))
    assert code == 2 and "DRBD_VIRTUAL_IP (line 1)" in err
