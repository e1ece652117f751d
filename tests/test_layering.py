"""The house rules of DESIGN.md, read from the source: which package may import which.

Dependencies point one way: front ends (``gui``, ``commands``) -> ``inference`` | ``annotations``
(side by side) -> ``results`` -> ``slide`` / ``model``; leaf modules (errors, files, geometry,
labels, metrics, processes) import no other part. Compute code never imports napari or Qt, and
``napari_samlung`` never imports the fine-tuning program in ``training/``. Imports inside
functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = {"errors", "files", "geometry", "labels", "metrics", "processes"}

# part -> the parts it may import (besides itself and the leaves)
ALLOWED = {
    "leaf": set(),
    "model": set(),
    "slide": set(),
    "data": set(),
    "training_runs": set(),
    "synthetic": {"slide"},
    "results": {"slide", "model"},
    "inference": {"results", "slide", "model", "data"},
    "annotations": {"results", "slide", "model", "data"},
    "evaluation": {"inference", "data", "model"},
    "commands": {"inference", "annotations", "results", "slide", "model", "data", "evaluation", "synthetic",
                 "training_runs", "gui"},
    "gui": {"inference", "annotations", "results", "slide", "model", "data", "synthetic", "training_runs"},
    "cli": {"commands"},
    "package": set(),
}
GUI_LIBRARIES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy"}
MAY_IMPORT_GUI_LIBRARIES = {"gui", "commands"}  # commands: `samlung demo --gui` opens napari


def _part(module: str) -> str:
    """The layer of a napari_samlung module name (``napari_samlung.results.classmap`` -> results)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    name = parts[1]
    return "leaf" if name in LEAVES else name


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from napari_samlung import labels` imports the module napari_samlung.labels
            if target in ("napari_samlung",) or target.count(".") == 1 and target.startswith("napari_samlung."):
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _modules(folder: str) -> list[tuple[Path, str]]:
    return [(path, ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
            for path in sorted((ROOT / folder).rglob("*.py"))]


def _violations() -> list[str]:
    problems = []
    for path, module in _modules("napari_samlung"):
        part = _part(module)
        allowed = ALLOWED.get(part, set()) | {part, "leaf", "package"}
        for line, target in _imports(path, module):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top == "training":
                problems.append(f"{where}: napari_samlung imports the fine-tuning program ({target})")
            elif top in GUI_LIBRARIES and part not in MAY_IMPORT_GUI_LIBRARIES:
                problems.append(f"{where}: {part} imports {top} (compute code stays free of napari and Qt)")
            elif top == "napari_samlung" and target != "napari_samlung":
                other = _part(target)
                if other == "leaf" and part == "leaf":
                    continue
                if other not in allowed:
                    problems.append(f"{where}: {part} imports {other} ({target})")
    for path, module in _modules("training"):
        for line, target in _imports(path, module):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in GUI_LIBRARIES:
                problems.append(f"{where}: the fine-tuning program imports {top}")
            elif top == "napari_samlung" and _part(target) in ("gui", "commands", "cli"):
                problems.append(f"{where}: the fine-tuning program imports a front end ({target})")
    return problems


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({_part(module) for _, module in _modules("napari_samlung")} - set(ALLOWED))
    assert not unknown, f"add these parts to ALLOWED in this test, in their layer: {unknown}"


def test_imports_follow_the_layering_rules():
    problems = _violations()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from napari_samlung.gui import _widget\n", "results imports gui"),
    ("import napari\n", "results imports napari"),
    ("def f():\n    from training import finetune\n", "imports the fine-tuning program"),
])
def test_a_broken_rule_is_reported(tmp_path, monkeypatch, source, expected):
    """The checker itself: a results module that imports upwards is caught, lazy imports included."""
    fake = tmp_path / "napari_samlung" / "results"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    problems = _violations()
    assert any(expected in p for p in problems), problems
