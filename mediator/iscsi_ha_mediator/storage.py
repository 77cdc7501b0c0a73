"""The mediator's storage interface, and the errors every backend raises.

STABLE INTERFACE (other backends, e.g. etcd_backend.py, implement it): change only by adding.

A backend holds, durably:
- one *record* per pool (a JSON-able dict; see ``new_record``) with a *revision*: an integer
  that changes on every write of that record and never repeats for the pool (0 = absent).
  Every change is ONE ``commit(pool, expected_revision, record, audit)``: a compare-and-set
  against the revision the decision read, with its audit entry written in the SAME atomic step.
  ``commit`` returns only after the change is durable (SQLite: after COMMIT with
  synchronous=FULL; etcd: after the txn is acknowledged by a quorum).
- an append-only audit log per pool (``append_audit`` for entries that change no record:
  refusals, credential changes, authentication failures).
- small named *documents* (bytes) with their own revision and CAS (``put_doc``): credentials
  live in ``cred/<pool>``, the rest is up to the service.

And, in memory only (the multi-instance hook):
- ``node_seen(pool, node)`` on every heartbeat; ``grant_allowed(pool, holder)`` before any
  grant that deposes ``holder`` (or grants with no holder): (True, 0.0) or (False, retry_after
  seconds). The default implementation (``LocalLiveness``) is the single-instance rule: a
  holder's lease has run out L + M after this process last heard it, and nothing is granted
  until L + M after this process started ("restart grace").

Errors: ``Conflict`` (the record moved; carries the current record and revision),
``StorageUnavailable`` (nothing was written), ``StorageUnknown`` (sent, outcome unknown: the
caller must answer "retry", never "granted"). ``str()`` of each is one line.

Methods are synchronous and thread-safe; the asyncio service calls them from a worker thread
(``concurrency`` tells it how many may run at once).
"""
import abc
import threading
import time

DEFAULT_LEASE = 10.0
DEFAULT_MARGIN = 2.0

RECORD_FIELDS = ("pool", "generation", "primary", "eligible", "outdated", "synced_uuid",
                 "nodes", "auto_failover", "observer", "lease", "created")


class StorageError(Exception):
    """A storage operation failed; ``str()`` is one line."""


class StorageUnavailable(StorageError):
    """The store cannot be reached: no change was made."""


class StorageUnknown(StorageError):
    """A change was sent but whether it was applied is unknown (answer "retry")."""


class Conflict(StorageError):
    """The record changed since it was read (another request or instance won the CAS)."""

    def __init__(self, message, record=None, revision=0):
        StorageError.__init__(self, message)
        self.record = record
        self.revision = revision


def new_record(pool, nodes, lease=DEFAULT_LEASE, auto_failover=True, observer=False):
    """A fresh pool record: generation 1, no primary, nobody eligible yet (nodes become
    eligible when the mediator sees them connected and in sync, or by an admin force)."""
    return {
        "pool": pool,
        "generation": 1,
        "primary": None,
        "eligible": [],
        "outdated": [],
        "synced_uuid": None,
        "nodes": sorted(nodes),
        "auto_failover": bool(auto_failover),
        "observer": bool(observer),
        "lease": float(lease),
        "created": time.time(),
    }


