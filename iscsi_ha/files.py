"""Small file helpers shared by the agent and the CLI.

Every file the agent or the CLI reads goes through :func:`read_bounded`: it opens without
blocking (a FIFO never hangs the reader), checks with ``fstat`` that it is a regular file, and
reads at most ``limit`` bytes; anything else is an ``OSError`` whose ``strerror`` says what is
wrong, so callers that already report ``exc.strerror`` stay unchanged.
"""
import errno
import json
import os
import stat

# Upper bounds of what is read (bytes): far above any real file of its kind.
CONFIG_LIMIT = 1024 * 1024
SMALL_LIMIT = 64 * 1024          # pool.conf, the manual-mode file, pid files
STATUS_LIMIT = 4 * 1024 * 1024   # the agent's status document
# /proc/drbd: /proc files report st_size 0, so only the byte cap bounds the read.
PROC_LIMIT = 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode):
    """``"a FIFO (named pipe)"`` ... for a mode that is not a regular file, else None."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return None if stat.S_ISREG(mode) else "not a regular file"


def read_bounded(path, limit):
    """The bytes of the regular file ``path`` (at most ``limit``); OSError otherwise."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        kind = kind_of(info.st_mode)
        if kind is not None:
            raise OSError(errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL,
                          "is %s, not a regular file" % kind, path)
        if info.st_size > limit:
            raise OSError(errno.EFBIG, "is %d bytes, more than the %d this file may have"
                          % (info.st_size, limit), path)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, "grew beyond %d bytes while being read" % limit, path)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_regular(path):
    """A binary file object for reading the regular file ``path``; OSError for a FIFO, device,
    directory or socket (opened without blocking, so a FIFO never hangs the caller)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, "is %s, not a regular file" % kind, path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_appendable(path):
    """None when ``path`` is (or can be created as) a regular file to append to, else why not.
    Never blocks: a FIFO is opened without waiting for a reader."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        return None if kind_of(os.fstat(fd).st_mode) is None else \
            "is %s, not a regular file" % kind_of(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def read_text(path, limit, errors="replace"):
    return read_bounded(path, limit).decode("utf-8", errors)


def atomic_write(path, text, mode=0o644):
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a part.
    The temporary file (same directory) is removed when anything fails."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path, limit=STATUS_LIMIT):
    return json.loads(read_text(path, limit))
