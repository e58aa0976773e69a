"""The import contract: jmf's modules import one way, down the layers, and never in a circle.

Every module of the ``jmf`` package must match one layer below; a module may
import modules of its own layer or lower ones (function-level imports count:
a lazy import is still an import), and the module graph has no cycle.
Nothing under ``jmf/_src`` imports the public ``jmf`` package.
"""

import ast
import fnmatch
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jmf")

# Lowest first.  Patterns are module names relative to the package (``_src.run.loop``).
LAYERS = [
    ("foundations", ["_version", "_src", "_src._memo", "_src._validation", "_src.compilation"]),
    ("data", ["_src.sharding", "_src.data", "_src.data.*", "_src.factors"]),
    ("maths", ["_src.losses", "_src.losses.*", "_src.linalg", "_src.init"]),
    ("solvers", ["_src.solvers", "_src.solvers.*"]),
    ("run.loop", ["_src.run", "_src.run.loop"]),
    ("run.driver", ["_src.run.driver"]),
    ("run.lanes", ["_src.run.lanes"]),
    ("run.executor", ["_src.run.executor"]),
    ("run.sharded", ["_src.sharded", "_src.sharded.layout", "_src.sharded.linalg", "_src.sharded.solvers",
                     "_src.sharded.program", "_src.sharded.accounting"]),
    ("fit", ["_src.fit_results", "_src.mixed_shapes", "_src.fit"]),
    ("applications", ["_src.registry", "_src.consensus", "_src.metrics", "_src.model_selection", "_src.cf",
                      "_src.cf.*", "_src.cf_baselines", "_src.datasets", "_src.datasets.*", "_src.readers", "_src.io",
                      "_src.compress", "_src.sharded.io", "_src.ratings_model"]),
    ("faces", ["_src.plotting", "_src.experiments", "_src.experiments.*", "_src.sklearn", "_src.sklearn.*"]),
    ("public", ["", "[!_]*", "_cli", "_cli.*"]),  # jmf/__init__.py, the public facades and the CLI
]


def _modules():
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                name = rel[: -len(".__init__")] if rel.endswith(".__init__") else ("" if rel == "__init__" else rel)
                out[name] = path
    return out


def _layer(name):
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    return None


def _resolve(module_name, is_package, node, known):
    """Module names (relative to jmf) that an import statement brings in."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n[4:] if n.startswith("jmf.") else "" for n in names if n == "jmf" or n.startswith("jmf.")]
    if node.level == 0:
        if node.module is None or not (node.module == "jmf" or node.module.startswith("jmf.")):
            return []
        base = node.module[4:] if node.module.startswith("jmf.") else ""
    else:
        parts = module_name.split(".") if module_name else []
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        out.append(sub if sub in known else base)
    return out


def _graph():
    mods = _modules()
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        is_package = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(t for t in _resolve(name, is_package, node, mods) if t in mods and t != name)
        edges[name] = targets
    return edges


def test_every_module_has_a_layer():
    missing = [m or "jmf/__init__" for m in _graph() if _layer(m) is None]
    assert not missing, f"place these modules in a layer of tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers():
    bad = []
    for src, targets in _graph().items():
        for dst in targets:
            ls, ld = _layer(src), _layer(dst)
            if ls is not None and ld is not None and ld > ls:
                bad.append(f"{src or 'jmf'} ({LAYERS[ls][0]}) imports {dst or 'jmf'} ({LAYERS[ld][0]})")
    assert not bad, "imports that point up:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(x or "jmf" for x in c) for c in cycles)
