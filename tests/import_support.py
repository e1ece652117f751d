"""Shared pieces of the import tests: a small slide, the command, class-map snapshots, training labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from slide_factory import he_texture

from napari_samlung.annotations.training_set import export_training_set
from napari_samlung.cli import main
from napari_samlung.data.files import read_gray
from napari_samlung.results.classmap import ClassMap
from napari_samlung.slide import open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff

SLIDE_SHAPE = (512, 768)  # level 0 at 0.25 um/px; the tiny preset (0.5 um/px) maps it at scale 2: 256 x 384
MAP_SHAPE = (256, 384)
TILE = 64


def write_slide(path: Path) -> Path:
    """A generated two-level pyramidal TIFF slide of :data:`SLIDE_SHAPE` at 0.25 um/px."""
    return write_pyramidal_tiff(path, he_texture(*SLIDE_SHAPE), mpp=0.25, tile=64, compression="zlib")


def samlung_import(*argv: object) -> int:
    """``samlung import ARGV`` as the command line runs it (exit status, one-line errors on stderr)."""
    return main(["import", *(str(a) for a in argv)])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a results folder's class map, by relative path: compared to prove it untouched."""
    folder = Path(root) / "classmap.zarr"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def training_labels(root: Path, slide_path: Path, out: Path) -> dict[tuple[int, int, int, int], np.ndarray]:
    """The label tiles of a training set exported from the results at ``root``, by level-0 (x, y, w, h)."""
    with open_slide(slide_path) as slide:
        export_training_set(ClassMap.open(root), slide, out, tile_size=TILE)
    manifest = json.loads((out / "manifest.json").read_text())
    return {(t["x"], t["y"], t["width"], t["height"]): read_gray(out / t["label"]) for t in manifest["tiles"]}


def assert_same_training_labels(source: Path, imported: Path, slide_path: Path, tmp_path: Path) -> None:
    """A training set exported from ``imported`` results has the tiles and labels of one exported
    from ``source``: the round trip through a file lost nothing."""
    direct = training_labels(source, slide_path, tmp_path / "SET-direct")
    again = training_labels(imported, slide_path, tmp_path / "SET-imported")
    assert direct.keys() == again.keys() and len(direct) > 2
    for key, labels in direct.items():
        np.testing.assert_array_equal(again[key], labels, err_msg=f"tile {key}")
