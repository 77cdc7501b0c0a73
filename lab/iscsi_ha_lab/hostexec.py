"""Running commands inside a lab host as that host would: ``iscsi-cfg`` and the other product
commands (:func:`host_exec`), and the iscsi-ha XAPI plugin behind the fake pool's
``host.call_plugin(host, "iscsi-ha", fn, args)`` (:func:`register_plugins`), which runs the
plugin module inside that host's namespace so that it acts there.
"""
import sys

from iscsi_ha.cli.plugin import FUNCTIONS as PLUGIN_FUNCTIONS
from iscsi_ha_lab import netns


def host_exec(host, argv, timeout):
    """``argv`` in ``host``'s namespace, with its hostname, PATH and ISCSI_HA_CONFIG."""
    env = dict(host.env(), ISCSI_HA_CONFIG=host.config_path)
    return netns.exec_in(host.ns, host.as_host(argv), timeout=timeout, env=env)


def plugin_handler(host, fn):
    """The fake XAPI's handler for ``fn`` of the iscsi-ha plugin on ``host``."""
    def handle(args):
        try:
            wait = float(args.get("timeout", 30))
        except ValueError:
            wait = 30.0
        argv = [sys.executable, "-m", "iscsi_ha.cli.plugin", fn] + [
            "%s=%s" % item for item in sorted(args.items())]
        proc = host_exec(host, argv, min(wait, 120) + 30)
        if proc.returncode != 0:
            raise RuntimeError("plugin %s on %s: exit %d: %s" % (
                fn, host.name, proc.returncode, proc.stderr.strip()[-300:]))
        return proc.stdout.strip()
    return handle


def register_plugins(lab):
    """Install the iscsi-ha plugin on every host of the lab's fake pool (idempotent).
    ``Lab.up`` calls it, so ``iscsi-ha-lab up`` has it too."""
    for host in lab.hosts:
        for fn in PLUGIN_FUNCTIONS:
            lab.xapi.pool.register_plugin(lab.xapi.refs[host.name], "iscsi-ha", fn,
                                          plugin_handler(host, fn))
