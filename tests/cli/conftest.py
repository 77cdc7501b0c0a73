"""Fixtures for the iscsi-cfg tests: a host with a config in tmp files, DRBD/VIP/target adapters
mocked at their boundary, a fake agent that answers manual-mode changes through the status file,
and a fake XAPI pool (the lab's FakePool, over Unix sockets) for the pool record and the peer."""
import json
import os
import time

import pytest

from iscsi_ha import agent_status
from iscsi_ha import config as config_mod, model
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.drbd import DrbdAdapter
from iscsi_ha.adapters.run import CommandError
from iscsi_ha.adapters.vip import VipAdapter, VipState
from iscsi_ha.cli import cfg_main
from iscsi_ha.cli.context import HostContext
from iscsi_ha.drbd import DrbdState, DrbdUnavailable
from iscsi_ha.lab.fake_xapi import FakePool

CONFIG = """# test host
DRBD_RESOURCES=iscsi1:iscsi2
DRBD_VIRTUAL_IP=192.0.2.100
DRBD_VIRTUAL_MASK=24
DRBD_INTERFACE=eth0
DRBD_VERSION=8.4
MONITOR_DELAY=10
ISCSI_TARGET_IQN=iqn.2026-11.test.iscsi-ha:cli
ISCSI_LUNS=10=/dev/drbd1,11=/dev/drbd2
STATE_DIR={root}/state
POOL_CONF={root}/pool.conf
XAPI_URL=unix://{root}/x.sock
XAPI_TIMEOUT=1.5
LOG_FILE={root}/agent.log
"""


def drbd(role="Primary", peer_role="Secondary", connection="Connected", disk="UpToDate",
         peer_disk="UpToDate", sync=None, name="iscsi1"):
    return DrbdState(name, None, role, peer_role, connection, disk, peer_disk, sync)


class FakeAgent(object):
    """Called instead of sleeping: one "pass" that makes the status follow the manual file."""

    def __init__(self, host):
        self.host = host
        self.enabled = True
        self.passes = 0
        self.refuse = None          # a decision reason to publish instead of acting

    def __call__(self, seconds):
        if not self.enabled:
            return
        self.passes += 1
        mode = manual_adapter.read_manual(self.host.config.MANUAL_FILE)
        role = {model.MANUAL_PRIMARY: "Primary", model.MANUAL_SECONDARY: "Secondary"}.get(mode)
        if self.refuse or role is None:
            self.host.write_status(manual_mode=mode, reason=self.refuse or "holding")
            return
        self.host.set_drbd(*[self.host.states[n]._replace(role=role)
                             for n in self.host.config.DRBD_RESOURCES])
        self.host.write_status(manual_mode=mode, role=role, reason="acted",
                               actions=[{"action": "promote iscsi1" if role == "Primary" else
                                         "demote iscsi1", "ok": True, "duration_s": 0.01,
                                         "detail": "", "skipped": False, "at": time.time()}])


