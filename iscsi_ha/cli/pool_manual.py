"""Manual mode in the pool database, as HA-Lizard keeps it: pool other-config ``MANUAL_MODE`` =
``<host uuid>=enable|primary|secondary[,<host uuid>=...]`` (a host without an entry is not in
manual mode). The local file is what the agent obeys; the pool record lets the peer see it and
lets a reinstalled host get it back (:func:`restore_local`).

When and by whom each host's entry was last set is kept beside it, in other-config
``MANUAL_MODE_CHANGED`` = ``<host uuid>=<enable|primary|secondary|off>;<epoch>;<user@host>,...``
(HA-Lizard ignores the key). The newer of the local change (the manual file's change record) and
the pool's wins; a local change that could not be published (XAPI unreachable) is pushed when
XAPI answers again (:func:`reconcile`, :class:`RecordSync`), never overwritten by the older
record.
"""
import collections
import logging
import threading
import time

from iscsi_ha import model
from iscsi_ha.adapters import manual as manual_adapter
from iscsi_ha.adapters.xapi import XapiError

log = logging.getLogger("iscsi-ha")

KEY = "MANUAL_MODE"
CHANGED_KEY = "MANUAL_MODE_CHANGED"
SYNC_INTERVAL = 30.0          # seconds between tries to publish a pending local change
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


def _clean(text):
    return "".join(c for c in str(text) if c not in ",;=\n")[:80] or "?"


def parse_changes(value):
    """``MANUAL_MODE_CHANGED`` -> {uuid: (word or 'off', epoch, by)}; bad items skipped."""
    found = {}
    for item in (value or "").split(","):
        uuid, sep, rest = item.strip().partition("=")
        parts = rest.split(";")
        if not sep or len(parts) != 3 or not (parts[0] in FROM_POOL or parts[0] == "off"):
            continue
        try:
            found[uuid.strip()] = (parts[0], float(parts[1]), parts[2])
        except ValueError:
            continue
    return found


def with_change(value, uuid, mode, at, by):
    changes = parse_changes(value)
    changes[uuid] = (TO_POOL.get(mode, "off"), float(at), _clean(by))
    return ",".join("%s=%s;%.3f;%s" % (u, w, a, b) for u, (w, a, b) in sorted(changes.items()))


def pool_entry(other_config, uuid):
    """(mode, at, by) the pool holds for ``uuid``; at is 0.0 when no change time is known (a
    record written by HA-Lizard or an older agent)."""
    word = parse(other_config.get(KEY, "")).get(uuid)
    mode = FROM_POOL[word] if word else model.MANUAL_OFF
    change = parse_changes(other_config.get(CHANGED_KEY, "")).get(uuid)
    if change is not None and change[0] == (word or "off"):
        return mode, change[1], change[2]
    return mode, 0.0, ""


def read_inventory_uuid(path):
    """INSTALLATION_UUID from an xensource-inventory file (``KEY='value'`` lines), or None."""
    try:
        with open(path) as handle:
            lines = handle.read(65536).splitlines()
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
    """Write this host's entry for local ``mode`` into the pool record, with when and by whom
    (the local change record when it describes ``mode``). Returns a sentence; raises
    :class:`PoolRecordError` when XAPI cannot be used (the local switch stands, and the agent
    pushes it when XAPI answers again)."""
    change = manual_adapter.read_change(ctx.config.MANUAL_FILE)
    if change is None or change["mode"] != mode:
        change = {"at": time.time(), "by": manual_adapter.who_am_i()}
    xapi = ctx.xapi()
    try:
        uuid = host_uuid(ctx, xapi)
        # Both hosts rewrite the one shared value (a switchover does it at the same moment):
        # read it back and try again until this host's entry survived (bounded).
        for _ in range(PUBLISH_ATTEMPTS):
            other = xapi.pool_other_config()
            current, changed = other.get(KEY, ""), other.get(CHANGED_KEY, "")
            wanted = with_entry(current, uuid, mode)
            wanted_changed = with_change(changed, uuid, mode, change["at"], change["by"])
            if wanted == current and pool_entry(other, uuid)[1] == round(change["at"], 3):
                _mark(ctx, change)
                return "pool record %s=%s" % (KEY, wanted or '""')
            if wanted != current:
                xapi.set_pool_other_config_key(KEY, wanted)
            if wanted_changed != changed:
                xapi.set_pool_other_config_key(CHANGED_KEY, wanted_changed)
            ctx.sleep(0.05)
        raise PoolRecordError("the pool record (other-config %s) kept changing under this host "
                              "(%d attempts)" % (KEY, PUBLISH_ATTEMPTS))
    except XapiError as exc:
        raise PoolRecordError("the pool record (other-config %s) could not be updated: %s"
                              % (KEY, exc))
    finally:
        xapi.close()


