"""The peer through XAPI (the fake pool runs the plugin functions we register for the peer) and
``iscsi-cfg switchover``: every refusal before any change, the happy path, the take-back."""
import json

import pytest

from iscsi_ha import model
from iscsi_ha import peer as peer_mod
from iscsi_ha.cli import switchover
from iscsi_ha.cli.context import CliError, Refused

from .conftest import drbd


def peer_document(**changes):
    document = {
        "hostname": "test-b", "agent_running": True, "stale": False, "health": "ok",
        "manual_mode": "off", "pool": {"role": "slave"},
        "drbd": dict((n, {"role": "Secondary", "peer_role": "Primary", "connection":
                          "Connected", "disk": "UpToDate", "peer_disk": "UpToDate",
                          "sync_percent": None}) for n in ("iscsi1", "iscsi2")),
        "target": {"running": False, "serving": False}, "floating_ip": {"local": False},
        "decision": {"reason": "no action: secondary as expected"}}
    document.update(changes)
    return document


class Peer(object):
    """The peer's plugin functions, as the fake XAPI runs them."""

    def __init__(self, fake, ref, host):
        self.host, self.calls = host, []
        self.document = peer_document()
        self.promote_ok = True
        for fn in ("status", "manual_mode", "become_primary", "identity"):
            fake.register_plugin(ref, "iscsi-ha", fn, self._handler(fn))

    def _handler(self, fn):
        def handle(args):
            self.calls.append((fn, dict(args)))
            return json.dumps(getattr(self, fn)(args))
        return handle

    def status(self, args):
        return self.document

    def manual_mode(self, args):
        return {"ok": True, "code": 0, "lines": ["manual mode on, role secondary"]}

    def become_primary(self, args):
        if not self.promote_ok:
            return {"ok": False, "code": 1, "lines": ["refusing to become primary: x"]}
        # the storage moved: this host now sees its peer Primary
        self.host.set_drbd(*[s._replace(peer_role="Primary") for s in self.host.states.values()])
        return {"ok": True, "code": 0, "lines": ["primary reached 0.40 s after the role change"],
                "elapsed_s": 0.4}

    def identity(self, args):
        return {"iqn": "iqn.2026-11.test.iscsi-ha:cli", "luns": {"10": "/dev/drbd1",
                                                                  "11": "/dev/drbd2"},
                "running": False, "exported": {}, "error": ""}


@pytest.fixture
def peer(host, pool):
    fake, _, ref = pool
    return Peer(fake, ref, host)


def test_peer_call_decodes_json_and_names_the_host(host, peer):
    answer = peer_mod.status(host.ctx)
    assert answer["hostname"] == "test-b" and answer["host"] == "test-b"


def test_peer_call_errors(host, pool):
    with pytest.raises(peer_mod.PeerError) as failed:
        peer_mod.status(host.ctx)
    assert "XENAPI_MISSING_PLUGIN" in str(failed.value)
    fake, _, ref = pool
    fake.register_plugin(ref, "iscsi-ha", "status", lambda args: "not json")
    with pytest.raises(peer_mod.PeerError) as failed:
        peer_mod.status(host.ctx)
    assert "not JSON" in str(failed.value)


def test_peer_unreachable_without_xapi(host):
    with pytest.raises(peer_mod.PeerError) as failed:
        peer_mod.status(host.ctx)
    assert "cannot reach the peer through XAPI" in str(failed.value)


def test_peer_watcher_reports_errors_as_text(host):
    watcher = peer_mod.PeerWatcher(host.ctx, timeout=0.5)
    document, error, at = watcher.fetch_once()
    assert document is None and "cannot reach the peer" in error and at > 0
    assert watcher.latest()[1] == error


# -- switchover ----------------------------------------------------------------------------------
def refused(host):
    with pytest.raises(Refused) as failed:
        switchover.switchover(host.ctx, timeout=5)
    assert host.manual() == model.MANUAL_OFF          # nothing was changed
    return str(failed.value)


def test_switchover_refuses_when_the_peer_cannot_be_reached(host):
    assert "cannot reach the peer through XAPI" in refused(host)


