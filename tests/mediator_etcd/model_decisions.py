"""A minimal model of the mediator's promote and fence-peer decisions, on the etcd backend.

Test-only: it lets the backend tests run the race "promote at one instance, fence-peer at
another" and "an instance killed mid-promote" with the rules of the protocol (generation
must match, candidate eligible and not outdated, primary's lease over at this instance).
The real decisions live in the mediator service; test_mediator_etcd.py drives those.
"""
import os
import sys
import time

from iscsi_ha_mediator import etcd_backend as eb


class Refused(Exception):
    pass


def promote(backend, pool, node, gen, pause=None):
    """Grant ``node`` the primary role at generation ``gen``+1, or raise Refused/StorageError.
    ``pause``: print READ once decided, then wait that long before the commit (to be killed
    in); None: no marker, no wait."""
    record, rev = backend.read(pool)
    if record is None:
        raise Refused("no such pool")
    if record.get("primary") == node and record["generation"] == gen + 1:
        return record["generation"]  # our earlier grant, answer lost: same grant again
    if record["generation"] != gen:
        raise Refused("stale generation %d (now %d)" % (gen, record["generation"]))
    if node not in record["eligible"] or node in record["outdated"]:
        raise Refused("not eligible")
    holder = record.get("primary")
    ok, retry = backend.grant_allowed(pool, holder)
    if not ok:
        raise Refused("retry after %.1fs" % retry)
    new = dict(record, generation=gen + 1, primary=node, eligible=[node],
               outdated=sorted(set(record["outdated"]) | ({holder} if holder else set())))
    if pause is not None:
        sys.stdout.write("READ\n")
        sys.stdout.flush()
        time.sleep(pause)
    backend.commit(pool, rev, new, {"event": "promote", "node": node, "from": holder},
                   absent_presence=[holder] if holder else [])
    return gen + 1


def fence_peer(backend, pool, node, gen):
    record, rev = backend.read(pool)
    if record["primary"] != node or record["generation"] != gen:
        raise Refused("deposed")
    peers = [n for n in record["eligible"] if n != node]
    new = dict(record, generation=gen + 1, eligible=[node],
               outdated=sorted(set(record["outdated"]) | set(peers)))
    backend.commit(pool, rev, new, {"event": "fence-peer", "node": node, "peers": peers})
    return gen + 1


def _main():
    """Run one promote in its own process: argv = endpoints pool node gen pause lease margin."""
    from iscsi_ha_mediator import etcd_client as ec
    endpoints, pool, node, gen, pause, lease, margin = sys.argv[1:8]
    backend = eb.EtcdBackend(ec.EtcdSettings(endpoints.split(",")), lease=float(lease),
                             margin=float(margin))
    backend.start()
    # A fresh instance: the candidate heartbeats to it for one lease + margin first.
    deadline = time.monotonic() + float(lease) + float(margin) + 0.05
    while time.monotonic() < deadline:
        backend.node_seen(pool, node)
        time.sleep(0.05)
    try:
        promote(backend, pool, node, int(gen), float(pause))
        print("GRANTED")
    except (Refused, eb.StorageError) as exc:
        print("REFUSED %s" % exc)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _main()
