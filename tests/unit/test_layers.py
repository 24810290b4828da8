"""The layers of condure, checked on the source (docs/architecture.md).

Every module under condure/ is parsed with ``ast`` and every import of a
condure module is collected: at module level, inside functions and under
``if TYPE_CHECKING:`` alike (a type-only import still couples the two).
Then:

- each module has a layer (the table below); an import may only go to a
  module of the same or a lower layer;
- the import graph has no cycle, not even within one layer;
- the sans-I/O layers (zhttp/, session/) import no I/O module;
- no module is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "condure"
MAX_LINES = 500

# Bottom up. A name is a module or a package (then it covers every module in
# it); the longest match wins.
LAYERS: list[tuple[str, ...]] = [
    # wire format, the Config and its options table, logging: depend on nothing
    ("condure", "condure.zhttp", "condure.config", "condure.log", "condure.options",
     "condure.runtime"),
    # sans-I/O connection state machines
    ("condure.session",),
    # asyncio + pyzmq adapters, the control channel's codec
    ("condure.net",),
    # one worker process and the moving of its connections
    ("condure.worker", "condure.slots", "condure.workerproc", "condure.handover",
     "condure.clients", "condure.introspect", "condure.sweep"),
    # the process tree, systemd
    ("condure.supervisor",),
    # entry points; the man page renderer is a build tool on top of options.py
    ("condure.cli", "condure.__main__", "condure.manpage", "condure.optionsdoc", "condure.ctl",
     "condure.sizes"),
]
SANS_IO = ("condure.zhttp", "condure.session")
IO_MODULES = {"asyncio", "zmq", "socket", "selectors", "ssl"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (condure ones resolved to the module,
    others by their top-level name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            # "from condure.net import control" imports condure.net.control
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "condure":
                out.add(target.split(".")[0])
                continue
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(name: str) -> int:
    best, level = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, f"{name} has no layer: add it to LAYERS"
    return level


def test_the_table_knows_every_module():
    assert len(MODULES) > 40  # the walk found the package
    for name in MODULES:
        layer_of(name)


def test_imports_only_go_down():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in sorted(GRAPH.items())
              for target in sorted(targets)
              if target in MODULES and layer_of(target) > layer_of(name)]
    assert upward == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    assert _cycles() == []


def test_the_cycle_finder_finds_one():
    GRAPH["condure.config"].add("condure.cli")  # cli -> ... -> config -> cli
    try:
        assert any("condure.config" in c and "condure.cli" in c for c in _cycles())
    finally:
        GRAPH["condure.config"].discard("condure.cli")


@pytest.mark.parametrize("package", SANS_IO)
def test_sans_io_layers_import_no_io(package):
    offending = {name: sorted(GRAPH[name] & IO_MODULES) for name in MODULES
                 if (name == package or name.startswith(package + "."))
                 and GRAPH[name] & IO_MODULES}
    assert offending == {}


def test_modules_stay_short():
    long = {str(path.relative_to(ROOT.parent)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
