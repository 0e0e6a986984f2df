"""The layout of ``shared/DESIGN.md`` holds: imports flow one way, modules and functions stay short.

Data flow: ``ops -> data -> backbones -> explain -> (losses -> train) | metrics -> viz -> fidelity
-> launch.py``: ``explain`` never imports ``losses`` (losses may use explainers), neither ``explain``
nor ``metrics`` imports ``train``, nothing in the library imports ``launch``. Imports are read from
the source (``ast``), including those inside functions, so a lazy import cannot hide a back edge.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jinterp")
BASE = {"checks", "xla_cpu", "progress", "ops"}
# What each top-level part of jinterp may import (besides itself).
ALLOWED = {
    "checks": set(),
    "xla_cpu": set(),
    "compilation_cache": set(),
    "progress": set(),
    "ops": {"checks"},
    "data": BASE,
    "backbones": BASE | {"data"},
    "explain": BASE | {"data", "backbones"},
    "losses": BASE | {"data", "backbones", "explain"},
    "train": BASE | {"data", "backbones", "explain", "losses"},
    "sweep": BASE | {"data", "backbones", "explain", "losses", "train"},
    "metrics": BASE | {"data", "backbones", "explain"},
    "viz": BASE | {"data", "backbones", "explain", "metrics"},
    "fidelity": BASE | {"data", "backbones", "explain", "losses", "train", "metrics", "viz"},
    "__init__": {"xla_cpu", "compilation_cache"},
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _part(path: str) -> str:
    rel = os.path.relpath(path, PACKAGE).removesuffix(".py")
    return rel.split(os.sep)[0]


def _imported_parts(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "jinterp" else [f"jinterp.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name == "launch" or name.startswith("launch."):
                yield "launch", node.lineno
            elif name.startswith("jinterp."):
                yield name.split(".")[1], node.lineno


def test_imports_follow_the_data_flow():
    back_edges = []
    for path in _sources():
        part = _part(path)
        tree = ast.parse(open(path).read(), path)
        for target, line in _imported_parts(tree):
            if target != part and target not in ALLOWED[part]:
                back_edges.append(f"{os.path.relpath(path, ROOT)}:{line} imports jinterp.{target}")
    assert not back_edges, "imports against the flow of DESIGN.md:\n" + "\n".join(back_edges)


def test_every_part_is_known():
    assert {_part(p) for p in _sources()} <= set(ALLOWED)


def _long_functions(path: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({length} lines)"


@pytest.mark.parametrize("kind", ["modules", "functions"])
def test_modules_and_functions_stay_short(kind):
    paths = [*_sources(), os.path.join(ROOT, "launch.py")]
    if kind == "modules":
        long = [
            f"{os.path.relpath(p, ROOT)} ({n} lines)"
            for p in paths
            if (n := len(open(p).readlines())) > MAX_MODULE_LINES
        ]
    else:
        long = [entry for p in paths for entry in _long_functions(p)]
    assert not long, f"{kind} over the limit:\n" + "\n".join(long)


def test_the_walk_catches_a_back_edge(tmp_path):
    """The checker itself: a lazy ``from jinterp import train`` inside a metrics function is found."""
    tree = ast.parse("def f():\n    from jinterp import train\n    import jinterp.losses.grouping\n")
    assert [t for t, _ in _imported_parts(tree)] == ["train", "losses"]
    assert "train" not in ALLOWED["metrics"] and "losses" not in ALLOWED["explain"]
