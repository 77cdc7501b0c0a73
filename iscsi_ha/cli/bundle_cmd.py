"""``iscsi-cfg support-bundle``: what support needs from this host, in one archive.

The configuration with secrets masked, the agent's status document (with the witness section),
the tail of the agent's log file, the mediator client's local state (generation seen, grant;
never its private key), and versions. Mode 0600; bounded reads only.
"""
import io
import json
import os
import platform
import re
import socket
import sys
import tarfile
import time

from iscsi_ha import __version__, statepaths
from iscsi_ha.files import read_text

SECRET_KEYS = re.compile(r"(PASS|SECRET|TOKEN|_KEY\b)", re.I)
LIMIT = 4 * 1024 * 1024


def mask_config(text):
    out = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and SECRET_KEYS.search(key):
            line = "%s=***" % key
        out.append(line)
    return "\n".join(out) + "\n"


def _tail(path, lines=2000):
    try:
        text = read_text(path, LIMIT)
    except (IOError, OSError) as exc:
        return "(cannot read %s: %s)\n" % (path, exc)
    return "\n".join(text.splitlines()[-lines:]) + "\n"


def support_bundle(ctx, output=None):
    config = ctx.config
    stamp = time.strftime("%Y%m%d-%H%M%S")
    host = socket.gethostname().split(".")[0]
    name = "iscsi-ha-support-%s-%s" % (host, stamp)
    output = output or os.path.abspath(name + ".tar.gz")
    members = {}
    try:
        members["iscsi-ha.conf"] = mask_config(read_text(config.path, LIMIT))
    except (IOError, OSError) as exc:
        members["iscsi-ha.conf"] = "(cannot read %s: %s)\n" % (config.path, exc)
    for label, path in (("status.json", config.STATUS_FILE),
                        ("mediator-state.json", statepaths.mediator_state(config.MEDIATOR_DIR)),
                        ("mediator-grant.json", statepaths.mediator_grant(config.MEDIATOR_DIR))):
        try:
            members[label] = read_text(path, LIMIT)
        except (IOError, OSError) as exc:
            members[label] = json.dumps({"error": "cannot read %s: %s" % (path, exc)}) + "\n"
    if config.LOG_FILE:
        members["agent.log"] = _tail(config.LOG_FILE)
    members["versions.txt"] = "iscsi-ha %s\npython %s\n%s\n" % (
        __version__, sys.version.split()[0], platform.platform())
    cert = statepaths.mediator_credential(config.MEDIATOR_DIR)[1]
    if os.path.exists(cert):
        members["mediator-cert.pem"] = read_text(cert, LIMIT)   # public part only
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for member, text in sorted(members.items()):
                data = text.encode("utf-8", "replace")
                info = tarfile.TarInfo("%s/%s" % (name, member))
                info.size = len(data)
                info.mtime = time.time()
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(data))
    ctx.say("support bundle written to %s (secrets masked, no private key)" % output)
    return 0
