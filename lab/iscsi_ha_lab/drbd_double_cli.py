"""``drbdadm`` and ``drbdsetup`` of the DRBD double: arguments, DRBD's error texts, and which
output each command prints (the output formats are in :mod:`iscsi_ha_lab.drbd_double_render`).

Where each text comes from (facts checked while writing this, no code copied):

- State change errors and their exit codes: drbd-utils ``user/v84/drbd_strings.c`` and
  drbd-headers ``drbd_strings.c`` (``(-1) Multiple primaries not allowed by config``, ``(-2) Need
  access to UpToDate data``, ``(-12) Device is held open by someone``); ``print_config_error()``
  in ``user/v84/drbdsetup.c`` / ``user/v9/drbdsetup.c``: ``<obj>: State change failed: (N) TEXT``,
  exit 17 for -2, 11 for the others; ``<obj>: Failure: (127) Device minor not allocated`` exit 10.
- ``Command '...' terminated with exit code N`` (drbdadm, for exit codes >= 10):
  ``user/shared/shared_main.c``; drbdadm then exits with that code. Real example: quantum/esos
  issue #129 (``0: Failure: (127) Device minor not allocated`` / ``additional info from kernel:``
  / ``unknown minor`` / ``Command 'drbdsetup secondary 0' terminated with exit code 10``).
- The drbdsetup command lines drbdadm runs, ``'xyz' not defined in your config (for this host).``
  (exit 1), ``drbdadm: Unknown command 'x'`` (exit 1), ``unrecognized option``: captured here from
  Debian 12's drbd-utils 9.22.0 (``drbdadm -d ...`` and ``/lib/drbd/drbdadm-84 -d ...``).
- ``Device '1' is configured!`` (drbdmeta, exit 20) for ``up`` of a resource that is up, and the
  drbdmeta ``dstate`` fallback of ``drbdadm dstate`` on a down resource: ``user/shared/drbdmeta.c``
  and ``adm_generic_b()`` in ``user/v84/drbdadm_main.c``.
"""
import sys

from iscsi_ha_lab.drbd_double import DoubleError, World
# The renderers: used here, and re-exported (render_proc_drbd, PROC_HEADER) for older importers.
from iscsi_ha_lab.drbd_double_render import (  # noqa: F401
    PROC_HEADER, _dump, _meta_dstate, _peer, render_proc_drbd, render_query, render_status_json)

SETUP84 = "/lib/drbd/drbdsetup-84"
STATE_ERRORS = {"two-primaries": (-1, "Multiple primaries not allowed by config", 11),
                "no-uptodate": (-2, "Need access to UpToDate data", 17),
                "in-use": (-12, "Device is held open by someone", 11),
                # user/v84/linux/drbd.h and drbd_strings.c; exit codes: print_config_error()
                "primary-nop": (-7, "Refusing to be Primary while peer is not outdated", 11),
                "primary": (-2, "Need access to UpToDate data", 17),
                "connected": (-6, "Refusing to be Outdated while Connected", 11),
                "inconsistent": (-16, "Disk state is lower than outdated", 5)}
BUILDTAG = ("DRBDADM_BUILDTAG=GIT-hash:\\ 409097fe02187f83790b88ac3e0d94f3c167adab\\ reproducible"
            "\\ build\\,\\ 2023-01-09\\ 14:51:18\n")     # Debian 12's drbd-utils 9.22.0
VERSION_TEXT = {
    "8.4": BUILDTAG + "DRBDADM_API_VERSION=1\nDRBD_KERNEL_VERSION_CODE=0x08040b\n"
                      "DRBDADM_VERSION_CODE=0x091600\nDRBDADM_VERSION=9.22.0\n",
    "9": BUILDTAG + "DRBDADM_API_VERSION=2\nDRBD_KERNEL_VERSION_CODE=0x090208\n"
                    "DRBD_KERNEL_VERSION=9.2.8\nDRBDADM_VERSION_CODE=0x091600\n"
                    "DRBDADM_VERSION=9.22.0\n",
}
ADM_COMMANDS = ("primary", "secondary", "connect", "disconnect", "up", "down", "role", "cstate",
                "dstate", "status", "sh-minor", "dump", "outdate", "resume-io", "get-gi")
