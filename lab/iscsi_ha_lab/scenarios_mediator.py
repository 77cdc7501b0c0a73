"""Lab scenarios with the third-site mediator (issues 13 and 14): a lab brought up with
``Lab(mediator="sqlite")`` or ``"etcd"`` (``iscsi-ha-lab up --mediator``), both agents
heartbeating it. The runner checks every time that no acknowledged write is lost and that the
invariant checker saw no violation (never two DRBD Primaries, connected or not); each function
checks its own story and notes its figures:

- mediator-down (first: its alerts must be the first of their kind within MAIL_SCREEN_TIME):
  the mediator stops with everything else up: no effect on I/O, one alert per host, automatic
  failover off on both; one alert per host again when it is back.
- mediator-link-cut: the wire between A and B dies (replication link and their XAPI calls to
  each other; the client still reaches A) while both reach the mediator: A's handler cannot
  reach B, the mediator records B outdated, A's I/O resumes; B's promote is refused.
- mediator-primary-power-loss: A loses power, the pool makes B master: B is promoted only once
  A's lease (lease + margin after the mediator last heard A) ran out, within the bound below.
- mediator-site-isolated: A loses B and the mediator (and the pool: XAPI HA makes B master at
  once): A self-fences before its lease runs out, B is promoted after it.
- mediator-restart: A loses power while the mediator is down; the mediator starts again long
  after A's lease: it grants nothing within its grace (lease + margin after its start).
- mediator-stale-primary-returns: A isolated as above, B took over; A reaches the mediator
  again (still cut from B): its promote and fence-peer are refused as deposed, it stays
  Secondary; back on the network it resyncs from B.
- mediator-both-claim: the A-B wire dies and the pool makes B master too, so both claim the
  role at once (A through its fence-peer handler, B through promote): exactly one wins (A,
  whose lease is live), B is refused.
- mediator-foreign-credential: a credential of another pool, and one of the other node, used
  from host a: every request refused, the pool's record unchanged.

Promotion bound (mediator-primary-power-loss, documented in README's mediator section): B
serves at most ``lease + margin`` (the mediator's grant rule) + ``BOUND_AFTER_LEASE`` after the
mediator last heard A, where BOUND_AFTER_LEASE = 1 s (B's retry: its agent passes every second
while not serving) + 1 s (the pass that promotes) + FENCE_PEER_TIMEOUT (B's handler tries A over
XAPI first) + MEDIATOR_TIMEOUT (then asks the mediator) + TARGET_TIMEOUT (tgtd start, floating
IP with duplicate-address detection).
"""
import os
import time

from iscsi_ha_lab.faults import apply_fault
from iscsi_ha_lab.lab import LabError
from iscsi_ha_lab.scenario_kit import (alerts_of, fence_record, pool_conf_changed_at, scenario,
                                       settled)

PASSES = 2.5          # agent passes to wait when checking that something does NOT happen


def bound_after_lease(lab):
    """Seconds after the lease ran out within which B must serve (see the module doc)."""
    config = _config(lab.hosts[1])
    return (1.0 + 1.0 + float(config.get("FENCE_PEER_TIMEOUT", 3)) +
            float(config.get("MEDIATOR_TIMEOUT", 1)) + float(config.get("TARGET_TIMEOUT", 8)))


def _config(host):
    values = {}
    for line in host.read_config().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'")
    return values


def _need(lab):
    if lab.mediator is None:
        raise LabError("this scenario needs the mediator: Lab(mediator='sqlite'|'etcd'), "
                       "iscsi-ha-lab scenario NAME --mediator [sqlite|etcd]")


def _view(lab, host):
    return lab.world.snapshot()["views"][lab.resource][host.name]


def _witness(lab, host):
    return (lab.status(host) or {}).get("witness") or {}


def _self_fenced(lab, host):
    fencing = (lab.status(host) or {}).get("fencing") or {}
    return lab.resource in (fencing.get("self_fenced") or [])


def _golden(lab, primary):
    """The mediator's record: both nodes eligible, nobody outdated, ``primary`` primary, and
    both agents reach it and may fail over."""
    rec = lab.mediator_pool_record()
    return (rec.get("primary") == primary.name and rec.get("eligible") == ["a", "b"]
            and not rec.get("outdated")
            and all(_witness(lab, h).get("reachable") and _witness(lab, h).get("auto_failover")
                    for h in lab.hosts))


def _wait_golden(lab, run, primary, timeout=40):
    run.wait(lambda: _golden(lab, primary), timeout,
             "the mediator to record %s primary and both nodes eligible" % primary.name)


