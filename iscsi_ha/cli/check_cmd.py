"""``iscsi-cfg check``: the configuration, this host's prerequisites (tools, DRBD resources,
tgtd, the agent), and that both hosts export the same target IQN, LUN numbers and SCSI identity
(the pool's SR is bound to that identity; the peer's side comes through the XAPI plugin).

tgtd derives a LUN's SCSI identity from the target id (tid) and the LUN number: tid 1, LUN 10
gives SCSI ID ``IET     0001000a`` and SCSI SN ``beaf110`` (real tgtadm output in
tests/fixtures/tgtadm/target_lun10_acl_all.txt). A host that does not export the target now
would export it under the lowest free tid of its tgtd, so that is the identity it is held to.
"""
import shutil

from iscsi_ha.adapters.run import split_command
from iscsi_ha.adapters.xapi import XapiError
from iscsi_ha import peer as peer_mod

OK, PROBLEM, INFO = "ok", "PROBLEM", "info"


def default_identity(tid, lun):
    """(SCSI ID, SCSI SN) tgtd gives LUN ``lun`` of target ``tid`` without --params."""
    return "IET     %04x%04x" % (tid, lun), "beaf%d%d" % (tid, lun)


def _tools(config):
    tools = [("DRBD_ADM", config.DRBD_ADM), ("TGTADM", config.TGTADM),
             ("IP_COMMAND", config.IP_COMMAND), ("ARPING", config.ARPING),
             ("TARGET_STATUS_COMMAND", config.TARGET_STATUS_COMMAND),
             ("TARGET_START_COMMAND", config.TARGET_START_COMMAND),
             ("TARGET_STOP_COMMAND", config.TARGET_STOP_COMMAND),
             ("ISCSI_TARGET_SERVICE", config.ISCSI_TARGET_SERVICE)]
    if config.DRBD_VERSION != "8.4":
        tools.insert(1, ("DRBD_SETUP", config.DRBD_SETUP))
    return tools


def tool_findings(config):
    found = []
    for key, line in _tools(config):
        name = split_command(line)[0]
        where = shutil.which(name)
        found.append((OK, "tool %s (%s): %s" % (name, key, where)) if where else
                     (PROBLEM, "tool %s (%s): not found on PATH" % (name, key)))
    return found


def drbd_findings(ctx):
    states, error = ctx.drbd_states()
    if error:
        return [(PROBLEM, "DRBD: %s" % error)]
    return [(OK, "DRBD %s: %s" % (name, states[name].describe()))
            for name in ctx.config.DRBD_RESOURCES]


def fencing_findings(ctx, with_peer=True):
    """DRBD fencing on both hosts, compared with `iscsi-cfg drbd-config`."""
    from iscsi_ha.cli import drbd_config_cmd
    return drbd_config_cmd.fencing_findings(ctx, with_peer=with_peer)


def local_identity(ctx):
    """What this host exports, or would: {iqn, luns {"10": device}, running, exported {iqn:
    {tid, luns {"10": {scsi_id, scsi_sn, backing_store}}}}, error}."""
    config = ctx.config
    found = {"iqn": config.ISCSI_TARGET_IQN,
             "luns": dict((str(n), d) for n, d in sorted(config.ISCSI_LUNS.items())),
             "running": False, "exported": {}, "error": ""}
    try:
        state = ctx.adapters.target.observe()
    except Exception as exc:  # reported, the comparison goes on with the configuration
        found["error"] = str(exc) or type(exc).__name__
        return found
    found["running"] = bool(state.running)
    found["error"] = state.error or ""
    for iqn, info in sorted(state.targets.items()):
        found["exported"][iqn] = {"tid": info.tid, "luns": dict(
            (str(n), {"scsi_id": lun.scsi_id, "scsi_sn": lun.scsi_sn,
                      "backing_store": lun.backing_store})
            for n, lun in sorted(info.luns.items()) if n != 0)}
    return found


def effective_identity(side, iqn):
    """{lun: (scsi_id, scsi_sn, how)} for target ``iqn`` on one side."""
    exported = side.get("exported") or {}
    target = exported.get(iqn)
    if target is not None:
        return dict((int(n), (v["scsi_id"], v["scsi_sn"], "exported, tid %d" % target["tid"]))
                    for n, v in target["luns"].items())
    used = set(t["tid"] for t in exported.values())
    tid = min(set(range(1, len(used) + 2)) - used)
    return dict((int(n), default_identity(tid, int(n)) + ("not exported now; tid %d when "
                                                           "started" % tid,))
                for n in side.get("luns") or {})


