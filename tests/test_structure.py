"""The packages' shape (issue 16): no import cycle among the product's modules nor among the
lab's, counting the imports inside functions too; no product module outside iscsi_ha.cli
imports the CLI (the daemon, the fence-peer handler and the watchdog stand on their own); the
product never imports the lab, which is a package of its own (lab/iscsi_ha_lab) outside the
product's wheel and RPM. Read from the source with ast, so a new import that breaks a rule fails
here."""
import ast
import os

import iscsi_ha
import iscsi_ha_lab

PACKAGE_DIR = os.path.dirname(os.path.abspath(iscsi_ha.__file__))
LAB_DIR = os.path.dirname(os.path.abspath(iscsi_ha_lab.__file__))


def _modules(package_dir=PACKAGE_DIR):
    found = {}
    for directory, _dirs, names in os.walk(package_dir):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, os.path.dirname(package_dir))[:-3]
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


def _graph(package_dir=PACKAGE_DIR, known=()):
    """{module: modules it imports}, among the package's modules and ``known`` names."""
    modules = _modules(package_dir)
    names = dict(modules, **dict((k, None) for k in known))
    return dict((m, _imports(m, p, names)) for m, p in modules.items())


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


def test_no_import_cycle_in_the_lab():
    assert _cycles(_graph(LAB_DIR)) == []


def test_the_product_never_imports_the_lab_and_holds_no_copy_of_it():
    lab_modules = list(_modules(LAB_DIR))
    graph = _graph(PACKAGE_DIR, known=lab_modules)
    assert sorted(m for m, deps in graph.items() if any(d.startswith("iscsi_ha_lab")
                                                        for d in deps)) == []
    assert not os.path.exists(os.path.join(PACKAGE_DIR, "lab"))


def test_only_the_cli_imports_the_cli():
    graph = _graph()
    offenders = sorted((m, sorted(d for d in deps if d.startswith("iscsi_ha.cli")))
                       for m, deps in graph.items()
                       if not m.startswith("iscsi_ha.cli") and
                       any(d.startswith("iscsi_ha.cli") for d in deps))
    assert offenders == []
