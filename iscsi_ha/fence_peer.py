"""DRBD's fence-peer (and unfence) handler for iscsi-ha: ``scripts/drbd-fence-peer``, installed
as /usr/libexec/iscsi-ha/drbd-fence-peer (and drbd-unfence-peer), for DRBD 8.4 and 9::

    # 8.4                                           # 9
    disk { fencing resource-and-stonith; }          net { fencing resource-and-stonith; }
    handlers {                                      handlers {
      fence-peer "/usr/libexec/iscsi-ha/drbd-fence-peer";          (same)
      after-resync-target                             unfence-peer
        "/usr/libexec/iscsi-ha/drbd-unfence-peer";      "/usr/libexec/iscsi-ha/drbd-unfence-peer";
    }                                               }

DRBD freezes the Primary's I/O when it loses its peer and runs this handler (through drbdadm,
with DRBD_RESOURCE etc. in the environment). The handler outdates the peer over a path that
does not use the replication link: the pool's management network, through the iscsi-ha XAPI
plugin on the peer (``outdate``), which runs ``drbdadm outdate RES`` there. Exit codes, as DRBD's
``conn_try_outdate_peer()`` (drbd_nl.c) reads them:

- 4: the peer is now Outdated: DRBD resumes I/O here.
- 3: the peer's disk is Inconsistent or worse (its drbdadm outdate exited 5).
- 6: the peer is Primary (its drbdadm outdate exited 17): DRBD outdates this host instead.
- 7: only while the agent promotes this host after decide() proved it safe (a fresh promotion
  grant in STATE_DIR, see :mod:`iscsi_ha.fencing`) and the peer is unreachable: the peer runs
  resource-and-stonith with this handler, so it holds no write this host lacks and stays frozen.
  With a grant, an attempt that shows the peer cannot be asked now ends the attempts at once
  instead of after FENCE_PEER_TIMEOUT: ``HOST_OFFLINE`` (XAPI itself holds the peer host not
  live, e.g. after pool HA declared it dead) or this host's xapi refusing connections (it
  restarts for ten seconds and more when this host has just become pool master, the very
  moment the agent promotes after a master crash). Before that restart the local xapi is
  still the slave of the dead master, and a slave's Unix-socket login needs its master, so
  every call hangs: with a grant, the handler first asks the local xapi for a login within
  GRANT_PROBE_TIMEOUT (:func:`local_xapi_stuck`); no answer (or a refusal) ends the attempts
  at once too. Before even that, a pool.conf that turned ``master`` less than MASTER_FUSE s
  ago (:func:`new_master_fuse`) says the same without the wait: xapi restarts that long after
  writing it, and until then it is the dead master's slave. A working local xapi logs in
  within milliseconds; a busy one that misses the bound only costs the peer's Outdated mark,
  never safety: the exit code is the 7 the timeout would give, and the grant's proof (fencing
  verified on both hosts, this disk UpToDate when the link was lost) does not depend on the
  peer's answer, since a peer that lost this host froze its I/O (resource-and-stonith) and
  acknowledged nothing since. DRBD runs this handler inside
  ``drbdadm primary`` (8.4 and 9 ``drbd_nl.c`` ``drbd_set_role()``: ``SS_PRIMARY_NOP`` ->
  ``conn_try_outdate_peer()``), so the wait was the failover's pause. An xapi that hangs, a
  plugin error and every error without a grant are retried until the timeout.
- when the peer cannot be reached over the management network and a mediator is configured
  (MEDIATOR), the mediator is asked (:func:`iscsi_ha.witness.fence_peer_from_config`): 4 it
  recorded the peer outdated (the peer can no longer get a grant), 3 the peer was already
  outdated there, 6 this host was deposed (another node is primary at the mediator: DRBD
  outdates this host and the agent demotes it); no usable answer falls through.
- 1: anything else (peer unreachable, plugin error, bad input): DRBD keeps I/O frozen; the
  agent self-fences after SELF_FENCE_AFTER. Never 5 ("unreachable, assumed dead"): DRBD would
  then resume I/O as if the peer were outdated, the very stale-data hole fencing closes.

Bounded by FENCE_PEER_TIMEOUT (attempts 0.1, 0.2, 0.4 s apart, then every 0.5 s). Every run is
logged (syslog, LOG_FILE) and recorded in STATE_DIR/fence-peer-RES.json, which the agent alerts
on.
"""
import json
import logging
import os
import re
import socket
import sys
import time

PEER_OUTDATED, PEER_INCONSISTENT, PEER_PRIMARY, PEER_FENCED, FAILED = 4, 3, 6, 7, 1
GRANT_PROBE_TIMEOUT = 0.15  # a local xapi login (Unix socket, root) answers in milliseconds
MASTER_FUSE = 10.0        # xapi restarts this long after it wrote pool.conf "master" ("fuse")
RETRY_PAUSE = 0.5
FIRST_PAUSE = 0.1         # the pause doubles from this up to RETRY_PAUSE: a local xapi that
                          # refuses while it restarts (a new master) is asked again soon
