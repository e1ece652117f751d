"""Blend tile predictions into final labels, on the device that ran the model.

Tiles arrive in row-major order. Their class probabilities, times the blending ramps (which sum
to one over the tiles that cover a pixel, see ``tiling.py``), are added into a *band* one tile
tall and as wide as the box, on the device: one fused multiply-add per tile. When a row of tiles
is complete, the band's rows that no later tile reaches are final; their arg-max (for a binary
model: whether the blended tumor probability exceeds one half) leaves as one block, and the band
moves down by one stride. Memory follows the box's width, never its height.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from napari_samlung.geometry import Box
from napari_samlung.inference.tiling import TileGrid


class TileKind(Enum):
    MODEL = "model"  # the model ran on this tile
    BACKGROUND = "background"  # no tissue: certain background, the model did not run
    DONE = "done"  # every chunk the tile touches is already on disk (resumed run): contributes nothing


@dataclass
class Block:
    """Final labels for a box: a uint8 (h, w) tensor, or ``None`` for all background."""

    box: Box
    labels: torch.Tensor | None


def argmax_channels(x: torch.Tensor) -> torch.Tensor:
    """Arg-max over dim 0 of (C, h, w) as uint8, first channel on ties.

    A loop of elementwise comparisons: much faster than a strided reduction over the channel
    dimension of a slice, on the CPU and the GPU alike.
    """
    best, index = x[0], torch.zeros(x.shape[1:], dtype=torch.uint8, device=x.device)
    for c in range(1, x.shape[0]):
        index.masked_fill_(x[c] > best, c)
        best = torch.maximum(best, x[c])
    return index


class Stitcher:
    """Turn per-tile model output, tile by tile in row-major order, into final label blocks.

    A binary model's tiles are represented by one plane, the tumor probability; class 0 is one
    minus it, since the weights sum to one. For more classes the band holds every class's
    weighted probability, and a background tile adds its weight to class 0.
    A tile that is already on disk (``DONE``) adds nothing: every chunk it touches is skipped by
    the writer, so the partial sums next to it are never written.
    """

    def __init__(self, grid: TileGrid, num_classes: int, device: torch.device | str):
        self.grid = grid
        self.binary = num_classes == 1
        self.device = torch.device(device)
        channels = 1 if self.binary else num_classes + 1
        self._band = torch.zeros((channels, grid.tile, grid.box[3]), dtype=torch.float32, device=self.device)
        self._live = False  # whether the band holds anything but zeros
        self._row, self._added = 0, 0  # the tile row in the band, and how many of its tiles are in
        self._weights: dict[tuple[bool, ...], torch.Tensor] = {}
        self._probs: torch.Tensor | None = None

    @property
    def rows_done(self) -> int:
        """Tile rows finished so far (all of them once the last tile is in)."""
        return self._row

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What :meth:`add` takes per tile, for a (B, C, T, T) batch of logits, in one pass:
        (B, T, T) tumor probabilities for a binary model, else (B, C, T, T) softmax."""
        if not self.binary:
            return torch.softmax(logits.float(), dim=1)
        shape = (logits.shape[0], *logits.shape[2:])
        if self._probs is None or self._probs.shape != shape:  # reused: the last batch is stitched by now
            self._probs = torch.empty(shape, dtype=torch.float32, device=self.device)
        torch.sub(logits[:, 1].float(), logits[:, 0].float(), out=self._probs)  # bf16 logits: subtract in float32
        return torch.sigmoid_(self._probs)

    def add(self, r: int, c: int, kind: TileKind, probs: torch.Tensor | None = None) -> list[Block]:
        """Add tile (r, c), with ``probs`` (from :meth:`probabilities`) when ``kind`` is MODEL.

        Returns the blocks that became final: the band's finished rows after a row's last tile.
        """
        if (r, c) != (self._row, self._added):
            raise ValueError(f"tiles must come in row-major order: expected {(self._row, self._added)}, got {(r, c)}")
        x = self.grid.cols.positions[c] - self.grid.box[1]
        width = min(self.grid.tile, self._band.shape[-1] - x)
        if kind is TileKind.MODEL:
            weight = self._weight(r, c)[:, :width]
            band = self._band[0, :, x:x + width] if self.binary else self._band[:, :, x:x + width]
            band.addcmul_(probs[..., :width], weight)
            self._live = True
        elif kind is TileKind.BACKGROUND and not self.binary:  # a binary band stores P(tumor): nothing to add
            self._band[0, :, x:x + width].add_(self._weight(r, c)[:, :width])
            self._live = True
        self._added += 1
        return self._finish_row() if self._added == self.grid.cols.count else []

    def _weight(self, r: int, c: int) -> torch.Tensor:
        """The (tile, tile) blending weights; they depend only on whether a tile is at an edge."""
        rows, cols = self.grid.rows, self.grid.cols
        key = (r == 0, r == rows.count - 1, c == 0, c == cols.count - 1)
        if key not in self._weights:
            self._weights[key] = torch.from_numpy(self.grid.weights(r, c)).to(self.device)
        return self._weights[key]

    def _finish_row(self) -> list[Block]:
        y0, x0, h, w = self.grid.box
        tile, stride = self.grid.tile, self.grid.rows.stride
        top = self._row * stride
        last = self._row == self.grid.rows.count - 1
        height = min(tile, h - top) if last else stride  # rows no later tile reaches
        if not self._live:
            labels = None
        elif self.binary:
            labels = (self._band[0, :height] > 0.5).view(torch.uint8)
        else:
            labels = argmax_channels(self._band[:, :height])
        if not last and self._live:  # move down one stride: the overlap rows stay, the rest starts empty
            keep = tile - stride  # <= stride: source and destination rows do not overlap
            if keep:
                self._band[:, :keep].copy_(self._band[:, stride:])
            self._band[:, keep:].zero_()
            self._live = keep > 0
        self._row, self._added = self._row + 1, 0
        return [Block((y0 + top, x0, height, w), labels)]