def _mark(ctx, change):
    if "mode" in change:
        try:
            manual_adapter.mark_published(ctx.config.MANUAL_FILE, change["at"])
        except (OSError, IOError) as exc:
            log.warning("manual mode: cannot mark the change as published: %s", exc)


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
    """At agent start: reconcile the local manual file and the pool record (see
    :func:`reconcile`). Returns the mode written locally, or None."""
    return reconcile(ctx)


def reconcile(ctx):
    """The newer of the local change and the pool's entry for this host wins:
      * a local change not yet in the pool record (made while XAPI was unreachable), as new as
        the record or newer, is pushed to it;
      * a pool entry newer than the local change is written locally (under the pass lock);
      * no local file and no local change record (a reinstalled host), and the pool has an
        entry of unknown age (HA-Lizard's record): restored, as HA-Lizard's init script did.
    Returns the mode written locally or None. XAPI errors are logged and ignored."""
    local = ctx.manual_mode()
    change = manual_adapter.read_change(ctx.config.MANUAL_FILE)
    local_at = change["at"] if change is not None else 0.0
    xapi = ctx.xapi()
    try:
        uuid = host_uuid(ctx, xapi)
        pool_mode, pool_at, pool_by = pool_entry(xapi.pool_other_config(), uuid)
    except XapiError as exc:
        log.warning("manual mode: cannot read the pool record: %s", exc)
        return None
    finally:
        xapi.close()
    if change is not None and not change.get("published") and local_at >= pool_at:
        if pool_mode != local or pool_at != round(local_at, 3):
            try:
                log.info("manual mode: pushing the local change (%s at %.0f by %s) to the pool "
                         "record, which said %s", local, local_at, change.get("by"), pool_mode)
                publish(ctx, local)
            except PoolRecordError as exc:
                log.warning("manual mode: %s; trying again later", exc)
        else:
            _mark(ctx, change)
        return None
    newer = pool_at > local_at and pool_mode != local
    legacy = (change is None and local == model.MANUAL_OFF and pool_at == 0.0
              and pool_mode != model.MANUAL_OFF)
    if not (newer or legacy):
        return None
    with ctx.pass_lock():
        if ctx.manual_mode() != local:
            return None                  # changed meanwhile by the admin: theirs stands
        manual_adapter.write_manual(ctx.config.MANUAL_FILE, pool_mode,
                                    by=pool_by or "the pool record", at=pool_at or None,
                                    published=True)
    log.info("manual mode set from the pool record (%s, set %s by %s): %s", KEY,
             "at %.0f" % pool_at if pool_at else "at an unknown time", pool_by or "?",
             pool_mode)
    return pool_mode


def pending(ctx):
    """A local change the pool record does not have yet, or None."""
    change = manual_adapter.read_change(ctx.config.MANUAL_FILE)
    return change if change is not None and not change.get("published") else None


class RecordSync(threading.Thread):
    """In the daemon: every SYNC_INTERVAL seconds, when a local change is not yet in the pool
    record, reconcile (pushes it once XAPI answers). Never raises; bounded by XAPI_TIMEOUT."""

    def __init__(self, make_ctx, interval=SYNC_INTERVAL):
        threading.Thread.__init__(self, name="manual-record-sync")
        self.daemon = True
        self.make_ctx, self.interval = make_ctx, interval
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            self.once()

    def once(self):
        ctx = None
        try:
            ctx = self.make_ctx()
            if pending(ctx) is not None:
                reconcile(ctx)
        except Exception as exc:  # never ends the daemon
            log.warning("manual mode: pool record sync failed: %s", exc)
        finally:
            if ctx is not None:
                try:
                    ctx.close()
                except Exception:
                    pass

    def close(self, timeout=2):
        self.stop.set()
        self.join(timeout)
