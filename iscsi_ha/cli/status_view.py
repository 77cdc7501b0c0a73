"""The rich view behind ``iscsi-cfg status``: expected versus actual, with colour."""
import time

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

HEALTH_STYLE = {"ok": "bold green", "degraded": "bold yellow", "failed": "bold red",
                "unknown": "bold red"}


def _mark(ok):
    return Text("ok", style="green") if ok else Text("NOT AS EXPECTED", style="bold red")


def banner(config, document):
    """Why the status cannot be trusted, or None."""
    if document.get("agent_running") and not document.get("stale"):
        return None
    lines = []
    if not document.get("agent_running"):
        lines.append("The iscsi-ha agent is not running on this host.")
        lines.append("Start it (service iscsi-ha start -w) and read `iscsi-cfg log`.")
    if document.get("stale"):
        lines.append("The agent's status is %.0f s old (tolerance %.0f s)." % (
            document.get("age_s", float("inf")), config.MONITOR_DELAY + config.MONITOR_SCANRATE
            + 5))
        lines.append("Likely causes: a pass is hung (see the log), the agent was stopped, "
                     "or the host is failing over.")
    for problem in document.get("problems", []):
        lines.append(problem)
    return Panel("\n".join(lines), title="status unknown", style="bold red")


def render(config, document):
    parts = []
    warning = banner(config, document)
    if warning is not None:
        parts.append(warning)
    if "pool" not in document:
        return Group(*parts)
    desired = document.get("desired_role") or "hold"
    head = Table.grid(padding=(0, 2))
    head.add_row("host", document.get("hostname", "?"), "pool role", document["pool"]["role"],
                 "manual mode", document.get("manual_mode", "?"))
    health = document.get("health", "unknown")
    head.add_row("health", Text(health, style=HEALTH_STYLE.get(health, "")), "expected role",
                 desired, "updated", "%s (%.1f s ago)" % (document.get("updated_iso", "?"),
                                                         document.get("age_s", 0)))
    parts.append(Panel(head, title="iscsi-ha %s" % document.get("agent", {}).get("version", "")))
    parts.append(_drbd_table(document, desired))
    parts.append(_service_table(document, desired))
    decision = document.get("decision", {})
    parts.append(Panel(Text(decision.get("reason", "")), title="last decision"))
    if document.get("problems"):
        parts.append(Panel("\n".join(document["problems"]), title="problems", style="yellow"))
    return Group(*parts)


def _drbd_table(document, desired):
    table = Table(title="DRBD")
    for column in ("resource", "role", "peer role", "connection", "disk", "peer disk", "sync",
                   "as expected"):
        table.add_column(column)
    want = {"primary": "Primary", "secondary": "Secondary"}.get(desired)
    for name, state in sorted(document.get("drbd", {}).items()):
        sync = "" if state.get("sync_percent") is None else "%.1f%%" % state["sync_percent"]
        table.add_row(name, state["role"], state["peer_role"], state["connection"], state["disk"],
                      state["peer_disk"], sync, _mark(want is None or state["role"] == want))
    return table


def _service_table(document, desired):
    table = Table(title="target and floating IP")
    for column in ("what", "state", "expected", "as expected"):
        table.add_column(column)
    target = document.get("target") or {}
    serving = bool(target.get("serving"))
    want_up = desired == "primary"
    table.add_row("iSCSI target", "serving" if serving else "running" if target.get("running")
                  else "stopped", "serving" if want_up else "stopped",
                  _mark(desired == "hold" or serving == want_up))
    vip = document.get("floating_ip") or {}
    table.add_row("floating IP %s" % vip.get("address", ""), "local" if vip.get("local")
                  else "not local", "local" if want_up else "not local",
                  _mark(desired == "hold" or bool(vip.get("local")) == want_up))
    return table


def show(config, document, once=False, console=None, refresh=2.0):
    from iscsi_ha.cli.cfg_main import read_status
    console = console or Console()
    if once or not console.is_terminal:
        console.print(render(config, document))
        return
    with Live(render(config, document), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(refresh)
            live.update(render(config, read_status(config)))
