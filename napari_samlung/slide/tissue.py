"""Where the tissue is, from a low-resolution overview, so the engine can skip empty glass.

Empty glass is the brightest thing on a slide and nearly colourless; tissue, even pale stroma or
fat edges, differs from it in colour. On an overview of about 1-2k pixels (3 x 3 mean-smoothed) the
glass colour is estimated as the median of the brightest 1% of pixels, and tissue is whatever
differs from it by more than ``color_distance`` in some channel. (Otsu on saturation alone drops
pale tissue, and splits tissue into halves on a slide without glass.) When that brightest colour
is not glass-like - too dark or too saturated - the slide has no background and all of it is
tissue. Then morphology: a closing joins nearby fragments, holes smaller than ``min_area_um2`` are
filled, objects smaller than it are dropped (dust, debris), and a margin is added around what
remains so the tissue's border is never cut off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import disk


# How the overview is read, by the size of the level it comes from: whole when small; block by
# block (memory bounded by a block) up to a few gigapixels; beyond that sampled, one small patch
# per overview pixel, since decoding every tile would take many minutes.
WHOLE_READ_PIXELS = 8192 * 8192
STREAM_PIXELS = 4 * 1024 ** 3
STREAM_BLOCK = 4096  # level pixels per side of a streamed block
SAMPLED_SIZE = 64  # longest side of a sampled overview
SAMPLE_PATCH = 4  # level pixels per side averaged for one sampled overview pixel


@dataclass(frozen=True)
class TissueParams:
    """Settings of :func:`tissue_mask`."""

    overview_size: int = 1536  # longest side of the overview the mask is computed on (pixels)
    color_distance: int = 12  # tissue differs from glass by more than this in a channel (0-255)
    glass_min_brightness: int = 200  # glass is at least this bright (mean of R, G, B) ...
    glass_max_saturation: float = 0.05  # ... and at most this saturated ((max - min) / max)
    min_area_um2: float = 10_000.0  # smallest tissue piece / hole kept (0.01 mm^2)
    min_area_px: int = 16  # the same in overview pixels, used when microns per pixel are unknown
    closing_radius: int = 2  # overview pixels
    margin: int = 2  # overview pixels added around the tissue

    def __post_init__(self) -> None:
        if self.overview_size < 16:
            raise ValueError(f"overview_size must be at least 16 pixels, got {self.overview_size}")
        if not (0 <= self.color_distance <= 255 and 0 <= self.glass_min_brightness <= 255
                and 0 <= self.glass_max_saturation <= 1):
            raise ValueError("color_distance and glass_min_brightness must be in 0..255, "
                             "glass_max_saturation in 0..1")
        if self.min_area_um2 < 0 or self.min_area_px < 0 or self.closing_radius < 0 or self.margin < 0:
            raise ValueError("areas, closing radius and margin must not be negative")


@dataclass
class TissueMask:
    """A boolean tissue mask whose pixel (i, j) covers the level-0 box
    [i*downsample, (i+1)*downsample) x [j*downsample, (j+1)*downsample)."""

    mask: np.ndarray
    downsample: float
    glass: tuple[int, int, int] | None = None  # the glass colour found; None: no background

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        counts = self.mask.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
        self._integral = np.pad(counts, ((1, 0), (1, 0)))  # summed-area table

    def fraction(self, y0: float, x0: float, h: float, w: float) -> float:
        """Tissue fraction of a level-0 box, counting the mask pixels it touches; parts of the box
        outside the slide count as no tissue. Constant time (summed-area table)."""
        if h <= 0 or w <= 0:
            return 0.0
        ds = self.downsample
        i0, j0 = math.floor(y0 / ds), math.floor(x0 / ds)
        i1, j1 = math.ceil((y0 + h) / ds), math.ceil((x0 + w) / ds)
        total = (i1 - i0) * (j1 - j0)
        mh, mw = self.mask.shape
        ci0, cj0, ci1, cj1 = max(i0, 0), max(j0, 0), min(i1, mh), min(j1, mw)
        if ci0 >= ci1 or cj0 >= cj1:
            return 0.0
        s = self._integral
        inside = s[ci1, cj1] - s[ci0, cj1] - s[ci1, cj0] + s[ci0, cj0]
        return float(inside) / total


def tissue_mask(slide, params: TissueParams | None = None) -> TissueMask:
    """Compute the tissue mask of ``slide`` (a :class:`~napari_samlung.slide.Slide`) on an
    overview whose longest side is about ``params.overview_size`` pixels."""
    params = params or TissueParams()
    h0, w0 = slide.shape
    downsample = max(1.0, max(h0, w0) / params.overview_size)
    level = slide.best_level(downsample)
    lh, lw = slide.level_shapes[level]
    if lh * lw > STREAM_PIXELS:  # a huge level without a usable pyramid: even streaming it takes too long
        downsample = max(1.0, max(h0, w0) / min(params.overview_size, SAMPLED_SIZE))
    h, w = max(1, math.ceil(h0 / downsample)), max(1, math.ceil(w0 / downsample))
    min_area = _min_area_px(slide.mpp, downsample, params)
    if lh * lw <= WHOLE_READ_PIXELS:
        overview = slide.read_scaled(0, 0, h, w, downsample)
    elif lh * lw <= STREAM_PIXELS:
        overview = _streamed_overview(slide, level, h, w, downsample)
    else:
        overview = _sampled_overview(slide, level, h, w, downsample)
        min_area = 1  # a sample stands for a large area: a lone one is no speck of dust
    mask, glass = _detect(overview, params, min_area)
    return TissueMask(mask, downsample, glass)


def _streamed_overview(slide, level: int, h: int, w: int, downsample: float) -> np.ndarray:
    """The overview read block by block, so that memory follows a block, not the level."""
    f = downsample / slide.downsamples[level]  # level pixels per overview pixel
    block = max(1, int(STREAM_BLOCK / f))
    overview = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, block):
        for x in range(0, w, block):
            bh, bw = min(block, h - y), min(block, w - x)
            overview[y:y + bh, x:x + bw] = slide.read_scaled(y * downsample, x * downsample, bh, bw, downsample)
    return overview


def _sampled_overview(slide, level: int, h: int, w: int, downsample: float) -> np.ndarray:
    """An overview from a small patch at the centre of each overview pixel's area: for a level so
    large (an image without a pyramid) that reading it whole would take many minutes. Time and
    memory follow the overview's size (one tile decoded per pixel at most), not the level's."""
    f = downsample / slide.downsamples[level]  # level pixels per overview pixel
    lh, lw = slide.level_shapes[level]
    overview = np.empty((h, w, 3), np.uint8)
    for i in range(h):
        y = min(max(0, lh - SAMPLE_PATCH), max(0, int((i + 0.5) * f) - SAMPLE_PATCH // 2))
        for j in range(w):
            x = min(max(0, lw - SAMPLE_PATCH), max(0, int((j + 0.5) * f) - SAMPLE_PATCH // 2))
            overview[i, j] = slide.read_region(level, y, x, SAMPLE_PATCH, SAMPLE_PATCH).reshape(-1, 3).mean(axis=0)
    return overview


def _min_area_px(mpp: float | None, downsample: float, params: TissueParams) -> int:
    if mpp is None:
        return params.min_area_px
    return max(1, round(params.min_area_um2 / (mpp * downsample) ** 2))


def _detect(rgb: np.ndarray, params: TissueParams,
            min_area: int) -> tuple[np.ndarray, tuple[int, int, int] | None]:
    rgb = ndimage.uniform_filter(rgb, size=(3, 3, 1), mode="nearest")  # smooth out noise and grain
    gray = rgb.mean(axis=-1)
    brightest = rgb[gray >= np.percentile(gray, 99)]
    glass = np.median(brightest, axis=0)
    if glass.mean() < params.glass_min_brightness or _saturation(glass) > params.glass_max_saturation:
        return np.ones(rgb.shape[:2], bool), None
    mask = np.abs(rgb.astype(np.int16) - glass.astype(np.int16)).max(axis=-1) > params.color_distance
    if params.closing_radius:
        # pad so the closing does not erode tissue that touches the border of the slide
        r = params.closing_radius
        mask = ndimage.binary_closing(np.pad(mask, r, mode="edge"), structure=disk(r))[r:-r, r:-r]
    mask = ~_without_small_parts(~mask, min_area)  # fill small holes
    mask = _without_small_parts(mask, min_area)
    if params.margin:
        mask = ndimage.binary_dilation(mask, structure=disk(params.margin))
    return mask, tuple(int(v) for v in glass)


def _without_small_parts(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its connected parts of ``max_size`` pixels or fewer."""
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes > max_size
    keep[0] = False
    return keep[labels]


def _saturation(rgb: np.ndarray) -> float:
    """HSV saturation of one colour, (max - min) / max."""
    hi, lo = float(np.max(rgb)), float(np.min(rgb))
    return (hi - lo) / hi if hi > 0 else 0.0
