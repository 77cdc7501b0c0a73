"""Alert mail through real SMTP servers (aiosmtpd on 127.0.0.1): plain, STARTTLS, implicit TLS,
AUTH LOGIN; servers that refuse, hang or answer 4xx/5xx; HA-Lizard's shared settings; templates."""
import calendar
import logging
import socket
import time

import pytest
from smtp_servers import (PASSWORD, USER, SelfSigned, black_hole, closed_port, make_config,
                          smtp_server)

from iscsi_ha.alerts import events
from iscsi_ha.alerts.email import EmailSender, Renderer, mail_settings, send_test
from iscsi_ha.alerts.events import Entry, SendError


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return SelfSigned(tmp_path_factory.mktemp("tls"))


def entry(kind="drbd-disconnected", resource="r0", status=None, repeat=None):
    return Entry(events.make(kind, resource, "%s: replication link down (WFConnection)"
                             % resource, state="Primary/Unknown WFConnection"),
                 status, time.time(), repeat)


def test_plain_send_test_reports_the_server_answers():
    with smtp_server("plain") as (sink, port):
        report = send_test(make_config(port, SMTP_SECURITY="auto"))
        (message,) = sink.messages()
    lines = report.splitlines()
    assert lines[0].startswith("settings: 127.0.0.1:%d, security auto, no login" % port)
    assert any(line.startswith("connect: 220 ") for line in lines)
    assert "DATA: 250 2.0.0 Ok: queued as TEST1" in lines
    assert not any(line.startswith("STARTTLS") for line in lines)   # not offered: plain
    assert message["To"] == "ops@example.org"
    assert message["X-iscsi-ha-Alert"] == "test; severity=5; resource=-"
    assert socket.gethostname() in message["Subject"]                # $HOSTNAME expanded
    assert "$HOSTNAME" not in message["Subject"]
    assert "test alert from" in message.get_content()


def test_alert_mail_renders_event_and_status(tmp_path):
    status = {"hostname": "xcp-a", "pool": {"role": "master", "master_address": ""},
              "pass": {"number": 7}, "updated_iso": "2024-01-01T00:00:00+0000",
              "health": "degraded", "decision": {"reason": "no action: primary as expected"},
              "drbd": {"r0": {"role": "Primary", "peer_role": "Unknown",
                              "connection": "WFConnection", "disk": "UpToDate",
                              "peer_disk": "DUnknown", "sync_percent": None},
                       "r1": {"role": "Primary", "peer_role": "Secondary",
                              "connection": "SyncSource", "disk": "UpToDate",
                              "peer_disk": "Inconsistent", "sync_percent": 37.5}},
              "problems": ["r0: replication link down (WFConnection)"]}
    with smtp_server("plain") as (sink, port):
        config = make_config(port, MAIL_SUBJECT="ALERT FROM $HOSTNAME",
                             MAIL_TO="ops@example.org, oncall@example.org")
        EmailSender(config).send(entry(status=status))
        (message,) = sink.messages()
        (envelope,) = sink.envelopes
    assert envelope.rcpt_tos == ["ops@example.org", "oncall@example.org"]
    assert message["Subject"] == ("ALERT FROM %s - [major] r0: replication link down "
                                  "(WFConnection)" % socket.gethostname())
    body = message.get_content()
    assert "Host:      xcp-a" in body
    assert "Event:     drbd-disconnected (r0)" in body
    assert "DRBD r0: Primary/Unknown WFConnection UpToDate/DUnknown" in body
    assert "DRBD r1: Primary/Secondary SyncSource UpToDate/Inconsistent 37.5%" in body
    assert "state: Primary/Unknown WFConnection" in body


