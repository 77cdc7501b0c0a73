"""Only the storage primary speaks about the shared replication link; a slave that takes over
still reports the link it found down."""
from iscsi_ha.alerts import StatusAlerts, owns_replication_alerts


class Recorder(object):
    def __init__(self):
        self.sent = []

    def submit(self, alert, status=None):
        self.sent.append(alert.kind)


def doc(desired, connection="Connected", role="Secondary", peer_disk="UpToDate"):
    return {"desired_role": desired, "hostname": "h", "pool": {"role": "slave"},
            "agent": {"pid": 1, "started": 1.0}, "decision": {"reason": "no action: x",
                                                              "healthy": True},
            "health": "ok", "last_actions": [], "split_brain": [],
            "drbd": {"iscsi1": {"role": role, "peer_role": "Unknown", "connection": connection,
                                "disk": "UpToDate", "peer_disk": peer_disk,
                                "sync_percent": None}}}


def test_ownership():
    assert owns_replication_alerts(doc("primary"))
    assert not owns_replication_alerts(doc("secondary", role="Primary"))
    assert owns_replication_alerts(doc("", role="Primary"))
    assert not owns_replication_alerts(doc(""))


def test_secondary_holds_link_alerts_back():
    out = Recorder()
    alerts = StatusAlerts(out, previous=doc("secondary"), primary_only=True)
    alerts.observe(doc("secondary", "WFConnection", peer_disk="DUnknown"))
    alerts.observe(doc("secondary", "Connected"))
    assert out.sent == []


def test_primary_reports_link_down_and_up_once():
    out = Recorder()
    alerts = StatusAlerts(out, previous=doc("primary", role="Primary"), primary_only=True)
    alerts.observe(doc("primary", "WFConnection", role="Primary", peer_disk="DUnknown"))
    alerts.observe(doc("primary", "WFConnection", role="Primary", peer_disk="DUnknown"))
    alerts.observe(doc("primary", "Connected", role="Primary"))
    assert out.sent.count("drbd-disconnected") == 1
    assert out.sent.count("drbd-reconnected") == 1


def test_slave_that_takes_over_reports_the_link_it_found_down():
    out = Recorder()
    alerts = StatusAlerts(out, previous=doc("secondary"), primary_only=True)
    alerts.observe(doc("secondary", "WFConnection", peer_disk="DUnknown"))
    assert "drbd-disconnected" not in out.sent
    alerts.observe(doc("primary", "WFConnection", role="Primary", peer_disk="DUnknown"))
    assert out.sent.count("drbd-disconnected") == 1


def test_without_primary_only_both_hosts_speak():
    out = Recorder()
    alerts = StatusAlerts(out, previous=doc("secondary"))
    alerts.observe(doc("secondary", "WFConnection", peer_disk="DUnknown"))
    assert "drbd-disconnected" in out.sent
