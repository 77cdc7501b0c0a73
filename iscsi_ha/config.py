"""Configuration: HA-Lizard's ``iscsi-ha.conf`` read unchanged, validated against a configspec.

The file is sourced by bash (HA-Lizard's scripts, our DRBD handlers), so it is read with bash's
grammar (:mod:`iscsi_ha.shell_assign`): every key gets exactly the value bash gives it, and a
file in which bash would run anything is refused. Every key has a documented default in the
configspec below; the daemon and the CLI share :func:`load` so both refuse the same files with
the same words. Validation is complete enough that a file ``check`` accepts cannot make an entry
point fail later: every message names the key, its line and the allowed range or form.
"""
import ast
import ipaddress
import os
import re
import shlex
import socket
import stat

from iscsi_ha import files, shell_assign

DEFAULT_PATH = "/etc/iscsi-ha/iscsi-ha.conf"


def default_path():
    """The config file used without --config: $ISCSI_HA_CONFIG, else DEFAULT_PATH."""
    return os.environ.get("ISCSI_HA_CONFIG") or DEFAULT_PATH

# One line per key: KEY = check(args, default=...). Legacy HA-Lizard keys first.
CONFIGSPEC = """
DRBD_RESOURCES = resource_list(default='iscsi1')
ISCSI_TARGET_SERVICE = service_name(default='tgtd')
DRBD_VIRTUAL_IP = ipv4(default='10.10.10.3')
DRBD_VIRTUAL_MASK = netmask(default='255.255.255.0')
DRBD_INTERFACE = ifname(default='xenbr1')
MONITOR_MAX_STARTS = integer(min=1, max=1000, default=5)
MONITOR_DELAY = seconds(min=0.05, max=3600, default=10)
MONITOR_KILLALL = flag(default='1')
MONITOR_SCANRATE = seconds(min=0.05, max=3600, default=5)
ENABLE_LOGGING = flag(default='1')
MAIL_ON = flag(default='1')
MAIL_USE_SHARED_PARAMS = flag(default='1')
MAIL_SUBJECT = string(default='HA-Lizard noSAN SYSTEM ALERT - FROM HOST: $HOSTNAME')
MAIL_FROM = string(default='root@localhost')
MAIL_TO = string(default='root@localhost')
MAIL_SCREEN_TIME = integer(min=0, max=100000, default=30)
SMTP_SERVER = string(default='127.0.0.1')
SMTP_PORT = integer(min=1, max=65535, default=25)
SMTP_USER = string(default='')
SMTP_PASS = string(default='')
SMTP_SECURITY = choice('auto', 'none', 'starttls', 'ssl', default='auto')
SMTP_TIMEOUT = seconds(min=0.1, max=300, default=10)
SMTP_TLS_VERIFY = flag(default='1')
SMTP_CA_FILE = path(default='')
ALERT_TEMPLATE_DIR = path(default='')
REPLICATION_ALERTS_FROM = choice('primary', 'both', default='primary')
DRBD_VERSION = choice('auto', '8.4', '9', default='auto')
DRBD_ADM = command(default='drbdadm')
DRBD_SETUP = command(default='drbdsetup')
DRBD_PROC = proc_file(default='/proc/drbd')
DRBD_TIMEOUT = seconds(min=0.1, max=300, default=10)
DRBD_POLL_INTERVAL = seconds(min=0.02, max=60, default=0.2)
ISCSI_TARGET_IQN = iqn(default='')
ISCSI_LUNS = lun_map(default='')
TGTADM = command(default='tgtadm')
TGTD_CONTROL_SOCKET = control_socket(default='auto')
TARGET_STATUS_COMMAND = command(default='systemctl is-active --quiet {service}')
TARGET_START_COMMAND = command(default='systemctl start {service}')
TARGET_STOP_COMMAND = command(default='systemctl stop {service}')
TARGET_TIMEOUT = seconds(min=0.1, max=300, default=15)
TARGET_STOP_TIMEOUT = seconds(min=0.1, max=300, default=5)
IP_COMMAND = command(default='ip')
ARPING = command(default='/sbin/arping')
ARP_DAD_COUNT = integer(min=1, max=20, default=3)
ARP_DAD_TIMEOUT = seconds(min=0.05, max=30, default=0.15)
ARP_DAD_RELEASED_TIMEOUT = seconds(min=0, max=30, default=0.05)
TICKLE_WAIT = seconds(min=0, max=600, default=30)
ISCSI_PORT = integer(min=1, max=65535, default=3260)
ISCSI_TARGET_PARAMS = target_params(default='DefaultTime2Wait=0')
ISCSID_CONF = path(default='/etc/iscsi/iscsid.conf')
ARP_COUNT = integer(min=0, max=100, default=5)
ARP_INTERVAL = seconds(min=0.01, max=10, default=0.2)
NET_TIMEOUT = seconds(min=0.1, max=60, default=5)
POOL_CONF = file_path(default='/etc/xensource/pool.conf')
POOL_POLL_INTERVAL = seconds(min=0.02, max=10, default=0.1)
XAPI_URL = xapi_url(default='unix:///var/lib/xcp/xapi')
XAPI_USER = string(default='root')
XAPI_PASSWORD = string(default='')
XAPI_TIMEOUT = seconds(min=0.1, max=120, default=5)
XAPI_INIT_COOKIE = path(default='/var/run/xapi_init_complete.cookie')
XAPI_INIT_WAIT = seconds(min=0, max=3600, default=300)
INVENTORY_FILE = path(default='/etc/xensource-inventory')
PBD_REPLUG = flag(default='1')
PBD_REPLUG_INTERVAL = seconds(min=5, max=86400, default=60)
STATE_DIR = dir_path(default='/etc/iscsi-ha/state')
STATUS_FILE = file_path(writable=True, default='')
MANUAL_FILE = file_path(writable=True, default='')
LOG_FILE = log_file(default='')
WATCH_INTERVAL = seconds(min=0.05, max=3600, default=5)
WATCH_MARGIN = seconds(min=0.05, max=3600, default=5)
AGENT_PID_FILE = path(default='/var/run/iscsi-ha.pid')
WATCHDOG_PID_FILE = path(default='/var/run/iscsi-ha-watchdog.pid')
WATCHDOG_STATE_FILE = path(default='')
AGENT_START_COMMAND = command(default='service iscsi-ha start')
AGENT_START_TIMEOUT = seconds(min=1, max=600, default=60)
SYSLOG_SOCKET = socket_path(default='/dev/log')
FENCE_PEER_HANDLER = path(default='/usr/libexec/iscsi-ha/drbd-fence-peer')
UNFENCE_PEER_HANDLER = path(default='/usr/libexec/iscsi-ha/drbd-unfence-peer')
FENCE_PEER_TIMEOUT = seconds(min=1, max=300, default=8)
SELF_FENCE_AFTER = seconds(min=1, max=3600, default=30)
ALLOW_UNFENCED_FAILOVER = flag(default='0')
FENCING_RECHECK = seconds(min=10, max=86400, default=600)
SERVICE_BLOCKED_AFTER = seconds(min=0, max=86400, default=30)
LOCK_FALLBACK_DIR = path(default='/run/iscsi-ha')
ARP_METHOD = choice('packet', 'arping', default='packet')
VIP_CHECK_INTERVAL = seconds(min=0.5, max=3600, default=10)
MEDIATOR = mediator_addresses(default='')
MEDIATOR_POOL = mediator_name(default='')
MEDIATOR_NODE = mediator_name(default='')
MEDIATOR_DIR = path(default='')
MEDIATOR_INTERVAL = seconds(min=0.2, max=60, default=2)
MEDIATOR_TIMEOUT = seconds(min=0.1, max=30, default=3)
"""