def test_xapi_message_says_when_the_event_was_seen_not_when_it_was_sent():
    """A message sent late (XAPI refused it during a failover and the retry came 5 s later)
    must still say when the event happened: XAPI stamps the message with its creation."""
    seen = time.mktime((2026, 12, 3, 11, 42, 12, 0, 0, -1))
    late = Entry(entry().alert, {"hostname": "xcp-b"}, seen, None)
    body = Renderer().xapi_body(late)
    assert body.splitlines()[0] == "r0: replication link down (WFConnection)"
    assert "Host: xcp-b. Event: drbd-disconnected (r0), severity 2." in body
    (line,) = [x for x in body.splitlines() if x.startswith("Time: ")]
    assert line.startswith("Time: 2026-12-03 11:42:12 ")
    stamp = time.strptime(line[len("Time: "):], "%Y-%m-%d %H:%M:%S %z")
    assert abs(calendar.timegm(stamp) - stamp.tm_gmtoff - seen) < 1


def test_repeat_summary_subject():
    with smtp_server("plain") as (sink, port):
        EmailSender(make_config(port)).send(entry(repeat={"count": 12, "first": "a",
                                                          "last": "b", "minutes": 30}))
        (message,) = sink.messages()
    assert message["Subject"].endswith("(repeated 12 times)")
    assert "repeated 12 more time(s) between a and b" in message.get_content()


def test_starttls_verified_with_the_ca(tls):
    with smtp_server("starttls", tls) as (sink, port):
        report = send_test(make_config(port, SMTP_SECURITY="starttls", SMTP_CA_FILE=tls.cert))
        assert len(sink.messages()) == 1
    assert "STARTTLS: 220 Ready to start TLS" in report.splitlines()


def test_starttls_refuses_an_unverifiable_certificate(tls):
    with smtp_server("starttls", tls) as (sink, port):
        with pytest.raises(SendError) as info:
            send_test(make_config(port, SMTP_SECURITY="starttls"))
        assert sink.messages() == []
    assert info.value.transient is False
    assert "TLS failed" in str(info.value) and "certificate" in str(info.value).lower()


def test_auto_uses_offered_starttls_opportunistically(tls):
    with smtp_server("starttls", tls) as (sink, port):
        report = send_test(make_config(port, SMTP_SECURITY="auto"))   # no CA: not verified
        assert len(sink.messages()) == 1
    assert "STARTTLS: 220 Ready to start TLS" in report.splitlines()


def test_implicit_tls(tls):
    with smtp_server("ssl", tls) as (sink, port):
        send_test(make_config(port, SMTP_SECURITY="ssl", SMTP_CA_FILE=tls.cert))
        assert len(sink.messages()) == 1


def test_starttls_required_but_not_offered():
    with smtp_server("plain") as (sink, port):
        with pytest.raises(SendError) as info:
            send_test(make_config(port, SMTP_SECURITY="starttls"))
    assert info.value.transient is False
    assert "does not offer STARTTLS" in str(info.value)


def test_auth_login():
    with smtp_server("auth") as (sink, port):
        report = send_test(make_config(port, SMTP_USER=USER, SMTP_PASS=PASSWORD))
        assert len(sink.messages()) == 1
        with pytest.raises(SendError) as info:
            send_test(make_config(port, SMTP_USER=USER, SMTP_PASS="wrong"))
    assert "AUTH: 235 2.7.0 Authentication successful" in report.splitlines()
    assert "login as alerts" in report.splitlines()[0]
    assert info.value.transient is False and "535" in str(info.value)


def test_recipient_answers_decide_retry():
    with smtp_server("plain") as (sink, port):
        sink.rcpt_answers["ops@example.org"] = "450 4.2.0 mailbox busy"
        with pytest.raises(SendError) as busy:
            EmailSender(make_config(port)).send(entry())
        sink.rcpt_answers["ops@example.org"] = "550 5.1.1 no such user"
        with pytest.raises(SendError) as unknown:
            EmailSender(make_config(port)).send(entry())
        sink.rcpt_answers.clear()
        sink.rcpt_answers["gone@example.org"] = "550 5.1.1 no such user"
        EmailSender(make_config(port, MAIL_TO="gone@example.org ops@example.org")).send(entry())
        (envelope,) = sink.envelopes
    assert busy.value.transient is True and unknown.value.transient is False
    assert envelope.rcpt_tos == ["ops@example.org"]      # one refused recipient is not fatal


