"""Configuration: HA-Lizard's ``iscsi-ha.conf`` read unchanged, validated against a configspec.

The file is bash-style ``KEY=value`` (quotes optional, ``#`` comments). configobj parses it with
list values off, so a value is one string; matching outer quotes are removed as bash would.
Every key has a documented default in the configspec below; the daemon and the CLI share
:func:`load` so both refuse the same files with the same words.
"""
import ipaddress
import os
import re
import socket

from configobj import ConfigObj, ConfigObjError, flatten_errors
from validate import ValidateError, Validator

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
DRBD_PROC = path(default='/proc/drbd')
DRBD_TIMEOUT = seconds(min=0.1, max=300, default=10)
DRBD_POLL_INTERVAL = seconds(min=0.02, max=60, default=0.2)
ISCSI_TARGET_IQN = iqn(default='')
ISCSI_LUNS = lun_map(default='')
TGTADM = command(default='tgtadm')
TARGET_STATUS_COMMAND = command(default='systemctl is-active --quiet {service}')
TARGET_START_COMMAND = command(default='systemctl start {service}')
TARGET_STOP_COMMAND = command(default='systemctl stop {service}')
TARGET_TIMEOUT = seconds(min=0.1, max=300, default=15)
TARGET_STOP_TIMEOUT = seconds(min=0.1, max=300, default=5)
IP_COMMAND = command(default='ip')
ARPING = command(default='/sbin/arping')
ARP_DAD_COUNT = integer(min=1, max=20, default=2)
ARP_DAD_TIMEOUT = seconds(min=0.05, max=30, default=0.3)
ARP_COUNT = integer(min=0, max=100, default=5)
ARP_INTERVAL = seconds(min=0.01, max=10, default=0.2)
NET_TIMEOUT = seconds(min=0.1, max=60, default=5)
POOL_CONF = path(default='/etc/xensource/pool.conf')
POOL_POLL_INTERVAL = seconds(min=0.02, max=10, default=0.1)
XAPI_URL = string(default='unix:///var/lib/xcp/xapi')
XAPI_USER = string(default='root')
XAPI_PASSWORD = string(default='')
XAPI_TIMEOUT = seconds(min=0.1, max=120, default=5)
XAPI_INIT_COOKIE = path(default='/var/run/xapi_init_complete.cookie')
XAPI_INIT_WAIT = seconds(min=0, max=3600, default=300)
INVENTORY_FILE = path(default='/etc/xensource-inventory')
PBD_REPLUG = flag(default='1')
PBD_REPLUG_INTERVAL = seconds(min=5, max=86400, default=60)
STATE_DIR = path(default='/etc/iscsi-ha/state')
STATUS_FILE = path(default='')
MANUAL_FILE = path(default='')
LOG_FILE = path(default='')
WATCH_INTERVAL = seconds(min=0.05, max=3600, default=5)
WATCH_MARGIN = seconds(min=0.05, max=3600, default=5)
AGENT_PID_FILE = path(default='/var/run/iscsi-ha.pid')
WATCHDOG_PID_FILE = path(default='/var/run/iscsi-ha-watchdog.pid')
WATCHDOG_STATE_FILE = path(default='')
AGENT_START_COMMAND = command(default='service iscsi-ha start')
AGENT_START_TIMEOUT = seconds(min=1, max=600, default=60)
SYSLOG_SOCKET = path(default='/dev/log')
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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
# HA-Lizard's noSAN installer writes "iqn.2015.com.halizard:noSAN" (no month); tgtd accepts it.
_IQN_RE = re.compile(r"^(iqn\.\d{4}(-\d{2})?\.\S+|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]+)$")


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
    return "  %s (%s): %r: %s" % (key, where, value, message)


def _check(pattern_ok, value, expected):
    if not pattern_ok:
        raise ValidateError("expected %s" % expected)
    return value


def _seconds(value, min=None, max=None):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidateError("expected a number of seconds")
    if number != number or number < float(min) or number > float(max):
        raise ValidateError("expected seconds between %s and %s" % (min, max))
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
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValidateError("expected an IPv4 address such as 192.0.2.3")


def _netmask(value):
    """A dotted mask (255.255.255.0) or a prefix length (24); returns the prefix length."""
    if value.isdigit() and 0 < int(value) <= 32:
        return int(value)
    try:
        return ipaddress.IPv4Network("0.0.0.0/%s" % value).prefixlen
    except ValueError:
        raise ValidateError("expected a contiguous netmask such as 255.255.255.0 or 24")


