"""The house: one package per stage of the data flow, imports running one way, no circles.

serve → admission → policy → store → scan: a stage imports only the stages below it (and the
leaf `webhook.config`); `webhook/__init__.py`, `__main__.py` and `cli.py` sit on top and may
import any stage. Imports inside functions count too, so a circle cannot hide in a lazy import.
Checked with `ast` over the source: nothing is imported to check it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.builders import REPO

STAGES = ("serve", "admission", "policy", "store", "scan")       # top to bottom
TOP_LEVEL = {"__init__", "__main__", "cli", "config"}
LEAVES = {"webhook.config"}                                    # importable from any stage


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under root (root's name is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def edges(root: Path) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every import of the package by itself, at any
    depth in the file. `from pkg import sub` names the submodule, not pkg's __init__."""
    mods = modules(root)
    name = root.name
    out = []
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = []
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in mods else src)
            else:
                continue
            for t in targets:
                if t == name or t.startswith(name + "."):
                    while t not in mods:            # `import webhook.scan.images.x` → module
                        t = t.rpartition(".")[0]
                    out.append((mod, t, node.lineno))
    return out


def stage_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def direction_problems(root: Path) -> list[str]:
    problems = []
    for src, dst, line in edges(root):
        s, d = stage_of(src), stage_of(dst)
        where = f"{src} (line {line}) imports {dst}"
        if dst in LEAVES and src != dst:
            continue
        if src in LEAVES:
            problems.append(f"{where}: config is a leaf and imports nothing of the package")
        elif s is None:
            continue                                 # __init__, __main__, cli: the top
        elif d is None:
            problems.append(f"{where}: a stage imports only stages below it and the config")
        elif STAGES.index(d) < STAGES.index(s):
            problems.append(f"{where}: {s}/ sits below {d}/")
    return problems


def circles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for src, dst, _ in edges(root):
        graph[src].add(dst)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:                     # Tarjan; the graph is small
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_imports_run_down_the_stages_only():
    assert direction_problems(REPO / "webhook") == []


def test_no_import_circles_even_inside_functions():
    assert circles(REPO / "webhook") == []


def test_top_level_keeps_only_the_entry_points():
    top = {p.stem for p in (REPO / "webhook").glob("*.py")}
    assert top == TOP_LEVEL
    dirs = {p.name for p in (REPO / "webhook").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert dirs == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_it_takes_gives_and_must_not_import(stage):
    doc = ast.get_docstring(ast.parse((REPO / "webhook" / stage / "__init__.py").read_text()))
    assert doc and f"Stage: {stage}" in doc
    for phrase in ("Takes in:", "Hands on:", "Must not import:"):
        assert phrase in doc, phrase
    upper = STAGES[:STAGES.index(stage)]
    for name in upper:                         # the docstring names every stage above it
        assert f"webhook.{name}" in doc


@pytest.mark.parametrize("stage", STAGES)
def test_tests_mirror_the_stages(stage):
    assert list((REPO / "tests" / stage).glob("test_*.py")), f"tests/{stage}/ has no tests"


# -- the checker itself: each rule is seen to catch what it is for --------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "webhook"
    for rel, text in {"__init__.py": "", "config.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for stage in STAGES:
        (root / stage).mkdir(exist_ok=True)
        (root / stage / "__init__.py").touch()
    return root


@pytest.mark.parametrize("files,expect", [
    ({"scan/a.py": "from ..policy import model\n", "policy/model.py": ""}, "scan/ sits below policy/"),
    ({"store/a.py": "def f():\n    from webhook.serve.metrics import child\n",
      "serve/metrics.py": ""}, "store/ sits below serve/"),
    ({"policy/a.py": "from .. import cli\n", "cli.py": ""}, "only stages below it"),
    ({"config.py": "from .scan import x\n", "scan/x.py": ""}, "config is a leaf"),
], ids=["scan-imports-policy", "lazy-store-imports-serve", "stage-imports-cli", "config-imports"])
def test_the_direction_check_catches_an_upward_import(tmp_path, files, expect):
    problems = direction_problems(_tree(tmp_path, files))
    assert any(expect in p for p in problems), problems


def test_the_direction_check_allows_downward_and_sibling_imports(tmp_path):
    root = _tree(tmp_path, {"serve/app.py": "from ..admission import decide\nfrom ..config import X\n",
                            "admission/decide.py": "from .model import D\nfrom ..scan import images\n",
                            "admission/model.py": "", "scan/images.py": ""})
    assert direction_problems(root) == []


def test_the_circle_check_catches_a_lazy_circle(tmp_path):
    root = _tree(tmp_path, {"scan/unpack.py": "def f():\n    from .rootfs import confine\n",
                            "scan/rootfs.py": "from .unpack import UnpackError\n"})
    assert circles(root) == [["webhook.scan.rootfs", "webhook.scan.unpack"]]
