"""The house: every module has a layer, imports only flow downwards, and there is no import circle.

Imports are read from the source (``ast``), lazy ones inside functions and ``TYPE_CHECKING``
blocks included, so a circle cannot hide behind a late import. The layers are
``gswa_plugin._layers.LAYERS`` (drawn on the docs' architecture page).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gswa_plugin._layers import LAYERS, layer_of

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "gswa_plugin"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The gswa_plugin modules an import statement loads (a name that is a submodule counts as it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "gswa_plugin"]
    if node.level:
        base = importer.split(".")
        if not MODULES[importer].name == "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "gswa_plugin":
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(m for m in _resolve(module, node) if m != module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"place these modules in gswa_plugin/_layers.py: {missing}"


def test_the_layer_names_match_the_folders():
    # the layers are visible in the folder names: every subpackage is one layer (or two, for
    # adapters: the base class below the hook specs, the families above them)
    for folder in ("testing", "tools", "integrations", "cli"):
        layers = {layer_of(m) for m in MODULES if m == f"gswa_plugin.{folder}" or m.startswith(f"gswa_plugin.{folder}.")}
        assert len(layers) == 1 and LAYERS[layers.pop()][0] in (folder, "cli"), folder


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_downwards(module):
    mine = layer_of(module)
    upward = sorted(
        f"{target} (layer '{LAYERS[layer_of(target)][0]}')"
        for target in GRAPH[module]
        if layer_of(target) is not None and layer_of(target) > mine
    )
    assert not upward, f"{module} (layer '{LAYERS[mine][0]}') imports from a higher layer: {upward}"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a module graph: its strongly connected components of more than one
    module (Tarjan), plus modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_circle():
    assert not find_cycles(GRAPH), f"import circles: {find_cycles(GRAPH)}"


def test_the_circle_finder_finds_circles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    with_circle = {**GRAPH, "gswa_plugin.errors": GRAPH["gswa_plugin.errors"] | {"gswa_plugin.config"}}
    assert find_cycles(with_circle)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The graph reader finds lazy imports inside functions (so the tests above can fail)."""
    source = "def f():\n    from gswa_plugin.cli import app\n"
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom))
    assert _resolve("gswa_plugin.config", node) == ["gswa_plugin.cli"]
    assert layer_of("gswa_plugin.cli") > layer_of("gswa_plugin.config")


def test_building_a_config_imports_no_adapter_and_no_plugin():
    """`GSWAConfig()` checks its own fields only: no adapter module, no plugin manager."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gswa_plugin.config import GSWAConfig\n"
        "GSWAConfig(variant='anything', adapter='anything')\n"
        "loaded = [m for m in sys.modules if m.startswith('gswa_plugin.')]\n"
        "assert not any(m.startswith(('gswa_plugin.adapters', 'gswa_plugin.plugins', 'gswa_plugin.api')) for m in loaded), loaded\n"
    )
    # the package facade imports the API; import the config module without it
    code = "import importlib.util, sys, types\n" \
        "spec = importlib.util.find_spec('gswa_plugin')\n" \
        "pkg = types.ModuleType('gswa_plugin'); pkg.__path__ = list(spec.submodule_search_locations)\n" \
        "sys.modules['gswa_plugin'] = pkg\n" + code
    subprocess.run([sys.executable, "-c", code], check=True)
