"""The layering of ARCHITECTURE.md, checked on the code: imports go down, stages declare their code.

Imports are read from the source (every ``import`` statement, including those inside functions,
except ``if TYPE_CHECKING:`` blocks, which never run), so a cycle hidden by a function-level import
still fails here.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "neurotransfer"

# ARCHITECTURE.md's layers, lowest first: a unit may import only units of lower layers.
LAYERS: list[set[str]] = [
    {"errors", "text_output", "backbone_rules"},
    {"paths", "runtime", "atomic", "process_guard", "live_logger", "compose"},
    {"models"},
    {"config"},
    {"cohort", "data"},
    {"train"},
    {"synth", "pretrain", "evaluation"},
    {"reporting", "sweep"},
    {"stages"},
    {"cli"},
]
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}
# Plumbing a stage's outputs do not depend on (validated params, atomic moves, paths that
# tests/test_paths.py ties to dvc.yaml): not required among a stage's dvc.yaml deps.
NOT_DEPS = {
    "config",
    "errors",
    "backbone_rules",
    "atomic",
    "process_guard",
    "paths",
    "compose",
    "cli",
    "__init__",
}


def _module_file(name: str) -> Path | None:
    """The source file of a dotted ``neurotransfer`` module name (None when it is not one)."""
    parts = name.split(".")
    if parts[0] != "neurotransfer":
        return None
    base = SRC.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


@cache
def imported_files(path: Path) -> frozenset[Path]:
    """The neurotransfer source files ``path`` imports at run time (any depth in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    found: set[Path] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, base]).strip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            file = _module_file(name)
            if file is not None and file != path:
                found.add(file)
    if path.name == "__init__.py" and "pkgutil.iter_modules" in path.read_text(encoding="utf-8"):
        # A package that imports every module it holds (models/: each family registers itself).
        found.update(p for p in path.parent.glob("*.py") if p != path)
    return frozenset(found)


def unit(path: Path) -> str:
    """The layering unit of a source file: its top-level package or module under neurotransfer."""
    parts = path.relative_to(PACKAGE).parts
    return Path(parts[0]).stem


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "egg-info" not in str(p))


def test_every_unit_has_a_layer() -> None:
    units = {unit(p) for p in source_files()} - {"__init__", "__main__"}
    assert units <= set(LAYER), f"not in ARCHITECTURE.md's layers: {sorted(units - set(LAYER))}"


def test_imports_only_go_down_the_layers() -> None:
    upward = []
    for path in source_files():
        source = unit(path)
        for target in imported_files(path):
            to = unit(target)
            if to == source or to == "__init__" or source in ("__init__", "__main__"):
                continue
            if LAYER[to] >= LAYER[source]:
                upward.append(f"{path.relative_to(SRC)} imports {target.relative_to(SRC)}")
    assert not upward, "imports against ARCHITECTURE.md's layering:\n" + "\n".join(upward)


def closure(path: Path) -> set[Path]:
    """``path`` and every neurotransfer file it imports, transitively."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if unit(current) not in NOT_DEPS:  # plumbing: what it imports is not the stage's code
            todo.extend(imported_files(current))
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for parent in current.parents:
            if parent == PACKAGE:
                break
            todo.append(parent / "__init__.py")
    return seen


def _stages() -> dict[str, dict]:
    dvc_yaml = PACKAGE.parents[1] / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_stage_declares_the_code_it_runs(stage: str) -> None:
    """A change to any module a stage runs makes `dvc status` report that stage changed."""
    body = _stages()[stage]
    deps = [d for d in body.get("deps", []) if str(d).startswith("src/")]
    root = PACKAGE.parents[1]
    entry = PACKAGE / "stages" / f"{stage}.py"
    missing = sorted(
        str(f.relative_to(root))
        for f in closure(entry)
        if unit(f) not in NOT_DEPS and f.name != "__init__.py"
        if not any(f == root / d or (root / d) in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {missing}"
