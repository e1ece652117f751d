"""Annotations made elsewhere (QuPath GeoJSON, label images) written into a class map as reviewed regions.

An import has two steps, so that a bad file never touches the class map:

1. A reader (:mod:`.geojson_import`, :mod:`.label_import`) checks the whole file against the
   :class:`Target` (the class map's size, scale and classes, the slide's size) and returns an
   :class:`Imported`: the reviewed regions (class-map boxes) and a way to compute their labels.
2. :func:`write_imported` writes those labels and records the regions, under the results folder's
   lock, as an applied review does: inside a reviewed region every pixel is set (background where
   no annotation lies), outside nothing changes.

Pixel rule shared by both readers: class-map pixel ``i`` takes the value at its centre, level-0
coordinate ``(i + 0.5) * scale``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, intersect
from napari_samlung.labels import IGNORE, class_name
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.lock import writing
from napari_samlung.slide import Slide

#: Side of the blocks an import computes and writes at once (class-map pixels): bounds memory.
BLOCK = 1024

GEOJSON_SUFFIXES = (".geojson", ".json")

Progress = Callable[[int, int], None]


class AnnotationImportError(SamLungError):
    """A file that cannot be imported: the one-line message names it and what is wrong."""


@dataclass(frozen=True)
class Target:
    """The class map an import writes into (existing, or about to be made) and its slide."""

    shape: tuple[int, int]  # class-map pixels (h, w)
    scale: float  # level-0 slide pixels per class-map pixel
    num_classes: int
    class_names: dict[str, str]  # label value (as text) -> name
    slide_shape: tuple[int, int]  # level 0 (h, w)
    slide_levels: tuple[tuple[int, int], ...] = ()  # every pyramid level's (h, w), level 0 first
    mpp: float | None = None  # microns per class-map pixel

    @classmethod
    def of(cls, classmap: ClassMap, slide_levels: tuple[tuple[int, int], ...] = ()) -> Target:
        """The target of an existing class map (the slide's level-0 size as recorded with it)."""
        recorded = (classmap.meta.get("slide") or {}).get("shape")
        slide_shape = tuple(recorded) if recorded else tuple(round(s * classmap.scale) for s in classmap.shape)
        names = classmap.meta.get("class_names") or default_class_names(classmap.num_classes)
        return cls(tuple(classmap.shape), classmap.scale, classmap.num_classes, dict(names),  # type: ignore[arg-type]
                   slide_shape, tuple(slide_levels) or (slide_shape,), classmap.mpp)  # type: ignore[arg-type]

    @classmethod
    def fresh(cls, slide: Slide, shape: tuple[int, int], scale: float, num_classes: int) -> Target:
        """The target of new results for an opened ``slide`` (a class map of ``shape`` at ``scale``)."""
        mpp = None if slide.mpp is None else slide.mpp * scale
        return cls(tuple(shape), float(scale), num_classes, default_class_names(num_classes),  # type: ignore[arg-type]
                   tuple(slide.shape), tuple(tuple(s) for s in slide.level_shapes), mpp)

    def centre_range(self, start: float, stop: float, axis: int) -> tuple[int, int]:
        """The class-map pixels along ``axis`` (0: y, 1: x) whose centres lie in level-0 [start, stop),
        as a clipped half-open range."""
        first = math.ceil(start / self.scale - 0.5)
        end = math.ceil(stop / self.scale - 0.5)
        return max(0, first), min(self.shape[axis], end)

    def box_of(self, x0: float, y0: float, x1: float, y1: float) -> Box | None:
        """The class-map box of the pixels whose centres lie in a level-0 rectangle; None if none do."""
        (r0, r1), (c0, c1) = self.centre_range(y0, y1, 0), self.centre_range(x0, x1, 1)
        return (r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None

    def area(self, boxes: list[Box]) -> str:
        """The area of class-map boxes in words: mm² when the resolution is known, else pixels."""
        pixels = sum(b[2] * b[3] for b in boxes)
        if self.mpp is None:
            return f"{pixels} px at the class map's resolution"
        return f"{pixels * self.mpp**2 / 1e6:.3g} mm²"


def default_class_names(num_classes: int) -> dict[str, str]:
    """The class names a new class map gets (labels.py conventions)."""
    return {str(v): class_name(v, num_classes) for v in range(num_classes + 1)}


@dataclass
class Imported:
    """A checked file, ready to write: its reviewed regions and their labels."""

    source: Path
    regions: list[Box]  # class-map boxes
    labels: Callable[[Box], np.ndarray]  # uint8 labels of a class-map box inside a region
    summary: str  # what the file holds, in a few words ("12 polygons (Tumor 10, Background 2)")
    notes: list[str] = field(default_factory=list)  # what the user should know (repairs, assumptions)

    def message(self, target: Target) -> str:
        """One line saying what was imported: the summary, the reviewed regions and their area."""
        count = len(self.regions)
        return (f"{self.source.name}: {self.summary}; {count} reviewed region{'s' if count != 1 else ''} "
                f"({target.area(self.regions)})")


def read_annotations(path: str | os.PathLike, target: Target) -> Imported:
    """Check a GeoJSON file (``.geojson``/``.json``) or a label image (any other name) against
    ``target``; nothing is written."""
    from napari_samlung.annotations.geojson_import import read_geojson  # they build on this module
    from napari_samlung.annotations.label_import import read_label_image

    path = Path(path)
    return read_geojson(path, target) if path.suffix.lower() in GEOJSON_SUFFIXES else read_label_image(path, target)


def write_imported(classmap: ClassMap, imported: Imported, *, progress: Progress | None = None,
                   what: str = "samlung import") -> list[dict[str, Any]]:
    """Write the imported labels into ``classmap`` (opened 'r+') and record their regions as reviewed.

    Holds the results folder's lock throughout. Pixels are written first, then the records, so a
    crash midway leaves no region recorded as reviewed with half its labels; importing the same file
    again finishes the job, and a region of the same box is recorded once. Returns the records.
    """
    blocks = [b for region in imported.regions for b in _blocks(region)]
    with writing(classmap.root, what):
        classmap.refresh()
        for done, block in enumerate(blocks, start=1):
            classmap.write(block, imported.labels(block))
            if progress is not None:
                progress(done, len(blocks))
        records = []
        for region in imported.regions:
            classmap.refresh()
            known = next((r for r in classmap.reviewed if tuple(r["box"]) == tuple(region)), None)
            records.append(known or classmap.add_reviewed(region, imported=str(imported.source)))
    return records


def create_unreviewed(root: str | os.PathLike, target: Target, *, slide: dict[str, Any],
                      model: dict[str, Any]) -> ClassMap:
    """New results at ``root``: a class map of ``target``'s geometry, every pixel "not reviewed"
    (255), status "empty" (nothing segmented). ``slide`` and ``model`` are recorded as segment does."""
    classmap = ClassMap.create(root, target.shape, scale=target.scale, num_classes=target.num_classes,
                               slide=slide, model=model)
    for level, array in enumerate(classmap.levels):
        ch, cw = array.chunks
        full = np.full((ch, cw), IGNORE, np.uint8)
        for cy in range(math.ceil(array.shape[0] / ch)):
            for cx in range(math.ceil(array.shape[1] / cw)):
                classmap.write_chunk(level, cy, cx, full)
    return classmap


def slide_record(path: str | os.PathLike, name: str, fmt: str, shape: tuple[int, int],
                 mpp: float | None) -> dict[str, Any]:
    """The slide as a class map records it (the same fields a segmentation run writes)."""
    return {"path": str(Path(path).resolve()), "name": name, "format": fmt, "shape": list(shape), "mpp": mpp}


def merge_boxes(boxes: list[Box]) -> list[Box]:
    """``boxes`` without duplicates, overlapping ones joined into their bounding box (a reviewed
    region records each pixel once)."""
    merged: list[Box] = []
    for box in dict.fromkeys(tuple(b) for b in boxes):
        while (other := next((m for m in merged if intersect(m, box) is not None), None)) is not None:
            merged.remove(other)
            y0, x0 = min(box[0], other[0]), min(box[1], other[1])
            y1, x1 = max(box[0] + box[2], other[0] + other[2]), max(box[1] + box[3], other[1] + other[3])
            box = (y0, x0, y1 - y0, x1 - x0)
        merged.append(box)
    return merged


def _blocks(box: Box) -> list[Box]:
    y, x, h, w = box
    return [b for by in range(y, y + h, BLOCK) for bx in range(x, x + w, BLOCK)
            if (b := intersect((by, bx, BLOCK, BLOCK), box)) is not None]
