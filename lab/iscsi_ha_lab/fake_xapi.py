"""A fake XAPI pool for the lab and the tests, spoken to by the real ``XenAPI`` client.

``FakePool`` holds the pool database (pool, host, host_metrics, SR, PBD, message, task) and one
``FakeXapiHost`` endpoint per simulated host. Each endpoint serves XML-RPC on a Unix socket (the
lab puts it in the host's own root) and optionally on TCP 127.0.0.1:<ephemeral port>. Roles come
from each host's pool.conf, which the fake writes the way xapi does (atomically). The lab drives
failures through the Python API below; see /work/shared/reference/xenapi.md for the behaviour
copied from xapi.

    with FakePool(tmp) as pool:
        a = pool.add_host("xcp-a", "192.0.2.11", tmp + "/a/pool.conf", uds_path=tmp + "/a/xapi")
        b = pool.add_host("xcp-b", "192.0.2.12", tmp + "/b/pool.conf", uds_path=tmp + "/b/xapi")
        pool.add_iscsi_sr("iscsi-ha", "192.0.2.10", "iqn.2024-01.org.example:ha", "36001405x")
        pool.start()
        session = uds_session(tmp + "/b/xapi", timeout=2.0)   # forwarded to the master (a)
        pool.master_dies()                                    # b's calls now hang
        pool.emergency_transition_to_master(b)                # b: pool.conf "master", restart
"""
import collections
import logging
import os

from iscsi_ha.adapters.xapi import TcpTransport, UnixConnection, UnixTransport
from iscsi_ha_lab.fake_xapi_db import NULL_REF, Database, XapiError, now_datetime
from iscsi_ha_lab.fake_xapi_roles import PoolRoles, read_pool_conf, write_pool_conf
from iscsi_ha_lab.fake_xapi_server import FakeXapiHost

__all__ = ["FakePool", "FakeXapiHost", "XapiError", "UnixTransport", "TimeoutTransport",
           "uds_session", "tcp_session", "read_pool_conf", "write_pool_conf"]
log = logging.getLogger("iscsi-ha.fake-xapi")


