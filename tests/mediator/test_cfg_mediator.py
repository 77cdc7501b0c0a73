"""iscsi-cfg mediator enroll|status|test|reset against a real mediator (TLS on 127.0.0.1)."""
import json
import os
import stat

import pytest

from iscsi_ha.cli import cfg_main

from harness import drbd
from test_mediator_tls import sync_pool


@pytest.fixture
def host(tmp_path):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text("STATE_DIR=%s\nSYSLOG_SOCKET=\n" % (tmp_path / "hoststate"))
    return str(path)


def run(capsys, *argv):
    code = cfg_main.main(list(argv))
    out, err = capsys.readouterr()
    return int(code), out, err


def bundle_file(med, tmp_path, pool, node):
    b = med.admin(op="cred-issue", pool=pool, node=node)["bundle"]
    path = tmp_path / ("%s-%s.json" % (pool, node))
    path.write_text(json.dumps(b))
    return str(path)


def test_enroll_sets_keys_and_private_files_then_test_and_status(med, tmp_path, host, capsys):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    bundle = bundle_file(med, tmp_path, "p1", "a")
    code, out, err = run(capsys, "mediator", "enroll", bundle, "--config", host)
    assert code == 0, err
    assert "accepts a of pool p1" in out
    text = open(host).read()
    assert "MEDIATOR=127.0.0.1:%d" % med.port in text and "MEDIATOR_POOL=p1" in text
    assert "MEDIATOR_NODE=a" in text
    d = tmp_path / "hoststate" / "mediator"
    assert stat.S_IMODE(os.stat(str(d)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(str(d / "key.pem")).st_mode) == 0o600
    code, out, err = run(capsys, "mediator", "test", "--config", host)
    assert code == 0 and "ok (TLSv1." in out and "generation 1" in out
    # status reads the agent's document (no agent ran yet)
    code, out, _ = run(capsys, "mediator", "status", "--config", host)
    assert code == 2 and "not published" in out


def test_enroll_refuses_bad_bundle_and_foreign_credential(med, tmp_path, host, capsys):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    code, _, err = run(capsys, "mediator", "enroll", str(junk), "--config", host)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a mediator" in err
    bundle = json.loads(open(bundle_file(med, tmp_path, "p1", "a")).read())
    med.admin(op="cred-revoke", pool="p1", node="a")
    (tmp_path / "revoked.json").write_text(json.dumps(bundle))
    code, _, err = run(capsys, "mediator", "enroll", str(tmp_path / "revoked.json"),
                       "--config", host)
    assert code == 1 and "NOT installed" in err and len(err.strip().splitlines()) == 1
    assert "MEDIATOR=127" not in open(host).read()
    assert not os.path.exists(str(tmp_path / "hoststate" / "mediator" / "key.pem"))
    assert not os.path.exists(str(tmp_path / "hoststate" / "mediator.new"))


def test_reset_after_rollback(med, tmp_path, host, capsys):
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    assert run(capsys, "mediator", "enroll", bundle_file(med, tmp_path, "p1", "a"),
               "--config", host)[0] == 0
    d = tmp_path / "hoststate" / "mediator"
    (d / "state.json").write_text(json.dumps({"max_gen": 9, "rolled_back": "gen 1 < 9"}))
    code, _, err = run(capsys, "mediator", "reset", "--config", host)
    assert code == 1 and "--yes" in err
    code, out, _ = run(capsys, "mediator", "reset", "--yes", "--config", host)
    assert code == 0 and json.loads((d / "state.json").read_text()) == {
        "max_gen": 1, "rolled_back": ""}


def test_support_bundle_masks_secrets_and_has_no_key(med, tmp_path, host, capsys):
    import tarfile
    med.admin(op="pool-add", pool="p1", nodes=["a", "b"])
    assert run(capsys, "mediator", "enroll", bundle_file(med, tmp_path, "p1", "a"),
               "--config", host)[0] == 0
    with open(host, "a") as handle:
        handle.write("SMTP_PASS=hunter2\nXAPI_PASSWORD=s3cret\n")
    out = str(tmp_path / "b.tgz")
    code, text, err = run(capsys, "support-bundle", "-o", out, "--config", host)
    assert code == 0, err
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    with tarfile.open(out) as tar:
        blobs = {os.path.basename(m.name): tar.extractfile(m).read() for m in tar.getmembers()}
    assert b"SMTP_PASS=***" in blobs["iscsi-ha.conf"] and b"hunter2" not in blobs["iscsi-ha.conf"]
    assert b"s3cret" not in b"".join(blobs.values())
    assert b"PRIVATE KEY" not in b"".join(blobs.values())
    assert b"BEGIN CERTIFICATE" in blobs["mediator-cert.pem"]
    assert {"status.json", "versions.txt", "mediator-state.json"} <= set(blobs)


def test_status_view_shows_the_witness():
    from rich.console import Console
    from iscsi_ha.cli import status_view
    doc = {"witness": {"reachable": True, "address": "m1:7790", "generation": 4,
                       "primary": "a", "eligible": ["a", "b"], "outdated": [], "peer": "b",
                       "peer_alive": False, "auto_failover": True}}
    console = Console(width=120, record=True)
    console.print(status_view._witness_panel(doc))
    text = console.export_text()
    assert "generation 4, primary a, golden a, b" in text and "NOT seen by the mediator" in text
    doc["witness"] = {"reachable": False, "address": "m1:7790", "error": "timed out"}
    console = Console(width=120, record=True)
    console.print(status_view._witness_panel(doc))
    assert "UNREACHABLE (timed out)" in console.export_text()
    assert status_view._witness_panel({}) is None
