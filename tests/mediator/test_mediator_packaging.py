"""The mediator's RPMs (EL8/EL9) built by scripts/build-mediator-rpm, and its payload."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir)

pytestmark = pytest.mark.rpm


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpmbuild (apt-get install rpm)")
def test_build_mediator_rpms_payload(tmp_path):
    proc = subprocess.run([os.path.join(ROOT, "scripts", "build-mediator-rpm"), "--output",
                           str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rpms = proc.stdout.strip().splitlines()[-2:]
    assert [os.path.basename(r).split("-1.")[1] for r in rpms] == ["el8.noarch.rpm",
                                                                   "el9.noarch.rpm"]
    for rpm, python, req in ((rpms[0], "/usr/bin/python3.11", "python3.11"),
                             (rpms[1], "/usr/bin/python3", "python3 >= 3.9")):
        files = subprocess.run(["rpm", "-qlp", rpm], stdout=subprocess.PIPE,
                               universal_newlines=True, timeout=60).stdout.split()
        for path in ("/usr/bin/iscsi-ha-mediator",
                     "/usr/lib/systemd/system/iscsi-ha-mediator.service",
                     "/etc/iscsi-ha-mediator/mediator.conf", "/var/lib/iscsi-ha-mediator",
                     "/usr/lib/iscsi-ha-mediator/iscsi_ha_mediator/server.py"):
            assert path in files, path
        assert not any(f.endswith(".pyc") or "iscsi_ha/" in f for f in files)
        requires = subprocess.run(["rpm", "-qp", "--requires", rpm], stdout=subprocess.PIPE,
                                  universal_newlines=True, timeout=60).stdout
        assert req in requires and "openssl" in requires
        scripts = subprocess.run(["rpm", "-qp", "--scripts", rpm], stdout=subprocess.PIPE,
                                 universal_newlines=True, timeout=60).stdout
        assert "useradd -r" in scripts and "runuser -u iscsi-ha-mediator" in scripts
        out = tmp_path / ("x-" + os.path.basename(rpm))
        out.mkdir()
        rpm2cpio = subprocess.Popen(["rpm2cpio", rpm], stdout=subprocess.PIPE)
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=str(out),
                       timeout=60, check=True)
        rpm2cpio.wait(60)
        launcher = (out / "usr/bin/iscsi-ha-mediator").read_text()
        assert launcher.startswith("#!%s -s\n" % python)
        unit = (out / "usr/lib/systemd/system/iscsi-ha-mediator.service").read_text()
        assert "User=iscsi-ha-mediator" in unit and "StateDirectoryMode=0700" in unit
    # the payload's code runs: its CLI answers --version with this machine's Python
    proc = subprocess.run(["python3", "-s", str(out / "usr/bin/iscsi-ha-mediator"),
                           "--version"], stdout=subprocess.PIPE, universal_newlines=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(
                              out / "usr/lib/iscsi-ha-mediator")))
    assert proc.returncode == 0 and proc.stdout.strip()
