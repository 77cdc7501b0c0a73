"""``iscsi-cfg drbd-config``: the DRBD configuration iscsi-ha's safety relies on, for this host's
resources, with the installed handlers' paths; and the ``check`` findings that compare it with
``drbdadm dump`` on both hosts.

Where the words come from: drbd.conf(5) of drbd-utils (``user/v84`` and ``user/v9``): in 8.4
``fencing`` is a ``disk`` option and the handler run after a resync is ``after-resync-target``;
in 9 ``fencing`` is a ``net`` option and ``unfence-peer`` exists.
"""
import os

from iscsi_ha import fencing
from iscsi_ha import peer as peer_mod

OK, PROBLEM, INFO = "ok", "PROBLEM", "info"
RISK = ("without it a failover after a replication-link failure may promote stale data, so "
        "the agent refuses automatic failover")


def handler_paths(config):
    libexec = os.path.dirname(config.FENCE_PEER_HANDLER) or "/usr/libexec/iscsi-ha"
    return {"fence-peer": config.FENCE_PEER_HANDLER,
            "unfence": config.UNFENCE_PEER_HANDLER,
            "split-brain": os.path.join(libexec, "drbd-split-brain-handler")}


def stanza(config, version):
    """The text to merge into each resource's drbd.conf section (both hosts)."""
    paths = handler_paths(config)
    v84 = version == "8.4"
    lines = ["# iscsi-ha: DRBD %s settings its failover safety relies on. Merge them into each "
             "resource" % version,
             "# on BOTH hosts, then run `drbdadm adjust RESOURCE` on both and "
             "`iscsi-cfg check`.",
             "# fencing resource-and-stonith: a Primary that loses its peer freezes I/O until "
             "the",
             "# fence-peer handler has outdated the peer through the XAPI plugin on the "
             "management network."]
    for name in config.DRBD_RESOURCES:
        lines.append("resource %s {" % name)
        if v84:
            lines += ["    disk {", "        fencing resource-and-stonith;", "    }"]
        lines += ["    net {", "        protocol C;"]
        if not v84:
            lines.append("        fencing resource-and-stonith;")
        lines += ["        after-sb-0pri disconnect;", "        after-sb-1pri disconnect;",
                  "        after-sb-2pri disconnect;", "    }",
                  "    handlers {",
                  '        fence-peer "%s";' % paths["fence-peer"],
                  '        %s "%s";' % ("after-resync-target" if v84 else "unfence-peer",
                                        paths["unfence"]),
                  '        split-brain "%s";' % paths["split-brain"],
                  "    }", "}"]
    return "\n".join(lines)


def drbd_config(ctx, version=None):
    config = ctx.config
    if version is None:
        version = config.DRBD_VERSION
        if version == "auto":
            try:
                version = ctx.adapters.drbd.version
            except Exception:  # DRBD not loaded: say so and print 8.4's (XCP-ng's default)
                version = "8.4"
                ctx.say("# DRBD_VERSION=auto and DRBD is not loaded here: printing 8.4's "
                        "syntax (use --drbd-version 9 for DRBD 9)")
    for line in stanza(config, version).splitlines():
        ctx.say(line)
    missing = [p for p in handler_paths(config).values() if not os.access(p, os.X_OK)]
    for path in missing:
        ctx.say("# warning: %s is not installed (or not executable) on this host" % path)
    return 0


def fencing_findings(ctx, with_peer=True, timeout=None):
    """Every difference between what ``drbdadm dump`` says on each host and the stanza."""
    config = ctx.config
    found = []
    if config.ALLOW_UNFENCED_FAILOVER:
        found.append((PROBLEM, "ALLOW_UNFENCED_FAILOVER=1: a disconnected Secondary is promoted "
                               "without proof that its data is current; writes the peer "
                               "acknowledged may be lost (HA-Lizard's old behaviour)"))
    sides = [("this host", fencing.local_fencing(ctx.adapters.drbd, config))]
    if with_peer:
        try:
            answer = peer_mod.call(ctx, "fencing", timeout=timeout)
            sides.append(("peer %s" % answer.get("host", "?"), answer.get("resources") or {}))
        except peer_mod.PeerError as exc:
            found.append((PROBLEM, "DRBD fencing on the peer: cannot ask it (%s)" % exc))
    for side, resources in sides:
        for name in config.DRBD_RESOURCES:
            entry = resources.get(name) or {"problems": ["not in drbdadm dump"]}
            problems = list(entry.get("problems") or [])
            handlers = entry.get("handlers") or {}
            if not problems:
                found.append((OK, "DRBD %s fencing on %s: resource-and-stonith with %s"
                              % (name, side, config.FENCE_PEER_HANDLER)))
            else:
                found.append((PROBLEM, "DRBD %s fencing on %s: %s; `iscsi-cfg drbd-config` "
                              "prints what to set; %s" % (name, side, "; ".join(problems),
                                                          RISK)))
            unfence = handlers.get("after-resync-target") or handlers.get("unfence-peer")
            if not unfence:
                found.append((INFO, "DRBD %s on %s: no after-resync-target/unfence-peer "
                              "handler (%s logs the peer's return)"
                              % (name, side, config.UNFENCE_PEER_HANDLER)))
    if config.FENCE_PEER_TIMEOUT >= config.DRBD_TIMEOUT:
        found.append((PROBLEM, "FENCE_PEER_TIMEOUT (%.0f s) must be shorter than DRBD_TIMEOUT "
                      "(%.0f s): DRBD runs the handler inside a promotion"
                      % (config.FENCE_PEER_TIMEOUT, config.DRBD_TIMEOUT)))
    return found
