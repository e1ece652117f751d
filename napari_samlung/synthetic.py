"""A synthetic H&E slide with a known tumor region, built from data that ships with scikit-image.

scikit-image bundles one histology image (``immunohistochemistry()``: hematoxylin and DAB).
Colour deconvolution turns it into two H&E-like textures: "normal" tissue (pink stroma, blue
nuclei) and "tumor" (hyperchromatic, crowded-looking nuclei, less eosin). A slide is tiled from
flipped/rotated copies of those textures inside a smooth tissue outline, with a smooth tumor
blob whose mask is the ground truth. Everything is generated on demand, tile by tile, so a
20,000 x 20,000 benchmark slide never exists in memory.

Used by ``samlung demo``, the napari sample data, tests and benchmarks.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

BLOCK = 512  # side of the bundled image


@functools.lru_cache(maxsize=1)
def he_textures() -> tuple[np.ndarray, np.ndarray]:
    """(normal, tumor) 512x512x3 uint8 H&E-like textures, plus their 8 flips/rotations each."""
    from skimage import color, data

    hed = color.rgb2hed(data.immunohistochemistry())
    hema, dab = hed[..., 0], np.clip(hed[..., 2], 0, 0.5)

    def stain(hema_gain: float, eosin_base: float, eosin_gain: float) -> np.ndarray:
        mix = np.stack([hema * hema_gain, eosin_base + dab * eosin_gain, np.zeros_like(hema)], -1)
        return (np.clip(color.hed2rgb(mix), 0, 1) * 255).astype(np.uint8)

    return stain(1.0, 0.03, 0.12), stain(2.1, 0.015, 0.05)


@functools.lru_cache(maxsize=2)
def _variants(kind: int) -> np.ndarray:
    base = he_textures()[kind]
    out = []
    for k in range(4):
        rotated = np.rot90(base, k)
        out += [rotated, rotated[:, ::-1]]
    return np.ascontiguousarray(np.stack(out))


def _smooth_field(shape: tuple[int, int], seed: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


class SyntheticSlide:
    """An array-like (H, W, 3) uint8 synthetic H&E slide; slicing generates the pixels asked for.

    ``background=True`` leaves white glass around a tissue outline (for tissue detection);
    ``tumor=True`` adds the tumor blob (``truth`` gives its mask).
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, shape: tuple[int, int], seed: int = 0, *, background: bool = True, tumor: bool = True,
                 tumor_fraction: float = 0.3):
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.seed, self.background, self.tumor = seed, background, tumor
        self._step = 32  # level-0 pixels per field sample
        fshape = (self.shape[0] // self._step + 2, self.shape[1] // self._step + 2)
        sigma = max(2.0, min(fshape) / 8)
        yy, xx = np.meshgrid(np.linspace(-1, 1, fshape[0]), np.linspace(-1, 1, fshape[1]), indexing="ij")
        self._tissue = 1.0 - (yy ** 2 + xx ** 2) + 0.15 * _smooth_field(fshape, seed, sigma)  # > 0.25: tissue
        tumor_field = _smooth_field(fshape, seed + 1, sigma)
        self._tumor_level = float(np.quantile(tumor_field[self._tissue > 0.25], 1 - tumor_fraction))
        self._tumor = tumor_field

    def _field(self, field: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        coords = np.meshgrid(ys / self._step, xs / self._step, indexing="ij")
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def truth(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Tumor mask (uint8 0/1) of a level-0 box."""
        ys, xs = np.arange(y0, y0 + h), np.arange(x0, x0 + w)
        if not self.tumor:
            return np.zeros((h, w), np.uint8)
        mask = self._field(self._tumor, ys, xs) > self._tumor_level
        if self.background:
            mask &= self._field(self._tissue, ys, xs) > 0.25
        return mask.astype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (list(key) + [slice(None)] * 2)[:2]
        if not (isinstance(rows, slice) and isinstance(cols, slice)) or rows.step not in (None, 1) \
                or cols.step not in (None, 1):
            raise IndexError("SyntheticSlide supports contiguous 2-D slices only")
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        out = self._render(y0, x0, max(0, y1 - y0), max(0, x1 - x0))
        return out[(slice(None), slice(None)) + tuple(key[2:])] if len(key) > 2 else out

    def _render(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        normal, tumor = _variants(0), _variants(1)
        for by in range(y0 // BLOCK, (y0 + h - 1) // BLOCK + 1 if h else 0):
            for bx in range(x0 // BLOCK, (x0 + w - 1) // BLOCK + 1 if w else 0):
                v = (by * 7919 + bx * 104729 + self.seed * 31) % 8
                ys = slice(max(y0, by * BLOCK), min(y0 + h, (by + 1) * BLOCK))
                xs = slice(max(x0, bx * BLOCK), min(x0 + w, (bx + 1) * BLOCK))
                src = (slice(ys.start - by * BLOCK, ys.stop - by * BLOCK), slice(xs.start - bx * BLOCK, xs.stop - bx * BLOCK))
                out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = normal[v][src]
                if self.tumor:
                    t = self.truth(ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start).astype(bool)
                    if t.any():
                        out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0][t] = tumor[(v + 3) % 8][src][t]
        if self.background:
            glass = self._field(self._tissue, np.arange(y0, y0 + h), np.arange(x0, x0 + w)) <= 0.25
            out[glass] = (242, 240, 244)
        return out


def write_demo_slide(path: str | os.PathLike, shape: tuple[int, int] = (3072, 3072), *, mpp: float = 0.5,
                     seed: int = 0, background: bool = True, tumor: bool = True, tile: int = 256,
                     compression: str = "jpeg") -> SyntheticSlide:
    """Write a pyramidal, Aperio-style synthetic slide to ``path``; returns its generator (for ``truth``)."""
    from napari_samlung.slide.tiff_writer import write_pyramidal_tiff

    slide = SyntheticSlide(shape, seed, background=background, tumor=tumor)
    write_pyramidal_tiff(Path(path), slide, mpp=mpp, tile=tile, compression=compression, kind="rgb", flavor="svs")
    return slide
