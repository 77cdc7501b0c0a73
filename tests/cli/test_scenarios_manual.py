"""Helpers of the manual-mode lab scenarios that can be checked without a lab: the I/O pause
around one move, and the floating IP's gap read from the agents' logs."""
import json
import logging
import os
import time
import types

from iscsi_ha_lab import scenarios_manual
from iscsi_ha_lab.probe import GOOD


def test_io_pause_is_the_longest_gap_around_the_move(tmp_path):
    os.makedirs(str(tmp_path / "probe"))
    ends = [1.0, 1.1, 1.2, 2.9, 3.0, 3.1, 9.0, 9.5, 9.6]        # 1.7 s gap around the move
    with open(str(tmp_path / "probe" / "s.jsonl"), "w") as handle:
        handle.write(json.dumps({"kind": "start"}) + "\n")
        for end in ends:
            handle.write(json.dumps({"kind": "write", "status": GOOD, "t_end": end}) + "\n")
        handle.write(json.dumps({"kind": "write", "status": "error", "t_end": 2.0}) + "\n")
        handle.write('{"kind": "wri')                         # a line being written
    lab = types.SimpleNamespace(directory=str(tmp_path))
    run = types.SimpleNamespace(name="s")
    assert abs(scenarios_manual.io_pause(lab, run, 1.5, 3.05) - 1.7) < 1e-9
    assert abs(scenarios_manual.io_pause(lab, run, 3.2, 3.3) - 5.9) < 1e-9   # the later gap
    assert scenarios_manual.io_pause(lab, run, 20.0, 21.0, timeout=0.2) is None


def test_vip_changes_from_the_agent_log(tmp_path):
    """Lines written by the agent's own file logging (iscsi_ha.logsetup), as in the lab."""
    from iscsi_ha import logsetup
    path = str(tmp_path / "agent.log")
    since = time.time()
    logger = logging.getLogger(logsetup.TAG)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    log = logsetup.setup(types.SimpleNamespace(ENABLE_LOGGING=True, SYSLOG_SOCKET="",
                                               LOG_FILE=path), stderr=False)
    try:
        log.info("floating IP: %s", "ip addr del 192.0.2.100/24 dev eth0")
        time.sleep(0.05)
        log.info("floating IP: %s", "ip addr add 192.0.2.100/24 dev eth0")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        for handler in saved[2]:
            logger.addHandler(handler)
    host = types.SimpleNamespace(root=str(tmp_path))
    deleted = scenarios_manual._vip_changes(host, "del", since)
    added = scenarios_manual._vip_changes(host, "add", since)
    assert len(deleted) == 1 and len(added) == 1
    assert 0.04 <= added[0] - deleted[0] < 1.0
    assert scenarios_manual._vip_changes(host, "add", since + 3600) == []
