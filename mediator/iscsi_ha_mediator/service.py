"""The mediator's decisions: heartbeat, fence-peer, promote, unfence, handover, force, simulate.

Transport-free: ``Mediator`` methods take an authenticated (pool, node) and a request dict and
return the answer dict. Mutations run under a per-pool asyncio lock; storage calls run in worker
threads (``Storage.concurrency``) and the answer is sent only after ``commit`` returned, i.e.
after the change is durable.

Differences from the protocol sketch (reference/mediator.md section 3), and why:
- fence-peer: the caller is "deposed" only when the record names ANOTHER primary. A stale
  generation alone (moved by an eligibility change, e.g. the peer's resync finishing) does not
  depose a caller that is still the recorded primary: demoting it would be an outage with no
  safety gain, since a grant to the peer would have named the peer as primary.
- unfence after resync needs no separate trust: when both nodes' own heartbeats (newer than the
  last change of the record, at the current generation) say Connected, UpToDate/UpToDate with the
  same current data generation, the mediator marks both eligible, clears "outdated" and records
  that data generation as the synced one. The explicit ``unfence`` call only supplies a fresh
  report; it is checked the same way. Reports older than the last record change never count, so
  a report from before a fence-peer cannot undo it. With several instances (etcd), a node heard
  by another instance counts through the report that instance published (``shared_report``),
  if it was taken at the record revision the decision reads.
- retries and repeated refusals are audited once per (node, operation, answer) until the answer
  changes, so a candidate retrying every 2 s cannot flood the audit log.
"""
import asyncio
import json
import logging
import time

from . import storage as st

LOG = logging.getLogger("iscsi-ha-mediator")

OBSERVER_REASON = "observer mode: this mediator records and reports but grants nothing"

# DRBD fence-peer handler exit codes (drbd-utils scripts/crm-fence-peer.9.sh; reference 1.5)
EXIT_ALREADY_OUTDATED = 3
EXIT_OUTDATED = 4
EXIT_DEPOSED = 6
EXIT_KEEP_FROZEN = 1


def mask_uuid(value):
    """DRBD current UUID with the role bit (lowest bit) masked; None if unusable."""
    if value in (None, ""):
        return None
    try:
        return "%016X" % (int(str(value), 16) & ~1)
    except ValueError:
        return None


class Report(object):
    __slots__ = ("mono", "gen", "role", "disk", "conn", "peer_disk", "uuid")

    def __init__(self, mono, gen, drbd, masks=None):
        drbd = drbd if isinstance(drbd, dict) else {}
        self.mono = mono
        self.gen = gen
        self.role = str(drbd.get("role") or "")
        self.disk = str(drbd.get("disk") or "")
        self.conn = str(drbd.get("conn") or "")
        self.peer_disk = str(drbd.get("peer_disk") or "")
        raw = drbd.get("current_uuid")
        if masks is None:
            self.uuid = mask_uuid(raw)
        else:                              # memo: the same UUID arrives every 2 s
            try:
                self.uuid = masks[raw]
            except (KeyError, TypeError):
                self.uuid = mask_uuid(raw)
                if isinstance(raw, str) and len(raw) <= 64:
                    if len(masks) > 200000:
                        masks.clear()
                    masks[raw] = self.uuid

    def same(self, other):
        """The same report content (all but the time)."""
        return (self.gen == other.gen and self.role == other.role and self.disk == other.disk
                and self.conn == other.conn and self.peer_disk == other.peer_disk
                and self.uuid == other.uuid)

    def as_dict(self, now):
        return {"role": self.role, "disk": self.disk, "conn": self.conn,
                "peer_disk": self.peer_disk, "current_uuid": self.uuid,
                "age_ms": int((now - self.mono) * 1000)}

    def in_sync(self):
        return (self.conn == "Connected" and self.disk == "UpToDate"
                and self.peer_disk == "UpToDate" and self.uuid is not None)


