"""The command runner: timeouts kill the whole process group, output is captured."""
import os
import time

import psutil
import pytest

from iscsi_ha.adapters.run import CommandError, run, split_command


def test_captures_output_and_exit_code():
    result = run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and "exit 3: err" in result.describe()


def test_timeout_kills_the_child_and_its_children(tmp_path):
    pidfile = tmp_path / "grandchild"
    result = run(["sh", "-c", "sleep 30 & echo $! > %s; wait" % pidfile], timeout=0.5)
    assert result.timed_out and not result.ok
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != \
        psutil.STATUS_ZOMBIE
    assert not alive
    assert "timed out" in result.describe()


def test_check_raises_with_the_result():
    with pytest.raises(CommandError) as info:
        run(["false"], timeout=5, check=True)
    assert info.value.result.returncode == 1


def test_missing_executable_raises():
    with pytest.raises(CommandError) as info:
        run(["/nonexistent/tool"], timeout=5)
    assert "/nonexistent/tool" in str(info.value)


def test_refuses_to_run_without_a_timeout():
    with pytest.raises(CommandError):
        run(["true"], timeout=0)


def test_split_command_keeps_arguments():
    assert split_command("tgtadm -C 3 --lld iscsi") == ["tgtadm", "-C", "3", "--lld", "iscsi"]
