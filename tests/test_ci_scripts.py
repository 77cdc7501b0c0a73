"""CI's own scripts: a real Python 3.6 or a clear failure (never a check run under 3.11 that
passes), and .ci/run makes sure of make and git and of Python 3.6 before it runs make."""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def run(argv, **env):
    return subprocess.run(argv, env=dict(os.environ, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, cwd=ROOT)


def test_find_python36_refuses_a_python_that_is_not_36():
    proc = run([os.path.join(ROOT, "scripts", "find-python36")],
               ISCSI_HA_CHECK_PYTHON=sys.executable)
    if sys.version_info[:2] != (3, 6):
        assert proc.returncode == 1 and proc.stdout == ""
        assert "is not a runnable CPython 3.6" in proc.stderr


def test_find_python36_answers_a_36_that_really_runs():
    proc = run([os.path.join(ROOT, "scripts", "find-python36")])
    if proc.returncode == 0:
        found = proc.stdout.strip()
        version = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"],
                                 stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert version.stdout.strip() == "(3, 6)"
    else:
        assert "no CPython 3.6 found" in proc.stderr and "pyenv install" in proc.stderr


def test_payload_check_fails_without_python_36_before_building(tmp_path):
    proc = run([os.path.join(ROOT, "scripts", "rpm-payload-check"), "--rpm",
                str(tmp_path / "none.rpm")], ISCSI_HA_CHECK_PYTHON=sys.executable)
    assert proc.returncode == 1
    assert "no CPython 3.6 to import the payload with" in proc.stderr
    assert "== building" not in proc.stdout


def test_ci_run_checks_python_36_before_make(tmp_path):
    """make and git present (as stand-ins that record a call), no Python 3.6: .ci/run fails
    saying so and never reaches make."""
    record = tmp_path / "called"
    for tool in ("make", "git"):
        path = tmp_path / tool
        path.write_text("#!/bin/sh\necho %s >> '%s'\n" % (tool, record))
        path.chmod(0o755)
    proc = run([os.path.join(ROOT, ".ci", "run")], ISCSI_HA_CHECK_PYTHON=sys.executable,
               PATH=str(tmp_path) + os.pathsep + os.environ["PATH"])
    if sys.version_info[:2] != (3, 6):
        assert proc.returncode == 1 and "FAILED: no CPython 3.6" in proc.stderr
        assert not record.exists()
