"""The open-iscsi client model replayed on hand-made probe records (no lab needed)."""
from iscsi_ha_lab import client_model as cm


def _start(io_timeout):
    return {"kind": "start", "io_timeout": io_timeout}


def _io(t0, t1, status="good"):
    return {"kind": "write", "t_start": t0, "t_end": t1, "status": status}


def _conn(t0, t1, status="good"):
    return {"kind": "connect", "t_start": t0, "t_end": t1, "status": status}


SILENT = "login to 192.0.2.100:3260: no answer within 0.1 s"
REFUSED = "login to 192.0.2.100:3260: Connection refused"


def fast_records(silent_until, refused_until, served_at):
    """Good I/O until 10.0, the portal silent, then refusing, then serving at ``served_at``."""
    recs = [_start(0.1), _io(9.99, 10.0), _io(10.0, 10.1, SILENT.replace("login to", "write"))]
    t = 10.1
    while t < served_at:
        status = SILENT if t < silent_until else REFUSED if t < refused_until else "rejected"
        recs.append(_conn(t, t + (0.05 if status == SILENT else 0.001), status))
        t += 0.05 if status == SILENT else 0.002
    recs += [_conn(served_at, served_at + 0.003), _io(served_at + 0.003, served_at + 0.004)]
    return recs


def test_outage_states_come_from_the_fast_probe():
    outage = cm.outage_from(fast_records(10.3, 10.5, 10.6))
    assert outage.last_good == 10.0
    assert outage.served == 10.6
    assert outage.state_at(10.2) == cm.SILENT
    assert outage.state_at(10.4) == cm.REFUSED
    assert outage.state_at(10.7) == cm.SERVING
    assert abs(outage.answered_from() - 10.3) < 0.06


def test_no_failure_no_outage():
    assert cm.outage_from([_start(0.1), _io(1.0, 1.001), _io(1.001, 1.002)]) is None


def test_default_settings_wait_time2wait_after_a_reset():
    fast = fast_records(10.1, 10.1, 10.2)
    patient = [_start(30.0), _io(9.9, 10.0), _io(10.0, 10.15, "write: connection reset")]
    result = cm.model_report(fast, patient)
    default, advised = result["XCP-ng default"], result["advised"]
    assert default["detected_by"] == "connection reset"
    assert abs(default["pause_s"] - (0.15 + 2 + cm.LOGIN_TIME)) < 1e-6
    # no Time2Wait: the login retries while it is rejected, and is served at 10.2
    assert 0.2 <= advised["pause_s"] < 0.22


def test_reconnecting_into_silence_costs_a_syn_retransmission():
    # the old target reset the connection at 10.05, then nobody held the address until 10.1
    fast = fast_records(10.1, 10.1, 10.2)
    patient = [_start(30.0), _io(10.0, 10.05, "write: connection reset")]
    advised = cm.replay(cm.outage_from(fast, patient), cm.ADVISED)
    assert abs(advised["pause_s"] - (0.05 + cm.SYN_RTO + cm.LOGIN_TIME)) < 1e-6


def test_refused_reconnect_costs_three_seconds():
    # reset at 10.05, the address refuses until 12.5: with Time2Wait 2 the reconnect at 12.05
    # is refused and the next one comes 3 s later
    fast = fast_records(10.1, 12.5, 12.6)
    patient = [_start(30.0), _io(10.0, 10.05, "write: connection reset")]
    default = cm.replay(cm.outage_from(fast, patient), cm.XCPNG_DEFAULT)
    assert abs(default["pause_s"] - (0.05 + 2 + 3 + cm.LOGIN_TIME)) < 1e-6
    assert default["reconnect_attempts"] == 2


def test_silent_drop_is_found_by_a_retransmission_reaching_the_new_holder():
    # no patient probe: the command in flight is retransmitted at +0.2, +0.6, +1.4 s after
    # the send at 10.0; the address answers again from 10.5, so the one at 10.6 is reset
    fast = fast_records(10.5, 10.5, 10.5)
    result = cm.replay(cm.outage_from(fast), cm.ADVISED)
    assert result["detected_by"] == "retransmission reset"
    assert abs(result["detected_after_s"] - 0.6) < 1e-6


def test_acknowledged_command_without_answer_waits_for_nop_out():
    # the patient connection only timed out: nothing was left to retransmit, so even though
    # the new holder answers from 10.5, only the NOP-Out 1 s after the last answer is reset
    fast = fast_records(10.5, 10.5, 10.5)
    patient = [_start(30.0), _io(10.0, 40.0, SILENT.replace("login to", "write"))]
    result = cm.replay(cm.outage_from(fast, patient), cm.ADVISED)
    assert result["detected_by"] == "NOP-Out reset"
    assert abs(result["detected_after_s"] - 1.0) < 1e-6
    default = cm.replay(cm.outage_from(fast, patient), cm.XCPNG_DEFAULT)
    assert abs(default["pause_s"] - (5 + 2 + cm.LOGIN_TIME)) < 1e-6


def test_nop_out_finds_a_long_silence():
    fast = fast_records(40.0, 40.0, 40.0)
    patient = [_start(60.0), _io(10.0, 70.0, SILENT.replace("login to", "write"))]
    result = cm.replay(cm.outage_from(fast, patient), cm.XCPNG_DEFAULT)
    assert result["detected_by"] == "NOP-Out timeout"
    assert result["detected_after_s"] == 10.0
    # then Time2Wait 2 s and SYN retransmissions until the address answers at 40
    assert result["pause_s"] >= 30.0


def test_replacement_timeout_flags_io_errors():
    fast = fast_records(40.0, 40.0, 40.0)
    result = cm.replay(cm.outage_from(fast), cm.XCPNG_MULTIPATH)
    assert result["io_errors_to_vm"] is True
    assert cm.replay(cm.outage_from(fast), cm.XCPNG_DEFAULT)["io_errors_to_vm"] is False


def test_a_reset_after_silence_proves_the_address_was_held():
    # silent SYNs every 50 ms until the new holder serves at 10.6; the tickle reset the patient
    # connection at 10.58, between the last silent SYN (10.55) and the fast probe's login
    fast = fast_records(10.6, 10.6, 10.6)
    patient = [_start(30.0), _io(10.0, 10.58, "write: connection reset")]
    outage = cm.outage_from(fast, patient)
    assert outage.state_at(10.57) == cm.SILENT and outage.state_at(10.59) == cm.SERVING
    advised = cm.replay(outage, cm.ADVISED)
    assert advised["detected_by"] == "connection reset"
    assert abs(advised["pause_s"] - (0.58 + cm.LOGIN_TIME)) < 1e-6