class FakePool(PoolRoles):
    """One pool: its database, its hosts' endpoints, and the failover controls for the lab."""

    def __init__(self, state_dir, name_label="fake-pool", username="root", password="",
                 fuse_delay=0.5, restart_delay=0.2, live_timeout=0.5, hang_limit=60.0):
        self.state_dir = state_dir
        self.username, self.password = username, password
        self.init_roles(fuse_delay, restart_delay, live_timeout)
        self.hang_limit = hang_limit          # longest any call may be held open
        self.db = Database()
        self.pool_ref = self.db.create("pool", name_label=name_label, master=NULL_REF)
        self.endpoints = collections.OrderedDict()
        self._plugins = {}
        self.cut_off = set()        # hosts whose management network is cut (lab faults)
        self._pbd_handlers = {}

    # -- building ---------------------------------------------------------------------------------
    def add_host(self, name, address, pool_conf_path, inventory_uuid=None, uds_path=None,
                 tcp=True):
        """Add a host; the first one is the master. Writes its pool.conf; returns its ref."""
        metrics = self.db.create("host_metrics", live=True, last_updated=now_datetime(),
                                 memory_total="34359738368", memory_free="17179869184")
        ref = self.db.create("host", uuid=inventory_uuid or "", name_label=name, hostname=name,
                             address=address, enabled=True, metrics=metrics,
                             API_version_major="2", API_version_minor="21")
        master = self.db.get("pool", self.pool_ref, "master")
        if master == NULL_REF:
            self.db.update("pool", self.pool_ref, master=ref)
            write_pool_conf(pool_conf_path, "master")
        else:
            write_pool_conf(pool_conf_path, "slave:" + self.db.get("host", master, "address"))
        if uds_path is None:
            uds_path = os.path.join(self.state_dir, name, "xapi")
        endpoint = FakeXapiHost(self, ref, pool_conf_path, uds_path, tcp)
        endpoint.was_master = master == NULL_REF
        self.endpoints[ref] = endpoint
        for sr in self.db.find("SR", shared=True):
            self._add_pbd(sr, ref, self._any_device_config(sr), False)
        return ref

    def add_iscsi_sr(self, name_label, target, iqn, scsi_id, port="3260", attached=True):
        """A shared lvmoiscsi SR with one PBD per host; returns the SR ref."""
        sr = self.db.create("SR", name_label=name_label, type="lvmoiscsi", content_type="",
                            shared=True, physical_size="107374182400",
                            sm_config={"allocation": "thick", "use_vhd": "true"})
        config = {"target": target, "targetIQN": iqn, "SCSIid": scsi_id, "port": str(port)}
        for host in self.endpoints:
            self._add_pbd(sr, host, config, attached)
        return sr

    def _add_pbd(self, sr, host, config, attached):
        pbd = self.db.create("PBD", host=host, SR=sr, device_config=config,
                             currently_attached=attached)
        with self.db.lock:
            self.db.update("SR", sr, PBDs=self.db.get("SR", sr, "PBDs") + [pbd])
            self.db.update("host", host, PBDs=self.db.get("host", host, "PBDs") + [pbd])
        return pbd

    def _any_device_config(self, sr):
        pbds = self.db.get("SR", sr, "PBDs")
        return self.db.get("PBD", pbds[0], "device_config") if pbds else {}

    def register_plugin(self, host, plugin, fn, handler):
        """``host.call_plugin(host, plugin, fn, args)`` runs ``handler(args) -> str`` here."""
        self._plugins.setdefault((self.host_ref(host), plugin), {})[fn] = handler

    def set_pbd_handler(self, host, handler):
        """``handler(pbd_ref, pbd_record, attach)`` runs on PBD.plug/unplug of ``host``'s PBDs
        (only on a real change); raise XapiError to make the call fail."""
        self._pbd_handlers[self.host_ref(host)] = handler

    def set_emergency_error(self, host, error):
        """The ErrorDescription a host in emergency mode answers with (default HOST_STILL_BOOTING)."""
        self.endpoint(host).emergency_default = list(error)

    # -- lookups ----------------------------------------------------------------------------------
    def host_ref(self, host):
        """A host given by ref, uuid or name_label -> its ref (KeyError if unknown)."""
        if host in self.endpoints:
            return host
        for field in ("uuid", "name_label"):
            found = self.db.find("host", **{field: host})
            if found:
                return found[0]
        raise KeyError("no host %r" % (host,))

    def endpoint(self, host):
        return self.endpoints[self.host_ref(host)]

    def endpoint_at(self, address):
        for endpoint in self.endpoints.values():
            if endpoint.address == address:
                return endpoint
        return None

    def pool_conf(self, host):
        with open(self.endpoint(host).pool_conf_path) as handle:
            return handle.read()

    def messages(self, name=None):
        """Records of the messages created so far (optionally only those called ``name``)."""
        with self.db.lock:
            records = [self.db.record("message", r) for r in self.db.refs("message")]
        return [r for r in records if name is None or r["name"] == name]

    def check_credentials(self, user, password):
        if (user, password) != (self.username, self.password):
            raise XapiError("SESSION_AUTHENTICATION_FAILED", user,
                            "Authentication failure")

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self):
        """Start every endpoint, masters (by pool.conf) first."""
        ordered = sorted(self.endpoints.values(),
                         key=lambda e: read_pool_conf(e.pool_conf_path)[0] != "master")
        self.restart_timers()
        with self._role_lock:
            for endpoint in ordered:
                endpoint.start()

    def stop(self):
        """Stop timers and endpoints and remove the socket files; leaves no threads behind."""
        self._timers.stop()
        with self._role_lock:
            for endpoint in self.endpoints.values():
                endpoint.stop()
                endpoint.remove_socket()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def heartbeat(self):
        """The pool "mod" a master's db_gc emits every ~30 s (same record, new event)."""
        self.db.touch("pool", self.pool_ref)

    # -- host-side operations -------------------------------------------------------------------------
    def _assert_reachable(self, host):
        endpoint = self.endpoints.get(host)
        live = self.db.get("host_metrics", self.db.get("host", host, "metrics"), "live")
        if endpoint is None or not live or not endpoint.serving:
            raise XapiError("HOST_OFFLINE", host)
        if endpoint.emergency_error is not None:
            raise XapiError(*endpoint.emergency_error)

    def set_pbd_attached(self, pbd, attached):
        """PBD.plug / PBD.unplug: on the PBD's host; a no-op when already in that state."""
        record = self.db.get("PBD", pbd)
        self._assert_reachable(record["host"])
        if record["currently_attached"] == attached:
            return
        handler = self._pbd_handlers.get(record["host"])
        if handler is not None:
            handler(pbd, record, attached)
        self.db.update("PBD", pbd, currently_attached=attached)

    def set_management_link(self, host, up):
        """Cut (``up=False``) or restore ``host``'s management network: calls from it to
        another host, or from another host to it, fail as unreachable (HOST_OFFLINE)."""
        ref = self.host_ref(host)
        if up:
            self.cut_off.discard(ref)
        else:
            self.cut_off.add(ref)

    def call_plugin(self, host, plugin, fn, args, caller=None):
        """host.call_plugin, with XenAPIPlugin's failure shapes; ``caller`` is the host whose
        xapi received the call."""
        if caller is not None and caller != host and (caller in self.cut_off or
                                                      host in self.cut_off):
            raise XapiError("HOST_OFFLINE", host)
        self._assert_reachable(host)
        functions = self._plugins.get((host, plugin))
        if functions is None:
            raise XapiError("XENAPI_MISSING_PLUGIN", plugin)
        if fn not in functions:
            raise XapiError("UNKNOWN_XENAPI_PLUGIN_FUNCTION", fn)
        try:
            result = functions[fn](dict(args))
        except XapiError:
            raise
        except Exception as exc:
            raise XapiError("XENAPI_PLUGIN_FAILURE", fn, type(exc).__name__, str(exc))
        if not isinstance(result, str):
            raise XapiError("XENAPI_PLUGIN_FAILURE", fn, "TypeError", "result is not a string")
        return result


# -- client side, for tests and the lab only (the agent has its own client) ---------------------------
# The agent's own transports (iscsi_ha.adapters.xapi) serve the tests and the lab too.
UnixHTTPConnection = UnixConnection
TimeoutTransport = TcpTransport


def uds_session(path, timeout):
    """A ``XenAPI.Session`` (not logged in) talking to the Unix socket at ``path``."""
    import XenAPI
    return XenAPI.Session("http://localhost/", transport=UnixTransport(path, timeout))


def tcp_session(url, timeout):
    """A ``XenAPI.Session`` (not logged in) talking to ``url`` with a socket timeout."""
    import XenAPI
    return XenAPI.Session(url, transport=TimeoutTransport(timeout))
