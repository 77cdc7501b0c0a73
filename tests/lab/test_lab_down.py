"""`iscsi-ha-lab down` removes what a crashed lab left behind (a separate module, so that no
lab fixture is alive while it runs)."""
import pytest

from iscsi_ha.lab import netns
from iscsi_ha.lab.lab import PREFIX, Lab, missing_prerequisites

pytestmark = pytest.mark.lab


def test_down_removes_a_crashed_lab(tmp_path):
    if missing_prerequisites():
        pytest.skip("needs root and the lab's packages")
    # What a crashed lab leaves: namespaces and a bridge with the lab's prefix.
    netns.add_bridge(PREFIX + "br")
    netns.add_namespace(PREFIX + "a")
    Lab(str(tmp_path)).down()
    assert not [n for n in netns.list_namespaces() if n.startswith(PREFIX)]
    assert netns.list_links(PREFIX) == []
