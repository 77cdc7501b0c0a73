"""Manual mode in the pool database, as HA-Lizard keeps it: pool other-config ``MANUAL_MODE`` =
``<host uuid>=enable|primary|secondary[,<host uuid>=...]`` (a host without an entry is not in
manual mode). The local file is what the agent obeys; the pool record lets the peer see it and
lets a reinstalled host get it back (:func:`restore_local`).
"""
import collections
import logging
import threading

from iscsi_ha import files, model
from iscsi_ha.adapters.xapi import XapiError

log = logging.getLogger("iscsi-ha")

KEY = "MANUAL_MODE"
PUBLISH_ATTEMPTS = 5
TO_POOL = {model.MANUAL_HOLD: "enable", model.MANUAL_PRIMARY: "primary",
           model.MANUAL_SECONDARY: "secondary"}
FROM_POOL = dict((word, mode) for mode, word in TO_POOL.items())


class PoolRecordError(Exception):
    """The pool record could not be read or written; the message says why."""


def parse(value):
    """``"u1=enable,u2=primary"`` -> OrderedDict(u1: 'enable', u2: 'primary'); words outside
    enable/primary/secondary and malformed items are skipped (HA-Lizard matched by pattern)."""
    entries = collections.OrderedDict()
    for item in (value or "").split(","):
        uuid, sep, word = item.strip().partition("=")
        if sep and uuid.strip() and word.strip() in FROM_POOL:
            entries[uuid.strip()] = word.strip()
    return entries


def render(entries):
    return ",".join("%s=%s" % item for item in entries.items())


def with_entry(value, uuid, mode):
    """The record with this host's entry set to local ``mode`` (MANUAL_OFF removes it)."""
    entries = parse(value)
    if mode == model.MANUAL_OFF:
        entries.pop(uuid, None)
    else:
        entries[uuid] = TO_POOL[mode]
    return render(entries)


def read_inventory_uuid(path):
    """INSTALLATION_UUID from an xensource-inventory file (``KEY='value'`` lines), or None."""
    try:
        lines = files.read_text(path, files.SMALL_LIMIT).splitlines()
    except (OSError, IOError):
        return None
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "INSTALLATION_UUID":
            return value.strip().strip("'\"") or None
    return None


def host_uuid(ctx, xapi):
    """This host's uuid: the inventory file, else ``host.get_uuid`` of XAPI's this host."""
    uuid = read_inventory_uuid(ctx.inventory)
    if uuid:
        return uuid
    return xapi.call("host.get_uuid", xapi.this_host())


def publish(ctx, mode):
    """Write this host's entry for local ``mode`` into the pool record. Returns a sentence;
    raises :class:`PoolRecordError` when XAPI cannot be used (the local switch stands)."""
    xapi = ctx.xapi()
    try:
        uuid = host_uuid(ctx, xapi)
        # Both hosts rewrite the one shared value (a switchover does it at the same moment):
        # read it back and try again until this host's entry survived (bounded).
        for _ in range(PUBLISH_ATTEMPTS):
            current = xapi.pool_other_config().get(KEY, "")
            wanted = with_entry(current, uuid, mode)
            if wanted == current:
                return "pool record %s=%s" % (KEY, wanted or '""')
            xapi.set_pool_other_config_key(KEY, wanted)
            ctx.sleep(0.05)
        raise PoolRecordError("the pool record (other-config %s) kept changing under this host "
                              "(%d attempts)" % (KEY, PUBLISH_ATTEMPTS))
    except XapiError as exc:
        raise PoolRecordError("the pool record (other-config %s) could not be updated: %s"
                              % (KEY, exc))
    finally:
        xapi.close()


def publish_and_say(ctx, mode):
    """:func:`publish`, saying what happened; returns True when the pool record is current."""
    try:
        ctx.say(publish(ctx, mode))
        return True
    except PoolRecordError as exc:
        ctx.say("warning: %s; the local manual mode file is in effect" % exc)
        return False


class Publisher(threading.Thread):
    """:func:`publish` in the background, so that a role change never waits on XAPI."""

    def __init__(self, ctx, mode):
        threading.Thread.__init__(self, name="pool-record")
        self.daemon = True
        self.ctx, self.mode = ctx, mode
        self.message = None

    def run(self):
        try:
            self.message = publish(self.ctx, self.mode)
        except PoolRecordError as exc:
            self.message = "warning: %s; the local manual mode file is in effect" % exc

    def finish(self):
        """Wait (bounded: every XAPI call has a timeout) and say the outcome."""
        self.join(8 * self.ctx.config.XAPI_TIMEOUT + 1)
        self.ctx.say(self.message or "warning: the pool record (other-config %s) is still being "
                     "updated; the local manual mode file is in effect" % KEY)


def restore_local(ctx):
    """At agent start: when the local manual file is absent and the pool record has an entry
    for this host, write the file from it (what HA-Lizard's init script did). Returns the mode
    written or None. XAPI errors are logged and ignored."""
    if ctx.manual_mode() != model.MANUAL_OFF:
        return None
    xapi = ctx.xapi()
    try:
        uuid = host_uuid(ctx, xapi)
        word = parse(xapi.pool_other_config().get(KEY, "")).get(uuid)
    except XapiError as exc:
        log.warning("manual mode: cannot read the pool record: %s", exc)
        return None
    finally:
        xapi.close()
    if word is None:
        return None
    mode = FROM_POOL[word]
    with ctx.pass_lock():
        if ctx.manual_mode() == model.MANUAL_OFF:
            ctx.write_manual(mode)
    log.info("manual mode restored from the pool record: %s", mode)
    return mode
