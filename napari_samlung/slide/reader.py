"""Opening a slide: pyramid levels as lazy arrays, microns per pixel, fast region reads.

Opening reads only the file's structure (TIFF directories and metadata): no pixel data, so it
takes the same time whatever the slide's size. Plain PNG/JPEG images have no pyramid and are
small; they are decoded whole when opened.

Where: the TIFF family through tifffile (``tiles.py``), except the vendor TIFFs OpenSlide
assembles (Leica SCN, Ventana BIF, Philips TIFF); DICOM (a file or its folder), MIRAX and
Hamamatsu VMS/VMU through OpenSlide (``openslide_source.py``); OME-Zarr folders through zarr
(``omezarr_source.py``). All of them read tiles through one :class:`TiledRegionReader`.
"""

from __future__ import annotations

import math
import operator
import os
from pathlib import Path

import numpy as np

from .color import to_rgb
from .errors import SlideError
from .formats import sniff, tiff_layout
from .metadata import SlideMetadata
from .resample import read_resampled
from .tissue import TissueMask, TissueParams, tissue_mask
from .omezarr_source import open_omezarr
from .openslide_source import dicom_file_in, open_openslide
from .tiles import (DEFAULT_CACHE_BYTES, ArrayRegionReader, CacheStats, FileBytes, RegionReader, TiffLevel,
                    TiledRegionReader, TiledSource)

# best_level accepts a level whose downsample exceeds the requested one by this fraction.
LEVEL_TOLERANCE = 0.01


class Slide:
    """An opened whole-slide image (or plain image). Use :func:`open_slide` to make one.

    Attributes:
        path, name (the file stem), format ('aperio-svs', 'ome-tiff', 'ndpi', 'pyramidal-tiff',
        'image', 'ome-zarr', and through OpenSlide 'dicom', 'mirax', 'leica-scn', 'ventana-bif',
        'hamamatsu', 'philips-tiff'), levels ((H, W, 3) uint8 array-likes, level 0 first: zarr
        arrays from tifffile for RGB TIFF levels, :class:`LevelView` where pixels need converting or
        come through OpenSlide or OME-Zarr, numpy for PNG/JPEG), level_shapes, downsamples (per
        level, versus level 0), mpp and mpp_source ('aperio', 'ome', 'tiff-resolution',
        'openslide', 'ome-zarr', 'user' or None when unknown), mpp_note (why the file's own value
        was not taken, when it has an implausible one), magnification (the objective,
        metadata only), properties (vendor metadata as strings).
    """

    def __init__(self, path: Path, fmt: str, meta: SlideMetadata, reader: RegionReader,
                 level_shapes: list[tuple[int, int]], resources: tuple = ()) -> None:
        self.path = path
        self.name = path.stem
        self.format = fmt
        self.level_shapes = level_shapes
        # views through the reader; the opener swaps in native arrays where they are equivalent
        self.levels: list = [LevelView(self, i) for i in range(len(level_shapes))]
        h0, w0 = self.level_shapes[0]
        self.downsamples = [(h0 / h + w0 / w) / 2 for h, w in self.level_shapes]
        self.mpp = meta.mpp
        self.mpp_source = meta.mpp_source
        self.mpp_note = meta.mpp_note
        self.magnification = meta.magnification
        self.properties = dict(meta.properties)
        self._reader = reader
        self._resources = resources  # closed with the slide, in order
        self._closed = False
        self._tissue: dict = {}  # (TissueParams, mpp) -> TissueMask

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of level 0."""
        return self.level_shapes[0]

    def tissue(self, params: TissueParams | None = None) -> TissueMask:
        """The tissue mask (``tissue.py``), computed once per parameters and microns per pixel, so
        segmenting one region after another does not read the overview again."""
        key = (params or TissueParams(), self.mpp)
        if key not in self._tissue:
            self._tissue[key] = tissue_mask(self, key[0])
        return self._tissue[key]

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1% tolerance), so reads
        for that scale only ever shrink."""
        best = 0
        for i, d in enumerate(self.downsamples):
            if d <= downsample * (1 + LEVEL_TOLERANCE):
                best = i
        return best

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels of ``level`` from (y, x) in that level's pixels; parts outside
        the level are white. Thread-safe; TIFF tiles are decoded in parallel and cached."""
        level, y, x, h, w = (operator.index(v) for v in (level, y, x, h, w))
        if not 0 <= level < len(self.level_shapes):
            raise ValueError(f"level must be in 0..{len(self.level_shapes) - 1}, got {level}")
        if h < 0 or w < 0:
            raise ValueError(f"region size must not be negative, got h={h}, w={w}")
        self._check_open()
        return self._reader.read(level, y, x, h, w)

    def read_scaled(self, y0: float, x0: float, h: int, w: int, scale: float) -> np.ndarray:
        """(h, w, 3) uint8 at 1/``scale`` of level 0: output pixel (i, j) covers the level-0 box
        from (y0 + i*scale, x0 + j*scale) of side ``scale``. Reads ``best_level(scale)`` and
        resizes with an antialiased filter when needed (convention: :mod:`.resample`)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        h, w = operator.index(h), operator.index(w)
        if h < 0 or w < 0:
            raise ValueError(f"output size must not be negative, got h={h}, w={w}")
        level = self.best_level(scale)
        return read_resampled(lambda y, x, hh, ww: self.read_region(level, y, x, hh, ww),
                              self.downsamples[level], float(y0), float(x0), h, w, scale)

    @property
    def cache_stats(self) -> CacheStats | None:
        """Decoded-tile cache counters (None for plain images, which have no tiles)."""
        cache = getattr(self._reader, "cache", None)
        return cache.stats if cache is not None else None

    def close(self) -> None:
        """Release the file and threads; reading afterwards raises."""
        self._closed = True
        for resource in (self._reader, *self._resources):
            resource.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: slide is closed")

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:g} um/px ({self.mpp_source})" if self.mpp else "mpp unknown"
        return (f"<Slide {self.path.name} {self.format} {self.shape[1]}x{self.shape[0]} "
                f"{len(self.levels)} level(s) {mpp}>")


