"""The mediator's state in etcd: several stateless mediator instances, one truth.

Layout under the configured prefix (default ``/iscsi-ha-mediator/``)::

    pools/<pool>                     the pool's record (JSON): generation, primary, eligible,
                                     outdated, synced data generation, ... ; its etcd
                                     mod_revision is the compare-and-set token
    audit/<pool>/<write id>          one audit entry per change, written in the SAME
                                     transaction as the change it describes (and entries that
                                     change nothing: refusals, credential events); ordered by
                                     etcd revision. ``audit-mediator/<id>``: mediator-wide ones
    presence/<pool>/<node>/<inst>    "instance <inst> hears <node> now"; attached to the
                                     instance's etcd lease, written only when a node starts or
                                     stops talking to an instance or its DRBD report changes
                                     (never per heartbeat), batched up to 100 per transaction.
                                     Its value is the node's latest DRBD report at <inst>
                                     (JSON, ``REPORT_FIELDS``) or ``1`` before the first one
    docs/<name>                      other shared documents (credentials ``cred/<pool>``) with
                                     CAS; ``docs_version`` counts their changes from any
                                     instance so the credential index can rebuild
(pool and node names are %-escaped in keys.)

Rules
- Every change of a pool (generation, primary, eligible or outdated set) is ONE etcd ``txn``
  whose first compare is ``mod_revision(pools/<pool>) == the revision the decision read``;
  it puts the new record and its audit entry together. Nothing else writes a pool record.
- Heartbeats never wait for etcd, and never write to it per heartbeat. Liveness stays in
  memory (``node_seen``); only the *transitions* (a node starts or stops heartbeating at this
  instance; its DRBD report changes, below) are written, in the background, as presence keys
  bound to this instance's etcd lease, so they vanish by themselves when the instance dies.
- The nodes' DRBD reports are shared through those presence keys (``publish_report``,
  ``shared_report``): proving the two nodes in sync after a resync (which makes both eligible
  again) needs both reports, and the two nodes may talk to two instances (an agent moves to the
  next address when one fails, and stays there). A report is rewritten only when it changes:
  its DRBD role, disk and connection states, data generation (masked current UUID), the
  node's generation, or the pool record revision the instance held when it took the
  heartbeat. All are stable between failovers, so a heartbeat that repeats the previous
  report writes nothing (measured: 2000 identical heartbeats, 0 writes). Another instance
  uses a shared report only if it was taken at the very record revision its decision reads
  (so after the record's last change: a report from before a fence-peer cannot undo it, the
  same rule as for the instance's own reports) and at the current generation; it exists only
  while its instance hears the node (withdrawn after one lease of silence, or with the
  instance's etcd lease).
- Every instance follows the prefix with one etcd watch (reopened on another member when one
  dies; a full reload of pools, presence and documents at one revision when it was broken or
  compacted); heartbeat answers come from that cache and cost no etcd round trip.
- When etcd cannot be reached (keepalive or watch failing), ``available`` is False with a
  one-line ``unavailable_reason``; every change raises ``StorageUnavailable`` saying so, and
  the mediator answers heartbeats with "cannot grant".
- A write whose answer was lost (timeout after sending) is settled, never guessed: sent again
  (same compare), the repeat either applies (the first did not) or fails and reads, in the
  same atomic step, the audit key that exists exactly when the first applied. With no answer
  at all, the record is rewritten unchanged under the same compare, which makes a late
  arrival of the lost write impossible. If even that gets no answer: ``StorageUnknown``, and
  the service answers "retry", never "granted" (a retried promote that finds itself already
  primary gets the same grant again).

The grace rule for several instances, and why it cannot grant two primaries
----------------------------------------------------------------------------
Let L be the lease and M the margin. Instance I keeps, per pool, ``watch_since`` (monotonic
time since which I has continuously heard at least one node of the pool; reset when I starts
or when it heard none of them for L), ``sight_since`` (monotonic time since which I has seen
every presence change: I's start, or its reload after it was cut off from etcd or its watch's
history was compacted away, when presence keys may have come and gone unseen) and, per node
N, ``last_heard_I(N)``: the latest of I's own last heartbeat from N and the last moment I's
watch showed N present at another instance (now while it is present; the deletion time once
it is gone). I considers N's lease over only when
``now >= max(last_heard_I(N), watch_since, sight_since) + L + M`` and, in the granting
transaction, etcd confirms that no presence key for N exists (a range compare,
``version == 0``). All three marks are I's own monotonic times, never read from etcd, so a
restarted instance grants nothing for L + M after its own start whatever etcd holds.

Claim: the mediator never grants two primaries, whatever the number of instances.
1. One truth, one order. A grant for pool P is a txn that compares ``mod_revision(pools/P)``
   with the revision r it read and writes a record with generation+1 and the new primary.
   etcd applies txns one at a time in revision order (linearizable), so of all grants, fences
   and handovers decided on revision r at most one commits; any later change must have read
   the record that grant wrote. The grants of P therefore form a single chain g1, g2, ...;
   each names one primary, and each one's decision saw the previous one. Instances hold no
   state of their own that could contradict etcd; a crashed instance loses only memory.
2. The old primary cannot keep writing. A grant to B at generation g+1 exists only if A's
   fence-peer (also a txn on the same key) did not commit first, and vice versa: whichever
   commits first moves the revision and the other fails its compare (B outdated, or A deposed
   with exit 6). A primary's DRBD freezes I/O from the disconnect until its fence-peer is
   answered, so A acknowledges no write after a grant to B. The agents promote only with a
   grant for the current generation, persisted before ``drbdadm primary``.
3. The lease rule only decides *when* a grant may be attempted, never *whether two* can
   commit (1 and 2 hold with any clocks). It is there so that a primary that is alive but
   heard by another instance, or by nobody for a moment because it is moving between
   instances, is not deposed early: an instance that has not watched the pool for L + M, or
   that heard of N (itself or through presence) less than L + M ago, refuses with "retry
   after"; and the presence compare makes "N is heard elsewhere" and "grant" exclusive in
   etcd's order. A node heartbeating every H < L to some reachable instance is, within
   H + client timeout < L of moving, present in etcd again.
Tests (real etcd, tests/mediator_etcd/): test_etcd_backend.py (CAS, presence, grace),
test_etcd_failures.py (member/leader killed, etcd cut off, instance killed mid-promote, race),
test_mediator_etcd.py and test_mediator_etcd_e2e.py (the real service, two instances).
"""
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid

