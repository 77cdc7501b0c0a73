"""Mediator settings: /etc/iscsi-ha-mediator/mediator.conf (INI, section [mediator]).

Every key has a default; unknown keys and bad values are refused with one line naming them.
"""
import configparser
import os

DEFAULT_CONFIG = "/etc/iscsi-ha-mediator/mediator.conf"
DEFAULT_STATE_DIR = "/var/lib/iscsi-ha-mediator"
DEFAULT_PORT = 7790

KEYS = {
    # key: (type, default)
    "state_dir": (str, DEFAULT_STATE_DIR),
    "listen": (str, "0.0.0.0"),
    "port": (int, DEFAULT_PORT),
    "admin_socket": (str, ""),          # default <state_dir>/admin.sock
    "backend": (str, "sqlite"),          # sqlite | etcd
    "database": (str, ""),               # default <state_dir>/mediator.db
    "lease": (float, 10.0),              # seconds; default lease for new pools
    "margin": (float, 2.0),              # seconds added to every lease check
    "tls_cert": (str, ""),               # default <state_dir>/tls/server.crt
    "tls_key": (str, ""),                # default <state_dir>/tls/server.key
    "tls_ca": (str, ""),                 # CA that signs node credentials; <state_dir>/tls/ca.crt
    "rate_capacity": (float, 10.0),      # failures a source may make before being slowed
    "rate_refill": (float, 0.5),         # failures forgiven per second
    "idle_timeout": (float, 60.0),       # close node connections silent this long
    "max_pools": (int, 100000),
    "alert_command": (str, ""),          # run as: CMD POOL TEXT (timeout 10 s)
    "log_level": (str, "info"),
}
ETCD_PREFIX = "etcd_"


class ConfigError(Exception):
    """``str()`` is one line naming the key and the problem."""


class Settings(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def path(self, key, default_name):
        return self[key] or os.path.join(self["state_dir"], default_name)


def load(path=None, overrides=None):
    """Settings from ``path`` (missing file = all defaults) and ``overrides`` (dict)."""
    raw = {}
    path = path or os.environ.get("ISCSI_HA_MEDIATOR_CONFIG") or DEFAULT_CONFIG
    if os.path.exists(path):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise ConfigError("%s: %s" % (path, str(exc).splitlines()[0]))
        if parser.sections() and "mediator" not in parser:
            raise ConfigError("%s: no [mediator] section" % path)
        if "mediator" in parser:
            raw.update(parser["mediator"])
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    out = Settings()
    for key, value in raw.items():
        if key.startswith(ETCD_PREFIX):
            out[key] = value
            continue
        if key not in KEYS:
            raise ConfigError("%s: unknown setting %r" % (path, key))
        kind = KEYS[key][0]
        try:
            out[key] = kind(value)
        except (TypeError, ValueError):
            raise ConfigError("%s: %s=%r is not a valid %s" % (path, key, value, kind.__name__))
    for key, (kind, default) in KEYS.items():
        out.setdefault(key, default)
    if out.backend not in ("sqlite", "etcd"):
        raise ConfigError("%s: backend=%r (sqlite or etcd)" % (path, out.backend))
    if not 0 <= out.port <= 65535:   # 0: any free port (tests)
        raise ConfigError("%s: port=%r is not a TCP port" % (path, out.port))
    if not 1.0 <= out.lease <= 600.0:
        raise ConfigError("%s: lease=%r must be between 1 and 600 seconds" % (path, out.lease))
    if not 0.0 <= out.margin <= 60.0:
        raise ConfigError("%s: margin=%r must be between 0 and 60 seconds" % (path, out.margin))
    if out.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("%s: log_level=%r (debug, info, warning, error)"
                          % (path, out.log_level))
    out["config_path"] = path
    return out
