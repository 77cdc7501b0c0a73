"""Node credentials: which client certificate may act as which node of which pool.

Stored per pool in the document ``cred/<pool>`` (JSON)::

    {"nodes": {"<node>": [{"id": "...", "fp": "<sha256 hex>", "issued": epoch,
                           "expires": epoch|null, "cn": "..."}]}}

A certificate signed by the mediator CA is accepted only if its fingerprint is listed here and
not expired: the listing, not the CA signature, is what grants the right to act as that node of
that pool. Rotation issues a new credential and sets ``expires`` of the older ones to now +
overlap, so a node keeps heartbeating with the old one until the new one is installed.
Wall-clock time is used for expiry (an administrative window, not a safety timer).
"""
import json
import re
import time
import uuid

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind, value):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError("%s name %r is not valid (letters, digits, '.', '_', '-'; up to 128)"
                         % (kind, value))
    return value


class Identity(object):
    __slots__ = ("pool", "node", "cred_id", "expires")

    def __init__(self, pool, node, cred_id, expires):
        self.pool = pool
        self.node = node
        self.cred_id = cred_id
        self.expires = expires

    def valid(self, now=None):
        return self.expires is None or (now or time.time()) < self.expires


class Registry(object):
    """In-memory index fingerprint -> Identity, rebuilt from the store's cred/ documents."""

    def __init__(self, store):
        self.store = store
        self.by_fp = {}
        self._docs_version = None

    def rebuild(self):
        # A shared store (etcd) counts document changes made by any mediator instance.
        self._docs_version = getattr(self.store, "docs_version", None)
        index = {}
        for name, (value, _rev) in self.store.docs("cred/").items():
            pool = name[len("cred/"):]
            try:
                data = json.loads(value.decode())
            except ValueError:
                continue
            for node, creds in data.get("nodes", {}).items():
                for c in creds:
                    index[c["fp"]] = Identity(pool, node, c["id"], c.get("expires"))
        self.by_fp = index

    def lookup(self, fp):
        """Identity for a fingerprint if listed and not expired; else None."""
        if getattr(self.store, "docs_version", None) != self._docs_version:
            self.rebuild()  # another mediator instance issued, rotated or revoked one
        ident = self.by_fp.get(fp)
        if ident is None or not ident.valid():
            return None
        return ident

    def load(self, pool):
        value, rev = self.store.doc("cred/" + pool)
        data = json.loads(value.decode()) if value else {"nodes": {}}
        return data, rev

    def add(self, pool, node, fp, cn, overlap=None, who="admin"):
        """List a new credential for node; with ``overlap`` (seconds) the node's older
        credentials expire after that window (rotation), else they stay (issue)."""
        data, rev = self.load(pool)
        now = time.time()
        creds = data["nodes"].setdefault(node, [])
        if overlap is not None:
            for c in creds:
                if c.get("expires") is None or c["expires"] > now + overlap:
                    c["expires"] = now + overlap
        creds[:] = [c for c in creds if c.get("expires") is None or c["expires"] > now]
        cred_id = uuid.uuid4().hex[:12]
        creds.append({"id": cred_id, "fp": fp, "issued": now, "expires": None, "cn": cn})
        event = "credential-rotate" if overlap is not None else "credential-issue"
        audit = {"event": event, "node": node, "cred_id": cred_id, "by": who,
                 "fingerprint": fp[:16]}
        if overlap is not None:
            audit["overlap_s"] = overlap
        self.store.put_doc("cred/" + pool, json.dumps(data, sort_keys=True), rev, audit=audit,
                           pool=pool)
        self.rebuild()
        return cred_id

    def revoke(self, pool, node, cred_id=None, who="admin"):
        data, rev = self.load(pool)
        creds = data["nodes"].get(node, [])
        keep = [c for c in creds if cred_id is not None and c["id"] != cred_id]
        if len(keep) == len(creds):
            raise ValueError("no such credential for %s of pool %s" % (node, pool))
        data["nodes"][node] = keep
        self.store.put_doc("cred/" + pool, json.dumps(data, sort_keys=True), rev,
                           audit={"event": "credential-revoke", "node": node,
                                  "cred_id": cred_id or "all", "by": who}, pool=pool)
        self.rebuild()

    def listing(self, pool):
        data, _ = self.load(pool)
        now = time.time()
        out = []
        for node, creds in sorted(data["nodes"].items()):
            for c in creds:
                out.append({"node": node, "id": c["id"], "fingerprint": c["fp"][:16],
                            "issued": c["issued"], "expires": c.get("expires"),
                            "valid": c.get("expires") is None or c["expires"] > now})
        return out
