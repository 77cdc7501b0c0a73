"""Alert mail: the settings (local or HA-Lizard's shared ``HA_*`` keys), jinja2 templates, and
delivery with smtplib where every socket operation has a timeout (SMTP_TIMEOUT).

SMTP_SECURITY: ``none`` plain SMTP; ``starttls`` STARTTLS required; ``ssl`` implicit TLS;
``auto`` implicit TLS on port 465, else STARTTLS when the server offers it, else plain. TLS that
was asked for (``ssl``, ``starttls``, auto on 465) checks the server's certificate unless
SMTP_TLS_VERIFY=0 (SMTP_CA_FILE names a private CA); the opportunistic STARTTLS of ``auto`` does
not, as mail servers do among themselves - refusing would only fall back to plain text.

Templates: ``email_subject.j2``, ``email_body.j2`` and ``xapi_message.j2`` from ALERT_TEMPLATE_DIR
when set (each file there overrides the packaged one of that name), else the packaged ones. A
template that fails to render is logged and the packaged one is used, so a typo never silences
an alert.
"""
import logging
import os
import re
import smtplib
import socket
import ssl
import time
from collections import namedtuple
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid

import jinja2

from iscsi_ha import __version__, config as config_mod
from iscsi_ha.alerts.events import Entry, SendError, manual_test

log = logging.getLogger("iscsi-ha")

BUILTIN_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
SHARED_KEYS = ("SMTP_SERVER", "SMTP_PORT", "SMTP_USER", "SMTP_PASS", "MAIL_FROM", "MAIL_TO",
               "MAIL_SUBJECT")
SHARED_PREFIX = "HA_"

MailSettings = namedtuple("MailSettings", "server port user password security timeout verify "
                                          "ca_file mail_from mail_to subject source")


def _shared_values(shared):
    """HA-Lizard's HA_* mail keys that are present and usable -> {local key: value}."""
    found = {}
    for key in SHARED_KEYS:
        raw = shared.get(SHARED_PREFIX + key)
        if raw is None:
            continue
        value = config_mod.unquote(str(raw))
        if key == "SMTP_PORT":
            if not value.isdigit() or not 0 < int(value) < 65536:
                log.warning("ignoring pool other-config %s%s=%r: not a port", SHARED_PREFIX,
                            key, raw)
                continue
            value = int(value)
        elif not value and key not in ("SMTP_USER", "SMTP_PASS"):
            continue
        found[key] = value
    return found


def split_addresses(text):
    return [a for a in re.split(r"[,;\s]+", text or "") if a]


def mail_settings(config, shared=None):
    """The effective settings; with MAIL_USE_SHARED_PARAMS the ``HA_*`` keys of ``shared``
    (pool other-config or its cached copy) win over the local ones they name."""
    values = dict((key, getattr(config, key)) for key in SHARED_KEYS)
    source = "local configuration"
    if config.MAIL_USE_SHARED_PARAMS and shared:
        taken = _shared_values(shared)
        values.update(taken)
        if taken:
            source = "pool other-config (%s), local for the rest" % ", ".join(
                SHARED_PREFIX + k for k in sorted(taken))
    return MailSettings(
        server=values["SMTP_SERVER"], port=int(values["SMTP_PORT"]), user=values["SMTP_USER"],
        password=values["SMTP_PASS"], security=config.SMTP_SECURITY,
        timeout=float(config.SMTP_TIMEOUT),
        verify=bool(config.SMTP_TLS_VERIFY),
        ca_file=config.SMTP_CA_FILE or None,
        mail_from=values["MAIL_FROM"], mail_to=split_addresses(values["MAIL_TO"]),
        subject=config.expand(values["MAIL_SUBJECT"]), source=source)


# -- templates -----------------------------------------------------------------------------------
def _environment(loader):
    return jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=False)


