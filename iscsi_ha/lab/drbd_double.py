"""A strict stand-in for DRBD in the lab: two hosts, one shared "world" directory.

This machine has no DRBD kernel module, so the lab's ``drbdadm`` / ``drbdsetup`` are wrapper
scripts (see :func:`install_wrappers`) that run this module. The whole replicated system lives in
a world directory shared by both simulated hosts::

    <world>/world.json            the state (roles, disk states, generations, link, resync)
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
- Fencing (``fencing=True``, the default) models ``fencing resource-only`` plus a fence-peer
  handler: when a connected Primary that stays up loses its peer (link cut, peer crash, disconnect
  or down), the peer's UpToDate disk becomes Outdated, so it cannot be promoted without --force.
  When the Primary itself crashes nobody is fenced: the Secondary stays UpToDate and may take over.
  With ``fencing=False`` nothing is outdated and a link cut lets both sides be promoted.
- Simplifications: one volume per resource; no Consistent/Diskless states (disk state persists
  across down/up and crash/boot); two hosts only.

The world changes only inside a transaction: a drbdadm/drbdsetup invocation or any World method
(``settle()`` is the lab's "kernel tick": it applies resync progress and link changes now). A host
that ``crash()``-ed runs no commands until ``boot()``.

Error texts live in :mod:`iscsi_ha.lab.drbd_double_cli`, output formats in
:mod:`iscsi_ha.lab.drbd_double_render` (sources cited there).
Time is injectable (``World(directory, clock=...)``) for resync progress; use one clock per world.
"""
import contextlib
import copy
import fcntl
import json
import os
import subprocess
import sys
import time

from iscsi_ha.lab.drbd_double_render import render_proc_drbd

DEFAULT_RESYNC_RATE = 128 * 1024 * 1024     # bytes per second: the default 64 MB syncs in 0.5 s
STATE_FILE = "world.json"
LOCK_FILE = "world.lock"
EVENTS_FILE = "events.jsonl"
LOCK_TIMEOUT = 30.0
COPY_CHUNK = 1024 * 1024


HANDLER_TIMEOUT = 10      # seconds a DRBD handler may take (DRBD itself waits for it)


class DoubleError(Exception):
    """Misuse of the double itself (unknown host, bad world directory, lock timeout)."""


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
    return {"up": up, "role": "Secondary", "disk": "UpToDate", "want_connection": True,
            "generations": [generation], "discard_my_data": False, "peer_outdated": False}


def _initial_state(hosts, resources, version, fencing, resync_rate, up):
    state = {"format": 1, "version": version, "fencing": bool(fencing),
             "resync_rate": int(resync_rate), "link_up": True, "next_generation": 2, "seq": 0,
             "hosts": {}, "resources": {}, "disks": {}, "links": {}}
    for index, host in enumerate(hosts):
        state["hosts"][host] = {"node_id": index, "address": "192.0.2.%d" % (11 + index),
                                "crashed": False}
    for name, spec in resources.items():
        state["resources"][name] = {"minor": int(spec["minor"]),
                                    "size_mb": int(spec.get("size_mb", 64))}
        state["disks"][name] = dict((h, _new_disk(1, up)) for h in hosts)
        state["links"][name] = {"connected": False, "sync": None, "split_brain": False,
                                "split_brains": 0}
    return state


