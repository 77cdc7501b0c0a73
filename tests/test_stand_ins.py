"""The stand-ins of tests/conftest.py: a unit test that runs drbdadm (or tgtadm, arping, xe,
systemctl, drbdsetup) fails on every machine, whether the real program is installed or not."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
CHECKOUT = os.pathsep.join([ROOT, os.path.join(ROOT, "lab")])   # the product and the lab

TESTS = '''
import os
import subprocess
import pytest

def test_reaches_drbdadm():
    subprocess.run(["drbdadm", "get-gi", "iscsi1"], stderr=subprocess.PIPE)

def test_reaches_nothing():
    assert True

def test_reaches_the_default_arping():
    from iscsi_ha import config
    subprocess.run([config.loads("").ARPING, "-V"], stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)

@pytest.mark.reaches_host_programs
def test_means_to_reach_tgtadm():
    proc = subprocess.run(["tgtadm", "--help"], stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 127 and "test reached host program tgtadm" in proc.stderr

@pytest.mark.netns
def test_netns_tests_see_the_real_path():
    assert "stand-ins" not in os.environ["PATH"]
'''


def test_a_unit_test_that_reaches_a_host_program_fails(tmp_path):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), str(tmp_path / "conftest.py"))
    shutil.copy(os.path.join(ROOT, "pytest.ini"), str(tmp_path / "pytest.ini"))
    (tmp_path / "test_generated.py").write_text(TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--rootdir", str(tmp_path),
         "-o", "testpaths=.", str(tmp_path / "test_generated.py")],
        cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=CHECKOUT), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "test reached host program(s) it did not set up: drbdadm get-gi iscsi1" in out
    assert "ERROR at teardown of test_reaches_drbdadm" in out
    # an absolute-path default (ARPING=/sbin/arping) reaches a stand-in too, not the host's
    assert "ERROR at teardown of test_reaches_the_default_arping" in out
    assert "it did not set up: arping -V" in out
    assert "4 passed" in out and "2 errors" in out, out


SKIPS = '''
import pytest

def test_needs_something_ci_installs():
    pytest.skip("needs frobnicator (Debian package frob)")

def test_cannot_reach_pypi():
    pytest.skip("the wheels could not be fetched (PyPI unreachable, none cached)")
'''


def test_in_ci_a_skip_for_something_installable_fails(tmp_path):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), str(tmp_path / "conftest.py"))
    shutil.copy(os.path.join(ROOT, "pytest.ini"), str(tmp_path / "pytest.ini"))
    (tmp_path / "test_generated.py").write_text(SKIPS)
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "--rootdir", str(tmp_path), "-o",
            "testpaths=.", str(tmp_path / "test_generated.py")]
    for required, code, summary in (("1", 1, "1 failed, 1 skipped"), ("", 0, "2 skipped")):
        proc = subprocess.run(argv, cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=CHECKOUT,
                                       ISCSI_HA_REQUIRE_TOOLS=required))
        assert proc.returncode == code and summary in proc.stdout, proc.stdout