# Keys HA-Lizard wrote into some versions of the file that this agent does not use.
LEGACY_IGNORED = ("MANUAL_MODE", "REPLICATION_IP_MASTER", "REPLICATION_IP_SLAVE",
                  "REPLICATION_IP_ISCSI")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}\Z")
# Linux dev_valid_name(): 1-15 bytes, not "." or "..", no '/', ':' or blank. ':' is refused
# too (an "eth0:1" alias is not a device of its own; ip addr add ... dev eth0:1 fails).
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}\Z")
# A systemd unit / init script name: what service(8) and systemctl accept as one word.
_SERVICE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,254}\Z")
# HA-Lizard's noSAN installer writes "iqn.2015.com.halizard:noSAN" (no month); tgtd accepts it.
_IQN_RE = re.compile(r"(iqn\.[0-9]{4}(-[0-9]{2})?\.[!-~]+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]+)\Z")
_INT_RE = re.compile(r"-?[0-9]+\Z")
_SECONDS_RE = re.compile(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)\Z")
# C0 but TAB, DEL, C1 (U+0080-U+009F: U+0085 is a line break to some tools), and the
# surrogates Python uses for bytes that are not UTF-8 (a command-line argument such as $'\xff').
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\udc80-\udcff]")


class ValidateError(ValueError):
    """One value is not acceptable; the message says what is expected."""


