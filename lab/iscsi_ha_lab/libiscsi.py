"""libiscsi through ctypes: the lab's real iSCSI initiator.

:class:`Initiator` is one iSCSI session to one LUN; the I/O probe (:mod:`iscsi_ha_lab.probe`),
:mod:`iscsi_ha_lab.blockio` and :func:`read_lun_image` use it. :func:`load_libiscsi` loads the
installed library once, with the prototypes used here.

libiscsi's task API is driven by our own poll loop rather than its ``*_sync`` wrappers: the
wrappers check timeouts only once a second, their connect has no timeout at all, and when their
loop gives up early a callback is left pointing at a dead stack frame. Here every call returns
by a deadline; on expiry the context is destroyed, which cancels what is in flight.
"""
import ctypes
import ctypes.util
import logging
import select
import struct
import time

log = logging.getLogger("iscsi-ha.probe")

GOOD = "good"
DEFAULT_INITIATOR = "iqn.2024-01.org.example.iscsi-ha:probe"
# enum scsi_status, enum iscsi_session_type and enum iscsi_header_digest from <iscsi/iscsi.h>
_STATUS_NAMES = {0: GOOD, 2: "check-condition", 4: "condition-met", 8: "busy",
                 0x18: "reservation-conflict", 0x28: "task-set-full", 0x30: "aca-active",
                 0x40: "task-aborted", 0x0f000000: "cancelled", 0x0f000001: "error",
                 0x0f000002: "timeout"}
_SESSION_NORMAL, _DIGEST_NONE, _CANCELLED = 2, 0, 0x0f000000


class IscsiError(Exception):
    """A connect, login or SCSI command that did not end with GOOD status in time."""


class ProbeError(Exception):
    """The probe cannot run at all (no libiscsi, or the LUN does not fit the settings)."""


# --- libiscsi through ctypes -------------------------------------------------------------------

class _Sense(ctypes.Structure):
    # struct scsi_sense; gcc puts the 1-bit fields and bit_pointer in bytes 12 and 13 (16 bytes)
    _fields_ = [("error_type", ctypes.c_ubyte), ("key", ctypes.c_int), ("ascq", ctypes.c_int),
                ("bits", ctypes.c_ubyte), ("bit_pointer", ctypes.c_ubyte),
                ("field_pointer", ctypes.c_uint16)]


class _Data(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int), ("data", ctypes.c_void_p)]


class _Task(ctypes.Structure):
    # the leading members of struct scsi_task (scsi-lowlevel.h), up to datain
    _fields_ = [("status", ctypes.c_int), ("cdb_size", ctypes.c_int), ("xfer_dir", ctypes.c_int),
                ("expxferlen", ctypes.c_int), ("cdb", ctypes.c_ubyte * 16),
                ("residual_status", ctypes.c_int), ("residual", ctypes.c_size_t),
                ("sense", _Sense), ("datain", _Data)]


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_P, _I, _U32, _U64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
_PROTOTYPES = {
    "iscsi_create_context": (_P, [ctypes.c_char_p]),
    "iscsi_destroy_context": (_I, [_P]),
    "iscsi_get_error": (ctypes.c_char_p, [_P]),
    "iscsi_set_targetname": (_I, [_P, ctypes.c_char_p]),
    "iscsi_set_session_type": (_I, [_P, _I]),
    "iscsi_set_header_digest": (_I, [_P, _I]),
    "iscsi_set_noautoreconnect": (None, [_P, _I]),
    "iscsi_get_fd": (_I, [_P]),
    "iscsi_which_events": (_I, [_P]),
    "iscsi_service": (_I, [_P, _I]),
    "iscsi_is_logged_in": (_I, [_P]),
    "iscsi_full_connect_async": (_I, [_P, ctypes.c_char_p, _I, _CALLBACK, _P]),
    "iscsi_logout_async": (_I, [_P, _CALLBACK, _P]),
    "iscsi_write16_task": (_P, [_P, _I, _U64, ctypes.c_char_p, _U32, _I, _I, _I, _I, _I, _I,
                                _CALLBACK, _P]),
    "iscsi_read16_task": (_P, [_P, _I, _U64, _U32, _I, _I, _I, _I, _I, _I, _CALLBACK, _P]),
    "iscsi_readcapacity16_task": (_P, [_P, _I, _CALLBACK, _P]),
    "scsi_free_scsi_task": (None, [_P]),
    "scsi_sense_key_str": (ctypes.c_char_p, [_I]),
    "scsi_sense_ascq_str": (ctypes.c_char_p, [_I]),
}
_lib = None


