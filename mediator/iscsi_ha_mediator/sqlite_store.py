"""Durable mediator state in one SQLite file (the default backend).

- WAL journal with synchronous=FULL: ``commit`` returns only after the transaction is on disk.
- One connection, guarded by a lock; every write is ``BEGIN IMMEDIATE`` ... ``COMMIT``, so the
  compare (revision) and the write (record + audit) are one atomic step even if another process
  (the admin CLI run offline) opens the same file.
- Revisions come from one counter in the ``meta`` table, so a pool removed and added again never
  sees an old revision.
- Records and documents are cached in memory after ``start`` (heartbeats read the cache only).
"""
import json
import os
import sqlite3
import threading
import time

from .storage import (Conflict, LocalLiveness, Storage, StorageUnavailable, DEFAULT_LEASE,
                      DEFAULT_MARGIN)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (pool TEXT PRIMARY KEY, revision INTEGER NOT NULL,
                                  record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (name TEXT PRIMARY KEY, revision INTEGER NOT NULL,
                                 value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, pool TEXT NOT NULL,
                                  time REAL NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_pool ON audit (pool, id);
"""


def _dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class SqliteStorage(LocalLiveness, Storage):
    name = "sqlite"
    concurrency = 1

    def __init__(self, path, lease=DEFAULT_LEASE, margin=DEFAULT_MARGIN, clock=None):
        self.path = path
        if clock is None:
            self._init_liveness(lease, margin)
        else:
            self._init_liveness(lease, margin, clock)
        self._lock = threading.RLock()
        self._db = None
        self._records = {}
        self._docs = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout=10.0):
        with self._lock:
            if self._db is not None:
                return self
            try:
                fresh = not os.path.exists(self.path)
                db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
                if fresh:
                    os.chmod(self.path, 0o600)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', '0')")
                self._db = db
                self._reload()
            except sqlite3.Error as exc:
                raise StorageUnavailable("state database %s: %s" % (self.path, exc))
        return self

    def _reload(self):
        self._records = {p: (json.loads(r), rev) for p, rev, r in
                         self._db.execute("SELECT pool, revision, record FROM pools")}
        self._docs = {n: (bytes(v), rev) for n, rev, v in
                      self._db.execute("SELECT name, revision, value FROM docs")}

    def stop(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _need(self):
        if self._db is None:
            raise StorageUnavailable("state database %s is not open" % self.path)
        return self._db

    def _next_revision(self, db):
        rev = int(db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (str(rev),))
        return rev

    def _txn(self, body):
        """Run ``body(db)`` inside BEGIN IMMEDIATE/COMMIT; roll back on any exception."""
        db = self._need()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageUnavailable("state database %s: %s" % (self.path, exc))
        try:
            out = body(db)
            db.execute("COMMIT")
            return out
        except BaseException as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise StorageUnavailable("state database %s: %s; no change made"
                                         % (self.path, exc))
            raise

    def _insert_audit(self, db, pool, entry, generation=None):
        entry = dict(entry)
        entry["pool"] = pool
        entry.setdefault("time", time.time())
        if generation is not None:
            entry.setdefault("generation", generation)
        db.execute("INSERT INTO audit (pool, time, entry) VALUES (?, ?, ?)",
                   (pool, entry["time"], _dumps(entry)))

    # -- pool records ---------------------------------------------------------------------------
    def pools(self):
        with self._lock:
            return sorted(self._records)

    def cached(self, pool):
        item = self._records.get(pool)
        if item is None:
            return None, 0
        return dict(item[0]), item[1]

    def read(self, pool):
        with self._lock:
            row = self._need().execute("SELECT revision, record FROM pools WHERE pool=?",
                                       (pool,)).fetchone()
            if row is None:
                return None, 0
            return json.loads(row[1]), row[0]

    def commit(self, pool, expected_revision, record, audit, absent_presence=()):
        text = _dumps(record)

        def body(db):
            row = db.execute("SELECT revision, record FROM pools WHERE pool=?",
                             (pool,)).fetchone()
            current = row[0] if row else 0
            if current != expected_revision:
                if row is None:
                    raise Conflict("pool %s no longer exists" % pool, None, 0)
                if not expected_revision:
                    raise Conflict("pool %s already exists" % pool, json.loads(row[1]), row[0])
                raise Conflict("pool %s changed (revision %d, expected %d)"
                               % (pool, current, expected_revision), json.loads(row[1]), row[0])
            rev = self._next_revision(db)
            db.execute("INSERT OR REPLACE INTO pools (pool, revision, record) VALUES (?, ?, ?)",
                       (pool, rev, text))
            self._insert_audit(db, pool, audit, record.get("generation"))
            return rev

        with self._lock:
            rev = self._txn(body)
            self._records[pool] = (json.loads(text), rev)
            return rev

    def delete_pool(self, pool, expected_revision, audit):
        def body(db):
            row = db.execute("SELECT revision FROM pools WHERE pool=?", (pool,)).fetchone()
            if row is None or row[0] != expected_revision:
                raise Conflict("pool %s changed meanwhile" % pool)
            db.execute("DELETE FROM pools WHERE pool=?", (pool,))
            db.execute("DELETE FROM docs WHERE name=?", ("cred/" + pool,))
            self._insert_audit(db, pool, audit)

        with self._lock:
            self._txn(body)
            self._records.pop(pool, None)
            self._docs.pop("cred/" + pool, None)

    # -- audit ----------------------------------------------------------------------------------
    def append_audit(self, pool, entry):
        with self._lock:
            self._txn(lambda db: self._insert_audit(db, pool, entry))

    def audit(self, pool, limit=100):
        with self._lock:
            db = self._need()
            if pool is None:
                rows = db.execute("SELECT entry FROM audit ORDER BY id DESC LIMIT ?",
                                  (int(limit),)).fetchall()
            else:
                rows = db.execute("SELECT entry FROM audit WHERE pool=? ORDER BY id DESC "
                                  "LIMIT ?", (pool, int(limit))).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    # -- documents ------------------------------------------------------------------------------
    def put_doc(self, name, value, expected_revision, audit=None, pool=""):
        if isinstance(value, str):
            value = value.encode()

        def body(db):
            row = db.execute("SELECT revision FROM docs WHERE name=?", (name,)).fetchone()
            current = row[0] if row else 0
            if current != expected_revision:
                raise Conflict("document %s changed meanwhile (revision %d, expected %d)"
                               % (name, current, expected_revision))
            rev = self._next_revision(db)
            if value is None:
                db.execute("DELETE FROM docs WHERE name=?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO docs (name, revision, value) VALUES (?,?,?)",
                           (name, rev, sqlite3.Binary(value)))
            if audit is not None:
                self._insert_audit(db, pool, audit)
            return rev

        with self._lock:
            rev = self._txn(body)
            if value is None:
                self._docs.pop(name, None)
            else:
                self._docs[name] = (value, rev)
            return rev