class ConfigError(Exception):
    """The file is unusable. ``problems`` lists (key, line, value, message) for each bad key."""

    def __init__(self, path, problems, warnings=()):
        self.path = path
        self.problems = sorted(problems, key=lambda p: (p[1] or 10 ** 6, p[0]))
        self.warnings = list(warnings)
        problems = self.problems
        Exception.__init__(self, "%s: %d problem(s)\n%s" % (
            path, len(problems), "\n".join(format_problem(p) for p in problems)))


def format_problem(problem):
    key, line, value, message = problem
    where = "line %d" % line if line else "default"
    return "  - %s (%s): %r: %s" % (key, where, value, message)


def _check(pattern_ok, value, expected):
    if not pattern_ok:
        raise ValidateError("expected %s" % expected)
    return value


def _integer(value, min=None, max=None):
    expected = "a whole number from %s to %s (ASCII digits only)" % (min, max)
    if not _INT_RE.match(value):
        raise ValidateError("expected " + expected)
    number = int(value)
    if number < min or number > max:
        raise ValidateError("%d is out of range: expected %s" % (number, expected))
    return number


def _seconds(value, min=None, max=None):
    expected = "seconds from %s to %s (a number such as 2 or 0.5)" % (min, max)
    if not _SECONDS_RE.match(value):
        raise ValidateError("expected " + expected)
    number = float(value)
    if number < float(min) or number > float(max):
        raise ValidateError("%s is out of range: expected %s" % (value, expected))
    return number


def _flag(value):
    return _check(value in ("0", "1"), value, "1 (yes) or 0 (no)") == "1"


def _resource_list(value):
    names = [n for n in value.split(":")]
    for name in names:
        _check(_NAME_RE.match(name), name, "DRBD resource names separated by ':' "
               "(letters, digits, _ . + -)")
    if len(set(names)) != len(names):
        raise ValidateError("a resource is listed twice")
    return names


def _ipv4(value):
    if not re.match(r"[0-9.]+\Z", value):
        raise ValidateError("expected an IPv4 address such as 192.0.2.3")
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValidateError("expected an IPv4 address such as 192.0.2.3")
    for test, words in (("is_unspecified", "the unspecified address"),
                        ("is_loopback", "a loopback address"),
                        ("is_multicast", "a multicast address"),
                        ("is_reserved", "a reserved or broadcast address")):
        if getattr(address, test) or (words.endswith("broadcast address") and
                                      value == "255.255.255.255"):
            raise ValidateError("%s is %s; expected a unicast address such as 192.0.2.3 that "
                                "hosts can reach" % (value, words))
    return str(address)


