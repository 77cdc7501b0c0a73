"""Parsers of tgtadm's output: what tgtd exports, as :class:`TargetInfo` and :class:`LunInfo`.

``tgtadm --lld iscsi --op show --mode target`` is the source of truth for what is exported.
Its layout (tgt 1.0.x) is a tree indented by four spaces::

    Target 1: iqn.2015.com.halizard:noSAN
        System information:        Driver, State (ready|offline), Nop interval/count
        I_T nexus information:     I_T nexus: N / Initiator: X alias: Y / Connection: C / IP Address
        LUN information:           LUN: N / Type, SCSI ID, SCSI SN, Size, ..., Backing store path
        Account information:       user | user (outgoing)
        ACL information:           ALL | address | initiator name

Anything outside this layout raises :class:`TargetParseError` naming the line: the adapter
(:mod:`iscsi_ha.adapters.target`) never acts on output it does not understand.
"""
import collections
import re


# The target adapter's error (re-exported by iscsi_ha.adapters.target): defined here because
# TargetParseError is one.
class TargetError(Exception):
    """The target could not be observed, configured, started or stopped."""


class TargetParseError(TargetError):
    """tgtadm printed something this parser does not know; the message names the line."""


Connection = collections.namedtuple("Connection", "cid address")
Nexus = collections.namedtuple("Nexus", "nexus_id initiator alias connections")
LunInfo = collections.namedtuple(
    "LunInfo", "lun type scsi_id scsi_sn size_mb block_size online readonly "
               "backing_store_type backing_store backing_store_flags attrs")


class TargetInfo(collections.namedtuple("TargetInfo",
                                        "tid iqn driver state nexuses luns accounts acl")):
    """One target: ``luns`` maps LUN number -> :class:`LunInfo`; ``acl`` lists ACL entries."""
    __slots__ = ()

    @property
    def initiators(self):
        return len(self.nexuses)

    @property
    def connections(self):
        return sum(len(n.connections) for n in self.nexuses)


_SECTIONS = {"System information:": "system", "I_T nexus information:": "nexus",
             "LUN information:": "lun", "Account information:": "account",
             "ACL information:": "acl"}
_TARGET_RE = re.compile(r"^Target ([0-9]{1,9}): (\S+)$")
_SIZE_RE = re.compile(r"^([0-9]+) MB, Block size: ([0-9]+)$")


def _fail(node, where):
    raise TargetParseError("tgtadm output line %d: unexpected %r %s" % (node[0], node[1], where))


def _tree(text):
    """Lines indented by 4 spaces a level -> [(line number, text, [children])]."""
    stack = [(0, "", [])]
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        if indent % 4 or indent // 4 >= len(stack):
            _fail((number, raw), "(indentation)")
        del stack[indent // 4 + 1:]
        node = (number, raw.strip(), [])
        stack[-1][2].append(node)
        stack.append(node)
    return stack[0][2]


def _pairs(nodes, where):
    values = {}
    for node in nodes:
        key, sep, value = node[1].partition(":")
        if not sep or not key or node[2]:
            _fail(node, where)
        if key.strip() in values:
            _fail(node, "(%s listed twice %s)" % (key.strip(), where))
        values[key.strip()] = value.strip()
    return values


_DIGITS = re.compile(r"[0-9]{1,9}\Z")


def _numbered(node, key, where):
    name, _, value = node[1].partition(": ")
    if name != key or not _DIGITS.match(value):
        _fail(node, where)
    return int(value)


def _leaf(node, where):
    if node[2]:
        _fail(node[2][0], where)
    return node[1]


def _lun_info(number, attrs):
    size = _SIZE_RE.match(attrs.get("Size", ""))
    path = attrs.get("Backing store path", attrs.get("Backing store"))
    return LunInfo(lun=number, type=attrs.get("Type"), scsi_id=attrs.get("SCSI ID"),
                   scsi_sn=attrs.get("SCSI SN"),
                   size_mb=int(size.group(1)) if size else None,
                   block_size=int(size.group(2)) if size else None,
                   online=attrs.get("Online") == "Yes", readonly=attrs.get("Readonly") == "Yes",
                   backing_store_type=attrs.get("Backing store type"),
                   backing_store=None if path in (None, "", "None") else path,
                   backing_store_flags=attrs.get("Backing store flags", ""), attrs=attrs)


def _nexus(node):
    nexus_id = _numbered(node, "I_T nexus", "in I_T nexus information")
    initiator, alias, connections = None, None, []
    for child in node[2]:
        key, _, value = child[1].partition(": ")
        if key == "Initiator" and not child[2]:
            initiator, _, alias = value.partition(" alias: ")
        elif key == "Connection" and _DIGITS.match(value):
            attrs = _pairs(child[2], "in a connection")
            address = [v for k, v in sorted(attrs.items()) if k.endswith("IP Address")]
            connections.append(Connection(int(value), address[0] if address else None))
        else:
            _fail(child, "in I_T nexus %d" % nexus_id)
    return Nexus(nexus_id, initiator, alias or None, connections)


def _target(node):
    match = _TARGET_RE.match(node[1])
    if not match:
        _fail(node, "(expected 'Target N: IQN')")
    sections = {}
    for child in node[2]:
        name = _SECTIONS.get(child[1])
        if name is None or name in sections:
            _fail(child, "(unknown or repeated section)")
        sections[name] = child[2]
    system = _pairs(sections.get("system", []), "in System information")
    luns = {}
    for child in sections.get("lun", []):
        number = _numbered(child, "LUN", "in LUN information")
        if number in luns:
            _fail(child, "(LUN %d listed twice)" % number)
        luns[number] = _lun_info(number, _pairs(child[2], "in LUN %d" % number))
    return TargetInfo(int(match.group(1)), match.group(2), system.get("Driver"),
                      system.get("State"), [_nexus(n) for n in sections.get("nexus", [])], luns,
                      [_leaf(n, "in Account information") for n in sections.get("account", [])],
                      [_leaf(n, "in ACL information") for n in sections.get("acl", [])])


def _own_errors(parse):
    """Only :class:`TargetParseError` leaves a parser (never a stray ValueError)."""
    def wrapper(text):
        try:
            return parse(text)
        except TargetParseError:
            raise
        except (RecursionError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise TargetParseError("%s: unreadable tgtadm output: %s" % (parse.__name__, exc))
    wrapper.__name__ = parse.__name__
    wrapper.__doc__ = parse.__doc__
    return wrapper


@_own_errors
def parse_tgtadm_targets(text):
    """``tgtadm --lld iscsi --op show --mode target`` output -> {iqn: :class:`TargetInfo`}.

    No target prints nothing (an empty dict). A line outside the known layout raises
    :class:`TargetParseError` naming it; unknown ``key: value`` lines of a LUN are kept in
    ``LunInfo.attrs``.
    """
    targets, tids = {}, set()
    for node in _tree(text):
        info = _target(node)
        if info.iqn in targets or info.tid in tids:
            _fail(node, "(target %d / %s listed twice)" % (info.tid, info.iqn))
        targets[info.iqn] = info
        tids.add(info.tid)
    return targets


@_own_errors
def parse_tgtadm_system(text):
    """``tgtadm --op show --mode sys`` -> {"State": "ready", "debug": "off"} (its System: block)."""
    for node in _tree(text):
        if node[1] == "System:":
            values = _pairs(node[2], "in System")
            if "State" in values:
                return values
    raise TargetParseError("tgtadm system output has no 'System:' block with a State line")