def load_libiscsi():
    """The installed libiscsi with the prototypes this module uses (loaded once)."""
    global _lib
    if _lib is None:
        names = [ctypes.util.find_library("iscsi"), "libiscsi.so.7", "libiscsi.so"]
        for name in [n for n in names if n]:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise ProbeError("libiscsi is not installed (tried %s)" % ", ".join(filter(None, names)))
        for fname, (restype, argtypes) in _PROTOTYPES.items():
            func = getattr(lib, fname)
            func.restype, func.argtypes = restype, argtypes
        _lib = lib
    return _lib


class _Op(object):
    __slots__ = ("scsi", "done", "status", "error", "data", "keep")

    def __init__(self, scsi, keep=None):
        self.scsi, self.keep = scsi, keep
        self.done, self.status, self.error, self.data = False, None, "", b""


class Initiator(object):
    """One iSCSI session to one LUN. Every method returns or raises :class:`IscsiError` within
    its timeout (``io_timeout`` for SCSI commands). After an error, :meth:`close` the session
    (that cancels whatever is still in flight) and :meth:`connect` again."""

    def __init__(self, iqn, initiator_name=DEFAULT_INITIATOR, io_timeout=2.0):
        self._lib = load_libiscsi()
        self.iqn, self.initiator_name, self.io_timeout = iqn, initiator_name, io_timeout
        self._ctx, self._lun, self._ops, self._next_id = None, 0, {}, 1
        self._callback = _CALLBACK(self._on_done)  # must outlive every context we create

    def _on_done(self, ctx, status, command_data, private):
        op = self._ops.pop(private or 0, None)
        if op is None or op.done:
            return
        op.done, op.status = True, _STATUS_NAMES.get(status, "status 0x%x" % status)
        if op.scsi and command_data:
            task = ctypes.cast(command_data, ctypes.POINTER(_Task)).contents
            if status == 0 and task.datain.data and task.datain.size > 0:
                op.data = ctypes.string_at(task.datain.data, task.datain.size)
            elif status == 2:
                op.error = "%s: %s" % (_text(self._lib.scsi_sense_key_str(task.sense.key)),
                                       _text(self._lib.scsi_sense_ascq_str(task.sense.ascq)))
            self._lib.scsi_free_scsi_task(command_data)
        if status not in (0, _CANCELLED) and not op.error:  # after a cancel the text is stale
            op.error = _text(self._lib.iscsi_get_error(ctx))

    def _submit(self, scsi, what, start, keep=None, timeout=None):
        """Start an operation with ``start(callback, private)`` and drive it to its end."""
        op_id, self._next_id = self._next_id, self._next_id + 1
        op = self._ops[op_id] = _Op(scsi, keep)
        if not start(self._callback, ctypes.c_void_p(op_id)):
            self._ops.pop(op_id, None)
            raise IscsiError("%s: not sent: %s" % (what, self.last_error()))
        timeout = self.io_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not op.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IscsiError("%s: no answer within %.1f s" % (what, timeout))
            fd, events = self._lib.iscsi_get_fd(self._ctx), self._lib.iscsi_which_events(self._ctx)
            revents = 0
            if fd >= 0 and events:
                poller = select.poll()
                poller.register(fd, events)
                ready = poller.poll(min(remaining, 0.1) * 1000.0)
                revents = ready[0][1] if ready else 0
            else:
                time.sleep(min(remaining, 0.01))
            if self._lib.iscsi_service(self._ctx, revents) < 0 and not op.done:
                raise IscsiError("%s: %s" % (what, self.last_error()))
        if op.status != GOOD:
            raise IscsiError("%s: %s%s" % (what, op.status, ": " + op.error if op.error else ""))
        return op.data

    def last_error(self):
        return _text(self._lib.iscsi_get_error(self._ctx)) if self._ctx else "no session"

    def connect(self, portal, lun, timeout):
        """Connect to ``portal`` ("ADDR:PORT"), log in and check that ``lun`` answers."""
        self.close()
        lib = self._lib
        self._ctx = lib.iscsi_create_context(self.initiator_name.encode())
        if not self._ctx:
            raise IscsiError("iscsi_create_context failed")
        self._lun = lun
        lib.iscsi_set_targetname(self._ctx, self.iqn.encode())
        lib.iscsi_set_session_type(self._ctx, _SESSION_NORMAL)
        lib.iscsi_set_header_digest(self._ctx, _DIGEST_NONE)
        lib.iscsi_set_noautoreconnect(self._ctx, 1)  # errors come back to us, no back-off
        self._submit(False, "login to %s" % portal, lambda cb, p: lib.iscsi_full_connect_async(
            self._ctx, portal.encode(), lun, cb, p) == 0, timeout=timeout)

    def capacity(self):
        """(number of blocks, block length in bytes) from READ CAPACITY(16)."""
        data = self._submit(True, "READ CAPACITY(16)", lambda cb, p:
                            self._lib.iscsi_readcapacity16_task(self._ctx, self._lun, cb, p))
        if len(data) < 12:
            raise IscsiError("READ CAPACITY(16): short answer (%d bytes)" % len(data))
        last_lba, block_len = struct.unpack_from(">QI", data)
        return last_lba + 1, block_len

    def write(self, lba, data, block_size, fua=False):
        buf = bytes(data)  # libiscsi keeps a pointer to it until the task ends
        self._submit(True, "WRITE(16) lba %d" % lba, lambda cb, p: self._lib.iscsi_write16_task(
            self._ctx, self._lun, lba, buf, len(buf), block_size, 0, 0, int(fua), 0, 0, cb, p),
            keep=buf)

    def read(self, lba, count, block_size):
        data = self._submit(True, "READ(16) lba %d" % lba, lambda cb, p: self._lib.iscsi_read16_task(
            self._ctx, self._lun, lba, count * block_size, block_size, 0, 0, 0, 0, 0, cb, p))
        if len(data) != count * block_size:
            raise IscsiError("READ(16) lba %d: %d bytes instead of %d"
                             % (lba, len(data), count * block_size))
        return data

    def close(self, logout=False):
        """Log out (optional, bounded) and destroy the context; in-flight tasks are cancelled."""
        if not self._ctx:
            return
        if logout and self._lib.iscsi_is_logged_in(self._ctx):
            try:
                self._submit(False, "logout", lambda cb, p: self._lib.iscsi_logout_async(
                    self._ctx, cb, p) == 0)
            except IscsiError as exc:
                log.info("probe: %s", exc)
        self._lib.iscsi_destroy_context(self._ctx)
        self._ctx = None
        self._ops.clear()


def _text(value):
    return value.decode("utf-8", "replace").strip() if value else ""


def read_lun_image(portal, iqn, lun, block_size, blocks, initiator_name=DEFAULT_INITIATOR,
                   timeout=5.0, chunk=64):
    """The first ``blocks`` blocks of the LUN, read through a fresh session."""
    ini = Initiator(iqn, initiator_name, io_timeout=timeout)
    try:
        ini.connect(portal, lun, timeout)
        parts = []
        for lba in range(0, blocks, chunk):
            parts.append(ini.read(lba, min(chunk, blocks - lba), block_size))
        return b"".join(parts)
    finally:
        ini.close(logout=True)
