"""Decoding an image/label pair into arrays, with the checks that name the bad file."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from napari_samlung.data.files import DataError, read_gray, read_rgb
from napari_samlung.data.layouts import RESEARCH, Pair
from napari_samlung.labels import IGNORE, TUMOR


def decode_label(raw: np.ndarray, encoding: str, num_classes: int, path: object) -> np.ndarray:
    """Turn a label file's pixels into class values (0..num_classes, IGNORE).

    Research labels of a binary model are 0/255 masks (JPEG-tolerant: > 127 is tumor); every
    other label holds class indices, where any value above ``num_classes`` other than IGNORE is
    an error naming ``path``.
    """
    if encoding == RESEARCH and num_classes == 1:
        return np.where(raw > 127, TUMOR, 0).astype(np.uint8)
    bad = (raw > num_classes) & (raw != IGNORE)
    if bad.any():
        values = sorted({int(v) for v in np.unique(raw[bad])[:5]})
        raise DataError(
            f"{path}: label values {values} out of range "
            f"(expected 0..{num_classes}, or {IGNORE} for not reviewed)"
        )
    return raw.astype(np.uint8, copy=False)


def load_pair(pair: Pair, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``pair`` as an (H, W, 3) uint8 image and an (H, W) uint8 class map (or None)."""
    image = read_rgb(pair.image)
    if pair.label is None:
        return image, None
    label = decode_label(read_gray(pair.label), pair.encoding, num_classes, pair.label)
    if label.shape != image.shape[:2]:
        raise DataError(
            f"{pair.label}: size {label.shape[1]}x{label.shape[0]} does not match its image "
            f"{pair.image} ({image.shape[1]}x{image.shape[0]})"
        )
    return image, label


def check_pairs(pairs: Sequence[Pair], num_classes: int, workers: int = 4) -> list[tuple[int, int]]:
    """Decode every pair once (in threads) and return their (H, W) sizes.

    Raises the :class:`DataError` of the first bad pair in order, so training never starts on
    data that would fail halfway.
    """

    def size(pair: Pair) -> tuple[int, int]:
        image, _ = load_pair(pair, num_classes)
        return image.shape[0], image.shape[1]

    if workers <= 1 or len(pairs) <= 1:
        return [size(pair) for pair in pairs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(size, pairs))
