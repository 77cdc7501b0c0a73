"""Run external commands with a timeout, always.

Every adapter goes through :func:`run`. It logs the exact command before running it, starts the
child in its own process group and kills the whole group when the timeout expires, so a hung
``tgtadm`` or ``drbdadm`` can never hang the agent.
"""
import logging
import os
import shlex
import signal
import subprocess
import time

log = logging.getLogger("iscsi-ha")


class CommandResult(object):
    """What a command did: its argv, exit code, output and how long it took."""

    __slots__ = ("argv", "returncode", "stdout", "stderr", "duration", "timed_out")

    def __init__(self, argv, returncode, stdout, stderr, duration, timed_out=False):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.duration = duration
        self.timed_out = timed_out

    @property
    def ok(self):
        return self.returncode == 0 and not self.timed_out

    def describe(self):
        """One line for logs and status: the command and how it ended."""
        cmd = " ".join(shlex.quote(a) for a in self.argv)
        if self.timed_out:
            return "%s: timed out after %.1f s" % (cmd, self.duration)
        text = (self.stderr or self.stdout or "").strip().splitlines()
        tail = (": " + text[-1]) if text else ""
        return "%s: exit %d%s" % (cmd, self.returncode, tail)


class CommandError(Exception):
    """A command failed, timed out or could not be started."""

    def __init__(self, message, result=None):
        Exception.__init__(self, message)
        self.result = result


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


def run(argv, timeout, check=False, input_text=None, env=None, quiet=False):
    """Run ``argv`` (a list) with a timeout in seconds; return a :class:`CommandResult`.

    The child runs in a new session so that on timeout its whole process group is killed.
    With ``check=True`` a non-zero exit, a timeout or a missing executable raises
    :class:`CommandError`; without it only a missing executable raises.
    """
    if not argv:
        raise CommandError("empty command")
    if timeout is None or timeout <= 0:
        raise CommandError("refusing to run %s without a positive timeout" % argv[0])
    if not quiet:
        log.debug("run: %s", " ".join(shlex.quote(a) for a in argv))
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            encoding="utf-8",      # dom0's services run with the C locale: never ASCII-strict
            errors="replace",
            start_new_session=True,
            env=env,
        )
    except OSError as exc:
        raise CommandError("cannot run %s: %s" % (argv[0], exc))
    timed_out = False
    try:
        stdout, stderr = proc.communicate(input=input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", ""
    finally:
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    result = CommandResult(argv, proc.returncode, stdout or "", stderr or "",
                           time.monotonic() - start, timed_out)
    if check and not result.ok:
        raise CommandError(result.describe(), result)
    return result


def split_command(text):
    """Split a configured command line (e.g. ``"tgtadm -C 1"``) into argv."""
    return shlex.split(text)