def _first(run, predicate, timeout, what):
    """Wait for ``predicate``; the monotonic time it was first seen true (or None)."""
    found = run.wait(lambda: predicate() and time.monotonic(), timeout, what)
    return found or None


def _last_heard(lab, host):
    """Monotonic time at which the mediator last heard ``host`` (from its own record)."""
    now = time.monotonic()
    rec = lab.mediator_pool_record()
    for node in rec.get("nodes", []):
        if node["node"] == host.name and node.get("last_seen_ms") is not None:
            return now - node["last_seen_ms"] / 1000.0
    return None


def _lease(lab):
    return lab.mediator_lease + lab.mediator_margin


def _cut_wire(lab, up):
    """The wire between A and B: the replication link and their XAPI calls to each other (the
    client and the mediator still reach both)."""
    for host in lab.hosts:
        lab.xapi.pool.set_management_link(lab.xapi.refs[host.name], up)
    if up:
        lab.restore_replication()
    else:
        lab.cut_replication()


def _cred(host):
    return host.mediator_dir


def _drbd_report(lab, host):
    """What ``host``'s agent last reported to the mediator (its DRBD state and generation)."""
    rec = lab.mediator_pool_record()
    for node in rec.get("nodes", []):
        if node["node"] == host.name and node.get("report"):
            return node["report"]
    return {}


def _power_on(lab, run, old, new):
    apply_fault(lab, "power-on", old.name)
    run.wait(lambda: settled(lab, new), 90, "%s back, resynced, %s serving" % (old.name,
                                                                             new.name))
    _wait_golden(lab, run, new)


# --- the scenarios ---------------------------------------------------------------------------

@scenario("mediator-down", "the mediator stops, all else up: no I/O effect, alerts, no failover")
def mediator_down(lab, run):
    _need(lab)
    primary = lab.primary()
    _wait_golden(lab, run, primary)
    since = time.time()
    apply_fault(lab, "stop-mediator")
    run.wait(lambda: all(not _witness(lab, h).get("reachable") for h in lab.hosts), 20,
             "both agents to see the mediator unreachable")
    time.sleep(PASSES * lab.monitor_delay)
    for host in lab.hosts:
        w = _witness(lab, host)
        run.check(w.get("auto_failover") is False and "unreachable" in str(
            w.get("auto_failover_reason")), "%s: automatic failover not off: %r" % (host.name, w))
    run.check(lab.serving(primary), "%s stopped serving" % primary.name)
    run.check(_view(lab, lab.peer(primary))["role"] == "Secondary", "the secondary changed")
    run.wait(lambda: len(alerts_of(lab, "mediator-unreachable", since)[0]) >= 2, 20,
             "a mediator-unreachable alert from each host")
    apply_fault(lab, "start-mediator")
    run.wait(lambda: len(alerts_of(lab, "mediator-reachable", since)[0]) >= 2, 30,
             "a mediator-reachable alert from each host")
    _wait_golden(lab, run, primary)       # after the grace: failover possible again
    time.sleep(1.0)                       # a duplicate would have arrived by now
    for kind in ("mediator-unreachable", "mediator-reachable"):
        senders = sorted(m["from"] for m in alerts_of(lab, kind, since)[0])
        run.check(len(senders) == 2 and len(set(senders)) == 2,
                  "%s alerts from %s, expected one per host" % (kind, senders))


@scenario("mediator-link-cut", "the A-B wire dies, both reach the mediator: A keeps serving, "
          "B is outdated there")
def mediator_link_cut(lab, run):
    _need(lab)
    primary = lab.primary()
    secondary = lab.peer(primary)
    _wait_golden(lab, run, primary)
    gen = lab.mediator_pool_record().get("generation")
    t0 = time.monotonic()
    _cut_wire(lab, False)
    run.wait(lambda: _view(lab, primary)["suspended"], 10, "I/O frozen on %s" % primary.name)
    resumed = _first(run, lambda: not _view(lab, primary)["suspended"], 30,
                     "I/O on %s to resume through the mediator" % primary.name)
    record = fence_record(lab, primary) or {}
    run.check(record.get("exit") == 4 and "mediator" in record.get("outcome", ""),
              "fence-peer record on %s: %r" % (primary.name, record))
    if resumed:
        run.note("I/O frozen %.1f s: the handler's XAPI attempts, then the mediator"
                 % (resumed - t0))
    rec = lab.mediator_pool_record()
    run.check(rec.get("primary") == primary.name and rec.get("outdated") == [secondary.name]
              and rec.get("generation") == gen + 1, "mediator record: %r" % rec)
    answer = lab.mediator.call(secondary.name, _cred(secondary), lab.mediator_pool, "promote",
                               {"gen": rec.get("generation"),
                                "drbd": dict(_drbd_report(lab, secondary),
                                             conn="Connecting", peer_disk="DUnknown")})
    run.check(answer.get("result") == "refused" and "outdated" in answer.get("reason", ""),
              "%s's promote: %r" % (secondary.name, answer))
    time.sleep(PASSES * lab.monitor_delay)
    run.check(_view(lab, secondary)["role"] == "Secondary", "%s was promoted" % secondary.name)
    run.check(lab.serving(primary), "%s stopped serving" % primary.name)
    _cut_wire(lab, True)
    run.wait(lambda: settled(lab, primary), 60, "resync after the wire came back")
    _wait_golden(lab, run, primary)