def _netmask(value):
    """A dotted mask (255.255.255.0) or a prefix length 1-32; returns the prefix length."""
    expected = "expected a contiguous netmask such as 255.255.255.0 or a prefix length from " \
               "1 to 32"
    if re.match(r"[0-9]{1,2}\Z", value):
        if 1 <= int(value) <= 32:
            return int(value)
        raise ValidateError(expected)
    if not re.match(r"[0-9]{1,3}(\.[0-9]{1,3}){3}\Z", value):
        raise ValidateError(expected)
    try:
        prefix = ipaddress.IPv4Network("0.0.0.0/%s" % value).prefixlen
    except ValueError:
        raise ValidateError(expected)
    if prefix < 1:
        raise ValidateError(expected)
    return prefix


def _ifname(value):
    if value in (".", "..") or not _IFNAME_RE.match(value):
        raise ValidateError("expected a network interface name: 1 to 15 letters, digits, "
                            "_ . @ - (not '.' or '..'; no ':' alias such as eth0:1)")
    return value


def _lun_map(value):
    """``10=/dev/drbd1,11=/dev/drbd2`` -> ((10, '/dev/drbd1'), (11, '/dev/drbd2'))."""
    luns = {}
    for item in [i.strip(" \t") for i in value.split(",") if i.strip(" \t")]:
        number, sep, device = item.partition("=")
        number, device = number.strip(" \t"), device.strip(" \t")
        if not sep or not re.match(r"[0-9]{1,3}\Z", number) or not \
                re.match(r"/[^\s=,]*[^/\s=,]\Z", device):
            raise ValidateError("expected LUN=DEVICE pairs separated by ',' such as "
                                "10=/dev/drbd1 (LUN 1 to 255, DEVICE an absolute path of a "
                                "device or file); %r is not one" % item)
        lun = int(number)
        if lun < 1 or lun > 255 or lun in luns:
            raise ValidateError("LUN %s must be 1..255 and listed once (0 is the controller)"
                                % number)
        luns[lun] = device
    return tuple(sorted(luns.items()))


def _choice(value, *choices):
    return _check(value in choices, value, "one of " + ", ".join(choices))


def _path(value):
    return _check(value == "" or value.startswith("/"), value, "an absolute path")


_MEDIATOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _mediator_addresses(value):
    """'' (no mediator) or HOST[:PORT] items separated by commas (tried in order). The mediator
    client (and ssl) is imported only when there is one."""
    if not value.strip():
        return ""
    from iscsi_ha.witness import parse_addresses
    try:
        parse_addresses(value)
    except ValueError as exc:
        raise ValidateError(str(exc))
    return value.strip()


def _mediator_name(value):
    return _check(value == "" or _MEDIATOR_NAME_RE.match(value), value,
                  "a name of letters, digits, '.', '_', '-' (at most 128)")


def _exists_as(path):
    """The mode of ``path`` (not following a final symlink's absence), or None."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


# Kernel file systems: their files are not the agent's to write (or to keep its state in).
PSEUDO_FS = frozenset((
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "configfs", "pstore", "bpf", "mqueue", "hugetlbfs", "fusectl", "binfmt_misc",
    "autofs", "efivarfs", "selinuxfs", "nsfs", "rpc_pipefs"))
MOUNTINFO = "/proc/self/mountinfo"


def _unescape_mount(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mount_of(path):
    """``(mount point, fs type, mount options)`` of the file system holding ``path`` (or its
    nearest existing parent), from /proc/self/mountinfo; None when that cannot be read."""
    existing = path
    while existing not in ("", "/") and _exists_as(existing) is None:
        existing = os.path.dirname(existing.rstrip("/")) or "/"
    existing = os.path.realpath(existing or "/")
    try:
        text = files.read_text(MOUNTINFO, 8 * files.PROC_LIMIT)
    except (OSError, IOError):
        return None
    best = None
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:] or len(fields) < 10:
            continue
        dash = fields.index("-", 6)
        point = _unescape_mount(fields[4])
        inside = existing == point or existing.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[dash + 1], fields[5].split(","))
    return best


def _fs_problem(path, writable):
    """Why the file system of ``path`` cannot hold the agent's files, or None."""
    mount = mount_of(path)
    if mount is None:
        return None
    point, fstype, options = mount
    if fstype in PSEUDO_FS:
        return ("%s is on the %s kernel file system (mounted on %s), which cannot hold the "
                "agent's files; choose a path on a disk file system" % (path, fstype, point))
    if writable and "ro" in options:
        return "%s is on a file system mounted read-only (%s)" % (path, point)
    return None


