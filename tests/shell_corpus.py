"""A corpus of tricky bash assignment files, and a runner that sources one in real bash.

Used by tests/test_shell_grammar.py (our reader against bash) and the handler test."""
import os
import shutil
import subprocess

HOSTNAME = "corpus-host.example"
# (name, text): bash assigns without running anything; our reader must agree on every key.
AGREE = [
    ("plain", "A=1\n"),
    ("empty", "A=\n"),
    ("empty-quotes", "A=''\nB=\"\"\n"),
    ("no-final-newline", "A=1"),
    ("blank-lines", "\n\n  \n\t\nA=1\n\n"),
    ("comment-lines", "# x\n  # y = 2\n\t#z\nA=1\n"),
    ("hash-inside-word", "A=ab#cd\n"),
    ("hash-after-space", "A=ab #cd\n"),
    ("hash-after-tab", "A=ab\t#cd\n"),
    ("hash-at-value-start", "A=#x\n"),
    ("hash-after-quote", "A='ab'#cd\n"),
    ("hash-in-single-quotes", "A='a #b'\n"),
    ("hash-in-double-quotes", "A=\"a #b\"\n"),
    ("escaped-space-then-hash", "A=1\\ #x\n"),
    ("escaped-hash", "A=\\#x\n"),
    ("state-dir-hash", "STATE_DIR=/x/sb#ate\n"),
    ("smtp-pass-hash", "SMTP_PASS=ab#cd\n"),
    ("single-quoted", "A='a b  c'\n"),
    ("double-quoted", "A=\"a b  c\"\n"),
    ("concatenated", "A=a'b c'\"d e\"f\n"),
    ("single-in-double", "A=\"it's\"\n"),
    ("double-in-single", "A='say \"hi\"'\n"),
    ("escaped-single-quote", "A='it'\\''s'\n"),
    ("backslash-in-single", "A='a\\b\\\\c\\'\n"),
    ("dq-escapes", "A=\"a\\\"b\\\\c\\$d\\`e\"\n"),
    ("dq-backslash-kept", "A=\"a\\b\\nc\\'d\"\n"),
    ("unquoted-escapes", "A=a\\ b\\'c\\\"d\\\\e\\$f\n"),
    ("unquoted-backslash-letter", "A=a\\bc\n"),
    ("continuation-unquoted", "A=ab\\\ncd\n"),
    ("continuation-dq", "A=\"ab\\\ncd\"\n"),
    ("continuation-sq-kept", "A='ab\\\ncd'\n"),
    ("continuation-between-assignments", "A=1 \\\nB=2\n"),
    ("comment-no-continuation", "# c \\\nA=1\n"),
    ("trailing-backslash-eof", "A=x\\"),
    ("multiline-single", "A='line1\nline2'\nB=3\n"),
    ("multiline-double", "A=\"line1\nline2\"\nB=3\n"),
    ("two-assignments", "A=1 B=2\n"),
    ("two-assignments-comment", "A=1\tB='x y' # c\n"),
    ("later-wins", "A=1\nA=2\n"),
    ("append", "A=x\nA+=y\n"),
    ("append-new", "A+=y\n"),
    ("export", "export A=1\n"),
    ("export-two", "export A=1 B=\"2 3\"\n"),
    ("export-tab", "export\tA=1\n"),
    ("name-export", "export=1\n"),
    ("leading-blanks", "   A=1\n\t B=2\n"),
    ("underscore-names", "_A=1\nA_B_9=2\n"),
    ("hostname", "A=$HOSTNAME\n"),
    ("hostname-braces", "A=${HOSTNAME}\n"),
    ("hostname-dq", "A=\"host: $HOSTNAME!\"\n"),
    ("hostname-dot", "A=$HOSTNAME.lan\n"),
    ("hostname-sq-literal", "A='$HOSTNAME'\n"),
    ("hostname-escaped", "A=\\$HOSTNAME\n"),
    ("hostname-dq-escaped", "A=\"\\$HOSTNAME\"\n"),
    ("mail-subject", "MAIL_SUBJECT=\"HA-Lizard noSAN SYSTEM ALERT - FROM HOST: $HOSTNAME\" \n"),
    ("earlier-name", "STATE_DIR=/var/x\nSTATUS_FILE=$STATE_DIR/status\n"),
    ("earlier-name-braces", "D=/v\nF=\"${D}/s t\"\n"),
    ("hostname-overridden", "HOSTNAME=other\nA=$HOSTNAME\n"),
    ("literal-dollar-end", "A=5$\n"),
    ("literal-dollar-dq-end", "A=\"5$\"\n"),
    ("literal-dollar-punct", "A=a$.b$/c$%d$=e$,f$:g$+h\n"),
    ("literal-dollar-dq-space", "A=\"a$ b\"\n"),
    ("dollar-single-in-dq", "A=\"a$'b'\"\n"),
    ("backtick-in-single", "A='`x`'\n"),
    ("cmdsubst-in-single", "A='$(touch X)'\n"),
    ("operators-in-single", "A='a;b&c|d<e>f(g)'\n"),
    ("operators-in-double", "A=\"a;b&c|d<e>f(g)\"\n"),
    ("glob-chars", "A=*\nB=a?b\nC=[x]\n"),
    ("brace-no-expansion", "A={a,b}\nB=x{1..3}\n"),
    ("tilde-middle", "A=a~b\n"),
    ("tilde-quoted", "A='~/x'\nB=\"~\"\n"),
    ("tilde-escaped", "A=\\~/x\n"),
    ("equals-in-value", "A=a=b=c\n"),
    ("luns", "ISCSI_LUNS=10=/dev/drbd1,11=/dev/drbd2\n"),
    ("luns-space-quoted", "ISCSI_LUNS=\"10=/dev/drbd1, 11=/dev/drbd2\"\n"),
    ("exclamation", "A=hello!\nB=\"!x\"\n"),
    ("cr-in-value", "A=1\r\n"),
    ("cr-in-quotes", "A='1'\r\n"),
    ("cr-comment", "# c\r\nA=1 #\r\n"),
    ("cr-dq", "A=\"x\r\"\n"),
    ("form-feed-value", "A=a\fb\n"),
    ("form-feed-in-quotes", "A='a\fb'\n"),
    ("vertical-tab-value", "A=a\vb\n"),
    ("u2028-value", "A=a\u2028b\nB=2\n"),
    ("u2028-quoted", "A='a\u2028b'\n"),
    ("u2029-u0085", "A=a\u2029b\u0085c\n"),
    ("nbsp-value", "A=a\u00a0b\n"),
    ("utf8-value", "A=\u00e9t\u00e9\nB='\u2603'\n"),
    ("tab-in-quotes", "A='a\tb'\n"),
    ("long-value", "A=" + "x" * 5000 + "\n"),
    ("many-keys", "".join("K%d=%d\n" % (i, i) for i in range(200))),
    ("triple-double", 'A="""abc"""\n'),
    ("triple-single", "A='''abc'''\n"),
    ("triple-with-hash", 'A="""a # b"""\n'),
    ("quoted-empty-middle", "A=a''b\"\"c\n"),
    ("only-comment", "# nothing\n"),
    ("empty-file", ""),
    ("semicolon-in-comment", "A=1 # a; b | c `d` $(e)\n"),
    ("hash-hostname", "A=#$HOSTNAME\n"),
    ("backslash-newline-at-line-start", "\\\nA=1\n"),
    ("value-is-dash", "A=-n\nB=--\n"),
    ("percent-and-at", "A=user@host%x\n"),
    ("quoted-newline-comment", "A='x\n# not a comment'\n"),
    # bash removes backslash-newline before it reads words (review of issue 11, defect 3)
    ("continuation-dollar-name", "A=$\\\nHOSTNAME\n"),
    ("continuation-inside-name", "A=$HOST\\\nNAME\n"),
    ("continuation-inside-braces", "A=${HOST\\\nNAME}x\n"),
    ("continuation-dq-name", "A=\"$HOST\\\nNAME x\"\n"),
    ("continuation-key-name", "AB\\\nC=1\n"),
    ("continuation-before-equals", "A\\\n=1\n"),
    ("continuation-before-append", "A=1\nA\\\n+=2\n"),
    ("continuation-then-hash", "A=ab\\\n#cd\n"),
    ("continuation-blank-then-hash", "A=ab \\\n#cd \\\nB=2\n"),
    ("continuation-escaped-backslash", "A=a\\\\\nB=2\n"),
    ("continuation-twice", "A=a\\\n\\\nb\n"),
    ("continuation-in-export", "exp\\\nort A=1\n"),
    ("continuation-sq-in-dq", "A=\"it's \\\nx\"\n"),
    ("continuation-earlier-name", "AB=1\nX=$A\\\nB\n"),
    # review of issue 11, defect 7: HOSTNAME is bash's own until assigned; += appends to it
    ("hostname-append", "HOSTNAME+=x\nA=$HOSTNAME\n"),
    ("hostname-append-twice", "HOSTNAME+=x\nHOSTNAME+=y\n"),
    ("halizard-like", "DRBD_RESOURCES=iscsi1\nISCSI_TARGET_SERVICE=tgtd\nDRBD_VIRTUAL_IP=10.10.10.3\n"
                      "MAIL_FROM=\"root@localhost\"\nSMTP_USER=\"\"\nSMTP_PASS=\"\"\n"),
]

