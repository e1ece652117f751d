"""Where a slide's results live: ``<stem>.samlung/`` in a chosen folder or beside the slide."""

from __future__ import annotations

import os
from pathlib import Path

from napari_samlung.results.classmap import ClassMap

SUFFIX = ".samlung"


def results_dir(slide_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where a slide's results live: ``OUT/<stem>.samlung`` or next to the slide."""
    slide_path = Path(slide_path)
    name = slide_path.name.split(".")[0] if slide_path.name.endswith(".ome.tif") else slide_path.stem
    parent = Path(out_dir) if out_dir is not None else slide_path.parent
    return parent / f"{name}{SUFFIX}"


def slide_stem(root: str | os.PathLike) -> str:
    """The slide's name that a result folder carries (``case.samlung`` -> ``case``)."""
    return Path(root).name.removesuffix(SUFFIX)


def find_results(slide_path: str | os.PathLike, project_dir: str | os.PathLike | None = None) -> Path | None:
    """The result folder holding a class map for the slide: in ``project_dir`` first, then beside it."""
    candidates = ([results_dir(slide_path, project_dir)] if project_dir else []) + [results_dir(slide_path)]
    return next((root for root in candidates if ClassMap.exists(root)), None)
