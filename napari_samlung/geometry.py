"""Boxes, and coordinates between napari's world, level-0 slide pixels and class-map pixels.

One module for the geometry every part shares: the ``(y, x, h, w)`` box of the engine, the class
map and the widget, and the slide frame that places class-map pixels in napari's world (no Qt).

napari puts the centre of data pixel ``k`` of a layer at world ``translate + k * scale``. The
slide frame (level 0) uses the convention of the engine and the class map: pixel ``k`` covers the
continuous interval ``[k, k + 1)``; class-map pixel ``i`` covers level-0 ``[i * s, (i + 1) * s)``
for a class-map scale ``s``. :class:`SlideFrame` converts between the two for the slide's image
layer, so class-map and review layers line up with the slide exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Box = tuple[int, int, int, int]  # (y, x, h, w)
Point = tuple[float, float]  # (y, x)


@dataclass(frozen=True)
class SlideFrame:
    """World placement of a slide's level 0: napari ``scale``, ``translate`` (y, x) and units."""

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    units: tuple[str, str] | None = None  # None: pixels

    def to_level0(self, y: float, x: float) -> tuple[float, float]:
        """World point -> continuous level-0 coordinates."""
        (ty, tx), (sy, sx) = self.translate, self.scale
        return (y - ty) / sy + 0.5, (x - tx) / sx + 0.5

    def to_world(self, y: float, x: float) -> tuple[float, float]:
        """Continuous level-0 coordinates -> world point."""
        (ty, tx), (sy, sx) = self.translate, self.scale
        return ty + (y - 0.5) * sy, tx + (x - 0.5) * sx

    def world_rect_to_box(self, y0: float, x0: float, y1: float, x1: float) -> Box:
        """The level-0 pixel box covering a world rectangle (rounded outwards)."""
        (a, b), (c, d) = self.to_level0(min(y0, y1), min(x0, x1)), self.to_level0(max(y0, y1), max(x0, x1))
        top, left = math.floor(a), math.floor(b)
        return top, left, max(1, math.ceil(c) - top), max(1, math.ceil(d) - left)

    def box_to_world_rect(self, box: tuple[float, ...], scale: float = 1.0) -> list[list[float]]:
        """Corners (world) of a box given in pixels of ``scale`` level-0 pixels (class map: its scale)."""
        y, x, h, w = (v * scale for v in box)
        (y0, x0), (y1, x1) = self.to_world(y, x), self.to_world(y + h, x + w)
        return [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]

    def grid_placement(self, scale: float, offset: tuple[int, int] = (0, 0)) -> tuple[Point, Point]:
        """napari (scale, translate) of a layer whose pixel (0, 0) is pixel ``offset`` of a grid with
        ``scale`` level-0 pixels per pixel (the class map, or a draft inside it)."""
        layer_scale = (self.scale[0] * scale, self.scale[1] * scale)
        return layer_scale, self.to_world((offset[0] + 0.5) * scale, (offset[1] + 0.5) * scale)

    def visible_box(self, center: tuple[float, float], zoom: float, canvas: tuple[int, int]) -> Box:
        """Level-0 box that a 2-D canvas of ``canvas`` (h, w) screen pixels shows.

        ``center`` is the camera centre (world y, x) and ``zoom`` screen pixels per world unit.
        """
        if not zoom > 0:
            raise ValueError(f"camera zoom must be positive, got {zoom}")
        half_h, half_w = canvas[0] / (2 * zoom), canvas[1] / (2 * zoom)
        cy, cx = center
        return self.world_rect_to_box(cy - half_h, cx - half_w, cy + half_h, cx + half_w)


def intersect(a: Box, b: Box) -> Box | None:
    """Intersection of two boxes, or None when they do not overlap."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (y0, x0, y1 - y0, x1 - x0) if y1 > y0 and x1 > x0 else None


def grow(box: Box, margin: int) -> Box:
    """``box`` with ``margin`` pixels added on every side."""
    y, x, h, w = box
    return y - margin, x - margin, h + 2 * margin, w + 2 * margin
