"""iscsi-ha-mediator: the service (``serve``), its setup (``init``) and the admin CLI.

Admin commands talk to the running service over its local unix socket only. Exit codes as in
the rest of iscsi-ha: 0 ok, 1 refused/degraded, 2 usage or configuration error / service down.
Errors are one line on stderr, never a traceback.
"""
import argparse
import asyncio
import datetime
import io
import json
import logging
import os
import platform
import pwd
import re
import shutil
import socket
import sys
import tarfile
import time

from . import __version__
from . import config as cfgmod
from . import pki
from . import storage as st

OK, REFUSED, ERROR = 0, 1, 2


class CliError(Exception):
    def __init__(self, message, code=ERROR):
        Exception.__init__(self, message)
        self.code = code


def _duration(text):
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", str(text))
    if not m:
        raise argparse.ArgumentTypeError("%r is not a duration (e.g. 90, 30m, 24h, 7d)" % text)
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _onoff(text):
    if text in ("on", "yes", "true", "1"):
        return True
    if text in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError("%r: say on or off" % text)


# -- admin socket ------------------------------------------------------------------------------
ADMIN_ANSWER_MAX = 256 << 20


def admin_call(settings, req, timeout=30.0):
    path = settings.path("admin_socket", "admin.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(req).encode() + b"\n")
        # the one-line answer, bounded: a pool's status with both nodes' reports is ~1 KB and
        # max_pools is 100,000 (a 1 MiB bound broke "status" at ~1,000 live pools)
        data = sock.makefile("rb").readline(ADMIN_ANSWER_MAX)
    except FileNotFoundError:
        raise CliError("the mediator is not running (no admin socket %s)" % path)
    except PermissionError:
        raise CliError("admin socket %s: permission denied (run as root or the mediator's "
                       "user)" % path)
    except ConnectionRefusedError:
        raise CliError("the mediator is not running (admin socket %s refuses)" % path)
    except socket.timeout:
        raise CliError("the mediator did not answer within %.0f s" % timeout)
    finally:
        sock.close()
    try:
        out = json.loads(data)
    except ValueError:
        raise CliError("the mediator closed the admin connection without an answer")
    if not out.get("ok"):
        raise CliError(out.get("error") or "refused", REFUSED)
    return out


# -- init ----------------------------------------------------------------------------------
def cmd_init(args, settings):
    state = settings.state_dir
    tls = os.path.join(state, "tls")
    if os.path.exists(os.path.join(tls, "server.crt")) and not args.force:
        raise CliError("%s already holds a server certificate (use --force to replace; node "
                       "credentials issued by the old CA stop working)" % tls)
    os.makedirs(tls, exist_ok=True)
    os.chmod(state, 0o700)
    os.chmod(tls, 0o700)
    names = args.name or [socket.getfqdn()]
    if args.server_cert or args.server_key or args.ca:
        if not (args.server_cert and args.server_key and args.ca):
            raise CliError("bring your own certificate: give --server-cert, --server-key "
                           "and --ca together")
        for src, dst in ((args.server_cert, "server.crt"), (args.server_key, "server.key"),
                         (args.ca, "ca.crt")):
            shutil.copyfile(src, os.path.join(tls, dst))
            os.chmod(os.path.join(tls, dst), 0o600)
        if args.ca_key:
            shutil.copyfile(args.ca_key, os.path.join(tls, "ca.key"))
            os.chmod(os.path.join(tls, "ca.key"), 0o600)
        made = "installed the given certificate"
    else:
        pki.init_ca(tls, "iscsi-ha-mediator CA %s" % names[0])
        pki.issue_server(tls, os.path.join(tls, "server.key"), os.path.join(tls, "server.crt"),
                         names)
        made = "created a CA and a server certificate for %s" % ", ".join(names)
    with open(os.path.join(tls, "names"), "w") as handle:
        handle.write("\n".join(names) + "\n")
    if args.user and os.geteuid() == 0:
        pw = pwd.getpwnam(args.user)
        for root, dirs, files in os.walk(state):
            for n in [root] + [os.path.join(root, f) for f in files]:
                os.chown(n, pw.pw_uid, pw.pw_gid)
    print("%s in %s; CA fingerprint %s" % (made, tls, pki.fingerprint_pem(
        open(os.path.join(tls, "ca.crt")).read())[:32]))
    return OK


# -- output ----------------------------------------------------------------------------------
def _age(ms):
    if ms is None:
        return "never"
    s = ms / 1000.0
    return "%.1fs" % s if s < 120 else "%dm" % (s // 60) if s < 7200 else "%dh" % (s // 3600)


def print_pool(p, out=None):
    out = out or sys.stdout
    mode = "observer" if p["observer"] else ("auto-failover on" if p["auto_failover"]
                                             else "auto-failover OFF")
    out.write("pool %s  generation %d  primary %s  %s%s\n" % (
        p["pool"], p["generation"], p["primary"] or "-", mode,
        "" if p["can_grant"] else "  (no grant: %s)" % p["cannot_grant_reason"]))
    out.write("  %-20s %-8s %-8s %-9s %-10s %-12s %s\n" % (
        "node", "role", "golden", "outdated", "last seen", "disk", "data generation"))
    for n in p["nodes"]:
        rep = n["report"] or {}
        out.write("  %-20s %-8s %-8s %-9s %-10s %-12s %s\n" % (
            n["node"], "primary" if n["primary"] else "-",
            "yes" if n["eligible"] else "no", "yes" if n["outdated"] else "no",
            _age(n["last_seen_ms"]) + ("" if n["alive"] else "!"),
            rep.get("disk") or "?", rep.get("current_uuid") or "?"))
    out.write("  synced data generation: %s\n" % (p["synced_uuid"] or "none yet"))


def cmd_status(args, settings):
    st = admin_call(settings, {"op": "status"})
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print("iscsi-ha-mediator %s  backend %s%s  up %ss  %d connections  %d pools%s" % (
            st["version"], st["backend"], "" if st["storage_available"] else " (UNAVAILABLE)",
            st["uptime_s"], st["connections"], len(st["pools"]),
            "  restart grace %.0fs left" % st["grace_left_s"] if st["grace_left_s"] else ""))
        for p in st["pools"]:
            print_pool(p)
    bad = [p for p in st["pools"] if not all(n["alive"] for n in p["nodes"])]
    return REFUSED if bad or not st["storage_available"] else OK


def cmd_pool(args, settings):
    if args.pool_cmd == "add":
        out = admin_call(settings, {"op": "pool-add", "pool": args.pool,
                                    "nodes": [args.node1, args.node2], "lease": args.lease,
                                    "observer": args.observer})
        print("pool %s added (nodes %s, generation %d); next: iscsi-ha-mediator node "
              "credential issue %s NODE -o FILE" % (args.pool, ", ".join(
                  out["pool"]["eligible"] or [args.node1, args.node2]),
                  out["pool"]["generation"], args.pool))
    elif args.pool_cmd == "list":
        out = admin_call(settings, {"op": "pool-list"})
        if args.json:
            print(json.dumps(out["pools"], indent=2))
        else:
            print("%-30s %5s %-20s %-8s %s" % ("pool", "gen", "primary", "golden", "mode"))
            for p in out["pools"]:
                print("%-30s %5d %-20s %-8s %s" % (
                    p["pool"], p["generation"], p["primary"] or "-",
                    ",".join(p["eligible"]) or "-",
                    "observer" if p["observer"] else "auto" if p["auto_failover"] else "manual"))
    elif args.pool_cmd == "show":
        out = admin_call(settings, {"op": "pool-show", "pool": args.pool})
        if args.json:
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            print_pool(out["pool"])
            print("  credentials:")
            for c in out["credentials"]:
                print("    %-20s %s  fp %s  %s" % (c["node"], c["id"], c["fingerprint"],
                                                   "valid" if c["valid"] else "expired"))
            print("  recent audit:")
            for e in out["audit"]:
                print("    %s" % _audit_line(e))
    elif args.pool_cmd == "remove":
        admin_call(settings, {"op": "pool-remove", "pool": args.pool, "force": args.force})
        print("pool %s removed (its audit trail is kept)" % args.pool)
    elif args.pool_cmd == "set":
        out = admin_call(settings, {"op": "pool-set", "pool": args.pool,
                                    "observer": args.observer,
                                    "auto_failover": args.auto_failover})
        print_pool(out["pool"])
    return OK


def _audit_line(e):
    when = datetime.datetime.utcfromtimestamp(e.get("time", 0)).strftime("%Y-%m-%d %H:%M:%S")
    rest = {k: v for k, v in e.items() if k not in ("time", "pool", "event")}
    return "%s %-8s %-14s %s" % (when, e.get("pool") or "-", e.get("event"),
                                 " ".join("%s=%s" % kv for kv in sorted(rest.items())))


def cmd_observer(args, settings):
    out = admin_call(settings, {"op": "pool-set", "pool": args.pool, "observer": args.state})
    print_pool(out["pool"])
    return OK


def cmd_credential(args, settings):
    if args.cred_cmd in ("issue", "rotate"):
        req = {"op": "cred-" + args.cred_cmd, "pool": args.pool, "node": args.node}
        if args.cred_cmd == "rotate":
            req["overlap"] = args.overlap
        out = admin_call(settings, req)
        bundle = json.dumps(out["bundle"], indent=1)
        if args.output and args.output != "-":
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(bundle)
            print("credential %s for %s of pool %s written to %s (secret: copy it to that host "
                  "and run: iscsi-cfg mediator enroll %s)" % (
                      out["bundle"]["cred_id"], args.node, args.pool, args.output,
                      os.path.basename(args.output)))
        else:
            sys.stdout.write(bundle + "\n")
    elif args.cred_cmd == "list":
        out = admin_call(settings, {"op": "cred-list", "pool": args.pool})
        for c in out["credentials"]:
            print("%-20s %s  fp %s  %s" % (c["node"], c["id"], c["fingerprint"],
                                           "valid" if c["valid"] else "expired"))
    elif args.cred_cmd == "revoke":
        admin_call(settings, {"op": "cred-revoke", "pool": args.pool, "node": args.node,
                              "cred_id": args.id})
        print("revoked %s of %s/%s" % (args.id or "all credentials", args.pool, args.node))
    return OK


def cmd_force(args, settings):
    if not args.accept_data_loss:
        raise CliError("force-promote makes %s primary whatever its data; add "
                       "--accept-data-loss to confirm" % args.node)
    out = admin_call(settings, {"op": "force-promote", "pool": args.pool, "node": args.node,
                                "accept_data_loss": True})
    print("%s is primary of %s at generation %d (forced; audited)"
          % (args.node, args.pool, out["generation"]))
    return OK


def cmd_simulate(args, settings):
    out = admin_call(settings, {"op": "simulate", "pool": args.pool, "node": args.node,
                                "what": args.what})
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        extra = ""
        if "retry_after_ms" in out:
            extra = " (retry after %.1fs)" % (out["retry_after_ms"] / 1000.0)
        if "exit" in out:
            extra += " (fence-peer handler exit %d)" % out["exit"]
        print("%s by %s now: %s%s%s" % (args.what, args.node, out["result"],
                                        ": " + out["reason"] if out.get("reason") else "",
                                        extra))
    return OK if out["result"] in ("granted", "outdated", "already-outdated") else REFUSED


def cmd_audit(args, settings):
    out = admin_call(settings, {"op": "audit", "pool": args.pool, "limit": args.limit})
    for e in out["audit"]:
        print(json.dumps(e, sort_keys=True) if args.json else _audit_line(e))
    return OK


def _mask(text):
    return re.sub(r"(?i)^(\s*\S*(password|secret|key_file|token)\S*\s*=\s*).*$", r"\1***",
                  text, flags=re.M)


def cmd_support_bundle(args, settings):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.output or "iscsi-ha-mediator-support-%s.tar.gz" % stamp
    members = {}
    try:
        members["status.json"] = json.dumps(admin_call(settings, {"op": "status"}), indent=2)
        members["audit.json"] = json.dumps(admin_call(settings, {"op": "audit", "pool": None,
                                                                 "limit": 2000})["audit"],
                                           indent=1)
    except CliError as exc:
        members["status.json"] = json.dumps({"error": str(exc)})
    cpath = settings.get("config_path")
    if cpath and os.path.exists(cpath):
        with open(cpath) as handle:
            members["mediator.conf"] = _mask(handle.read())
    members["settings.json"] = json.dumps({k: v for k, v in settings.items()
                                           if "password" not in k}, indent=1)
    members["versions.txt"] = "iscsi-ha-mediator %s\npython %s\n%s\n" % (
        __version__, sys.version.split()[0], platform.platform())
    ca = settings.path("tls_ca", "tls/ca.crt")
    if os.path.exists(ca):
        members["ca.crt"] = open(ca).read()    # public; keys are never included
    try:
        import subprocess
        proc = subprocess.run(["journalctl", "-u", "iscsi-ha-mediator", "-n", "2000",
                               "--no-pager"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=20)
        members["journal.txt"] = proc.stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        members["journal.txt"] = "(journalctl not available)\n"
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in sorted(members.items()):
            data = text.encode()
            info = tarfile.TarInfo("iscsi-ha-mediator-support-%s/%s" % (stamp, name))
            info.size = len(data)
            info.mtime = time.time()
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    print("support bundle written to %s (no private keys; secrets masked)" % out_path)
    return OK


def cmd_serve(args, settings):
    from .server import serve
    logging.basicConfig(level=getattr(logging, settings.log_level.upper()),
                        format="%(levelname)s %(message)s" if os.environ.get("INVOCATION_ID")
                        else "%(asctime)s %(levelname)s %(message)s")
    state = settings.state_dir
    if not os.path.isdir(state):
        raise CliError("state directory %s is missing: run iscsi-ha-mediator init" % state)
    if os.stat(state).st_mode & 0o077:
        raise CliError("state directory %s is readable by others: chmod 700 it" % state)
    if not os.path.exists(settings.path("tls_cert", "tls/server.crt")):
        raise CliError("no server certificate (%s): run iscsi-ha-mediator init"
                       % settings.path("tls_cert", "tls/server.crt"))
    if os.geteuid() == 0 and not args.allow_root:
        raise CliError("refusing to run as root: run as the iscsi-ha-mediator user (systemd "
                       "unit does) or pass --allow-root")
    if args.uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            raise CliError("--uvloop: the uvloop package is not installed")
    try:
        asyncio.run(serve(settings))
    except st.StorageError as exc:
        raise CliError("storage: %s" % exc)
    return OK


def build_parser():
    p = argparse.ArgumentParser(prog="iscsi-ha-mediator",
                                description="Third-site witness for iscsi-ha pools")
    p.add_argument("--config", help="settings file (default %s)" % cfgmod.DEFAULT_CONFIG)
    p.add_argument("--state-dir", help="state directory (default %s)"
                   % cfgmod.DEFAULT_STATE_DIR)
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("serve", help="run the service")
    s.add_argument("--allow-root", action="store_true")
    s.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("init", help="create the state directory, a CA and a server certificate")
    s.add_argument("--name", action="append", help="DNS name or IP nodes use to reach this "
                   "mediator (repeat; default: this host's FQDN)")
    s.add_argument("--server-cert")
    s.add_argument("--server-key")
    s.add_argument("--ca", help="CA certificate that signs node credentials (own CA)")
    s.add_argument("--ca-key", help="its key, if this mediator should issue credentials")
    s.add_argument("--user", help="chown the state to this user (when run as root)")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("status", help="pools, nodes, last seen, generation, golden, primary")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)

    pool = sub.add_parser("pool", help="pool add|list|show|remove|set")
    psub = pool.add_subparsers(dest="pool_cmd", metavar="ACTION")
    psub.required = True
    a = psub.add_parser("add")
    a.add_argument("pool")
    a.add_argument("node1")
    a.add_argument("node2")
    a.add_argument("--lease", type=_duration, help="lease (default from settings, 10s)")
    a.add_argument("--observer", action="store_true", help="record and report, grant nothing")
    a = psub.add_parser("list")
    a.add_argument("--json", action="store_true")
    a = psub.add_parser("show")
    a.add_argument("pool")
    a.add_argument("--json", action="store_true")
    a = psub.add_parser("remove")
    a.add_argument("pool")
    a.add_argument("--force", action="store_true")
    a = psub.add_parser("set")
    a.add_argument("pool")
    a.add_argument("--observer", type=_onoff)
    a.add_argument("--auto-failover", dest="auto_failover", type=_onoff)
    pool.set_defaults(fn=cmd_pool)

    s = sub.add_parser("observer", help="observer mode of a pool on|off")
    s.add_argument("pool")
    s.add_argument("state", type=_onoff)
    s.set_defaults(fn=cmd_observer)

    node = sub.add_parser("node", help="node credential issue|rotate|list|revoke")
    nsub = node.add_subparsers(dest="node_cmd", metavar="WHAT")
    nsub.required = True
    cred = nsub.add_parser("credential")
    csub = cred.add_subparsers(dest="cred_cmd", metavar="ACTION")
    csub.required = True
    for name in ("issue", "rotate"):
        a = csub.add_parser(name)
        a.add_argument("pool")
        a.add_argument("node")
        a.add_argument("-o", "--output", help="bundle file (0600); default stdout")
        if name == "rotate":
            a.add_argument("--overlap", type=_duration, default=86400.0,
                           help="old credential stays valid this long (default 24h)")
    a = csub.add_parser("list")
    a.add_argument("pool")
    a = csub.add_parser("revoke")
    a.add_argument("pool")
    a.add_argument("node")
    a.add_argument("--id", help="one credential (default: all of the node's)")
    cred.set_defaults(fn=cmd_credential)

    s = sub.add_parser("force-promote", help="make NODE primary whatever its data")
    s.add_argument("pool")
    s.add_argument("node")
    s.add_argument("--accept-data-loss", action="store_true")
    s.set_defaults(fn=cmd_force)

    s = sub.add_parser("simulate", help="what the mediator would answer now (changes nothing)")
    s.add_argument("pool")
    s.add_argument("node")
    s.add_argument("what", choices=["promote", "fence-peer"])
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_simulate)

    s = sub.add_parser("audit", help="audit log")
    s.add_argument("pool", nargs="?", default=None)
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_audit)

    s = sub.add_parser("support-bundle", help="status, audit, config (masked), logs, versions")
    s.add_argument("-o", "--output")
    s.set_defaults(fn=cmd_support_bundle)
    return p


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ERROR if exc.code else OK
    try:
        overrides = {"state_dir": args.state_dir} if args.state_dir else None
        settings = cfgmod.load(args.config, overrides)
        return args.fn(args, settings)
    except CliError as exc:
        sys.stderr.write("iscsi-ha-mediator: %s\n" % exc)
        return exc.code
    except (cfgmod.ConfigError, pki.PkiError, OSError, ValueError, KeyError) as exc:
        sys.stderr.write("iscsi-ha-mediator: %s\n" % (str(exc).splitlines() or [repr(exc)])[0])
        return ERROR
    except KeyboardInterrupt:
        return REFUSED


def main_exit():
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
