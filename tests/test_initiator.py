"""The dom0 initiator's settings: parsing iscsid.conf, the failover cost, the advice."""
from iscsi_ha import initiator

DEFAULT_CONF = """# open-iscsi's shipped file, shortened
node.session.timeo.replacement_timeout = 144
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
#node.session.iscsi.DefaultTime2Wait = 0
"""
ADVISED_CONF = DEFAULT_CONF + """node.session.iscsi.DefaultTime2Wait = 0
node.conn[0].timeo.noop_out_interval = 1
node.conn[0].timeo.noop_out_timeout = 1
"""


def test_parse_reads_set_keys_only():
    found = initiator.parse_iscsid_conf(DEFAULT_CONF)
    assert found == {initiator.REPLACEMENT: 144, initiator.LOGIN_TIMEOUT: 15,
                     initiator.NOOP_INTERVAL: 5, initiator.NOOP_TIMEOUT: 5}


def test_defaults_cost_seconds_and_advice_names_the_keys(tmp_path):
    conf = tmp_path / "iscsid.conf"
    conf.write_text(DEFAULT_CONF)
    found = initiator.findings(str(conf), target_time2wait=2, sysfs=str(tmp_path / "none"))
    text = "\n".join(s for _, s in found)
    assert "DefaultTime2Wait=2 (default)" in text and "replacement_timeout=144" in text
    assert "about 2.5 s (planned move) and 3.4 s (crash)" in text
    advice = [s for k, s in found if k == "advice"]
    assert len(advice) == 1
    assert "node.session.iscsi.DefaultTime2Wait = 0" in advice[0]
    assert "ISCSI_TARGET_PARAMS=DefaultTime2Wait=0" in advice[0]
    assert "about 0.5 s planned" in advice[0]


def test_advised_settings_need_no_advice(tmp_path):
    conf = tmp_path / "iscsid.conf"
    conf.write_text(ADVISED_CONF)
    found = initiator.findings(str(conf), target_time2wait=0, sysfs=str(tmp_path / "none"))
    assert [k for k, _ in found if k == "advice"] == []
    assert ("ok", "initiator: settings give a sub-second pause in a planned move") in found


def test_target_time2wait_wins_when_larger(tmp_path):
    conf = tmp_path / "iscsid.conf"
    conf.write_text(ADVISED_CONF)
    planned, _ = initiator.failover_cost(initiator.read_settings(str(conf))[0], 2)
    assert planned == 2.5


def test_missing_file_assumes_defaults(tmp_path):
    found = initiator.findings(str(tmp_path / "missing.conf"), 2, sysfs=str(tmp_path))
    assert found[0][0] == "info" and "open-iscsi's defaults assumed" in found[0][1]


def test_short_session_replacement_timeout_is_flagged(tmp_path):
    session = tmp_path / "sys" / "session3"
    session.mkdir(parents=True)
    (session / "recovery_tmo").write_text("5\n")
    conf = tmp_path / "iscsid.conf"
    conf.write_text(ADVISED_CONF)
    found = initiator.findings(str(conf), 0, sysfs=str(tmp_path / "sys"))
    assert any("session3 has replacement timeout 5 s" in s for _, s in found)
