"""A one-host rig for tests and benchmarks: one lab host (namespace, DRBD double, real tgtd
service script, real ip/arping) plus a neighbour namespace on the same bridge, without XAPI or
the scenario machinery. The agent runs as ``iscsi-ha run --once`` inside the namespace."""
import json
import os
import sys

from iscsi_ha_lab import netns
from iscsi_ha_lab.drbd_double import World, install_wrappers
from iscsi_ha_lab.host import LabHost


class Rig(object):
    resource = "iscsi1"
    iqn = "iqn.2026-11.test.iscsi-ha:rig"
    lun = 10
    vip = "192.0.2.100"
    smtp_address = "192.0.2.12"      # nobody listens there: mail to it fails fast, harmlessly
    smtp_port = 2525

    def __init__(self, directory, prefix, ctl, drbd_version="8.4"):
        self.directory = directory
        self.prefix = prefix
        self.bridge = prefix + "br"
        self.host = LabHost(self, "a", prefix + "a", "192.0.2.11", ctl)
        self.neighbour = prefix + "n"
        self.world = None
        self.drbd_version = drbd_version

    def up(self):
        netns.add_bridge(self.bridge)
        netns.add_namespace(self.host.ns)
        netns.attach_to_bridge(self.host.ns, self.bridge, self.prefix + "va", "eth0",
                               self.host.address + "/24")
        netns.add_namespace(self.neighbour)
        netns.attach_to_bridge(self.neighbour, self.bridge, self.prefix + "vn", "eth0",
                               "192.0.2.12/24")
        self.world = World.create(os.path.join(self.directory, "drbd"), hosts=("a", "b"),
                                  resources={self.resource: {"minor": 1, "size_mb": 8}},
                                  version=self.drbd_version)
        install_wrappers(self.host.bin, self.world.directory, "a")
        self.host.write_files(self.world, self.drbd_version, 10)
        self.set_pool("slave:192.0.2.12")

    def down(self):
        pid = self.host.tgtd_pid()
        if pid is not None:
            self.host.kill_tgtd()
        netns.cleanup(self.prefix)
        for suffix in ("", ".lock"):
            try:
                os.unlink("/var/run/tgtd/socket.%d%s" % (self.host.ctl, suffix))
            except OSError:
                pass

    def set_pool(self, content):
        with open(self.host.pool_conf, "w") as handle:
            handle.write(content)

    def run_once(self, *extra):
        """One agent pass in the host's namespace; (returncode, status document or None)."""
        proc = netns.exec_in(self.host.ns, [sys.executable, "-m", "iscsi_ha.cli.agent_main",
                                            "run", "--once", "--config",
                                            self.host.config_path] + list(extra),
                             timeout=120, env=self.host.env())
        self.last_stderr = proc.stderr
        self.last_stdout = proc.stdout
        try:
            with open(self.host.status_path) as handle:
                return proc.returncode, json.load(handle)
        except (OSError, IOError, ValueError):
            return proc.returncode, None

    def vip_local(self):
        out = netns.exec_in(self.host.ns, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                            timeout=5).stdout
        return (" %s/" % self.vip) in out

    def neighbour_takes_vip(self, take=True):
        verb = "add" if take else "del"
        netns.exec_in(self.neighbour, ["ip", "addr", verb, self.vip + "/24", "dev", "eth0"],
                      check=True)

    def exported_luns(self):
        proc = netns.exec_in(self.host.ns, ["tgtadm", "-C", str(self.host.ctl), "--lld",
                                            "iscsi", "--op", "show", "--mode", "target"],
                             timeout=5)
        if proc.returncode != 0:
            return None
        from iscsi_ha.adapters.target import parse_tgtadm_targets
        info = parse_tgtadm_targets(proc.stdout).get(self.iqn)
        return sorted(n for n in info.luns if n != 0) if info else []

    def role(self):
        return self.world.snapshot()["views"][self.resource]["a"]["role"]

