"""One block read or written through the real iSCSI initiator (libiscsi), from the command line:

    python -m iscsi_ha_lab.blockio write --portal ADDR:3260 --iqn IQN --lun 10 --lba 4000 --text TEXT
    python -m iscsi_ha_lab.blockio read  --portal ADDR:3260 --iqn IQN --lun 10 --lba 4000

``read`` prints the block's text up to its first NUL byte. Scenarios use it to check what a
client actually reads, e.g. which side's data survived a split brain.
"""
import argparse
import sys

from iscsi_ha_lab.probe import DEFAULT_INITIATOR, Initiator, IscsiError

BLOCK = 512


def _session(args):
    ini = Initiator(args.iqn, DEFAULT_INITIATOR + ":blockio", io_timeout=args.timeout)
    ini.connect(args.portal, args.lun, args.timeout)
    return ini


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m iscsi_ha_lab.blockio")
    parser.add_argument("verb", choices=("read", "write"))
    parser.add_argument("--portal", required=True)
    parser.add_argument("--iqn", required=True)
    parser.add_argument("--lun", type=int, required=True)
    parser.add_argument("--lba", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--text", default="", help="what write puts in the block")
    args = parser.parse_args(argv)
    try:
        ini = _session(args)
        try:
            if args.verb == "write":
                data = args.text.encode()[:BLOCK]
                ini.write(args.lba, data + b"\0" * (BLOCK - len(data)), BLOCK)
            else:
                block = ini.read(args.lba, 1, BLOCK)
                sys.stdout.write(block.split(b"\0", 1)[0].decode("utf-8", "replace") + "\n")
        finally:
            ini.close(logout=True)
    except IscsiError as exc:
        sys.stderr.write("blockio: %s\n" % exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
