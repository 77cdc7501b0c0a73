"""The pass lock (iscsi_ha.passlock): every user locks the same file, the fallback included,
with real flocks on real files: the daemon's loop, `iscsi-ha once`, the iscsi-cfg role verbs,
split-brain recovery and the init script's demote-stop."""
import os

import pytest

from iscsi_ha import config as config_mod
from iscsi_ha import model, service, splitbrain
from iscsi_ha.cli.context import HostContext, CliError
from iscsi_ha.passlock import PassLock, PassLockBusy, lock_paths
from iscsi_ha.watchdog import Settings


def _config(tmp_path, state):
    pool = tmp_path / "pool.conf"
    pool.write_text("master")
    return config_mod.loads("\n".join([
        "POOL_CONF=%s" % pool, "STATE_DIR=%s" % state, "MANUAL_FILE=%s" % (tmp_path / "manual"),
        "LOCK_FALLBACK_DIR=%s" % (tmp_path / "run"), "SYSLOG_SOCKET=", ""]), "test.conf")


def _unusable_state_lock(tmp_path):
    """A STATE_DIR whose lock file cannot be opened (a directory in its place; a read-only or
    full state directory fails the same open)."""
    (tmp_path / "state" / "lock").mkdir(parents=True)


@pytest.fixture(params=["state dir", "fallback"])
def config(request, tmp_path):
    if request.param == "fallback":
        _unusable_state_lock(tmp_path)
    return _config(tmp_path, tmp_path / "state")


def _everyone_else_is_refused(config):
    ctx = HostContext(config)
    with pytest.raises(CliError, match="held .* for more than"):
        with ctx.pass_lock(timeout=0.1):
            pass
    with pytest.raises(splitbrain.SplitBrainRefused, match="stayed busy"):
        with splitbrain._pass_lock(config, wait=0.1):
            pass
    with pytest.raises(PassLockBusy):
        service._write_manual_locked(Settings.from_config(config), model.MANUAL_SECONDARY,
                                     wait=0.1)
    assert not os.path.exists(config.MANUAL_FILE)


def test_every_user_waits_for_the_lock_the_loop_holds(config):
    with PassLock.of(config, timeout=1) as held:
        expected = lock_paths(config)[0 if held.used == lock_paths(config)[0] else 1]
        assert held.used == expected
        assert bool(held.problem) == (expected != lock_paths(config)[0])
        _everyone_else_is_refused(config)
    with HostContext(config).pass_lock(timeout=0.1):          # free again: had at once
        with pytest.raises(PassLockBusy):
            with PassLock.of(config, timeout=0.1):
                pass


def test_the_fallback_is_used_when_the_state_dir_cannot_hold_the_lock(tmp_path):
    _unusable_state_lock(tmp_path)
    config = _config(tmp_path, tmp_path / "state")
    with PassLock.of(config, timeout=1) as held:
        assert held.used == os.path.join(str(tmp_path / "run"), "lock")
        assert "cannot use the pass lock" in held.problem


def test_a_busy_wait_is_bounded_by_its_timeout(tmp_path):
    config = _config(tmp_path, tmp_path / "state")
    now = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds
    with PassLock.of(config):
        with pytest.raises(PassLockBusy, match="held by another process"):
            PassLock.of(config, timeout=1.0, poll=0.25, clock=lambda: now[0],
                        sleep=sleep).acquire()
    assert sum(sleeps) == pytest.approx(1.0) and len(sleeps) == 4