def _creatable_dir(path):
    """None when ``path`` is a directory or could be created, else why not."""
    mode = _exists_as(path)
    if mode is not None:
        return None if stat.S_ISDIR(mode) else "it exists and is %s, not a directory" % (
            files.kind_of(mode) or "a regular file")
    parent = os.path.dirname(path.rstrip("/"))
    while parent and parent != "/" and _exists_as(parent) is None:
        parent = os.path.dirname(parent)
    mode = _exists_as(parent or "/")
    if mode is not None and not stat.S_ISDIR(mode):
        return "%s is %s, so the directory cannot be created" % (
            parent, files.kind_of(mode) or "a regular file")
    return None


def _regular_or_absent(value, writable, expected):
    """Refuse a path on a kernel (or, when ``writable``, read-only) file system, and one that
    exists as anything but a regular file."""
    why = _fs_problem(value, writable)
    if why:
        raise ValidateError(why)
    mode = _exists_as(value)
    if mode is not None and not stat.S_ISREG(mode):
        raise ValidateError("%s is %s; expected %s" % (value, files.kind_of(mode), expected))


def _file_path(value, writable=False):
    """A file the agent reads or writes: absent, or a regular file (never a FIFO/directory),
    not on a kernel file system (/proc/version is a regular file); ``writable``: the agent
    writes it, so not on a read-only mount either."""
    _path(value)
    if value:
        _regular_or_absent(value, writable, "a regular file (or none yet)")
        why = _creatable_dir(os.path.dirname(value) or "/")
        if why:
            raise ValidateError("its directory cannot hold it: %s" % why)
    return value


def _dir_path(value):
    _check(value.startswith("/"), value, "an absolute path of a directory")
    if os.path.realpath(value) == "/":
        raise ValidateError("the root directory itself cannot be the agent's state directory; "
                            "expected a directory of its own such as /etc/iscsi-ha/state")
    why = _fs_problem(value, True)
    if why:
        raise ValidateError(why)
    why = _creatable_dir(value)
    if why:
        raise ValidateError("expected a directory (or a path where one can be created): %s"
                            % why)
    return value


def _log_file(value):
    """Empty, or a regular file (or none yet) in an existing directory, on a writable disk
    file system."""
    _path(value)
    if value:
        _regular_or_absent(value, True, "a regular file to append to")
        parent = os.path.dirname(value) or "/"
        mode = _exists_as(parent)
        if mode is None or not stat.S_ISDIR(mode):
            raise ValidateError("its directory %s does not exist; create it or choose another "
                                "path" % parent)
    return value


def _socket_path(value):
    _path(value)
    if value:
        mode = _exists_as(value)
        if mode is not None and not stat.S_ISSOCK(mode):
            raise ValidateError("%s is %s; expected the syslog socket (or empty: no syslog)"
                                % (value, files.kind_of(mode) or "a regular file"))
    return value


def _control_socket(value):
    """'auto' (tgtd's socket for TGTADM's control port), 'none' (poll the daemon), or the
    absolute path of the target daemon's management socket."""
    if value in ("auto", "none"):
        return value
    _check(value.startswith("/"), value, "auto, none or an absolute path")
    try:
        size = len(value.encode("ascii"))
    except UnicodeError:
        raise ValidateError("expected a path of ASCII characters")
    return _check(size <= 107, value, "a path of at most 107 bytes (a Unix socket's limit)")


def _xapi_url(value):
    """The URL the XAPI client connects to, checked as the client checks it before connecting
    (without importing the client: the fence-peer handler reads this file in a failover)."""
    from iscsi_ha import xapi_url
    try:
        xapi_url.check(value)
    except xapi_url.UrlError as exc:
        raise ValidateError(str(exc))
    return value