class Renderer(object):
    """Renders the three templates; the admin's directory first, the packaged ones as fallback."""

    def __init__(self, template_dir=""):
        self.template_dir = template_dir
        self.builtin = _environment(jinja2.FileSystemLoader(BUILTIN_TEMPLATES))
        self.custom = None
        if template_dir:
            self.custom = _environment(jinja2.ChoiceLoader([
                jinja2.FileSystemLoader(template_dir),
                jinja2.FileSystemLoader(BUILTIN_TEMPLATES)]))

    @classmethod
    def from_config(cls, config):
        return cls(config.ALERT_TEMPLATE_DIR)

    def render(self, name, context):
        if self.custom is not None:
            try:
                return self.custom.get_template(name).render(context)
            except Exception as exc:  # any error in an admin's template: use ours
                log.error("alert template %s in %s failed (%s: %s); using the packaged one",
                          name, self.template_dir, type(exc).__name__, exc)
        return self.builtin.get_template(name).render(context)

    def context(self, entry, mail_subject=""):
        status = entry.status or None
        pool = (status or {}).get("pool") or {}
        return {
            "alert": entry.alert, "status": status, "repeat": entry.repeat,
            "host": (status or {}).get("hostname") or socket.gethostname(),
            "pool": {"role": pool.get("role", ""), "master_address": pool.get("master_address")},
            "when": _iso(entry.at), "version": __version__, "mail_subject": mail_subject,
        }

    def mail(self, entry, settings):
        """(subject, body) for ``entry``."""
        context = self.context(entry, settings.subject)
        subject = " ".join(self.render("email_subject.j2", context).split())
        return subject, self.render("email_body.j2", context).strip() + "\n"

    def xapi_body(self, entry):
        return self.render("xapi_message.j2", self.context(entry)).strip()


TIME_FORMAT = "%Y-%m-%d %H:%M:%S %z"    # an alert's "Time:" (mail and XAPI message)


def _iso(epoch):
    return time.strftime(TIME_FORMAT, time.localtime(epoch))


def build_message(settings, subject, body, alert=None):
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.mail_from
    message["To"] = ", ".join(settings.mail_to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=socket.gethostname() or "localhost")
    if alert is not None:
        message["X-iscsi-ha-Alert"] = "%s; severity=%d; resource=%s" % (
            alert.kind, alert.severity, alert.resource or "-")
    message.set_content(body)
    return message


# -- delivery ----------------------------------------------------------------------------------
def _tls_context(settings, verify):
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _text(reply):
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " | ".join(line.strip() for line in str(reply).splitlines())


