"""The package's shape (issue 16): no import cycle among the product's modules, counting the
imports inside functions too, and no product module outside iscsi_ha.cli imports the CLI (the
daemon, the fence-peer handler and the watchdog stand on their own). Read from the source with
ast, so a new import that breaks either rule fails here."""
import ast
import os

import iscsi_ha

PACKAGE_DIR = os.path.dirname(os.path.abspath(iscsi_ha.__file__))
LAB = "iscsi_ha.lab"      # the lab is not shipped; its own layout is checked elsewhere


def _modules():
    found = {}
    for directory, _dirs, names in os.walk(PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3]
                module = rel.replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] \
                    = path
    return found


def _imports(module, path, known):
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                if not path.endswith("__init__.py"):
                    parts = parts[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = base + "." + alias.name
                out.add(full if full in known else base)
    return set(m for m in out if m in known and m != module)


def _graph():
    modules = _modules()
    return dict((m, _imports(m, p, modules)) for m, p in modules.items()
                if not m.startswith(LAB))


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None and child in graph:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if child is not None:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_product():
    assert _cycles(_graph()) == []


def test_only_the_cli_imports_the_cli():
    graph = _graph()
    offenders = sorted((m, sorted(d for d in deps if d.startswith("iscsi_ha.cli")))
                       for m, deps in graph.items()
                       if not m.startswith("iscsi_ha.cli") and
                       any(d.startswith("iscsi_ha.cli") for d in deps))
    assert offenders == []