class LevelView:
    """A read-only (H, W, 3) uint8 array-like over one slide level, read through the tile cache.

    Used for levels whose stored pixels are not plain RGB (grayscale, alpha, 16-bit, planar,
    Aperio YCbCr JPEG 2000): slicing returns converted RGB, as napari and numpy expect.
    """

    def __init__(self, slide: Slide, level: int) -> None:
        self._slide = slide
        self._level = level
        self.shape = (*slide.level_shapes[level], 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D level: {len(key)}")
        boxes, local = [], []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, slice):
                rows = range(*k.indices(n))
                lo = min(rows, default=0)
                boxes.append((lo, max(rows, default=-1) + 1))
                stop = rows.stop - lo
                local.append(slice(rows.start - lo, stop if stop >= 0 else None, rows.step))
            else:
                i = operator.index(k)
                i = i + n if i < 0 else i
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for size {n}")
                boxes.append((i, i + 1))
                local.append(0)
        (y0, y1), (x0, x1) = boxes
        region = self._slide.read_region(self._level, y0, x0, y1 - y0, x1 - x0)
        return region[(*local, key[2])]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[:, :]
        return data if dtype is None else data.astype(dtype)


def open_slide(path: str | os.PathLike, mpp: float | None = None, *,
               cache_bytes: int = DEFAULT_CACHE_BYTES, workers: int | None = None) -> Slide:
    """Open a whole-slide image or plain image: a file, or a folder (DICOM series, OME-Zarr image).

    ``mpp``: the slide's microns per pixel, used when the file has none and overriding the file's
    value when given. ``cache_bytes``: bound of the decoded-tile cache. ``workers``: threads that
    decode the tiles of one request (default: the CPU count, at most 8).
    Raises :class:`SlideError` (naming the file or folder) for a missing, empty, truncated,
    unreadable or unsupported one, and for an invalid ``mpp``.
    """
    path = Path(path)
    if mpp is not None:
        try:
            valid = math.isfinite(float(mpp)) and float(mpp) > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise SlideError(path, f"microns per pixel (mpp) must be a positive number, got {mpp!r}")
    kind = sniff(path)
    if kind == "tiff":
        slide = _open_tiff(path, cache_bytes, workers)
    elif kind == "openslide":
        slide = _open_tiled(path, open_openslide(path), cache_bytes, workers)
    elif kind == "dicom-folder":
        slide = _open_tiled(path, open_openslide(path, dicom_file_in(path)), cache_bytes, workers)
    elif kind == "ome-zarr":
        slide = _open_tiled(path, open_omezarr(path), cache_bytes, workers)
    else:
        slide = _open_image(path, kind)
    if mpp is not None:
        slide.mpp, slide.mpp_source, slide.mpp_note = float(mpp), "user", None
    return slide