_RESOURCE_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$")

log = logging.getLogger("iscsi-ha")


class _Peer(object):
    """Just what :func:`iscsi_ha.peer.call` needs: an XAPI client with a timeout."""

    def __init__(self, config):
        self.config = config

    def xapi(self, timeout=None):
        from iscsi_ha.adapters.xapi import XapiClient
        config = self.config
        return XapiClient(config.XAPI_URL, config.XAPI_USER, config.XAPI_PASSWORD,
                          timeout or config.XAPI_TIMEOUT)


HOST_OFFLINE = "HOST_OFFLINE"


def local_xapi_stuck(config, timeout=GRANT_PROBE_TIMEOUT):
    """Why this host's xapi cannot pass a call to the peer now, or None: it does not log in
    within ``timeout`` (a slave whose master is gone hangs), or nothing listens. Any other
    answer, error included, is None: the attempts decide as before."""
    from iscsi_ha.adapters.xapi import XapiClient, XapiError
    client = XapiClient(config.XAPI_URL, config.XAPI_USER, config.XAPI_PASSWORD, timeout)
    try:
        client.this_host()
        return None
    except XapiError as exc:
        if getattr(exc, "timed_out", False) or getattr(exc, "refused", False):
            return "this host's xapi cannot ask the peer now: %s" % exc
        return None
    finally:
        client.close()


def new_master_fuse(config, now=None, window=MASTER_FUSE):
    """Why this host's xapi cannot pass a call to the peer because this host has just become
    pool master, or None. xapi writes pool.conf ``master`` and restarts MASTER_FUSE s later
    (emergency_transition_to_master, HA's master election, designate_new_master); until then
    it is still the slave of the old master and its login waits for that master, then it
    restarts. pool.conf ``master`` written less than ``window`` s ago says so at the cost of one
    stat and one small read, where the login probe costs GRANT_PROBE_TIMEOUT."""
    from iscsi_ha import model
    from iscsi_ha.adapters.pool import read_pool_role
    try:
        changed = os.stat(config.POOL_CONF).st_mtime
    except (OSError, IOError, AttributeError):
        return None
    age = (time.time() if now is None else now) - changed
    if not 0 <= age < window or read_pool_role(config.POOL_CONF).role != model.MASTER:
        return None
    return ("this host became pool master %.1f s ago: its xapi restarts and cannot ask the "
            "peer now" % age)


def ask_peer_to_outdate(config, resource, deadline, clock=time.monotonic, sleep=time.sleep,
                        call=None, stop_when_offline=False):
    """(answer dict or None, last error) after trying until ``deadline`` (monotonic), or, with
    ``stop_when_offline``, until XAPI answers that the peer host is offline (HOST_OFFLINE) or
    this host's xapi refuses the connection."""
    from iscsi_ha import peer as peer_mod
    call = call or (lambda timeout: peer_mod.call(_Peer(config), "outdate",
                                                  {"resource": resource}, timeout=timeout))
    error, pause = "not tried", FIRST_PAUSE
    for _ in range(1000):
        left = deadline - clock()
        if left <= 0.05:
            break
        try:
            answer = call(max(0.1, min(config.XAPI_TIMEOUT, left)))
            if answer.get("outcome") in ("outdated", "inconsistent", "primary"):
                return answer, ""
            error = "the peer answered %s: %s" % (answer.get("outcome"), answer.get("detail"))
        except Exception as exc:  # PeerError, XAPI error, socket timeout: try again in time
            error = str(exc) or type(exc).__name__
            if stop_when_offline and (getattr(exc, "code", None) == HOST_OFFLINE or
                                      getattr(exc, "refused", False)):
                break
        if deadline - clock() > pause:
            sleep(pause)
            pause = min(RETRY_PAUSE, pause * 2)
    return None, error


def ask_mediator(config):
    """(exit code, reason) from the mediator, or None when MEDIATOR is empty."""
    from iscsi_ha import witness
    return witness.fence_peer_from_config(config)


