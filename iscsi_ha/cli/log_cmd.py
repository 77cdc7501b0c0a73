"""``iscsi-cfg log``: the agent's log, from the first source that exists: LOG_FILE when set, else
the syslog files /var/log/user.log or /var/log/messages (lines of the ``iscsi-ha`` tag), else the
journal (``journalctl -t iscsi-ha``). Reads are bounded: at most ``MAX_TAIL_BYTES`` from the end
of a file; ``--follow`` polls the file (and notices rotation) until Ctrl+C.
"""
import os
import re
import subprocess
import time

from iscsi_ha.adapters.run import CommandError, run
from iscsi_ha.cli.context import CliError
from iscsi_ha.files import open_regular

SYSLOG_FILES = ("/var/log/user.log", "/var/log/messages")
JOURNALCTL = "journalctl"
MAX_TAIL_BYTES = 8 * 1024 * 1024
CHUNK = 64 * 1024
FOLLOW_POLL = 0.25
TAG_RE = re.compile(r"\biscsi-ha(\[\d+\])?:")
# Control characters but TAB (C0, DEL, C1): a log line holding ESC could drive the terminal.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(line):
    """``line`` with each control character but TAB shown as ``\\xNN`` (always: a log copied
    from the terminal reads the same as one piped to a file)."""
    return _CONTROL_RE.sub(lambda m: "\\x%02x" % ord(m.group(0)), line)


def is_agent_line(line):
    """A syslog line written with the ``iscsi-ha`` tag (``iscsi-ha[123]: ...``)."""
    return bool(TAG_RE.search(line))


def tail(path, lines, keep=None, max_bytes=MAX_TAIL_BYTES):
    """The last ``lines`` lines of ``path`` that ``keep`` accepts, reading backwards from the
    end at most ``max_bytes``; returns (lines, end offset)."""
    with open_regular(path) as handle:
        end = handle.seek(0, os.SEEK_END)
        position, data, found = end, b"", []
        while position > 0 and end - position < max_bytes:
            step = min(CHUNK, position, max_bytes - (end - position))
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
            found = _pick(data, position > 0, keep)
            if len(found) >= lines:
                break
    return found[-lines:] if lines else [], end


def _pick(data, partial_first, keep):
    text = data.decode("utf-8", "replace").split("\n")
    if partial_first:
        text = text[1:]
    if text and text[-1] == "":
        text.pop()
    return [line for line in text if keep is None or keep(line)]


def source(config, syslog_files=SYSLOG_FILES):
    """(kind, path, filter): 'file' (LOG_FILE), 'syslog' or 'journal'."""
    if config.LOG_FILE:
        return "file", config.LOG_FILE, None
    for path in syslog_files:
        if os.access(path, os.R_OK):
            return "syslog", path, is_agent_line
    return "journal", None, None


def follow(path, offset, keep, say, sleep=time.sleep, max_polls=None):
    """Print lines appended to ``path`` after ``offset``; reopens after rotation/truncation.
    Runs until interrupted (or ``max_polls`` polls, for tests)."""
    inode, buffered, polls = _inode(path), b"", 0
    while max_polls is None or polls < max_polls:
        polls += 1
        current = _inode(path)
        if current is not None and (current != inode or os.path.getsize(path) < offset):
            inode, offset, buffered = current, 0, b""
        if current is not None:
            with open_regular(path) as handle:
                handle.seek(offset)
                chunk = handle.read(CHUNK)
            offset += len(chunk)
            buffered += chunk
            *complete, buffered = buffered.split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace")
                if keep is None or keep(line):
                    say(printable(line))
        sleep(FOLLOW_POLL)


def _inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def show(config, lines, do_follow, say, syslog_files=SYSLOG_FILES):
    kind, path, keep = source(config, syslog_files)
    if kind == "journal":
        return _journal(lines, do_follow, say)
    try:
        found, end = tail(path, lines, keep)
    except (OSError, IOError) as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror or exc))
    for line in found:
        say(printable(line))
    if do_follow:
        follow(path, end, keep, say)
    return 0


def _journal(lines, do_follow, say):
    argv = [JOURNALCTL, "-t", "iscsi-ha", "--no-pager", "-n", str(lines)]
    if do_follow:
        # Follows until Ctrl+C, like tail -f: the one child without a timeout, by design.
        child = subprocess.Popen(argv + ["--follow"])
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.terminate()
            child.wait(5)
            return 0
    try:
        result = run(argv, 15)
        failure = "" if result.ok else result.describe()
    except CommandError as exc:
        failure = str(exc)
    if failure:
        raise CliError("no agent log found: LOG_FILE is not set, no syslog file can be read "
                       "and %s" % failure)
    for line in result.stdout.split("\n"):
        if line:
            say(printable(line))
    return 0