def _proc_file(value):
    """A kernel status file such as /proc/drbd: absent (module not loaded) or a regular file;
    never a FIFO (it would block the reader), a device (/dev/zero never ends) or a directory."""
    _check(value.startswith("/"), value, "an absolute path such as /proc/drbd")
    mode = _exists_as(value)
    if mode is not None and not stat.S_ISREG(mode):
        raise ValidateError("%s is %s; expected a regular file such as /proc/drbd"
                            % (value, files.kind_of(mode)))
    return value


def _command(value):
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ValidateError("not a command line: %s (the value is split like a shell would, "
                            "so quotes must be balanced)" % exc)
    if not argv:
        raise ValidateError("expected a command")
    return value


def _service_name(value):
    name = os.path.basename(value) if value.startswith("/") else value
    if not _SERVICE_RE.match(name):
        raise ValidateError("expected a service name such as tgtd (letters, digits, _ . @ : -; "
                            "no spaces or arguments), or the daemon's absolute path")
    return name


def _iqn(value):
    return _check(value == "" or _IQN_RE.match(value), value, "an iSCSI name (iqn.YYYY-MM.x:y)")


# iSCSI session keys tgtd lets `tgtadm --op update --mode target --name K --value V` set
# (fujita/tgt usr/iscsi/param.c session_keys; numeric ones only).
TARGET_PARAM_KEYS = ("DefaultTime2Wait", "DefaultTime2Retain", "MaxRecvDataSegmentLength",
                     "MaxXmitDataSegmentLength", "MaxBurstLength", "FirstBurstLength",
                     "MaxOutstandingR2T", "MaxConnections")


def _target_params(value):
    """``Key=number,Key=number`` -> {key: value text}; empty: tgtd's own defaults."""
    params = {}
    for item in [i.strip() for i in value.split(",") if i.strip()]:
        key, _, number = item.partition("=")
        _check(key.strip() in TARGET_PARAM_KEYS and number.strip().isdigit(), value,
               "Key=number items separated by commas, keys among %s" % ", ".join(
                   TARGET_PARAM_KEYS))
        params[key.strip()] = number.strip()
    return params


VALIDATOR_FUNCTIONS = {
    "target_params": _target_params,
    "integer": _integer,
    "seconds": _seconds,
    "flag": _flag,
    "resource_list": _resource_list,
    "ipv4": _ipv4,
    "netmask": _netmask,
    "ifname": _ifname,
    "service_name": _service_name,
    "iqn": _iqn,
    "lun_map": _lun_map,
    "path": _path,
    "file_path": _file_path,
    "dir_path": _dir_path,
    "log_file": _log_file,
    "socket_path": _socket_path,
    "control_socket": _control_socket,
    "choice": _choice,
    "command": _command,
    "xapi_url": _xapi_url,
    "proc_file": _proc_file,
    "mediator_addresses": _mediator_addresses,
    "mediator_name": _mediator_name,
    "string": lambda value: value,
}


def _spec():
    """CONFIGSPEC as {key: (function name, args, kwargs, default)}, in file order."""
    spec = {}
    for line in CONFIGSPEC.strip().splitlines():
        key, _, call = line.partition("=")
        node = ast.parse(call.strip(), mode="eval").body
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = dict((k.arg, ast.literal_eval(k.value)) for k in node.keywords)
        default = kwargs.pop("default")
        spec[key.strip()] = (node.func.id, args, kwargs, str(default))
    return spec


SPEC = _spec()


class Config(object):
    """Validated settings: one attribute per key (``config.DRBD_RESOURCES``)."""

    def __init__(self, path, values, warnings, lines):
        self.path = path
        self.warnings = warnings
        self.lines = lines
        for key, value in values.items():
            setattr(self, key, value)

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if k.isupper()}

    def expand(self, text):
        """Expand ``$HOSTNAME`` / ``${HOSTNAME}`` as bash did in HA-Lizard's MAIL_SUBJECT (the
        file's values are expanded when read; this is for defaults and shared settings)."""
        host = socket.gethostname()
        return text.replace("${HOSTNAME}", host).replace("$HOSTNAME", host)


