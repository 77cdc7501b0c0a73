"""Builds the adapters from the configuration and turns their answers into observations.

Every observation helper catches the adapter's errors and reports them as data, so that a pass
always completes and the policy decides what an unreadable state means (nothing is done on a
guess).
"""
import logging
import time

from iscsi_ha import model
from iscsi_ha.adapters.drbd import DrbdAdapter
from iscsi_ha.adapters.target import TargetAdapter
from iscsi_ha.adapters.vip import VipAdapter

log = logging.getLogger("iscsi-ha")


class Adapters(object):
    """The three storage adapters of one host."""

    def __init__(self, drbd, target, vip):
        self.drbd = drbd
        self.target = target
        self.vip = vip

    @classmethod
    def from_config(cls, config):
        drbd = DrbdAdapter(config.DRBD_RESOURCES, version=config.DRBD_VERSION,
                           drbdadm=config.DRBD_ADM,
                           drbdsetup=config.DRBD_SETUP, proc_drbd=config.DRBD_PROC,
                           timeout=config.DRBD_TIMEOUT)
        target = TargetAdapter(config.ISCSI_TARGET_IQN or None, config.ISCSI_LUNS,
                               service=config.ISCSI_TARGET_SERVICE,
                               status_cmd=config.TARGET_STATUS_COMMAND,
                               start_cmd=config.TARGET_START_COMMAND,
                               stop_cmd=config.TARGET_STOP_COMMAND,
                               tgtadm=config.TGTADM, timeout=config.TARGET_TIMEOUT,
                               stop_timeout=config.TARGET_STOP_TIMEOUT,
                               target_params=getattr(config, "ISCSI_TARGET_PARAMS", None))
        vip = VipAdapter(config.DRBD_VIRTUAL_IP, config.DRBD_VIRTUAL_MASK, config.DRBD_INTERFACE,
                         ip=config.IP_COMMAND, arping=config.ARPING, timeout=config.NET_TIMEOUT,
                         dad_count=config.ARP_DAD_COUNT, dad_timeout=config.ARP_DAD_TIMEOUT,
                         garp_count=config.ARP_COUNT, garp_interval=config.ARP_INTERVAL,
                         method=config.ARP_METHOD)
        return cls(drbd, target, vip)

    def reap(self):
        """Collect finished background children (gratuitous ARP senders)."""
        self.vip.reap()

    def close(self):
        self.vip.close()
        closer = getattr(self.target, "close", None)
        if closer is not None:
            closer()


def observe_drbd(adapter, from_stream=False):
    """(states by resource, error sentence or ''). ``from_stream``: a line of the DRBD events
    stream woke this look (see :meth:`iscsi_ha.adapters.drbd.DrbdAdapter.observe`)."""
    try:
        return dict(adapter.observe(from_stream=True) if from_stream else adapter.observe()), ""
    except Exception as exc:  # unreadable DRBD: the policy holds, and says why
        return {}, str(exc) or type(exc).__name__


def observe_target(adapter):
    try:
        state = adapter.observe()
    except Exception as exc:
        log.error("target: cannot observe: %s", exc)
        return None
    # A daemon whose status command fails or whose tgtadm hangs still holds the DRBD device:
    # it counts as running, so that a demote stops (and if need be kills) it first.
    return model.TargetObservation(running=state.running or bool(state.processes),
                                   serving=state.serving, missing=tuple(state.missing),
                                   connections=state.connections, error=state.error)


def observe_vip(adapter, check_interval=None, clock=time.monotonic):
    """The floating IP as observed; on the holder, every ``check_interval`` seconds, also a
    conflict probe (another MAC answering for the address). Its answer is kept until the next
    probe, so a pass costs nothing between probes."""
    try:
        state = adapter.observe()
    except Exception as exc:
        log.error("floating IP: cannot observe: %s", exc)
        return None
    error = "" if state.interface_exists else "interface does not exist"
    conflict, conflict_error = (), ""
    if state.local and check_interval is not None:
        cached = getattr(adapter, "conflict_seen", None)
        now = clock()
        if not isinstance(cached, tuple) or now - cached[0] >= check_interval:
            try:
                found = adapter.conflict()
                cached = (now, tuple(found) if isinstance(found, (list, tuple)) else (), "")
            except Exception as exc:  # the probe did not run: a failed check, not "no one"
                cached = (now, (), str(exc) or type(exc).__name__)
            adapter.conflict_seen = cached
            if cached[1]:
                log.error("floating IP: another host answers for it: %s", ", ".join(cached[1]))
        conflict, conflict_error = cached[1], cached[2]
    elif not state.local:
        adapter.conflict_seen = None
    return model.VipObservation(local=state.local, interface_exists=state.interface_exists,
                                interface_up=state.interface_up, error=error,
                                carrier=bool(getattr(state, "carrier", state.interface_up)),
                                conflict=conflict, conflict_error=conflict_error)