def fence(config, resource, clock=time.monotonic, call=None, now=time.time, sleep=time.sleep,
          mediator=None, probe=None):
    """(exit code, outcome sentence, peer answer). ``mediator``: the callable asking the
    mediator (tests), default :func:`ask_mediator`; ``probe``: the local xapi check before the
    attempts under a grant, default :func:`new_master_fuse` then :func:`local_xapi_stuck`
    (none when ``call`` is given)."""
    from iscsi_ha import fencing
    deadline = clock() + config.FENCE_PEER_TIMEOUT
    grant_ttl = max(config.DRBD_TIMEOUT, config.FENCE_PEER_TIMEOUT) * 2
    granted = fencing.read_grant(config.STATE_DIR, resource, now=now(), ttl=grant_ttl)
    if probe is None and call is None:
        probe = lambda: new_master_fuse(config, now()) or local_xapi_stuck(config)
    stuck = probe() if granted is not None and probe is not None else None
    if stuck:      # under a grant, a local xapi that cannot pass the call ends the attempts
        answer, error = None, stuck
    else:
        answer, error = ask_peer_to_outdate(config, resource, deadline, clock=clock,
                                            sleep=sleep, call=call,
                                            stop_when_offline=granted is not None)
    if answer is not None:
        outcome = answer["outcome"]
        if outcome == "outdated":
            return PEER_OUTDATED, "the peer %s outdated its disk" % answer.get("host"), answer
        if outcome == "inconsistent":
            return PEER_INCONSISTENT, "the peer %s is Inconsistent or worse" % (
                answer.get("host"),), answer
        return PEER_PRIMARY, ("the peer %s is Primary: DRBD outdates this host"
                              % answer.get("host")), answer
    asked = (mediator or ask_mediator)(config)
    if asked is not None:
        code, why = asked
        if code in (PEER_OUTDATED, PEER_INCONSISTENT):
            return code, ("the peer is unreachable over the management network (%s); the "
                          "mediator recorded it outdated%s" % (error, ": " + why if why
                                                               else "")), None
        if code == PEER_PRIMARY:
            return code, ("the mediator deposed this host (%s): DRBD outdates it and the agent "
                          "demotes it" % why), None
        error = "%s; mediator: %s" % (error, why)
    grant = fencing.read_grant(config.STATE_DIR, resource, now=now(), ttl=grant_ttl)
    if grant is not None:
        return PEER_FENCED, ("the peer is unreachable (%s); this host is being promoted by the "
                             "agent after proof that its data is current (%s)"
                             % (error, grant.get("reason"))), None
    return FAILED, ("the peer could not be outdated within %.0f s (%s): DRBD keeps I/O frozen"
                    % (config.FENCE_PEER_TIMEOUT, error)), None


def record(config, resource, event, code, outcome, started, answer=None):
    from iscsi_ha import fencing, statepaths
    entry = {"resource": resource, "event": event, "exit": code, "outcome": outcome,
             "time": time.time(), "duration_s": round(time.monotonic() - started, 3),
             "host": socket.gethostname(), "peer": (answer or {}).get("host"),
             "drbd_peer_address": os.environ.get("DRBD_PEER_ADDRESS", "")}
    try:
        fencing._write_json(statepaths.fence_record(config.STATE_DIR, resource), entry)
    except (OSError, IOError) as exc:
        log.error("drbd-%s: cannot write the record: %s", event, exc)
    return entry


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    event = "unfence-peer" if ("unfence" in os.path.basename(argv[0]) or
                               "--unfence" in argv[1:]) else "fence-peer"
    started = time.monotonic()
    resource = os.environ.get("DRBD_RESOURCE", "")
    if not _RESOURCE_OK.match(resource):
        sys.stderr.write("drbd-%s: DRBD_RESOURCE %r is missing or not a resource name\n"
                         % (event, resource))
        return FAILED
    from iscsi_ha import config as config_mod, logsetup
    try:
        config = config_mod.load(config_mod.default_path())
    except config_mod.ConfigError as exc:
        sys.stderr.write("drbd-%s: invalid configuration %s\n" % (event, exc))
        return FAILED
    try:
        logsetup.setup(config, stderr=True)
    except Exception as exc:  # logging must not stop fencing
        sys.stderr.write("drbd-%s: logging unavailable: %s\n" % (event, exc))
    if resource not in config.DRBD_RESOURCES:
        log.error("drbd-%s %s: not one of DRBD_RESOURCES; nothing done", event, resource)
        record(config, resource, event, FAILED, "not one of DRBD_RESOURCES", started)
        return FAILED
    if event == "unfence-peer":
        log.info("drbd-unfence-peer %s: the peer is back in sync; nothing to undo (its outdate "
                 "was cleared by the resync)", resource)
        record(config, resource, event, 0, "peer back in sync", started)
        return 0
    log.warning("drbd-fence-peer %s: DRBD lost the peer (%s); asking it to outdate itself "
                "over XAPI (at most %.0f s)", resource,
                os.environ.get("DRBD_PEER_ADDRESS", "?"), config.FENCE_PEER_TIMEOUT)
    code, outcome, answer = fence(config, resource)
    (log.warning if code in (PEER_OUTDATED, PEER_INCONSISTENT) else log.error)(
        "drbd-fence-peer %s: exit %d: %s", resource, code, outcome)
    record(config, resource, event, code, outcome, started, answer)
    return code


if __name__ == "__main__":
    sys.exit(main())
