"""A strict stand-in for DRBD in the lab: two hosts, one shared "world" directory.

This machine has no DRBD kernel module, so the lab's ``drbdadm`` / ``drbdsetup`` are wrapper
scripts (see :func:`install_wrappers`) that run this module. The whole replicated system lives in
a world directory shared by both simulated hosts::

    <world>/world.json            the link: cables, connection and resync per resource, the
                                  resources' sizes; nothing a host knows about itself
    <world>/<host>/state.json     what one host's kernel holds: its disks (role, disk state,
                                  generations, its belief about the peer's disk, frozen I/O),
                                  its drbd.conf (fencing policy, handlers)
    <world>/world.lock            fcntl.flock lock: every invocation is one serialised transaction
    <world>/events.jsonl          world events (link cut, crash, split brain, resync done)
    <world>/<host>/drbd<minor>    the host's DRBD device (a plain file; tgtd exports this path)
    <world>/<host>/proc_drbd      the host's /proc/drbd text, rewritten after every transaction
    <world>/<host>/events.jsonl   one JSON line per command run on that host

The model, in DRBD's own words:

- Per host and resource: ``up`` (``drbdadm up``/``down``), role (Primary/Secondary), disk state
  (UpToDate/Outdated/Inconsistent), ``want_connection`` (false after ``drbdadm disconnect`` or a
  split brain: StandAlone) and ``generations``, the data-generation history (like DRBD's UUID
  history; the last entry is the current generation). A new generation starts whenever a host is
  Primary without a connection: when it is promoted while disconnected, when a connected Primary
  loses its peer, and on every ``primary --force``.
- The connection is derived on every transaction: both hosts up, both want it and the link up
  means connected. The handshake compares generations: equal -> Connected; one side's current
  generation in the other's history -> resync from the newer side (SyncSource) to the older one
  (SyncTarget, Inconsistent until done; when done the source's file is copied over the target's);
  neither -> split brain: both StandAlone, ``split_brain`` recorded, until ``drbdadm connect
  --discard-my-data`` on the victim and ``drbdadm connect`` on the survivor. An Inconsistent disk
  always becomes SyncTarget of a peer with good data.
- Protocol C at event boundaries: while Connected (not resyncing), every demote, crash and loss of
  the connection first copies the Primary's file over the peer's, so the peer holds every
  acknowledged write. Writes made while disconnected stay local: the files diverge.
- Fencing, per host as in its own drbd.conf (``World.create(fencing=...)``, ``set_fencing``):
  ``dont-care``, ``resource-only`` or ``resource-and-stonith`` (True means resource-only, False
  dont-care). Nothing is outdated by magic: each host holds only its own state (its disk, its
  belief about the peer's disk ``pdsk``, its frozen I/O) and learns about the peer only through
  the link (handshake, replication, graceful disconnect) or through a fence-peer handler that
  reaches the peer by another path (in the lab: the XAPI plugin on the peer runs
  ``drbdadm outdate`` there). The kernel's rules, from LINBIT/drbd-8.4 and LINBIT/drbd:

  * Connection lost while Primary with a policy other than dont-care and ``pdsk`` not Outdated:
    the fence-peer handler runs asynchronously (8.4 ``drbd_receiver.c`` ``conn_disconnect()`` ->
    ``conn_try_outdate_peer_async()``; 9 the same from ``drbd_receiver.c``). With
    resource-and-stonith the Primary's I/O is frozen first (``susp_fen``: 8.4
    ``drbd_state.c`` ``sanitize_state()``, 9 ``drbd_state.c`` "Suspend IO while fence-peer
    handler runs"). The double freezes I/O by stopping (SIGSTOP) every process that holds the
    device open: the initiator's writes block and are not acknowledged.
  * The handler's exit code, as ``conn_try_outdate_peer()`` (``drbd_nl.c``, both versions) maps
    it: 3 peer Inconsistent, 4 peer Outdated, 5 peer Outdated only if the local disk is
    UpToDate, 6 the local disk becomes Outdated (peer is Primary), 7 peer Outdated (stonithed);
    any other code (0 too: drbdadm's ``adm_khelper()`` in ``user/v84/drbdadm_main.c`` returns 0
    when no handler is configured) changes nothing and leaves I/O frozen. The result is ignored
    when the connection came back while the handler ran (``connect_cnt`` changed).
  * Frozen I/O resumes only when the peer's disk is known Outdated or worse (8.4
    ``drbd_state.c`` ``after_conn_state_ch()`` "case1"; 9 ``drbd_state.c`` "after-fencing"),
    when the connection is established again ("case2"), or on ``drbdadm resume-io``. The new
    data generation of a Primary that lost its peer starts when I/O resumes without the peer
    (``NEW_CUR_UUID`` -> ``drbd_uuid_new_current()``), not while frozen.
  * Promoting a disconnected node with a policy other than dont-care and ``pdsk`` not Outdated:
    the fence-peer handler runs synchronously (8.4 ``drbd_nl.c`` ``drbd_set_role()``,
    ``SS_PRIMARY_NOP``); if it cannot outdate the peer: "(-7) Refusing to be Primary while peer
    is not outdated" unless ``--force`` ("Forced into split brain situation!"). A ``Consistent``
    disk is promoted only if the handler outdates the peer (``SS_NO_UP_TO_DATE_DISK`` ->
    ``conn_try_outdate_peer()``), or with ``--force``.
  * ``Consistent`` after a restart without the peer: an UpToDate disk comes up Consistent unless
    its meta-data says the peer was Outdated or the policy is dont-care (8.4 ``drbd_nl.c``
    ``drbd_adm_attach()``: ``MDF_WAS_UP_TO_DATE``, ``MDF_PEER_OUT_DATED``, ``FP_DONT_CARE``).
  * Graceful ``disconnect``/``down`` while connected: the Secondary's disk becomes Outdated and
    the Primary knows it (8.4 ``drbd_nl.c`` ``conn_try_disconnect()``: ``SS_PRIMARY_NOP`` ->
    ``pdsk`` Outdated, ``SS_CW_FAILED_BY_PEER`` -> ``disk`` Outdated); no handler runs.
  * ``drbdadm outdate``: refused on a Primary (drbdsetup exit 17, "(-2) Need access to UpToDate
    data"), 5 when the disk is Inconsistent or worse, "(-6) Refusing to be Outdated while
    Connected" on a connected node; on a resource that is down drbdmeta outdates the meta-data
    (``adm_outdate()`` in ``user/v84/drbdadm_main.c`` and ``user/v9/drbdadm_main.c``;
    ``print_config_error()`` in ``user/v84/drbdsetup.c``; 8.4 ``drbd_state.c``
    ``is_valid_state()``).
- Simplifications: one volume per resource; no Diskless state; two hosts only; a promotion
  calls the fence-peer handler at most once (the kernel may retry it).

Per-host state is shared only through the link: the functions that read or change both hosts'
records are the link's own (``_settle``, ``_handshake``, ``_lose_connection``, ``replicate``,
``_finish_sync``, ``_graceful`` while connected) and ``view()``, which shows the peer only while
connected. A host's drbdadm command changes only its own record; the fence-peer handler reaches
the peer through the peer's own drbdadm (in the lab: over XAPI), never through the files.

The world changes only inside a transaction: a drbdadm/drbdsetup invocation or any World method
(``settle()`` is the lab's "kernel tick": it applies resync progress and link changes now). A host
that ``crash()``-ed runs no commands until ``boot()``.

Error texts live in :mod:`iscsi_ha_lab.drbd_double_cli`, output formats in
:mod:`iscsi_ha_lab.drbd_double_render` (sources cited there).
Time is injectable (``World(directory, clock=...)``) for resync progress; use one clock per world.
"""
import contextlib
import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

