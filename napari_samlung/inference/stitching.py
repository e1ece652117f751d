"""Blend tile predictions into final labels, on the device that ran the model.

Cells covered by one tile take the arg-max of that tile's logits directly. Cells shared by two
or four tiles accumulate ``weight * softmax(logits)`` until every covering tile has arrived
(the weights sum to one, see ``tiling.py``), then take the arg-max (for a binary model: whether
the blended tumor probability exceeds one half). Only open shared cells are
kept, so memory follows the frontier of the row-major tile order, not the slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from napari_samlung.inference.tiling import Box, Cell, TileGrid


class TileKind(Enum):
    MODEL = "model"  # the model ran on this tile
    BACKGROUND = "background"  # no tissue: certain background, the model did not run
    DONE = "done"  # every pixel of the tile is already on disk (resumed run): contributes nothing


@dataclass
class Block:
    """Final labels for a box: a uint8 (h, w) tensor, or ``None`` for all background."""

    box: Box
    labels: torch.Tensor | None


@dataclass
class _Open:
    remaining: int
    acc: torch.Tensor | None = None  # (C, h, w) float32 sum of weighted probabilities
    background: torch.Tensor | None = None  # (h, w) weight still owed to class 0
    done: bool = False  # a tile that was skipped as already written covers it


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


def softmax_channels(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 0 of (C, h, w) logits, by elementwise operations."""
    top = logits[0]
    for c in range(1, logits.shape[0]):
        top = torch.maximum(top, logits[c])
    e = torch.exp(logits - top)
    return e.div_(e.sum(0))


class Stitcher:
    """Turn per-tile model output into final label blocks.

    For a binary model a tile is represented by one score plane, ``logit(tumor) - logit(background)``:
    its sign decides single-tile cells, and shared cells accumulate ``weight * sigmoid(score)``
    (the blended tumor probability; class 0 is one minus it since the weights sum to one). For more
    classes, shared cells accumulate ``weight * softmax(logits)`` over all classes.
    """

    def __init__(self, grid: TileGrid, num_classes: int, device: torch.device | str):
        self.grid = grid
        self.binary = num_classes == 1
        self.device = torch.device(device)
        self._wy = [torch.from_numpy(grid.rows.weights(i)).to(self.device) for i in range(grid.rows.count)]
        self._wx = [torch.from_numpy(grid.cols.weights(i)).to(self.device) for i in range(grid.cols.count)]
        self._open: dict[tuple[int, int], _Open] = {}

    @property
    def open_cells(self) -> int:
        return len(self._open)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What :meth:`add` takes per tile, for a (B, C, T, T) batch of logits, in one pass."""
        if self.binary:
            return logits[:, 1].float() - logits[:, 0].float()
        return logits.float()

    def add(self, r: int, c: int, kind: TileKind, scores: torch.Tensor | None = None) -> list[Block]:
        """Add tile (r, c); ``scores`` (from :meth:`scores`) when ``kind`` is MODEL. Returns finished blocks."""
        ty, tx, _, _ = self.grid.tile_box(r, c)
        out: list[Block] = []
        for cell in self.grid.cells_of(r, c):
            y, x, h, w = cell.box
            ys, xs = slice(y - ty, y - ty + h), slice(x - tx, x - tx + w)
            if len(cell.tiles) == 1:
                if kind is TileKind.MODEL:
                    part = scores[..., ys, xs]
                    out.append(Block(cell.box, (part > 0).view(torch.uint8) if self.binary else argmax_channels(part)))
                elif kind is TileKind.BACKGROUND:
                    out.append(Block(cell.box, None))
                continue
            state = self._open.setdefault(cell.key, _Open(remaining=len(cell.tiles)))
            if kind is TileKind.DONE:
                state.done = True
            else:
                weight = self._wy[r][ys, None] * self._wx[c][None, xs]
                if kind is TileKind.MODEL:
                    part = scores[..., ys, xs]
                    contribution = (torch.sigmoid(part) if self.binary else softmax_channels(part)).mul_(weight)
                    state.acc = contribution if state.acc is None else state.acc.add_(contribution)
                elif not self.binary:  # background adds nothing to P(tumor); else owed to class 0
                    state.background = weight if state.background is None else state.background + weight
            state.remaining -= 1
            if state.remaining == 0:
                del self._open[cell.key]
                block = self._finish(cell, state)
                if block is not None:
                    out.append(block)
        return out

    def _finish(self, cell: Cell, state: _Open) -> Block | None:
        if state.done:  # its pixels are on disk already
            return None
        if state.acc is None:
            return Block(cell.box, None)
        if self.binary:
            return Block(cell.box, (state.acc > 0.5).view(torch.uint8))
        if state.background is not None:
            state.acc[0].add_(state.background)
        return Block(cell.box, argmax_channels(state.acc))
