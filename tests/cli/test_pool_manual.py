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
        self.value, self.writes, self.other = "peer=enable", 0, {}

    def pool_other_config(self):
        return dict(self.other, MANUAL_MODE=self.value)

    def set_pool_other_config_key(self, key, value):
        if key != "MANUAL_MODE":
            self.other[key] = value
            return
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
    assert pool_manual.parse_changes(racing.other["MANUAL_MODE_CHANGED"])["me"][0] == "primary"


def _record(fake, me, word, at=None, by="root@test-b"):
    uuid = host_uuid(fake, me)
    values = {"MANUAL_MODE": "other=primary,%s=%s" % (uuid, word)}
    if at is not None:
        values["MANUAL_MODE_CHANGED"] = "%s=%s;%.3f;%s" % (uuid, word, at, by)
    fake.db.update("pool", fake.pool_ref, other_config=values)


def test_disable_while_xapi_is_unreachable_is_pushed_not_undone(host, pool):
    """Issue 10 (3): manual-mode-disable while XAPI is down; at the next agent start (and by the
    daemon's sync) the newer local choice goes to the pool record, never the reverse."""
    from .conftest import other_config
    fake, me, _ = pool
    _record(fake, me, "enable", at=1000.0)
    endpoint = fake.endpoint(me)
    endpoint.stop()                                     # XAPI unreachable
    host.set_manual(model.MANUAL_OFF)                   # the admin's disable, not published
    assert pool_manual.publish_and_say(host.ctx, model.MANUAL_OFF) is False
    assert pool_manual.restore_local(host.ctx) is None  # agent start, XAPI still down
    assert host.manual() == model.MANUAL_OFF
    endpoint.start()                                    # XAPI back
    assert pool_manual.restore_local(host.ctx) is None
    assert host.manual() == model.MANUAL_OFF
    values = other_config(fake)
    assert pool_manual.parse(values["MANUAL_MODE"]) == {"other": "primary"}
    word, at, by = pool_manual.parse_changes(values["MANUAL_MODE_CHANGED"])[host_uuid(fake, me)]
    assert word == "off" and at > 1000.0 and "@" in by
    assert pool_manual.pending(host.ctx) is None        # published now
    assert pool_manual.restore_local(host.ctx) is None  # and it stays so
    assert host.manual() == model.MANUAL_OFF


def test_a_legacy_record_without_times_does_not_undo_a_local_change(host, pool):
    fake, me, _ = pool
    _record(fake, me, "secondary")                      # HA-Lizard's record: no time
    host.set_manual(model.MANUAL_OFF)
    assert pool_manual.restore_local(host.ctx) is None
    assert host.manual() == model.MANUAL_OFF


def test_a_newer_pool_entry_wins_over_an_older_local_change(host, pool):
    import time
    fake, me, _ = pool
    host.set_manual(model.MANUAL_HOLD)
    assert pool_manual.publish_and_say(host.ctx, model.MANUAL_HOLD)
    _record(fake, me, "secondary", at=time.time() + 5, by="admin@test-b")
    assert pool_manual.restore_local(host.ctx) == model.MANUAL_SECONDARY
    assert host.manual() == model.MANUAL_SECONDARY
    from iscsi_ha.adapters import manual as manual_adapter
    change = manual_adapter.read_change(host.config.MANUAL_FILE)
    assert change["by"] == "admin@test-b" and change["published"]


def test_record_sync_pushes_a_pending_change_once_xapi_answers(host, pool):
    from .conftest import other_config
    fake, me, _ = pool
    _record(fake, me, "enable", at=1000.0)
    host.set_manual(model.MANUAL_PRIMARY)
    sync = pool_manual.RecordSync(lambda: host.ctx)
    host.ctx.close = lambda: None                       # the fixture closes it
    sync.once()
    assert pool_manual.parse(other_config(fake)["MANUAL_MODE"])[host_uuid(fake, me)] == "primary"
    assert pool_manual.pending(host.ctx) is None