@scenario("mediator-primary-power-loss", "A loses power: B promoted once A's lease ran out")
def mediator_primary_power_loss(lab, run):
    _need(lab)
    old = lab.primary()
    new = lab.peer(old)
    _wait_golden(lab, run, old)
    t_crash = time.monotonic()
    apply_fault(lab, "crash", old.name)
    heard = _last_heard(lab, old) or t_crash
    lease_end = heard + _lease(lab)
    apply_fault(lab, "make-master", new.name)
    run.role_changed(pool_conf_changed_at(new, "master"))
    promoted = _first(run, lambda: _view(lab, new)["role"] == "Primary", 60,
                      "%s promoted" % new.name)
    serving = _first(run, lambda: lab.serving(new), 30, "%s serving" % new.name)
    if promoted:
        run.check(promoted >= lease_end - 0.1, "%s promoted %.2f s before A's lease ran out"
                  % (new.name, lease_end - promoted))
        run.note("B promoted %.2f s after the lease ran out (lease+margin %.1f s after the "
                 "mediator last heard A)" % (promoted - lease_end, _lease(lab)))
    if serving:
        bound = bound_after_lease(lab)
        run.check(serving - lease_end <= bound, "B served %.1f s after the lease, bound %.1f s"
                  % (serving - lease_end, bound))
        run.note("B serving %.2f s after the lease ran out (bound %.1f s), %.2f s after the "
                 "crash" % (serving - lease_end, bound, serving - t_crash))
    record = fence_record(lab, new) or {}
    run.note("B's fence-peer: exit %s (%s)" % (record.get("exit"), record.get("outcome")))
    rec = lab.mediator_pool_record()
    run.check(rec.get("primary") == new.name and old.name in rec.get("outdated", []),
              "mediator record: %r" % rec)
    _power_on(lab, run, old, new)


def _isolate(lab, host):
    """``host`` loses its peer (replication, management, the pool) and the mediator."""
    apply_fault(lab, "cut-mediator", host.name)
    apply_fault(lab, "isolate", host.name)


def _rejoin(lab, host):
    apply_fault(lab, "restore-mediator", host.name)
    apply_fault(lab, "rejoin", host.name)


def _isolated_takeover(lab, run, old, new):
    """A isolated from B and the mediator, the pool makes B master at once: A self-fences
    before its lease runs out, B is promoted after it. Returns (t_isolated, lease_end)."""
    t0 = time.monotonic()
    _isolate(lab, old)
    heard = _last_heard(lab, old) or t0
    lease_end = heard + _lease(lab)
    apply_fault(lab, "make-master", new.name)
    run.role_changed()
    run.wait(lambda: _view(lab, old)["suspended"] or _view(lab, old)["role"] != "Primary", 10,
             "I/O frozen on %s" % old.name)
    demoted = _first(run, lambda: _view(lab, old)["role"] == "Secondary", 30,
                     "%s to self-fence (Secondary)" % old.name)
    promoted = _first(run, lambda: _view(lab, new)["role"] == "Primary", 60,
                      "%s promoted" % new.name)
    run.wait(lambda: lab.serving(new), 30, "%s serving" % new.name)
    run.check(_self_fenced(lab, old), "%s does not report itself self-fenced" % old.name)
    run.check((fence_record(lab, old) or {}).get("exit") == 1,
              "%s's handler: %r" % (old.name, fence_record(lab, old)))
    # issue 13: a grant from an earlier failover, with the mediator's last answer still at its
    # generation, promoted the self-fenced host again (handler exit 7 on the agent's grant)
    run.check(_view(lab, old)["role"] == "Secondary" and _witness(lab, old).get("granted")
              is False, "%s promoted again after its self-fence: %s, witness %r" % (
                  old.name, _view(lab, old)["role"], _witness(lab, old)))
    if demoted and promoted:
        run.check(demoted < promoted, "%s promoted before %s stepped down" % (new.name,
                                                                              old.name))
        run.check(demoted < lease_end, "%s stepped down %.2f s after its lease ran out (the "
                  "mediator could have granted %s)" % (old.name, demoted - lease_end,
                                                       new.name))
        run.check(promoted >= lease_end - 0.1, "%s promoted %.2f s before A's lease ran out"
                  % (new.name, lease_end - promoted))
        run.note("A stepped down %.2f s after the cut (%.2f s before the lease ran out); B "
                 "promoted %.2f s after the lease ran out" % (
                     demoted - t0, lease_end - demoted, promoted - lease_end))
    return t0, lease_end