# bash would run something, or what it reads depends on things outside the file: refused.
REFUSE = [
    ("cmdsubst", "MAIL_SUBJECT=$(touch X)\n"),
    ("cmdsubst-dq", "MAIL_SUBJECT=\"$(touch X)\"\n"),
    ("backtick", "A=`touch X`\n"),
    ("backtick-dq", "A=\"`touch X`\"\n"),
    ("arith", "A=$((1+2))\n"),
    ("arith-old", "A=$[1+2]\n"),
    ("unknown-var", "A=$HOME\n"),
    ("unknown-var-braces", "A=${PATH}\n"),
    ("param-default", "A=${X:-y}\n"),
    ("param-length", "A=${#HOSTNAME}\n"),
    ("special-param", "A=$1\n"),
    ("special-pid", "A=\"$$\"\n"),
    ("special-status", "A=$?\n"),
    ("ansi-c", "A=$'a\\nb'\n"),
    ("locale-quote", "A=$\"x\"\n"),
    ("hostname-suffix-var", "A=$HOSTNAMEx\n"),
    ("tilde-start", "A=~/x\n"),
    ("tilde-after-colon", "A=/a:~/x\n"),
    ("trailing-word", "MAIL_TO=a b\n"),
    ("space-after-equals", "A= 1\n"),
    ("space-before-equals", "A =1\n"),
    ("command", "echo hi\n"),
    ("section", "[main]\nA=1\n"),
    ("section-later", "A=1\n[x]\n"),
    ("semicolon", "A=1; touch X\n"),
    ("semicolon-bare", "A=1;\n"),
    ("ampersand", "A=1 & touch X\n"),
    ("pipe", "A=1 | cat\n"),
    ("redirect", "A=1 > X\n"),
    ("array", "A=(a b)\n"),
    ("subshell", "(A=1)\n"),
    ("unterminated-single", "A='abc\n"),
    ("unterminated-double", "A=\"abc\nB=2\n"),
    ("bom", "\ufeffA=1\n"),
    ("nul", "A=a\0b\n"),
    ("cr-blank-line", "A=1\n\r\n"),
    ("export-alone", "export\n"),
    ("export-name-only", "export A\n"),
    ("readonly", "readonly A=1\n"),
    ("declare", "declare A=1\n"),
    ("escaped-equals", "A\\=1\n"),
    ("quoted-name", "'A'=1\n"),
    ("function", "f() { :; }\n"),
    ("if", "if true; then A=1; fi\n"),
    ("form-feed-line", "A=1\n\f\n"),
    ("u2028-line", "A=1\n\u2028\n"),
    ("assignment-then-command", "A=1 B=2 touch X\n"),
    ("array-element", "A[0]=1\n"),
    ("triple-with-space", 'A="""a b""" c\n'),
    # review of issue 11, defect 3: continuation joins a name to what follows, bash reads an
    # unset name ('' from the environment), we refuse it
    ("continuation-hostname-suffix", "STATE_DIR=/tmp/fz/sd/$HOSTNAME\\\n_sb\n"),
    ("continuation-hostname-dq", "MAIL_SUBJECT=\"$HOSTNAME\\\nx\"\n"),
    ("continuation-earlier-suffix", "A=1\nX=$A\\\nB\n"),
    ("continuation-tilde", "X=\\\n~/x\n"),
    ("continuation-tilde-after-colon", "X=/a:\\\n~/x\n"),
    # review of issue 11, defect 7: bash's own variables as keys or references
    ("bash-var-uid", "UID=1\n"),
    ("bash-var-euid", "EUID=1\n"),
    ("bash-var-ppid", "PPID=1\n"),
    ("bash-var-random", "RANDOM=1\nA=$RANDOM\n"),
    ("bash-var-lineno", "LINENO=7\n"),
    ("bash-var-seconds", "SECONDS=100\n"),
    ("bash-var-groups", "GROUPS=5\n"),
    ("bash-var-epochseconds", "EPOCHSECONDS=5\n"),
    ("bash-var-underscore", "_=x\n"),
    ("bash-var-funcname", "FUNCNAME=x\n"),
    ("bash-var-shellopts", "SHELLOPTS=x\n"),
    ("bash-var-bashopts", "BASHOPTS=x\n"),
    ("bash-var-bash-versinfo", "BASH_VERSINFO=x\n"),
    ("bash-var-path", "PATH=/nowhere\n"),
    ("bash-var-ifs", "IFS=x\n"),
    ("bash-ref-uid", "A=$UID\n"),
    ("bash-ref-random", "A=${RANDOM}\n"),
    ("bash-ref-lineno", "A=\"$LINENO\"\n"),
    ("bash-ref-underscore", "A=$_\n"),
    ("bash-ref-ppid", "A=$PPID\n"),
    ("continuation-dollar-paren", "A=$\\\n(touch X)\n"),
]