ADM_OPTIONS = {"primary": ("--force",), "connect": ("--discard-my-data",)}


class Reply(object):
    """What one invocation prints and returns."""

    def __init__(self):
        self.rc, self.out, self.err = 0, [], []

    def fail(self, rc, text):
        self.err.append(text)
        self.rc = max(self.rc, rc)
        return self


def split_invocation(argv):
    """``--world DIR --host NAME PROG ARGS...`` -> (world_dir, host, prog, args)."""
    if len(argv) < 5 or argv[0] != "--world" or argv[2] != "--host":
        raise DoubleError("usage: --world DIR --host NAME drbdadm|drbdsetup ARGS...")
    if argv[4] not in ("drbdadm", "drbdsetup"):
        raise DoubleError("unknown program %r (drbdadm or drbdsetup)" % argv[4])
    return argv[1], argv[3], argv[4], argv[5:]


class FenceNeeded(Exception):
    """``primary`` must run the fence-peer handler first (outside the world's lock)."""

    def __init__(self, resource, cnt):
        Exception.__init__(self, resource)
        self.resource, self.cnt = resource, cnt


def invoke(world, host, prog, args):
    """Run one drbdadm/drbdsetup invocation on ``host``; return (rc, stdout, stderr).

    A promotion that needs the fence-peer handler (``drbd_set_role()``) leaves the
    transaction, runs the handler with no lock held (it may reach the peer, whose drbdadm
    needs the world), applies its exit code and runs the command again."""
    fenced = {}
    for _ in range(4):
        try:
            return _invoke_once(world, host, prog, args, fenced)
        except FenceNeeded as need:
            code = world.run_fence_handler(host, need.resource)
            with world.transaction() as st:
                fenced[need.resource] = world.apply_fence_result(
                    st, host, need.resource, code, need.cnt)
    raise DoubleError("promotion kept asking for the fence-peer handler")


def _invoke_once(world, host, prog, args, fenced):
    with world.transaction() as st:
        if host not in st["hosts"]:
            raise DoubleError("unknown host %r" % host)
        if st["hosts"][host]["crashed"]:
            raise DoubleError("host %r is crashed; World.boot() it first" % host)
        st["_fenced"] = fenced
        try:
            handler = drbdadm if prog == "drbdadm" else drbdsetup
            reply = handler(world, st, host, list(args))
        finally:
            st.pop("_fenced", None)
        first = "".join(reply.err).strip().splitlines() or ["ok"]
        world.log(st, host, [prog] + list(args), reply.rc, first[0])
    return reply.rc, "".join(reply.out), "".join(reply.err)


# -- drbdadm ---------------------------------------------------------------------------------
def _parse_adm(args, version):
    """-> (command, options, resource names) or a Reply with drbdadm's usage error."""
    command, options, names = None, [], []
    if "--version" in args or "-V" in args:
        reply = Reply()
        reply.out.append(VERSION_TEXT[version])
        return reply
    for arg in args:
        if arg == "--":
            continue
        if arg.startswith("-"):
            options.append(arg)
        elif command is None:
            command = arg
        else:
            names.append(arg)
    if command is None:
        return Reply().fail(1, "No command specified\n")
    if command not in ADM_COMMANDS:
        return Reply().fail(1, "drbdadm: Unknown command '%s'\n" % command)
    allowed = ADM_OPTIONS.get(command, ())
    if command == "secondary" and version == "9":
        allowed = ("--force",)
    for option in options:
        if option not in allowed:
            known = option in ("--force", "--discard-my-data")
            hint = "help %s" % command if known else "help"
            return Reply().fail(1, "drbdadm: unrecognized option '%s'\ntry 'drbdadm %s'\n"
                                % (option, hint))
    if not names and command != "status":
        return Reply().fail(1, "No resource names specified\n")
    return command, options, names or ["all"]


