"""The layer order of ``docs/architecture.md``, checked on every module under ``src/diffice``.

Every import is read with ``ast`` (module level and inside functions alike, relative imports
resolved), and so is every string that names a diffice module (``"diffice.modules.ddpm:DDPMModule"``,
``importlib.import_module("diffice.report.commands")``). A *unit* is a top-level package
(``diffice.data``) or a top-level module (``diffice.config``); the root package is ``diffice``.

* a unit imports only itself and units of lower layers (none of its own layer, none above);
* the units import one another without a cycle;
* no name with a leading underscore is imported from another unit;
* no source file is longer than ``MAX_LINES`` lines.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "diffice"
MAX_LINES = 450

# top to bottom: a unit may import its own modules and the units of the layers below it
LAYERS: list[list[str]] = [
    ["cli"],                                  # the command table
    ["commands"],                             # argument parsing, printing
    ["experiments"],                          # experiment files, the runner, its kinds, demo and model pack pipelines
    ["synthesis", "downstream"],              # the FetalFlex engines
    ["report"],                               # a counterfactual run's metrics, report, reader study (HTML and W&B helpers)
    ["modules"],                              # LightningModules, training, checkpoints
    ["tracking"],                             # W&B
    ["counterfactual"],                       # the guided reverse process on plain tensors
    ["metrics"],                              # metrics and statistics
    ["nets", "diffusion", "data"],            # networks, the diffusion maths, data sets
    ["runfolder", "runlock", "progress"],     # run-folder stamp and frame folders, one writer per folder, progress bars
    ["config"],                               # the config schema and loader
    ["config_checks", "io", "diffice"],       # range checks, atomic files, the package root
    ["errors", "_timm_wandb"],                # UserError, the timm / W&B import guard
]



def naming_pattern(package: str) -> re.Pattern:
    """A string that names a module of ``package`` (``pkg.mod`` or ``pkg.mod:attr``)."""
    return re.compile(rf"^{re.escape(package)}(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass(frozen=True)
class Ref:
    """One module's reference to another: where (file, line), to which module, which names."""

    path: str
    line: int
    source: str          # the importing module, dotted
    target: str          # the imported module, dotted (the longest known prefix)
    names: tuple[str, ...]


def module_name(path: Path, src: Path, package: str) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def unit_of(module: str, package: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else package


def read_modules(src: Path, package: str) -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p, src, package): (p, ast.parse(p.read_text(), str(p))) for p in sorted(src.rglob("*.py"))}


def _known(dotted: str, modules: Sequence[str]) -> tuple[str, list[str]] | None:
    """The longest prefix of ``dotted`` that is a module, and the rest (attribute names)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k]), parts[k:]
    return None


def references(modules: dict[str, tuple[Path, ast.Module]], package: str) -> list[Ref]:
    """Every import (anywhere in a module) and every string naming a module of ``package``."""
    known = list(modules)
    named = naming_pattern(package)
    refs: list[Ref] = []
    for name, (path, tree) in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    hit = _known(alias.name, known)
                    if hit:
                        refs.append(Ref(str(path), node.lineno, name, hit[0], tuple(hit[1][:1])))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not (target == package or target.startswith(package + ".")):
                    continue
                for alias in node.names:  # ``from diffice.data import phantom``: the submodule itself
                    sub = _known(f"{target}.{alias.name}", known)
                    if sub and not sub[1]:
                        refs.append(Ref(str(path), node.lineno, name, sub[0], ()))
                    else:
                        hit = _known(target, known)
                        if hit:
                            refs.append(Ref(str(path), node.lineno, name, hit[0], (alias.name,)))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and named.match(node.value):
                dotted, _, attr = node.value.partition(":")
                hit = _known(dotted, known)
                if hit and (attr or not hit[1]):
                    refs.append(Ref(str(path), node.lineno, name, hit[0], (attr,) if attr else ()))
    return refs


def check(src: Path, package: str, layers: Sequence[Sequence[str]], max_lines: int = MAX_LINES) -> list[str]:
    """Every violation of the rules above in the package at ``src``, one line each."""
    modules = read_modules(src, package)
    rank = {u: i for i, layer in enumerate(layers) for u in layer}
    problems: list[str] = []
    units = {unit_of(m, package) for m in modules}
    for u in sorted(units - set(rank)):
        problems.append(f"{package}.{u}: not placed in any layer")
    for path, _ in modules.values():
        n = len(path.read_text().splitlines())
        if n > max_lines:
            problems.append(f"{path}: {n} lines (at most {max_lines})")
    edges: dict[str, set[str]] = {u: set() for u in units}
    for r in references(modules, package):
        a, b = unit_of(r.source, package), unit_of(r.target, package)
        if a == b:
            continue
        edges[a].add(b)
        where = f"{r.path}:{r.line}: {r.source} -> {r.target}"
        if a in rank and b in rank and rank[b] <= rank[a]:
            problems.append(f"{where}: {'same' if rank[a] == rank[b] else 'higher'} layer ({b} is not below {a})")
        private = [n for n in r.names if n.startswith("_") and not n.startswith("__")]
        if private:
            problems.append(f"{where}: private name {private[0]} imported from another package")
    problems += [f"import cycle between packages: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """A cycle through each strongly connected group of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_path_back(g[0], set(g), edges) for g in groups]


