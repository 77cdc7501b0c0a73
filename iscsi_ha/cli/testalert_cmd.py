"""``iscsi-cfg test-alert [--email] [--xapi]``: send one test alert through each alert path and
print exactly what happened: every answer of the SMTP server (or why it could not be reached),
and the reference of the XAPI message created on the pool.

Without a flag every configured path is tried: email when MAIL_ON=1, the XAPI message always (the
agent always sends them). A flag asks for that path whatever the configuration says. Exit 0 only
when every path tried delivered.
"""
import socket
import time

from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha.alerts import SharedParams, email, events
from iscsi_ha.alerts.email import Renderer
from iscsi_ha.alerts.queue import XapiMessageSender
from iscsi_ha.cli.context import CliError

__all__ = ["test_alert", "send_email", "send_xapi"]


def _shared_mail_settings(ctx, client):
    """The pool's HA-Lizard mail settings (MAIL_USE_SHARED_PARAMS=1), from XAPI or the cache."""
    if not ctx.config.MAIL_USE_SHARED_PARAMS:
        return None
    try:
        return SharedParams(client.cache, client)()
    except (XapiError, OSError, IOError, ValueError) as exc:
        ctx.say("email: the pool's shared mail settings cannot be read (%s); using this host's"
                % exc)
        return None


def send_email(ctx, client):
    """True when the SMTP server accepted the test alert; says every answer."""
    try:
        transcript = email.send_test(ctx.config, shared=_shared_mail_settings(ctx, client))
    except events.SendError as exc:
        for line in str(exc).splitlines():
            ctx.say("email: " + line.replace("FAILED: ", "NOT delivered: ", 1))
        return False
    for line in transcript.splitlines():
        ctx.say("email: " + line)
    ctx.say("email: delivered (the server accepted it; whether it reaches the mailbox is up "
            "to the mail system from here on)")
    return True


def send_xapi(ctx, client):
    """True when XAPI created the message; says its reference."""
    entry = events.Entry(events.manual_test(socket.gethostname()), None, time.time(), None)
    sender = XapiMessageSender(client, Renderer.from_config(ctx.config))
    name = sender.message_name(entry.alert)
    ctx.say("xapi: %s, message.create %s (priority %d) on the pool" % (
        ctx.config.XAPI_URL, name, entry.alert.severity))
    try:
        ref = client.create_message(name, entry.alert.severity, sender.renderer.xapi_body(entry))
    except XapiError as exc:
        ctx.say("xapi: NOT delivered: %s" % exc)
        return False
    ctx.say("xapi: delivered: message %s" % ref)
    return True


def test_alert(ctx, want_email=False, want_xapi=False):
    """0 when every requested (or, without a flag, configured) path delivered."""
    if not want_email and not want_xapi:
        want_email, want_xapi = bool(ctx.config.MAIL_ON), True
        if not want_email:
            ctx.say("email: not tried: MAIL_ON=0 (add --email to send one anyway)")
    failed = []
    client = ctx.xapi()
    try:
        if want_email and not send_email(ctx, client):
            failed.append("email")
        if want_xapi and not send_xapi(ctx, client):
            failed.append("XAPI message")
    finally:
        client.close()
    if failed:
        raise CliError("test alert NOT delivered by: %s (see above)" % ", ".join(failed))
    ctx.say("test-alert: delivered by every path tried")
    return 0

