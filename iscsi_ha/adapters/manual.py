"""Manual mode, kept in HA-Lizard's state file (``STATE_DIR/manual``) so that existing scripts
and ha-lizard itself keep seeing it: absent = off, empty = on without a role,
``become_primary`` / ``become_secondary`` = on with that role."""
import errno
import os

from iscsi_ha import model
from iscsi_ha.files import SMALL_LIMIT, atomic_write, read_text

_VALID = (model.MANUAL_PRIMARY, model.MANUAL_SECONDARY)


class ManualModeError(Exception):
    pass


def read_manual(path):
    try:
        text = read_text(path, SMALL_LIMIT).strip()
    except (OSError, IOError) as exc:
        if exc.errno == errno.ENOENT:
            return model.MANUAL_OFF
        raise ManualModeError("cannot read manual mode file %s: %s" % (path, exc.strerror))
    if text == "":
        return model.MANUAL_HOLD
    if text in _VALID:
        return text
    raise ManualModeError("manual mode file %s holds %r; expected become_primary, "
                          "become_secondary or nothing" % (path, text[:40]))


def write_manual(path, mode):
    """Set manual mode atomically (tmp file + rename): MANUAL_OFF removes the file."""
    if mode == model.MANUAL_OFF:
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        return
    if mode not in _VALID + (model.MANUAL_HOLD,):
        raise ManualModeError("unknown manual mode %r" % mode)
    text = "" if mode == model.MANUAL_HOLD else mode + "\n"
    atomic_write(path, text)