def drbdadm(world, st, host, args):
    parsed = _parse_adm(args, st["version"])
    if isinstance(parsed, Reply):          # usage error or --version
        return parsed
    command, options, names = parsed
    reply = Reply()
    for name in names:
        if name == "all" and command == "status" and st["version"] == "9":
            _setup_status(world, st, host, [], False, reply)     # one "drbdsetup status"
            continue
        if name != "all" and name not in st["resources"]:
            return reply.fail(1, "'%s' not defined in your config (for this host).\n" % name)
        for res in sorted(st["resources"]) if name == "all" else [name]:
            _adm_one(world, st, host, command, options, res, reply)
    return reply


def _setup_argv(st, host, command, res, options):
    """The drbdsetup/drbdmeta command line drbdadm runs (as drbdadm -d prints it)."""
    minor = str(st["resources"][res]["minor"])
    if st["version"] == "8.4":
        here = "ipv4:%s:7789" % st["hosts"][host]["address"]
        there = "ipv4:%s:7789" % st["hosts"][_peer(st, host)]["address"]
        argv = {"primary": [minor], "secondary": [minor], "role": [minor], "cstate": [minor],
                "dstate": [minor], "down": [res], "status": [res], "outdate": [minor],
                "resume-io": [minor],
                "connect": [res, here, there, "--protocol=C"], "disconnect": [here, there]}
        return [SETUP84, command] + argv[command] + options
    peer_id = str(st["hosts"][_peer(st, host)]["node_id"])
    argv = {"primary": [res], "secondary": [res], "role": [res], "cstate": [res, peer_id],
            "dstate": [minor], "down": [res], "status": [res], "connect": [res, peer_id],
            "outdate": [minor], "resume-io": [minor],
            "disconnect": [res, peer_id]}
    return ["drbdsetup", command] + argv[command] + options


def _adm_one(world, st, host, command, options, res, reply):
    if command == "sh-minor":
        reply.out.append("%d\n" % st["resources"][res]["minor"])
        return
    if command == "dump":
        reply.out.append(_dump(st, host, res))
        return
    if command == "get-gi":
        reply.out.append(_get_gi(st, host, res))
        return
    if command == "up":
        return _adm_up(world, st, host, res, reply)
    if command == "outdate":
        return _adm_outdate(world, st, host, res, reply)
    argv = _setup_argv(st, host, command, res, options)
    sub = Reply()
    setup_command(world, st, host, command, res, "--force" in options,
                  "--discard-my-data" in options, sub)
    if command == "dstate" and sub.rc == 10:
        reply.out.append(_meta_dstate(st["disks"][res][host]))
        return
    reply.out.extend(sub.out)
    reply.err.extend(sub.err)
    if sub.rc >= 10:
        reply.fail(sub.rc, "Command '%s' terminated with exit code %d\n" % (" ".join(argv), sub.rc))


def _get_gi(st, host, res):
    """``drbdadm get-gi RES``: drbd-utils ``dt_print_uuids()`` (8.4: four UUIDs, then the flags
    consistent, was-up-to-date, primary, connected, full-sync, peer-outdated, crashed-primary)
    and ``dt_print_v9_uuids()`` (9: four UUIDs, the local flags consistent, was-up-to-date,
    primary, crashed-primary, al-clean, al-disabled, primary-lost-quorum, then the peer's
    connected, outdated, fencing, full-sync, device-seen), in drbdtool_common.c of
    user/v84 and user/v9. The flags follow the kernel's meta-data rules (8.4 drbd_state.c
    ``after_state_ch()``: consistent when the disk is better than Inconsistent, was-up-to-date
    when better than Outdated, peer-outdated when the peer's disk is Outdated or
    Inconsistent). The double's data generations are small numbers, shown as UUIDs
    (generation << 1, the lowest bit set while Primary, as DRBD marks its current UUID); the
    history slots hold the two previous generations; the bitmap UUID is not modelled (0)."""
    disk = st["disks"][res][host]
    order = ["Diskless", "Attaching", "Failed", "Negotiating", "Inconsistent", "Outdated",
             "DUnknown", "Consistent", "UpToDate"]
    rank = order.index(disk["disk"]) if disk["disk"] in order else 0
    primary = disk["role"] == "Primary"
    gens = list(disk["generations"])
    current = (gens[-1] << 1) | (1 if primary else 0)
    history = [g << 1 for g in reversed(gens[:-1])][:2]
    history += [0] * (2 - len(history))
    uuids = ":".join("%016X" % u for u in [current, 0] + history)
    connected = bool(st["links"][res]["connected"]) and disk["up"]
    peer_out = disk["pdsk"] in ("Outdated", "Inconsistent")
    consistent, was_utd = rank > order.index("Inconsistent"), rank > order.index("Outdated")
    if st["version"] == "8.4":
        flags = [consistent, was_utd, primary, connected, False, peer_out, False]
    else:
        fencing = st["hosts"][host]["fencing"] != "dont-care"
        flags = [consistent, was_utd, primary, False, False, False, False,
                 connected, peer_out, fencing, False, True]
    return "%s:%s\n" % (uuids, ":".join("1" if f else "0" for f in flags))


