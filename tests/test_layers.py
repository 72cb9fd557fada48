"""The packages form layers (docs/design.md, "Layers"): each imports only from the layers
below it, no module imports run.py, and the module import graph has no cycle. Read from
the source with ast, function-level imports included, so a lazy import cannot hide one."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package may import the packages listed before it (study and cluster are both on top).
LAYERS = ["attacks", "core", "datamodules", "lightning_modules", "audit", "callbacks", "training", "study", "cluster"]
NOT_ALLOWED = {("cluster", "study"), ("study", "cluster"), ("core", "attacks"), ("datamodules", "attacks"),
               ("lightning_modules", "attacks"), ("lightning_modules", "datamodules")}


def modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports (absolute and relative, anywhere in the file)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            found.add(stem)
            found |= {f"{stem}.{a.name}" for a in node.names}
    return found


def test_each_package_imports_only_the_layers_below_it_and_never_run_py():
    mods = modules()
    for name, path in mods.items():
        package = name.split(".")[0]
        for target in imports(name, path):
            top = target.split(".")[0]
            assert top != "run", f"{name} imports the entry script run.py"
            if top in LAYERS and top != package:
                assert LAYERS.index(top) < LAYERS.index(package) and (package, top) not in NOT_ALLOWED, \
                    f"{name} imports {target}: a layer above or beside it"


def test_no_import_cycle_between_modules():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for t in imports(name, path):
            while t and t not in mods:  # `from pkg.mod import fn` -> pkg.mod
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not a cycle
                targets.add(t)
        graph[name] = targets
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
