"""iscsi-ha-mediator's admin CLI through the real admin unix socket of a running mediator."""
import json
import os
import stat
import tarfile

from iscsi_ha_mediator import cli

from harness import drbd
from test_mediator_tls import sync_pool


def run(med, capsys, *argv):
    code = cli.main(["--config", "/nonexistent", "--state-dir", med.state_dir] + list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_state_dir_private_and_refuses_twice(tmp_path, capsys):
    d = str(tmp_path / "s")
    assert cli.main(["--config", "/nonexistent", "--state-dir", d, "init", "--name",
                     "127.0.0.1"]) == 0
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(os.path.join(d, "tls", name)).st_mode) == 0o600
    capsys.readouterr()
    assert cli.main(["--config", "/nonexistent", "--state-dir", d, "init"]) == 2
    err = capsys.readouterr().err
    assert "already holds a server certificate" in err and len(err.splitlines()) == 1


def test_serve_refuses_root_and_open_state_dir(tmp_path, capsys):
    d = tmp_path / "s"
    assert cli.main(["--config", "/nonexistent", "--state-dir", str(d), "init", "--name",
                     "127.0.0.1"]) == 0
    os.chmod(str(d), 0o755)
    capsys.readouterr()
    assert cli.main(["--config", "/nonexistent", "--state-dir", str(d), "serve"]) == 2
    assert "readable by others" in capsys.readouterr().err
    if os.geteuid() == 0:
        os.chmod(str(d), 0o700)
        assert cli.main(["--config", "/nonexistent", "--state-dir", str(d), "serve"]) == 2
        assert "refusing to run as root" in capsys.readouterr().err


def test_pool_lifecycle_status_and_errors(med, tmp_path, capsys):
    code, out, _ = run(med, capsys, "pool", "add", "xen1-iscsi1", "hostA", "hostB")
    assert code == 0 and "pool xen1-iscsi1 added" in out
    code, _, err = run(med, capsys, "pool", "add", "xen1-iscsi1", "hostA", "hostB")
    assert code == 1 and err.strip() == "iscsi-ha-mediator: pool xen1-iscsi1 already exists"
    code, _, err = run(med, capsys, "pool", "add", "bad/name", "a", "b")
    assert code == 1 and "pool name 'bad/name' is not valid" in err
    code, _, err = run(med, capsys, "pool", "add", "p2", "a", "a")
    assert code == 1 and "two distinct nodes" in err
    code, out, _ = run(med, capsys, "pool", "list")
    assert code == 0 and "xen1-iscsi1" in out
    out_file = str(tmp_path / "a.cred")
    code, out, _ = run(med, capsys, "node", "credential", "issue", "xen1-iscsi1", "hostA",
                       "-o", out_file)
    assert code == 0 and stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    bundle = json.load(open(out_file))
    assert bundle["node"] == "hostA" and "PRIVATE KEY" in bundle["key"]
    code, _, err = run(med, capsys, "node", "credential", "issue", "xen1-iscsi1", "hostC")
    assert code == 1 and "node hostC is not in pool xen1-iscsi1" in err
    code, out, _ = run(med, capsys, "status")
    assert "pool xen1-iscsi1  generation 1  primary -" in out
    assert code == 1          # nodes never seen: degraded
    code, out, _ = run(med, capsys, "status", "--json")
    doc = json.loads(out)
    assert doc["pools"][0]["nodes"][0]["alive"] is False
    code, out, _ = run(med, capsys, "pool", "show", "xen1-iscsi1")
    assert "credential-issue" in out and "pool-add" in out
    code, out, _ = run(med, capsys, "observer", "xen1-iscsi1", "on")
    assert code == 0 and "observer" in out
    code, out, _ = run(med, capsys, "simulate", "xen1-iscsi1", "hostB", "promote")
    assert code == 1 and "observer mode" in out
    code, _, err = run(med, capsys, "force-promote", "xen1-iscsi1", "hostB")
    assert code == 2 and "--accept-data-loss" in err
    code, out, _ = run(med, capsys, "force-promote", "xen1-iscsi1", "hostB",
                       "--accept-data-loss")
    assert code == 0 and "hostB is primary of xen1-iscsi1 at generation 2" in out
    code, _, err = run(med, capsys, "pool", "remove", "xen1-iscsi1")
    assert code == 1 and "--force" in err
    code, out, _ = run(med, capsys, "pool", "remove", "xen1-iscsi1", "--force")
    assert code == 0
    code, out, _ = run(med, capsys, "audit", "xen1-iscsi1")
    assert code == 1          # the pool is gone
    code, out, _ = run(med, capsys, "audit")
    for event in ("pool-add", "credential-issue", "pool-set", "force-promote", "pool-remove"):
        assert event in out


def test_admin_commands_when_not_running(tmp_path, capsys):
    code = cli.main(["--config", "/nonexistent", "--state-dir", str(tmp_path), "status"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("iscsi-ha-mediator: the mediator is not running (no "
                                         "admin socket %s/admin.sock)" % tmp_path)


def test_bad_config_one_line(tmp_path, capsys):
    conf = tmp_path / "m.conf"
    conf.write_text("[mediator]\nlease = soon\n")
    assert cli.main(["--config", str(conf), "status"]) == 2
    err = capsys.readouterr().err
    assert "lease='soon' is not a valid float" in err and len(err.splitlines()) == 1
    conf.write_text("[mediator]\nbogus = 1\n")
    assert cli.main(["--config", str(conf), "status"]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err


def test_support_bundle_has_no_private_key(med, tmp_path, capsys):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    med.admin(op="cred-issue", pool="p1", node="a")
    out = str(tmp_path / "bundle.tgz")
    code, text, _ = run(med, capsys, "support-bundle", "-o", out)
    assert code == 0
    with tarfile.open(out) as tar:
        names = [os.path.basename(n) for n in tar.getnames()]
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers())
    assert {"status.json", "audit.json", "versions.txt", "ca.crt"} <= set(names)
    assert b"PRIVATE KEY" not in blob and b"credential-issue" in blob


def test_status_of_many_live_pools_is_not_cut_and_summary_leaves_pools_out(med, capsys):
    """A pool's status with both nodes' reports is ~1 KB: "status" at ~1,000 live pools went
    over the admin client's former 1 MiB line bound and failed as "closed the admin connection
    without an answer"."""
    from iscsi_ha_mediator import storage as st
    store, m = med.server.store, med.server.mediator
    n = 2000

    def seed():
        store._db.execute("PRAGMA synchronous=OFF")      # setup speed only
        for i in range(n):
            pool = "many%04d" % i
            store.commit(pool, 0, st.new_record(pool, ["a", "b"]), {"event": "test-seed"})
        for i in range(n):
            for node in ("a", "b"):
                m.heartbeat("many%04d" % i, node, {"gen": 1, "drbd": drbd()})
    med.on_loop(seed)
    assert len(json.dumps(med.on_loop(med.server.admin, {"op": "status"}))) > 1 << 20
    code, out, _ = run(med, capsys, "status", "--json")
    doc = json.loads(out)
    assert len(doc["pools"]) == n
    assert all(nd["alive"] and nd["report"]["disk"] == "UpToDate"
               for p in doc["pools"] for nd in p["nodes"])
    brief = med.admin(op="status", pools=False)
    assert brief["pools"] is None and brief["pool_count"] == n