class Storage(abc.ABC):
    """What the mediator service needs from a durable store. See the module docstring."""

    name = "abstract"
    concurrency = 1           # how many calls the service may run at once in worker threads

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout=10.0):
        """Open/load; raise StorageUnavailable if it cannot. Returns self."""
        return self

    def stop(self):
        """Close; idempotent."""

    @property
    def available(self):
        """False when a change cannot be made now (the service then answers "cannot grant")."""
        return True

    @property
    def unavailable_reason(self):
        return None

    # -- pool records ---------------------------------------------------------------------------
    @abc.abstractmethod
    def pools(self):
        """Sorted pool names (from memory)."""

    @abc.abstractmethod
    def cached(self, pool):
        """(record copy, revision) from memory, no I/O; (None, 0) if absent."""

    @abc.abstractmethod
    def read(self, pool):
        """(record, revision) from the store now (linearizable); (None, 0) if absent."""

    @abc.abstractmethod
    def commit(self, pool, expected_revision, record, audit, absent_presence=()):
        """Write ``record`` if the pool's revision is still ``expected_revision`` (0: the pool
        must not exist yet), with ``audit`` (a dict) appended in the same atomic step.
        ``absent_presence``: nodes no other instance may be hearing now (multi-instance
        backends; single-instance ones ignore it). Returns the new revision after it is
        durable. Raises Conflict / StorageUnavailable / StorageUnknown."""

    @abc.abstractmethod
    def delete_pool(self, pool, expected_revision, audit):
        """Remove the record (CAS) and the pool's credentials doc; the audit trail stays."""

    # -- audit ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_audit(self, pool, entry):
        """Append ``entry`` (a dict) to ``pool``'s audit log, durably. ``pool`` may be "" for
        mediator-wide events (e.g. a refused credential that names no known pool)."""

    @abc.abstractmethod
    def audit(self, pool, limit=100):
        """The newest ``limit`` audit entries of ``pool`` ("" = mediator-wide; None = all
        pools), oldest first. Each is the dict written plus "pool", "time" (epoch) and, for
        commits, "generation"."""

    # -- documents (credentials: doc "cred/<pool>") ---------------------------------------------
    # The documents are served from memory: an implementation keeps them in ``self._docs``
    # ({name: (bytes, revision)}) under ``self._lock`` and refreshes it on every change it
    # makes or learns of; these two readers are the same for every backend.
    def doc(self, name):
        """(bytes, revision) from memory; (None, 0) if absent."""
        with self._lock:
            return self._docs.get(name, (None, 0))

    def docs(self, prefix):
        """{name: (bytes, revision)} for every document whose name starts with ``prefix``."""
        with self._lock:
            return {n: v for n, v in self._docs.items() if n.startswith(prefix)}

    @abc.abstractmethod
    def put_doc(self, name, value, expected_revision, audit=None, pool=""):
        """CAS write of a document (``value`` None deletes it); ``audit`` (optional dict) is
        appended to ``pool``'s log in the same atomic step. Returns the new revision. Raises
        Conflict."""

    # -- liveness (memory only) -----------------------------------------------------------------
    @abc.abstractmethod
    def node_seen(self, pool, node):
        """A heartbeat from ``node`` of ``pool`` reached this instance (no I/O)."""

    @abc.abstractmethod
    def grant_allowed(self, pool, holder):
        """(True, 0.0) when a grant deposing ``holder`` (None: no holder) may be tried now,
        else (False, retry_after seconds)."""


class LocalLiveness(object):
    """Single-instance lease rule (mixin). Monotonic clock only.

    ``holder``'s lease has run out at max(last heartbeat from holder, start) + L + M, where L is
    the pool's lease (record["lease"], default ``lease``) and M the margin. Until start + L + M
    nothing is granted: a primary may be alive and simply not have reached this new process
    yet (the restart grace)."""

    def _init_liveness(self, lease=DEFAULT_LEASE, margin=DEFAULT_MARGIN, clock=time.monotonic):
        self.lease = float(lease)
        self.margin = float(margin)
        self.clock = clock
        self.started = clock()
        self._seen = {}
        self._seen_lock = threading.Lock()

    def node_seen(self, pool, node):
        self._seen[(pool, node)] = self.clock()

    def last_seen(self, pool, node):
        """Monotonic time of the last heartbeat from ``node`` at this instance, or None."""
        return self._seen.get((pool, node))

    def grant_allowed(self, pool, holder):
        record, _ = self.cached(pool)
        lease = float(record.get("lease") or self.lease) if record else self.lease
        marks = [self.started]
        if holder is not None:
            last = self._seen.get((pool, holder))
            if last is not None:
                marks.append(last)
        left = max(marks) + lease + self.margin - self.clock()
        return (left <= 0), max(0.0, left)
