"""The tile grid over a box of the class map, and the cells that stitching works on.

Tiles of side ``tile`` step by ``stride = tile - overlap`` from the box origin and may reach past
the box (the model always sees full tiles; what falls outside the box is dropped). Along each
axis the box splits into *segments*: a tile's core (covered by that tile alone) and the shared
zones where two neighbours overlap. A 2-D *cell* is a pair of segments; it is covered by one, two
or four tiles. Blending weights are linear ramps across each shared zone that sum to exactly one,
so the stitched probability of a pixel is a plain weighted sum of its tiles' probabilities and no
normalization pass is needed. A tile's outermost ``overlap // 4`` pixels inside a shared zone get
weight zero: a model sees too little context at a tile border for its output there to count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

Box = tuple[int, int, int, int]  # (y, x, h, w)


@dataclass(frozen=True)
class Segment:
    """A 1-D interval of the grid: a tile's core, or the zone shared by tiles ``tiles``."""

    start: int  # global coordinate
    stop: int
    tiles: tuple[int, ...]  # indices of the tiles that cover it along this axis


@dataclass(frozen=True)
class Cell:
    """A rectangle of the box covered by the same set of tiles."""

    key: tuple[int, int]  # (segment index along y, segment index along x)
    box: Box
    tiles: tuple[tuple[int, int], ...]  # (row, col) of every covering tile


class Axis:
    """Tile positions, segments and ramp weights along one axis."""

    def __init__(self, start: int, length: int, tile: int, overlap: int):
        if length < 1:
            raise ValueError(f"box length must be positive, got {length}")
        self.tile, self.overlap, self.stride = tile, overlap, tile - overlap
        self.count = 1 if length <= tile else math.ceil((length - tile) / self.stride) + 1
        self.positions = [start + i * self.stride for i in range(self.count)]
        self.start, self.stop = start, start + length
        segments: list[Segment] = []
        self._touched: list[list[int]] = []  # segment indices per tile
        for i, p in enumerate(self.positions):
            touched = []
            if i > 0 and overlap > 0:
                touched.append(len(segments) - 1)  # the zone shared with tile i - 1, added by it
            lo, hi = self.core_range(i)
            touched.append(len(segments))
            segments.append(Segment(p + lo, p + hi, (i,)))
            if i < self.count - 1 and overlap > 0:
                touched.append(len(segments))
                segments.append(Segment(p + self.stride, p + self.tile, (i, i + 1)))
            self._touched.append(touched)
        # tiles reach past the box: clip, and drop what lies wholly outside
        self.segments = [Segment(s.start, min(s.stop, self.stop), s.tiles) for s in segments if s.start < self.stop]
        self._touched = [[k for k in t if k < len(self.segments)] for t in self._touched]

    def core_range(self, i: int) -> tuple[int, int]:
        """Local [lo, hi) of tile ``i`` that no neighbour covers."""
        lo = self.overlap if i > 0 else 0
        hi = self.stride if i < self.count - 1 else self.tile
        return lo, hi

    def segments_of(self, i: int) -> list[int]:
        """Indices of the segments tile ``i`` touches (shared left, core, shared right)."""
        return self._touched[i]

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
        """(row, col) of every tile in row-major order: the order that keeps few cells open."""
        for r in range(self.rows.count):
            for c in range(self.cols.count):
                yield r, c

    def tile_box(self, r: int, c: int) -> Box:
        return self.rows.positions[r], self.cols.positions[c], self.tile, self.tile

    def cell(self, sy: int, sx: int) -> Cell:
        a, b = self.rows.segments[sy], self.cols.segments[sx]
        tiles = tuple((r, c) for r in a.tiles for c in b.tiles)
        return Cell((sy, sx), (a.start, b.start, a.stop - a.start, b.stop - b.start), tiles)

    def cells_of(self, r: int, c: int) -> list[Cell]:
        """The cells tile (r, c) contributes to, clipped to the box."""
        return [self.cell(sy, sx) for sy in self.rows.segments_of(r) for sx in self.cols.segments_of(c)]

    def weights(self, r: int, c: int) -> np.ndarray:
        """(tile, tile) blending weights of tile (r, c); they sum to one over covering tiles."""
        return np.outer(self.rows.weights(r), self.cols.weights(c))
