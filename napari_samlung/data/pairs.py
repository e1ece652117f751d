"""Decoding an image/label pair into arrays, with the checks that name the bad file."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from napari_samlung.data.files import DataError, read_gray, read_rgb
from napari_samlung.data.layouts import RESEARCH, Pair
from napari_samlung.labels import IGNORE, TUMOR

#: Of a research 0/255 mask, values above this are tumor (tolerates JPEG ringing).
MASK_THRESHOLD = 127


def decode_label(raw: np.ndarray, encoding: str, num_classes: int, path: object) -> np.ndarray:
    """Turn a label file's pixels into class values (0..num_classes, IGNORE).

    Research labels of a binary model are masks, told apart per file by their largest value:
    0/1 (1 is tumor) when it is at most 1, else 0/255 (JPEG-tolerant: > 127 is tumor). A file
    whose largest value lies in 2..127 is neither and is refused naming ``path``, never read as
    all background. Every other label holds class indices, where any value above
    ``num_classes`` other than IGNORE is an error naming ``path``; so is a research 0/255 mask
    given to a model of more classes (its tumor would silently count as not reviewed).
    """
    if encoding == RESEARCH and num_classes == 1:
        top = int(raw.max(initial=0))
        if top <= TUMOR:
            return raw.astype(np.uint8, copy=False)
        if top <= MASK_THRESHOLD:
            raise DataError(
                f"{path}: label values up to {top}, none above {MASK_THRESHOLD}: neither a 0/255 nor a "
                "0/1 tumor mask (class indices need a model with more classes)"
            )
        return np.where(raw > MASK_THRESHOLD, TUMOR, 0).astype(np.uint8)
    if encoding == RESEARCH and raw.max(initial=0) == IGNORE and not ((raw != 0) & (raw != IGNORE)).any():
        raise DataError(
            f"{path}: a 0/255 tumor mask, but the model has {num_classes} classes besides background "
            "(its 255 would be read as 'not reviewed'): use a binary model, or labels of class indices"
        )
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
