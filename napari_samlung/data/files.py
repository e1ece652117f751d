"""Reading and writing the image and label files of the training-data layouts.

Every failure is a :class:`DataError` whose message starts with the offending path, so a CLI
can print it as one line.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from napari_samlung.errors import SamLungError
from napari_samlung.files import write_atomic

#: File name endings accepted for images and labels.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class DataError(SamLungError):
    """Bad training or evaluation data; the message names the file or folder and the problem."""


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a regular file with an accepted image suffix (not a hidden file)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _decode(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: file is empty")
    try:
        array = imagecodecs.imread(data)
    except Exception as exc:  # imagecodecs raises a different error type per codec
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable image ({first})") from None
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit pixels, found {array.dtype}")
    return array


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8; grayscale is replicated, alpha dropped."""
    array = _decode(path)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    raise DataError(f"{path}: expected an RGB or grayscale image, found shape {array.shape}")


def read_gray(path: Path) -> np.ndarray:
    """Read a label file as (H, W) uint8; of a color file only the first channel is used."""
    array = _decode(path)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return np.ascontiguousarray(array[:, :, 0])
    if array.ndim != 2:
        raise DataError(f"{path}: expected a single-channel label image, found shape {array.shape}")
    return array


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, atomically."""
    write_atomic(path, imagecodecs.png_encode(np.ascontiguousarray(array, dtype=np.uint8)))