# (name, text, key, what a reader that joins lines after reading words would give): bash gives
# something else (the test shows it), and our reader refuses the file.
# (name, key): bash refuses the assignment or does not keep the value ("zz1" is assigned).
BASH_OWN = ["UID", "EUID", "PPID", "RANDOM", "SRANDOM", "LINENO", "SECONDS", "GROUPS",
            "EPOCHSECONDS", "EPOCHREALTIME", "FUNCNAME", "SHELLOPTS", "BASHOPTS", "BASHPID",
            "BASH_SUBSHELL", "BASH_VERSINFO", "BASH_ARGC", "BASH_COMMAND", "HISTCMD", "_",
            "DIRSTACK", "BASH_LINENO", "BASH_SOURCE"]

CONTINUATION_DIFFERS = [
    ("continuation-hostname-suffix", "STATE_DIR", "/tmp/fz/sd/" + HOSTNAME + "_sb"),
    ("continuation-hostname-dq", "MAIL_SUBJECT", HOSTNAME + "x"),
    ("continuation-earlier-suffix", "X", "1B"),
    ("continuation-tilde", "X", "~/x"),
]


def bash_path():
    return shutil.which("bash")


def bash_internal_names(tmpdir):
    """Names bash sets itself in an empty environment (PWD, SHLVL, ...)."""
    return set(source(os.path.join(tmpdir, "empty.conf"), "", None)[0])


def source(path, text, names):
    """Write ``text`` to ``path``, source it in ``env -i`` bash (no PATH: a command cannot run
    and says so on stderr); return ({name: value} for ``names`` set after it (all set names when
    ``names`` is None), stderr)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    script = ('. "$1"; m=$2; shift 2; if [ "$m" = all ]; then set -- $(compgen -v); fi; '
              'for k; do if [ "${!k+set}" ]; then printf "%s=%s\\0" "$k" "${!k}"; fi; done')
    result = subprocess.run(
        ["/usr/bin/env", "-i", "HOSTNAME=" + HOSTNAME, bash_path(), "--norc", "--noprofile",
         "-c", script, "bash", path, "all" if names is None else "listed"] + list(names or []),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        cwd=os.path.dirname(path))
    found = {}
    for item in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, _, value = item.partition("=")
            found[key] = value
    return found, result.stderr.decode("utf-8", "replace")