@pytest.mark.parametrize("change,words", [
    ({"manual_mode": "become_primary"}, "manual mode there says primary"),
    ({"agent_running": False}, "its agent is not running"),
    ({"floating_ip": {"local": True}}, "it holds the floating IP"),
    ({"target": {"running": True}}, "its target is running"),
    ({"decision": {"reason": "holding: x", "verdict": "blocked", "blockers": [
        {"kind": "split-brain", "resource": "iscsi1", "detail": "", "waits": False}]}},
     "split brain: iscsi1"),
    ({"decision": {"reason": "no action: words are never read", "verdict": "blocked",
                   "blockers": [{"kind": "no-uptodate-data", "resource": "iscsi1",
                                 "detail": "iscsi1: no UpToDate data here", "waits": False}]}},
     "refuses storage actions: iscsi1: no UpToDate data here"),
])
def test_switchover_refuses_a_peer_that_is_not_ready(host, peer, change, words):
    peer.document.update(change)
    assert words in refused(host)
    assert [c[0] for c in peer.calls] == ["status"]


def test_switchover_refuses_a_peer_resource_not_uptodate(host, peer):
    peer.document["drbd"]["iscsi2"]["disk"] = "Inconsistent"
    assert "test-b: iscsi2 is Secondary Connected Inconsistent" in refused(host)


def test_switchover_refuses_on_a_host_that_is_not_the_primary(host, peer):
    host.set_drbd(drbd("Secondary", "Primary", name="iscsi1"), drbd(name="iscsi2"))
    host.write_status(role="Secondary")
    message = refused(host)
    assert "iscsi1 is Secondary/Primary" in message and "target is not serving" in message


def test_switchover_refuses_when_disconnected(host, peer):
    host.set_drbd(drbd(peer_role="Unknown", connection="WFConnection", peer_disk="DUnknown",
                       name="iscsi1"), drbd(name="iscsi2"))
    assert "iscsi1 is Primary/Unknown WFConnection" in refused(host)


def test_switchover_moves_the_storage(host, peer):
    assert switchover.switchover(host.ctx, timeout=5) == 0
    assert [c[0] for c in peer.calls] == ["status", "manual_mode", "become_primary"]
    assert peer.calls[1][1] == {"mode": "enable"}
    assert peer.calls[2][1] == {"timeout": "5", "wait_peer": "5"}
    assert host.manual() == model.MANUAL_SECONDARY
    text = host.text()
    assert "secondary reached" in text and "peer: primary reached" in text
    assert "switchover done: test-b serves the storage" in text


def test_switchover_takes_the_storage_back_when_the_peer_fails(host, peer):
    peer.promote_ok = False
    with pytest.raises(CliError) as failed:
        switchover.switchover(host.ctx, timeout=5)
    assert "the storage is back on this host" in str(failed.value)
    assert host.manual() == model.MANUAL_PRIMARY
    assert "peer: refusing to become primary" in host.text()


def test_a_demotion_that_fails_here_ends_the_peers_wait_at_once(host, peer, pool):
    """The peer set "primary" beside this Primary host (the handoff) and waits for it to
    demote. When this host cannot demote, the peer is made secondary at once (its pending
    promotion then ends: its role changed) and the storage stays here; nothing waits out the
    peer's timeout."""
    import threading
    import time as time_mod
    fake, _, ref = pool
    released, order = threading.Event(), []

    def become_primary(args):
        order.append("become_primary")
        released.wait(20)                         # the peer's agent waits for our demote
        order.append("peer stopped waiting")
        return {"ok": False, "code": 1, "lines": ["manual mode was changed while this "
                                                  "command waited for the role primary"]}

    def become_secondary(args):
        order.append("become_secondary")
        host.agent.refuse = None                  # what blocked the demotion here is gone
        released.set()
        return {"ok": True, "code": 0, "lines": ["secondary reached"]}
    peer.become_primary = become_primary
    fake.register_plugin(ref, "iscsi-ha", "become_secondary", peer._handler("become_secondary"))
    peer.become_secondary = become_secondary
    host.agent.refuse = "refusing: the target will not stop"      # this host cannot demote
    host.ctx.clock = time_mod.monotonic
    real = host.agent

    def sleep(seconds):
        time_mod.sleep(0.01)
        real(seconds)
    host.ctx.sleep = sleep
    started = time_mod.monotonic()
    with pytest.raises(CliError) as failed:
        switchover.switchover(host.ctx, timeout=1)
    assert "the storage is back on this host" in str(failed.value)
    assert order[:3] == ["become_primary", "become_secondary", "peer stopped waiting"]
    assert time_mod.monotonic() - started < 15
