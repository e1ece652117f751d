"""Metrics against cases computed by hand (see each test's comment for the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_samlung.labels import IGNORE
from napari_samlung.metrics import (
    ImageMetrics,
    dice_per_image,
    dice_score,
    hd95,
    image_metrics,
    iou_score,
    mean_metrics,
    pixel_accuracy,
)


def grid(rows: list[str]) -> np.ndarray:
    """'.'=0, '1'=1, '2'=2, 'x'=IGNORE."""
    table = {".": 0, "1": 1, "2": 2, "x": IGNORE}
    return np.array([[table[c] for c in row] for row in rows], dtype=np.uint8)


def test_dice_and_iou_of_partial_overlap():
    # |P| = 4, |T| = 6, |P and T| = 3: Dice = 2*3/(4+6) = 0.6, IoU = 3/(4+6-3) = 3/7.
    pred = grid(["1111", "....", "....", "...."])
    target = grid([".111", "111.", "....", "...."])
    assert dice_score(pred, target) == pytest.approx(0.6)
    assert iou_score(pred, target) == pytest.approx(3 / 7)


def test_ignored_reference_pixels_count_for_nothing():
    # The prediction's tumor pixels under 'x' are left out: P = 2 (row 0), T = 2, overlap 2.
    pred = grid(["11..", "1111", "....", "...."])
    target = grid(["11..", "xxxx", "....", "...."])
    assert dice_score(pred, target) == 1.0
    assert iou_score(pred, target) == 1.0
    # 12 valid pixels, all right; with ignore_index None the 4 'x' pixels are wrong (1 vs 255).
    assert pixel_accuracy(pred, target) == 1.0
    assert pixel_accuracy(pred, target, ignore_index=None) == pytest.approx(12 / 16)


def test_empty_mask_conventions():
    empty, full = np.zeros((5, 5), np.uint8), np.ones((5, 5), np.uint8)
    assert dice_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0 and iou_score(empty, full) == 0.0
    assert hd95(empty, empty) == 0.0
    assert math.isnan(hd95(full.astype(bool), empty.astype(bool)))
    assert math.isnan(pixel_accuracy(empty, np.full((5, 5), IGNORE, np.uint8)))


def test_pixel_accuracy_counts_right_pixels():
    # 16 pixels, 3 wrong.
    pred = grid(["11..", "....", "..2.", "...."])
    target = grid(["1...", "...1", "..1.", "...."])
    assert pixel_accuracy(pred, target) == pytest.approx(13 / 16)


def test_hd95_of_two_points_is_their_distance():
    # Single surface pixels at (0, 0) and (3, 4): every distance is 5.
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[0, 0], b[3, 4] = True, True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, spacing=0.5) == pytest.approx(2.5)


def test_hd95_interpolates_the_95th_percentile():
    # Reference (0, 0); prediction (0, 1) and (0, 2). Distances prediction -> reference 1, 2 and
    # reference -> prediction 1: sorted [1, 1, 2]; the 95th percentile sits at index 0.95 * 2 = 1.9,
    # so 1 + 0.9 * (2 - 1) = 1.9 (the plain Hausdorff distance would be 2).
    target, pred = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    target[0, 0] = True
    pred[0, 1:3] = True
    assert hd95(pred, target) == pytest.approx(1.9)


def test_hd95_ignores_a_single_far_outlier():
    # A 20-pixel line in both masks, plus one stray predicted pixel 10 rows away. Pooled
    # distances: 20 + 20 zeros and one 10; the 95th percentile (index 38 of 41) is 0, while
    # the Hausdorff distance would be 10.
    target, pred = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    target[0, :] = True
    pred[0, :] = True
    pred[10, 0] = True
    assert hd95(pred, target) == 0.0


def test_hd95_of_shifted_squares():
    # 3x3 squares, the prediction 2 columns right. Each has 8 surface pixels; distances one way
    # are 0, 0, 0 (shared column), 1, 1 (middle column, top and bottom), 2, 2, 2, the same the
    # other way: 16 values, six of them 2, so the 95th percentile (index 14.25) is 2.
    target, pred = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    target[2:5, 2:5] = True
    pred[2:5, 4:7] = True
    assert hd95(pred, target) == pytest.approx(2.0)


def test_image_metrics_average_foreground_classes():
    # Class 1: P = T = 2 pixels, same -> Dice 1, IoU 1, HD95 0. Class 2: absent from the
    # prediction, 1 pixel in the reference -> Dice 0, IoU 0, HD95 NaN (skipped in the mean).
    pred = grid(["11..", "....", "....", "...."])
    target = grid(["11..", "....", "...2", "...."])
    result = image_metrics(pred, target, num_classes=2)
    assert result == ImageMetrics(dice=0.5, iou=0.5, pixel_accuracy=15 / 16, hd95=0.0)


def test_mean_metrics_skip_nan_and_count_what_they_average():
    summary = mean_metrics([
        ImageMetrics(1.0, 1.0, 1.0, 2.0),
        ImageMetrics(0.5, 0.25, 0.5, math.nan),
    ])
    assert summary["images"] == 2
    assert summary["dice"] == 0.75 and summary["iou"] == 0.625
    assert summary["hd95"] == 2.0 and summary["hd95_images"] == 1


def test_dice_per_image_on_tensors_matches_the_numpy_dice():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (4, 16, 16)).astype(np.uint8)
    target = rng.integers(0, 3, (4, 16, 16)).astype(np.uint8)
    target[0, :4] = IGNORE
    pred[3] = 0
    target[3] = 0  # an image where both are empty: Dice 1
    expected = [np.mean([dice_score(p, t, cls) for cls in (1, 2)]) for p, t in zip(pred, target)]
    got = dice_per_image(torch.from_numpy(pred), torch.from_numpy(target), num_classes=2)
    assert got.tolist() == pytest.approx(expected)
    assert got[3].item() == 1.0


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="shape"):
        hd95(np.zeros((4, 4), bool), np.zeros((5, 4), bool))
