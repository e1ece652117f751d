"""Training augmentations in numpy: crop/pad, flips, right-angle rotations, light color jitter.

Each function takes an explicit ``numpy.random.Generator`` so a sample's augmentation is fixed
by its seed alone, whatever process or worker computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_samlung.labels import IGNORE

#: Image fill for padding: white, the glass background of a slide (padded labels are IGNORE).
PAD_VALUE = 255
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, and how strong the color jitter is (factors 1 +- value)."""

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


def crop_or_pad(
    image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``size`` x ``size`` window, padding sides shorter than ``size``.

    With ``rng`` the window (and where a small image lands in the padding) is random, without
    it centred. Padding is white in the image and IGNORE in the label, so it never counts.
    """
    height, width = label.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        top = int(rng.integers(0, pad_h + 1)) if rng is not None else pad_h // 2
        left = int(rng.integers(0, pad_w + 1)) if rng is not None else pad_w // 2
        spec = ((top, pad_h - top), (left, pad_w - left))
        image = np.pad(image, spec + ((0, 0),), constant_values=PAD_VALUE)
        label = np.pad(label, spec, constant_values=IGNORE)
        height, width = label.shape
    if rng is not None:
        y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    else:
        y, x = (height - size) // 2, (width - size) // 2
    return image[y : y + size, x : x + size], label[y : y + size, x : x + size]


def pad_to_multiple(image: np.ndarray, label: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad the bottom and right so both sides are multiples of ``multiple`` (white / IGNORE)."""
    height, width = label.shape
    spec = ((0, -height % multiple), (0, -width % multiple))
    if spec == ((0, 0), (0, 0)):
        return image, label
    image = np.pad(image, spec + ((0, 0),), constant_values=PAD_VALUE)
    return image, np.pad(label, spec, constant_values=IGNORE)


def flip_rotate(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, flips: bool = True, rotations: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flips and a random multiple of 90 degrees (180 only when the
    image is not square, so a batch of equal shapes stays equal)."""
    if flips and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if flips and rng.random() < 0.5:
        image, label = image[::-1], label[::-1]
    if rotations:
        square = label.shape[0] == label.shape[1]
        turns = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
        image, label = np.rot90(image, turns), np.rot90(label, turns)
    return image, label


def color_jitter(
    image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    """Scale brightness, contrast (about the mean gray) and saturation by random factors."""
    b, c, s = (float(rng.uniform(1 - v, 1 + v)) if v > 0 else 1.0 for v in (brightness, contrast, saturation))
    x = image.astype(np.float32) * b
    mean_gray = float((x @ _LUMA).mean())
    x = (x - mean_gray) * c + mean_gray
    gray = (x @ _LUMA)[:, :, None]
    x = gray + (x - gray) * s
    np.clip(x, 0, 255, out=x)
    return np.rint(x).astype(np.uint8)


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Flips, rotations and color jitter as ``config`` says."""
    image, label = flip_rotate(image, label, rng, config.flips, config.rotations)
    if config.brightness or config.contrast or config.saturation:
        image = color_jitter(image, rng, config.brightness, config.contrast, config.saturation)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