class World(object):
    """The shared state of both simulated hosts; every method is one locked transaction."""

    def __init__(self, directory, clock=time.time):
        self.directory = os.path.abspath(directory)
        self.clock = clock
        if not os.path.exists(os.path.join(self.directory, STATE_FILE)):
            raise DoubleError("no DRBD double world in %s" % self.directory)

    @classmethod
    def create(cls, directory, hosts=("a", "b"), resources=None, version="8.4", fencing=True,
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
        with open(os.path.join(directory, STATE_FILE), "w") as f:
            json.dump(state, f)
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
        with open(os.path.join(self.directory, STATE_FILE)) as f:
            return json.load(f)

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
        path = os.path.join(self.directory, STATE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(st, f, indent=1, sort_keys=True)
        os.rename(path + ".tmp", path)
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

    def _lose_connection(self, st, res):
        self.replicate(st, res)
        link = st["links"][res]
        link["connected"], link["sync"] = False, None
        for host, disk in st["disks"][res].items():
            if not (disk["up"] and disk["role"] == "Primary"):
                continue
            peer = st["disks"][res][self._peer(st, host)]
            if st["fencing"] and peer["disk"] == "UpToDate":
                peer["disk"] = "Outdated"
                disk["peer_outdated"] = True
                self.log(st, None, "fence-peer", 0, "%s: %s outdated" % (res, self._peer(st, host)))
            self._new_generation(st, disk)
        self.log(st, None, "connection-lost", 0, res)

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
        for disk in disks.values():
            disk["discard_my_data"] = disk["peer_outdated"] = False
        link.update(connected=True, split_brain=False)
        if target:
            disks[target]["disk"] = "Inconsistent"
            link["sync"] = {"source": source, "target": target, "start": self.clock(),
                            "bytes": st["resources"][res]["size_mb"] * 1024 * 1024}
            self.log(st, None, "resync-started", 0, "%s: %s -> %s" % (res, source, target))
        elif "UpToDate" in [d["disk"] for d in disks.values()]:
            for disk in disks.values():
                disk["disk"] = "UpToDate"
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

    # -- operations (the CLI calls these inside a transaction; they return an outcome) -----
    def promote(self, st, host, res, force=False):
        """``primary [--force]``: "ok", "not-up", "two-primaries" or "no-uptodate"."""
        disk, view = st["disks"][res][host], self.view(st, host, res)
        if not disk["up"]:
            return "not-up"
        if disk["role"] == "Primary":
            return "ok"
        if view["connected"] and view["peer_role"] == "Primary":
            return "two-primaries"
        good = disk["disk"] == "UpToDate" or (view["connected"] and view["peer_disk"] == "UpToDate")
        if not good and not force:
            return "no-uptodate"
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
        disk["want_connection"] = False
        self._settle(st)
        return "ok"

    def up(self, st, host, res):
        disk = st["disks"][res][host]
        if disk["up"]:
            return "configured"
        disk.update(up=True, role="Secondary", want_connection=True)
        self._settle(st)
        return "ok"

    def down(self, st, host, res):
        """``down`` demotes first, so it fails like ``secondary`` while the device is open."""
        disk = st["disks"][res][host]
        if not disk["up"]:
            return "ok"
        outcome = self.demote(st, host, res)
        if outcome != "ok":
            return outcome
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

    def _run_handler(self, st, host, name, res):
        handler = st.get("handlers", {}).get(host, {}).get(name)
        if handler is None:
            return
        env = dict(os.environ, **handler["env"])
        env.update(DRBD_RESOURCE=res, DRBD_MINOR=str(st["resources"][res]["minor"]),
                   DRBD_PEER_NODE_ID=str(st["hosts"][self._peer(st, host)]["node_id"]))
        try:
            done = subprocess.run(handler["argv"], env=env, stdout=subprocess.PIPE,
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
                disk.update(up=False, role="Secondary")
            st["hosts"][host]["crashed"] = True
            self._settle(st)
            self.log(st, None, "crash", 0, host)

    def boot(self, host):
        """Power on: every resource up as Secondary, wanting a connection."""
        with self.transaction() as st:
            self._check_host(st, host)
            st["hosts"][host]["crashed"] = False
            for res in sorted(st["resources"]):
                st["disks"][res][host].update(up=True, role="Secondary", want_connection=True)
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
                "peer_disk": (peer["disk"] if connected else
                              "Outdated" if disk["peer_outdated"] else "DUnknown"),
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
# DRBD double for the lab (written by iscsi_ha.lab.drbd_double.install_wrappers)
PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}
export PYTHONPATH
exec {python} -m iscsi_ha.lab.drbd_double --world {world} --host {host} {prog} "$@"
"""


def install_wrappers(bin_dir, world_dir, host, python=sys.executable):
    """Write executable ``drbdadm`` and ``drbdsetup`` scripts into ``bin_dir``; return paths."""
    import shlex
    os.makedirs(bin_dir, exist_ok=True)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = []
    for prog in ("drbdadm", "drbdsetup"):
        path = os.path.join(bin_dir, prog)
        text = WRAPPER.format(python=shlex.quote(python), prog=prog, host=shlex.quote(host),
                              world=shlex.quote(os.path.abspath(world_dir)),
                              root=shlex.quote(package_root))
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        paths.append(path)
    return paths


def main(argv=None):
    """``python -m iscsi_ha.lab.drbd_double --world DIR --host NAME drbdadm|drbdsetup ARGS``."""
    from iscsi_ha.lab import drbd_double_cli
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        world_dir, host, prog, args = drbd_double_cli.split_invocation(argv)
        world = World(world_dir)
        if prog == "drbdsetup" and args[:1] == ["events2"] and world._read()["version"] == "9":
            from iscsi_ha.lab.drbd_double_events import stream
            return stream(world, host, args[1:])
        rc, out, err = drbd_double_cli.invoke(world, host, prog, args)
    except DoubleError as exc:
        rc, out, err = 20, "", "drbd double: %s\n" % exc
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    # Run the package's copy of this module, so that its classes are the ones the CLI imports.
    from iscsi_ha.lab import drbd_double as _module
    sys.exit(_module.main())
