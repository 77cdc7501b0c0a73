"""Every file iscsi-ha keeps, by its name, derived from the configuration (STATE_DIR,
LOCK_FALLBACK_DIR, MEDIATOR_DIR, MANUAL_FILE). Whoever reads or writes one (the agent, iscsi-cfg,
the watchdog, DRBD's handlers) asks here, so each name is written once.

STATE_DIR:
  lock                      the pass lock (:mod:`iscsi_ha.passlock`)
  split-brain-RES           DRBD's split-brain handler's flag (:mod:`iscsi_ha.splitbrain_report`)
  fencing-proof.json        fencing verified on both hosts (:mod:`iscsi_ha.fencing`)
  self-fenced               resources this host self-fenced
  promote-grant-RES         the agent's promotion grant for the fence-peer handler
  forced-promotion.json     the admin's confirmed become-primary --force
  fence-peer-RES.json       the fence-peer handler's last run
  stopped-by-admin          the init script's stop record (:mod:`iscsi_ha.service`)
  watchdog.json             the watchdog's restart record (unless WATCHDOG_STATE_FILE)
  traces/                   full traces of unexpected errors (:mod:`iscsi_ha.errors`)
  pool-other-config.json    the slave's copy of pool other-config (:mod:`iscsi_ha.adapters.xapi`)
LOCK_FALLBACK_DIR: lock and status, when STATE_DIR cannot hold them.
MEDIATOR_DIR: ca.pem, cert.pem, key.pem (the credential), state.json (highest generation seen),
  grant.json (the last grant, persisted before DRBD is promoted).
MANUAL_FILE.changed: when and by whom manual mode was last changed here.
"""
import os

LOCK = "lock"
SPLIT_BRAIN_PREFIX = "split-brain-"
FENCING_PROOF = "fencing-proof.json"
SELF_FENCED = "self-fenced"
PROMOTE_GRANT_PREFIX = "promote-grant-"
FORCED_PROMOTION = "forced-promotion.json"
FENCE_RECORD_PREFIX = "fence-peer-"
ADMIN_STOP = "stopped-by-admin"
WATCHDOG_STATE = "watchdog.json"
TRACES = "traces"
OTHER_CONFIG_CACHE = "pool-other-config.json"
STATUS_COPY = "status"
MEDIATOR_CREDENTIAL = ("ca.pem", "cert.pem", "key.pem")


def pass_lock(config):
    """(STATE_DIR/lock, LOCK_FALLBACK_DIR/lock)."""
    return (os.path.join(config.STATE_DIR, LOCK),
            os.path.join(config.LOCK_FALLBACK_DIR, LOCK))


def status_copy(config):
    """LOCK_FALLBACK_DIR/status ('' when there is no fallback directory)."""
    fallback = getattr(config, "LOCK_FALLBACK_DIR", "")
    return os.path.join(fallback, STATUS_COPY) if fallback else ""


def split_brain_flag(state_dir, resource):
    return os.path.join(state_dir, SPLIT_BRAIN_PREFIX + resource)


def fencing_proof(state_dir):
    return os.path.join(state_dir, FENCING_PROOF)


def self_fenced(state_dir):
    return os.path.join(state_dir, SELF_FENCED)


def promote_grant(state_dir, resource):
    return os.path.join(state_dir, PROMOTE_GRANT_PREFIX + resource)


def forced_promotion(state_dir):
    return os.path.join(state_dir, FORCED_PROMOTION)


def fence_record(state_dir, resource):
    return os.path.join(state_dir, FENCE_RECORD_PREFIX + resource + ".json")


def admin_stop(state_dir):
    return os.path.join(state_dir, ADMIN_STOP)


def watchdog_state(state_dir):
    return os.path.join(state_dir, WATCHDOG_STATE)


def traces(state_dir):
    return os.path.join(state_dir, TRACES)


def other_config_cache(state_dir):
    return os.path.join(state_dir, OTHER_CONFIG_CACHE)


def manual_changed(manual_file):
    return manual_file + ".changed"


def mediator_credential(mediator_dir):
    """(ca.pem, cert.pem, key.pem) paths."""
    return tuple(os.path.join(mediator_dir, name) for name in MEDIATOR_CREDENTIAL)


def mediator_state(mediator_dir):
    return os.path.join(mediator_dir, "state.json")


def mediator_grant(mediator_dir):
    return os.path.join(mediator_dir, "grant.json")
