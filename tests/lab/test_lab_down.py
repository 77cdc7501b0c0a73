"""`iscsi-ha-lab down` removes what a crashed lab left behind; `up` never removes what another
lab (or an admin) created with the same prefix, and two labs with different prefixes share
nothing (a separate module, so that no lab fixture is alive while it runs)."""
import json
import os
import subprocess
import sys

import pytest

from iscsi_ha_lab.paths import pythonpath
from iscsi_ha_lab import lab as lab_mod, netns
from iscsi_ha_lab.lab import Lab, LabError, control_ports, missing_prerequisites

pytestmark = pytest.mark.lab


def _prefix(tag):
    return "ih%s%d-" % (tag, os.getpid() % 10000)


@pytest.fixture
def prefix():
    if missing_prerequisites():
        pytest.skip("needs root and the lab's packages")
    made = _prefix("d")
    try:
        yield made
    finally:
        netns.cleanup(made)


def test_down_removes_a_crashed_lab(tmp_path, prefix):
    # What a crashed lab leaves: namespaces and a bridge with the lab's prefix.
    netns.add_bridge(prefix + "br")
    netns.add_namespace(prefix + "a")
    Lab(str(tmp_path), prefix=prefix).down()
    assert not [n for n in netns.list_namespaces() if n.startswith(prefix)]
    assert netns.list_links(prefix) == []


def test_up_refuses_namespaces_it_did_not_create_and_leaves_them(tmp_path, prefix):
    netns.add_namespace(prefix + "a")              # someone else's (another lab, an admin)
    netns.add_bridge(prefix + "br")
    lab = Lab(str(tmp_path / "mine"), prefix=prefix)
    with pytest.raises(LabError) as info:
        try:
            lab.up(start_agents=False)
        finally:
            lab.down()                             # what every caller does after a failure
    message = str(info.value)
    assert prefix + "a" in message and prefix + "br" in message
    assert "iscsi-ha-lab --prefix %s down" % prefix in message
    assert prefix + "a" in netns.list_namespaces()              # still there
    assert netns.list_links(prefix) == [prefix + "br"]


def test_up_clears_what_its_own_crashed_run_recorded(tmp_path, prefix):
    lab = Lab(str(tmp_path), prefix=prefix)
    os.makedirs(lab.directory, exist_ok=True)
    lab._record()                                   # a crashed run of this same lab
    netns.add_namespace(prefix + "a")
    assert lab.foreign() == []
    lab.refuse_foreign()
    lab.down()
    assert prefix + "a" not in netns.list_namespaces()
    assert not os.path.exists(os.path.join(lab.directory, lab_mod.RECORD))
    # a record written for another prefix does not count
    with open(os.path.join(lab.directory, lab_mod.RECORD), "w") as handle:
        json.dump({"prefix": "other-", "namespaces": [prefix + "a"], "links": []}, handle)
    netns.add_namespace(prefix + "a")
    assert lab.foreign() == [prefix + "a"]


def test_the_cli_refusal_is_one_line_and_takes_nothing_down(tmp_path, prefix):
    netns.add_namespace(prefix + "c")
    env = dict(os.environ, ISCSI_HA_LAB_PREFIX=prefix, ISCSI_HA_LAB_DIR=str(tmp_path / "lab"),
               PYTHONPATH=pythonpath())
    proc = subprocess.run([sys.executable, "-m", "iscsi_ha_lab.cli", "demo"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "did not create" in proc.stderr and prefix + "c" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert prefix + "c" in netns.list_namespaces()


def test_two_prefixes_share_no_name_and_no_tgtd_socket(tmp_path):
    one, two = Lab(str(tmp_path / "1"), prefix="ihl-"), Lab(str(tmp_path / "2"), prefix="ihq-")
    assert not set(sum(one.names(), [])) & set(sum(two.names(), []))
    assert control_ports("ihl-") == (11, 12)
    assert not set(control_ports("ihq-")) & {11, 12}
    assert [h.ctl for h in two.hosts] == list(control_ports("ihq-"))
    with pytest.raises(LabError, match="lab prefix"):
        Lab(str(tmp_path), prefix="Way-Too-Long-Prefix")