class _Session(object):
    """One SMTP conversation, writing every server answer into ``transcript``."""

    def __init__(self, settings, transcript):
        self.settings, self.transcript, self.step = settings, transcript, "connect"
        self.smtp = None

    def expect(self, step, answer, ok_codes):
        code, reply = answer
        self.transcript.append("%s: %s %s" % (step, code, _text(reply)))
        if code not in ok_codes:
            raise smtplib.SMTPResponseException(code, reply)

    def greet(self):
        """EHLO, or HELO for a server that does not speak ESMTP."""
        self.step = "EHLO"
        code, reply = self.smtp.ehlo()
        if code == 250:
            self.transcript.append("EHLO: %s %s" % (code, _text(reply)))
        else:
            self.step = "HELO"
            self.expect("HELO", self.smtp.helo(), (250,))

    def open(self):
        s = self.settings
        implicit = s.security == "ssl" or (s.security == "auto" and s.port == 465)
        if implicit:
            self.smtp = smtplib.SMTP_SSL(timeout=s.timeout, context=_tls_context(s, s.verify))
        else:
            self.smtp = smtplib.SMTP(timeout=s.timeout)
        self.smtp._host = s.server   # the TLS server name; Python 3.6 sets it only in __init__
        self.expect("connect", self.smtp.connect(s.server, s.port), (220,))
        self.greet()
        if not implicit and s.security in ("starttls", "auto"):
            if self.smtp.has_extn("starttls"):
                self.step = "STARTTLS"
                verify = s.verify and s.security == "starttls"
                self.expect("STARTTLS", self.smtp.starttls(context=_tls_context(s, verify)),
                            (220,))
                self.greet()
            elif s.security == "starttls":
                raise SendError("%s:%d does not offer STARTTLS (SMTP_SECURITY=starttls)"
                                % (s.server, s.port), transient=False)
        if s.user:
            self.step = "AUTH"
            self.expect("AUTH", self.smtp.login(s.user, s.password), (235, 503))

    def send(self, data):
        s = self.settings
        self.step = "MAIL FROM"
        self.expect("MAIL FROM", self.smtp.mail(s.mail_from), (250,))
        accepted = 0
        for address in s.mail_to:
            self.step = "RCPT TO"
            code, reply = self.smtp.rcpt(address)
            self.transcript.append("RCPT TO %s: %s %s" % (address, code, _text(reply)))
            accepted += code in (250, 251)
        if not accepted:
            raise SendError("no recipient accepted (MAIL_TO=%s)" % ", ".join(s.mail_to),
                            transient=code // 100 == 4)
        self.step = "DATA"
        self.expect("DATA", self.smtp.data(data), (250,))
        self.step = "QUIT"
        try:
            code, reply = self.smtp.quit()
            self.transcript.append("QUIT: %s %s" % (code, _text(reply)))
        except (smtplib.SMTPException, OSError):
            pass   # the message is accepted; a rude hang-up after DATA changes nothing

    def close(self):
        if self.smtp is not None:
            try:
                self.smtp.close()
            except (OSError, AttributeError):
                # Python 3.6 (dom0): SMTP has no class attribute ``sock`` (3.7 added one), so
                # close() after a connect() that failed raises AttributeError: 'sock'.
                pass


def _error(settings, step, exc):
    """A SendError saying what went wrong, and whether a later attempt may work."""
    where = "SMTP %s:%d" % (settings.server, settings.port)
    # smtplib turns a read timeout into SMTPServerDisconnected; the timeout is its context.
    if isinstance(exc, socket.timeout) or isinstance(exc.__context__, socket.timeout):
        return SendError("%s did not answer within %.1f s (during %s)" % (
            where, settings.timeout, step), True)
    if isinstance(exc, smtplib.SMTPResponseException):
        return SendError("%s answered %s %s (during %s)" % (
            where, exc.smtp_code, _text(exc.smtp_error), step), 400 <= exc.smtp_code < 500)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return SendError("%s closed the connection (during %s): %s" % (where, step, exc), True)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return SendError("%s: TLS failed (during %s): %s; check SMTP_SECURITY, SMTP_CA_FILE, "
                         "SMTP_TLS_VERIFY" % (where, step, exc), False)
    if isinstance(exc, (smtplib.SMTPException, ValueError)):
        return SendError("%s (during %s): %s" % (where, step, exc), False)
    return SendError("%s: %s (during %s)" % (where, exc, step), True)


def deliver(settings, message, transcript=None):
    """Send ``message`` (an EmailMessage); return the server's answers, one line each.
    Raises SendError (with ``.transcript``)."""
    transcript = [] if transcript is None else transcript
    if not settings.mail_to:
        raise SendError("MAIL_TO names no recipient", transient=False)
    session = _Session(settings, transcript)
    try:
        session.open()
        session.send(message.as_bytes(policy=SMTP_POLICY))
    except SendError as exc:
        exc.transcript = transcript
        raise
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        error = _error(settings, session.step, exc)
        error.transcript = transcript
        raise error
    finally:
        session.close()
    return transcript


class EmailSender(object):
    """Sends one alert entry by mail (used by the dispatcher's worker, never by a pass)."""

    name = "email"
    max_attempts = 8

    def __init__(self, config, renderer=None, shared=None):
        self.config = config
        self.renderer = renderer or Renderer.from_config(config)
        self.shared = shared          # callable -> pool other-config map (possibly cached)

    def settings(self):
        shared = None
        if self.shared is not None and self.config.MAIL_USE_SHARED_PARAMS:
            try:
                shared = self.shared()
            except Exception as exc:
                log.warning("shared mail settings unavailable: %s", exc)
        return mail_settings(self.config, shared)

    def send(self, entry):
        settings = self.settings()
        subject, body = self.renderer.mail(entry, settings)
        return deliver(settings, build_message(settings, subject, body, entry.alert))


def send_test(config, shared=None, status=None):
    """Send one test alert through the configured path; return what the server answered.
    Raises SendError whose message holds the answers up to the failure."""
    sender = EmailSender(config, shared=(lambda: shared) if shared is not None else None)
    settings = sender.settings()
    transcript = ["settings: %s:%d, security %s, %s, from %s to %s (%s)" % (
        settings.server, settings.port, settings.security,
        "login as %s" % settings.user if settings.user else "no login", settings.mail_from,
        ", ".join(settings.mail_to) or "nobody", settings.source)]
    if not config.MAIL_ON:
        transcript.append("note: MAIL_ON=0, so the agent itself sends no mail")
    entry = Entry(manual_test(socket.gethostname()), status, time.time(), None)
    subject, body = sender.renderer.mail(entry, settings)
    try:
        deliver(settings, build_message(settings, subject, body, entry.alert), transcript)
    except SendError as exc:
        raise SendError("\n".join(transcript + ["FAILED: %s" % exc]), exc.transient)
    return "\n".join(transcript)