@scenario("mediator-site-isolated", "A loses B and the mediator: A self-fences, B promoted "
          "after the lease")
def mediator_site_isolated(lab, run):
    _need(lab)
    old = lab.primary()
    new = lab.peer(old)
    _wait_golden(lab, run, old)
    _isolated_takeover(lab, run, old, new)
    _rejoin(lab, old)
    run.wait(lambda: settled(lab, new), 90, "%s back as Secondary and resynced" % old.name)
    _wait_golden(lab, run, new)


@scenario("mediator-restart", "the mediator restarts: it grants nothing within its grace")
def mediator_restart(lab, run):
    _need(lab)
    old = lab.primary()
    new = lab.peer(old)
    _wait_golden(lab, run, old)
    apply_fault(lab, "stop-mediator")
    t_crash = time.monotonic()
    apply_fault(lab, "crash", old.name)
    apply_fault(lab, "make-master", new.name)
    run.role_changed(pool_conf_changed_at(new, "master"))
    time.sleep(_lease(lab) + 1.0)          # A's lease is long over, for any instance
    run.check(_view(lab, new)["role"] == "Secondary", "%s promoted without the mediator"
              % new.name)
    t_start = time.monotonic()
    apply_fault(lab, "start-mediator")
    grace_end = t_start + _lease(lab)
    promoted = _first(run, lambda: _view(lab, new)["role"] == "Primary", 60,
                      "%s promoted" % new.name)
    run.wait(lambda: lab.serving(new), 30, "%s serving" % new.name)
    if promoted:
        run.check(promoted >= grace_end - 0.1, "%s promoted %.2f s inside the grace" % (
            new.name, grace_end - promoted))
        run.note("grace %.1f s; B promoted %.2f s after it ended (%.1f s after the crash)" % (
            _lease(lab), promoted - grace_end, promoted - t_crash))
    _power_on(lab, run, old, new)


@scenario("mediator-stale-primary-returns", "A isolated, B took over; A reaches the mediator "
          "again: refused as deposed; it resyncs from B")
def mediator_stale_primary_returns(lab, run):
    _need(lab)
    old = lab.primary()
    new = lab.peer(old)
    _wait_golden(lab, run, old)
    _isolated_takeover(lab, run, old, new)
    rec = lab.mediator_pool_record()
    apply_fault(lab, "restore-mediator", old.name)    # back at the mediator, still cut from B
    run.wait(lambda: _witness(lab, old).get("reachable") and _witness(lab, old).get(
        "primary") == new.name, 20, "%s to hear from the mediator again" % old.name)
    w = _witness(lab, old)
    run.check(old.name in (w.get("outdated") or []) and not w.get("granted"),
              "%s's witness view: %r" % (old.name, w))
    report = dict(_drbd_report(lab, old), role="Primary")
    fence = lab.mediator.call(old.name, _cred(old), lab.mediator_pool, "fence-peer",
                              {"gen": rec.get("generation") - 1})
    run.check(fence.get("result") == "deposed" and fence.get("exit") == 6,
              "%s's fence-peer: %r" % (old.name, fence))
    promote = lab.mediator.call(old.name, _cred(old), lab.mediator_pool, "promote",
                                {"gen": rec.get("generation"), "drbd": report})
    run.check(promote.get("result") == "refused", "%s's promote: %r" % (old.name, promote))
    beat = lab.mediator.call(old.name, _cred(old), lab.mediator_pool, "heartbeat",
                             {"gen": rec.get("generation"), "drbd": report})
    run.check(beat.get("deposed") is True, "a Primary %s is not told it is deposed: %r"
              % (old.name, beat))
    run.note("stale A: fence-peer %s (exit %s), promote %s (%s)" % (
        fence.get("result"), fence.get("exit"), promote.get("result"), promote.get("reason")))
    time.sleep(PASSES * lab.monitor_delay)
    run.check(_view(lab, old)["role"] == "Secondary", "the stale %s is Primary" % old.name)
    after = lab.mediator_pool_record()
    run.check((after.get("generation"), after.get("primary")) == (
        rec.get("generation"), rec.get("primary")), "the stale node changed the record: %r"
        % after)
    apply_fault(lab, "rejoin", old.name)
    run.wait(lambda: settled(lab, new), 90, "%s resynced from %s" % (old.name, new.name))
    _wait_golden(lab, run, new)