from . import etcd_client as ec
from .storage import (DEFAULT_LEASE, DEFAULT_MARGIN, Conflict, Storage, StorageError,
                      StorageUnavailable, StorageUnknown)

LOG = logging.getLogger("iscsi-ha-mediator.etcd")

__all__ = ["EtcdBackend", "settings_from_config", "Conflict", "StorageError",
           "StorageUnavailable", "StorageUnknown"]


# A published DRBD report (presence key value): the node's generation, DRBD state and data
# generation, and "rev", the pool record revision the publishing instance held when it took
# the heartbeat (a report counts only for that revision of the record).
REPORT_FIELDS = ("gen", "role", "disk", "conn", "peer_disk", "uuid", "rev")


def _report_of(value):
    """The report dict in a presence key's value, or None (b"1": presence only)."""
    if not value or value[:1] != b"{":
        return None
    try:
        report = json.loads(value.decode())
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _q(name):
    """A pool or node name as one key segment ("/" and "%" escaped)."""
    return urllib.parse.quote(name, safe="")


def _uq(segment):
    return urllib.parse.unquote(segment)


def _dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class _PoolView(object):
    """What this instance knows of one pool, in memory."""
    __slots__ = ("record", "revision", "watch_since", "heard", "local", "remote_gone",
                 "local_gone")

    def __init__(self):
        self.record = None
        self.revision = 0
        self.watch_since = None   # monotonic; None = not heard any node of the pool lately
        self.heard = 0.0          # last local heartbeat from any node of the pool
        self.local = {}           # node -> last local heartbeat (monotonic)
        self.remote_gone = {}     # node -> monotonic time its last remote presence vanished
        self.local_gone = {}      # node -> its last local heartbeat, once expired from local