def _lun_map(value):
    """``10=/dev/drbd1,11=/dev/drbd2`` -> ((10, '/dev/drbd1'), (11, '/dev/drbd2'))."""
    luns = {}
    for item in [i.strip() for i in value.split(",") if i.strip()]:
        number, sep, device = item.partition("=")
        if not sep or not number.strip().isdigit() or not device.strip().startswith("/"):
            raise ValidateError("expected LUN=DEVICE pairs such as 10=/dev/drbd1")
        lun = int(number)
        if lun < 1 or lun > 255 or lun in luns:
            raise ValidateError("LUN %s must be 1..255 and listed once (0 is the controller)"
                                % number.strip())
        luns[lun] = device.strip()
    return tuple(sorted(luns.items()))  # configobj cannot hold a dict with int keys


def _choice(value, *choices):
    return _check(value in choices, value, "one of " + ", ".join(choices))


def _path(value):
    return _check(value == "" or value.startswith("/"), value, "an absolute path")


_MEDIATOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _mediator_addresses(value):
    """'' (no mediator) or HOST[:PORT] items separated by commas (tried in order)."""
    from iscsi_ha.witness import parse_addresses
    try:
        parse_addresses(value)
    except ValueError as exc:
        raise ValidateError(str(exc))
    return value.strip()


def _mediator_name(value):
    return _check(value == "" or _MEDIATOR_NAME_RE.match(value), value,
                  "a name of letters, digits, '.', '_', '-' (at most 128)")


def _command(value):
    return _check(value.strip() != "", value, "a command")


VALIDATOR_FUNCTIONS = {
    "seconds": _seconds,
    "flag": _flag,
    "resource_list": _resource_list,
    "ipv4": _ipv4,
    "netmask": _netmask,
    "ifname": lambda v: _check(_IFNAME_RE.match(v), v, "a network interface name (at most "
                               "15 letters, digits, _ . : @ -)"),
    "service_name": lambda v: os.path.basename(_check(v.strip(), v, "a service name")),
    "iqn": lambda v: _check(v == "" or _IQN_RE.match(v), v, "an iSCSI name (iqn.YYYY-MM.x:y)"),
    "lun_map": _lun_map,
    "path": _path,
    "choice": _choice,
    "command": _command,
    "mediator_addresses": _mediator_addresses,
    "mediator_name": _mediator_name,
}


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
        """Expand ``$HOSTNAME`` / ``${HOSTNAME}`` as bash did in HA-Lizard's MAIL_SUBJECT."""
        host = socket.gethostname()
        return text.replace("${HOSTNAME}", host).replace("$HOSTNAME", host)


def unquote(value):
    """Remove one pair of matching outer quotes, as bash would."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _key_lines(text):
    """Map each KEY to the line number of its last assignment (bash: last one wins)."""
    lines = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match:
            lines[match.group(1)] = number
    return lines


def _parse(path, text):
    """configobj over the text, with bash's rule that the last assignment of a key wins."""
    lines = [re.sub(r"^\s*export\s+", "", line) for line in text.splitlines()]
    last = _key_lines(text)
    for number, line in enumerate(lines, 1):
        match = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match and last.get(match.group(1)) != number:
            lines[number - 1] = "# (overridden later) " + line
    try:
        return ConfigObj(lines, configspec=CONFIGSPEC.strip().splitlines(), interpolation=False,
                         list_values=False, file_error=False, raise_errors=True)
    except ConfigObjError as exc:
        raise ConfigError(path, [("(file)", getattr(exc, "line_number", 0) or 0, "",
                                  "not KEY=value syntax: %s" % exc)])


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


def loads(text, path="<string>"):
    """Parse and validate config text; return :class:`Config` or raise :class:`ConfigError`."""
    lines = _key_lines(text)
    parsed = _parse(path, text)
    for key in list(parsed.keys()):
        parsed[key] = unquote(parsed[key])
    outcome = parsed.validate(Validator(VALIDATOR_FUNCTIONS), preserve_errors=True, copy=True)
    problems = []
    if outcome is not True:
        for _sections, key, error in flatten_errors(parsed, outcome):
            message = str(error) if error else "missing"
            message = re.sub(r"^the value \".*\" is ", "", message)
            problems.append((key, lines.get(key, 0), parsed.get(key, ""), message))
    known = set(parsed.configspec.scalars)
    warnings = ["%s (line %d): unknown key, ignored" % (k, lines.get(k, 0))
                for k in parsed.keys() if k not in known and k not in LEGACY_IGNORED]
    if problems:
        raise ConfigError(path, problems, warnings)
    values = {k: parsed[k] for k in known}
    problems = _cross_checks(values, lines)
    if problems:
        raise ConfigError(path, problems, warnings)
    _derive(values)
    return Config(path, values, warnings, lines)


def load(path=DEFAULT_PATH):
    """Read ``path``; a missing or unreadable file is a :class:`ConfigError` too."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (OSError, IOError) as exc:
        raise ConfigError(path, [("(file)", 0, path, "cannot read: %s" % exc.strerror)])
    return loads(text, path)
