"""The tile grid over a box of the class map, and the weights that blend overlapping tiles.

Every run tiles the class map on one grid, anchored at its origin: a region run takes the grid's
tiles that touch the region (:func:`aligned_box`), so its pixels away from the region's edges
(:func:`settled_box`) equal a whole-slide run's, and one run's finished chunks serve the other.

Tiles of side ``tile`` step by ``stride = tile - overlap`` from the box origin and may reach past
the box (the model always sees full tiles; what falls outside the box is dropped). Blending
weights are linear ramps across each zone two neighbours share, and they sum to exactly one, so
the stitched probability of a pixel is a plain weighted sum of its tiles' probabilities and no
normalization pass is needed. A tile's outermost ``overlap // 4`` pixels inside a shared zone get
weight zero: a model sees too little context at a tile border for its output there to count.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from napari_samlung.geometry import Box


class Axis:
    """Tile positions and ramp weights along one axis."""

    def __init__(self, start: int, length: int, tile: int, overlap: int):
        if length < 1:
            raise ValueError(f"box length must be positive, got {length}")
        self.tile, self.overlap, self.stride = tile, overlap, tile - overlap
        self.count = 1 if length <= tile else math.ceil((length - tile) / self.stride) + 1
        self.positions = [start + i * self.stride for i in range(self.count)]

    def weights(self, i: int) -> np.ndarray:
        """Ramp weights of tile ``i`` along this axis (float32, length ``tile``).

        In a shared zone the outer quarter next to a tile's border gets weight 0 (a model sees
        too little context there), then the weight ramps linearly to 1.
        """
        w = np.ones(self.tile, dtype=np.float32)
        if self.overlap > 0:
            margin = self.overlap // 4
            t = np.arange(self.overlap, dtype=np.float32) + 0.5
            ramp = np.clip((t - margin) / (self.overlap - 2 * margin), 0.0, 1.0)
            if i > 0:
                w[: self.overlap] = ramp
            if i < self.count - 1:
                w[self.stride:] = 1.0 - ramp
        return w


class TileGrid:
    """Overlapping tiles over ``box`` (y, x, h, w) in class-map pixels."""

    def __init__(self, box: Box, tile: int, overlap: int):
        if tile < 16:
            raise ValueError(f"tile size must be at least 16, got {tile}")
        if not 0 <= overlap < tile / 2:
            raise ValueError(f"overlap must be at least 0 and less than half the tile size ({tile}), got {overlap}")
        y, x, h, w = box
        self.box, self.tile, self.overlap = box, tile, overlap
        self.rows = Axis(y, h, tile, overlap)
        self.cols = Axis(x, w, tile, overlap)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.count, self.cols.count

    def __len__(self) -> int:
        return self.rows.count * self.cols.count

    def tiles(self) -> Iterator[tuple[int, int]]:
        """(row, col) of every tile in row-major order: the order the stitcher takes them in."""
        for r in range(self.rows.count):
            for c in range(self.cols.count):
                yield r, c

    def tile_box(self, r: int, c: int) -> Box:
        return self.rows.positions[r], self.cols.positions[c], self.tile, self.tile

    def weights(self, r: int, c: int) -> np.ndarray:
        """(tile, tile) blending weights of tile (r, c); they sum to one over covering tiles."""
        return np.outer(self.rows.weights(r), self.cols.weights(c))


def _axis_span(start: int, length: int, size: int, tile: int, overlap: int) -> tuple[int, int]:
    """Start and length, on the global grid of an axis of ``size`` pixels, of the tiles touching
    ``[start, start + length)``."""
    count, stride = Axis(0, size, tile, overlap).count, tile - overlap
    first = max(0, (start - tile) // stride + 1)
    last = min(count - 1, max(first, math.ceil((start + length) / stride) - 1))
    begin = first * stride
    return begin, min(size, last * stride + tile) - begin


def aligned_box(region: Box, shape: tuple[int, int], tile: int, overlap: int) -> Box:
    """The box of the class-map grid's tiles (of a map of ``shape``) that touch ``region``."""
    y, h = _axis_span(region[0], region[2], shape[0], tile, overlap)
    x, w = _axis_span(region[1], region[3], shape[1], tile, overlap)
    return y, x, h, w


def settled_box(box: Box, shape: tuple[int, int], overlap: int) -> Box | None:
    """The part of an aligned ``box`` whose stitched pixels equal a whole-map run's: all but the
    ``overlap`` next to each side that is not the map's own edge (there a whole-map run also
    blends in the tiles beyond ``box``)."""
    y, x, h, w = box
    top = 0 if y == 0 else overlap
    left = 0 if x == 0 else overlap
    bottom = 0 if y + h >= shape[0] else overlap
    right = 0 if x + w >= shape[1] else overlap
    if h - top - bottom <= 0 or w - left - right <= 0:
        return None
    return y + top, x + left, h - top - bottom, w - left - right