def _path_back(start: str, group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside ``group`` (breadth first)."""
    paths = [[start]]
    seen: set[str] = set()
    while paths:
        path = paths.pop(0)
        for w in sorted(edges.get(path[-1], ())):
            if w == start:
                return [*path, start]
            if w in group and w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return [start, start]


# ----------------------------------------------------------------------------- the package


def test_the_package_keeps_its_layers():
    problems = check(SRC, "diffice", LAYERS)
    assert not problems, "\n".join(problems)


def test_every_unit_of_the_architecture_exists():
    units = {unit_of(m, "diffice") for m in read_modules(SRC, "diffice")}
    missing = [u for layer in LAYERS for u in layer if u not in units]
    assert not missing, missing


def test_the_architecture_document_lists_the_layers():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        for unit in layer:
            if unit not in ("diffice", "_timm_wandb"):
                assert re.search(rf"\b{re.escape(unit)}\b", text), unit


# ----------------------------------------------------------------------------- the checker can fail


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return src


FAKE_LAYERS = [["top"], ["mid"], ["low"], ["pkg"]]


def test_checker_passes_a_clean_package(tmp_path):
    src = _package(tmp_path, {
        "top/__init__.py": "from pkg.mid.a import run\n",
        "mid/__init__.py": "",
        "mid/a.py": "from pkg.low import helper\nfrom . import b\n\ndef run():\n    from pkg.mid.b import _own\n",
        "mid/b.py": "def _own():\n    pass\n",
        "low.py": "def helper():\n    pass\n",
    })
    assert check(src, "pkg", FAKE_LAYERS) == []


@pytest.mark.parametrize("files, message", [
    ({"low.py": "def f():\n    from pkg.mid import g\n", "mid.py": "def g():\n    pass\n"}, "higher layer"),
    ({"low.py": "def f():\n    import pkg.top\n", "top.py": ""}, "higher layer"),
    ({"low.py": "T = 'pkg.top:cmd'\n", "top.py": "def cmd():\n    pass\n"}, "higher layer"),
    ({"low.py": "", "mid.py": "", "also.py": "from pkg import mid\n"}, "not placed in any layer"),
    ({"top.py": "from pkg.low import _secret\n", "low.py": "_secret = 1\n"}, "private name _secret"),
    ({"top/__init__.py": "from ..low import _secret\n", "low.py": "_secret = 1\n"}, "private name _secret"),
    ({"mid.py": "x = 1\n" * 6, "low.py": ""}, "6 lines"),
])
def test_checker_catches_a_violation(tmp_path, files, message):
    problems = check(_package(tmp_path, files), "pkg", FAKE_LAYERS, max_lines=5)
    assert any(message in p for p in problems), problems


def test_checker_finds_a_cycle(tmp_path):
    src = _package(tmp_path, {"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg import a\n"})
    problems = check(src, "pkg", [["a", "b"], ["pkg"]])
    assert any("import cycle between packages: a -> b -> a" in p for p in problems), problems
    assert any("same layer" in p for p in problems), problems