class EtcdBackend(Storage):
    """The mediator state on etcd. ``start()`` before use, ``stop()`` at the end."""

    name = "etcd"
    concurrency = 8  # etcd serialises itself; a few requests in flight hide the round trip

    def __init__(self, settings, lease=DEFAULT_LEASE, margin=DEFAULT_MARGIN, instance_id=None,
                 clock=time.monotonic):
        self.client = ec.EtcdClient(settings)
        self.prefix = settings.prefix
        self.lease = float(lease)
        self.margin = float(margin)
        self.instance = instance_id or uuid.uuid4().hex[:12]
        self.clock = clock
        self._lock = threading.RLock()
        self._pools = {}          # pool -> _PoolView
        self._presence = {}       # (pool, node) -> set(instance)
        self._reports_out = {}    # (pool, node) -> (signature, JSON bytes): what we publish
        self._shared = {}         # (pool, node) -> {instance: (report dict, mod_revision)}
        self._docs = {}           # name -> (value, revision)
        self.docs_version = 0     # bumped whenever a document changes (any instance)
        self._lease_id = None
        self._revision = 0
        self._available = False
        self._reason = "not started"
        self._stop = threading.Event()
        self._threads = []
        self._watch = None
        self._pending = []        # presence writes waiting for the writer thread
        self._wake = threading.Condition(self._lock)
        self._watching = threading.Event()
        # Monotonic time since which this instance has seen every presence change: its start,
        # or the last reload after it was cut off from etcd or its watch's history was
        # compacted away. Nothing is granted before it + L + M: a node heard by another
        # instance meanwhile may be alive.
        self.sight_since = None

    # -- keys --------------------------------------------------------------------------------
    def _k_pool(self, pool):
        return "%spools/%s" % (self.prefix, _q(pool))

    def _k_audit_base(self, pool):
        if pool == "":
            return "%saudit-mediator/" % self.prefix
        return "%saudit/%s/" % (self.prefix, _q(pool))

    def _k_audit(self, pool, write_id):
        return self._k_audit_base(pool) + write_id

    def _k_presence(self, pool, node, instance=None):
        base = "%spresence/%s/%s/" % (self.prefix, _q(pool), _q(node))
        return base + instance if instance else base

    def _k_doc(self, name):
        return "%sdocs/%s" % (self.prefix, name)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout=10.0):
        """Register this instance (etcd lease), load the state and start following it.

        Raises StorageUnavailable when etcd does not answer within ``timeout``; the instance
        must not serve then."""
        deadline = time.monotonic() + timeout
        self.sight_since = self.clock()
        while True:
            try:
                self._register()
                self._resync()
                break
            except ec.EtcdAuthError as exc:
                raise StorageError(str(exc))
            except ec.EtcdError as exc:
                if time.monotonic() >= deadline:
                    raise StorageUnavailable("etcd: %s" % exc)
                time.sleep(0.2)
        for target in (self._keepalive_loop, self._watch_loop, self._presence_writer):
            t = threading.Thread(target=target, name="etcd-" + target.__name__.strip("_"),
                                 daemon=True)
            t.start()
            self._threads.append(t)
        if not self._watching.wait(max(0.1, deadline - time.monotonic())):
            self.stop()
            raise StorageUnavailable("etcd: could not start watching %s" % self.prefix)
        return self

    def stop(self):
        """Stop following etcd and withdraw this instance's presence (revoke its lease)."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        watch = self._watch
        if watch is not None:
            watch.close()
        for t in self._threads:
            t.join(5)
        self._threads = []
        if self._lease_id is not None:
            try:
                self.client.lease_revoke(self._lease_id)
            except ec.EtcdError:
                pass  # it expires by itself within one lease
            self._lease_id = None
        self.client.close()

    @property
    def available(self):
        return self._available

    @property
    def unavailable_reason(self):
        return None if self._available else self._reason

    def _mark(self, ok, reason=None):
        with self._lock:
            if ok != self._available:
                if not ok:
                    LOG.warning("etcd unreachable from this instance: %s", reason)
                elif self._reason != "not started":
                    LOG.info("etcd reachable again")
            self._available = ok
            self._reason = reason

    def _register(self):
        ttl = max(2, int(round(self.lease)))
        self._lease_id, _ = self.client.lease_grant(ttl)
        # Presence of this instance's nodes is rewritten under the new lease.
        with self._lock:
            for pool, view in self._pools.items():
                for node in view.local:
                    self._pending.append(("put", pool, node))
            self._wake.notify_all()

    def _keepalive_loop(self):
        period = max(0.2, self.lease / 4.0)
        while not self._stop.wait(period):
            try:
                if self._lease_id is None:
                    self._register()
                elif self.client.lease_keepalive(self._lease_id) <= 0:
                    LOG.warning("etcd lease of instance %s expired; registering again",
                                self.instance)
                    self._register()
                if self._watch is not None:
                    self._mark(True)
            except ec.EtcdError as exc:
                self._mark(False, "etcd unreachable: %s" % exc)

    # -- following etcd ----------------------------------------------------------------------
    def _resync(self):
        """Read the live state (pools, presence, documents; not the audit log) at one etcd
        revision and rebuild the cache; returns that revision."""
        kvs, rev = self.client.range(self.prefix + "pools/", prefix=True)
        for part in ("presence/", "docs/"):
            base = self.prefix + part
            out = self.client.call("/v3/kv/range", {
                "key": ec._b64(base), "range_end": ec._b64(ec.prefix_end(base)),
                "revision": str(rev)})
            kvs += [ec.KeyValue(kv) for kv in out.get("kvs") or []]
        now = self.clock()
        pools, presence, docs, shared = {}, {}, {}, {}
        for kv in kvs:
            kind, parts = self._split(kv.key)
            if kind == "pools" and len(parts) == 1:
                pools[_uq(parts[0])] = (json.loads(kv.value.decode()), kv.mod_revision)
            elif kind == "presence" and len(parts) == 3:
                key = (_uq(parts[0]), _uq(parts[1]))
                presence.setdefault(key, set()).add(parts[2])
                report = _report_of(kv.value)
                if report is not None:
                    shared.setdefault(key, {})[parts[2]] = (report, kv.mod_revision)
            elif kind == "docs":
                docs["/".join(parts)] = (kv.value, kv.mod_revision)
        with self._lock:
            for key, insts in self._presence.items():
                if self._others(insts) and not self._others(presence.get(key, set())):
                    self._view(key[0]).remote_gone[key[1]] = now  # vanished while we were away
            self._presence = presence
            self._shared = shared
            if docs != self._docs:
                self.docs_version += 1
            self._docs = docs
            for pool in list(self._pools):
                if pool not in pools:
                    self._pools[pool].record, self._pools[pool].revision = None, 0
            for pool, (record, mod) in pools.items():
                view = self._view(pool)
                view.record, view.revision = record, mod
            self._revision = rev
        return rev

    def _split(self, key):
        text = key.decode("utf-8", "replace")[len(self.prefix):]
        parts = text.split("/")
        return parts[0], parts[1:]

    def _others(self, insts):
        return {i for i in insts if i != self.instance}

    def _view(self, pool):
        view = self._pools.get(pool)
        if view is None:
            view = self._pools[pool] = _PoolView()
        return view

    def _watch_loop(self):
        failures = 0
        while not self._stop.is_set():
            try:
                if failures > 1:
                    self.sight_since = self.clock()   # see below; before anyone marks us up
                self._watch = ec.WatchStream(self.client, self.prefix,
                                             ec.prefix_end(self.prefix),
                                             self._revision + 1).open()
                if failures:
                    self._resync()  # catch up on what happened while we were away
                    if failures > 1:
                        # This instance was cut off from etcd (the watch could not be reopened
                        # at once on another member): if etcd compacted its history meanwhile,
                        # presence keys came and went unseen. As after a start, nothing is
                        # granted for one lease plus margin from the reload.
                        self.sight_since = self.clock()
                failures = 0
                self._mark(True)
                self._watching.set()
                while not self._stop.is_set():
                    msg = self._watch.next(0.5)
                    if msg is None:
                        continue
                    if msg.get("compact_revision") and msg.get("compact_revision") != "0":
                        self._revision = 0
                        raise ec.EtcdUnavailable("watch compacted; reloading")
                    if msg.get("canceled"):
                        raise ec.EtcdUnavailable("watch canceled: %s"
                                                 % msg.get("cancel_reason", ""))
                    self._apply(msg.get("events") or [], int(msg.get("header", {})
                                                             .get("revision", 0)))
            except ec.EtcdError as exc:
                watch, self._watch = self._watch, None
                if watch is not None:
                    watch.close()
                if self._stop.is_set():
                    break
                failures += 1
                # A broken stream (one member died) is reopened at once on another endpoint;
                # only when that fails too is etcd unreachable for this instance.
                if failures > 1:
                    self._mark(False, "etcd unreachable: %s" % exc)
                    self._stop.wait(0.3)
                if self._revision == 0:
                    # The watch's history was compacted away: presence keys may have come and
                    # gone unseen (a node heard elsewhere, then not). As after a start, nothing
                    # is granted for one lease plus margin from the reload.
                    try:
                        self._resync()
                        self.sight_since = self.clock()
                    except ec.EtcdError:
                        pass
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()

    def _apply(self, events, header_rev):
        now = self.clock()
        with self._lock:
            for ev in events:
                kv = ec.KeyValue(ev.get("kv", {}))
                deleted = ev.get("type") == "DELETE"
                kind, parts = self._split(kv.key)
                if kind == "pools" and len(parts) == 1:
                    view = self._view(_uq(parts[0]))
                    if deleted:
                        view.record, view.revision = None, 0
                    elif kv.mod_revision > view.revision:
                        view.record, view.revision = json.loads(kv.value.decode()), \
                            kv.mod_revision
                elif kind == "presence" and len(parts) == 3:
                    key = (_uq(parts[0]), _uq(parts[1]))
                    insts = self._presence.setdefault(key, set())
                    reports = self._shared.setdefault(key, {})
                    if deleted:
                        insts.discard(parts[2])
                        reports.pop(parts[2], None)
                        if parts[2] != self.instance and not self._others(insts):
                            self._view(key[0]).remote_gone[key[1]] = now
                    else:
                        insts.add(parts[2])
                        report = _report_of(kv.value)
                        if report is None:
                            reports.pop(parts[2], None)
                        else:
                            reports[parts[2]] = (report, kv.mod_revision)
                elif kind == "docs":
                    name = "/".join(parts)
                    if deleted:
                        self._docs.pop(name, None)
                    else:
                        self._docs[name] = (kv.value, kv.mod_revision)
                    self.docs_version += 1
                self._revision = max(self._revision, kv.mod_revision)
            self._revision = max(self._revision, header_rev)

    # -- liveness (memory only; presence transitions go to etcd in the background) ----------
    def node_seen(self, pool, node):
        """A heartbeat from ``node`` of ``pool`` reached this instance. Never touches etcd."""
        now = self.clock()
        with self._lock:
            view = self._view(pool)
            if view.watch_since is None or now - view.heard > self.lease:
                view.watch_since = now  # just started, or the pool (came back) to us
            view.heard = now
            first = node not in view.local or now - view.local[node] > self.lease
            view.local[node] = now
            if first:
                self._pending.append(("put", pool, node))
                self._wake.notify_all()

    def expire_local(self):
        """Drop nodes not heard for one lease (call periodically); queues presence deletes."""
        now = self.clock()
        with self._lock:
            for pool, view in self._pools.items():
                for node, last in list(view.local.items()):
                    if now - last > self.lease:
                        del view.local[node]
                        # keep the mark: its lease runs out at last + L + M, not at expiry
                        view.local_gone[node] = last
                        self._pending.append(("delete", pool, node))
                if view.watch_since is not None and now - view.heard > self.lease:
                    view.watch_since = None
            if self._pending:
                self._wake.notify_all()

    def _presence_writer(self):
        while not self._stop.is_set():
            with self._lock:
                if not self._pending:
                    self._wake.wait(max(0.2, self.lease / 4.0))
            if self._stop.is_set():
                break
            self.expire_local()  # nodes silent for a lease: their presence is withdrawn
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                continue
            # Last transition per node wins; blind puts/deletes are idempotent, so a batch may
            # be sent again after a lost answer. 100 per txn (etcd allows 128 by default).
            last = {}
            for op, pool, node in batch:
                last[(pool, node)] = op
            items = list(last.items())
            failed = []
            for i in range(0, len(items), 100):
                chunk = items[i:i + 100]
                ops = []
                for (pool, node), op in chunk:
                    key = self._k_presence(pool, node, self.instance)
                    if op == "put":
                        if self._lease_id is None:
                            continue
                        with self._lock:
                            value = self._reports_out.get((pool, node), (None, b"1"))[1]
                        ops.append(ec.op_put(key, value, lease=self._lease_id))
                    else:
                        ops.append(ec.op_delete(key))
                if not ops:
                    continue
                try:
                    self.client.call("/v3/kv/txn", {"compare": [], "success": ops})
                except ec.EtcdError as exc:
                    self._mark(False, "etcd unreachable: %s" % exc)
                    failed += [(op, pool, node) for (pool, node), op in chunk]
            if failed:
                with self._lock:
                    self._pending = failed + self._pending
                self._stop.wait(0.5)

    def publish_report(self, pool, node, signature):
        """The DRBD report ``node`` just sent to this instance (after ``node_seen``), as the
        tuple ``REPORT_FIELDS`` (the last item: the pool record revision this instance had
        when it took the heartbeat). Published to the other instances as the value of this
        instance's presence key for the node, and only when it differs from what was last
        published: a heartbeat that reports what the previous one did writes nothing."""
        key = (pool, node)
        last = self._reports_out.get(key)
        if last is not None and last[0] == signature:
            return False                      # the hot path: nothing changed
        value = _dumps(dict(zip(REPORT_FIELDS, signature))).encode()
        with self._lock:
            view = self._pools.get(pool)
            if view is None or node not in view.local:
                return False                  # not heard here (no presence to carry it)
            self._reports_out[key] = (signature, value)
            self._pending.append(("put", pool, node))
            self._wake.notify_all()
        return True

    def shared_report(self, pool, node):
        """The latest DRBD report of ``node`` published by ANOTHER instance that hears it now
        (a dict with the keys of ``REPORT_FIELDS``), or None. The newest by etcd revision when
        several instances hear the node (it moved)."""
        with self._lock:
            reports = self._shared.get((pool, node))
            if not reports:
                return None
            best = None
            for inst, (report, mod) in reports.items():
                if inst != self.instance and (best is None or mod > best[1]):
                    best = (report, mod)
            return None if best is None else dict(best[0])

    def heard_elsewhere(self, pool, node):
        """Instances other than this one that announced hearing ``node`` now (from the watch)."""
        with self._lock:
            return sorted(self._others(self._presence.get((pool, node), set())))

    def _pool_lease(self, view):
        record = view.record
        try:
            return float(record.get("lease") or self.lease) if record else self.lease
        except (TypeError, ValueError):
            return self.lease

    def lease_over_at(self, pool, node):
        """Monotonic time from which this instance may treat ``node``'s lease as run out
        (``node`` None: when this instance may grant anything for the pool at all)."""
        with self._lock:
            view = self._view(pool)
            if node is not None and self._others(self._presence.get((pool, node), set())):
                return float("inf")  # heard by another instance right now
            marks = [view.watch_since if view.watch_since is not None else self.clock(),
                     self.sight_since]
            if node is not None:
                marks += [view.local.get(node), view.remote_gone.get(node),
                          view.local_gone.get(node)]
            return max(m for m in marks if m is not None) + self._pool_lease(view) + self.margin

    def grant_allowed(self, pool, holder):
        """(True, 0.0) when a grant deposing ``holder`` (None: no holder) may be tried now;
        else (False, retry_after seconds). See the module docstring for the rule."""
        if not self._available:
            return False, self.lease
        left = self.lease_over_at(pool, holder) - self.clock()
        if left == float("inf"):
            return False, self.lease  # ask again in one lease
        return (left <= 0), max(0.0, left)

    # -- pool records ------------------------------------------------------------------------
    def cached(self, pool):
        """(record, revision) from this instance's cache (no etcd round trip); (None, 0)."""
        with self._lock:
            view = self._pools.get(pool)
            if view is None or view.record is None:
                return None, 0
            return dict(view.record), view.revision

    def pools(self):
        with self._lock:
            return sorted(p for p, v in self._pools.items() if v.record is not None)

    def read(self, pool):
        """(record, revision) read from etcd now (linearizable); (None, 0) if absent."""
        try:
            kv = self.client.get(self._k_pool(pool))
        except ec.EtcdError as exc:
            self._mark(False, "etcd unreachable: %s" % exc)
            raise StorageUnavailable("etcd unreachable from this mediator instance: %s" % exc)
        if kv is None:
            return None, 0
        record = json.loads(kv.value.decode())
        with self._lock:
            view = self._view(pool)
            if kv.mod_revision >= view.revision:
                view.record, view.revision = record, kv.mod_revision
        return record, kv.mod_revision

    def commit(self, pool, expected_revision, record, audit, absent_presence=()):
        """Write ``record`` for ``pool`` if its revision is still ``expected_revision`` (0: the
        pool must not exist), with ``audit`` (a dict) in the same transaction.

        ``absent_presence``: nodes that no instance may be hearing (a range compare on their
        presence keys), e.g. the primary a promote deposes. Returns the new revision. Raises
        Conflict (the current record attached), StorageUnavailable (nothing was written) or
        StorageUnknown (sent, outcome unknown)."""
        if not self._available:
            raise StorageUnavailable("etcd unreachable from this mediator instance (%s); "
                                     "no change made" % (self._reason or "unknown"))
        entry = self._entry(pool, audit, record.get("generation"))
        pkey = self._k_pool(pool)
        akey = self._k_audit(pool, uuid.uuid4().hex)
        compare = [ec.cmp_mod_revision(pkey, expected_revision)]
        for node in absent_presence:
            base = self._k_presence(pool, node)
            compare.append({"key": ec._b64(base), "range_end": ec._b64(ec.prefix_end(base)),
                            "target": "VERSION", "result": "EQUAL", "version": "0"})
        success = [ec.op_put(pkey, _dumps(record)), ec.op_put(akey, _dumps(entry))]
        # On failure, etcd tells us in the same atomic step what is there now and whether an
        # earlier attempt of this very write (answer lost, sent again) was applied.
        failure = [ec.op_range(pkey), ec.op_range(akey)]
        try:
            result = self.client.txn(compare, success, failure)
        except ec.EtcdUnavailable as exc:
            self._mark(False, "etcd unreachable: %s" % exc)
            if not exc.maybe_sent:
                raise StorageUnavailable("etcd unreachable from this mediator instance (%s); "
                                         "no change made" % exc)
            return self._settle(pool, expected_revision, akey, exc)
        except ec.EtcdError as exc:
            raise StorageError("etcd refused the change: %s" % exc)
        if result.succeeded:
            with self._lock:
                view = self._view(pool)
                if result.revision > view.revision:
                    view.record, view.revision = dict(record), result.revision
            return result.revision
        return self._lost_compare(pool, expected_revision, absent_presence, result)

    def _lost_compare(self, pool, expected_revision, absent_presence, result):
        ranges = result.ranges()
        current = ranges[0][0] if ranges and ranges[0] else None
        mine = ranges[1][0] if len(ranges) > 1 and ranges[1] else None
        if mine is not None:
            return mine.mod_revision  # an earlier send of this write was applied
        if current is None:
            self._learn(pool, None, 0)
            if expected_revision:
                raise Conflict("pool %s no longer exists" % pool, None, 0)
            raise Conflict("pool %s: unexpected compare failure" % pool)
        record = json.loads(current.value.decode())
        # The caller re-decides on the cache: make it hold what etcd just told us.
        self._learn(pool, record, current.mod_revision)
        if current.mod_revision != expected_revision:
            if not expected_revision:
                raise Conflict("pool %s already exists" % pool, record, current.mod_revision)
            raise Conflict("pool %s changed (revision %d, expected %d)"
                           % (pool, current.mod_revision, expected_revision),
                           record, current.mod_revision)
        raise Conflict("pool %s: %s is heard by another mediator instance"
                       % (pool, ", ".join(absent_presence)), record, current.mod_revision)

    def _learn(self, pool, record, revision):
        with self._lock:
            view = self._view(pool)
            if record is None:
                if revision == 0 and view.record is not None:
                    view.record, view.revision = None, 0
            elif revision > view.revision:
                view.record, view.revision = dict(record), revision

    def _settle(self, pool, expected_revision, akey, exc):
        """The write may have reached etcd but its answer was lost. Make the outcome final:
        rewrite the pool record as it was at ``expected_revision`` (a no-op for its content)
        under the same compare. If that applies, the lost write had not applied and now never
        can (its compare is stale); if it fails, the audit key read in the same step says
        whether the lost write was applied."""
        pkey = self._k_pool(pool)
        try:
            kv = self.client.get(pkey)
            if kv is None or kv.mod_revision != expected_revision:
                mine = self.client.get(akey)
                if mine is not None:
                    return mine.mod_revision
                raise StorageUnavailable("etcd was unreachable (%s); no change made" % exc)
            result = self.client.txn([ec.cmp_mod_revision(pkey, expected_revision)],
                                     [ec.op_put(pkey, kv.value)],
                                     [ec.op_range(akey)])
        except ec.EtcdError as exc2:
            raise StorageUnknown("etcd did not confirm the change (%s); its outcome is "
                                 "unknown: retry" % exc2)
        if result.succeeded:
            raise StorageUnavailable("etcd was unreachable (%s); no change made" % exc)
        ranges = result.ranges()
        if ranges and ranges[0]:
            return ranges[0][0].mod_revision
        raise StorageUnavailable("etcd was unreachable (%s); no change made" % exc)

    def _entry(self, pool, audit, generation=None):
        entry = dict(audit)
        entry["pool"] = pool
        entry.setdefault("time", time.time())
        if generation is not None:
            entry.setdefault("generation", generation)
        entry.setdefault("instance", self.instance)
        return entry

    def _refuse_if_unavailable(self):
        if not self._available:
            raise StorageUnavailable("etcd unreachable from this mediator instance (%s); "
                                     "no change made" % (self._reason or "unknown"))

    def _simple_txn(self, compare, success, failure=()):
        """A txn whose lost answer needs no settling (documents, audit-only): the caller
        reports StorageUnknown then."""
        self._refuse_if_unavailable()
        try:
            return self.client.txn(compare, success, failure)
        except ec.EtcdUnavailable as exc:
            self._mark(False, "etcd unreachable: %s" % exc)
            if not exc.maybe_sent:
                raise StorageUnavailable("etcd unreachable from this mediator instance (%s); "
                                         "no change made" % exc)
            raise StorageUnknown("etcd did not confirm the change (%s); retry" % exc)
        except ec.EtcdError as exc:
            raise StorageError("etcd refused the change: %s" % exc)

    # -- audit -------------------------------------------------------------------------------
    def append_audit(self, pool, entry):
        """Append an entry that changes no record (refusal, credential event); durable."""
        akey = self._k_audit(pool, uuid.uuid4().hex)
        # Compare "this key does not exist yet": a repeat after a lost answer cannot double it.
        self._simple_txn([ec.cmp_mod_revision(akey, 0)],
                         [ec.op_put(akey, _dumps(self._entry(pool, entry)))])

    def _audit_range(self, base, limit):
        body = {"key": ec._b64(base), "range_end": ec._b64(ec.prefix_end(base)),
                "sort_order": "DESCEND", "sort_target": "MOD", "limit": str(int(limit))}
        try:
            out = self.client.call("/v3/kv/range", body)
        except ec.EtcdError as exc:
            raise StorageUnavailable("etcd unreachable from this mediator instance: %s" % exc)
        return [ec.KeyValue(kv) for kv in out.get("kvs") or []]

    def audit(self, pool, limit=100):
        """The newest ``limit`` entries of ``pool`` ("" mediator-wide, None everything),
        oldest first (etcd's revision order is the order of the changes)."""
        if pool is None:
            kvs = self._audit_range("%saudit/" % self.prefix, limit) + \
                self._audit_range(self._k_audit_base(""), limit)
        else:
            kvs = self._audit_range(self._k_audit_base(pool), limit)
        kvs.sort(key=lambda kv: kv.mod_revision)
        return [json.loads(kv.value.decode()) for kv in kvs[-int(limit):]] if limit else []

    def delete_pool(self, pool, expected_revision, audit):
        """Remove a pool record (CAS), its credentials doc and presence keys; the audit
        trail stays."""
        pkey = self._k_pool(pool)
        base = self._k_presence(pool, "")[:-1]  # presence/<pool>/
        akey = self._k_audit(pool, uuid.uuid4().hex)
        result = self._simple_txn(
            [ec.cmp_mod_revision(pkey, expected_revision)],
            [ec.op_delete(pkey), ec.op_delete(base, ec.prefix_end(base)),
             ec.op_delete(self._k_doc("cred/" + pool)),
             ec.op_put(akey, _dumps(self._entry(pool, audit)))])
        if not result.succeeded:
            raise Conflict("pool %s changed meanwhile" % pool)
        with self._lock:
            view = self._pools.get(pool)
            if view is not None:
                view.record, view.revision = None, 0
            self._docs.pop("cred/" + pool, None)
            self.docs_version += 1

    # -- documents (credentials: "cred/<pool>") --------------------------------------------
    def put_doc(self, name, value, expected_revision, audit=None, pool=""):
        """CAS write (``value`` None deletes) with an optional audit entry in the same txn."""
        if isinstance(value, str):
            value = value.encode()
        key = self._k_doc(name)
        ops = [ec.op_delete(key) if value is None else ec.op_put(key, value)]
        if audit is not None:
            ops.append(ec.op_put(self._k_audit(pool, uuid.uuid4().hex),
                                 _dumps(self._entry(pool, audit))))
        result = self._simple_txn([ec.cmp_mod_revision(key, expected_revision)], ops,
                                  [ec.op_range(key)])
        if not result.succeeded:
            ranges = result.ranges()
            current = ranges[0][0].mod_revision if ranges and ranges[0] else 0
            raise Conflict("document %s changed meanwhile (revision %d, expected %d)"
                           % (name, current, expected_revision))
        with self._lock:
            if value is None:
                self._docs.pop(name, None)
            else:
                self._docs[name] = (value, result.revision)
            self.docs_version += 1
        return result.revision


