"""Per-image segmentation metrics: Dice, IoU, pixel accuracy and HD95.

Inputs are (H, W) integer class maps (prediction and reference). Reference pixels equal to
``ignore_index`` (255, not reviewed) are left out of every metric, in the prediction too.

Empty-mask conventions (a class absent from an image is common in tiles):
- Dice and IoU: prediction and reference both empty -> 1.0 (nothing to find, nothing found);
  exactly one empty -> 0.0.
- HD95: both empty -> 0.0; exactly one empty -> NaN (no distance exists). Means skip NaN
  (:func:`mean_metrics` reports how many images had a value).
- Pixel accuracy: NaN when every pixel is ignored.

With several classes, Dice, IoU and HD95 are the means over classes 1..N (NaN classes skipped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from scipy import ndimage

from napari_samlung.labels import IGNORE, TUMOR

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ImageMetrics:
    """The four metrics of one image (see the module docstring for empty-mask values)."""

    dice: float
    iou: float
    pixel_accuracy: float
    hd95: float


METRIC_KEYS = tuple(f.name for f in fields(ImageMetrics))


def _masks(
    pred: np.ndarray, target: np.ndarray, cls: int, ignore_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
    p, t = pred == cls, target == cls
    if ignore_index is not None:
        valid = target != ignore_index
        p &= valid
        t &= valid
    return p, t


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _iou(p: np.ndarray, t: np.ndarray) -> float:
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def dice_score(
    pred: np.ndarray, target: np.ndarray, cls: int = TUMOR, ignore_index: int | None = IGNORE
) -> float:
    """Dice of class ``cls``: 2|P and T| / (|P| + |T|); 1.0 when both are empty."""
    return _dice(*_masks(pred, target, cls, ignore_index))


def iou_score(
    pred: np.ndarray, target: np.ndarray, cls: int = TUMOR, ignore_index: int | None = IGNORE
) -> float:
    """Intersection over union of class ``cls``; 1.0 when both are empty."""
    return _iou(*_masks(pred, target, cls, ignore_index))


def pixel_accuracy(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """Fraction of the not-ignored pixels whose class is right; NaN if all are ignored."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    count = int(valid.sum())
    return math.nan if count == 0 else int(((pred == target) & valid).sum()) / count


def _surface(mask: np.ndarray) -> np.ndarray:
    # Pixels of the mask with a 4-neighbour outside it (the image border counts as outside).
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def hd95(pred_mask: np.ndarray, target_mask: np.ndarray, spacing: float = 1.0) -> float:
    """95th percentile Hausdorff distance between the surfaces of two boolean masks.

    The distances from each surface pixel of one mask to the nearest surface pixel of the other,
    in both directions, are pooled and their 95th percentile taken (linear interpolation), in
    units of ``spacing`` (pixels by default). Both empty -> 0.0, one empty -> NaN.
    """
    pred_mask, target_mask = np.asarray(pred_mask, bool), np.asarray(target_mask, bool)
    if pred_mask.shape != target_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} vs {target_mask.shape}")
    has_pred, has_target = bool(pred_mask.any()), bool(target_mask.any())
    if not has_pred and not has_target:
        return 0.0
    if not has_pred or not has_target:
        return math.nan
    pred_surface, target_surface = _surface(pred_mask), _surface(target_mask)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[target_surface]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


def image_metrics(
    pred: np.ndarray, target: np.ndarray, num_classes: int = 1, ignore_index: int | None = IGNORE
) -> ImageMetrics:
    """Dice, IoU, pixel accuracy and HD95 of one image (means over classes 1..num_classes)."""
    dices, ious, distances = [], [], []
    for cls in range(1, num_classes + 1):
        p, t = _masks(pred, target, cls, ignore_index)
        dices.append(_dice(p, t))
        ious.append(_iou(p, t))
        distances.append(hd95(p, t))
    return ImageMetrics(
        dice=float(np.mean(dices)),
        iou=float(np.mean(ious)),
        pixel_accuracy=pixel_accuracy(pred, target, ignore_index),
        hd95=_nanmean(distances),
    )


def dice_per_image(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int = 1, ignore_index: int | None = IGNORE
) -> torch.Tensor:
    """Dice of each image of a (B, H, W) batch, on its device (same conventions as
    :func:`image_metrics`: mean over classes 1..N, 1.0 for a class absent from both)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(target.shape)}"
        )
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    dices = []
    for cls in range(1, num_classes + 1):
        p, t = (pred == cls) & valid, (target == cls) & valid
        intersection = (p & t).sum((1, 2)).double()
        total = (p.sum((1, 2)) + t.sum((1, 2))).double()
        dices.append(torch.where(total > 0, 2 * intersection / total.clamp_min(1), torch.ones_like(total)))
    return torch.stack(dices).mean(0)


def _nanmean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def mean_metrics(results: Iterable[ImageMetrics]) -> dict[str, float | int]:
    """Means over images, NaN values skipped; ``images`` counts all, ``<metric>_images`` those
    that had a value."""
    rows = [asdict(r) for r in results]
    summary: dict[str, float | int] = {"images": len(rows)}
    for key in METRIC_KEYS:
        values = [row[key] for row in rows]
        summary[key] = _nanmean(values)
        summary[f"{key}_images"] = sum(not math.isnan(v) for v in values)
    return summary
