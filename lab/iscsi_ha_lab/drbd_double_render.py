"""What the DRBD double prints: /proc/drbd, ``drbdsetup status [--json]``, ``drbdadm status``,
``role``/``cstate``/``dstate`` and ``drbdadm dump`` (the arguments and error texts are in
:mod:`iscsi_ha_lab.drbd_double_cli`). Every renderer reads a host's view of the world
(``World.view``); none changes anything.

Where each format comes from (facts checked while writing this, no code copied):

- /proc/drbd (8.4): ``drbd_seq_show()`` / ``drbd_syncer_progress()`` in LINBIT/drbd-8.4
  ``drbd/drbd_proc.c``; header as in the real sample of LINBIT/drbd issue #61. DRBD 9's /proc/drbd
  has only the version lines (LINBIT/drbd ``drbd/drbd_proc.c``).
- ``drbdsetup status [--json]`` and ``drbdadm status``: ``status_cmd()`` and the ``*_status*()``
  functions of drbd-utils v9.22.0 ``user/v9/drbdsetup.c`` (JSON shape also in the real output of
  ClusterLabs/ha_cluster_exporter issue #25); 8.4 compat text (``peer`` connection name,
  ``replication:Established`` shown) from ``user/v84/drbdsetup.c`` and LINBIT/drbd issue #97;
  8.4's drbdsetup has no ``--json`` (``status: unrecognized option '--json'``, LINBIT/drbd #129).
- ``drbdadm dstate`` of a resource that is down: drbdmeta's ``dstate`` fallback
  (``user/shared/drbdmeta.c`` and ``adm_generic_b()`` in ``user/v84/drbdadm_main.c``).
"""
PROC_HEADER = {
    "8.4": "version: 8.4.11 (api:1/proto:86-101)\nsrcversion: 9B671CCC1F00886BA069043\n",
    "9": "version: 9.2.8 (api:2/proto:86-122)\nGIT-hash: 0000000000000000000000000000000000000000"
         " build by drbd-double, 2024-01-01 00:00:00\nTransports (api:21): tcp (9.2.8)\n",
}


def _peer(st, host):
    return [h for h in st["hosts"] if h != host][0]


def _dump(st, host, res):
    """``drbdadm dump RES``: the resource as drbdadm prints ``host``'s parsed configuration
    (layout of drbd-utils' dump; the fencing policy sits in ``disk`` on 8.4 and ``net`` on 9;
    handlers as configured with ``World.set_handler``). dont-care is DRBD's default and is not
    printed."""
    minor = st["resources"][res]["minor"]
    hosts = []
    for name in sorted(st["hosts"]):
        hosts.append("    on %s {\n        device           minor %d;\n"
                     "        disk             /var/lib/drbd-double/%s/drbd%d;\n"
                     "        meta-disk        internal;\n"
                     "        address          ipv4 %s:7789;\n    }\n"
                     % (name, minor, name, minor, st["hosts"][name]["address"]))
    policy = st["hosts"][host]["fencing"]
    sections = ""
    if policy != "dont-care":
        sections = "    %s {\n        fencing          %s;\n    }\n" % (
            "disk" if st["version"] == "8.4" else "net", policy)
    handlers = st.get("handlers", {}).get(host, {})
    if handlers:
        sections += "    handlers {\n"
        for name in sorted(handlers):
            command = " ".join(handlers[name]["argv"])      # quoted only with spaces, as
            if " " in command:                               # drbdadm dump does
                command = '"%s"' % command
            sections += "        %-16s %s;\n" % (name, command)
        sections += "    }\n"
    return "# resource %s on %s: not ignored, not stacked\nresource %s {\n%s%s}\n\n" % (
        res, host, res, "".join(hosts), sections)


def _meta_dstate(disk):
    """drbdmeta's dstate of a resource that is down (from its meta-data flags)."""
    if disk["disk"] == "UpToDate":
        return "UpToDate\n" if disk["pdsk"] == "Outdated" else "Consistent\n"
    return disk["disk"] + "\n"


def render_query(st, command, res, view, peer_host):
    v84 = st["version"] == "8.4"
    if command == "role":
        return "%s/%s\n" % (view["role"], view["peer_role"]) if v84 else view["role"] + "\n"
    if command == "cstate":
        return (view["cstate"] if v84 else view["conn"]) + "\n"
    if command == "dstate":
        return "%s/%s\n" % (view["disk"], view["peer_disk"])
    lines = ["%s role:%s" % (res, view["role"]), "  disk:%s" % view["disk"]]
    name = "peer" if v84 else peer_host
    if not view["connected"]:
        lines.append("  %s connection:%s" % (name, view["conn"]))
        return "\n".join(lines) + "\n\n"
    lines.append("  %s role:%s" % (name, view["peer_role"]))
    parts = []
    if v84 or view["repl"] != "Established":
        parts.append("replication:%s" % view["repl"])
    parts.append("peer-disk:%s" % view["peer_disk"])
    if view["sync"]:
        done, total, _ = view["sync"]
        parts.append("done:%.2f" % (100.0 * done / total))
    lines.append("    " + " ".join(parts))
    return "\n".join(lines) + "\n\n"


