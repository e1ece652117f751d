"""Writing tiled pyramidal TIFFs (generic, OME or Aperio-SVS flavoured) from any array-like.

The source is read tile by tile, so it can be a huge zarr array or any object with ``shape``,
``dtype`` and slicing. Each reduced level is computed from the one above it (RGB: area average;
labels: nearest neighbour) and held in a temporary chunked zarr store beside the output while
the file is written, so memory stays at a few tiles whatever the image size. The file appears
under its name only when complete (temporary name, then ``os.replace``); the temporary folder of
a write that was killed is removed by the next write of the same file.

A label source that is mostly empty (a huge class map of which a small region was segmented) can
say where it may hold values (:class:`Sparse`): the other tiles are neither read, reduced nor
encoded, and all of them share one stored empty tile, so the write takes time and memory for the
segmented part plus TIFF's tile table (8-16 bytes a tile, at every level).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_samlung.errors import FileAccessError
from napari_samlung.geometry import Box
from napari_samlung.files import remove_leftovers

from .color import rgb_to_ycbcr

COMPRESSIONS = {"jpeg": "jpeg", "jpeg2000": "jpeg2000", "zlib": "zlib", "lzw": "lzw", "zstd": "zstd",
                "none": None}
_LOSSLESS_TAGS = {"zlib": 8, "lzw": 5, "zstd": 50000}  # TIFF Compression tag values (8: Adobe deflate)
LOSSLESS = {"zlib", "lzw", "zstd", "none"}
FLAVORS = ("tiff", "ome", "svs")
DEFAULT_QUALITY = {"jpeg": 90, "jpeg2000": 45}  # JPEG quality; JPEG 2000 target PSNR in dB
ASSOCIATED = ("thumbnail", "label", "macro")
THUMBNAIL_SIZE = 1024
_APERIO = "Aperio Image Library v12.0.15 (napari-samlung)"
_BIGTIFF_BYTES = 2**31

Progress = Callable[[int, int], None]  # (tiles written, tiles in all levels)


@dataclass(frozen=True)
class Sparse:
    """A label source that holds ``fill`` everywhere outside ``boxes`` ((y, x, h, w) in level-0
    pixels; for example the chunks a zarr array has stored: it stores none that equal its fill
    value)."""

    fill: int
    boxes: Sequence[Box]


@dataclass(frozen=True)
class _Settings:
    """How to write the file (validated arguments of :func:`write_pyramidal_tiff`)."""

    name: str
    mpp_yx: tuple[float, float] | None
    tile: int
    compression: str
    quality: int | None
    factor: int
    kind: str
    flavor: str
    magnification: float | None
    description: str | None

    @property
    def mpp(self) -> float | None:
        """One pixel size, for formats that record only one (Aperio)."""
        return None if self.mpp_yx is None else sum(self.mpp_yx) / 2


def write_pyramidal_tiff(path: str | os.PathLike, source, *, mpp: float | tuple[float, float] | None = None,
                         tile: int = 256,
                         compression: str | None = "jpeg", quality: int | None = None,
                         levels: int | None = None, factor: int = 2, kind: str = "rgb",
                         flavor: str = "tiff", associated: dict[str, np.ndarray] | None = None,
                         magnification: float | None = None, progress: Progress | None = None,
                         description: str | None = None, sparse: Sparse | None = None) -> Path:
    """Write ``source`` as a tiled pyramidal TIFF at ``path``; returns the path.

    source: (H, W, 3) uint8 for ``kind='rgb'``, (H, W) uint8/uint16 for ``kind='labels'``.
    mpp: microns per pixel of level 0 (resolution tags; the SVS description; OME PhysicalSize);
    a (y, x) pair when the two differ (a class map whose size was rounded from the slide's).
    tile: tile side (a multiple of 16). compression: 'jpeg', 'jpeg2000', 'zlib', 'lzw', 'zstd'
    or 'none' (labels need a lossless one). quality: JPEG quality or JPEG 2000 PSNR (dB).
    levels: number of levels including level 0 (default: until the smallest fits in one tile).
    factor: downsample between levels. flavor: 'tiff' (reduced levels as following pages),
    'ome' (OME-XML, levels as SubIFDs) or 'svs' (Aperio layout: level 0, thumbnail, levels,
    then label and macro; JPEG 2000 tiles as Aperio's YCbCr 33003). associated: small RGB images
    'thumbnail', 'label', 'macro' for the SVS flavour (a thumbnail is made when not given).
    magnification: the objective, for the SVS description. progress: called with (tiles
    written, total). description: ASCII text for level 0 (the ImageDescription; in OME the
    image's Description); not for 'svs', whose description is Aperio's. sparse: for labels, where
    the source may hold anything but its fill value (tiles elsewhere are not read).
    """
    path = Path(path)
    compression = "none" if compression is None else str(compression).lower()
    _validate(path, source, mpp, tile, compression, levels, factor, kind, flavor, associated, description)
    if sparse is not None and kind != "labels":
        raise ValueError("sparse writing is for labels (kind='labels')")
    mpp_yx = None if mpp is None else tuple(float(v) for v in mpp) if isinstance(mpp, tuple) else (float(mpp),) * 2
    settings = _Settings(path.stem, mpp_yx, tile, compression,
                         DEFAULT_QUALITY.get(compression) if quality is None else quality,
                         factor, kind, flavor, magnification, description)
    shapes = _level_shapes(tuple(source.shape[:2]), tile, factor, levels)
    remove_leftovers(path, ".levels")
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".levels", dir=path.parent))
    try:
        tiles = None if sparse is None else _SparseTiles(sparse, shapes, settings, np.dtype(source.dtype))
        pyramid = _build_pyramid(source, shapes, settings, workdir, tiles)
        associated = dict(associated or {})
        if flavor == "svs":
            associated.setdefault("thumbnail", _thumbnail(pyramid[-1], tile))
        partial = workdir / "partial.tif"
        _write(partial, pyramid, settings, associated, progress, tiles)
        if tiles is not None:
            tiles.point_empty_tiles(partial)
        os.replace(partial, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return path


def _validate(path, source, mpp, tile, compression, levels, factor, kind, flavor, associated,
              description) -> None:
    if not path.parent.is_dir():
        raise FileAccessError(f"{path}: the folder {path.parent} does not exist")
    shape, dtype = tuple(getattr(source, "shape", ())), np.dtype(getattr(source, "dtype", "O"))
    if kind == "rgb":
        if len(shape) != 3 or shape[2] != 3 or dtype != np.uint8:
            raise ValueError(f"an RGB source must be (H, W, 3) uint8, got shape {shape} {dtype}")
    elif kind == "labels":
        if len(shape) != 2 or dtype not in (np.uint8, np.uint16):
            raise ValueError(f"a label source must be (H, W) uint8 or uint16, got shape {shape} {dtype}")
        if compression not in LOSSLESS:
            raise ValueError(f"labels need lossless compression ({', '.join(sorted(LOSSLESS))}), "
                             f"got {compression!r}")
    else:
        raise ValueError(f"kind must be 'rgb' or 'labels', got {kind!r}")
    if min(shape[:2]) < 1:
        raise ValueError(f"the source is empty: shape {shape}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    if flavor == "svs" and kind != "rgb":
        raise ValueError("the 'svs' flavor holds RGB slides only")
    if flavor == "svs" and description is not None:
        raise ValueError("the 'svs' flavor writes Aperio's own description; "
                         "description is for 'tiff' and 'ome'")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if factor < 2 or tile % factor:
        raise ValueError(f"factor must be >= 2 and divide the tile size {tile}, got {factor}")
    if levels is not None and levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    sizes = mpp if isinstance(mpp, tuple) else (mpp,)
    if mpp is not None and not (len(sizes) == (2 if isinstance(mpp, tuple) else 1) and all(math.isfinite(v) and v > 0 for v in sizes)):
        raise ValueError(f"mpp must be a positive number or a (y, x) pair of them, got {mpp}")
    for name, image in (associated or {}).items():
        if flavor != "svs" or name not in ASSOCIATED:
            raise ValueError(f"associated images are {', '.join(ASSOCIATED)} of the 'svs' flavor, "
                             f"got {name!r}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"associated image {name!r} must be (h, w, 3) uint8, "
                             f"got {image.shape} {image.dtype}")


def _level_shapes(shape: tuple[int, int], tile: int, factor: int,
                  levels: int | None) -> list[tuple[int, int]]:
    """Level 0's shape, then each divided by ``factor`` (rounded up) until ``levels`` are listed
    or, by default, until the last fits in one tile."""
    shapes = [shape]
    while shapes[-1] != (1, 1) and (len(shapes) < levels if levels else max(shapes[-1]) > tile):
        h, w = shapes[-1]
        shapes.append((-(-h // factor), -(-w // factor)))
    return shapes


def _build_pyramid(source, shapes: list[tuple[int, int]], settings: _Settings, workdir: Path,
                   sparse: "_SparseTiles | None" = None) -> list:
    """Level 0 (the source) and the reduced levels, each computed from the one above it (of a sparse
    source, only the tiles that may hold values; the others keep the fill value)."""
    import zarr

    samples = tuple(source.shape[2:])
    pyramid = [source]
    for k, shape in enumerate(shapes[1:], start=1):
        level = zarr.create_array(store=str(workdir / f"level{k}.zarr"), shape=shape + samples,
                                  dtype=source.dtype, chunks=(settings.tile, settings.tile) + samples,
                                  fill_value=0 if sparse is None else sparse.fill)
        _reduce_into(pyramid[-1], level, settings.factor, settings.kind, settings.tile,
                     None if sparse is None else sorted(sparse.occupied[k]))
        pyramid.append(level)
    return pyramid


def _reduce_into(src, dst, factor: int, kind: str, tile: int,
                 positions: Sequence[tuple[int, int]] | None = None) -> None:
    """Fill ``dst`` (shape ceil(src / factor)) tile by tile from ``src``: every tile, or the tiles
    (row, column) at ``positions``."""
    h, w = dst.shape[:2]
    step = tile * factor
    if positions is None:
        positions = itertools.product(range(-(-h // tile)), range(-(-w // tile)))
    for ty, tx in positions:
        y, x = ty * tile, tx * tile
        block = np.asarray(src[y * factor: y * factor + step, x * factor: x * factor + step])
        reduced = _reduce(block, factor, kind)
        dst[y: y + reduced.shape[0], x: x + reduced.shape[1]] = reduced


def _reduce(block: np.ndarray, factor: int, kind: str) -> np.ndarray:
    """Downsample by ``factor``: RGB by area average (halves rounded up), labels by the pixel
    nearest each output pixel's centre. Partial blocks at the edges repeat their last row/column."""
    h, w = block.shape[:2]
    ph, pw = -(-h // factor) * factor, -(-w // factor) * factor
    if (ph, pw) != (h, w):
        block = np.pad(block, ((0, ph - h), (0, pw - w)) + ((0, 0),) * (block.ndim - 2), mode="edge")
    if kind == "labels":
        offset = (factor - 1) // 2
        return np.ascontiguousarray(block[offset::factor, offset::factor])
    blocks = block.reshape(ph // factor, factor, pw // factor, factor, *block.shape[2:])
    total = blocks.sum(axis=(1, 3), dtype=np.uint32)
    n = factor * factor
    return ((total + n // 2) // n).astype(block.dtype)


def _thumbnail(smallest, tile: int) -> np.ndarray:
    """An RGB overview of at most THUMBNAIL_SIZE pixels a side from the smallest level."""
    h, w = smallest.shape[:2]
    factor = max(1, math.ceil(max(h, w) / THUMBNAIL_SIZE))
    if factor == 1:
        return np.asarray(smallest[:, :])
    out = np.empty((-(-h // factor), -(-w // factor), 3), np.uint8)
    _reduce_into(smallest, out, factor, "rgb", tile)
    return out


def _tiles(level, tile: int, positions: Iterator[tuple[int, int]] | None = None) -> Iterator[np.ndarray]:
    """Full tiles of a level in row-major order (or those at ``positions``, (row, column) of the
    tile grid); edge tiles repeat their last row/column (no dark borders bleeding into lossy
    compression)."""
    h, w = level.shape[:2]
    if positions is None:
        positions = itertools.product(range(-(-h // tile)), range(-(-w // tile)))
    for ty, tx in positions:
        y, x = ty * tile, tx * tile
        block = np.asarray(level[y: y + tile, x: x + tile])
        if block.shape[:2] != (tile, tile):
            pad = ((0, tile - block.shape[0]), (0, tile - block.shape[1])) + ((0, 0),) * (block.ndim - 2)
            block = np.pad(block, pad, mode="edge")
        yield block


def _encoded(blocks: Iterator[np.ndarray], encode: Callable[[np.ndarray], bytes]) -> Iterator[bytes]:
    """``encode`` of each block, in order, on all cores (a few batches in memory at a time)."""
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        while batch := list(itertools.islice(blocks, 4 * workers)):
            yield from pool.map(encode, batch)


def _aperio_j2k_tiles(level, tile: int, quality: int) -> Iterator[bytes]:
    """Aperio 33003 tiles: YCbCr components in a raw JPEG 2000 codestream, no colour transform."""
    import imagecodecs

    def encode(block: np.ndarray) -> bytes:
        return imagecodecs.jpeg2k_encode(rgb_to_ycbcr(block), level=quality, codecformat="J2K", mct=False)

    return _encoded(_tiles(level, tile), encode)


class _SparseTiles:
    """The encoded tiles of a sparse label pyramid, level by level.

    Only tiles that may hold values are read and encoded. The first empty one (all ``fill``) goes
    into the file; tifffile gets every later one as 0 bytes, which it records at offset 0, and
    :meth:`point_empty_tiles` then points them at the written one (libtiff and PIL refuse tiles at
    offset 0).
    """

    def __init__(self, sparse: Sparse, shapes: list[tuple[int, int]], settings: _Settings, dtype: np.dtype):
        import tifffile

        tile, factor = settings.tile, settings.factor
        rows, cols = -(-shapes[0][0] // tile), -(-shapes[0][1] // tile)
        level0: set[tuple[int, int]] = set()
        for y, x, h, w in sparse.boxes:
            top, left = max(0, y // tile), max(0, x // tile)
            bottom, right = min(rows, -(-(y + h) // tile)), min(cols, -(-(x + w) // tile))
            level0.update(itertools.product(range(top, bottom), range(left, right)))
        self.occupied = [level0]  # (row, column) of the tiles that may hold values, per level
        for _ in shapes[1:]:
            self.occupied.append({(ty // factor, tx // factor) for ty, tx in self.occupied[-1]})
        self.fill, self.tile = sparse.fill, tile
        tag = _LOSSLESS_TAGS.get(settings.compression)
        if tag is None:
            self.encode: Callable[[np.ndarray], bytes] = lambda block: np.ascontiguousarray(block).tobytes()
        else:  # tifffile's own codec, with the arguments it would be given
            args = {} if settings.quality is None else {"level": settings.quality}
            self.encode = functools.partial(tifffile.TIFF.COMPRESSORS[tag], **args)
        self.empty = self.encode(np.full((tile, tile), sparse.fill, dtype))
        self.empty_at: tuple[int, int] | None = None  # (level, tile index) of the empty tile written

    def tiles(self, index: int, level) -> Iterator[bytes]:
        """The encoded tiles of level ``index`` in row-major order, b"" for each empty one but the first."""
        h, w = level.shape[:2]
        rows, cols = -(-h // self.tile), -(-w // self.tile)
        occupied = sorted(self.occupied[index])
        encoded = _encoded(_tiles(level, self.tile, iter(occupied)), self.encode)
        in_row: dict[int, list[int]] = defaultdict(list)
        for ty, tx in occupied:
            in_row[ty].append(tx)
        for ty in range(rows):
            start = 0
            for tx in [*in_row.get(ty, ()), cols]:
                run = tx - start  # empty tiles before this one
                if run and self.empty_at is None:
                    self.empty_at = (index, ty * cols + start)
                    yield self.empty
                    run -= 1
                yield from itertools.repeat(b"", run)
                if tx < cols:
                    yield next(encoded)
                start = tx + 1

    def point_empty_tiles(self, path: Path) -> None:
        """Point every 0-byte tile of the file at ``path`` at the one empty tile written."""
        import tifffile

        if self.empty_at is None:
            return  # no tile was empty
        with tifffile.TiffFile(path) as tif:
            pages = [level.keyframe for level in tif.series[0].levels]
            order = tif.byteorder
            level, index = self.empty_at
            target = int(pages[level].dataoffsets[index]), int(pages[level].databytecounts[index])
            tables = [(page.tags["TileOffsets"], page.tags["TileByteCounts"]) for page in pages]
        with open(path, "r+b") as fh:
            for offsets, counts in tables:
                _patch_empty(fh, offsets, counts, target, order)


_TAG_TYPES = {3: "u2", 4: "u4", 16: "u8"}  # TIFF SHORT, LONG, LONG8
_PATCH_BLOCK = 1 << 20  # table entries patched at a time


def _patch_empty(fh, offsets, counts, target: tuple[int, int], order: str) -> None:
    """Set the tile table entries of 0 bytes to ``target`` (offset, byte count), a block at a time."""
    offset_type = np.dtype(order + _TAG_TYPES[int(offsets.dtype)])
    count_type = np.dtype(order + _TAG_TYPES[int(counts.dtype)])
    for start in range(0, counts.count, _PATCH_BLOCK):
        n = min(_PATCH_BLOCK, counts.count - start)
        fh.seek(counts.valueoffset + start * count_type.itemsize)
        sizes = np.frombuffer(fh.read(n * count_type.itemsize), count_type).copy()
        empty = sizes == 0
        if not empty.any():
            continue
        fh.seek(offsets.valueoffset + start * offset_type.itemsize)
        places = np.frombuffer(fh.read(n * offset_type.itemsize), offset_type).copy()
        places[empty], sizes[empty] = target
        fh.seek(offsets.valueoffset + start * offset_type.itemsize)
        fh.write(places.tobytes())
        fh.seek(counts.valueoffset + start * count_type.itemsize)
        fh.write(sizes.tobytes())


def _tile_count(shape, tile: int) -> int:
    return -(-shape[0] // tile) * -(-shape[1] // tile)


def _write(path: Path, pyramid: list, settings: _Settings, associated: dict[str, np.ndarray],
           progress: Progress | None, sparse: _SparseTiles | None = None) -> None:
    import tifffile

    raw = sum(math.prod(level.shape) * np.dtype(level.dtype).itemsize for level in pyramid)
    total = sum(_tile_count(level.shape, settings.tile) for level in pyramid)
    done = 0
    with tifffile.TiffWriter(path, bigtiff=raw > _BIGTIFF_BYTES, ome=settings.flavor == "ome") as tw:
        for index, level in enumerate(pyramid):
            data, options = _level_data(index, pyramid, settings, sparse)
            tw.write(_counted(data, progress, done, total), shape=level.shape, dtype=level.dtype, **options)
            done += _tile_count(level.shape, settings.tile)
            if settings.flavor == "svs" and index == 0:
                _write_associated(tw, "thumbnail", associated["thumbnail"], pyramid[0].shape, settings.mpp)
        for name in ("label", "macro"):
            if name in associated:
                _write_associated(tw, name, associated[name], pyramid[0].shape, settings.mpp)


def _level_data(index: int, pyramid: list, s: _Settings,
                sparse: _SparseTiles | None = None) -> tuple[Iterator, dict]:
    """The tiles of level ``index`` (encoded here when the source is sparse) and tifffile's write
    options for it."""
    level = pyramid[index]
    options = dict(tile=(s.tile, s.tile), photometric="rgb" if s.kind == "rgb" else "minisblack",
                   software="napari-samlung", metadata=None)
    if s.mpp_yx:
        my, mx = s.mpp_yx
        f = s.factor ** index
        options.update(resolution=(1e4 / (mx * f), 1e4 / (my * f)), resolutionunit="CENTIMETER")
    if s.compression == "jpeg2000" and s.flavor == "svs":
        data = _aperio_j2k_tiles(level, s.tile, s.quality)
        options.update(compression=33003)
    elif sparse is not None:
        data = sparse.tiles(index, level)
        if COMPRESSIONS[s.compression]:
            options.update(compression=COMPRESSIONS[s.compression])
    else:
        data = _tiles(level, s.tile)
        if COMPRESSIONS[s.compression]:
            options.update(compression=COMPRESSIONS[s.compression])
            if s.quality is not None:
                options.update(compressionargs={"level": s.quality})
    if s.flavor == "svs":
        options.update(description=_aperio_description(pyramid[0].shape, level.shape, s))
    elif index:
        options.update(subfiletype=1)  # a reduced-resolution copy
    elif s.flavor == "ome":
        ome = {"axes": "YXS" if s.kind == "rgb" else "YX", "Name": s.name}
        if s.description:
            ome["Description"] = s.description
        if s.mpp_yx:
            ome.update(PhysicalSizeX=s.mpp_yx[1], PhysicalSizeXUnit="µm", PhysicalSizeY=s.mpp_yx[0],
                       PhysicalSizeYUnit="µm")
        options.update(subifds=len(pyramid) - 1, metadata=ome)
    elif s.description:
        options.update(description=s.description)
    return data, options


def _counted(items: Iterator, progress: Progress | None, done: int, total: int) -> Iterator:
    """``items``, reporting each as it is handed to the writer."""
    for i, item in enumerate(items, start=done + 1):
        if progress is not None:
            progress(i, total)
        yield item


def _aperio_description(shape0, shape, s: _Settings) -> str:
    h0, w0 = shape0[:2]
    h, w = shape[:2]
    codec = "J2K/YUV16" if s.compression == "jpeg2000" else f"{s.compression.upper()}/RGB"
    first = f"{_APERIO}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({s.tile}x{s.tile})"
    if (h, w) != (h0, w0):
        first += f" -> {w}x{h}"
    first += f" {codec} Q={s.quality or 100}"
    fields = []
    if s.magnification:
        fields.append(f"AppMag = {s.magnification:g}")
    if s.mpp:
        fields.append(f"MPP = {s.mpp:.4f}")
    return "|".join([first, *fields])


def _write_associated(tw, name: str, image: np.ndarray, shape0, mpp: float | None) -> None:
    """An SVS associated image: untiled; label LZW (subfile type 1), macro JPEG (type 9)."""
    h0, w0 = shape0[:2]
    h, w = image.shape[:2]
    if name == "thumbnail":
        description = f"{_APERIO}\r\n{w0}x{h0} -> {w}x{h} - " + (f"|MPP = {mpp:.4f}" if mpp else "")
        options = dict(compression="jpeg", subfiletype=0)
    elif name == "label":
        description = f"{_APERIO}\r\nlabel {w}x{h}"
        options = dict(compression="lzw", subfiletype=1)
    else:
        description = f"{_APERIO}\r\nmacro {w}x{h}"
        options = dict(compression="jpeg", subfiletype=9)
    tw.write(np.ascontiguousarray(image), photometric="rgb", description=description, metadata=None,
             software="napari-samlung", rowsperstrip=16, **options)
