"""``drbdsetup events2`` of the DRBD double (DRBD 9 only): a stream that never ends by itself.

Like the real command (drbd-utils ``user/v9/drbdsetup.c``, ``events2``), it first prints one
``exists`` line per object of every resource that is up on this host and ``exists -``, then one
``change`` line each time an object's state changes, flushed at once. The kernel pushes real
events over netlink; the double cannot, so it looks at the world's state files every
POLL seconds (reading it only when its mtime moved) and reports what differs. The lines carry
DRBD's own words (``role:``, ``connection:``, ``disk:``, ``replication:``, ``peer-disk:``);
their order within one change is not significant. The stream ends when its reader goes away
(a write fails) or when the process that started it is gone (it is re-parented).
"""
import os
import sys
import time

POLL = 0.05
ORDER = {"resource": 0, "connection": 1, "device": 2, "peer-device": 3}
LIMIT = 24 * 3600.0     # bounded, as every loop in the lab


def _lines(world, st, host):
    """{object key: state words} for every object of ``host``'s resources that are up."""
    out = {}
    peer = [h for h in sorted(st["hosts"]) if h != host][0]
    peer_id = sorted(st["hosts"]).index(peer)
    for res in sorted(st["resources"]):
        view = world.view(st, host, res)
        if not view["up"]:
            continue
        # DRBD 9 names why I/O is suspended ("fencing" while the fence-peer handler runs)
        out[("resource", res)] = "name:%s role:%s suspended:%s" % (
            res, view["role"], "fencing" if view.get("suspended") else "no")
        out[("connection", res)] = "name:%s peer-node-id:%d conn-name:%s connection:%s role:%s" % (
            res, peer_id, peer, view["conn"], view["peer_role"])
        out[("device", res)] = "name:%s volume:0 minor:%d disk:%s client:no" % (
            res, view["minor"], view["disk"])
        out[("peer-device", res)] = ("name:%s peer-node-id:%d conn-name:%s volume:0 "
                                     "replication:%s peer-disk:%s" % (
                                         res, peer_id, peer, view["repl"], view["peer_disk"]))
    return out


def _order(key):
    return key[1], ORDER[key[0]]


def _read(world):
    """The world's state (the link's file and each host's file), or None while a writer is
    between renames; read without the world's lock, which the stream must never hold."""
    for _ in range(5):
        try:
            return world._read()
        except (ValueError, OSError, KeyError):
            time.sleep(0.005)
    return None


def _stamp(world):
    """The mtimes of every file the state lives in: a change of any of them is a change."""
    from iscsi_ha_lab.drbd_double import HOST_FILE, STATE_FILE
    paths = [os.path.join(world.directory, STATE_FILE)]
    for name in sorted(os.listdir(world.directory)):
        host_file = os.path.join(world.directory, name, HOST_FILE)
        if os.path.isfile(host_file):
            paths.append(host_file)
    stamp = []
    for path in paths:
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
    try:
        stamp = _stamp(world)
        st = _read(world)
        seen = _lines(world, st, host) if st else {}
        for key in sorted(seen, key=_order):
            out.write("exists %s %s\n" % (key[0], seen[key]))
        out.write("exists -\n")
        out.flush()
        while time.monotonic() - started < LIMIT and os.getppid() == parent:
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
                    out.write("destroy %s %s\n" % (key[0], seen[key].split(" ", 1)[0]))
                elif now[key] != seen.get(key):
                    out.write("%s %s %s\n" % ("change" if key in seen else "create", key[0],
                                              now[key]))
            out.flush()
            seen = now
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0