@scenario("mediator-both-claim", "both nodes claim the role at once: exactly one wins")
def mediator_both_claim(lab, run):
    _need(lab)
    a = lab.primary()
    b = lab.peer(a)
    _wait_golden(lab, run, a)
    gen = lab.mediator_pool_record().get("generation")
    _cut_wire(lab, False)
    apply_fault(lab, "make-master", b.name)         # two pool masters: both want the role
    pool_conf_changed_at(b, "master")
    run.role_changed()
    run.wait(lambda: not _view(lab, a)["suspended"] and fence_record(lab, a) is not None, 30,
             "%s's handler to finish" % a.name)
    run.wait(lambda: "outdated" in str(_witness(lab, b).get("reason")), 20,
             "%s's promote to be refused" % b.name)
    time.sleep(PASSES * lab.monitor_delay)
    rec = lab.mediator_pool_record()
    run.check(rec.get("primary") == a.name and rec.get("outdated") == [b.name]
              and rec.get("generation") == gen + 1, "mediator record: %r" % rec)
    run.check(_view(lab, b)["role"] == "Secondary", "%s was promoted too" % b.name)
    run.check(lab.serving(a), "%s does not serve" % a.name)
    run.note("winner %s (fence-peer exit %s); %s: %s" % (
        a.name, (fence_record(lab, a) or {}).get("exit"), b.name, _witness(lab, b).get("reason")))
    # the admin makes B a slave of A again (pool.emergency_reset_master), the wire heals
    endpoint = lab.xapi.pool.endpoint(lab.xapi.refs[b.name])
    lab.xapi.pool.become_slave_of(endpoint, a.address)
    _cut_wire(lab, True)
    run.wait(lambda: settled(lab, a), 90, "%s resynced as Secondary" % b.name)
    _wait_golden(lab, run, a)


@scenario("mediator-foreign-credential", "a credential of another pool or node is refused; "
          "nothing changes")
def mediator_foreign_credential(lab, run):
    _need(lab)
    primary = lab.primary()
    _wait_golden(lab, run, primary)
    net, pool = lab.mediator, lab.mediator_pool
    added = net.admin({"op": "pool-add", "pool": "other", "nodes": ["a", "b"]})
    run.check(added.get("ok") or "exists" in str(added.get("error")), "pool-add: %r" % added)
    other = net.enroll("other", "a", os.path.join(lab.directory, "mediator-other-a"))
    before = lab.mediator_pool_record()
    gen = before.get("generation")
    drbd = dict(_drbd_report(lab, lab.hosts[0]), conn="Connecting", peer_disk="DUnknown")
    tries = [("a", other, "a", "another pool's credential"),
             ("a", _cred(lab.hosts[1]), "a", "node b's credential as node a"),
             ("b", _cred(lab.hosts[0]), "b", "node a's credential as node b")]
    for host, cred, node, what in tries:
        for op, fields in (("heartbeat", {"gen": gen, "drbd": drbd}),
                           ("promote", {"gen": gen, "drbd": drbd}),
                           ("fence-peer", {"gen": gen})):
            answer = net.call(host, cred, pool, op, fields, node=node)
            run.check("refused" in str(answer.get("error")) and "result" not in answer,
                      "%s, %s: %r" % (what, op, answer))
    after = lab.mediator_pool_record()
    keys = ("generation", "primary", "eligible", "outdated", "synced_uuid", "revision")
    run.check(all(before.get(k) == after.get(k) for k in keys),
              "the record changed: %r -> %r" % (dict((k, before.get(k)) for k in keys),
                                               dict((k, after.get(k)) for k in keys)))
    audit = net.admin({"op": "pool-show", "pool": pool, "limit": 50}).get("audit") or []
    run.check(any(e.get("event") == "refused" for e in audit),
              "no refusal in the pool's audit log")
    time.sleep(lab.monitor_delay)
    run.check(all(_witness(lab, h).get("reachable") for h in lab.hosts),
              "a valid node lost the mediator after the refusals (rate limit)")
    run.check(lab.serving(primary), "%s stopped serving" % primary.name)
    net.admin({"op": "pool-remove", "pool": "other", "force": True})
