"""The pool role, read from xapi's ``pool.conf``: instant, and it never hangs (XAPI on a slave
hangs when the master is dead, so the role is never asked of XAPI)."""
import errno
import re

from iscsi_ha import model
from iscsi_ha.files import SMALL_LIMIT, read_text


def parse_pool_conf(text):
    """``master`` | ``slave:<address>`` | ``broken`` -> :class:`PoolRole`; else UNKNOWN.

    xapi splits on the first ``:`` only, so an IPv6 master address survives.
    """
    content = text.strip()
    if re.search(r"[\s\x00-\x1f\x7f]", content):   # one word, all of it (not a prefix)
        return model.PoolRole(model.UNKNOWN, detail="unrecognised pool.conf content %r (%d "
                              "characters): expected one word" % (content[:80], len(content)))
    if content == "master":
        return model.PoolRole(model.MASTER, detail=content)
    if content == "broken":
        return model.PoolRole(model.BROKEN, detail=content)
    role, sep, address = content.partition(":")
    if role == "slave" and sep and address.strip():
        return model.PoolRole(model.SLAVE, master_address=address.strip(), detail=content)
    return model.PoolRole(model.UNKNOWN, detail="unrecognised pool.conf content %r" % content[:80])


def read_pool_role(path):
    """Read ``path`` (all of it, bounded; a regular file) and parse it; a missing file is
    MISSING, an unreadable, oversized or not regular one UNKNOWN."""
    try:
        text = read_text(path, SMALL_LIMIT)
    except (OSError, IOError) as exc:
        if exc.errno == errno.ENOENT:
            return model.PoolRole(model.MISSING, detail="%s does not exist" % path)
        return model.PoolRole(model.UNKNOWN, detail="cannot read %s: %s" % (path, exc.strerror))
    return parse_pool_conf(text)