from iscsi_ha_lab.drbd_double_render import render_proc_drbd

DEFAULT_RESYNC_RATE = 128 * 1024 * 1024     # bytes per second: the default 64 MB syncs in 0.5 s
STATE_FILE = "world.json"
HOST_FILE = "state.json"
LOCK_FILE = "world.lock"
EVENTS_FILE = "events.jsonl"
LOCK_TIMEOUT = 30.0
COPY_CHUNK = 1024 * 1024


HANDLER_TIMEOUT = 10      # seconds a DRBD handler may take (DRBD itself waits for it)
FENCE_TIMEOUT = 120       # the double's own bound on a fence-peer handler (DRBD has none)
POLICIES = ("dont-care", "resource-only", "resource-and-stonith")
# conn_try_outdate_peer()'s exit codes (drbd_nl.c, 8.4 and 9: P_INCONSISTENT ... P_FENCING)
P_INCONSISTENT, P_OUTDATED, P_DOWN, P_PRIMARY, P_FENCING = 3, 4, 5, 6, 7


class DoubleError(Exception):
    """Misuse of the double itself (unknown host, bad world directory, lock timeout)."""


def _write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.rename(path + ".tmp", path)


def _lock(fd, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except (BlockingIOError, PermissionError):
            if time.monotonic() > deadline:
                raise DoubleError("world lock not acquired within %.0f s" % timeout)
            time.sleep(0.005)


def _copy_over(src, dst):
    """Overwrite ``dst`` in place with ``src`` (same inode, so open handles see the new data)."""
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        while True:
            chunk = fin.read(COPY_CHUNK)
            if not chunk:
                break
            fout.write(chunk)
        fout.truncate()


def openers(path):
    """PIDs of processes holding ``path`` open (a scan of /proc/*/fd)."""
    target = os.path.realpath(path)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = os.path.join("/proc", pid, "fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(os.path.join(fd_dir, name)) == target:
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found


def _new_disk(generation, up):
    """One host's own DRBD state of one resource. ``pdsk`` is what this host believes about
    the peer's disk while disconnected (DUnknown, Outdated or Inconsistent); ``susp_fen`` its
    I/O frozen by fencing; ``frozen`` the processes the double stopped for that; ``fence``
    the fence-peer handler running now ({pid, cnt}); ``new_cur_uuid`` a new data generation
    that starts when frozen I/O resumes without the peer."""
    return {"up": up, "role": "Secondary", "disk": "UpToDate", "want_connection": True,
            "generations": [generation], "discard_my_data": False, "pdsk": "DUnknown",
            "susp_fen": False, "frozen": [], "fence": None, "new_cur_uuid": False}


def policy_of(fencing):
    """``fencing`` as a policy name: True -> resource-only, False/None -> dont-care."""
    if fencing is True:
        return "resource-only"
    if fencing in (False, None):
        return "dont-care"
    if fencing not in POLICIES:
        raise DoubleError("fencing must be one of %s, not %r" % (", ".join(POLICIES), fencing))
    return fencing


def _initial_state(hosts, resources, version, fencing, resync_rate, up):
    state = {"format": 2, "version": version,
             "resync_rate": int(resync_rate), "link_up": True, "next_generation": 2, "seq": 0,
             "hosts": {}, "resources": {}, "disks": {}, "links": {}}
    for index, host in enumerate(hosts):
        state["hosts"][host] = {"node_id": index, "address": "192.0.2.%d" % (11 + index),
                                "crashed": False, "fencing": policy_of(fencing),
                                "exec_prefix": []}
    for name, spec in resources.items():
        state["resources"][name] = {"minor": int(spec["minor"]),
                                    "size_mb": int(spec.get("size_mb", 64))}
        state["disks"][name] = dict((h, _new_disk(1, up)) for h in hosts)
        state["links"][name] = {"connected": False, "sync": None, "split_brain": False,
                                "split_brains": 0, "connect_cnt": 0}
    return state


class World(object):
    """The shared state of both simulated hosts; every method is one locked transaction."""

    def __init__(self, directory, clock=time.time):
        self.directory = os.path.abspath(directory)
        self.clock = clock
        if not os.path.exists(os.path.join(self.directory, STATE_FILE)):
            raise DoubleError("no DRBD double world in %s" % self.directory)

    @classmethod
    def create(cls, directory, hosts=("a", "b"), resources=None, version="8.4",
               fencing="dont-care",
               resync_rate=DEFAULT_RESYNC_RATE, up=True, clock=time.time):
        """Create (or reset) a world: resources up, Secondary, UpToDate, one shared generation."""
        if version not in ("8.4", "9"):
            raise DoubleError("version must be '8.4' or '9', not %r" % (version,))
        hosts = list(hosts)
        if len(hosts) != 2 or hosts[0] == hosts[1]:
            raise DoubleError("the double models exactly two distinct hosts")
        directory = os.path.abspath(directory)
        state = _initial_state(hosts, resources or {"iscsi1": {"minor": 1, "size_mb": 64}},
                               version, fencing, resync_rate, up)
        for host in [""] + hosts:
            os.makedirs(os.path.join(directory, host), exist_ok=True)
            open(os.path.join(directory, host, EVENTS_FILE), "w").close()   # a fresh log
        for spec in state["resources"].values():
            for host in hosts:
                with open(os.path.join(directory, host, "drbd%d" % spec["minor"]), "wb") as f:
                    f.truncate(spec["size_mb"] * 1024 * 1024)
        world = cls.__new__(cls)
        world.directory, world.clock = directory, clock
        world._write_state(state)
        world = cls(directory, clock=clock)
        world.settle()
        return world

    # -- paths -----------------------------------------------------------------------------
    def device_path(self, host, resource):
        """The host's DRBD device for ``resource``: ``<world>/<host>/drbd<minor>``."""
        minor = self._read()["resources"][resource]["minor"]
        return os.path.join(self.directory, host, "drbd%d" % minor)

    def proc_drbd_path(self, host):
        return os.path.join(self.directory, host, "proc_drbd")

    def _device(self, st, host, resource):
        return os.path.join(self.directory, host, "drbd%d" % st["resources"][resource]["minor"])

    # -- transactions ----------------------------------------------------------------------
    def _read(self):
        """The link's file and each host's own file, as one dict for the transaction."""
        with open(os.path.join(self.directory, STATE_FILE)) as f:
            st = json.load(f)
        st["hosts"], st["disks"], st["handlers"] = {}, dict((r, {}) for r in st["resources"]), {}
        for host in st.pop("host_names"):
            with open(os.path.join(self.directory, host, HOST_FILE)) as f:
                mine = json.load(f)
            st["hosts"][host] = mine["host"]
            st["handlers"][host] = mine["handlers"]
            for res, disk in mine["disks"].items():
                st["disks"][res][host] = disk
        return st

    def _write_state(self, st):
        shared = dict((k, v) for k, v in st.items() if k not in ("hosts", "disks", "handlers"))
        shared["host_names"] = sorted(st["hosts"])
        for host in st["hosts"]:
            mine = {"host": st["hosts"][host], "handlers": st.get("handlers", {}).get(host, {}),
                    "disks": dict((res, st["disks"][res][host]) for res in st["disks"])}
            _write_json(os.path.join(self.directory, host, HOST_FILE), mine)
        _write_json(os.path.join(self.directory, STATE_FILE), shared)

    @contextlib.contextmanager
    def transaction(self):
        """Lock the world, settle it, yield the state dict, settle again and save it."""
        with open(os.path.join(self.directory, LOCK_FILE), "a+") as lock:
            _lock(lock.fileno(), LOCK_TIMEOUT)
            try:
                st = self._read()
                self._settle(st)
                yield st
                self._settle(st)
                self._save(st)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _save(self, st):
        self._write_state(st)
        for host in st["hosts"]:
            text = render_proc_drbd(self, st, host)
            tmp = self.proc_drbd_path(host) + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.rename(tmp, self.proc_drbd_path(host))

    def log(self, st, host, command, rc, result):
        """Append one event; ``host=None`` is a world event (link, crash, split brain...)."""
        st["seq"] += 1
        entry = {"seq": st["seq"], "time": self.clock(), "host": host, "command": command,
                 "rc": rc, "result": result}
        folder = os.path.join(self.directory, host) if host else self.directory
        with open(os.path.join(folder, EVENTS_FILE), "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    # -- settling the connection -----------------------------------------------------------
    def _settle(self, st):
        for res in sorted(st["resources"]):
            link = st["links"][res]
            if link["connected"] and not self._can_connect(st, res):
                self._lose_connection(st, res)
            elif not link["connected"] and self._can_connect(st, res):
                self._handshake(st, res)
            if link["connected"] and link["sync"]:
                self._advance_sync(st, res)
            for host, disk in st["disks"][res].items():
                if disk["susp_fen"] and disk["up"]:
                    self._freeze(st, host, res)        # a process that opened it since

    def _can_connect(self, st, res):
        disks = st["disks"][res].values()
        return st["link_up"] and all(d["up"] and d["want_connection"] for d in disks)

    def _peer(self, st, host):
        return [h for h in st["hosts"] if h != host][0]

    def _new_generation(self, st, disk):
        disk["generations"].append(st["next_generation"])
        st["next_generation"] += 1

    def replicate(self, st, res):
        """Protocol C at an event boundary: copy the Primary's file over the peer's."""
        link = st["links"][res]
        if not link["connected"] or link["sync"]:
            return
        for host, disk in st["disks"][res].items():
            if disk["role"] == "Primary":
                _copy_over(self._device(st, host, res),
                           self._device(st, self._peer(st, host), res))

    def policy(self, st, host):
        return st["hosts"][host]["fencing"]

    def _lose_connection(self, st, res):
        """The link is gone: each side only keeps what it knew. A Primary whose peer's disk is
        not known Outdated freezes (resource-and-stonith) and starts its fence-peer handler
        (any policy but dont-care); its new data generation starts now, or, when frozen, once
        I/O resumes without the peer."""
        primaries = [h for h, d in st["disks"][res].items() if d["up"] and d["role"] == "Primary"]
        for host in primaries:                     # freeze first: no write acknowledged after
            disk = st["disks"][res][host]          # the copy below can be lost
            if (self.policy(st, host) == "resource-and-stonith"
                    and disk["pdsk"] not in ("Outdated", "Inconsistent")):
                self._freeze(st, host, res)
        self.replicate(st, res)
        link = st["links"][res]
        link["connected"], link["sync"] = False, None
        for host in primaries:
            disk = st["disks"][res][host]
            if disk["pdsk"] in ("Outdated", "Inconsistent"):
                self._new_generation(st, disk)
                continue
            disk["pdsk"] = "DUnknown"
            if self.policy(st, host) == "dont-care":
                self._new_generation(st, disk)
                continue
            if disk["susp_fen"]:
                disk["new_cur_uuid"] = True
            else:
                self._new_generation(st, disk)
            self._spawn_fence(st, host, res)
        for host, disk in st["disks"][res].items():
            if disk["up"] and host not in primaries and disk["pdsk"] not in (
                    "Outdated", "Inconsistent"):
                disk["pdsk"] = "DUnknown"
        self.log(st, None, "connection-lost", 0, res)

    # -- frozen I/O (susp_fen) ---------------------------------------------------------------
    def _freeze(self, st, host, res):
        """Suspend I/O: every process holding the device open is stopped, so its reads and
        writes block unanswered (a process that opens the device later is stopped at the next
        transaction)."""
        disk = st["disks"][res][host]
        if not disk["susp_fen"]:
            disk["susp_fen"] = True
            self.log(st, host, "susp-io", 0, "%s: I/O frozen (fencing)" % res)
        for pid in openers(self._device(st, host, res)):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                continue
            if pid not in disk["frozen"]:
                disk["frozen"].append(pid)

    def _resume(self, st, host, res, why):
        disk = st["disks"][res][host]
        if not disk["susp_fen"]:
            return
        disk["susp_fen"] = False
        if disk["new_cur_uuid"] and not st["links"][res]["connected"]:
            self._new_generation(st, disk)
        disk["new_cur_uuid"] = False
        for pid in disk["frozen"]:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        disk["frozen"] = []
        self.log(st, host, "resume-io", 0, "%s: I/O resumed (%s)" % (res, why))

    # -- the fence-peer handler --------------------------------------------------------------
    def _spawn_fence(self, st, host, res):
        """``conn_try_outdate_peer_async()``: the handler runs in its own process (the
        kernel's drbd_async_h thread), in the host's namespace, outside any transaction."""
        disk = st["disks"][res][host]
        if disk["fence"] is not None:
            return
        cnt = st["links"][res]["connect_cnt"]
        argv = list(st["hosts"][host].get("exec_prefix") or []) + [
            sys.executable, "-m", "iscsi_ha_lab.drbd_double_cli", "--world", self.directory,
            "--host", host, "fence-peer", res, str(cnt)]
        from iscsi_ha_lab.paths import pythonpath
        env = dict(os.environ)
        env["PYTHONPATH"] = pythonpath(env.get("PYTHONPATH"))
        log = open(os.path.join(self.directory, host, "fence-peer.log"), "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True)
        except OSError as exc:
            self.log(st, host, "fence-peer", 1, "%s: cannot start: %s" % (res, exc))
            return
        finally:
            log.close()
        disk["fence"] = {"pid": proc.pid, "cnt": cnt, "started": self.clock()}
        self.log(st, host, "fence-peer", 0, "%s: handler started (pid %d)" % (res, proc.pid))

    def handler_env(self, st, host, res):
        """The environment drbdadm gives a handler (plus the kernel's): 8.4 kernel
        ``setup_khelper_env()`` (DRBD_PEER_AF/ADDRESS) and drbdadm ``adm_khelper()``
        (DRBD_RESOURCE, DRBD_CONF, DRBD_MINOR, DRBD_VOLUME, DRBD_LL_DISK, DRBD_PEER,
        DRBD_PEERS); 9 kernel ``drbd_khelper()`` (DRBD_MY_/PEER_ADDRESS/AF, DRBD_PEER_NODE_ID,
        DRBD_CSTATE, DRBD_MINOR_<vnr>, UP_TO_DATE_NODES for fence handlers) and drbdadm
        (DRBD_RESOURCE, DRBD_CONF, DRBD_NODE_ID_<id>, DRBD_MY_NODE_ID, DRBD_MINOR, DRBD_VOLUME,
        DRBD_LL_DISK)."""
        peer = self._peer(st, host)
        minor = str(st["resources"][res]["minor"])
        env = {"HOME": "/", "TERM": "linux", "DRBD_RESOURCE": res, "DRBD_MINOR": minor,
               "DRBD_VOLUME": "0", "DRBD_CONF": "/etc/drbd.conf",
               "DRBD_LL_DISK": self._device(st, host, res),
               "DRBD_PEER_AF": "ipv4", "DRBD_PEER_ADDRESS": st["hosts"][peer]["address"]}
        if st["version"] == "8.4":
            env.update(DRBD_PEER=peer, DRBD_PEERS=peer)
        else:
            me, them = st["hosts"][host]["node_id"], st["hosts"][peer]["node_id"]
            env.update(DRBD_MY_AF="ipv4", DRBD_MY_ADDRESS=st["hosts"][host]["address"],
                       DRBD_PEER_NODE_ID=str(them), DRBD_MY_NODE_ID=str(me),
                       DRBD_CSTATE="Connecting", DRBD_MINOR_0=minor,
                       UP_TO_DATE_NODES="0x%08X" % (1 << me),
                       **{"DRBD_NODE_ID_%d" % me: host, "DRBD_NODE_ID_%d" % them: peer})
        return env

    def run_fence_handler(self, host, res):
        """Run ``host``'s fence-peer handler now (no lock held); its exit code, or None when
        none is configured (drbdadm then exits 0), or -1 when it could not run."""
        st = self._read()
        handler = st.get("handlers", {}).get(host, {}).get("fence-peer")
        if handler is None:
            return 0
        env = dict(os.environ, **handler["env"])
        env.update(self.handler_env(st, host, res))
        try:
            done = subprocess.run(handler["argv"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=FENCE_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
            return done.returncode
        except (OSError, subprocess.TimeoutExpired):
            return -1

    def apply_fence_result(self, st, host, res, code, cnt):
        """``conn_try_outdate_peer()`` after the handler: map its exit code; True when the
        peer's disk is now known Outdated or worse."""
        disk = st["disks"][res][host]
        link = st["links"][res]
        outcome = {P_INCONSISTENT: "peer is inconsistent or worse", P_OUTDATED: "peer was fenced",
                   P_DOWN: "peer is unreachable, assumed to be dead",
                   P_PRIMARY: "peer is active, outdating myself",
                   P_FENCING: "peer was stonithed"}.get(code, "fence-peer helper broken")
        if link["connected"] or link["connect_cnt"] != cnt or not disk["up"]:
            self.log(st, host, "fence-peer", code, "%s: ignoring fence-peer exit code" % res)
            return False
        if code == P_INCONSISTENT:
            disk["pdsk"] = "Inconsistent"
        elif code in (P_OUTDATED, P_FENCING):
            disk["pdsk"] = "Outdated"
        elif code == P_DOWN:
            if disk["disk"] == "UpToDate":
                disk["pdsk"] = "Outdated"
            else:
                outcome = "peer unreachable, doing nothing since disk != UpToDate"
        elif code == P_PRIMARY:
            disk["disk"] = "Outdated"
        self.log(st, host, "fence-peer", code, "%s: fence-peer helper returned %s (%s)"
                 % (res, code, outcome))
        if disk["pdsk"] in ("Outdated", "Inconsistent"):
            self._resume(st, host, res, "peer fenced")
            return True
        return False

    def fence_peer_thread(self, host, res, cnt):
        """The body of the spawned fence-peer process: run the handler, then apply it."""
        code = self.run_fence_handler(host, res)
        with self.transaction() as st:
            disk = st["disks"][res][host]
            disk["fence"] = None
            self.apply_fence_result(st, host, res, code, cnt)
        return code

    def wait_fences(self, timeout=30.0):
        """Wait (bounded) until no fence-peer handler runs; True if none runs any more."""
        deadline = time.monotonic() + timeout
        while True:
            st = self._read()
            if all(d["fence"] is None for disks in st["disks"].values()
                   for d in disks.values()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _sync_source(self, st, res):
        """The handshake: the SyncSource host, "" for no resync, None for split brain."""
        (ha, da), (hb, db) = sorted(st["disks"][res].items())
        bad_a, bad_b = da["disk"] == "Inconsistent", db["disk"] == "Inconsistent"
        if bad_a or bad_b:
            return "" if bad_a == bad_b else (hb if bad_a else ha)
        cur_a, cur_b = da["generations"][-1], db["generations"][-1]
        if cur_a == cur_b:
            return ""
        if cur_b in da["generations"]:
            return ha
        if cur_a in db["generations"]:
            return hb
        victims = [h for h, d in ((ha, da), (hb, db)) if d["discard_my_data"]]
        if len(victims) == 1:
            return self._peer(st, victims[0])
        return None

    def _handshake(self, st, res):
        link, disks = st["links"][res], st["disks"][res]
        source = self._sync_source(st, res)
        target = self._peer(st, source) if source else None
        if source is None or (target and disks[target]["role"] == "Primary"):
            for disk in disks.values():
                disk["want_connection"] = False
            if source is None:
                link["split_brain"] = True
                link["split_brains"] += 1
                for host in sorted(disks):
                    self._run_handler(st, host, "split-brain", res)
            self.log(st, None, "split-brain" if source is None else "handshake-refused", 1, res)
            return
        link["connect_cnt"] += 1
        for host, disk in disks.items():
            disk["discard_my_data"] = disk["new_cur_uuid"] = False
            disk["pdsk"] = "DUnknown"
            self._resume(st, host, res, "connection established again")
        link.update(connected=True, split_brain=False)
        if target:
            disks[target]["disk"] = "Inconsistent"
            link["sync"] = {"source": source, "target": target, "start": self.clock(),
                            "bytes": st["resources"][res]["size_mb"] * 1024 * 1024}
            self.log(st, None, "resync-started", 0, "%s: %s -> %s" % (res, source, target))
        elif [d for d in disks.values() if d["disk"] in ("UpToDate", "Consistent", "Outdated")]:
            for disk in disks.values():        # Consistent and Outdated vanish once connected
                disk["disk"] = "UpToDate"      # with the same data (8.4 sanitize_state())
        self.log(st, None, "connected", 0, res)

    def sync_progress(self, st, res):
        """(bytes done, bytes total, seconds elapsed) of the running resync, or None."""
        sync = st["links"][res]["sync"]
        if not sync:
            return None
        elapsed = max(0.0, self.clock() - sync["start"])
        done = min(sync["bytes"], int(elapsed * st["resync_rate"]))
        return done, sync["bytes"], elapsed

    def _advance_sync(self, st, res):
        done, total, _ = self.sync_progress(st, res)
        if done >= total:
            self._finish_sync(st, res)

    def _finish_sync(self, st, res):
        link = st["links"][res]
        source, target = link["sync"]["source"], link["sync"]["target"]
        _copy_over(self._device(st, source, res), self._device(st, target, res))
        disks = st["disks"][res]
        disks[target]["generations"] = list(disks[source]["generations"])
        disks[target]["disk"] = disks[source]["disk"]
        link["sync"] = None
        self.log(st, None, "resync-finished", 0, "%s: %s -> %s" % (res, source, target))
        # 8.4: after-resync-target on the SyncTarget; 9: unfence-peer on the node whose peer
        # is UpToDate again (drbd_state.c drbd_should_unfence())
        if st["version"] == "8.4":
            self._run_handler(st, target, "after-resync-target", res)
        else:
            self._run_handler(st, source, "unfence-peer", res)

    # -- operations (the CLI calls these inside a transaction; they return an outcome) -----
    def promote(self, st, host, res, force=False, fenced=None):
        """``primary [--force]``: "ok", "not-up", "two-primaries", "no-uptodate",
        "primary-nop" or "fence-needed" (the caller runs the fence-peer handler outside the
        transaction, applies it and asks again with ``fenced`` = its outcome, True/False)."""
        disk, view = st["disks"][res][host], self.view(st, host, res)
        if not disk["up"]:
            return "not-up"
        if disk["role"] == "Primary":
            return "ok"
        if view["connected"] and view["peer_role"] == "Primary":
            return "two-primaries"
        if not view["connected"] and self.policy(st, host) == "dont-care" \
                and disk["disk"] == "Consistent":
            disk["disk"] = "UpToDate"        # conn_try_outdate_peer() is true for dont-care
        needs_fence = (not view["connected"] and self.policy(st, host) != "dont-care"
                       and disk["pdsk"] not in ("Outdated", "Inconsistent")
                       and disk["disk"] in ("UpToDate", "Consistent"))
        if needs_fence and fenced is None:
            return "fence-needed"
        if disk["disk"] == "Consistent" and not view["connected"] and fenced and not force:
            disk["disk"] = "UpToDate"
        good = disk["disk"] == "UpToDate" or (view["connected"] and view["peer_disk"] == "UpToDate")
        if not good and not force:
            return "no-uptodate"
        if needs_fence and not fenced and disk["pdsk"] not in ("Outdated", "Inconsistent"):
            if not force:
                return "primary-nop"
            disk["pdsk"] = "Outdated"        # "Forced into split brain situation!"
            self.log(st, host, "primary", 0, "%s: forced into split brain situation" % res)
        if view["repl"] == "SyncTarget":
            self._finish_sync(st, res)      # reads of a Primary SyncTarget come from its peer
        if not good:
            disk["disk"] = "UpToDate"
        disk["role"] = "Primary"
        if not good or not view["connected"]:
            self._new_generation(st, disk)
        return "ok"

    def demote(self, st, host, res, ignore_openers=False):
        """``secondary``: "ok", "not-up" or "in-use" (the device file is open)."""
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "not-up"
        if disk["role"] == "Secondary":
            return "ok"
        if not ignore_openers and openers(self._device(st, host, res)):
            return "in-use"
        self.replicate(st, res)
        disk["role"] = "Secondary"
        if disk["susp_fen"]:              # nobody left to serve: frozen writes were never
            disk["new_cur_uuid"] = False  # acknowledged, so no new data generation either
            self._resume(st, host, res, "demoted")
        return "ok"

    def _graceful(self, st, res):
        """A connected node disconnects on purpose (``disconnect``/``down``): over the still
        working link the Secondary is outdated and the Primary knows it
        (``conn_try_disconnect()`` in drbd_nl.c)."""
        link = st["links"][res]
        if not link["connected"] or link["sync"]:
            return
        disks = st["disks"][res]
        roles = dict((h, d["role"]) for h, d in disks.items())
        if sorted(roles.values()) != ["Primary", "Secondary"]:
            return
        for host, disk in disks.items():
            if disk["role"] == "Secondary" and disk["disk"] == "UpToDate":
                disk["disk"] = "Outdated"
            elif disk["role"] == "Primary":
                disk["pdsk"] = "Outdated"

    def outdate(self, st, host, res):
        """``drbdadm outdate``: "ok", "primary", "connected" or "inconsistent"."""
        disk, view = st["disks"][res][host], self.view(st, host, res)
        if not disk["up"]:                    # drbdmeta outdate on the meta-data
            if disk["disk"] in ("UpToDate", "Consistent", "Outdated"):
                disk["disk"] = "Outdated"
                return "ok"
            return "inconsistent"
        if disk["role"] == "Primary":
            return "primary"
        if view["connected"]:
            return "connected"
        if disk["disk"] not in ("UpToDate", "Consistent", "Outdated"):
            return "inconsistent"
        disk["disk"] = "Outdated"
        return "ok"

    def resume_io(self, st, host, res):
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "not-up"
        self._resume(st, host, res, "drbdadm resume-io")
        return "ok"

    def connect(self, st, host, res, discard_my_data=False):
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "not-up"
        if disk["want_connection"]:
            return "net-configured"
        disk.update(want_connection=True, discard_my_data=bool(discard_my_data))
        self._settle(st)
        return "ok"

    def disconnect(self, st, host, res):
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "not-up"
        self._graceful(st, res)
        disk["want_connection"] = False
        self._settle(st)
        return "ok"

    def up(self, st, host, res):
        disk = st["disks"][res][host]
        if disk["up"]:
            return "configured"
        self._attach(st, host, res)
        self._settle(st)
        return "ok"

    def _attach(self, st, host, res):
        """``up`` / boot: the disk state from the meta-data (``drbd_adm_attach()``): an
        UpToDate disk comes back Consistent unless the peer was known Outdated or the policy
        is dont-care."""
        disk = st["disks"][res][host]
        disk.update(up=True, role="Secondary", want_connection=True, susp_fen=False,
                    frozen=[], fence=None, new_cur_uuid=False)
        if disk["disk"] == "UpToDate" and disk["pdsk"] != "Outdated" \
                and self.policy(st, host) != "dont-care":
            disk["disk"] = "Consistent"

    def down(self, st, host, res):
        """``down`` demotes first, so it fails like ``secondary`` while the device is open."""
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "ok"
        outcome = self.demote(st, host, res)
        if outcome != "ok":
            return outcome
        self._graceful(st, res)
        disk.update(up=False, role="Secondary", want_connection=True)
        self._settle(st)
        return "ok"

    # -- the lab's levers ------------------------------------------------------------------
    def set_link(self, up):
        """Cut (False) or restore (True) the replication link between the hosts."""
        with self.transaction() as st:
            st["link_up"] = bool(up)
            self._settle(st)
            self.log(st, None, "set-link", 0, "up" if up else "down")

    def set_fencing(self, host, policy):
        """``fencing POLICY;`` in ``host``'s drbd.conf (dont-care, resource-only,
        resource-and-stonith)."""
        with self.transaction() as st:
            self._check_host(st, host)
            st["hosts"][host]["fencing"] = policy_of(policy)

    def set_exec_prefix(self, host, argv):
        """How to run a process "on" ``host`` (e.g. ``ip netns exec NS``): the fence-peer
        handler the double starts by itself runs there."""
        with self.transaction() as st:
            self._check_host(st, host)
            st["hosts"][host]["exec_prefix"] = list(argv)

    def settle(self):
        """One tick of the "kernel": apply connection changes and resync progress now."""
        with self.transaction():
            pass

    def set_handler(self, host, name, argv, env=None):
        """Like drbd.conf's ``handlers { split-brain "..."; }`` on ``host``: ``argv`` runs (with
        DRBD_RESOURCE, DRBD_MINOR and DRBD_PEER_NODE_ID set, plus ``env``) when the event
        happens. The kernel module waits for a handler, so it must be quick."""
        with self.transaction() as st:
            self._check_host(st, host)
            st.setdefault("handlers", {}).setdefault(host, {})[name] = {
                "argv": list(argv), "env": dict(env or {})}

    def remove_handler(self, host, name):
        with self.transaction() as st:
            self._check_host(st, host)
            st.setdefault("handlers", {}).setdefault(host, {}).pop(name, None)

    def _run_handler(self, st, host, name, res):
        """Run ``host``'s handler ``name`` now, on that host (its ``exec_prefix``: the kernel
        of that node calls it, whichever process made the transaction here)."""
        handler = st.get("handlers", {}).get(host, {}).get(name)
        if handler is None:
            return
        env = dict(os.environ, **handler["env"])
        env.update(self.handler_env(st, host, res))
        env.update(DRBD_PEER_NODE_ID=str(st["hosts"][self._peer(st, host)]["node_id"]))
        argv = list(st["hosts"][host].get("exec_prefix") or []) + list(handler["argv"])
        try:
            done = subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=HANDLER_TIMEOUT)
            rc = done.returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            rc = "%s" % exc
        self.log(st, host, "handler %s" % name, rc if isinstance(rc, int) else 1, str(rc))

    def set_resync_rate(self, bytes_per_second):
        with self.transaction() as st:
            st["resync_rate"] = int(bytes_per_second)

    def crash(self, host):
        """Power loss: the host's resources go down without a clean demote."""
        with self.transaction() as st:
            self._check_host(st, host)
            for res in sorted(st["resources"]):
                self.replicate(st, res)
                disk = st["disks"][res][host]
                disk.update(up=False, role="Secondary", susp_fen=False, frozen=[], fence=None,
                            new_cur_uuid=False)
            st["hosts"][host]["crashed"] = True
            self._settle(st)
            self.log(st, None, "crash", 0, host)

    def boot(self, host):
        """Power on: every resource up as Secondary, wanting a connection."""
        with self.transaction() as st:
            self._check_host(st, host)
            st["hosts"][host]["crashed"] = False
            for res in sorted(st["resources"]):
                self._attach(st, host, res)
            self._settle(st)
            self.log(st, None, "boot", 0, host)

    def _check_host(self, st, host):
        if host not in st["hosts"]:
            raise DoubleError("unknown host %r (world has %s)" % (host, ", ".join(st["hosts"])))

    # -- views -----------------------------------------------------------------------------
    def view(self, st, host, res):
        """What ``host`` sees of ``res``: roles, disk states and connection in DRBD's words."""
        disk = st["disks"][res][host]
        peer = st["disks"][res][self._peer(st, host)]
        link = st["links"][res]
        sync = link["sync"] or {}
        connected = link["connected"] and disk["up"]
        repl, cstate, conn = "Off", "Unconfigured", "Unconfigured"
        if connected:
            repl = ("SyncSource" if sync.get("source") == host else
                    "SyncTarget" if sync.get("target") == host else "Established")
            cstate, conn = ("Connected" if repl == "Established" else repl), "Connected"
        elif disk["up"] and disk["want_connection"]:
            cstate, conn = "WFConnection", "Connecting"
        elif disk["up"]:
            cstate = conn = "StandAlone"
        return {"up": disk["up"], "role": disk["role"], "disk": disk["disk"],
                "connected": connected, "cstate": cstate, "repl": repl, "conn": conn,
                "peer_role": peer["role"] if connected else "Unknown",
                "peer_disk": peer["disk"] if connected else disk["pdsk"],
                "suspended": bool(disk["susp_fen"] and disk["up"]),
                "minor": st["resources"][res]["minor"],
                "size": st["resources"][res]["size_mb"] * 1024 * 1024,
                "sync": self.sync_progress(st, res) if connected else None}

    def snapshot(self):
        """The whole state plus each host's view, for invariant checks in the lab."""
        with self.transaction() as st:
            snap = copy.deepcopy(st)
            snap["views"] = dict((res, dict((h, self.view(st, h, res)) for h in st["hosts"]))
                                 for res in st["resources"])
            snap["primaries_while_connected"] = sorted(
                res for res, link in st["links"].items() if link["connected"]
                and all(d["role"] == "Primary" for d in st["disks"][res].values()))
        return snap

    def events(self, host=None):
        """Logged events in order: one host's commands, or (``host=None``) everything."""
        folders = [host] if host else [""] + sorted(self._read()["hosts"])
        entries = []
        for folder in folders:
            path = os.path.join(self.directory, folder, EVENTS_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    entries.extend(json.loads(line) for line in f if line.strip())
        return sorted(entries, key=lambda e: e["seq"])

    def proc_drbd_text(self, host):
        """The host's /proc/drbd as DRBD would print it now."""
        with self.transaction() as st:
            return render_proc_drbd(self, st, host)


WRAPPER = """#!/bin/sh
# DRBD double for the lab (written by iscsi_ha_lab.drbd_double.install_wrappers)
PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}
export PYTHONPATH
exec {python} -m iscsi_ha_lab.drbd_double_cli --world {world} --host {host} {prog} "$@"
"""


def install_wrappers(bin_dir, world_dir, host, python=sys.executable):
    """Write executable ``drbdadm`` and ``drbdsetup`` scripts into ``bin_dir``; return paths."""
    import shlex
    os.makedirs(bin_dir, exist_ok=True)
    from iscsi_ha_lab.paths import pythonpath
    paths = []
    for prog in ("drbdadm", "drbdsetup"):
        path = os.path.join(bin_dir, prog)
        text = WRAPPER.format(python=shlex.quote(python), prog=prog, host=shlex.quote(host),
                              world=shlex.quote(os.path.abspath(world_dir)),
                              root=shlex.quote(pythonpath()))
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        paths.append(path)
    return paths
