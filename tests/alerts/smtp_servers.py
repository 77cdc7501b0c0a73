"""Real SMTP servers for the alert tests: aiosmtpd on 127.0.0.1 (ephemeral ports) in plain,
STARTTLS, implicit-TLS and AUTH modes, a black hole (accepts, never answers) and a closed port.
Certificates are made at test time with the openssl CLI."""
import contextlib
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from iscsi_ha import config as config_module

USER, PASSWORD = "alerts", "s3cret pass"
HOST = "127.0.0.1"


class EphemeralController(Controller):
    """aiosmtpd's Controller on port 0: learn the port before it connects to itself."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        Controller._trigger_server(self)


class Sink(object):
    """Keeps what it receives; RCPT answers can be scripted per address."""

    def __init__(self):
        self.envelopes = []
        self.rcpt_answers = {}
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.rcpt_answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.envelopes.append(envelope)
            number = len(self.envelopes)
        return "250 2.0.0 Ok: queued as TEST%d" % number

    def messages(self):
        with self.lock:
            return [email.message_from_bytes(e.content, policy=email.policy.default)
                    for e in self.envelopes]


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=ok, handled=False)   # not handled: aiosmtpd answers 535


@contextlib.contextmanager
def smtp_server(mode="plain", tls=None):
    """(sink, port) of a running server; mode plain | starttls | ssl | auth."""
    sink = Sink()
    kwargs = {}
    if mode == "starttls":
        kwargs = dict(tls_context=tls.server_context(), require_starttls=True)
    elif mode == "ssl":
        kwargs = dict(ssl_context=tls.server_context())
    elif mode == "auth":
        kwargs = dict(authenticator=_authenticator, auth_require_tls=False,
                      auth_exclude_mechanism=["PLAIN"])   # smtplib then uses AUTH LOGIN
    controller = EphemeralController(sink, hostname=HOST, port=0, ready_timeout=10, **kwargs)
    controller.start()
    try:
        yield sink, controller.port
    finally:
        controller.stop()


class SelfSigned(object):
    """A self-signed certificate for 127.0.0.1 (subjectAltName IP), made with openssl."""

    def __init__(self, directory):
        if shutil.which("openssl") is None:
            pytest.skip("openssl CLI not installed")
        self.cert = str(directory / "cert.pem")
        self.key = str(directory / "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", self.key, "-out", self.cert, "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, timeout=60, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def server_context(self):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@contextlib.contextmanager
def black_hole():
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        sock.listen(16)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def closed_port():
    """A port on 127.0.0.1 with nothing listening (bound then released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def make_config(port, tmp_path=None, **keys):
    """A validated Config for mail to 127.0.0.1:port; extra keys override (strings)."""
    values = {"MAIL_USE_SHARED_PARAMS": "0", "SMTP_SERVER": HOST, "SMTP_PORT": str(port),
              "SMTP_TIMEOUT": "2", "MAIL_FROM": "iscsi-ha@xcp-a.example.org",
              "MAIL_TO": "ops@example.org", "SMTP_SECURITY": "none"}
    if tmp_path is not None:
        values["STATE_DIR"] = str(tmp_path / "state")
    newer = dict((k, keys.pop(k)) for k in list(keys) if k in (
        "SMTP_TLS_VERIFY", "SMTP_CA_FILE", "ALERT_TEMPLATE_DIR"))
    values.update(keys)
    text = "".join('%s="%s"\n' % item for item in sorted(values.items()))
    config = config_module.loads(text)
    for key, value in newer.items():   # keys proposed for the configspec (see the report)
        setattr(config, key, value)
    return config
