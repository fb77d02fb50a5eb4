"""The import structure of the package, read from the source (ast): stages stand on the shared layer and
never on each other's privates; imports flow one way (data <- eval <- reasoning <- train <- the commands);
nothing imports cli.py; no cycle, counting the imports made inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmemb"
# a package may import from the ones before it, never from the ones after it
LAYERS = ["data", "eval", "reasoning", "train", "serve"]
COMMANDS = {"mmemb.cli", "mmemb.reproduce", "mmemb.study_results"}


def modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = modules()


def imports(name: str) -> list[tuple[str, str, bool]]:
    """(imported module, imported name or "", at module level) of every mmemb import in module `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                )
            if not base.startswith("mmemb"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append(
                    (full, "", id(node) in top) if full in MODULES else (base, alias.name, id(node) in top)
                )
        elif isinstance(node, ast.Import):
            out += [(a.name, "", id(node) in top) for a in node.names if a.name.startswith("mmemb")]
    return out


GRAPH = {m: imports(m) for m in MODULES}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if module in COMMANDS:
        return len(LAYERS)
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else None


def test_the_source_tree_is_read():
    assert len(MODULES) > 60 and "mmemb.reasoning.select" in MODULES
    assert ("mmemb.cache", "CachedEncoder", True) in GRAPH["mmemb.reasoning.scoring"]


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{m} imports {target}.{name}"
        for m, found in GRAPH.items()
        for target, name, _ in found
        if name.startswith("_") and name != "__version__"
    ]
    assert not private


def test_nothing_imports_the_cli():
    assert not [
        m for m, found in GRAPH.items() if m != "mmemb.cli" and any(t == "mmemb.cli" for t, _, _ in found)
    ]


@pytest.mark.parametrize("package", LAYERS)
def test_imports_flow_one_way(package):
    """A stage imports the shared layer and the stages below it, never one above (lazy imports included)."""
    rank = LAYERS.index(package)
    upward = [
        f"{m} imports {t}"
        for m, found in GRAPH.items()
        if layer(m) == rank
        for t, _, _ in found
        if (layer(t) or -1) > rank
    ]
    assert not upward


def test_no_import_cycle():
    """Strongly connected components of the module graph, imports inside functions counted too."""
    graph = {m: sorted({t for t, _, _ in found if t in MODULES and t != m}) for m, found in GRAPH.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(n: str) -> None:
        index[n] = low[n] = len(index)
        stack.append(n)
        on.add(n)
        for w in graph[n]:
            if w not in index:
                visit(w)
                low[n] = min(low[n], low[w])
            elif w in on:
                low[n] = min(low[n], index[w])
        if low[n] == index[n]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == n:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for n in graph:
        if n not in index:
            visit(n)
    assert not cycles
