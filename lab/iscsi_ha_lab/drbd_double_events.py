"""``drbdsetup events2`` of the DRBD double: a stream that never ends by itself.

Like the real command (drbd-utils ``user/v9/drbdsetup.c`` and ``user/v84/drbdsetup.c``,
``print_notifications()``), it first prints one ``exists`` line per object of every resource
that is up on this host and ``exists -``, then a ``change`` line each time an object's state
changes, flushed at once: the object's key and only the state words that changed (the real
command keeps the last state of each object and prints what differs). The kernel pushes real
events over netlink at once; the double's nearest is inotify on the directories of the world's
state files (every change replaces one by rename): each event makes it read the state and
report what differs. Without inotify it looks at the files' mtimes every POLL seconds. The lines carry
DRBD's own words (``role:``, ``connection:``, ``disk:``, ``replication:``, ``peer-disk:``);
their order within one change is not significant.

DRBD 8.4 streams too: its kernel has events2 since 8.4.6 (LINBIT/drbd-8.4 40b874c5). 8.4
has no node ids, so drbd-utils' ``event_key()`` prints ``peer-node-id:0`` and ``conn-name:peer``
for a connection and a peer device, and 8.4's devices have no ``client:`` word.

The stream ends when its reader goes away (a write fails) or when the process that started it
is gone (it is re-parented).
"""
import fcntl
import os
import select
import sys
import time

POLL = 0.05
SETTLE_STEP, SETTLE_MAX = 0.002, 2.0
ORDER = {"resource": 0, "connection": 1, "device": 2, "peer-device": 3}
LIMIT = 24 * 3600.0     # bounded, as every loop in the lab


def _lines(world, st, host):
    """{(object, resource): (key words, [state words])} for every object of ``host``'s
    resources that are up."""
    out = {}
    peer = [h for h in sorted(st["hosts"]) if h != host][0]
    # 9 prints a device's client: with its disk:, a peer device's peer-client: with its
    # peer-disk: (drbd-utils user/v9/drbdsetup_events2.c, print_device_changes() and
    # print_peer_device_changes()): one word here, so a change prints them together
    if st["version"] == "8.4":
        peer_id, conn_name, client, peer_client = 0, "peer", "", ""
    else:
        peer_id, conn_name = sorted(st["hosts"]).index(peer), peer
        client, peer_client = " client:no", " peer-client:no"
    for res in sorted(st["resources"]):
        view = world.view(st, host, res)
        if not view["up"]:
            continue
        peer_key = "name:%s peer-node-id:%d conn-name:%s" % (res, peer_id, conn_name)
        # DRBD names why I/O is suspended ("fencing" while the fence-peer handler runs)
        out[("resource", res)] = ("name:%s" % res, [
            "role:%s" % view["role"],
            "suspended:%s" % ("fencing" if view.get("suspended") else "no")])
        out[("connection", res)] = (peer_key, [
            "connection:%s" % view["conn"], "role:%s" % view["peer_role"]])
        out[("device", res)] = ("name:%s volume:0 minor:%d" % (res, view["minor"]),
                                ["disk:%s%s" % (view["disk"], client)])
        out[("peer-device", res)] = (peer_key + " volume:0", [
            "replication:%s" % view["repl"], "peer-disk:%s%s" % (view["peer_disk"], peer_client)])
    return out


def _words(entry, before=None):
    """The line's text after the object name: its key and the state words that differ from
    ``before`` (all of them without one)."""
    key, words = entry
    if before is not None and len(before[1]) == len(words):
        words = [w for w, old in zip(words, before[1]) if w != old]
    return " ".join([key] + words)


def _order(key):
    return key[1], ORDER[key[0]]


def _read(world):
    """The world's state (the link's file and each host's file) between two transactions, as
    the kernel notifies a state once it is committed (and /proc/drbd shows it): under a shared
    hold of the world's lock, taken without ever waiting on it (a writer holds it while it
    renames its files; the stream retries every SETTLE_STEP s). After SETTLE_MAX s of a
    transaction, or without the lock file, it reads as it can; None while a writer is between
    renames."""
    from iscsi_ha_lab.drbd_double import LOCK_FILE
    try:
        lock = open(os.path.join(world.directory, LOCK_FILE), "a+")
    except OSError:
        lock = None
    try:
        for _ in range(int(SETTLE_MAX / SETTLE_STEP)):
            try:
                if lock is not None:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError:
                time.sleep(SETTLE_STEP)
        for _ in range(5):
            try:
                return world._read()
            except (ValueError, OSError, KeyError):
                time.sleep(0.005)
        return None
    finally:
        if lock is not None:
            lock.close()          # drops the shared hold, if taken


def _paths(world):
    """Every file the state lives in."""
    from iscsi_ha_lab.drbd_double import HOST_FILE, STATE_FILE
    paths = [os.path.join(world.directory, STATE_FILE)]
    for name in sorted(os.listdir(world.directory)):
        host_file = os.path.join(world.directory, name, HOST_FILE)
        if os.path.isfile(host_file):
            paths.append(host_file)
    return paths


def _stamp(world):
    """The mtimes of every file the state lives in: a change of any of them is a change."""
    stamp = []
    for path in _paths(world):
        try:
            stamp.append(os.stat(path).st_mtime_ns)
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def stream(world, host, args, out=None):
    """Run the stream; returns the exit code (0 when the reader went away)."""
    out = out or sys.stdout
    if args not in ([], ["all"]):
        out.flush()
        sys.stderr.write("events2: the DRBD double streams 'all' only\n")
        return 20
    parent, started = os.getppid(), time.monotonic()
    seen = {}
    from iscsi_ha.wakeups import Inotify
    watch = Inotify(_paths(world))
    try:
        stamp = _stamp(world)
        st = _read(world)
        seen = _lines(world, st, host) if st else {}
        for key in sorted(seen, key=_order):
            out.write("exists %s %s\n" % (key[0], _words(seen[key])))
        out.write("exists -\n")
        out.flush()
        while time.monotonic() - started < LIMIT and os.getppid() == parent:
            if watch.complete:
                # an event, or a second (to notice a parent gone): read when one came
                select.select([watch.fd], [], [], 1.0)
                if not watch.take():
                    continue
            else:
                time.sleep(POLL)
                now_stamp = _stamp(world)
                if now_stamp == stamp:
                    continue
                stamp = now_stamp
            st = _read(world)
            if st is None:
                continue
            now = _lines(world, st, host)
            for key in sorted(set(now) | set(seen), key=_order):
                if key not in now:
                    out.write("destroy %s %s\n" % (key[0], seen[key][0]))
                elif key not in seen:
                    out.write("create %s %s\n" % (key[0], _words(now[key])))
                elif now[key] != seen[key]:
                    out.write("change %s %s\n" % (key[0], _words(now[key], seen[key])))
            out.flush()
            seen = now
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    finally:
        watch.close()
    return 0
