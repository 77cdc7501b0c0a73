"""Network namespaces, veths and bridges for the lab and the tests.

Every name this module creates starts with a prefix chosen by the caller (``ihl`` for the lab,
``iht<pid>`` for tests), so that cleanup can find and remove everything a run left behind, also
after a crash. Only the addresses 192.0.2.0/24 and 198.51.100.0/24 are ever configured.
"""
import ipaddress
import os
import subprocess

ALLOWED_NETS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24"))


class NetnsError(Exception):
    pass


def _ip(args, timeout=10, check=True):
    proc = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError("ip %s: %s" % (" ".join(args), proc.stderr.strip()))
    return proc


def check_address(cidr):
    """Refuse any address outside the two documentation ranges the lab may use."""
    iface = ipaddress.ip_interface(cidr)
    if not any(iface.ip in net for net in ALLOWED_NETS):
        raise NetnsError("address %s is outside 192.0.2.0/24 and 198.51.100.0/24" % cidr)
    return str(iface)


def list_namespaces():
    proc = _ip(["netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def add_namespace(name):
    _ip(["netns", "add", name])
    exec_in(name, ["ip", "link", "set", "lo", "up"], check=True)


def delete_namespace(name):
    """Kill every process inside ``name`` and delete it; silent if it is already gone."""
    if name not in list_namespaces():
        return
    pids = _ip(["netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (OSError, ValueError):
            pass
    _ip(["netns", "delete", name], check=False)


def exec_in(ns, argv, timeout=10, check=False, **kwargs):
    """Run ``argv`` inside namespace ``ns`` and return the CompletedProcess."""
    proc = subprocess.run(["ip", "netns", "exec", ns] + list(argv), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          **kwargs)
    if check and proc.returncode != 0:
        raise NetnsError("%s in %s: %s" % (" ".join(argv), ns, proc.stderr.strip()))
    return proc


def popen_in(ns, argv, **kwargs):
    """Start ``argv`` inside namespace ``ns`` in the background (its own process group)."""
    kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), **kwargs)


def add_bridge(name):
    _ip(["link", "add", name, "type", "bridge"])
    _ip(["link", "set", name, "up"])


def delete_link(name):
    _ip(["link", "delete", name], check=False)


def list_links(prefix):
    proc = _ip(["-o", "link", "show"], check=False)
    names = []
    for line in proc.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def attach_to_bridge(ns, bridge, host_if, ns_if, cidr):
    """A veth from ``bridge`` into ``ns``, named ``ns_if`` inside, addressed ``cidr``."""
    _ip(["link", "add", host_if, "type", "veth", "peer", "name", ns_if + "x"])
    _ip(["link", "set", ns_if + "x", "netns", ns])
    exec_in(ns, ["ip", "link", "set", ns_if + "x", "name", ns_if], check=True)
    _ip(["link", "set", host_if, "master", bridge])
    _ip(["link", "set", host_if, "up"])
    if cidr:
        exec_in(ns, ["ip", "addr", "add", check_address(cidr), "dev", ns_if], check=True)
    exec_in(ns, ["ip", "link", "set", ns_if, "up"], check=True)


def connect_direct(ns_a, if_a, cidr_a, ns_b, if_b, cidr_b, tmp_prefix, tmp_names=None):
    """A veth straight from ``ns_a`` to ``ns_b`` (the replication link). Its two ends are created
    in the root namespace as ``<tmp_prefix>ra``/``rb`` (or the two ``tmp_names``, which must
    start with the caller's prefix; found by cleanup if anything fails) and renamed once they
    are inside their namespaces."""
    tmp_a, tmp_b = tmp_names or (tmp_prefix + "ra", tmp_prefix + "rb")
    _ip(["link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    _ip(["link", "set", tmp_a, "netns", ns_a])
    _ip(["link", "set", tmp_b, "netns", ns_b])
    for ns, old, new, cidr in ((ns_a, tmp_a, if_a, cidr_a), (ns_b, tmp_b, if_b, cidr_b)):
        exec_in(ns, ["ip", "link", "set", old, "name", new], check=True)
        exec_in(ns, ["ip", "addr", "add", check_address(cidr), "dev", new], check=True)
        exec_in(ns, ["ip", "link", "set", new, "up"], check=True)


def set_link(ns, ifname, up):
    exec_in(ns, ["ip", "link", "set", ifname, "up" if up else "down"], check=True)


def cleanup(prefix):
    """Remove every namespace and link whose name starts with ``prefix``."""
    for ns in list_namespaces():
        if ns.startswith(prefix):
            delete_namespace(ns)
    for link in list_links(prefix):
        delete_link(link)
