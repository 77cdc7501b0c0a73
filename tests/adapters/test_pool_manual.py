"""pool.conf parsing (xapi's format) and the manual-mode state file."""
import os

import pytest

from iscsi_ha import model
from iscsi_ha.adapters import manual
from iscsi_ha.adapters.pool import parse_pool_conf, read_pool_role


@pytest.mark.parametrize("text,role,address", [
    ("master", model.MASTER, ""),
    ("master\n", model.MASTER, ""),
    ("slave:192.0.2.11", model.SLAVE, "192.0.2.11"),
    ("slave:192.0.2.11\n", model.SLAVE, "192.0.2.11"),
    ("slave:2001:db8::1", model.SLAVE, "2001:db8::1"),   # split on the first ':' only
    ("broken", model.BROKEN, ""),
    ("slave:", model.UNKNOWN, ""),
    ("Master", model.UNKNOWN, ""),
    ("", model.UNKNOWN, ""),
    ("garbage text", model.UNKNOWN, ""),
])
def test_parse_pool_conf(text, role, address):
    parsed = parse_pool_conf(text)
    assert (parsed.role, parsed.master_address) == (role, address)


def test_unknown_content_is_named_in_the_detail():
    assert "garbage" in parse_pool_conf("garbage").detail


def test_missing_pool_conf(tmp_path):
    role = read_pool_role(str(tmp_path / "pool.conf"))
    assert role.role == model.MISSING and "does not exist" in role.detail


def test_unreadable_pool_conf_is_unknown(tmp_path):
    path = tmp_path / "pool.conf"
    path.mkdir()                       # a directory cannot be read as a file
    assert read_pool_role(str(path)).role == model.UNKNOWN


def test_manual_mode_round_trip(tmp_path):
    path = str(tmp_path / "state" / "manual")
    assert manual.read_manual(path) == model.MANUAL_OFF
    for mode in (model.MANUAL_HOLD, model.MANUAL_PRIMARY, model.MANUAL_SECONDARY):
        manual.write_manual(path, mode)
        assert manual.read_manual(path) == mode
    manual.write_manual(path, model.MANUAL_OFF)
    assert not os.path.exists(path)
    manual.write_manual(path, model.MANUAL_OFF)       # idempotent


def test_halizard_manual_file_contents_are_understood(tmp_path):
    path = tmp_path / "manual"
    path.write_text("become_primary")                 # HA-Lizard writes it without newline
    assert manual.read_manual(str(path)) == model.MANUAL_PRIMARY
    path.write_text("")
    assert manual.read_manual(str(path)) == model.MANUAL_HOLD


def test_garbage_manual_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "manual"
    path.write_text("become_master")
    with pytest.raises(manual.ManualModeError) as info:
        manual.read_manual(str(path))
    assert "become_master" in str(info.value) and str(path) in str(info.value)