def compare_identity(mine, theirs):
    """Findings comparing this host's identity with the peer's."""
    found = []
    if mine["iqn"] != theirs["iqn"]:
        return [(PROBLEM, "target IQN differs: here %r, on the peer %r" % (
            mine["iqn"], theirs["iqn"]))]
    if not mine["iqn"]:
        return [(INFO, "ISCSI_TARGET_IQN is empty on both hosts: the target comes from "
                 "tgtd's own configuration, which iscsi-cfg cannot compare")]
    found.append((OK, "target IQN %s on both hosts" % mine["iqn"]))
    here, there = sorted(int(n) for n in mine["luns"]), sorted(int(n) for n in theirs["luns"])
    if here != there:
        found.append((PROBLEM, "LUN numbers differ: here %s, on the peer %s" % (here, there)))
        return found
    found.append((OK, "LUN numbers %s on both hosts" % ", ".join(map(str, here))))
    ours, peers = effective_identity(mine, mine["iqn"]), effective_identity(theirs, mine["iqn"])
    for lun in here:
        a, b = ours[lun], peers[lun]
        same = a[:2] == b[:2]
        found.append((OK if same else PROBLEM, "LUN %d SCSI identity: here %r/%s (%s), on the "
                      "peer %r/%s (%s)%s" % (lun, a[0], a[1], a[2], b[0], b[1], b[2],
                                             "" if same else ": the SR would not recognise "
                                             "the LUN after a move")))
    return found


def peer_findings(ctx, timeout=None):
    try:
        theirs = peer_mod.call(ctx, "identity", timeout=timeout)
    except peer_mod.PeerError as exc:
        return [(PROBLEM, "peer: %s" % exc)]
    found = [(OK, "peer %s answers through the XAPI plugin" % theirs.get("host", "?"))]
    if theirs.get("error"):
        found.append((INFO, "peer's tgtd: %s" % theirs["error"]))
    return found + compare_identity(local_identity(ctx), theirs)


def sr_findings(ctx):
    """The pool's iSCSI SRs that point at the floating IP must name our IQN."""
    xapi = ctx.xapi()
    try:
        pbds = xapi.call("PBD.get_all_records")
    except XapiError as exc:
        return [(PROBLEM, "XAPI: %s" % exc)]
    finally:
        xapi.close()
    config, found = ctx.config, []
    for record in pbds.values():
        device = record.get("device_config") or {}
        if device.get("target") != config.DRBD_VIRTUAL_IP or "targetIQN" not in device:
            continue
        same = not config.ISCSI_TARGET_IQN or device["targetIQN"] == config.ISCSI_TARGET_IQN
        found.append((OK if same else PROBLEM, "a PBD of the pool reaches %s as %s%s" % (
            device["target"], device["targetIQN"], "" if same else
            " but ISCSI_TARGET_IQN is %s" % config.ISCSI_TARGET_IQN)))
        break
    return found or [(INFO, "no iSCSI PBD of the pool points at %s" % config.DRBD_VIRTUAL_IP)]


def agent_findings(ctx):
    document = ctx.status()
    if not document.get("agent_running"):
        return [(PROBLEM, "agent: not running on this host (service iscsi-ha start)")]
    if document.get("stale"):
        return [(PROBLEM, "agent: its status is %.0f s old" % document.get("age_s", 0))]
    return [(OK, "agent: running, status %.1f s old, health %s" % (
        document.get("age_s", 0), document.get("health"))),
        (INFO, "target: %s" % _target_words(document.get("target")))]


def _target_words(target):
    if not target:
        return "unknown"
    if target.get("serving"):
        return "serving"
    return "running, not serving (%s)" % "; ".join(target.get("missing") or []) if \
        target.get("running") else "stopped"


def initiator_findings(config):
    """What this dom0's open-iscsi settings cost in a failover, and the advised values."""
    from iscsi_ha import initiator
    params = getattr(config, "ISCSI_TARGET_PARAMS", None) or {}
    target_t2w = int(params.get("DefaultTime2Wait", 2))       # tgtd's default is 2
    return initiator.findings(getattr(config, "ISCSID_CONF", "/etc/iscsi/iscsid.conf"),
                              target_t2w)


def check(ctx, with_peer=True):
    """Print every finding; 0 when there is no problem, 1 otherwise."""
    config = ctx.config
    ctx.say("config %s: valid" % config.path)
    for warning in config.warnings:
        ctx.say("  warning: %s" % warning)
    findings = tool_findings(config) + drbd_findings(ctx) + \
        fencing_findings(ctx, with_peer=with_peer) + agent_findings(ctx) + \
        initiator_findings(config)
    if with_peer:
        findings += peer_findings(ctx) + sr_findings(ctx)
    for kind, sentence in findings:
        ctx.say("%-8s %s" % (kind, sentence))
    problems = sum(1 for kind, _ in findings if kind == PROBLEM)
    ctx.say("check: %s" % ("no problem found" if not problems else "%d problem(s)" % problems))
    return 1 if problems else 0
