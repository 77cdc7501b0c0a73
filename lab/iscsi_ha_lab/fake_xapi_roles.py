"""Pool roles of the fake XAPI: start-up, master hand-over, master death and emergency mode.

What each step does follows xapi (xapi.ml, xapi_pool.ml, xapi_pool_transition.ml): a starting
xapi reads pool.conf; a master that finds another serving master becomes its slave
(check_no_other_masters); a slave whose master is unreachable enters emergency mode;
``designate_new_master`` writes "broken" then "master" on the new master and "slave:<addr>" on the
others, then everyone restarts; ``emergency_transition_to_master`` writes "master" at once and
restarts after the fuse; ``emergency_reset_master`` is a no-op when already pointing there.
Slow steps run in tracked timer threads so an XML-RPC request never waits for its own endpoint.
"""
import logging
import os
import threading

from iscsi_ha_lab.fake_xapi_db import XapiError, now_datetime

log = logging.getLogger("iscsi-ha.fake-xapi")

POOL_MASTER_TRANSITION_PRIORITY = 4  # Api_messages.pool_master_transition in xapi


def read_pool_conf(path):
    """(role, master address) from pool.conf: ("master", None), ("slave", addr), ("broken", None).

    Split on the first ``:`` only, as xapi does; unreadable or unknown content reads as broken.
    """
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except (IOError, OSError):
        return "broken", None
    role, sep, rest = text.partition(":")
    if text == "master":
        return "master", None
    if role == "slave" and sep and rest:
        return "slave", rest
    return "broken", None


