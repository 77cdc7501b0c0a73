"""One error boundary and one set of exit codes for every entry point: ``iscsi-ha``,
``iscsi-cfg``, ``iscsi-ha-watchdog`` and the XAPI plugin.

An error the program expects (bad configuration, a refusal, a tool that failed, XAPI that does not
answer, a file it cannot write) is one line naming what is wrong; each program's ``main`` says it
and returns its :class:`ExitCode`. Anything else reaches :func:`guard` (or, in the plugin,
:func:`guard_json`): the full trace is written to a file and the user reads one line, with the
path of that file. Never a bare traceback.

Where the trace goes: ``STATE_DIR/traces`` once a configuration is loaded (:func:`note_config`),
else ``/var/log/iscsi-ha``, else the temporary directory (``$TMPDIR`` or /tmp); the first one
that can be written wins.
"""
import enum
import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback

TRACES_KEPT = 50              # per directory; the oldest go first
LOG_DIR = "/var/log/iscsi-ha"
_state_dirs = []


class ExitCode(enum.IntEnum):
    """Exit codes of every iscsi-ha program (see iscsi-cfg(8), EXIT STATUS)."""
    OK = 0            # done; status: everything as expected
    FAILED = 1        # refused, failed; status: degraded; watchdog check: agent dead
    USAGE = 2         # usage error, invalid configuration; status: agent down or unknown
    STOPPED = 3       # watchdog check: the agent was stopped by an admin
    INTERNAL = 70     # unexpected error (a bug): one line, the trace in a file (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl+C (SIGINT) where the program had nothing better to say
    BROKEN_PIPE = 141  # the reader of stdout went away (`iscsi-cfg log | head`): 128 + SIGPIPE
    # names kept from before the codes were shared
    DEGRADED = 1
    ERROR = 2


def note_config(config):
    """Remember the state directory of a loaded configuration: traces go there first."""
    state_dir = getattr(config, "STATE_DIR", None)
    if state_dir and state_dir not in _state_dirs:
        _state_dirs.insert(0, state_dir)


def trace_dirs():
    """Where a trace may be written, best first."""
    from iscsi_ha.statepaths import traces
    dirs = [traces(d) for d in _state_dirs]
    return dirs + [LOG_DIR, tempfile.gettempdir(), "/tmp"]


def write_trace(prog, text, dirs=None):
    """Write ``text`` to a new file in the first writable directory; its path, or None."""
    name = "%s-%s-%d.trace" % (prog, time.strftime("%Y%m%d-%H%M%S"), os.getpid())
    for directory in dirs if dirs is not None else trace_dirs():
        path = os.path.join(directory, name)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            _prune(directory)
            return path
        except (OSError, IOError):
            continue
    return None


def _prune(directory, keep=TRACES_KEPT):
    """At most ``keep`` trace files in ``directory`` (a crash loop cannot fill the disk)."""
    try:
        traces = [os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith(".trace")]
        traces.sort(key=os.path.getmtime)
        for old in traces[:-keep] if len(traces) > keep else []:
            os.unlink(old)
    except OSError:
        pass


def describe_unexpected(prog, exc, argv=None):
    """Write the current exception's trace; the one line the user reads."""
    return _report(prog, exc, argv)[0]


def _masked(argv):
    """The command line for the trace, with the value after a password key masked
    (``iscsi-cfg set SMTP_PASS ...``)."""
    shown, hide = [], False
    for word in argv:
        shown.append("***" if hide else word)
        hide = "PASS" in str(word).upper()
    return shown


def _report(prog, exc, argv=None):
    """(one line, trace path or None) for the exception being handled."""
    header = "%s %s\nargv: %r\nhost: %s\npid: %d\ntime: %s\n\n" % (
        prog, _version(), _masked(list(sys.argv if argv is None else argv)),
        socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    path = write_trace(prog, header + traceback.format_exc())
    what = "%s: %s" % (type(exc).__name__, _first_line(exc)) if str(exc) else \
        type(exc).__name__
    where = "full trace in %s" % path if path else \
        "the trace could not be written to any of %s" % ", ".join(trace_dirs())
    return "%s: unexpected error (a bug; please report it): %s; %s" % (prog, what, where), path


def _first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _version():
    try:
        from iscsi_ha import __version__
        return __version__
    except Exception:     # the boundary must never fail on its own
        return "?"


def guard(prog, main, *args, **kwargs):
    """``int(main(*args, **kwargs))``; an exception that escapes ``main`` becomes one line on
    stderr and :attr:`ExitCode.INTERNAL` (KeyboardInterrupt: :attr:`ExitCode.INTERRUPTED`)."""
    try:
        code = main(*args, **kwargs)
        return int(ExitCode.OK if code is None else code)
    except KeyboardInterrupt:
        _stderr("%s: interrupted" % prog)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        _drop_stdout()
        return int(ExitCode.BROKEN_PIPE)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        _stderr(str(exc.code))
        return int(ExitCode.FAILED)
    except Exception as exc:
        line = describe_unexpected(prog, exc)
        _stderr(line)
        _log(line)
        return int(ExitCode.INTERNAL)


def guard_json(prog, function):
    """Wrap a XAPI plugin function so that it always answers JSON: an exception that escapes it
    becomes ``{"ok": false, "code": 70, "lines": [one line], "trace": path}``."""
    def wrapped(session, args):
        try:
            return function(session, args)
        except Exception as exc:
            line, path = _report(prog, exc, argv=[function.__name__, args])
            return json.dumps({"ok": False, "code": int(ExitCode.INTERNAL), "lines": [line],
                               "host": socket.gethostname(), "error": line, "trace": path},
                              sort_keys=True)
    wrapped.__name__ = getattr(function, "__name__", "plugin_function")
    wrapped.__doc__ = getattr(function, "__doc__", None)
    return wrapped


def _drop_stdout():
    """After EPIPE: point stdout at /dev/null, so that the flush at exit does not fail again
    (Python would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _log(line):
    """Also into the agent's log when logging is set up (never the lastResort stderr handler:
    the line is on stderr already)."""
    try:
        log = logging.getLogger("iscsi-ha")
        if log.handlers:
            log.critical("%s", line)
    except Exception:
        pass


def _stderr(line):
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass
