"""The dom0 initiator (open-iscsi) settings that decide how long a failover pauses the VMs.

Read from ISCSID_CONF (the defaults new node records get) and, where this host has sessions,
from sysfs (``/sys/class/iscsi_session/*/recovery_tmo`` is the replacement timeout in force).
Defaults and rules are open-iscsi's (open-iscsi/open-iscsi at bc23614: etc/iscsid.conf,
include/iscsi_proto.h ISCSI_DEF_TIME2WAIT, usr/initiator.c ISCSI_CONN_ERR_REOPEN_DELAY); the
target side is tgtd's (fujita/tgt usr/iscsi/param.c: DefaultTime2Wait 2, result = maximum).
XCP-ng leaves them at the defaults except the replacement timeout (144 s; 15 s multipath).
"""
import glob
import os

T2W = "node.session.iscsi.DefaultTime2Wait"
NOOP_INTERVAL = "node.conn[0].timeo.noop_out_interval"
NOOP_TIMEOUT = "node.conn[0].timeo.noop_out_timeout"
REPLACEMENT = "node.session.timeo.replacement_timeout"
LOGIN_TIMEOUT = "node.conn[0].timeo.login_timeout"
DEFAULTS = {T2W: 2, NOOP_INTERVAL: 5, NOOP_TIMEOUT: 5, REPLACEMENT: 120, LOGIN_TIMEOUT: 15}
ADVICE = {T2W: 0, NOOP_INTERVAL: 1, NOOP_TIMEOUT: 1}
SYN_RTO = 1               # Linux: an unanswered SYN is sent again after 1 s


def parse_iscsid_conf(text):
    """{key: int} for the timing keys set (uncommented) in an iscsid.conf text."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key in DEFAULTS:
            try:
                found[key] = int(value)
            except ValueError:
                continue
    return found


def read_settings(path):
    """(settings with defaults filled in, set keys, error text or '')."""
    try:
        with open(path) as handle:
            found = parse_iscsid_conf(handle.read())
        error = ""
    except (OSError, IOError) as exc:
        found, error = {}, "%s: %s" % (path, exc.strerror or exc)
    settings = dict(DEFAULTS)
    settings.update(found)
    return settings, set(found), error


def session_recovery_timeouts(sysfs="/sys/class/iscsi_session"):
    """{session name: replacement timeout in force} of this host's iSCSI sessions."""
    out = {}
    for path in sorted(glob.glob(os.path.join(sysfs, "session*", "recovery_tmo"))):
        try:
            with open(path) as handle:
                out[os.path.basename(os.path.dirname(path))] = int(handle.read().strip())
        except (OSError, IOError, ValueError):
            continue
    return out


def failover_cost(settings, target_time2wait, move_s=0.5, tickled=True):
    """Seconds of I/O pause an initiator with ``settings`` sees for a move the server side does
    in ``move_s`` seconds: (planned move, crash). Planned: the old holder's tickle makes the
    connection fail when the new holder serves (else the NOP-Out finds it). Crash: a command in
    flight is retransmitted into the new holder (about 1.4 s of back-off) or the NOP-Out fires.
    Then the reconnect waits the negotiated Time2Wait."""
    t2w = max(settings[T2W], target_time2wait)
    nop = settings[NOOP_INTERVAL] + settings[NOOP_TIMEOUT]
    planned = (move_s if tickled else min(nop, max(move_s, 1.4))) + t2w
    crash = min(nop, max(move_s, 1.4)) + t2w
    return planned, crash


def findings(path, target_time2wait, sysfs="/sys/class/iscsi_session"):
    """[(kind, sentence)] for ``iscsi-cfg check``: kind is 'ok', 'info' or 'advice'."""
    settings, set_keys, error = read_settings(path)
    out = []
    if error:
        out.append(("info", "initiator: cannot read %s; open-iscsi's defaults assumed" % error))
    words = ", ".join("%s=%d%s" % (k.split(".")[-1], settings[k], "" if k in set_keys else
                                   " (default)") for k in (T2W, NOOP_INTERVAL, NOOP_TIMEOUT,
                                                            REPLACEMENT))
    out.append(("info", "initiator (%s): %s; target DefaultTime2Wait=%d" % (
        path, words, target_time2wait)))
    planned, crash = failover_cost(settings, target_time2wait)
    out.append(("info", "initiator: a failover pauses I/O about %.1f s (planned move) and %.1f s "
                "(crash) with these settings" % (planned, crash)))
    advised = dict(settings)
    advised.update(ADVICE)
    changes = ["%s = %d" % (k, v) for k, v in sorted(ADVICE.items()) if settings[k] != v]
    if target_time2wait != 0:
        changes.append("ISCSI_TARGET_PARAMS=DefaultTime2Wait=0 here (the larger side wins)")
    if changes:
        a_planned, a_crash = failover_cost(advised, 0)
        out.append(("advice", "initiator: for a sub-second pause set %s in %s on every host of "
                    "the pool (then `iscsiadm -m node -o update` or log in again): about %.1f s "
                    "planned, %.1f s crash" % ("; ".join(changes), path, a_planned, a_crash)))
    else:
        out.append(("ok", "initiator: settings give a sub-second pause in a planned move"))
    for session, timeout in sorted(session_recovery_timeouts(sysfs).items()):
        if timeout < 15:
            out.append(("advice", "initiator: %s has replacement timeout %d s: a failover "
                        "longer than that fails I/O to the VMs" % (session, timeout)))
    return out