def test_server_down_is_transient():
    with pytest.raises(SendError) as info:
        send_test(make_config(closed_port()))
    assert info.value.transient is True
    assert "refused" in str(info.value).lower()


@pytest.mark.timeout(30)
def test_black_hole_times_out():
    with black_hole() as port:
        with pytest.raises(SendError) as info:
            EmailSender(make_config(port, SMTP_TIMEOUT="0.5")).send(entry())
    assert info.value.transient is True
    assert "did not answer within 0.5 s (during connect)" in str(info.value)


def test_shared_halizard_settings_win_when_enabled():
    with smtp_server("plain") as (sink, port):
        shared = {"HA_SMTP_SERVER": "127.0.0.1", "HA_SMTP_PORT": str(port),
                  "HA_MAIL_TO": "pool-admins@example.org", "HA_SMTP_USER": "",
                  "HA_MAIL_SUBJECT": "POOL ALERT $HOSTNAME", "HA_FENCE_METHOD": "POOL"}
        config = make_config(closed_port(), MAIL_USE_SHARED_PARAMS="1")
        EmailSender(config, shared=lambda: shared).send(entry())
        (envelope,) = sink.envelopes
        (message,) = sink.messages()
    assert envelope.rcpt_tos == ["pool-admins@example.org"]
    assert message["Subject"].startswith("POOL ALERT %s" % socket.gethostname())


def test_shared_settings_ignored_when_disabled_and_bad_values_skipped():
    config = make_config(2525, MAIL_USE_SHARED_PARAMS="0")
    settings = mail_settings(config, {"HA_SMTP_PORT": "26"})
    assert settings.port == 2525 and settings.source == "local configuration"
    config = make_config(2525, MAIL_USE_SHARED_PARAMS="1")
    settings = mail_settings(config, {"HA_SMTP_PORT": "none", "HA_SMTP_SERVER": " ",
                                      "HA_MAIL_FROM": '"ha@example.org"'})
    assert (settings.port, settings.server, settings.mail_from) == (
        2525, "127.0.0.1", "ha@example.org")
    assert "HA_MAIL_FROM" in settings.source
    assert mail_settings(config, {}).source == "local configuration"   # empty cache: local


def test_shared_source_failing_falls_back_to_local():
    def broken():
        raise RuntimeError("cache unreadable")
    with smtp_server("plain") as (sink, port):
        EmailSender(make_config(port, MAIL_USE_SHARED_PARAMS="1"), shared=broken).send(entry())
        assert len(sink.envelopes) == 1


def test_admin_templates_override_and_broken_ones_fall_back(tmp_path, caplog):
    custom = tmp_path / "templates"
    custom.mkdir()
    (custom / "email_subject.j2").write_text("[{{ alert.kind }}] on {{ host }}")
    renderer = Renderer(str(custom))
    status = {"hostname": "xcp-b"}
    subject, body = renderer.mail(entry(status=status), mail_settings(make_config(25)))
    assert subject == "[drbd-disconnected] on xcp-b"
    assert "Event:     drbd-disconnected (r0)" in body          # packaged body still used
    (custom / "email_subject.j2").write_text("{% if %}broken")
    with caplog.at_level(logging.ERROR, logger="iscsi-ha"):
        subject, _ = Renderer(str(custom)).mail(entry(), mail_settings(make_config(25)))
    assert "[major] r0: replication link down" in subject
    assert "alert template email_subject.j2" in caplog.text


def test_no_recipient_is_permanent():
    with pytest.raises(SendError) as info:
        send_test(make_config(25, MAIL_TO=" , "))
    assert info.value.transient is False and "MAIL_TO" in str(info.value)