def _adm_outdate(world, st, host, res, reply):
    """``adm_outdate()``: drbdsetup outdate; 17 (Primary) and 5 (Inconsistent) are passed on
    as they are; on a resource that is down drbdmeta outdates the meta-data."""
    minor = str(st["resources"][res]["minor"])
    outcome = world.outdate(st, host, res)
    if outcome == "ok":
        return reply
    code, text, rc = STATE_ERRORS[outcome]
    reply.fail(rc, "%s: State change failed: (%d) %s\n" % (minor, code, text))
    if outcome == "connected":      # adm_outdate() then tries drbdmeta, which refuses
        meta = "v08" if st["version"] == "8.4" else "v09"
        reply.fail(20, "Device '%s' is configured!\n" % minor)
        reply.fail(20, "Command 'drbdmeta %s %s %s internal outdate' terminated with exit code"
                   " 20\n" % (minor, meta, world.device_path(host, res)))
    return reply


def _adm_up(world, st, host, res, reply):
    outcome = world.up(st, host, res)
    if outcome == "configured":
        minor = st["resources"][res]["minor"]
        meta = "v08" if st["version"] == "8.4" else "v09"
        reply.fail(20, "Device '%d' is configured!\n" % minor)
        reply.fail(20, "Command 'drbdmeta %d %s %s internal apply-al' terminated with exit code"
                   " 20\n" % (minor, meta, world.device_path(host, res)))


# -- drbdsetup -------------------------------------------------------------------------------
def setup_command(world, st, host, command, res, force, discard, reply):
    """One drbdsetup command on an existing resource name; results appended to ``reply``."""
    v84 = st["version"] == "8.4"
    minor = str(st["resources"][res]["minor"])
    obj = minor if v84 and command in ("primary", "secondary", "role", "cstate", "dstate",
                                       "resume-io") else res
    if command == "dstate":
        obj = minor
    view = world.view(st, host, res)
    if command in ("role", "cstate", "dstate", "status"):
        if not view["up"]:
            return _not_up(st, command, obj, reply)
        reply.out.append(render_query(st, command, res, view, _peer(st, host)))
        return reply
    fenced = st.get("_fenced", {})
    operation = {"primary": lambda: world.promote(st, host, res, force, fenced.get(res)),
                 "resume-io": lambda: world.resume_io(st, host, res),
                 "secondary": lambda: world.demote(st, host, res, force),
                 "connect": lambda: world.connect(st, host, res, discard),
                 "disconnect": lambda: world.disconnect(st, host, res),
                 "down": lambda: world.down(st, host, res)}[command]
    outcome = operation()
    if outcome == "fence-needed":
        raise FenceNeeded(res, st["links"][res]["connect_cnt"])
    if outcome == "not-up":
        return _not_up(st, command, obj, reply)
    if outcome == "net-configured":
        return reply.fail(10, "%s: Failure: (125) Device has a net-config (use disconnect "
                          "first)\n" % obj)
    if outcome in STATE_ERRORS:
        code, text, rc = STATE_ERRORS[outcome]
        return reply.fail(rc, "%s: State change failed: (%d) %s\n" % (obj, code, text))
    return reply


