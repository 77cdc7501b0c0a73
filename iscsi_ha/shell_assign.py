"""Read a bash-style ``NAME=value`` file exactly as ``bash`` would when it sources it.

HA-Lizard's scripts (and our DRBD handlers) ``source`` iscsi-ha.conf, so the only meaning a value
can have is bash's. This module implements the part of bash's grammar such a file may use and
refuses everything else, naming the line (and the key when there is one):

* lines of assignments ``NAME=value`` (several on a line are allowed, as in bash), optionally
  after ``export``; ``NAME+=value`` appends, as in bash;
* blank lines; ``#`` starts a comment only where a word would start;
* single quotes are literal (and may span lines); double quotes keep ``\\`` only before
  ``$ ` " \\`` and newline; an unquoted backslash quotes the next character; backslash-newline
  is removed before anything else is read, as bash's input reader does (outside single quotes
  and comments), so it may split a name (``$HOST\\<NL>NAME`` is ``$HOSTNAME``);
* ``$HOSTNAME``/``${HOSTNAME}`` expand to the host name, and ``$NAME`` to a value assigned
  earlier in the file; a ``$`` that bash keeps literally (``5$``, ``a$.b``) stays.

Refused, because bash would execute something or the value would depend on the environment:
``$(...)``, backticks, ``$((...))``, ``$'...'``, ``$"..."``, ``${...}`` other than ``${NAME}``,
special parameters (``$1 $? $$ ...``), unknown ``$NAME``, unquoted ``~`` where bash expands it,
the operators ``; & | < > ( )``, any word that is not an assignment (bash would run it as a
command: a ``[section]`` line, a value with an unquoted space, a CRLF line ending on its own), an
unterminated quote, a NUL byte, and a UTF-8 byte order mark. Only the Python 3.6 standard library
is used (this ships to dom0).
"""
import bisect
import collections
import re
import socket