def open_slide_with_openslide(path: str | os.PathLike, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                              workers: int | None = None) -> Slide:
    """Open a slide through OpenSlide even where :func:`open_slide` would use tifffile (an SVS,
    a generic pyramidal TIFF): to compare the two paths' pixels and speed on one file."""
    path = Path(path)
    sniff(path)  # the same errors as open_slide for missing, empty and unknown files
    file = dicom_file_in(path) if path.is_dir() else None
    return _open_tiled(path, open_openslide(path, file), cache_bytes, workers)


def _open_tiled(path: Path, source: TiledSource, cache_bytes: int, workers: int | None) -> Slide:
    """A slide over an opened tiled source (OpenSlide, OME-Zarr)."""
    reader = TiledRegionReader(source.levels, cache_bytes=cache_bytes, workers=workers)
    return Slide(path, source.format, source.metadata, reader, [lv.shape for lv in source.levels],
                 resources=source.resources)


def _openslide_assembles(tif) -> bool:
    """Vendor TIFFs whose tiles OpenSlide assembles correctly and tifffile's pages do not tell:
    Leica SCN (several images in one file), Ventana BIF (overlapping tiles), Philips TIFF."""
    return bool(tif.is_scn or tif.is_bif or tif.is_philips)


def _open_tiff(path: Path, cache_bytes: int, workers: int | None) -> Slide:
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SlideError(path, f"cannot read the TIFF structure: {exc}") from exc
    try:
        vendor_tiff = _openslide_assembles(tif)
    except Exception:  # tifffile's format checks parse metadata, which may be damaged
        vendor_tiff = False
    if vendor_tiff:
        try:
            source = open_openslide(path)
        except SlideError:
            pass  # OpenSlide refuses this variant: tifffile reads its pages below
        else:
            tif.close()
            return _open_tiled(path, source, cache_bytes, workers)
    opened = [tif]
    try:
        layout = tiff_layout(tif, path)
        file_bytes = FileBytes(path)
        opened.append(file_bytes)
        levels = [TiffLevel(planes, i, file_bytes) for i, planes in enumerate(layout.levels)]
        size = path.stat().st_size
        for level in levels:
            level.check_complete(size)
        reader = TiledRegionReader(levels, cache_bytes=cache_bytes, workers=workers)
        slide = Slide(path, layout.format, layout.metadata, reader, [lv.shape for lv in levels],
                      resources=(file_bytes, tif))
        for i, level in enumerate(levels):
            if level.plain_rgb:  # tifffile's own chunks are RGB uint8: napari reads its zarr array
                slide.levels[i] = zarr.open_array(level.pages[0].aszarr(), mode="r")
        return slide
    except Exception as exc:
        for resource in opened:
            resource.close()
        if isinstance(exc, SlideError):
            raise
        raise SlideError(path, f"cannot read the slide: {exc}") from exc


def _open_image(path: Path, kind: str) -> Slide:
    import imagecodecs

    decode = imagecodecs.png_decode if kind == "png" else imagecodecs.jpeg8_decode
    try:
        pixels = decode(path.read_bytes())
        image = np.ascontiguousarray(to_rgb(pixels))
    except Exception as exc:
        raise SlideError(path, f"cannot decode the {kind.upper()} image: {exc}") from exc
    slide = Slide(path, "image", SlideMetadata(), ArrayRegionReader(image), [image.shape[:2]])
    slide.levels[0] = image
    return slide
