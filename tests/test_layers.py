"""The packages are layers that import only downwards (ovlt/__init__.py draws them):

    ovlt (the CLI, the cycle, a run's data) > data_prep > ovlt_rl (the engine) > reward

and the engine's own parts likewise: the driver over the workers, over the rollout engines, over
model-level code, over the shared base. Every import in the source tree counts, lazy ones inside
functions and `importlib.import_module("...")` with a literal name included: an upward import is
a cycle between layers waiting to happen, and layering only holds if nothing may cross it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, ...]] = [
    ("ovlt",),
    ("data_prep",),
    # the engine, top to bottom
    ("ovlt_rl.controller", "ovlt_rl.driver", "ovlt_rl.checkpoint_export", "ovlt_rl.eval", "ovlt_rl.report"),
    ("ovlt_rl.workers",),
    ("ovlt_rl.engines",),
    # Model-level code. The NCCL weight-sync protocol lives in workers/ but sits here: policy rank 0
    # sends with it and the rollout engines (vLLM's worker extension) receive with it, so it must
    # be below both (workers/weight_syncer.py drives it; the protocol functions stay importable by both).
    ("ovlt_rl.models", "ovlt_rl.algos", "ovlt_rl.data", "ovlt_rl.workers.weight_sync", "ovlt_rl.workers.rendezvous"),
    # The base: config sections, checkpoint, config_change, tracking, run_lock, loopback.
    ("ovlt_rl", "ovlt_rl.eval.config"),
    ("reward",),
]
PACKAGES = ("ovlt", "data_prep", "ovlt_rl", "reward")


def _find_unit(module: str) -> tuple[int, str] | None:
    """(layer index, unit) of a module: the longest prefix listed in LAYERS; None if none is."""
    best = None
    for i, units in enumerate(LAYERS):
        for u in units:
            if (module == u or module.startswith(u + ".")) and (best is None or len(u) > len(best[1])):
                best = (i, u)
    return best


def _unit(module: str) -> tuple[int, str]:
    best = _find_unit(module)
    assert best is not None, f"{module}: in no layer; add it to LAYERS"
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import in the file that names one of PACKAGES."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        out += [(n, node.lineno) for n in names if n.split(".")[0] in PACKAGES]
    return out


def _edges() -> list[tuple[str, int, str]]:
    """(importing file, line, imported module) over the four packages."""
    edges = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            edges += [(str(path.relative_to(REPO)), line, name) for name, line in _imports(path)]
    return edges


def test_every_package_and_module_has_a_layer():
    modules = [_module_name(path) for package in PACKAGES for path in (REPO / package).rglob("*.py")]
    assert len(modules) > 100  # the walk found the source tree
    unplaced = [m for m in modules if _find_unit(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_no_import_points_up():
    upward = []
    for file, line, name in _edges():
        (src, src_unit), (dst, dst_unit) = _unit(_module_name(REPO / file)), _unit(name)
        if dst < src:
            upward.append(f"{file}:{line} imports {name} ({src_unit} is below {dst_unit})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_cycle_between_the_units_of_a_layer():
    """Within a layer, units may use each other only one way (e.g. models -> data, never back)."""
    graph: dict[str, set[str]] = {}
    for file, _, name in _edges():
        a, b = _unit(_module_name(REPO / file))[1], _unit(name)[1]
        if a != b:
            graph.setdefault(a, set()).add(b)
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])


def test_the_checker_sees_lazy_relative_and_importlib_imports(tmp_path, monkeypatch):
    """The rules above are only as good as the import finder: it must see every import form."""
    pkg = tmp_path / "ovlt_rl" / "models"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "import importlib\n"
        "def f():\n    from data_prep import synthetic\n"
        "from ..workers import policy\n"
        "importlib.import_module('ovlt.cli')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert sorted(n for n, _ in _imports(pkg / "x.py")) == ["data_prep", "ovlt.cli", "ovlt_rl.workers"]
