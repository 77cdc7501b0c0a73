"""The rich view behind ``iscsi-cfg status``: this host and its peer, expected versus actual.

This host comes from the agent's status document (re-read every refresh). The peer comes from
two places: DRBD's peer fields in that document (always there), and the peer's own status
document fetched through the XAPI plugin by a background thread (:class:`PeerWatcher`), so
that a slow or absent XAPI never blocks the view.
"""
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

HEALTH_STYLE = {"ok": "bold green", "degraded": "bold yellow", "failed": "bold red",
                "unknown": "bold red"}
MANUAL_WORDS = {"off": "off", "enable": "ON (holding roles)", "become_primary": "ON (primary)",
                "become_secondary": "ON (secondary)"}


def _mark(ok, applying=False):
    """``applying``: the pass that wrote the status took every step towards the expected
    state after observing; the next pass shows the result."""
    if ok:
        return Text("ok", style="green")
    if applying:
        return Text("being applied", style="bold yellow")
    return Text("NOT AS EXPECTED", style="bold red")


def _tolerance(config):
    return config.MONITOR_DELAY + config.MONITOR_SCANRATE + 5


def banner(config, document):
    """Why the status cannot be trusted, with the likely causes, or None."""
    if document.get("status_unknown"):
        return Text("status unknown: %s" % document["status_unknown"], style="bold red",
                    no_wrap=True, overflow="ignore")
    if document.get("agent_running") and not document.get("stale"):
        return None
    lines = []
    if not document.get("agent_running"):
        lines += ["The iscsi-ha agent is not running on this host.",
                  "Likely causes: it was stopped, it refused an invalid configuration "
                  "(`iscsi-ha check`), or it crashed.",
                  "Start it (service iscsi-ha start) and read `iscsi-cfg log`."]
    if document.get("stale") and "age_s" not in document:
        lines += ["The agent has published no readable status."]
    elif document.get("stale"):
        lines += ["The agent's status is %.0f s old (tolerance %.0f s)." % (
            document["age_s"], _tolerance(config)),
            "Likely causes: a pass is hung on a command (DRBD, tgtadm, ip: see the log), the "
            "agent was stopped, or the host is failing over."]
    lines += document.get("problems", [])
    return Panel("\n".join(lines), title="status unknown", style="bold red")


def _ago(epoch, now):
    if not epoch:
        return "?"
    return "%s (%.1f s ago)" % (time.strftime("%H:%M:%S", time.localtime(epoch)),
                                max(0.0, now - epoch))


def _head(document, now):
    desired = document.get("desired_role") or "hold"
    health = document.get("health", "unknown")
    manual = document.get("manual_mode", "?")
    agent = document.get("agent") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("host", document.get("hostname", "?"), "pool role",
                 document["pool"]["role"] + (" of %s" % document["pool"]["master_address"]
                                             if document["pool"].get("master_address") else ""))
    head.add_row("health", Text(health, style=HEALTH_STYLE.get(health, "")), "manual mode",
                 Text(MANUAL_WORDS.get(manual, manual), style="" if manual == "off"
                      else "bold magenta"))
    head.add_row("expected role", desired, "status updated", _ago(document.get("updated"), now))
    head.add_row("agent", "pid %s" % agent.get("pid", "?"), "running since",
                 _ago(agent.get("started"), now))
    return Panel(head, title="iscsi-ha %s on this host" % agent.get("version", ""))


def _applying(document, desired):
    from iscsi_ha.cli.manual_ops import acted
    return acted(document, desired)


def _drbd_table(document, desired):
    table = Table(title="DRBD")
    for column in ("resource", "role", "peer role", "connection", "disk", "peer disk", "sync",
                   "as expected"):
        table.add_column(column)
    want = {"primary": "Primary", "secondary": "Secondary"}.get(desired)
    for name, state in sorted(document.get("drbd", {}).items()):
        sync = "" if state.get("sync_percent") is None else "%.1f%%" % state["sync_percent"]
        peer = Text(state["peer_role"], style="bold red" if state["peer_role"] == "Unknown"
                    else "")
        table.add_row(name, state["role"], peer, state["connection"], state["disk"],
                      state["peer_disk"], sync, _mark(want is None or state["role"] == want,
                                                      _applying(document, desired)))
    if document.get("drbd_error"):
        table.add_row("?", Text(document["drbd_error"], style="bold red"), "", "", "", "", "", "")
    return table


