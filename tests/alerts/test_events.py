"""alerts_for_transition: a table of (previous document, current document) -> expected alerts.

Documents are built with the keys of iscsi_ha/status.py (version 1); DRBD words are DRBD's own.
"""
import pytest

from iscsi_ha.alerts import events
from iscsi_ha.alerts.events import Alert, alerts_for_transition

UP = dict(role="Primary", peer_role="Secondary", connection="Connected", disk="UpToDate",
          peer_disk="UpToDate", sync_percent=None)
DOWN = dict(UP, peer_role="Unknown", connection="WFConnection", peer_disk="DUnknown")
STANDALONE = dict(DOWN, connection="StandAlone")
SYNC = dict(UP, connection="SyncSource", peer_disk="Inconsistent", sync_percent=12.5)
SYNC_LATER = dict(SYNC, sync_percent=80.0)
PEER_OUTDATED = dict(UP, peer_disk="Outdated")
DISKLESS = dict(UP, disk="Diskless")
SETTLED_PRIMARY = "no action: primary as expected (this host is pool master), target serving, " \
                  "floating IP local"


def doc(drbd=None, reason=SETTLED_PRIMARY, actions=(), healthy=True, desired="primary",
        last_actions=(), pid=100, started=1000.0, updated=2000.0, health="ok", **extra):
    document = {
        "version": 1, "hostname": "xcp-a", "updated": updated, "updated_iso": "x",
        "agent": {"pid": pid, "version": "0.1.0", "started": started},
        "pass": {"number": 1, "started": updated, "duration_s": 0.01, "trigger": "timer"},
        "pool": {"role": "master", "master_address": "", "detail": "master"},
        "manual_mode": "off", "desired_role": desired,
        "drbd": {"r0": dict(UP)} if drbd is None else drbd, "drbd_error": "",
        "target": {"running": True, "serving": True, "missing": [], "connections": 1,
                   "error": ""},
        "floating_ip": {"address": "192.0.2.3/24", "interface": "eth0", "local": True,
                        "error": ""},
        "decision": {"reason": reason, "healthy": healthy, "actions": list(actions)},
        "last_actions": [dict(a) for a in last_actions], "health": health, "problems": [],
    }
    document.update(extra)
    return document


def act(action, ok=True, at=1500.0, detail="", skipped=False, duration=0.25):
    return {"action": action, "ok": ok, "duration_s": duration, "detail": detail,
            "skipped": skipped, "at": at}


PROMOTED = (act("promote r0", duration=0.5), act("start target"), act("add floating IP"),
            act("announce floating IP"))


def blocked(kind, resource="", detail="", reason="refusing: something", waits=False,
            served=False):
    """Keys of a document whose typed verdict says blocked (what alerts read, never reason)."""
    blocker = {"kind": kind, "resource": resource, "detail": detail, "waits": waits}
    return dict(reason=reason, healthy=False, health="failed", verdict="blocked",
                blockers=[blocker], service={"must_serve": True, "unserved": not served,
                                             "blocked": not served, "blockers": [blocker]})


ACTING = dict(reason="promoting: this host is pool master", healthy=False,
              actions=["promote r0", "start target", "add floating IP", "announce floating IP"])

