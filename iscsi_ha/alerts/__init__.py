"""Alerts by email and XAPI message (issue 6).

Wiring, for the agent::

    cache = OtherConfigCache.in_state_dir(config.STATE_DIR)
    client = XapiClient.from_config(config, cache=cache)
    dispatcher = build_dispatcher(config, client, cache)        # worker threads start here
    watcher = StatusAlerts(dispatcher, previous=load_previous(config.STATUS_FILE))
    ... after each pass, with the status document just published:
    watcher.observe(document)                                   # never blocks
    ... at exit:
    dispatcher.close(timeout=5); client.close()

Other events go straight to ``dispatcher.submit(events.pass_hung(...))`` and the like.
"""
import logging
import time

from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha.alerts import events
from iscsi_ha.alerts.email import EmailSender, Renderer
from iscsi_ha.alerts.queue import AlertDispatcher, XapiMessageSender
from iscsi_ha.files import read_json

log = logging.getLogger("iscsi-ha")

SHARED_REFRESH = 300.0        # seconds between reads of pool other-config for mail settings
SHARED_RETRY = 60.0           # after a failed read


class SharedParams(object):
    """Callable giving HA-Lizard's pool-wide settings: read from XAPI at most every
    SHARED_REFRESH seconds (which refreshes the cache), else from the local cache, so a slave
    can still mail with the pool's settings when the master is gone."""

    def __init__(self, cache, client=None, clock=time.monotonic):
        self.cache, self.client, self.clock = cache, client, clock
        self._next = None

    def __call__(self):
        now = self.clock()
        if self.client is not None and (self._next is None or now >= self._next):
            try:
                values = self.client.pool_other_config()
                if self.client.cache is not self.cache:
                    self.cache.store(values)
                self._next = now + SHARED_REFRESH
            except XapiError as exc:
                log.info("pool other-config unavailable (%s): using the cached copy", exc)
                self._next = now + SHARED_RETRY
        return self.cache.load()


def build_dispatcher(config, client=None, cache=None, start=True):
    """A dispatcher with an email sender (when MAIL_ON=1) and a XAPI message sender (when a
    client is given)."""
    renderer = Renderer.from_config(config)
    senders = []
    if config.MAIL_ON:
        shared = SharedParams(cache, client) if cache is not None else None
        senders.append(EmailSender(config, renderer, shared))
    if client is not None:
        senders.append(XapiMessageSender(client, renderer))
    return AlertDispatcher(config, senders, start=start)


def load_previous(path):
    """The status document a previous agent process left, or None."""
    try:
        document = read_json(path)
    except (IOError, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


REPLICATION_KINDS = {"drbd-disconnected": "link", "drbd-reconnected": "link",
                     "drbd-degraded": "redundancy", "drbd-recovered": "redundancy",
                     "resync-started": "resync", "resync-finished": "resync"}
OWED_KINDS = ("drbd-disconnected", "drbd-degraded", "resync-started")


def owns_replication_alerts(document):
    """Both hosts see the same replication link; only the storage primary (desired or actual)
    speaks about it, so that one event gives one email."""
    if document.get("desired_role") == "primary":
        return True
    if document.get("desired_role"):
        return False
    return any(s.get("role") == "Primary" for s in (document.get("drbd") or {}).values())


class StatusAlerts(object):
    """Compares each published status document with the one before and submits the alerts.

    With ``primary_only`` the replication alerts of a host that is not the storage primary are
    held back; the newest one still describing a problem is sent when the host becomes primary
    (a slave that takes over after a crash still reports the link it found down)."""

    def __init__(self, dispatcher, previous=None, primary_only=False):
        self.dispatcher = dispatcher
        self.previous = previous
        self.primary_only = primary_only
        self.owed = {}                     # (group, resource) -> the newest held-back alert

    def observe(self, document):
        try:
            found = events.alerts_for_transition(self.previous, document)
        except Exception:  # a malformed document must not stop the agent
            log.exception("cannot compare status documents for alerts")
            found = []
        self.previous = document
        found = self._filter(found, document)
        for alert in found:
            self.dispatcher.submit(alert, document)
        return found

    def _filter(self, found, document):
        if not self.primary_only:
            return found
        if not owns_replication_alerts(document):
            kept = []
            for alert in found:
                group = REPLICATION_KINDS.get(alert.kind)
                if group is None:
                    kept.append(alert)
                else:
                    self.owed[(group, alert.resource)] = alert
            return kept
        owed = [a for a in self.owed.values() if a.kind in OWED_KINDS]
        self.owed.clear()
        fresh = set((REPLICATION_KINDS.get(a.kind), a.resource) for a in found)
        return [a for a in owed if (REPLICATION_KINDS[a.kind], a.resource) not in fresh] + found
