"""The pool record MANUAL_MODE in HA-Lizard's format, the inventory file, and restoring the local
manual mode file from the pool record."""
from iscsi_ha import model
from iscsi_ha.cli import pool_manual

from .conftest import host_uuid


def test_parse_and_render_halizard_format():
    value = "u-a=enable,u-b=primary"
    assert list(pool_manual.parse(value).items()) == [("u-a", "enable"), ("u-b", "primary")]
    assert pool_manual.render(pool_manual.parse(value)) == value
    assert pool_manual.parse("") == {}
    assert list(pool_manual.parse(" u-a = secondary ,junk,u-c=maybe").items()) == [
        ("u-a", "secondary")]


def test_with_entry_replaces_appends_and_removes():
    assert pool_manual.with_entry("", "u-a", model.MANUAL_HOLD) == "u-a=enable"
    assert pool_manual.with_entry("u-a=enable", "u-b", model.MANUAL_SECONDARY) == \
        "u-a=enable,u-b=secondary"
    assert pool_manual.with_entry("u-a=enable,u-b=secondary", "u-a", model.MANUAL_PRIMARY) == \
        "u-a=primary,u-b=secondary"
    assert pool_manual.with_entry("u-a=enable,u-b=secondary", "u-a", model.MANUAL_OFF) == \
        "u-b=secondary"


def test_inventory_uuid(tmp_path):
    # The xensource-inventory layout: KEY='value' lines (xenapi.md, section 3).
    path = tmp_path / "inventory"
    path.write_text("BUILD_NUMBER='release/yangtze'\nINSTALLATION_UUID='6e1ac2b4-xx'\n")
    assert pool_manual.read_inventory_uuid(str(path)) == "6e1ac2b4-xx"
    assert pool_manual.read_inventory_uuid(str(tmp_path / "missing")) is None
    path.write_text("OTHER=1\n")
    assert pool_manual.read_inventory_uuid(str(path)) is None


def test_restore_local_from_the_pool_record(host, pool):
    fake, me, _ = pool
    fake.db.update("pool", fake.pool_ref, other_config={
        "MANUAL_MODE": "other=primary,%s=secondary" % host_uuid(fake, me)})
    assert pool_manual.restore_local(host.ctx) == model.MANUAL_SECONDARY
    assert host.manual() == model.MANUAL_SECONDARY
    host.set_manual(model.MANUAL_HOLD)                 # a local file is never overridden
    assert pool_manual.restore_local(host.ctx) is None
    assert host.manual() == model.MANUAL_HOLD


def test_restore_local_without_xapi_does_nothing(host):
    assert pool_manual.restore_local(host.ctx) is None
    assert host.manual() == model.MANUAL_OFF


class RacingXapi(object):
    """The peer rewrites MANUAL_MODE (dropping this host's entry) right after our first write."""

    def __init__(self):
        self.value, self.writes = "peer=enable", 0

    def pool_other_config(self):
        return {"MANUAL_MODE": self.value}

    def set_pool_other_config_key(self, key, value):
        self.writes += 1
        self.value = value if self.writes > 1 else "peer=primary"     # lost update

    def call(self, method, *args):
        return "me"

    def this_host(self):
        return "OpaqueRef:me"

    def close(self):
        pass


def test_publish_survives_a_concurrent_rewrite_of_the_pool_record(host, mocker):
    racing = RacingXapi()
    mocker.patch.object(host.ctx, "xapi", return_value=racing)
    mocker.patch.object(pool_manual, "read_inventory_uuid", return_value="me")
    assert "me=primary" in pool_manual.publish(host.ctx, model.MANUAL_PRIMARY)
    assert pool_manual.parse(racing.value) == {"peer": "primary", "me": "primary"}
    assert racing.writes == 2