class Host(object):
    def __init__(self, root, mocker):
        self.root = root
        self.path = os.path.join(root, "iscsi-ha.conf")
        with open(self.path, "w") as handle:
            handle.write(CONFIG.format(root=root))
        with open(os.path.join(root, "pool.conf"), "w") as handle:
            handle.write("master")
        self.config = config_mod.load(self.path)
        self.lines = []
        self.agent = FakeAgent(self)
        self.ctx = HostContext(self.config, say=self.lines.append, sleep=self.agent,
                               inventory=os.path.join(root, "inventory"))
        self.states = {}
        self.vip_local, self.vip_free, self.responders = False, True, []
        self.generations, self.out_of_sync = {}, {}
        # autospec: a change of the adapters' interface breaks these mocks (and the tests)
        mocker.patch.object(DrbdAdapter, "observe", autospec=True,
                            side_effect=lambda adapter: dict(self.states))
        mocker.patch.object(DrbdAdapter, "generations", autospec=True,
                            side_effect=lambda adapter, name: self._drbd_read(
                                self.generations, "drbdadm get-gi", name))
        mocker.patch.object(DrbdAdapter, "out_of_sync_kib", autospec=True,
                            side_effect=lambda adapter, name: self._drbd_read(
                                self.out_of_sync, "out of sync", name))
        self.dumps = {}             # drbdadm dump text per resource; none: drbdadm fails
        mocker.patch.object(DrbdAdapter, "dump", autospec=True,
                            side_effect=lambda adapter, name: self._dump(name))
        mocker.patch.object(VipAdapter, "observe", autospec=True,
                            side_effect=lambda adapter: self._vip_state())
        self.is_free = mocker.patch.object(VipAdapter, "is_free", autospec=True,
                                           side_effect=lambda adapter: self._free())
        mocker.patch.object(agent_status, "running", return_value=True)
        self.set_drbd(drbd(name="iscsi1"), drbd(name="iscsi2"))
        self.write_status(role="Primary")

    @staticmethod
    def _drbd_read(values, what, name):
        if name not in values:
            raise DrbdUnavailable("%s %s: not set up by this test" % (what, name))
        return values[name]

    def _dump(self, name):
        if name not in self.dumps:
            raise CommandError("drbd: drbdadm dump %s: exit 10: not set up by this test" % name)
        return self.dumps[name]

    def _vip_state(self):
        return VipState(self.vip_local, True, True, [], [])

    def _free(self):
        self.ctx.adapters.vip.last_responders = list(self.responders)
        return self.vip_free

    def set_drbd(self, *states):
        self.states = dict((s.resource, s) for s in states)

    def set_pool(self, text):
        with open(os.path.join(self.root, "pool.conf"), "w") as handle:
            handle.write(text)

    def manual(self):
        return manual_adapter.read_manual(self.config.MANUAL_FILE)

    def set_manual(self, mode):
        manual_adapter.write_manual(self.config.MANUAL_FILE, mode)

    def write_status(self, manual_mode="off", role=None, reason="no action", actions=()):
        primary = role == "Primary"
        document = {
            "updated": time.time(), "health": "ok", "hostname": "test-a",
            "agent": {"pid": os.getpid()}, "pool": {"role": "master"},
            "manual_mode": manual_mode, "desired_role": "",
            "pass": {"number": self.agent.passes, "started": time.time()},
            "drbd": dict((n, {"role": s.role, "peer_role": s.peer_role,
                              "connection": s.connection, "disk": s.disk,
                              "peer_disk": s.peer_disk, "sync_percent": s.sync_percent})
                         for n, s in self.states.items()),
            "target": {"running": primary, "serving": primary, "missing": [],
                       "connections": 0},
            "floating_ip": {"address": "192.0.2.100/24", "interface": "eth0",
                            "local": primary},
            "decision": {"reason": reason, "healthy": True, "actions": []},
            "last_actions": list(actions), "problems": []}
        os.makedirs(os.path.dirname(self.config.STATUS_FILE), exist_ok=True)
        with open(self.config.STATUS_FILE, "w") as handle:
            json.dump(document, handle)
        return document

    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def host(tmp_path, mocker):
    made = Host(str(tmp_path), mocker)
    try:
        yield made
    finally:
        made.ctx.close()


@pytest.fixture
def pool(tmp_path):
    """A fake XAPI pool: this test host (its pool.conf, its socket) is the master, plus a peer.
    Yields (pool, this host ref, peer ref)."""
    fake = FakePool(str(tmp_path / "xapi"), fuse_delay=0.2, restart_delay=0.1,
                    live_timeout=0.2, hang_limit=10.0)
    me = fake.add_host("test-a", "192.0.2.11", str(tmp_path / "pool.conf"),
                       uds_path=str(tmp_path / "x.sock"), tcp=False)
    peer = fake.add_host("test-b", "192.0.2.12", str(tmp_path / "b-pool.conf"),
                         uds_path=str(tmp_path / "b.sock"), tcp=False)
    try:
        fake.start()
        yield fake, me, peer
    finally:
        fake.stop()


def other_config(fake):
    return dict(fake.db.get("pool", fake.pool_ref, "other_config"))


def host_uuid(fake, ref):
    return fake.db.get("host", ref, "uuid")
