"""Fencing in the lab (issue 12): every fencing scenario on DRBD 8.4 and 9 (zero lost
acknowledged writes, checker clean), and one story driven only through the CLI of a running
``iscsi-ha-lab up``. Needs root, tgt, libiscsi, arping (see README); run under the lab lock."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab_fixture import running_lab
from iscsi_ha_lab.lab import missing_prerequisites
from iscsi_ha_lab.paths import pythonpath
from iscsi_ha_lab.scenarios import run_scenario
from iscsi_ha_lab.scenarios_fencing import __doc__ as _doc  # noqa: F401  (registers them)

pytestmark = pytest.mark.lab
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FENCING = ["fence-link-cut", "fence-link-cut-then-crash", "fence-primary-crash",
           "fence-isolated-primary", "fence-not-configured", "fence-forced-promotion"]


@pytest.fixture(scope="module", params=["8.4", "9"])
def lab(request, tmp_path_factory):
    yield from running_lab(tmp_path_factory, tag="f" + request.param.replace(".", ""),
                           drbd_version=request.param)


@pytest.mark.parametrize("name", FENCING)
def test_fencing_scenario(lab, name):
    result = run_scenario(lab, name)
    print("DRBD %s %s: longest I/O pause %.3f s, lost writes %s" % (
        lab.drbd_version, name, result.io_pause_s, result.lost_writes))
    assert result.failures == []
    assert result.passed and result.lost_writes == 0


def _cli(directory, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "iscsi_ha_lab.cli", "--dir", directory] +
                          list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=pythonpath()))


def _status(directory):
    proc = _cli(directory, "status", "--json")
    assert proc.returncode == 0, proc.stdout
    return json.loads(proc.stdout)


def _until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.5)


def test_link_cut_story_through_the_cli_only(tmp_path):
    """The README's rehearsal: up, write, cut the link, write (after the handler), heal, read
    everything back, no violation."""
    problems = missing_prerequisites()
    if problems:
        pytest.skip("; ".join(problems))
    directory = str(tmp_path / "lab")
    os.makedirs(directory)
    log = open(str(tmp_path / "up.log"), "wb")
    # a prefix of its own: never the admin's default lab (ihl-), never another test's
    prefix = "ihc%d-" % (os.getpid() % 10000)
    up = subprocess.Popen([sys.executable, "-m", "iscsi_ha_lab.cli", "--dir", directory,
                           "--prefix", prefix, "up"],
                          stdout=log, stderr=log, env=dict(os.environ, PYTHONPATH=pythonpath()),
                          start_new_session=True)
    try:
        _until(lambda: os.path.exists(os.path.join(directory, "control.sock")), 120,
               "iscsi-ha-lab up")

        def settled():
            hosts = _status(directory)["hosts"]
            return hosts["a"]["agent"]["serving"] and hosts["b"]["drbd"]["disk"] == "UpToDate"
        _until(settled, 60, "a serving, b UpToDate")
        assert _cli(directory, "client", "write", "7", "before the cut").returncode == 0
        assert _cli(directory, "fault", "cut-replication").returncode == 0
        _until(lambda: _status(directory)["hosts"]["b"]["drbd"]["disk"] == "Outdated", 30,
               "b outdated by a's fence-peer handler")
        assert _status(directory)["hosts"]["a"]["drbd"]["suspended"] is False
        write = _cli(directory, "client", "write", "8", "while the link is down")
        assert write.returncode == 0, write.stdout
        assert _cli(directory, "fault", "heal-replication").returncode == 0
        _until(lambda: _status(directory)["hosts"]["b"]["drbd"]["disk"] == "UpToDate", 60,
               "resync")
        for lba, text in ((7, "before the cut"), (8, "while the link is down")):
            read = _cli(directory, "client", "read", str(lba))
            assert read.returncode == 0 and json.loads(read.stdout)["text"] == text
        status = _status(directory)
        assert status["violations"] == []
        assert [w["lba"] for w in status["acknowledged_writes"]] == [7, 8]
        refused = _cli(directory, "fault", "no-such-fault")
        assert refused.returncode == 2 and "unknown fault" in refused.stdout
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        log.close()