CASES = [
    # name, previous, current, expected [(kind, resource)]
    ("steady state says nothing", doc(), doc(), []),
    ("first document, all well", None, doc(), []),
    ("first document, link already down", None, doc({"r0": DOWN}),
     [("drbd-disconnected", "r0")]),
    ("link goes down", doc(), doc({"r0": DOWN}), [("drbd-disconnected", "r0")]),
    ("link stays down", doc({"r0": DOWN}), doc({"r0": DOWN}), []),
    ("down to standalone is still one outage", doc({"r0": DOWN}), doc({"r0": STANDALONE}), []),
    ("link comes back", doc({"r0": DOWN}), doc({"r0": UP}), [("drbd-reconnected", "r0")]),
    ("link back with a resync", doc({"r0": DOWN}), doc({"r0": SYNC}),
     [("drbd-reconnected", "r0"), ("resync-started", "r0")]),
    ("resync progress says nothing", doc({"r0": SYNC}), doc({"r0": SYNC_LATER}), []),
    ("resync ends", doc({"r0": SYNC_LATER}), doc({"r0": UP}), [("resync-finished", "r0")]),
    ("link lost during resync", doc({"r0": SYNC}), doc({"r0": DOWN}),
     [("drbd-disconnected", "r0")]),
    ("peer outdated while connected", doc(), doc({"r0": PEER_OUTDATED}),
     [("drbd-degraded", "r0")]),
    ("degraded stays degraded", doc({"r0": PEER_OUTDATED}), doc({"r0": PEER_OUTDATED}), []),
    ("degraded recovers without resync", doc({"r0": PEER_OUTDATED}), doc(),
     [("drbd-recovered", "r0")]),
    ("degraded ends through a resync", doc({"r0": PEER_OUTDATED}), doc({"r0": SYNC}),
     [("resync-started", "r0")]),
    ("local disk detached", doc(), doc({"r0": DISKLESS}), [("drbd-degraded", "r0")]),
    ("only the changed resource", doc({"r0": UP, "r1": UP}), doc({"r0": UP, "r1": DOWN}),
     [("drbd-disconnected", "r1")]),
    ("split brain flagged: one split-brain alert, no disconnected",
     doc(), doc({"r0": STANDALONE}, **blocked("split-brain", "r0", reason="holding: x")),
     [("split-brain", "r0"), ("service-blocked", "split-brain")]),
    ("split brain on a host that need not serve: no service-blocked",
     doc(), doc({"r0": STANDALONE}, **blocked("split-brain", "r0", served=True)),
     [("split-brain", "r0")]),
    ("split brain stays", doc({"r0": STANDALONE}, split_brain=["r0"]),
     doc({"r0": STANDALONE}, split_brain=["r0"]), []),
    ("split brain recovered, link back", doc({"r0": STANDALONE}, split_brain=["r0"]),
     doc({"r0": SYNC}, split_brain=[]), [("drbd-reconnected", "r0"), ("resync-started", "r0")]),
    ("promote fails", doc(**ACTING),
     doc(last_actions=[act("promote r0", ok=False, detail="State change failed: (-2) Need "
                           "access to UpToDate data"),
                       act("start target", ok=False, skipped=True,
                           detail="skipped: an earlier step failed")], **ACTING),
     [("promote-failed", "r0")]),
    ("same failed batch seen again says nothing",
     doc(last_actions=[act("demote r0", ok=False)]),
     doc(last_actions=[act("demote r0", ok=False)]), []),
    ("a new pass failing again is a new alert",
     doc(last_actions=[act("demote r0", ok=False)]),
     doc(last_actions=[act("demote r0", ok=False, at=1600.0)]), [("demote-failed", "r0")]),
    ("target start fails", doc(), doc(last_actions=[act("start target", ok=False)]),
     [("target-failed", "target")]),
    ("floating IP held by someone else", doc(),
     doc(last_actions=[act("add floating IP", ok=False, detail="floating IP 192.0.2.3 is in "
                           "use by 02:00:00:00:00:0b")]),
     [("floating-ip-taken", "192.0.2.3/24")]),
    ("floating IP removal fails", doc(),
     doc(last_actions=[act("remove floating IP", ok=False, detail="ip: exit 2")]),
     [("floating-ip-failed", "192.0.2.3/24")]),
    ("role change done after promotion", doc(**ACTING), doc(last_actions=PROMOTED),
     [("role-change-done", "")]),
    ("settled twice says nothing", doc(last_actions=PROMOTED), doc(last_actions=PROMOTED), []),
    ("demotion done", doc(reason="demoting: slave", healthy=False, desired="secondary",
                          actions=["stop target", "demote r0"]),
     doc(reason="no action: secondary as expected", desired="secondary",
         last_actions=[act("stop target"), act("demote r0")]), [("role-change-done", "")]),
    ("target restarted, no role change", doc(reason="starting target: master", healthy=False,
                                             actions=["start target"]),
     doc(last_actions=[act("start target")]), [("service-restored", "")]),
    ("refusing to promote", doc(**ACTING),
     doc(**blocked("no-uptodate-data", "r0")), [("service-blocked", "no-uptodate-data")]),
    ("still refusing, same blocker, other words", doc(**blocked("standalone", "r0", "x")),
     doc(**blocked("standalone", "r0", "y")), []),
    ("blocker changes: a new alert", doc(**blocked("peer-primary", "r0", waits=True)),
     doc(**blocked("no-uptodate-data", "r0")), [("service-blocked", "no-uptodate-data")]),
    ("a wait not yet past the bound says nothing", doc(),
     doc(**dict(blocked("peer-primary", "r0", waits=True),
                service={"must_serve": True, "unserved": True, "blocked": False})), []),
    ("a reason sentence alone is never read", doc(**ACTING),
     doc(reason="refusing: x", healthy=False, health="failed"), []),
    ("blocked then fine without actions", doc(drbd={}, **blocked("drbd-unreadable")),
     doc(), [("service-restored", "")]),
    ("agent restarted", doc(pid=100), doc(pid=200, started=3000.0), [("agent-restarted", "")]),
    ("agent restarted while the link stays down", doc({"r0": DOWN}, pid=100),
     doc({"r0": DOWN}, pid=200, started=3000.0), [("agent-restarted", "")]),
]