def _service_table(config, document, desired):
    table = Table(title="target and floating IP")
    for column in ("what", "state", "expected", "as expected"):
        table.add_column(column)
    target = document.get("target") or {}
    serving = bool(target.get("serving"))
    want_up = desired == "primary"
    state = "serving" if serving else "running" if target.get("running") else "stopped"
    if target.get("connections"):
        state += ", %d connection(s)" % target["connections"]
    applying = _applying(document, desired)
    table.add_row("iSCSI target %s" % (config.ISCSI_TARGET_IQN or "(tgtd's configuration)"),
                  state, "serving" if want_up else "stopped",
                  _mark(desired == "hold" or serving == want_up, applying))
    luns = ", ".join("%d=%s" % item for item in sorted(config.ISCSI_LUNS.items())) or "-"
    missing = "; ".join(target.get("missing") or []) if want_up else ""
    table.add_row("LUNs", luns if not missing else Text(missing, style="yellow"),
                  "exported" if want_up else "not exported", _mark(not missing, applying))
    vip = document.get("floating_ip") or {}
    table.add_row("floating IP %s on %s" % (vip.get("address", ""), vip.get("interface", "")),
                  "local" if vip.get("local") else "not local", "local" if want_up
                  else "not local",
                  _mark(desired == "hold" or bool(vip.get("local")) == want_up, applying))
    return table


def _peer_panel(document, peer, now):
    rows = Table.grid(padding=(0, 2))
    for name, state in sorted((document.get("drbd") or {}).items()):
        rows.add_row("DRBD sees", "%s: peer %s, peer disk %s, %s" % (
            name, state["peer_role"], state["peer_disk"], state["connection"]))
    if peer is None:
        rows.add_row("through XAPI", "not asked (status --peer)")
    else:
        theirs, error, at = peer
        if theirs is None:
            rows.add_row("through XAPI", Text(error, style="yellow"))
        else:
            rows.add_row("through XAPI", _peer_words(theirs, at, now))
    return Panel(rows, title="peer")


def _peer_words(theirs, at, now):
    health = theirs.get("health", "unknown")
    target = theirs.get("target") or {}
    vip = theirs.get("floating_ip") or {}
    roles = ", ".join("%s %s" % (n, s.get("role")) for n, s in
                      sorted((theirs.get("drbd") or {}).items()))
    text = Text("%s: " % theirs.get("hostname", theirs.get("host", "?")))
    text.append(health, style=HEALTH_STYLE.get(health, ""))
    text.append(", pool %s, manual mode %s, %s, target %s, floating IP %s%s; asked %s" % (
        (theirs.get("pool") or {}).get("role", "?"),
        MANUAL_WORDS.get(theirs.get("manual_mode"), theirs.get("manual_mode", "?")),
        roles or "no DRBD state", "serving" if target.get("serving") else "stopped"
        if not target.get("running") else "running", "local" if vip.get("local")
        else "not local", "" if theirs.get("agent_running") else " (AGENT NOT RUNNING)",
        _ago(at, now)))
    return text


def _decision_panel(document, now):
    decision = document.get("decision") or {}
    run = document.get("pass") or {}
    text = Text(decision.get("reason", ""))
    verdict = document.get("verdict") or decision.get("verdict")
    if verdict:
        text.append("\nverdict: %s" % verdict, style="bold red" if verdict == "blocked" else "")
    service = document.get("service") or {}
    if service.get("blocked"):
        text.append("\nSERVICE BLOCKED: this host should serve and does not (%.0f s): %s" % (
            service.get("for_s") or 0.0, "; ".join(
                b.get("detail") or b.get("kind", "?") for b in service.get("blockers") or [])),
            style="bold red")
    text.append("\npass %s (%s) made %s, took %.3f s" % (
        run.get("number", "?"), run.get("trigger", "?"), _ago(run.get("started"), now),
        run.get("duration_s") or 0.0), style="dim")
    if _applying(document, document.get("desired_role")):
        text.append("\nthe tables show what this pass saw before its steps; the next pass "
                    "shows the result", style="yellow")
    for entry in (document.get("last_actions") or [])[-6:]:
        ok = entry.get("ok") and not entry.get("skipped")
        text.append("\n  %s %s (%.2f s) %s" % (
            entry.get("action"), "ok" if ok else "skipped" if entry.get("skipped")
            else "FAILED", entry.get("duration_s") or 0.0, _ago(entry.get("at"), now)),
            style="green" if ok else "red")
    return Panel(text, title="last decision")