class RequestError(Exception):
    """A request the mediator cannot act on; ``str()`` is the one-line answer."""


class Mediator(object):
    def __init__(self, store, clock=time.monotonic, executor=None, alert=None):
        self.store = store
        self.clock = clock
        self.executor = executor
        self.alert = alert or (lambda pool, text: None)
        self.started = clock()
        self._locks = {}
        self._seen = {}        # (pool, node) -> monotonic time of last heartbeat here
        self._reports = {}     # (pool, node) -> Report
        self._rev_seen = {}    # pool -> (revision, monotonic time it was first seen here)
        self._audited = {}     # (pool, node, op) -> (result, reason)
        self._bg = set()
        self._bases = {}       # pool -> (revision, {node: answer part}, lease, primary, settled)
        self._masks = {}       # raw DRBD UUID -> masked
        self._prefixes = {}    # (pool, node) -> (answer part, its JSON without the closing })
        self._elsewhere = getattr(store, "heard_elsewhere", None)   # multi-instance backends
        self._publish = getattr(store, "publish_report", None)      # reports shared between
        self._shared = getattr(store, "shared_report", None)        # instances (etcd)
        self._margin = float(getattr(store, "margin", st.DEFAULT_MARGIN))
        self.counters = {"heartbeat": 0, "promote": 0, "fence-peer": 0, "refused": 0}

    # -- helpers -------------------------------------------------------------------------------
    async def _call(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def _lock(self, pool):
        lock = self._locks.get(pool)
        if lock is None:
            lock = self._locks[pool] = asyncio.Lock()
        return lock

    def _record(self, pool):
        rec, rev = self.store.cached(pool)
        if rec is None:
            raise RequestError("pool %s is not known to this mediator" % pool)
        now = self.clock()
        seen = self._rev_seen.get(pool)
        if seen is None or seen[0] != rev:
            self._rev_seen[pool] = (rev, now)
        return rec, rev

    def _changed_at(self, pool):
        seen = self._rev_seen.get(pool)
        return seen[1] if seen else self.started

    @staticmethod
    def _peers(rec, node):
        return [n for n in rec.get("nodes", []) if n != node]

    def _age(self, pool, node, now):
        last = self._seen.get((pool, node))
        return None if last is None else now - last

    def _fresh_report(self, pool, node, rec, now, rev=None):
        """The node's report if it is newer than the record's last change, at the current
        generation and younger than one lease; else None.

        With several instances (``shared_report``), a node heard by another instance has its
        report there: it counts when it was taken at the record revision ``rev`` the decision
        is made on (so after the record's last change) and at the current generation; it
        exists only while that instance hears the node (its presence key, withdrawn after one
        lease of silence or with the instance)."""
        rep = self._reports.get((pool, node))
        lease = float(rec.get("lease") or st.DEFAULT_LEASE)
        if rep is not None and rep.gen == rec["generation"] and \
                rep.mono > self._changed_at(pool) and now - rep.mono <= lease:
            return rep
        if self._shared is None or rev is None:
            return None
        other = self._shared(pool, node)
        if other is None or other.get("rev") != rev or other.get("gen") != rec["generation"]:
            return None
        return Report(now, other.get("gen"), {
            "role": other.get("role"), "disk": other.get("disk"), "conn": other.get("conn"),
            "peer_disk": other.get("peer_disk"), "current_uuid": other.get("uuid")})

    def _audit_soon(self, pool, entry, key=None):
        """Append an audit entry in the background (answers that change nothing). With ``key``,
        only when the (result, reason) differs from the last one audited for that key."""
        if key is not None:
            sig = (entry.get("result"), entry.get("reason"))
            if self._audited.get(key) == sig:
                return
            self._audited[key] = sig
        entry = dict(entry, time=time.time())
        task = asyncio.ensure_future(self._audit_now(pool, entry))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _audit_now(self, pool, entry):
        try:
            await self._call(self.store.append_audit, pool, entry)
        except st.StorageError as exc:
            LOG.warning("audit entry for pool %s not written: %s", pool, exc)

    async def _commit(self, pool, rev, new, audit, absent=()):
        newrev = await self._call(self.store.commit, pool, rev, new, audit, tuple(absent))
        self._rev_seen[pool] = (newrev, self.clock())
        LOG.info("pool %s: %s (generation %s)", pool, audit.get("event"), new.get("generation"))
        return newrev

    def can_grant(self, rec):
        """(ok, reason) for the pool-wide preconditions of any automatic grant."""
        if not self.store.available:
            return False, "cannot grant: storage unavailable (%s)" % (
                self.store.unavailable_reason or "unknown")
        if rec.get("observer"):
            return False, OBSERVER_REASON
        if not rec.get("auto_failover", True):
            return False, "automatic failover is off for this pool"
        return True, ""

    # -- heartbeat -----------------------------------------------------------------------------
    def heartbeat(self, pool, node, req):
        """Record liveness and the node's DRBD report; answer from memory (no I/O). May start a
        background commit when the reports prove the nodes in sync or adopt a primary.

        Hot path (every node, every 2 s): the record-derived part of the answer is built once
        per record revision (``_base``); a settled pool (golden, a primary, the report's data
        generation already the synced one) skips the sync check."""
        mine, live, rec = self._heartbeat(pool, node, req)
        answer = dict(mine)
        answer["peer_alive"], answer["peer_last_seen_ms"], answer["grace_left_ms"], \
            answer["deposed"] = live
        if not self.store.available:
            answer["can_grant"], answer["cannot_grant_reason"] = self.can_grant(rec)
        return answer

    def heartbeat_line(self, pool, node, req, rid):
        """``heartbeat`` answered as the wire line (bytes, with ``id`` = ``rid``): the
        record-derived part is encoded once per record revision, only the live fields (peer
        liveness, grace, deposed, id) are formatted per heartbeat. Same content as
        ``json.dumps(dict(heartbeat(...), id=rid))``."""
        mine, live, rec = self._heartbeat(pool, node, req)
        if not self.store.available:
            answer = dict(mine, id=rid)
            answer["peer_alive"], answer["peer_last_seen_ms"], answer["grace_left_ms"], \
                answer["deposed"] = live
            answer["can_grant"], answer["cannot_grant_reason"] = self.can_grant(rec)
            return json.dumps(answer, separators=(",", ":")).encode() + b"\n"
        prefix = self._prefixes.get((pool, node))
        if prefix is None or prefix[0] is not mine:
            prefix = self._prefixes[(pool, node)] = (
                mine, json.dumps(mine, separators=(",", ":")).encode()[:-1])
        alive, page_ms, grace_ms, deposed = live
        return b'%s,"peer_alive":%s,"peer_last_seen_ms":%s,"grace_left_ms":%d,"deposed":%s,' \
            b'"id":%s}\n' % (prefix[1], b"true" if alive else b"false",
                             b"null" if page_ms is None else b"%d" % page_ms, grace_ms,
                             b"true" if deposed else b"false",
                             b"%d" % rid if type(rid) is int else
                             json.dumps(rid).encode())

    def _heartbeat(self, pool, node, req):
        """Record the heartbeat; (the record-derived answer part for ``node``, (peer_alive,
        peer_last_seen_ms, grace_left_ms, deposed), record)."""
        now = self.clock()
        rec, rev = self.store.cached(pool)
        if rec is None:
            raise RequestError("pool %s is not known to this mediator" % pool)
        base = self._bases.get(pool)
        if base is None or base[0] != rev:
            base = self._build_base(pool, rec, rev, now)
        mine = base[1].get(node)
        if mine is None:
            raise RequestError("node %s is not in pool %s" % (node, pool))
        self.counters["heartbeat"] += 1
        self._seen[(pool, node)] = now
        self.store.node_seen(pool, node)
        rep = None
        if "drbd" in req:
            rep = Report(now, req.get("gen"), req.get("drbd"), self._masks)
            old = self._reports.get((pool, node))
            if old is not None and old.same(rep):
                # The same report again (steady state): the kept one is dated now and the new
                # one dies young. Keeping 10,000 reports/s from reaching the old GC generation
                # keeps full collections (>100 ms at 10,000 pools) rare.
                old.mono = now
                rep = old
            else:
                self._reports[(pool, node)] = rep
            if self._publish is not None:
                self._publish(pool, node, (rep.gen, rep.role, rep.disk, rep.conn,
                                           rep.peer_disk, rep.uuid, rev))
        lease = base[2]
        peer = mine["peer"]
        page = None
        if peer is not None:
            last = self._seen.get((pool, peer))
            page = None if last is None else now - last
            if (page is None or page >= lease) and self._elsewhere is not None and \
                    self._elsewhere(pool, peer):
                page = 0.0
        grace = self.started + lease + self._margin - now
        live = (page is not None and page < lease, None if page is None else int(page * 1000),
                int(grace * 1000) if grace > 0 else 0,
                bool(base[3] and base[3] != node and rep is not None and rep.role == "Primary"))
        if rep is not None and rep.uuid is not None and rep.uuid == base[4] and \
                (rep.role == "Primary") == (node == base[3]):
            return mine, live, rec          # settled: nothing the reports could change
        lock = self._locks.get(pool)
        if lock is None or not lock.locked():
            change = self._sync_change(pool, rec, now, rev)
            if change is not None:
                task = asyncio.ensure_future(self._apply_sync(pool, rev, change))
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
        return mine, live, rec

    def _build_base(self, pool, rec, rev, now):
        seen = self._rev_seen.get(pool)
        if seen is None or seen[0] != rev:
            self._rev_seen[pool] = (rev, now)
        lease = float(rec.get("lease") or st.DEFAULT_LEASE)
        ok, reason = self.can_grant(rec)
        nodes = rec.get("nodes", [])
        per = {}
        for n in nodes:
            peers = [m for m in nodes if m != n]
            per[n] = {
                "ok": True, "pool": pool, "node": n,
                "gen": rec["generation"], "primary": rec.get("primary"),
                "eligible": rec.get("eligible", []), "outdated": rec.get("outdated", []),
                "synced_uuid": rec.get("synced_uuid"),
                "auto_failover": bool(rec.get("auto_failover", True)),
                "observer": bool(rec.get("observer")),
                "peer": peers[0] if peers else None,
                "can_grant": ok, "cannot_grant_reason": reason or None,
                "lease_ms": int(lease * 1000),
            }
        settled = rec.get("synced_uuid") if (
            rec.get("primary") and sorted(rec.get("eligible") or []) == sorted(nodes)
            and not rec.get("outdated")) else None
        base = (rev, per, lease, rec.get("primary"), settled)
        self._bases[pool] = base
        return base

    def _view(self, pool, node, rec, now):
        """The heartbeat answer without recording anything (tests, status)."""
        rec2, rev = self.store.cached(pool)
        base = self._build_base(pool, rec, rev, now)
        out = dict(base[1][node])
        peer = out["peer"]
        page = self._age(pool, peer, now) if peer else None
        out["peer_alive"] = page is not None and page < base[2]
        out["peer_last_seen_ms"] = None if page is None else int(page * 1000)
        rep = self._reports.get((pool, node))
        out["deposed"] = bool(base[3] and base[3] != node and rep is not None
                              and rep.role == "Primary")
        return out

    def _sync_change(self, pool, rec, now, rev=None):
        """The record change the fresh reports call for, or None (``rev``: the revision of
        ``rec``, for reports other instances took)."""
        nodes = rec.get("nodes", [])
        reps = {n: self._fresh_report(pool, n, rec, now, rev) for n in nodes}
        if len(nodes) == 2 and all(r is not None and r.in_sync() for r in reps.values()) \
                and len({r.uuid for r in reps.values()}) == 1:
            uuid = next(iter(reps.values())).uuid
            primaries = [n for n, r in reps.items() if r.role == "Primary"]
            new = dict(rec)
            if len(primaries) == 1:
                # connected and in sync, one Primary: it serves current data (a planned
                # switchover over the live link moves the role without asking the mediator)
                new["primary"] = primaries[0]
            elif new.get("primary") is not None and new["primary"] not in primaries:
                return None   # the recorded primary is not serving: no golden mark now
            new["eligible"] = sorted(nodes)
            new["outdated"] = []
            new["synced_uuid"] = uuid
            if new == rec:
                return None
            if (new["eligible"], new["outdated"], new["primary"]) != (
                    rec.get("eligible"), rec.get("outdated"), rec.get("primary")):
                new["generation"] = rec["generation"] + 1
            return new, {"event": "in-sync", "synced_uuid": uuid,
                         "eligible": new["eligible"], "primary": new["primary"]}
        if rec.get("primary") is None:
            # adopt a lone serving primary: it is the one serving data now
            for n, r in reps.items():
                if r is not None and r.role == "Primary" and (
                        not rec.get("eligible") or n in rec["eligible"]) \
                        and n not in rec.get("outdated", []) \
                        and not any(o is not None and o.role == "Primary"
                                    for m, o in reps.items() if m != n):
                    new = dict(rec, primary=n, generation=rec["generation"] + 1,
                               eligible=sorted(set(rec.get("eligible") or []) | {n}))
                    return new, {"event": "adopt-primary", "node": n}
        return None

    async def _apply_sync(self, pool, rev, change):
        new, audit = change
        async with self._lock(pool):
            rec, cur = self.store.cached(pool)
            if cur != rev or rec is None:
                return
            try:
                await self._commit(pool, rev, new, audit)
            except st.StorageError as exc:
                LOG.info("pool %s: %s not recorded: %s", pool, audit["event"], exc)

    # -- promote -------------------------------------------------------------------------------
    def _promote_check(self, pool, node, req, rec, now):
        """(result, reason, extra) for a promote by ``node`` now; result in
        granted/again/retry/refused. Pure (reads memory only)."""
        gen = req.get("gen")
        if rec.get("primary") == node:
            return "again", "already primary at generation %d" % rec["generation"], {}
        ok, why = self.can_grant(rec)
        if not ok:
            return "refused", why, {}
        if gen != rec["generation"]:
            return "refused", "stale generation %s: the mediator is at %d" % (
                gen, rec["generation"]), {}
        if node in rec.get("outdated", []):
            return "refused", "%s is outdated at generation %d" % (node, rec["generation"]), {}
        if node not in rec.get("eligible", []):
            return "refused", "%s is not eligible (not proven in sync)" % node, {}
        drbd = req.get("drbd") if isinstance(req.get("drbd"), dict) else {}
        if drbd.get("disk") != "UpToDate":
            return "refused", "local disk is %s, not UpToDate" % (drbd.get("disk") or "unknown"), {}
        if rec.get("synced_uuid") is None or mask_uuid(drbd.get("current_uuid")) != \
                rec["synced_uuid"]:
            return "refused", "data generation %s is not the synced one %s" % (
                mask_uuid(drbd.get("current_uuid")), rec.get("synced_uuid")), {}
        holder = rec.get("primary")
        allowed, left = self.store.grant_allowed(pool, holder)
        if not allowed:
            what = "%s's lease may still be live" % holder if holder else \
                "mediator restart grace"
            return "retry", what, {"retry_after_ms": int(left * 1000) + 1}
        return "granted", "", {}

    async def promote(self, pool, node, req):
        self.counters["promote"] += 1
        for _ in range(3):
            async with self._lock(pool):
                rec, rev = self._record(pool)
                now = self.clock()
                result, reason, extra = self._promote_check(pool, node, req, rec, now)
                if result == "again":
                    return {"ok": True, "result": "granted", "gen": rec["generation"],
                            "primary": node, "again": True}
                if result != "granted":
                    self.counters["refused"] += 1
                    self._audit_soon(pool, {"event": "promote", "node": node, "result": result,
                                            "reason": reason, "gen": rec["generation"]},
                                     key=(pool, node, "promote"))
                    return dict({"ok": True, "result": result, "reason": reason,
                                 "gen": rec["generation"]}, **extra)
                holder = rec.get("primary")
                new = dict(rec, generation=rec["generation"] + 1, primary=node,
                           eligible=[node],
                           outdated=sorted(set(rec.get("outdated", [])) |
                                           set(self._peers(rec, node))))
                audit = {"event": "promote", "node": node, "result": "granted",
                         "from": holder}
                try:
                    await self._commit(pool, rev, new, audit,
                                       absent=[holder] if holder else [])
                except st.Conflict:
                    continue   # re-decide on the new record
                except st.StorageUnknown as exc:
                    return {"ok": True, "result": "retry", "reason": str(exc),
                            "retry_after_ms": 1000, "gen": rec["generation"]}
                except st.StorageError as exc:
                    return {"ok": True, "result": "retry", "reason": "cannot grant: %s" % exc,
                            "retry_after_ms": 2000, "gen": rec["generation"]}
                self._audited.pop((pool, node, "promote"), None)
                self.alert(pool, "promote granted to %s at generation %d (was %s)"
                           % (node, new["generation"], holder))
                return {"ok": True, "result": "granted", "gen": new["generation"],
                        "primary": node}
        return {"ok": True, "result": "retry", "reason": "pool changed while deciding",
                "retry_after_ms": 500, "gen": self.store.cached(pool)[0]["generation"]}

    # -- fence-peer ----------------------------------------------------------------------------
    def _fence_check(self, pool, node, req, rec):
        if rec.get("observer"):
            return "observer", OBSERVER_REASON, EXIT_KEEP_FROZEN
        primary = rec.get("primary")
        if primary is not None and primary != node:
            return "deposed", "%s is primary at generation %d" % (primary, rec["generation"]), \
                EXIT_DEPOSED
        if primary is None and node not in rec.get("eligible", []) and rec.get("eligible"):
            return "deposed", "%s is not eligible at generation %d" % (
                node, rec["generation"]), EXIT_DEPOSED
        peers = self._peers(rec, node)
        if all(p in rec.get("outdated", []) for p in peers):
            return "already-outdated", "", EXIT_ALREADY_OUTDATED
        if not self.store.available:
            return "retry", "cannot change: storage unavailable", EXIT_KEEP_FROZEN
        return "outdated", "", EXIT_OUTDATED

    async def fence_peer(self, pool, node, req):
        self.counters["fence-peer"] += 1
        for _ in range(3):
            async with self._lock(pool):
                rec, rev = self._record(pool)
                result, reason, code = self._fence_check(pool, node, req, rec)
                if result != "outdated":
                    if result in ("deposed", "observer", "retry"):
                        self.counters["refused"] += 1
                    self._audit_soon(pool, {"event": "fence-peer", "node": node,
                                            "result": result, "reason": reason,
                                            "gen": rec["generation"]},
                                     key=(pool, node, "fence-peer"))
                    return {"ok": True, "result": result, "reason": reason, "exit": code,
                            "gen": rec["generation"], "primary": rec.get("primary")}
                peers = self._peers(rec, node)
                new = dict(rec, generation=rec["generation"] + 1, primary=node,
                           eligible=[node],
                           outdated=sorted(set(rec.get("outdated", [])) | set(peers)))
                try:
                    await self._commit(pool, rev, new, {"event": "fence-peer", "node": node,
                                                        "result": "outdated", "peers": peers})
                except st.Conflict:
                    continue
                except st.StorageError as exc:
                    return {"ok": True, "result": "retry", "reason": str(exc),
                            "exit": EXIT_KEEP_FROZEN, "gen": rec["generation"]}
                self._audited.pop((pool, node, "fence-peer"), None)
                return {"ok": True, "result": "outdated", "exit": EXIT_OUTDATED,
                        "gen": new["generation"], "primary": node}
        return {"ok": True, "result": "retry", "reason": "pool changed while deciding",
                "exit": EXIT_KEEP_FROZEN}

    # -- unfence / handover --------------------------------------------------------------------
    async def unfence(self, pool, node, req):
        """Called after a resync (either side) with the caller's fresh DRBD report."""
        now = self.clock()
        self._seen[(pool, node)] = now
        self._reports[(pool, node)] = Report(now, req.get("gen"), req.get("drbd"))
        async with self._lock(pool):
            rec, rev = self._record(pool)
            self._reports[(pool, node)].mono = max(now, self._changed_at(pool) + 1e-6)
            change = self._sync_change(pool, rec, self.clock(), rev)
            if change is None:
                if not rec.get("outdated") and len(rec.get("eligible", [])) == len(
                        rec.get("nodes", [])):
                    return {"ok": True, "result": "unfenced", "gen": rec["generation"]}
                reason = "not proven in sync: both nodes must report Connected, " \
                         "UpToDate/UpToDate and the same data generation at generation %d" \
                         % rec["generation"]
                self._audit_soon(pool, {"event": "unfence", "node": node, "result": "refused",
                                        "reason": reason}, key=(pool, node, "unfence"))
                return {"ok": True, "result": "refused", "reason": reason,
                        "gen": rec["generation"]}
            new, audit = change
            audit = dict(audit, event="unfence", node=node)
            try:
                await self._commit(pool, rev, new, audit)
            except st.StorageError as exc:
                return {"ok": True, "result": "retry", "reason": str(exc),
                        "retry_after_ms": 1000, "gen": rec["generation"]}
            return {"ok": True, "result": "unfenced", "gen": new["generation"]}

    async def handover(self, pool, node, req):
        """Planned switchover by the current primary to its in-sync peer."""
        target = req.get("target")
        async with self._lock(pool):
            rec, rev = self._record(pool)
            now = self.clock()
            reason = None
            if rec.get("primary") != node:
                reason = "only the primary (%s) can hand over" % rec.get("primary")
            elif target not in self._peers(rec, node):
                reason = "target %r is not this pool's other node" % (target,)
            elif req.get("gen") != rec["generation"]:
                reason = "stale generation %s: the mediator is at %d" % (req.get("gen"),
                                                                          rec["generation"])
            elif not self.store.available:
                reason = "cannot change: storage unavailable"
            else:
                mine = self._fresh_report(pool, node, rec, now, rev)
                theirs = self._fresh_report(pool, target, rec, now, rev)
                if target not in rec.get("eligible", []) or mine is None or theirs is None \
                        or not (mine.in_sync() and theirs.in_sync()
                                and mine.uuid == theirs.uuid):
                    reason = "target %s is not proven in sync now" % target
            if reason:
                self._audit_soon(pool, {"event": "handover", "node": node, "target": target,
                                        "result": "refused", "reason": reason})
                return {"ok": True, "result": "refused", "reason": reason,
                        "gen": rec["generation"]}
            new = dict(rec, generation=rec["generation"] + 1, primary=target)
            try:
                await self._commit(pool, rev, new, {"event": "handover", "node": node,
                                                    "target": target, "result": "granted"})
            except st.StorageError as exc:
                return {"ok": True, "result": "retry", "reason": str(exc),
                        "retry_after_ms": 1000, "gen": rec["generation"]}
            return {"ok": True, "result": "granted", "gen": new["generation"],
                    "primary": target}

    # -- admin ---------------------------------------------------------------------------------
    def simulate(self, pool, node, op, req=None):
        """What the mediator would answer now to ``op`` (promote|fence-peer) by ``node``,
        changing nothing. For promote, ``req`` may carry drbd/gen; by default the node's last
        report and the current generation are used."""
        rec, _ = self._record(pool)
        if node not in rec.get("nodes", []):
            raise RequestError("node %s is not in pool %s" % (node, pool))
        now = self.clock()
        req = dict(req or {})
        rep = self._reports.get((pool, node))
        req.setdefault("gen", rec["generation"])
        if "drbd" not in req:
            req["drbd"] = {} if rep is None else {"disk": rep.disk, "current_uuid": rep.uuid}
        if op == "promote":
            result, reason, extra = self._promote_check(pool, node, req, rec, now)
            if result == "again":
                result = "granted"
            out = dict({"result": result, "reason": reason}, **extra)
        elif op == "fence-peer":
            result, reason, code = self._fence_check(pool, node, req, rec)
            out = {"result": result, "reason": reason, "exit": code}
        else:
            raise RequestError("simulate: unknown operation %r (promote or fence-peer)" % op)
        out.update(ok=True, pool=pool, node=node, op=op, gen=rec["generation"],
                   assumed_report=req["drbd"])
        return out

    async def force_promote(self, pool, node, who="admin"):
        async with self._lock(pool):
            rec, rev = self._record(pool)
            if node not in rec.get("nodes", []):
                raise RequestError("node %s is not in pool %s" % (node, pool))
            rep = self._reports.get((pool, node))
            new = dict(rec, generation=rec["generation"] + 1, primary=node, eligible=[node],
                       outdated=sorted(set(self._peers(rec, node))),
                       synced_uuid=rep.uuid if rep and rep.uuid else rec.get("synced_uuid"))
            await self._commit(pool, rev, new, {"event": "force-promote", "node": node,
                                                "result": "granted", "by": who,
                                                "accept_data_loss": True, "from":
                                                rec.get("primary")})
            self.alert(pool, "FORCED promote of %s at generation %d by %s"
                       % (node, new["generation"], who))
            return new

    async def set_flags(self, pool, who="admin", **flags):
        async with self._lock(pool):
            rec, rev = self._record(pool)
            new = dict(rec)
            for key, value in flags.items():
                if value is not None:
                    new[key] = value
            if new == rec:
                return rec
            await self._commit(pool, rev, new, dict({"event": "pool-set", "by": who},
                                                    **{k: v for k, v in flags.items()
                                                       if v is not None}))
            return new

    def pool_status(self, pool):
        rec, rev = self._record(pool)
        now = self.clock()
        lease = float(rec.get("lease") or st.DEFAULT_LEASE)
        nodes = []
        for n in rec.get("nodes", []):
            age = self._age(pool, n, now)
            rep = self._reports.get((pool, n))
            nodes.append({
                "node": n,
                "alive": age is not None and age < lease,
                "last_seen_ms": None if age is None else int(age * 1000),
                "primary": rec.get("primary") == n,
                "eligible": n in rec.get("eligible", []),
                "outdated": n in rec.get("outdated", []),
                "report": None if rep is None else rep.as_dict(now),
            })
        ok, why = self.can_grant(rec)
        return {"pool": pool, "generation": rec["generation"], "primary": rec.get("primary"),
                "eligible": rec.get("eligible", []), "outdated": rec.get("outdated", []),
                "synced_uuid": rec.get("synced_uuid"),
                "auto_failover": bool(rec.get("auto_failover", True)),
                "observer": bool(rec.get("observer")), "lease_s": lease,
                "can_grant": ok, "cannot_grant_reason": why or None,
                "revision": rev, "nodes": nodes}
