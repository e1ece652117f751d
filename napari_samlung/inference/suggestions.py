"""Where to look next: the segmented tissue fields the model was least sure of.

A field is one model tile on the engine's tile grid of the class map (the tile size and overlap of
the run that made it). Only fields the model segmented count (most of their pixels have a
confidence, see ``results/confidence.py``); fields that overlap a reviewed region are left out,
since a person has already looked there. Fields are ranked by their mean confidence, lowest first.

The confidence is read at the coarsest pyramid level that still gives a field
:data:`MIN_SAMPLES` samples a side, so ranking a whole slide reads a few megabytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_samlung.errors import SamLungError
from napari_samlung.geometry import Box, intersect
from napari_samlung.inference.tiling import TileGrid
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import LEAST, MOST, NOT_SEGMENTED, ConfidenceMap

MIN_SAMPLES = 64  # samples a side of a field at the level read
MIN_SEGMENTED = 0.5  # a field counts when at least this fraction of it has a confidence


@dataclass(frozen=True)
class Field:
    """A field to review: its class-map box, its level-0 box (y, x, h, w) and its mean confidence (0..1)."""

    box: Box
    slide_box: Box
    confidence: float


def field_grid(cm: ClassMap) -> TileGrid:
    """The tile grid of the run that made the class map, over the whole map."""
    job = cm.meta.get("job") or {}
    tile = int(job.get("tile") or (cm.meta.get("model") or {}).get("tile") or 1024)
    overlap = int(job["overlap"]) if job.get("overlap") is not None else tile // 8
    return TileGrid((0, 0, *cm.shape), tile, overlap)


def ranked_fields(cm: ClassMap, confidence: ConfidenceMap) -> list[Field]:
    """Every segmented, not-reviewed field of the map, least confident first (ties: top, then left)."""
    grid = field_grid(cm)
    level = _level(grid.tile, len(confidence.levels))
    f = 1 << level
    reviewed = cm.reviewed_boxes()
    fields = []
    for r in range(grid.rows.count):
        y0 = grid.rows.positions[r]
        y1 = min(y0 + grid.tile, cm.shape[0])
        band = np.asarray(confidence.levels[level][-(-y0 // f):-(-y1 // f)])
        for c in range(grid.cols.count):
            x0 = grid.cols.positions[c]
            box = (y0, x0, y1 - y0, min(x0 + grid.tile, cm.shape[1]) - x0)
            if any(intersect(box, done) for done in reviewed):
                continue
            values = band[:, -(-x0 // f):-(-(x0 + box[3]) // f)]
            segmented = values != NOT_SEGMENTED
            if values.size == 0 or segmented.mean() < MIN_SEGMENTED:
                continue
            mean = (float(values[segmented].mean()) - LEAST) / (MOST - LEAST)
            fields.append(Field(box, cm.to_slide(box), mean))
    fields.sort(key=lambda field: (field.confidence, field.box[0], field.box[1]))
    return fields


def suggest(cm: ClassMap, confidence: ConfidenceMap, count: int) -> list[Field]:
    """The ``count`` least confident segmented fields not yet reviewed (fewer when there are fewer)."""
    if count < 1:
        raise SamLungError(f"must be at least 1, got {count}", param="count")
    return ranked_fields(cm, confidence)[:count]


def _level(tile: int, levels: int) -> int:
    """The coarsest level at which a tile still spans :data:`MIN_SAMPLES` samples a side."""
    level = 0
    while level + 1 < levels and tile >> (level + 1) >= MIN_SAMPLES:
        level += 1
    return level