@pytest.mark.parametrize("previous, current, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_transition_table(previous, current, expected):
    found = alerts_for_transition(previous, current)
    assert [(a.kind, a.resource) for a in found] == expected
    for alert in found:
        assert alert.severity == events.KINDS[alert.kind]
        assert alert.summary


def test_role_change_carries_timings():
    (alert,) = alerts_for_transition(doc(**ACTING), doc(last_actions=PROMOTED, updated=1502.0))
    assert alert.details["took_s"] == 2.0
    assert "promote r0 0.500 s" in alert.details["actions"]
    assert alert.severity == events.SERVICE_RECOVERED


def test_failure_severity_follows_halizard_errors_and_recoveries():
    (failed,) = alerts_for_transition(doc(), doc(last_actions=[act("promote r0", ok=False)]))
    (back,) = alerts_for_transition(doc({"r0": DOWN}), doc())
    assert failed.severity == 1 and back.severity == 4


def test_link_flap_sequence_gives_one_alert_per_edge():
    states = [UP, UP, DOWN, DOWN, STANDALONE, DOWN, SYNC, SYNC_LATER, UP, UP]
    documents = [doc({"r0": s}) for s in states]
    kinds = [a.kind for p, c in zip([None] + documents, documents)
             for a in alerts_for_transition(p, c)]
    assert kinds == ["drbd-disconnected", "drbd-reconnected", "resync-started",
                     "resync-finished"]


def test_alert_validation():
    with pytest.raises(ValueError):
        Alert("no-such-kind", 1)
    with pytest.raises(ValueError):
        Alert("test", 9)
    assert events.make("test").key == ("test", "")
    assert events.pass_hung(31.0, ["7 drbdadm"]).kind == "pass-hung"
    assert events.sr_replug_failed("sr", "HOST_OFFLINE").resource == "sr"


def test_mediator_deposed_alert_only_for_a_primary():
    """A Secondary back after a failover is outdated at the mediator (deposed in its witness
    view) until it resynced: no 'deposed: demoting' alert for it; a Primary gets one, once."""
    from iscsi_ha.alerts.events import alerts_for_transition

    def doc(role, deposed):
        return {"drbd": {"iscsi1": {"role": role}},
                "witness": {"reachable": True, "deposed": deposed, "primary": "a",
                            "generation": 6, "address": "m:7790"}}

    def kinds(previous, current):
        return [a.kind for a in alerts_for_transition(previous, current)
                if a.kind.startswith("mediator")]
    assert kinds(None, doc("Secondary", True)) == []
    assert kinds(doc("Secondary", False), doc("Secondary", True)) == []
    assert kinds(doc("Primary", False), doc("Primary", True)) == ["mediator-deposed"]
    assert kinds(doc("Primary", True), doc("Primary", True)) == []
