"""iscsi-cfg test-alert: one test alert by email to a real SMTP server (aiosmtpd on 127.0.0.1)
and as a XAPI message on the lab's fake XAPI pool (over a Unix socket); what the server
answered is printed; a refused connection and an unreachable XAPI are said clearly, exit 1."""
import pytest
from smtp_servers import HOST, closed_port, smtp_server

from iscsi_ha import config as config_mod
from iscsi_ha.cli import cfg_main, testalert_cmd
from iscsi_ha.cli.context import CliError, HostContext
from iscsi_ha_lab.fake_xapi import FakePool

CONFIG = """DRBD_RESOURCES=iscsi1
DRBD_VIRTUAL_IP=192.0.2.100
DRBD_VIRTUAL_MASK=24
DRBD_INTERFACE=eth0
STATE_DIR={root}/state
POOL_CONF={root}/pool.conf
XAPI_URL=unix://{root}/x.sock
XAPI_TIMEOUT=2
MAIL_ON={mail_on}
MAIL_USE_SHARED_PARAMS=0
SMTP_SERVER={host}
SMTP_PORT={port}
SMTP_SECURITY=none
SMTP_TIMEOUT=2
MAIL_FROM=iscsi-ha@xcp-a.example.org
MAIL_TO=ops@example.org
"""


def write_config(tmp_path, port, mail_on=1):
    path = tmp_path / "iscsi-ha.conf"
    path.write_text(CONFIG.format(root=tmp_path, host=HOST, port=port, mail_on=mail_on))
    return str(path)


@pytest.fixture
def fake_pool(tmp_path):
    pool = FakePool(str(tmp_path / "xapi"), fuse_delay=0.2, restart_delay=0.1,
                    live_timeout=0.2, hang_limit=10.0)
    pool.add_host("test-a", "192.0.2.11", str(tmp_path / "pool.conf"),
                  uds_path=str(tmp_path / "x.sock"), tcp=False)
    try:
        pool.start()
        yield pool
    finally:
        pool.stop()


def run(path, *flags):
    lines = []
    ctx = HostContext(config_mod.load(path), say=lines.append)
    try:
        code = testalert_cmd.test_alert(ctx, want_email="--email" in flags,
                                        want_xapi="--xapi" in flags)
    except CliError as exc:
        code = exc.code
        lines.append("ERROR " + str(exc))
    finally:
        ctx.close()
    return code, "\n".join(lines)


def test_delivers_by_email_and_xapi_and_prints_the_answers(tmp_path, fake_pool):
    with smtp_server("plain") as (sink, port):
        code, text = run(write_config(tmp_path, port))
        messages = sink.messages()
    assert code == 0, text
    assert len(messages) == 1 and "test alert" in messages[0]["Subject"].lower()
    assert messages[0]["To"] == "ops@example.org"
    assert "email: DATA: 250 2.0.0 Ok: queued as TEST1" in text       # the server's own words
    created = fake_pool.messages("ISCSI_HA_TEST")
    assert len(created) == 1 and created[0]["cls"] == "Pool"
    refs = fake_pool.db.refs("message")
    assert "xapi: delivered: message %s" % refs[0] in text
    assert text.endswith("test-alert: delivered by every path tried")


def test_a_refused_smtp_connection_is_said_and_exit_1(tmp_path, fake_pool):
    code, text = run(write_config(tmp_path, closed_port()), "--email")
    assert code == 1
    assert "email: NOT delivered: SMTP %s:" % HOST in text and "Connection refused" in text
    assert "during connect" in text and "NOT delivered by: email" in text
    assert fake_pool.messages("ISCSI_HA_TEST") == []          # --email only: no XAPI message


def test_xapi_unreachable_is_said_and_exit_1_even_when_the_mail_went(tmp_path):
    with smtp_server("plain") as (sink, port):
        code, text = run(write_config(tmp_path, port))      # nobody listens on x.sock
        assert len(sink.messages()) == 1
    assert code == 1 and "email: delivered" in text
    assert "xapi: NOT delivered: XAPI at unix://" in text and "NOT delivered by: XAPI" in text


def test_mail_off_tries_only_xapi_unless_asked(tmp_path, fake_pool):
    with smtp_server("plain") as (sink, port):
        path = write_config(tmp_path, port, mail_on=0)
        code, text = run(path)
        assert code == 0 and "email: not tried: MAIL_ON=0" in text and sink.messages() == []
        code, text = run(path, "--email")
        assert code == 0 and len(sink.messages()) == 1
        assert "MAIL_ON=0, so the agent itself sends no mail" in text


def test_through_the_command_line(tmp_path, fake_pool, capsys):
    with smtp_server("plain") as (sink, port):
        path = write_config(tmp_path, port)
        assert cfg_main.main(["test-alert", "--email", "--xapi", "--config", path]) == 0
        out = capsys.readouterr().out
        assert "queued as TEST1" in out and "xapi: delivered: message OpaqueRef" in out
    assert cfg_main.main(["test-alert", "--email", "--config", write_config(
        tmp_path, closed_port())]) == 1
    captured = capsys.readouterr()
    assert captured.err == "iscsi-cfg: test alert NOT delivered by: email (see above)\n"
    assert "Connection refused" in captured.out


def test_a_refused_connection_under_python_36s_smtplib(tmp_path, monkeypatch):
    """dom0's Python 3.6: smtplib.SMTP has no class attribute ``sock`` (3.7 added it), so its
    close() after a refused connect() raises AttributeError; found by the RPM payload check
    running test-alert under 3.6. Here 3.6's class is reproduced by removing the attribute."""
    import smtplib
    if hasattr(smtplib.SMTP, "sock"):
        monkeypatch.delattr(smtplib.SMTP, "sock")
    code, text = run(write_config(tmp_path, closed_port()), "--email")
    assert code == 1 and "Connection refused" in text