def write_pool_conf(path, content):
    """Replace pool.conf atomically (temporary file in the same directory, then rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".%s.%d.%d.tmp" % (os.path.basename(path), os.getpid(),
                                                      threading.current_thread().ident))
    with open(tmp, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


class _Timers(object):
    """Delayed actions (fuse, restarts, liveness) in tracked threads that stop() ends."""

    def __init__(self):
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = []

    def after(self, delay, action, name):
        def run():
            if self._stopping.wait(delay):
                return
            try:
                action()
            except Exception:
                log.exception("fake xapi: %s failed", name)
        thread = threading.Thread(target=run, name="fake-xapi-" + name)
        thread.daemon = True
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    @property
    def stopped(self):
        return self._stopping.is_set()

    def sleep(self, seconds):
        """Sleep; False if the pool is stopping."""
        return not self._stopping.wait(seconds)

    def stop(self, timeout=15.0):
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)


class PoolRoles(object):
    """Role logic of FakePool (mixed in); needs ``db``, ``pool_ref``, ``endpoints``."""

    def init_roles(self, fuse_delay, restart_delay, live_timeout):
        self.fuse_delay = fuse_delay          # xapi's fuse is 10 s
        self.restart_delay = restart_delay    # listeners closed for this long on a restart
        self.live_timeout = live_timeout      # a master marks a dead host not live after this
        self._timers = _Timers()
        self._role_lock = threading.RLock()

    def restart_timers(self):
        if self._timers.stopped:
            self._timers = _Timers()

    def master_endpoint(self):
        """The endpoint serving as master right now, or None."""
        for endpoint in self.endpoints.values():
            if endpoint.is_master():
                return endpoint
        return None

    def boot(self, endpoint):
        """xapi start-up: role from pool.conf, check for other masters, else emergency mode."""
        role, address = read_pool_conf(endpoint.pool_conf_path)
        # xapi's check_no_other_masters asks the others over the management network: a master
        # it cannot reach (that network cut, FakePool.cut_off) is not seen
        cut = getattr(self, "cut_off", set())
        others = [e for e in self.endpoints.values() if e is not endpoint and e.is_master()
                  and endpoint.host_ref not in cut and e.host_ref not in cut]
        if role == "master" and others:  # xapi's check_no_other_masters: become its slave
            role, address = "slave", others[0].address
            write_pool_conf(endpoint.pool_conf_path, "slave:" + address)
        endpoint.role, endpoint.master_address = role, address
        endpoint.emergency_error = None
        if role == "master":
            self._took_over(endpoint)
        elif role == "slave" and endpoint.current_master() is not None:
            self._set_live(endpoint.host_ref, True)
            endpoint.was_master = False
        else:
            endpoint.emergency_error = (["HOST_BROKEN"] if role == "broken"
                                        else list(endpoint.emergency_default))

    def _took_over(self, endpoint):
        self.db.update("pool", self.pool_ref, master=endpoint.host_ref)
        self._set_live(endpoint.host_ref, True)
        for other in self.endpoints.values():
            if other is not endpoint and not other.serving:
                self._mark_dead_later(other)
        if not endpoint.was_master:
            self.db.create("message", name="POOL_MASTER_TRANSITION",
                           priority=POOL_MASTER_TRANSITION_PRIORITY, cls="Host",
                           obj_uuid=self.db.get("host", endpoint.host_ref, "uuid"),
                           timestamp=now_datetime(), body="")
        endpoint.was_master = True

    def _set_live(self, host, live):
        metrics = self.db.get("host", host, "metrics")
        self.db.update("host_metrics", metrics, live=live, last_updated=now_datetime())

    def _mark_dead_later(self, endpoint):
        def mark():
            if not endpoint.serving and self.master_endpoint() is not None:
                self._set_live(endpoint.host_ref, False)
        self._timers.after(self.live_timeout, mark, "live-" + endpoint.name)

    # -- failover controls (Python API for the lab) -------------------------------------------------
    def host_dies(self, host):
        """The host's xapi is gone (connection refused); a live master notices after a while."""
        endpoint = self.endpoint(host)
        with self._role_lock:
            endpoint.stop()
        if self.master_endpoint() is not None:
            self._mark_dead_later(endpoint)

    def master_dies(self, host=None):
        """The master's xapi is gone: slaves' Unix-socket calls hang from now on."""
        self.host_dies(host or self.db.get("pool", self.pool_ref, "master"))

    def restart_host(self, host, wait=True):
        """Restart a host's xapi (brief refusal, sessions dropped, role re-read)."""
        return self._restart(self.endpoint(host), 0.0, wait)

    def host_returns(self, host):
        """A dead host's xapi starts again; an old master finding a new one becomes its slave."""
        with self._role_lock:
            self.endpoint(host).start()

    def designate_new_master(self, host, wait=True):
        """``pool.designate_new_master``: a clean hand-over, then both sides restart."""
        thread = self.request_designate(self.host_ref(host))
        return self._wait(thread, wait)

    def emergency_transition_to_master(self, host, wait=True):
        """``pool.emergency_transition_to_master`` on ``host``: pool.conf "master" now, restart
        after the fuse delay."""
        return self._wait(self.become_master_after_fuse(self.endpoint(host)), wait)

    def recover_slaves(self, wait=True):
        """``pool.recover_slaves`` on the current master; returns the refs of recovered hosts."""
        master = self.master_endpoint()
        if master is None:
            raise RuntimeError("no host is serving as master")
        refs, threads = self._recover(master)
        for thread in threads:
            self._wait(thread, wait)
        return refs

    def _wait(self, thread, wait):
        if wait and thread is not None:
            thread.join(self.fuse_delay + self.restart_delay + 15.0)
        return thread

    def _restart(self, endpoint, delay, wait):
        def restart():
            with self._role_lock:
                endpoint.stop()
            if self._timers.sleep(self.restart_delay):
                with self._role_lock:
                    endpoint.start()
        return self._wait(self._timers.after(delay, restart, "restart-" + endpoint.name), wait)

    # -- role changes requested over XML-RPC (never block the calling request) ---------------------
    def request_designate(self, host):
        new = self.endpoints[host]
        if not new.serving:
            raise XapiError("HOST_OFFLINE", host)
        if new.is_master():
            return None
        return self._timers.after(0.1, lambda: self._designate(new), "designate")

    def _designate(self, new):
        with self._role_lock:
            write_pool_conf(new.pool_conf_path, "broken")
            peers = [e for e in self.endpoints.values() if e is not new and e.running]
            for peer in peers:
                write_pool_conf(peer.pool_conf_path, "slave:" + new.address)
                peer.stop()
            write_pool_conf(new.pool_conf_path, "master")
            new.stop()
        if not self._timers.sleep(self.restart_delay):
            return
        with self._role_lock:
            new.start()
            for peer in peers:
                peer.start()

    def become_master_after_fuse(self, endpoint):
        write_pool_conf(endpoint.pool_conf_path, "master")
        return self._restart(endpoint, self.fuse_delay, False)

    def become_slave_of(self, endpoint, address):
        """``pool.emergency_reset_master``: no-op if already pointing there (even in emergency
        mode), else pool.conf "slave:<address>" and a restart after the fuse delay."""
        if (endpoint.role, endpoint.master_address) == ("slave", address):
            return None
        write_pool_conf(endpoint.pool_conf_path, "slave:" + address)
        return self._restart(endpoint, self.fuse_delay, False)

    def recover_slaves_from(self, master):
        return self._recover(master)[0]

    def _recover(self, master):
        refs, threads = [], []
        for endpoint in self.endpoints.values():
            if endpoint is not master and endpoint.serving:
                threads.append(self.become_slave_of(endpoint, master.address))
                refs.append(endpoint.host_ref)
        return refs, threads
