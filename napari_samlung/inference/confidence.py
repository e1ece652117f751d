"""Stitching that also says how sure the model was: the confidence of each final pixel.

:class:`ConfidenceStitcher` is the :class:`~napari_samlung.inference.stitching.Stitcher` with, per
finished block, the confidence of its pixels (``results/confidence.py`` encoding) computed on the
device from the blended class probabilities, before the arg-max turns them into labels. A second
band marks the pixels a model tile gives weight to, so a pixel that only background tiles cover
(no model ran) is stored as not segmented. A binary model's confidence is looked up in a table of
the tumour probability (1/32767 steps, far finer than the 254 confidence steps): three cheap
passes over the band instead of two logarithms and a dozen passes, since with a fast model the
engine's own work per pixel sets the pace. On the CPU these small steps run in numpy, on the
band's own memory: torch's indexing is several times slower there, and its worker threads spin
on small operations while the tile readers need the cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from napari_samlung.inference.stitching import Block, Stitcher, TileKind
from napari_samlung.inference.tiling import TileGrid
from napari_samlung.results.confidence import LEAST, MOST


@dataclass
class ScoredBlock(Block):
    """Final labels and their confidence (uint8 (h, w); ``None``: nothing segmented there)."""

    confidence: torch.Tensor | None = None


STEPS = 32767  # of the binary lookup table: its indices fit int16


def confidence_of(probs: torch.Tensor, binary: bool, covered: torch.Tensor) -> torch.Tensor:
    """uint8 confidence of blended probabilities: (h, w) tumour probability when ``binary``, else
    (C, h, w) class probabilities; 0 (not segmented) where ``covered`` (uint8, 1 where a model tile
    gave weight) is 0. The binary case computes as :func:`binary_table` does, by lookup."""
    if binary:
        return (binary_on_host if probs.device.type == "cpu" else binary_on_device)(probs, covered)
    p = probs.clamp(min=0.0)
    certainty = torch.special.xlogy(p, p).sum(dim=0).div_(math.log(probs.shape[0])).add_(1.0).clamp_(0.0, 1.0)
    return certainty.mul_(MOST - LEAST).round_().add_(LEAST).to(torch.uint8).mul_(covered)


def binary_on_host(probs: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """:func:`confidence_of` a binary model's CPU band, in numpy (one pass each: index, look up, mask)."""
    index = np.empty(probs.shape, np.int16)
    np.multiply(probs.numpy(), STEPS, out=index, casting="unsafe")  # rounds down: probabilities are >= 0
    scores = np.take(binary_table(probs.device).numpy(), index)
    return torch.from_numpy(np.multiply(scores, covered.numpy(), out=scores))


def binary_on_device(probs: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """:func:`confidence_of` a binary model's band in torch, where it lies (a GPU)."""
    return binary_table(probs.device)[probs.mul(STEPS).long()].mul_(covered)


_TABLES: dict[torch.device, torch.Tensor] = {}


def binary_table(device: torch.device) -> torch.Tensor:
    """Confidence of tumour probabilities from ``i / STEPS`` to ``(i + 1) / STEPS`` (taken at the
    middle) at index ``i``, uint8 on ``device``; index ``STEPS`` is probability one."""
    if device not in _TABLES:
        p = ((torch.arange(STEPS + 1, dtype=torch.float64) + 0.5) / STEPS).clamp_(0.0, 1.0)
        entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p)) / math.log(2)
        scored = (1.0 - entropy).clamp_(0.0, 1.0).mul_(MOST - LEAST).round_().add_(LEAST)
        _TABLES[device] = scored.to(torch.uint8).to(device)
    return _TABLES[device]


class ConfidenceStitcher(Stitcher):
    """A :class:`Stitcher` whose blocks are :class:`ScoredBlock` with the pixels' confidence."""

    def __init__(self, grid: TileGrid, num_classes: int, device: torch.device | str):
        super().__init__(grid, num_classes, device)
        self._covered = torch.zeros((grid.tile, grid.box[3]), dtype=torch.uint8, device=self.device)
        self._marks = self._covered.numpy() if self.device.type == "cpu" else self._covered  # same memory

    def add(self, r: int, c: int, kind: TileKind, probs: torch.Tensor | None = None) -> list[Block]:
        if kind is TileKind.MODEL and (r, c) == (self._row, self._added):  # else the base class refuses it
            x = self.grid.cols.positions[c] - self.grid.box[1]
            rows = np.flatnonzero(self.grid.rows.weights(r) > 0)  # a tile weighs a rectangle: all but
            cols = np.flatnonzero(self.grid.cols.weights(c) > 0)  # its zero-weight margins
            self._marks[rows[0]:rows[-1] + 1, x + cols[0]:x + cols[-1] + 1] = 1
        return super().add(r, c, kind, probs)

    def _finish_row(self) -> list[Block]:
        rows, tile, stride = self.grid.rows, self.grid.tile, self.grid.rows.stride
        last = self._row == rows.count - 1
        height = min(tile, self.grid.box[2] - self._row * stride) if last else stride
        confidence = None
        if self._live:
            band = self._band[0, :height] if self.binary else self._band[:, :height]
            confidence = confidence_of(band, self.binary, self._covered[:height])
        if not last:  # as the base class moves its band: the overlap rows stay
            keep = tile - stride
            if keep:
                self._marks[:keep] = self._marks[stride:]
            self._marks[keep:] = 0
        return [ScoredBlock(block.box, block.labels, confidence) for block in super()._finish_row()]
