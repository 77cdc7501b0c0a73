"""``iscsi-cfg set KEY VALUE``: change one key of the bash-style configuration file.

Only the key's last assignment (the one bash, and the loader, obey) is rewritten: exactly the
value's text, so every other byte of the file stays (comments, a trailing comment on that line,
blank lines, CRLF line endings). A key that is not in the file is appended. The value is written
so that bash reads it back literally (single quotes, ``'\\''`` for an embedded quote: nothing in
it can run when the file is sourced), and that is checked by reading the new text back. The new
file is validated with the same loader as the agent before it replaces the old one: atomically
(a temporary file in the same directory, then a rename; the temporary file is removed when
anything fails), keeping its permissions and owner, and through a symlink (the link's target
is rewritten, the link stays). A value that makes the file invalid is refused.
"""
import os

from iscsi_ha import config as config_mod, files, shell_assign
from iscsi_ha.cli.context import CliError
from iscsi_ha.files import atomic_write


def known_keys():
    return list(config_mod.SPEC)


def quote(value):
    """The value as the file should hold it (bash reads it back unchanged)."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise CliError("a value cannot hold a line break or a NUL byte", 2)
    return shell_assign.quote(value)


def _line_ending(text):
    """"\r\n" when most lines of ``text`` end so, else "\n"."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf * 2 >= text.count("\n") else "\n"


def replace_value(text, key, value, path="<string>"):
    """(new text, line number, old raw value or None)."""
    try:
        found = [a for a in shell_assign.parse(text) if a.name == key]
    except shell_assign.ShellSyntaxError as exc:
        raise CliError("cannot change %s: %s is not readable as bash reads it (%s); fix that "
                       "line first" % (key, path, exc), 2)
    written = quote(value)
    if not found:
        ending = _line_ending(text)
        tail = " #" if ending == "\r\n" else ""    # the CR falls in a comment, not the value
        lead = "" if text == "" or text.endswith("\n") else ending
        new = "%s%s%s=%s%s%s" % (text, lead, key, written, tail, ending)
        return new, new.count("\n"), None
    last = found[-1]
    start = last.start - 2 if last.append else last.start     # KEY+=x becomes KEY=...
    rest = text[last.end:]
    if rest.startswith("\r"):
        written += " #"      # CRLF right after the value: keep the CR out of it (in a comment)
    prefix = text[:start] + ("=" if last.append else "")
    return prefix + written + rest, last.line, text[last.start:last.end]


def _problems(text, path):
    try:
        config_mod.loads(text, path)
        return []
    except config_mod.ConfigError as exc:
        return exc.problems


# Where the running agent and the CLI meet (the pass lock, the manual-mode file, the status):
# moving them under a running agent would split the two, and manual mode would be lost.
STATE_KEYS = ("STATE_DIR", "MANUAL_FILE", "STATUS_FILE")


class _Places(object):
    """Where the agent running with the current file keeps its status and pid, even when the
    file is invalid now (the agent may run with what it read before)."""

    def __init__(self, raw):
        def value(key, number=False):
            default = config_mod.SPEC[key][3]
            text = raw.get(key) or default
            if not number:
                return text
            try:
                return float(text)
            except ValueError:
                return float(default)
        state = value("STATE_DIR")
        self.STATUS_FILE = raw.get("STATUS_FILE") or os.path.join(state, "status")
        self.AGENT_PID_FILE = value("AGENT_PID_FILE")
        self.MONITOR_DELAY = value("MONITOR_DELAY", True)
        self.MONITOR_SCANRATE = value("MONITOR_SCANRATE", True)


def _current_places(text, path):
    try:
        return config_mod.loads(text, path)
    except config_mod.ConfigError:
        return _Places(config_mod.read_assignments(text, path)[0])


def _refuse_moving_state(text, path, key):
    """Refuse while an agent may run. The status says so; a status that cannot be read is not
    a "no": then only a missing status and no living agent in AGENT_PID_FILE allow it."""
    if key not in STATE_KEYS:
        return
    from iscsi_ha import service
    from iscsi_ha.agent_status import view
    config = _current_places(text, path)
    document = view(config)
    stop = ("stop it (service iscsi-ha stop -w), set it, move the files, start it")
    if document.get("agent_running"):
        raise CliError("refusing to change %s while the agent runs (it keeps using the old "
                       "place; manual mode and the pass lock would be split): %s" % (key, stop))
    if document.get("status_unknown"):
        raise CliError("refusing to change %s: cannot tell whether the agent runs (%s); %s, "
                       "and remove the broken status file" % (key, document["status_unknown"],
                                                               stop))
    pid = service.read_pid(config.AGENT_PID_FILE)
    if pid is not None and service.agent_process(pid) is not None:
        raise CliError("refusing to change %s: an agent runs as pid %d (%s) though it has "
                       "published no status yet: %s" % (key, pid, config.AGENT_PID_FILE, stop))


def _read(path):
    try:
        data = files.read_bounded(path, files.CONFIG_LIMIT)
    except (OSError, IOError) as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror or exc), 2)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CliError("%s line %d: byte 0x%02x is not UTF-8; iscsi-cfg set only rewrites UTF-8 "
                       "(or ASCII) files: fix that line first" % (
                           path, data.count(b"\n", 0, exc.start) + 1, data[exc.start]), 2)


def _write(path, text):
    info = os.stat(path)
    try:
        atomic_write(path, text, info.st_mode & 0o7777)
    except (OSError, IOError) as exc:
        raise CliError("cannot write %s: %s; the file is unchanged" % (
            path, exc.strerror or exc), 1)
    if os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0):
        try:
            os.chown(path, info.st_uid, info.st_gid)
        except OSError:
            pass


def set_value(path, key, value, say):
    """Validate and write; 0 on success. Raises CliError (exit 2) for a refused value."""
    if key not in known_keys():
        raise CliError("unknown key %s; iscsi-cfg get lists the keys" % key, 2)
    why = config_mod.value_problem(value)
    if why:
        raise CliError("refusing %s: the value %s; %s is unchanged" % (key, why, path), 2)
    target = os.path.realpath(path)        # a symlinked file: rewrite its target, keep the link
    text = _read(target)
    new_text, line, old = replace_value(text, key, value, path)
    back = dict((a.name, a.value) for a in shell_assign.parse(new_text))
    if back.get(key) != value:              # never write what bash would read differently
        raise CliError("refusing %s=%r: it would not read back unchanged" % (key, value), 2)
    before = set(p[0] for p in _problems(text, path))
    after = _problems(new_text, path)
    caused = [p for p in after if p[0] == key or p[0] not in before]
    if caused:
        raise CliError("refusing %s=%r, %s is unchanged:\n%s" % (
            key, value, path, "\n".join(config_mod.format_problem(p) for p in caused)), 2)
    if old is not None and new_text == text:
        say("%s is already %s (line %d of %s)" % (key, old, line, path))
        return 0
    _refuse_moving_state(text, path, key)
    _write(target, new_text)
    say("%s: %s -> %s (line %d of %s)" % (key, "(absent)" if old is None else old,
                                          quote(value), line, path))
    if after:
        say("warning: the file still has problems it had before:\n%s" % "\n".join(
            config_mod.format_problem(p) for p in after))
    say("the agent reads its configuration when it starts: restart it to apply this "
        "(service iscsi-ha restart); the peer has its own file")
    return 0