def settings_from_config(values):
    """EtcdSettings from a mapping of mediator config keys (strings), validated.

    Keys: etcd_endpoints (comma list), etcd_ca_file, etcd_cert_file, etcd_key_file,
    etcd_username, etcd_password_file (a file, so the secret is not in the config), etcd_timeout,
    etcd_prefix."""
    known = {"etcd_endpoints", "etcd_ca_file", "etcd_cert_file", "etcd_key_file",
             "etcd_username", "etcd_password_file", "etcd_timeout", "etcd_prefix"}
    for key in sorted(values):
        if key.startswith("etcd_") and key not in known:
            raise ec.EtcdSettingsError("unknown setting %r (etcd settings: %s)"
                                       % (key, ", ".join(sorted(known))))
    password = None
    pw_file = values.get("etcd_password_file")
    if pw_file:
        try:
            with open(pw_file) as handle:
                password = handle.read().strip()
        except OSError as exc:
            raise ec.EtcdSettingsError("etcd_password_file %s: %s" % (pw_file, exc.strerror))
        if os.stat(pw_file).st_mode & 0o077:
            raise ec.EtcdSettingsError("etcd_password_file %s: readable by group or others; "
                                       "chmod 600 it" % pw_file)
    try:
        timeout = float(values.get("etcd_timeout", ec.DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        raise ec.EtcdSettingsError("etcd_timeout %r: not a number of seconds"
                                   % values.get("etcd_timeout"))
    return ec.EtcdSettings(
        values.get("etcd_endpoints", ""), ca_file=values.get("etcd_ca_file"),
        cert_file=values.get("etcd_cert_file"), key_file=values.get("etcd_key_file"),
        username=values.get("etcd_username"), password=password, timeout=timeout,
        total_timeout=max(timeout, ec.DEFAULT_TOTAL_TIMEOUT),
        prefix=values.get("etcd_prefix", ec.DEFAULT_PREFIX)).validate()
