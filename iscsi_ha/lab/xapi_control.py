"""The lab's pool as XAPI sees it: a FakePool with one endpoint per host, and the moves pool HA
or an admin makes (designate a new master, a master that dies, emergency transition)."""
import os

from iscsi_ha.lab.fake_xapi import FakePool


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
        self.pool.add_iscsi_sr("iscsi-ha", self.lab.vip, self.lab.iqn, "1IET_00010010")
        self.pool.start()

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
