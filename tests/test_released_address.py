"""When the new holder may shorten duplicate-address detection: only after an orderly demote."""
import pytest

from iscsi_ha import model
from iscsi_ha.agent import peer_released_address
from iscsi_ha.drbd import DrbdState


def _obs(*states):
    drbd = dict(("r%d" % i, s) for i, s in enumerate(states))
    return model.Observation(pool=model.PoolRole(model.MASTER), manual=model.MANUAL_OFF,
                             drbd=drbd, resources=tuple(sorted(drbd)))


def _state(role, peer_role, connection, disk="UpToDate", peer_disk="UpToDate"):
    return DrbdState(None, 1, role, peer_role, connection, disk, peer_disk)


@pytest.mark.parametrize("states, released", [
    ([_state("Secondary", "Secondary", "Connected")], True),            # peer demoted in order
    ([_state("Secondary", "Primary", "Connected")], False),             # peer still Primary
    ([_state("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown")], False),  # crash
    ([_state("Secondary", "Unknown", "StandAlone", peer_disk="DUnknown")], False),
    ([_state("Secondary", "Secondary", "Connected"),
      _state("Secondary", "Unknown", "WFConnection", peer_disk="DUnknown")], False),
    ([], False),
])
def test_peer_released_address(states, released):
    assert peer_released_address(_obs(*states)) is released
