"""Small file helpers shared by the agent and the CLI."""
import json
import os


def atomic_write(path, text, mode=0o644):
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a part."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def read_json(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return json.load(handle)