def unquote(value):
    """Remove one pair of matching outer quotes (pool other-config values written by hand)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _control_problem(value):
    match = _CONTROL_RE.search(value)
    if not match:
        return None
    if match.group(0) == "\r":
        return ("ends in a carriage return: the file has Windows (CRLF) line endings and bash "
                "keeps the \\r in the value; convert the file with dos2unix")
    char = match.group(0)
    if "\udc80" <= char <= "\udcff":
        return ("holds the byte 0x%02x, which is not UTF-8; write the value in UTF-8 (or ASCII)"
                % (ord(char) - 0xdc00))
    return ("holds the control character U+%04X (%r); bash would keep it in the value, and it "
            "would garble mails and logs: remove it" % (ord(char), char))


def value_problem(value):
    """Why ``value`` cannot be any key's value (a control character, a byte that is not
    UTF-8), or None: the same words for ``check`` and ``iscsi-cfg set``."""
    return _control_problem(value)


def _validate(raw, lines, hostname):
    values, problems = {}, []
    for key, (name, args, kwargs, default) in SPEC.items():
        # A default reads as the shipped file's line would: $HOSTNAME expanded.
        value = raw[key] if key in raw else default.replace("$HOSTNAME", hostname)
        why = _control_problem(value)
        if why:
            problems.append((key, lines.get(key, 0), value, why))
            continue
        try:
            values[key] = VALIDATOR_FUNCTIONS[name](value, *args, **kwargs)
        except ValidateError as exc:
            problems.append((key, lines.get(key, 0), value, str(exc)))
    return values, problems


def _cross_checks(values, lines):
    """Combinations that are each valid but unsafe together: refused, never adjusted."""
    problems = []
    budget = values["MONITOR_MAX_STARTS"] * values["MONITOR_SCANRATE"]
    for key in ("DRBD_TIMEOUT", "TARGET_TIMEOUT", "NET_TIMEOUT", "XAPI_TIMEOUT"):
        if values[key] >= budget:
            problems.append((key, lines.get(key, 0), values[key],
                             "must be shorter than the pass budget MONITOR_MAX_STARTS x "
                             "MONITOR_SCANRATE = %.1f s, or a slow command would be killed "
                             "as a hung pass" % budget))
    if values["ISCSI_TARGET_IQN"] and not values["ISCSI_LUNS"]:
        problems.append(("ISCSI_LUNS", lines.get("ISCSI_LUNS", 0), "",
                         "ISCSI_TARGET_IQN is set, so ISCSI_LUNS must list LUN=DEVICE pairs"))
    if values["ISCSI_LUNS"] and not values["ISCSI_TARGET_IQN"]:
        problems.append(("ISCSI_TARGET_IQN", lines.get("ISCSI_TARGET_IQN", 0), "",
                         "ISCSI_LUNS is set, so the target's IQN is needed too"))
    if values["MEDIATOR"] and not values["MEDIATOR_POOL"]:
        problems.append(("MEDIATOR_POOL", lines.get("MEDIATOR_POOL", 0), "",
                         "MEDIATOR is set, so the pool's name at the mediator is needed too "
                         "(iscsi-cfg mediator enroll sets it)"))
    if values["MEDIATOR"] and values["MEDIATOR_TIMEOUT"] >= budget:
        problems.append(("MEDIATOR_TIMEOUT", lines.get("MEDIATOR_TIMEOUT", 0),
                         values["MEDIATOR_TIMEOUT"], "must be shorter than the pass budget "
                         "%.1f s" % budget))
    network = ipaddress.IPv4Network("%s/%d" % (values["DRBD_VIRTUAL_IP"],
                                               values["DRBD_VIRTUAL_MASK"]), strict=False)
    if network.prefixlen < 31 and ipaddress.IPv4Address(values["DRBD_VIRTUAL_IP"]) in (
            network.network_address, network.broadcast_address):
        problems.append(("DRBD_VIRTUAL_IP", lines.get("DRBD_VIRTUAL_IP", 0),
                         values["DRBD_VIRTUAL_IP"],
                         "is the %s address of %s (DRBD_VIRTUAL_MASK); expected a host "
                         "address of that subnet" % (
                             "network" if values["DRBD_VIRTUAL_IP"] ==
                             str(network.network_address) else "broadcast", network)))
    state = values["STATE_DIR"]
    for key, name in (("STATUS_FILE", "status"), ("MANUAL_FILE", "manual")):
        if not values[key]:
            try:
                _file_path(os.path.join(state, name), writable=True)
            except ValidateError as exc:
                problems.append((key, lines.get("STATE_DIR", 0), os.path.join(state, name),
                                 "(derived from STATE_DIR) %s" % exc))
    for key in ("TARGET_STATUS_COMMAND", "TARGET_START_COMMAND", "TARGET_STOP_COMMAND"):
        try:
            _command(values[key].replace("{service}", values["ISCSI_TARGET_SERVICE"]))
        except ValidateError as exc:
            problems.append((key, lines.get(key, 0), values[key], str(exc)))
    return problems


def _derive(values):
    state = values["STATE_DIR"] or "/etc/iscsi-ha/state"
    values["STATUS_FILE"] = values["STATUS_FILE"] or os.path.join(state, "status")
    values["MANUAL_FILE"] = values["MANUAL_FILE"] or os.path.join(state, "manual")
    values["MEDIATOR_DIR"] = values["MEDIATOR_DIR"] or os.path.join(state, "mediator")
    values["MEDIATOR_NODE"] = values["MEDIATOR_NODE"] or socket.gethostname().split(".")[0]
    service = values["ISCSI_TARGET_SERVICE"]
    for key in ("TARGET_STATUS_COMMAND", "TARGET_START_COMMAND", "TARGET_STOP_COMMAND"):
        values[key] = values[key].replace("{service}", service)
    values["ISCSI_LUNS"] = dict(values["ISCSI_LUNS"])
    values["PASS_BUDGET"] = values["MONITOR_MAX_STARTS"] * values["MONITOR_SCANRATE"]


def read_assignments(text, path="<string>", hostname=None):
    """``({key: value}, {key: line})`` as bash leaves them, or :class:`ConfigError`."""
    try:
        return shell_assign.values(text, hostname)
    except shell_assign.ShellSyntaxError as exc:
        raise ConfigError(path, [(exc.key or "(file)", exc.line, "",
                                  "not KEY=value syntax as bash reads it: %s" % exc.message)])


def loads(text, path="<string>", hostname=None):
    """Parse and validate config text; return :class:`Config` or raise :class:`ConfigError`."""
    hostname = socket.gethostname() if hostname is None else hostname
    raw, lines = read_assignments(text, path, hostname)
    warnings = ["%s (line %d): unknown key, ignored" % (k, lines.get(k, 0))
                for k in raw if k not in SPEC and k not in LEGACY_IGNORED]
    values, problems = _validate(raw, lines, hostname)
    if problems:
        raise ConfigError(path, problems, warnings)
    problems = _cross_checks(values, lines)
    if problems:
        raise ConfigError(path, problems, warnings)
    _derive(values)
    return Config(path, values, warnings, lines)


def decode(data, path):
    """The file's bytes as text; a byte that is not UTF-8 is a :class:`ConfigError` naming its
    line (bash would keep it, but no key can use it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, [("(file)", line, "", "byte 0x%02x at offset %d is not UTF-8; "
                                  "save the file as UTF-8 (or ASCII)" % (data[exc.start],
                                                                         exc.start))])


def read_file(path):
    """The text of the configuration file (bounded, regular files only) or ConfigError."""
    try:
        data = files.read_bounded(path, files.CONFIG_LIMIT)
    except (OSError, IOError) as exc:
        raise ConfigError(path, [("(file)", 0, path, "cannot read: %s" % (exc.strerror or exc))])
    return decode(data, path)


def load(path=DEFAULT_PATH):
    """Read ``path``; a missing, unreadable or oversized file, or not a regular file, is a
    :class:`ConfigError` too."""
    return loads(read_file(path), path)