def _json_peer_device(view):
    done, total, elapsed = view["sync"] or (view["size"], view["size"], 0.0)
    left = (total - done) // 512
    size = view["size"] // 512
    fields = [("volume", "0"), ("replication-state", '"%s"' % view["repl"]),
              ("peer-disk-state", '"%s"' % view["peer_disk"]), ("peer-client", "false"),
              ("resync-suspended", '"no"'), ("received", "0"), ("sent", "0"),
              ("out-of-sync", str(left // 2)), ("pending", "0"), ("unacked", "0"),
              ("has-sync-details", "true" if view["sync"] else "false"),
              ("has-online-verify-details", "false"),
              ("percent-in-sync", "%.2f" % (100.0 * (1 - float(left) / size)))]
    if view["sync"]:
        ms = int(elapsed * 1000)
        rate = (done / 1048576.0) / max(elapsed, 0.001)
        fields += [("rs-total", str(total // 512)), ("rs-dt-start-ms", str(ms)),
                   ("rs-paused-ms", "0"), ("rs-dt0-ms", str(ms)),
                   ("rs-db0-sectors", str(done // 512)), ("rs-dt1-ms", str(ms)),
                   ("rs-db1-sectors", str(done // 512)), ("rs-failed", "0"),
                   ("rs-same-csum", "0"), ("want", "0.00"), ("db0/dt0 [MiB/s]", "%.2f" % rate),
                   ("db1/dt1 [MiB/s]", "%.2f" % rate),
                   ("estimated-seconds-to-finish",
                    "%.0f" % ((total - done) / 1048576.0 / rate if rate else 987654321)),
                   ("db/dt [MiB/s]", "%.2f" % rate),
                   ("percent-resync-done", "%.2f" % (100.0 * done / total))]
    body = ",\n".join('          "%s": %s' % field for field in fields)
    return "        {\n%s\n        }" % body


def _json_resource(world, st, host, res):
    view = world.view(st, host, res)
    peer = _peer(st, host)
    frozen = "true" if view["suspended"] else "false"     # susp-fen is the only suspension
    head = ('{\n  "name": "%s",\n  "node-id": %d,\n  "role": "%s",\n  "suspended": %s,\n'
            '  "suspended-user": false,\n  "suspended-no-data": false,\n'
            '  "suspended-fencing": %s,\n  "suspended-quorum": false,\n'
            '  "force-io-failures": false,\n  "write-ordering": "flush",\n  "devices": [\n'
            % (res, st["hosts"][host]["node_id"], view["role"], frozen, frozen))
    device = ('    {\n      "volume": 0,\n      "minor": %d,\n      "disk-state": "%s",\n'
              '      "client": false,\n      "quorum": true,\n      "size": %d,\n'
              '      "read": 0,\n      "written": 0,\n      "al-writes": 0,\n'
              '      "bm-writes": 0,\n      "upper-pending": 0,\n      "lower-pending": 0\n'
              '    }' % (view["minor"], view["disk"], view["size"] // 1024))
    connection = ('    {\n      "peer-node-id": %d,\n      "name": "%s",\n'
                  '      "connection-state": "%s", \n      "congested": false,\n'
                  '      "peer-role": "%s",\n      "ap-in-flight": 0,\n'
                  '      "rs-in-flight": 0,\n      "peer_devices": [\n%s ]\n    }'
                  % (st["hosts"][peer]["node_id"], peer, view["conn"], view["peer_role"],
                     _json_peer_device(view)))
    return head + device + ' ],\n  "connections": [\n' + connection + " ]\n}\n"


def render_status_json(world, st, host, names):
    """``drbdsetup status --json`` (drbd-utils 9.22 layout, including its odd whitespace)."""
    return "[\n" + ",\n".join(_json_resource(world, st, host, r) for r in names) + "]\n\n"


def _progress_lines(view):
    """The two /proc/drbd resync lines (8.4 drbd_syncer_progress format)."""
    done, total, elapsed = view["sync"]
    total_kb, left_kb = total // 1024, (total - done) // 1024
    bits_total, bits_left = total_kb // 4, left_kb // 4
    per_mil = 1000 - (bits_left >> 10) * 1000 // (1 + (bits_total >> 10))
    x = per_mil // 50
    bar = "=" * max(0, x - 1) + ">" + "." * (20 - x)
    speed = int((done // 1024) / max(elapsed, 1.0))
    remaining = int(left_kb / speed) if speed else 0
    return ("\t[%s] sync'ed:%3d.%d%% (%d/%d)K\n\tfinish: %d:%02d:%02d speed: %s (%s)%s K/sec\n"
            % (bar, per_mil // 10, per_mil % 10, left_kb, total_kb, remaining // 3600,
               remaining % 3600 // 60, remaining % 60, _grouped(speed), _grouped(speed),
               " want: %s" % _grouped(speed) if view["repl"] == "SyncTarget" else ""))


def _grouped(value):
    return "{:,}".format(int(value))


def render_proc_drbd(world, st, host):
    """/proc/drbd as ``host`` sees it: 8.4 lists every configured minor, 9 only the version."""
    text = PROC_HEADER[st["version"]]
    if st["version"] != "8.4":
        return text
    previous = -1
    for res in sorted(st["resources"], key=lambda r: st["resources"][r]["minor"]):
        view = world.view(st, host, res)
        if not view["up"]:
            continue
        if view["minor"] != previous + 1:
            text += "\n"           # DRBD 8.4 marks a gap in the minor numbers with a blank line
        previous = view["minor"]
        left_kb = (view["sync"][1] - view["sync"][0]) // 1024 if view["sync"] else 0
        protocol = " " if view["cstate"] == "StandAlone" else "C"
        # the first flag is 's' while I/O is suspended (drbd_proc.c drbd_seq_show())
        text += ("%2d: cs:%s ro:%s/%s ds:%s/%s %s %s-----\n"
                 "    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:%d\n"
                 % (view["minor"], view["cstate"], view["role"], view["peer_role"],
                    view["disk"], view["peer_disk"], protocol,
                    "s" if view["suspended"] else "r", left_kb))
        if view["sync"]:
            text += _progress_lines(view)
    return text
