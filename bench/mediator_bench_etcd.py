"""The etcd side of the mediator scale benchmark (bench/mediator_scale.py --backends ...).

- ``EtcdForBench``: a three-member etcd of its own on 127.0.0.1 (the test harness
  tests/mediator_etcd/etcd_cluster.py: free ports, temporary data dirs, always removed),
  pinned to the CPU the load generator uses, so the mediator keeps its own core.
- ``seed``: the same steady state as the SQLite seed (pools golden with node a primary,
  credentials listed), written in batched etcd transactions under the backend's key layout.
- ``conf_lines``: the mediator.conf lines that select the etcd backend.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "mediator"))
sys.path.insert(0, os.path.join(ROOT, "tests", "mediator_etcd"))

import etcd_cluster  # noqa: E402
from iscsi_ha_mediator import etcd_backend as eb  # noqa: E402
from iscsi_ha_mediator import etcd_client as ec  # noqa: E402
from iscsi_ha_mediator import storage as st  # noqa: E402

BATCH = 100  # puts per transaction (etcd's default --max-txn-ops is 128)


class EtcdForBench(object):
    def __init__(self, members=3, cpus=None):
        self.cluster = etcd_cluster.EtcdCluster(size=members, prefix="mediator-bench-etcd-")
        self.cpus = cpus

    def __enter__(self):
        if etcd_cluster.etcd_binary() is None:
            raise SystemExit("etcd is not installed (apt-get install etcd-server; "
                             "scripts/install-deps does)")
        self.cluster.__enter__()
        if self.cpus:
            for m in self.cluster.members:
                os.sched_setaffinity(m.proc.pid, self.cpus)
        return self

    def __exit__(self, *exc):
        return self.cluster.__exit__(*exc)

    @property
    def endpoints(self):
        return self.cluster.endpoints

    def pids(self):
        return [m.proc.pid for m in self.cluster.members if m.running()]


def seed(endpoints, pools, promote_pools, fps, uuid, prefix=None):
    """Write every pool record and credential document (fresh prefix) in batched txns."""
    settings = ec.EtcdSettings(endpoints, prefix=prefix or ec.DEFAULT_PREFIX,
                               timeout=10, total_timeout=30)
    layout = eb.EtcdBackend(settings)  # not started: only its key layout and client
    ops = []
    for pool in pools + promote_pools:
        rec = st.new_record(pool, ["a", "b"])
        rec.update(generation=2, primary="a", eligible=["a", "b"], synced_uuid=uuid)
        doc = {"nodes": {n: [{"id": "bench-%s" % n, "fp": fps[(pool, n)][0], "issued": 0,
                              "expires": None, "cn": "%s@%s" % (n, pool)}]
                         for n in ("a", "b") if (pool, n) in fps}}
        ops.append(ec.op_put(layout._k_pool(pool), eb._dumps(rec)))
        ops.append(ec.op_put(layout._k_doc("cred/" + pool), json.dumps(doc)))
    client = layout.client
    for i in range(0, len(ops), BATCH):
        # A guard key per batch, created by the batch: sent twice, it applies once.
        guard = "%sbench-seed/%d" % (settings.prefix, i)
        client.txn([ec.cmp_version(guard, 0)], ops[i:i + BATCH] + [ec.op_put(guard, b"1")])
    client.close()


def conf_lines(endpoints):
    return "backend = etcd\netcd_endpoints = %s\n" % ",".join(endpoints)


def proc_cpu_seconds(pids, clk=os.sysconf("SC_CLK_TCK")):
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / float(clk)
        except OSError:
            pass
    return total
