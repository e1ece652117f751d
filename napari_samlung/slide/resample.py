"""Reading a slide box at an arbitrary scale: one pyramid level, cropped and resized.

Convention. Pixel k of an image covers the continuous interval [k, k + 1) and has its centre at
k + 0.5. Output pixel (i, j) of ``read_scaled(y0, x0, h, w, scale)`` covers the level-0 box
[y0 + i*scale, y0 + (i+1)*scale) x [x0 + j*scale, x0 + (j+1)*scale): its value is the
antialiased bilinear (triangle filter of radius ``r``, ``r`` = scale / level downsample, in level
pixels) weighted average centred on that box's centre, computed by
``torch.nn.functional.interpolate(..., mode="bilinear", antialias=True)`` on uint8, which is fast
on the CPU. Upsampling (``r`` < 1) is plain bilinear interpolation.

The one approximation: the resampling grid is anchored to the read level's pixel grid, so the
box origin snaps to the nearest level pixel (an error of at most half a level pixel, i.e. at most
half an output pixel). The scale itself is exact. Where the origin falls on a level pixel and the
ratio ``r`` is a fraction with a small denominator (integer origins at scale 1, 2, 1.5, 4, ...),
there is no snapping: the result equals resizing the whole level (framed in white) and cropping.
Every output pixel uses its full filter support: the read includes a margin, and pixels outside
the level are white.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# Level pixels read in one piece; larger requests are cut into blocks.
MAX_READ_PIXELS = 48 * 2**20
_EXACT = 1e-6

ReadFn = Callable[[int, int, int, int], np.ndarray]  # (y, x, h, w) -> (h, w, 3) uint8 at one level


def read_resampled(read: ReadFn, downsample: float, y0: float, x0: float, h: int, w: int,
                   scale: float) -> np.ndarray:
    """(h, w, 3) uint8: the level-0 box at (y0, x0) sampled every ``scale`` level-0 pixels,
    read with ``read`` from a level whose downsample is ``downsample`` (see the module docstring).
    """
    r = scale / downsample
    ly, lx = y0 / downsample, x0 / downsample
    if abs(r - 1) < _EXACT and _is_integral(ly) and _is_integral(lx):
        return read(round(ly), round(lx), h, w)
    margin = _margin(r)
    span_h = math.ceil((h + 2 * margin + 1) * r) + 2
    span_w = math.ceil((w + 2 * margin + 1) * r) + 2
    if span_h * span_w > MAX_READ_PIXELS:
        return _in_blocks(read, downsample, y0, x0, h, w, scale, r)
    top, left = round(ly - margin * r), round(lx - margin * r)
    region = read(top, left, span_h, span_w)
    return _resize(region, r)[margin: margin + h, margin: margin + w].copy()


def _margin(r: float) -> int:
    """Output pixels of context on each side: enough for the filter's support (max(r, 1) level
    pixels), and where possible a whole number of level pixels, so an origin on the level grid
    stays on it."""
    least = math.ceil(max(r, 1.0) / r)
    for margin in range(least, least + 16):
        if _is_integral(margin * r):
            return margin
    return least


def _resize(region: np.ndarray, r: float) -> np.ndarray:
    """Resize by 1/r from the region's top-left corner; returns (floor(H/r), floor(W/r), 3)."""
    import torch

    t = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)  # channels-last memory, uint8
    out = torch.nn.functional.interpolate(t, scale_factor=(1 / r, 1 / r), mode="bilinear",
                                          antialias=True, align_corners=False,
                                          recompute_scale_factor=False)
    return out[0].permute(1, 2, 0).numpy()


def _in_blocks(read: ReadFn, downsample: float, y0: float, x0: float, h: int, w: int, scale: float,
               r: float) -> np.ndarray:
    block = max(1, int(math.sqrt(MAX_READ_PIXELS) / max(r, 1.0)) - 8)
    out = np.empty((h, w, 3), np.uint8)
    for by in range(0, h, block):
        for bx in range(0, w, block):
            bh, bw = min(block, h - by), min(block, w - bx)
            out[by: by + bh, bx: bx + bw] = read_resampled(read, downsample, y0 + by * scale,
                                                           x0 + bx * scale, bh, bw, scale)
    return out


def _is_integral(value: float) -> bool:
    return abs(value - round(value)) < _EXACT
