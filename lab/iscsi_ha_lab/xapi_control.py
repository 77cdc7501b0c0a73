"""The lab's pool as XAPI sees it: a FakePool with one endpoint per host, and the moves pool HA
or an admin makes (designate a new master, a master that dies, emergency transition)."""
import os
import subprocess

from iscsi_ha_lab import netns
from iscsi_ha_lab.fake_xapi import FakePool, XapiError


class LabXapi(object):
    def __init__(self, lab):
        self.lab = lab
        self.pool = None
        self.refs = {}

    def start(self, master):
        """Create the pool with ``master`` as pool master and start every endpoint."""
        self.pool = FakePool(os.path.join(self.lab.directory, "xapi"))
        ordered = [master] + [h for h in self.lab.hosts if h is not master]
        for host in ordered:
            self.refs[host.name] = self.pool.add_host(
                "lab-" + host.name, host.address, host.pool_conf,
                uds_path=os.path.join(host.root, "xapi.sock"))
            with open(os.path.join(host.root, "xensource-inventory"), "w") as handle:
                handle.write("INSTALLATION_UUID='%s'\n" % self.pool.db.get(
                    "host", self.refs[host.name], "uuid"))
        self.sr = self.pool.add_iscsi_sr("iscsi-ha", self.lab.vip, self.lab.iqn,
                                         "1IET_00010010")
        for host in ordered:
            self.pool.set_pbd_handler(self.refs[host.name], self._plug_handler(host))
        self.pool.start()

    def _plug_handler(self, host):
        """Plugging an iSCSI PBD logs in to the target: done for real with libiscsi from the
        host's namespace, and refused as xapi's SM would refuse it when nothing answers."""
        def handler(pbd, record, attach):
            if not attach:
                return
            url = "iscsi://%s/%s/%d" % (record["device_config"]["target"], self.lab.iqn,
                                        self.lab.lun)
            try:
                found = netns.exec_in(host.ns, ["iscsi-inq", url], timeout=5)
            except subprocess.TimeoutExpired:
                found = None
            if found is None or found.returncode != 0:
                raise XapiError("SR_BACKEND_FAILURE_47", "",
                                "The SR is not available [opterr=no iSCSI target at %s]" % url,
                                "")
        return handler

    def pbd_of(self, host):
        ref = self.refs[host.name]
        return [p for p in self.pool.db.refs("PBD") if self.pool.db.get("PBD", p, "host") == ref
                and self.pool.db.get("PBD", p, "SR") == self.sr][0]

    def pbd_attached(self, host):
        return bool(self.pool.db.get("PBD", self.pbd_of(host), "currently_attached"))

    def drop_pbd(self, host):
        """What XenServer often does after a failover: the host's PBD is left unplugged."""
        self.pool.db.update("PBD", self.pbd_of(host), currently_attached=False)

    def stop(self):
        if self.pool is not None:
            self.pool.stop()
            self.pool = None

    def designate_new_master(self, host):
        self.pool.designate_new_master(self.refs[host.name])

    def master_dies(self, host):
        self.pool.master_dies(self.refs[host.name])

    def emergency_transition(self, host):
        self.pool.emergency_transition_to_master(self.refs[host.name])

    def host_returns(self, host, new_master):
        """The old master boots again and is recovered as a slave of ``new_master``."""
        self.pool.host_returns(self.refs[host.name])
        self.pool.recover_slaves()

    def hang(self, on):
        for ref in self.refs.values():
            endpoint = self.pool.endpoint(ref)
            if on:
                endpoint.inject_fault("hang")
            else:
                endpoint.clear_faults()
