"""``iscsi-cfg set KEY VALUE``: change one key of the bash-style configuration file.

Only the key's last assignment (the one bash, and the loader, obey) is rewritten; every other
line, comment and blank line stays byte for byte. A key that is not in the file is appended.
The new file is validated with the same loader as the agent before it replaces the old one
(atomically, keeping its permissions); a value that makes the file invalid is refused.
"""
import os
import re
import stat

from iscsi_ha import config as config_mod
from iscsi_ha.cli.context import CliError
from iscsi_ha.files import atomic_write

_BARE = re.compile(r"^[A-Za-z0-9_./:@,+=%-]*$")


def known_keys():
    return [line.split("=", 1)[0].strip() for line in config_mod.CONFIGSPEC.strip().splitlines()]


def quote(value):
    """The value as the file should hold it (bash reads it back unchanged)."""
    if _BARE.match(value):
        return value
    if "\n" in value:
        raise CliError("a value cannot span lines", 2)
    if '"' not in value:
        return '"%s"' % value
    if "'" not in value:
        return "'%s'" % value
    raise CliError("a value cannot hold both ' and \" in this file format", 2)


def _assignment(key):
    return re.compile(r"^(\s*(?:export\s+)?%s\s*=\s*)(\"[^\"]*\"|'[^']*'|[^\s#]*)(.*)$"
                      % re.escape(key))


def replace_value(text, key, value):
    """(new text, line number, old raw value or None)."""
    lines = text.split("\n")
    pattern = _assignment(key)
    hits = [n for n, line in enumerate(lines) if pattern.match(line)]
    if not hits:
        if lines and lines[-1] == "":
            lines.pop()
        lines.extend(["%s=%s" % (key, quote(value)), ""])
        return "\n".join(lines), len(lines) - 1, None
    number = hits[-1]
    match = pattern.match(lines[number])
    lines[number] = match.group(1) + quote(value) + match.group(3)
    return "\n".join(lines), number + 1, match.group(2)


def _problems(text, path):
    try:
        config_mod.loads(text, path)
        return []
    except config_mod.ConfigError as exc:
        return exc.problems


# Where the running agent and the CLI meet (the pass lock, the manual-mode file, the status):
# moving them under a running agent would split the two, and manual mode would be lost.
STATE_KEYS = ("STATE_DIR", "MANUAL_FILE", "STATUS_FILE")


def _refuse_moving_state(path, key):
    if key not in STATE_KEYS:
        return
    from iscsi_ha.cli.cfg_main import read_status
    document = read_status(config_mod.load(path))
    if document.get("agent_running"):
        raise CliError("refusing to change %s while the agent runs (it keeps using the old "
                       "place; manual mode and the pass lock would be split): stop it "
                       "(service iscsi-ha stop -w), set it, move the files, start it" % key)


def set_value(path, key, value, say):
    """Validate and write; 0 on success. Raises CliError (exit 2) for a refused value."""
    if key not in known_keys():
        raise CliError("unknown key %s; iscsi-cfg get lists the keys" % key, 2)
    try:
        with open(path) as handle:
            text = handle.read()
    except (OSError, IOError) as exc:
        raise CliError("cannot read %s: %s" % (path, exc.strerror), 2)
    new_text, line, old = replace_value(text, key, value)
    before = set(p[0] for p in _problems(text, path))
    after = _problems(new_text, path)
    caused = [p for p in after if p[0] == key or p[0] not in before]
    if caused:
        raise CliError("refusing %s=%r, %s is unchanged:\n%s" % (
            key, value, path, "\n".join(config_mod.format_problem(p) for p in caused)), 2)
    if old is not None and new_text == text:
        say("%s is already %s (line %d of %s)" % (key, old, line, path))
        return 0
    _refuse_moving_state(path, key)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    atomic_write(path, new_text, mode)
    say("%s: %s -> %s (line %d of %s)" % (key, "(absent)" if old is None else old,
                                          quote(value), line, path))
    if after:
        say("warning: the file still has problems it had before:\n%s" % "\n".join(
            config_mod.format_problem(p) for p in after))
    say("the agent reads its configuration when it starts: restart it to apply this "
        "(service iscsi-ha restart); the peer has its own file")
    return 0