BLANKS = " \t"
OPERATORS = ";&|<>()"
SPECIAL_PARAMETERS = "0123456789*@#?-$!"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Variables bash sets itself (bash(1), "Shell Variables"): readonly (UID EUID PPID SHELLOPTS
# BASHOPTS BASH_VERSINFO: assigning is an error), or with a value of their own that an
# assignment does not keep (RANDOM LINENO SECONDS GROUPS EPOCHSECONDS FUNCNAME _ ...). HOSTNAME is
# not among them: bash sets it once and an assignment keeps its value.
BASH_DYNAMIC = frozenset((
    "UID", "EUID", "PPID", "RANDOM", "SRANDOM", "LINENO", "SECONDS", "GROUPS", "EPOCHSECONDS",
    "EPOCHREALTIME", "FUNCNAME", "SHELLOPTS", "HISTCMD", "_", "DIRSTACK", "PIPESTATUS",
    "OPTIND", "OPTARG", "OPTERR", "HOSTTYPE", "MACHTYPE", "OSTYPE", "SHLVL", "PWD", "OLDPWD",
    "COLUMNS", "LINES", "READLINE_LINE", "READLINE_POINT", "READLINE_MARK", "REPLY"))
# Variables that change how the script that sources the file runs.
BASH_BEHAVIOUR = frozenset((
    "IFS", "PATH", "CDPATH", "ENV", "GLOBIGNORE", "POSIXLY_CORRECT", "PS1", "PS2", "PS3", "PS4",
    "SHELL", "HOME", "TMOUT", "FIGNORE", "HISTFILE", "HISTIGNORE", "INPUTRC", "LANG", "LC_ALL",
    "LC_COLLATE", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "TMPDIR", "EXECIGNORE"))


def bash_variable(name):
    """Why ``name`` cannot be a key of the file (bash's own variable), or None."""
    if name in BASH_DYNAMIC or name.startswith("BASH") or name.startswith("COMP_"):
        return ("%s is a variable bash sets itself (read-only, or a value of its own that an "
                "assignment does not keep)" % name)
    if name in BASH_BEHAVIOUR:
        return ("%s is a variable of the shell: setting it would change how the script that "
                "sources this file runs" % name)
    return None

# One assignment as read: the value is bash's; start/end delimit the value's text (after "=")
# in the source, so that a writer can replace exactly it.
Assignment = collections.namedtuple("Assignment", "name value line start end append")


class ShellSyntaxError(ValueError):
    """The text is not something this reader (and bash, harmlessly) can read."""

    def __init__(self, line, key, message):
        self.line = line
        self.key = key
        self.message = message
        ValueError.__init__(self, "line %d%s: %s" % (line, " (%s)" % key if key else "", message))


def join_continuations(text):
    """``(logical text, cuts)``: ``text`` with every backslash-newline that bash removes before
    it splits words (outside single quotes and comments; inside double quotes too) taken out.
    ``cuts`` lists the logical indexes where a pair was removed (see :meth:`_Reader.source_index`).
    bash does this in its input reader, so ``$HOST\\<NL>NAME`` is ``$HOSTNAME`` and
    ``A\\<NL>B=1`` assigns ``AB``."""
    if "\\\n" not in text:
        return text, []
    out, cuts = [], []
    i, n, state, logical = 0, len(text), "plain", 0
    previous = "\n"                       # the last logical character (word starts)
    while i < n:
        c = text[i]
        if state == "single":
            state = "plain" if c == "'" else state
        elif state == "comment":
            state = "plain" if c == "\n" else state
        elif c == "\\" and i + 1 < n and text[i + 1] == "\n":
            cuts.append(logical)
            i += 2
            continue
        elif c == "\\" and i + 1 < n:            # an escaped character: both kept as they are
            out.append(text[i:i + 2])
            logical += 2
            previous = "x"                    # an escaped blank does not start a word
            i += 2
            continue
        elif state == "double":
            state = "plain" if c == '"' else state
        elif c == "'":
            state = "single"
        elif c == '"':
            state = "double"
        elif c == "#" and previous in BLANKS + "\n" + OPERATORS:
            state = "comment"
        out.append(c)
        logical += 1
        previous = c
        i += 1
    return "".join(out), cuts


class _Reader(object):
    def __init__(self, text, hostname):
        self.source = text
        self.text, self.cuts = join_continuations(text)
        self.n = len(self.text)
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.i = 0
        self.hostname = hostname
        self.values = {}
        self.found = []

    def source_index(self, i):
        """Where the logical character ``i`` is in the text as written."""
        return i + 2 * bisect.bisect_right(self.cuts, i)

    @property
    def line(self):
        """The line (of the text as written) of the current position."""
        return bisect.bisect_left(self.newlines, self.source_index(self.i)) + 1

    # -- helpers -----------------------------------------------------------------------------
    def fail(self, message, key=None, line=None):
        raise ShellSyntaxError(self.line if line is None else line, key, message)

    def peek(self, offset=0):
        i = self.i + offset
        return self.text[i] if i < self.n else ""

    def skip_blanks(self):
        """Blanks and backslash-newline pairs (bash removes those before it reads words)."""
        while self.i < self.n:
            c = self.text[self.i]
            if c in BLANKS:
                self.i += 1
            elif c == "\\" and self.peek(1) == "\n":
                self.i += 2
            else:
                return

    def shown_word(self):
        end = self.i
        while end < self.n and self.text[end] not in BLANKS + "\n":
            end += 1
        return self.text[self.i:end][:60]

    # -- the file ----------------------------------------------------------------------------
    def read(self):
        if self.text.startswith("\ufeff"):
            self.fail("the file starts with a UTF-8 byte order mark: bash does not skip it and "
                      "would run the first line as a command; save the file without a BOM")
        if "\0" in self.text:
            self.fail(line=self.source.count("\n", 0, self.source.index("\0")) + 1, message="a NUL byte: bash drops it silently, so the value is not what the file "
                      "shows; remove it")
        self.i = 0
        while self.i < self.n:
            self.statement()
        return self.found

    def statement(self):
        """One line (or several joined by continuations / quoted newlines)."""
        self.skip_blanks()
        if self.i >= self.n:
            return
        c = self.text[self.i]
        if c == "\n":
            self.i += 1
            return
        if c == "#":
            self.comment()
            return
        words = 0
        exported = False
        while True:
            self.skip_blanks()
            c = self.peek()
            if c in ("", "\n"):
                break
            if c == "#":
                self.comment()
                break
            if c in OPERATORS:
                self.fail("the operator %r: only NAME=value assignments are read; quote a value "
                          "that contains it" % c)
            if self.assignment():
                words += 1
                continue
            word = self.shown_word()
            if words == 0 and not exported and word == "export" and \
                    self.peek(6) in BLANKS and self.peek(6) != "":
                exported = True
                self.i += 6
                continue
            self.command(word, words, exported)
        if exported and words == 0:
            self.fail("export without NAME=value")

    def comment(self):
        end = self.text.find("\n", self.i)
        self.i = self.n if end < 0 else end

    def command(self, word, words, exported):
        if words or exported:
            last = self.found[-1].name if self.found else None
            if exported and not words:
                self.fail("'export %s' is not NAME=value" % word)
            self.fail("%r after the value: bash would run it as a command (and set %s only "
                      "for that command); quote the whole value, e.g. %s='a b'"
                      % (word, last, last), key=last)
        if word.startswith("["):
            self.fail("%r: this file has no [sections]; bash would run it as a command. Remove "
                      "the line" % word)
        hint = ""
        if "\r" in word:
            hint = " (the line ends in a carriage return: the file has Windows CRLF line " \
                   "endings; convert it with dos2unix)"
        self.fail("%r is not NAME=value: bash would run it as a command%s" % (word, hint))

    # -- one assignment ----------------------------------------------------------------------
    def assignment(self):
        match = _NAME.match(self.text, self.i)
        if not match:
            return False
        end = match.end()
        append = self.text.startswith("+=", end)
        if not append and not self.text.startswith("=", end):
            return False
        name, line = match.group(0), self.line
        why = bash_variable(name)
        if why:
            self.fail("%s; choose another name" % why, name)
        self.i = end + (2 if append else 1)
        start = self.i
        value = self.value(name)
        if append:              # HOSTNAME is bash's until the file assigns it: bash appends to it
            value = self.values.get(name, self.hostname if name == "HOSTNAME" else "") + value
        self.values[name] = value
        # start/end in the text as written: right after "=", right after the value's last
        # character (a continuation around the value stays outside it)
        first = self.source_index(start - 1) + 1
        last = self.source_index(self.i - 1) + 1 if self.i > start else first
        self.found.append(Assignment(name, value, line, first, last, append))
        return True

    def value(self, key):
        out = []
        tilde_ok = True          # at the value's start or after an unquoted ':'
        while self.i < self.n:
            c = self.text[self.i]
            if c in BLANKS or c == "\n":
                break
            if c in OPERATORS:
                self.fail("unquoted %r in the value: bash reads it as an operator; put the value "
                          "in single quotes" % c, key)
            if c == "~" and tilde_ok:
                self.fail("unquoted '~' at the start of the value or after ':': bash replaces it "
                          "with the home directory of whoever sources the file, and the agent "
                          "has no home directory; write the path out, or quote it ('~/x') for "
                          "a literal ~", key)
            tilde_ok = c == ":"
            if c == "\\":
                nxt = self.peek(1)
                if nxt != "\n":
                    out.append(nxt or c)     # a backslash ending the file stays (as in bash)
                self.i += 2
            elif c == "'":
                close = self.text.find("'", self.i + 1)
                if close < 0:
                    self.fail("unterminated ' quote: no closing ' before the end of the file",
                              key)
                out.append(self.text[self.i + 1:close])
                self.i = close + 1
            elif c == '"':
                self.double_quoted(key, out)
            elif c == "$":
                out.append(self.dollar(key, quoted=False))
            elif c == "`":
                self.fail("a backtick: bash would run a command; put the value in single quotes",
                          key)
            else:
                out.append(c)
                self.i += 1
        return "".join(out)

    def double_quoted(self, key, out):
        opened = self.line
        self.i += 1
        while True:
            if self.i >= self.n:
                self.fail('unterminated " quote opened on line %d: no closing " before the end '
                          'of the file' % opened, key, line=opened)
            c = self.text[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\":
                nxt = self.peek(1)
                if nxt == "\n":
                    self.i += 2
                elif nxt in '$`"\\':
                    out.append(nxt)
                    self.i += 2
                else:
                    out.append(c)
                    self.i += 1
            elif c == "$":
                out.append(self.dollar(key, quoted=True))
            elif c == "`":
                self.fail("a backtick inside double quotes: bash would run a command; use single "
                          "quotes", key)
            else:
                out.append(c)
                self.i += 1

    def dollar(self, key, quoted):
        line = self.line                 # a name continued on the next line: the '$' line
        nxt = self.peek(1)
        if nxt == "{":
            match = _NAME.match(self.text, self.i + 2)
            if not match or not self.text.startswith("}", match.end()):
                self.fail("a ${...} expansion other than ${NAME}: bash would compute it; use "
                          "single quotes for a literal value", key)
            self.i = match.end() + 1
            return self.lookup(match.group(0), key, line)
        match = _NAME.match(self.text, self.i + 1)
        if match:
            self.i = match.end()
            return self.lookup(match.group(0), key, line)
        if nxt == "(":
            self.fail("$(...): bash would run a command (or compute $((...))); use single quotes "
                      "for a literal value", key)
        if nxt == "[":
            self.fail("$[...]: bash would compute it; use single quotes for a literal value", key)
        if nxt and nxt in SPECIAL_PARAMETERS:
            self.fail("$%s is a special parameter of the shell that sources the file; use single "
                      "quotes for a literal value" % nxt, key)
        if not quoted and nxt and nxt in "'\"":
            self.fail("$%s...%s quoting: bash translates it; use plain single quotes" % (nxt, nxt),
                      key)
        if nxt == "\\":
            self.fail("'$' followed by a backslash; use single quotes for a literal value", key)
        self.i += 1
        return "$"

    def lookup(self, name, key, line=None):
        if name in self.values:
            return self.values[name]
        if name == "HOSTNAME":
            return self.hostname
        why = bash_variable(name)
        if why:
            self.fail("$%s: %s; only $HOSTNAME and names assigned above can be used"
                      % (name, why), key, line)
        self.fail("$%s is not set in this file: bash would take it from the environment of "
                  "whoever sources the file; only $HOSTNAME and names assigned above can be used"
                  % name, key, line)


def parse(text, hostname=None):
    """Every assignment of ``text`` in order (a list of :class:`Assignment`).

    Raises :class:`ShellSyntaxError` (line and key named) for anything outside the grammar.
    ``hostname`` is what ``$HOSTNAME`` expands to (default: this host's name, as bash's).
    """
    if hostname is None:
        hostname = socket.gethostname()
    return _Reader(text, hostname).read()


def values(text, hostname=None):
    """``({name: value}, {name: line of its last assignment})`` as bash leaves them."""
    found, lines = {}, {}
    for item in parse(text, hostname):
        found[item.name] = item.value
        lines[item.name] = item.line
    return found, lines


_BARE = re.compile(r"[A-Za-z0-9_./:@,+%=-]*\Z")


def quote(value):
    """``value`` written so that bash reads it back unchanged: as is when it only holds safe
    characters, else in single quotes (an embedded ``'`` as ``'\\''``)."""
    if _BARE.match(value) and not value.startswith("~") and ":~" not in value:
        return value
    return "'%s'" % value.replace("'", "'\\''")
