"""The scenario kit's alert count: an alert belongs to the scenario in which its event was seen,
not to the one in which a late delivery (a sender backing off while XAPI was down) landed."""
import time

from iscsi_ha_lab.scenario_kit import alerts_of


def _stamp(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))


class _Pool(object):
    def __init__(self, messages):
        self._messages = messages

    def messages(self, name):
        return [m for m in self._messages if m["name"] == name]


class _Lab(object):
    def __init__(self, mail, messages):
        self._mail = mail
        self.xapi = type("X", (), {"pool": _Pool(messages)})()

    def mail(self):
        return self._mail


def _xapi(seen, delivered, kind="DRBD_DISCONNECTED"):
    body = "r0: link down\nHost: a. Event: x, severity 2.\nTime: %s\n" % _stamp(seen)
    return {"name": "ISCSI_HA_" + kind, "body": body,
            "timestamp": time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(delivered))}


def _mail(seen, delivered, kind="drbd-disconnected"):
    return {"alert": "%s; severity=2; resource=r0" % kind, "time": delivered,
            "body": "r0: link down\r\n\r\nTime:      %s\r\n" % _stamp(seen)}


def test_a_late_delivery_counts_where_its_event_was_seen():
    since = 1796298136.9
    lab = _Lab([_mail(since - 5, since - 4.9), _mail(since + 1, since + 9)],
               [_xapi(since - 5, since + 0.2), _xapi(since + 1, since + 9)])
    mail, messages = alerts_of(lab, "drbd-disconnected", since)
    assert [m["time"] for m in mail] == [since + 9]
    assert len(messages) == 1 and messages[0]["timestamp"] == _xapi(0, since + 9)["timestamp"]
    assert alerts_of(lab, "drbd-reconnected", since) == ([], [])


def test_without_a_time_line_the_delivery_time_counts():
    since = 1796298136.9
    lab = _Lab([{"alert": "drbd-disconnected; severity=2", "time": since - 3, "body": ""}],
               [{"name": "ISCSI_HA_DRBD_DISCONNECTED", "body": "old agent",
                 "timestamp": time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(since + 2))}])
    mail, messages = alerts_of(lab, "drbd-disconnected", since)
    assert mail == [] and len(messages) == 1
