"""What every ``iscsi-cfg`` verb works with on this host: the configuration, the adapters (built
on first use), XAPI clients with timeouts, the agent's status, and the pass lock.

The verbs' library code takes a :class:`HostContext` and writes its sentences through
``ctx.say`` so that the same code serves the CLI (stdout) and the XAPI plugin (collected lines).
"""
import contextlib
import os
import sys
import time

from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.pool import read_pool_role
from iscsi_ha.adapters.xapi import OtherConfigCache, XapiClient
from iscsi_ha.wiring import Adapters, observe_drbd

INVENTORY_ENV = "ISCSI_HA_INVENTORY"
DEFAULT_INVENTORY = "/etc/xensource-inventory"
LOCK_POLL = 0.02


class CliError(Exception):
    """A verb cannot go on: ``code`` is the exit code (1 refused or failed, 2 usage)."""

    def __init__(self, message, code=1):
        Exception.__init__(self, message)
        self.code = code


class Refused(CliError):
    """A safety check said no; nothing was changed."""


def inventory_path(config=None):
    """``$ISCSI_HA_INVENTORY``, else the config's INVENTORY_FILE, else
    /etc/xensource-inventory (where INSTALLATION_UUID lives)."""
    return os.environ.get(INVENTORY_ENV) or getattr(config, "INVENTORY_FILE", "") or \
        DEFAULT_INVENTORY


def _stdout_say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class HostContext(object):
    """This host as the CLI sees it. ``say`` receives one line at a time."""

    def __init__(self, config, say=None, inventory=None, sleep=time.sleep,
                 clock=time.monotonic):
        self.config = config
        self.say = say or _stdout_say
        self.inventory = inventory or inventory_path(config)
        self.sleep = sleep
        self.clock = clock
        self._adapters = None

    # -- adapters ------------------------------------------------------------------------------
    @property
    def adapters(self):
        if self._adapters is None:
            self._adapters = Adapters.from_config(self.config)
        return self._adapters

    def close(self):
        if self._adapters is not None:
            self._adapters.close()

    def drbd_states(self):
        """({resource: DrbdState}, error sentence or '') read live from DRBD."""
        return observe_drbd(self.adapters.drbd)

    def manual_mode(self):
        """The manual mode file: off, enable (hold), become_primary or become_secondary."""
        return manual_adapter.read_manual(self.config.MANUAL_FILE)

    def pool_role(self):
        return read_pool_role(self.config.POOL_CONF)

    def split_brain_flags(self):
        return [name for name in self.config.DRBD_RESOURCES
                if os.path.exists(os.path.join(self.config.STATE_DIR, "split-brain-" + name))]

    def fencing_proven(self):
        """{resource: sentence} whose DRBD fencing the agent proved on both hosts."""
        from iscsi_ha.fencing import proven_without_peer
        return proven_without_peer(self.config)

    def status(self):
        """The agent's status document (see :func:`iscsi_ha.agent_status.view`)."""
        from iscsi_ha.agent_status import view
        return view(self.config)

    # -- XAPI ------------------------------------------------------------------------------------
    def xapi(self, timeout=None):
        """A new XAPI client; ``timeout`` (s) bounds every call (default XAPI_TIMEOUT)."""
        config = self.config
        return XapiClient(config.XAPI_URL, config.XAPI_USER, config.XAPI_PASSWORD,
                          timeout or config.XAPI_TIMEOUT,
                          cache=OtherConfigCache.in_state_dir(config.STATE_DIR))

    # -- the pass lock ---------------------------------------------------------------------------
    @property
    def lock_path(self):
        """The file the agent flocks for a whole pass (iscsi_ha.loop: STATE_DIR/lock)."""
        from iscsi_ha.passlock import lock_paths
        return lock_paths(self.config)[0]

    def lock_timeout(self):
        """A pass longer than its budget is hung and gets killed: wait that long and a bit."""
        return self.config.MONITOR_MAX_STARTS * self.config.MONITOR_SCANRATE + 5.0

    @contextlib.contextmanager
    def pass_lock(self, timeout=None):
        """Hold the agent's pass lock: no pass runs while the block runs (bounded wait)."""
        timeout = self.lock_timeout() if timeout is None else timeout
        from iscsi_ha.passlock import PassLock, PassLockBusy
        lock = PassLock.of(self.config, timeout=timeout, poll=LOCK_POLL, clock=self.clock,
                           sleep=self.sleep)
        try:
            lock.acquire()
        except PassLockBusy:
            raise CliError("an agent pass has held %s for more than %.0f s (a hung pass?): "
                           "nothing was changed; see `iscsi-cfg log`" % (lock.used, timeout))
        try:
            yield
        finally:
            lock.release()

    def write_manual(self, mode):
        """Write the manual mode file (caller holds the pass lock)."""
        manual_adapter.write_manual(self.config.MANUAL_FILE, mode)
