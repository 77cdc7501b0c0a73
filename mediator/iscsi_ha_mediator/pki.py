"""Certificates through the openssl command-line tool (present on every EL8/EL9 and Debian host;
no Python dependency). EC P-256 keys; SHA-256 signatures.

- ``init_ca``: the mediator's own CA (like corosync-qnetd-certutil -i / ONTAP's
  make_self_signed_certs.sh); an admin may instead bring their own CA and server certificate.
- ``issue_server``: server certificate with the given DNS names / IP addresses as SAN.
- ``issue_client``: a node credential: CN "<node>@<pool>", clientAuth only. What a credential
  may do is decided by the mediator's registry (its SHA-256 fingerprint), not by the CN, so
  revocation and rotation need no CRL.
"""
import hashlib
import ipaddress
import os
import re
import ssl
import subprocess
import tempfile

OPENSSL = os.environ.get("ISCSI_HA_MEDIATOR_OPENSSL", "openssl")
TIMEOUT = 30


class PkiError(Exception):
    """A certificate operation failed; ``str()`` is one line."""


def _run(args, cwd=None):
    try:
        proc = subprocess.run([OPENSSL] + args, cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=TIMEOUT)
    except FileNotFoundError:
        raise PkiError("the openssl command is not installed (%s)" % OPENSSL)
    except subprocess.TimeoutExpired:
        raise PkiError("openssl %s did not finish in %ds" % (args[0], TIMEOUT))
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise PkiError("openssl %s failed: %s" % (args[0], last))
    return proc.stdout


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def new_key(path):
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-out", path])
    os.chmod(path, 0o600)


def init_ca(directory, name="iscsi-ha-mediator CA", days=7300):
    """Create ca.key/ca.crt in ``directory``; returns the certificate path."""
    key = os.path.join(directory, "ca.key")
    crt = os.path.join(directory, "ca.crt")
    new_key(key)
    _run(["req", "-x509", "-new", "-key", key, "-out", crt, "-days", str(days), "-sha256",
          "-subj", "/CN=%s" % _subject(name),
          "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return crt


def _subject(text):
    return re.sub(r"[^A-Za-z0-9 ._@:-]", "_", text)[:64]


def _sign(ca_dir, csr, out, ext_lines, days):
    with tempfile.TemporaryDirectory(dir=ca_dir) as tmp:
        ext = os.path.join(tmp, "ext.cnf")
        with open(ext, "w") as handle:
            handle.write("[v3]\n" + "\n".join(ext_lines) + "\n")
        serial = "0x" + os.urandom(16).hex()
        _run(["x509", "-req", "-in", csr, "-CA", os.path.join(ca_dir, "ca.crt"),
              "-CAkey", os.path.join(ca_dir, "ca.key"), "-set_serial", serial,
              "-out", out, "-days", str(days), "-sha256", "-extfile", ext,
              "-extensions", "v3"])


def issue_server(ca_dir, key_path, crt_path, names, days=3650):
    """Server key + certificate signed by the CA in ``ca_dir``; ``names``: DNS names or IPs."""
    sans = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            sans.append("IP:%s" % n)
        except ValueError:
            sans.append("DNS:%s" % n)
    if not sans:
        raise PkiError("the server certificate needs at least one name or address")
    new_key(key_path)
    with tempfile.TemporaryDirectory(dir=ca_dir) as tmp:
        csr = os.path.join(tmp, "req.csr")
        _run(["req", "-new", "-key", key_path, "-out", csr, "-subj",
              "/CN=%s" % _subject(names[0])])
        _sign(ca_dir, csr, crt_path, [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join(sans)], days)
    return crt_path


def issue_client(ca_dir, pool, node, days=3650):
    """(key PEM, certificate PEM) for ``node`` of ``pool``; nothing is left on disk."""
    with tempfile.TemporaryDirectory(dir=ca_dir) as tmp:
        key = os.path.join(tmp, "node.key")
        csr = os.path.join(tmp, "node.csr")
        crt = os.path.join(tmp, "node.crt")
        new_key(key)
        _run(["req", "-new", "-key", key, "-out", csr, "-subj",
              "/CN=%s" % _subject("%s@%s" % (node, pool))])
        _sign(ca_dir, csr, crt, [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth"], days)
        with open(key, "rb") as handle:
            key_pem = handle.read()
        with open(crt, "rb") as handle:
            crt_pem = handle.read()
    return key_pem, crt_pem


def fingerprint_pem(pem):
    """SHA-256 fingerprint (hex) of a PEM certificate."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


def fingerprint_der(der):
    return hashlib.sha256(der).hexdigest()
