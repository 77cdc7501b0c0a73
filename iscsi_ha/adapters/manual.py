"""Manual mode, kept in HA-Lizard's state file (``STATE_DIR/manual``) so that existing scripts
and ha-lizard itself keep seeing it: absent = off, empty = on without a role,
``become_primary`` / ``become_secondary`` = on with that role."""
import errno
import getpass
import json
import os
import socket
import time

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


def who_am_i():
    """``user@host``, for the record of who changed manual mode."""
    try:
        user = getpass.getuser()
    except Exception:  # no name for this uid
        user = "uid%d" % os.getuid()
    return "%s@%s" % (user, socket.gethostname())


def change_path(path):
    """The change record beside the manual file: {mode, at, by, published}. HA-Lizard's file
    holds only the word; this says when and by whom it was set, and whether the pool record
    has it yet."""
    from iscsi_ha.statepaths import manual_changed
    return manual_changed(path)


def read_change(path):
    """The change record of the manual file ``path`` (a dict), or None when there is none or
    it no longer describes the file (an older tool changed the file without it)."""
    try:
        record = json.loads(read_text(change_path(path), SMALL_LIMIT))
        mode, at = record["mode"], float(record["at"])
    except (OSError, IOError, ValueError, KeyError, TypeError):
        return None
    try:
        current = read_manual(path)
    except ManualModeError:
        return None
    if mode != current:
        return None
    record["at"] = at
    return record


def mark_published(path, at):
    """The pool record now holds the change made at ``at`` (the record's own time)."""
    record = read_change(path)
    if record is not None and record["at"] == at and not record.get("published"):
        record["published"] = True
        atomic_write(change_path(path), json.dumps(record, sort_keys=True) + "\n")


def write_manual(path, mode, by=None, at=None, published=False):
    """Set manual mode atomically (tmp file + rename): MANUAL_OFF removes the file. The change
    record beside it says when and by whom (``published``: the pool record already has it)."""
    if mode not in _VALID + (model.MANUAL_HOLD, model.MANUAL_OFF):
        raise ManualModeError("unknown manual mode %r" % mode)
    if mode == model.MANUAL_OFF:
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    else:
        atomic_write(path, "" if mode == model.MANUAL_HOLD else mode + "\n")
    record = {"mode": mode, "at": time.time() if at is None else at,
              "by": by or who_am_i(), "published": bool(published)}
    try:
        atomic_write(change_path(path), json.dumps(record, sort_keys=True) + "\n")
    except (OSError, IOError):
        pass     # the manual file itself is what the agent obeys; the record is best effort
