"""Predict whole images (not slides) of any size: padded to the patch grid, or covered by windows.

Training validation and ``samlung predict`` score images that are neither tiles of the model's
size nor whole slides: an image that fits the model is padded (white) to a multiple of 16 and
predicted whole; a longer side is covered by overlapping windows whose logits are averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from napari_samlung.data.augment import PAD_VALUE
from napari_samlung.inference.predictor import TilePredictor

#: Input sides must be multiples of the patch size; larger images are cut into windows.
SIZE_MULTIPLE = 16
MAX_SIZE = 1024
WINDOW_OVERLAP = 128


def _window_starts(length: int, window: int, overlap: int) -> list[int]:
    if length <= window:
        return [0]
    step = window - min(overlap, window // 2)
    count = math.ceil((length - window) / step) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def predict_logits(
    predictor: TilePredictor, images: torch.Tensor, max_size: int = MAX_SIZE, overlap: int = WINDOW_OVERLAP
) -> torch.Tensor:
    """Float32 logits (B, C, H, W) on the predictor's device for a (B, H, W, 3) uint8 batch.

    Sides up to ``max_size`` are padded (white) to a multiple of 16 and predicted whole; longer
    sides are covered by ``max_size`` windows overlapping by at least ``overlap`` (at most half a
    window), their logits averaged.
    """
    _, height, width, _ = images.shape
    padded = [s if s > max_size else -(-s // SIZE_MULTIPLE) * SIZE_MULTIPLE for s in (height, width)]
    images = F.pad(images, (0, 0, 0, padded[1] - width, 0, padded[0] - height), value=PAD_VALUE)
    win_h, win_w = min(padded[0], max_size), min(padded[1], max_size)
    total = count = None
    for y in _window_starts(padded[0], win_h, overlap):
        for x in _window_starts(padded[1], win_w, overlap):
            logits = predictor(images[:, y : y + win_h, x : x + win_w]).float()
            if total is None:
                if (win_h, win_w) == tuple(padded):
                    return logits[:, :, :height, :width]
                total = logits.new_zeros((*logits.shape[:2], *padded))
                count = logits.new_zeros((1, 1, *padded))
            total[:, :, y : y + win_h, x : x + win_w] += logits
            count[:, :, y : y + win_h, x : x + win_w] += 1
    return (total / count)[:, :, :height, :width]


def predict_labels(predictor: TilePredictor, images: torch.Tensor, max_size: int = MAX_SIZE) -> torch.Tensor:
    """(B, H, W) uint8 class maps (argmax of :func:`predict_logits`), on the predictor's device."""
    return predict_logits(predictor, images, max_size).argmax(1).to(torch.uint8)