def _not_up(st, command, obj, reply):
    """What drbdsetup says about a resource that is down (its minor does not exist)."""
    if command == "status":
        return reply.fail(10, "%s: No such resource\n" % obj)
    if st["version"] == "8.4":
        if obj.isdigit():
            return reply.fail(10, "%s: Failure: (127) Device minor not allocated\n"
                              "additional info from kernel:\nunknown minor\n" % obj)
        return reply.fail(10, "%s: Failure: (162) Invalid configuration request\n"
                          "additional info from kernel:\nunknown resource\n" % obj)
    texts = {"role": "Unknown resource", "cstate": "No such connection",
             "dstate": "No such device", "status": "No such resource"}
    if command in texts:
        return reply.fail(10, "%s: %s\n" % (obj, texts[command]))
    return reply.fail(10, "%s: Failure: (158) Unknown resource\n"
                      "additional info from kernel:\nunknown resource\n" % obj)


def _setup_object(st, command, obj):
    """Map drbdsetup's object argument (minor, /dev/drbdN or resource) to a resource name."""
    needs_minor = command == "dstate" or (st["version"] == "8.4" and command != "down")
    if needs_minor:
        digits = obj.replace("/dev/drbd", "").replace("minor-", "")
        names = [r for r, spec in st["resources"].items()
                 if digits.isdigit() and spec["minor"] == int(digits)]
        if not digits.isdigit():
            raise ValueError("Cannot determine minor device number of device '%s'\n" % obj)
        return names[0] if names else None, digits
    return (obj if obj in st["resources"] else None), obj


def drbdsetup(world, st, host, args):
    reply = Reply()
    if not args:
        return reply.fail(20, "USAGE: drbdsetup command {arguments} [options]\n")
    command, rest = args[0], args[1:]
    objects = [a for a in rest if not a.startswith("-")]
    options = [a for a in rest if a.startswith("-")]
    if command not in ("status", "role", "cstate", "dstate", "primary", "secondary", "down"):
        return reply.fail(20, "drbdsetup: the DRBD double does not model '%s'\n"
                          "unknown command\n" % command)
    allowed = {"status": ("--json", "--verbose", "--statistics"), "primary": ("--force",),
               "secondary": ("--force",) if st["version"] == "9" else ()}.get(command, ())
    if st["version"] == "8.4" and command == "status":
        allowed = ("--verbose", "--statistics")
    for option in options:
        if option not in allowed:
            return reply.fail(20, "%s: unrecognized option '%s'\n" % (command, option))
    if command == "status":
        return _setup_status(world, st, host, objects, "--json" in options, reply)
    if len(objects) != 1:
        return reply.fail(20, "Missing argument 1 to command\n")
    try:
        res, obj = _setup_object(st, command, objects[0])
    except ValueError as exc:
        return reply.fail(20, str(exc))
    if res is None:
        return _not_up(st, command, obj, reply)
    return setup_command(world, st, host, command, res, "--force" in options, False, reply)


def _setup_status(world, st, host, objects, as_json, reply):
    wanted = objects[0] if objects else "all"
    names = [r for r in sorted(st["resources"]) if st["disks"][r][host]["up"]
             and wanted in ("all", r)]
    if as_json:
        reply.out.append(render_status_json(world, st, host, names))
    elif not names and wanted == "all":
        reply.out.append("# No currently configured DRBD found.\n")
    for res in names if not as_json else []:
        reply.out.append(render_query(st, "status", res, world.view(st, host, res),
                                      _peer(st, host)))
    if not names and wanted != "all":
        reply.fail(10, "%s: No such resource\n" % wanted)
    return reply


def main(argv=None):
    """``python -m iscsi_ha_lab.drbd_double_cli --world DIR --host NAME drbdadm|drbdsetup
    ARGS`` (what the wrappers run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 7 and argv[4] == "fence-peer":      # the double's drbd_async_h "thread"
        World(argv[1]).fence_peer_thread(argv[3], argv[5], int(argv[6]))
        return 0
    try:
        world_dir, host, prog, args = split_invocation(argv)
        world = World(world_dir)
        if prog == "drbdsetup" and args[:1] == ["events2"]:
            from iscsi_ha_lab.drbd_double_events import stream
            return stream(world, host, args[1:])
        rc, out, err = invoke(world, host, prog, args)
    except DoubleError as exc:
        rc, out, err = 20, "", "drbd double: %s\n" % exc
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


if __name__ == "__main__":
    sys.exit(main())