def render(config, document, peer=None, now=None):
    """One frame. ``peer`` is (document or None, error, asked at) or None (not asked)."""
    now = time.time() if now is None else now
    parts = []
    warning = banner(config, document)
    if warning is not None:
        parts.append(warning)
    if "pool" not in document:
        return Group(*parts)
    desired = document.get("desired_role") or "hold"
    parts += [_head(document, now), _drbd_table(document, desired),
              _service_table(config, document, desired), _peer_panel(document, peer, now),
              _decision_panel(document, now)]
    witness = _witness_panel(document)
    if witness is not None:
        parts.append(witness)
    if document.get("problems"):
        parts.append(Panel("\n".join(document["problems"]), title="problems", style="yellow"))
    fencing = fencing_advice(document)
    if fencing:
        parts.append(Panel("\n".join(fencing), title="fencing", style="bold red"))
    return Group(*parts)


def fencing_advice(document):
    """What an admin should know and do about DRBD fencing, from the status document."""
    fencing = document.get("fencing") or {}
    lines = []
    for name in fencing.get("self_fenced") or []:
        lines += ["%s: this host SELF-FENCED: its I/O stayed frozen because the fence-peer "
                  "handler could not outdate the peer (see the fence-peer record below)." % name,
                  "  It serves nothing and is not promoted again until the replication link is "
                  "back. If the peer is serving, leave it so; once the link returns, DRBD "
                  "resyncs this host.",
                  "  If the peer is really dead and its data lost, and you accept losing what it "
                  "may have acknowledged: iscsi-cfg become-primary --force"]
    for name, seconds in sorted((fencing.get("frozen_s") or {}).items()):
        lines.append("%s: I/O frozen by DRBD fencing for %.0f s (self-fencing after %.0f s): "
                     "the fence-peer handler is trying to outdate the peer over XAPI"
                     % (name, seconds, fencing.get("self_fence_after_s") or 0))
    for name, why in sorted((fencing.get("unproven") or {}).items()):
        lines.append("%s: automatic failover is OFF: %s; run `iscsi-cfg drbd-config` and "
                     "`iscsi-cfg check` on both hosts" % (name, why))
    if fencing.get("allow_unfenced_failover"):
        lines.append("ALLOW_UNFENCED_FAILOVER=1: a failover may lose acknowledged writes")
    for name, record in sorted((fencing.get("fence_peer") or {}).items()):
        if record.get("event") == "fence-peer":
            lines.append("%s: last fence-peer run %s: exit %s: %s" % (
                name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("time") or
                                                                         0)),
                record.get("exit"), record.get("outcome")))
    return lines


def _witness_panel(document):
    """The mediator as the agent sees it (None without a mediator)."""
    w = document.get("witness")
    if not w:
        return None
    if not w.get("reachable"):
        text = "mediator %s UNREACHABLE (%s): automatic failover off, no effect on I/O" % (
            w.get("address") or "?", w.get("error"))
        return Panel(text, title="witness", style="yellow")
    lines = ["mediator %s: generation %s, primary %s, golden %s, outdated %s" % (
        w.get("address"), w.get("generation"), w.get("primary") or "-",
        ", ".join(w.get("eligible") or []) or "-", ", ".join(w.get("outdated") or []) or "-"),
        "peer %s %s; automatic failover %s" % (
            w.get("peer") or "?", "alive at the mediator" if w.get("peer_alive") else
            "NOT seen by the mediator", "on" if w.get("auto_failover") else
            "OFF (%s)" % w.get("auto_failover_reason"))]
    if w.get("rolled_back"):
        lines.append("ROLLED BACK: %s" % w["rolled_back"])
    if w.get("deposed"):
        lines.append("DEPOSED: the mediator made %s primary" % w.get("primary"))
    bad = w.get("rolled_back") or w.get("deposed") or not w.get("auto_failover")
    return Panel("\n".join(lines), title="witness", style="yellow" if bad else "")


def show(config, document, once=False, console=None, refresh=2.0, watcher=None, peer=None):
    """Print one frame (``once`` or not a terminal), else refresh until Ctrl+C. Returns the
    last document shown (its health gives the exit code)."""
    from iscsi_ha.agent_status import view as read_status
    console = console or Console()
    if once or not console.is_terminal:
        console.print(render(config, document, peer))
        return document
    try:
        with Live(render(config, document, _latest(watcher)), console=console,
                  refresh_per_second=4) as live:
            while True:
                time.sleep(refresh)
                document = read_status(config)
                live.update(Group(render(config, document, _latest(watcher)),
                                  Text("refreshing every %.0f s; Ctrl+C to leave" % refresh,
                                       style="dim")))
    except KeyboardInterrupt:
        return document
    finally:
        if watcher is not None:
            watcher.stop()


def _latest(watcher):
    return None if watcher is None else watcher.latest()
