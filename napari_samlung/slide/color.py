"""Turning decoded pixels of any supported layout into RGB uint8.

Slides are shown and segmented as RGB. Grayscale becomes three equal channels, alpha is
composited over white (the colour of empty glass and of everything outside a slide), 16-bit
samples are rounded to 8 bits.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
SUPPORTED_CHANNELS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGB + alpha


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 unchanged; uint16 rounded to the nearest 8-bit value."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise ValueError(f"unsupported sample type {pixels.dtype}")


def to_rgb(pixels: np.ndarray, *, min_is_white: bool = False) -> np.ndarray:
    """(H, W) or (H, W, C) with C in 1..4 -> (H, W, 3) uint8 (a view when already RGB uint8)."""
    pixels = to_uint8(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"unsupported number of channels {channels}")
    color = pixels[..., :-1] if channels in (2, 4) else pixels
    if min_is_white:
        color = 255 - color
    if channels in (2, 4):
        color = _over_white(color, pixels[..., -1:])
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    return color


def _over_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    if alpha.size and alpha.min() == 255:  # opaque, as nearly every tile is: nothing to blend
        return color
    a = alpha.astype(np.uint16)
    blended = (color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Full-range (JFIF) YCbCr uint8 -> RGB uint8, as Aperio's YCbCr JPEG 2000 tiles need."""
    y = ycbcr[..., 0].astype(np.float32)
    cb = ycbcr[..., 1].astype(np.float32) - 128.0
    cr = ycbcr[..., 2].astype(np.float32) - 128.0
    rgb = np.empty(ycbcr.shape[:-1] + (3,), np.float32)
    rgb[..., 0] = y + 1.402 * cr
    rgb[..., 1] = y - 0.344136 * cb - 0.714136 * cr
    rgb[..., 2] = y + 1.772 * cb
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> full-range (JFIF) YCbCr uint8 (the inverse of :func:`ycbcr_to_rgb`)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    out = np.empty(rgb.shape, np.float32)
    out[..., 0] = 0.299 * r + 0.587 * g + 0.114 * b
    out[..., 1] = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    out[..., 2] = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
