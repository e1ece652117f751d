"""Fast region reads from tiled pyramids: decode the file's own tiles, in threads, with a cache.

:class:`TiledRegionReader` serves region requests from the tiles of any :class:`TiledLevel`:
TIFF levels (here), OpenSlide levels (``openslide_source.py``) and OME-Zarr levels
(``omezarr_source.py``).

For TIFF, a region request is served from the TIFF tiles (or strips) it intersects. Each tile's
bytes are read with ``os.pread`` (no shared file position, so no lock) and decoded by the page's
own decode function from tifffile, with the JPEG tables / NDPI JPEG header that tifffile's zarr
store would pass. imagecodecs releases the GIL, so tiles of one request decode in parallel threads. Decoded
tiles, converted to RGB, go into a bytes-bounded LRU cache shared by all levels of a slide;
concurrent requests for the same tile wait for one decode instead of starting their own, so
overlapping model tiles never decode a TIFF tile twice while it is cached.

In a row-major sweep, tiles of the overlap between two rows of requests are reused only if the
cache holds a full band of requests (tile rows per request + 1) x level width x tile height x 3
bytes; sweep narrower column strips when a level is wider than that.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .color import to_rgb, ycbcr_to_rgb
from .errors import SlideError
from .metadata import SlideMetadata

DEFAULT_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CacheStats:
    """Counters of a :class:`TileCache` (``decodes`` counts loads, i.e. tile decodes)."""

    hits: int
    decodes: int
    nbytes: int
    max_bytes: int
    tiles: int


class TileCache:
    """A thread-safe LRU of arrays bounded by their total bytes; one load per key at a time."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._loading: dict[Hashable, Future] = {}
        self._nbytes = 0
        self._hits = 0
        self._decodes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``; else wait for a load in progress; else load it here."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return value
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                self._decodes += 1
                owner = True
            else:
                self._hits += 1
                owner = False
        if not owner:
            return pending.result()
        try:
            value = load()
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        value.flags.writeable = False  # shared between callers
        with self._lock:
            del self._loading[key]
            if value.nbytes <= self.max_bytes:
                self._entries[key] = value
                self._nbytes += value.nbytes
                while self._nbytes > self.max_bytes:
                    _, old = self._entries.popitem(last=False)
                    self._nbytes -= old.nbytes
        pending.set_result(value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._decodes, self._nbytes, self.max_bytes, len(self._entries))


class FileBytes:
    """Reads byte ranges of one file from any thread (``os.pread``; a lock where it is missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()
        self._closer = weakref.finalize(self, os.close, self._fd)  # also when never closed

    def read(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            data = os.pread(self._fd, count, offset)
        else:  # pragma: no cover - Windows
            with self._lock:
                os.lseek(self._fd, offset, os.SEEK_SET)
                data = os.read(self._fd, count)
        if len(data) != count:
            raise SlideError(self.path, f"file is truncated: {count} bytes expected at offset {offset}, "
                                        f"{len(data)} found")
        return data

    def close(self) -> None:
        self._closer()


class TiffLevel:
    """The tile geometry and decoding of one pyramid level stored in TIFF pages.

    ``planes`` is one page (samples interleaved, or planar with one segment run per sample) or one
    page per channel (OME planes). Tiles come out as (tile_h, tile_w, 3) uint8, padded to full
    tile size at the right and bottom edges like tifffile's own chunks.
    """

    def __init__(self, planes: list, index: int, source: FileBytes) -> None:
        self.index = index
        self.pages = planes
        self.keyframe = planes[0].keyframe
        kf = self.keyframe
        self.shape = (int(kf.imagelength), int(kf.imagewidth))
        if kf.is_tiled:
            self.tile_shape = (int(kf.tilelength), int(kf.tilewidth))
        else:
            self.tile_shape = (min(int(kf.rowsperstrip), self.shape[0]), self.shape[1])
        self.grid = (-(-self.shape[0] // self.tile_shape[0]), -(-self.shape[1] // self.tile_shape[1]))
        per_plane = self.grid[0] * self.grid[1]
        if len(planes) == 1 and kf.planarconfig == 2 and kf.samplesperpixel > 1:
            self._segments = [(planes[0], s * per_plane) for s in range(kf.samplesperpixel)]
        else:
            self._segments = [(page, 0) for page in planes]
        # tifffile's own decoding (its zarr arrays) already gives RGB uint8 for these
        self.plain_rgb = (len(self._segments) == 1 and kf.samplesperpixel == 3 and kf.dtype == np.uint8
                          and kf.photometric in (2, 6) and kf.compression != 33003)
        self._min_is_white = kf.photometric == 0
        self._aperio_ycbcr_j2k = kf.compression == 33003
        self._jpegheader = kf.jpegheader
        self._source = source
        kf.decode  # noqa: B018 - tifffile builds the decoder lazily; not thread-safe the first time

    def check_complete(self, file_size: int) -> None:
        """Raise when the level's tile data reaches past the end of the file (a truncated copy)."""
        tiles = self.grid[0] * self.grid[1]
        for page, first in self._segments:
            offsets = tuple(page.dataoffsets)
            if len(offsets) < first + tiles or len(page.databytecounts) != len(offsets):
                raise SlideError(self._source.path, f"damaged tile table: level {self.index} lists {len(offsets)} "
                                                    f"tile offsets and {len(page.databytecounts)} sizes for "
                                                    f"{first + tiles} tiles")
            if not offsets:
                continue
            last = offsets.index(max(offsets))  # the segment stored last in the file
            end = offsets[last] + page.databytecounts[last]
            if end > file_size:
                raise SlideError(self._source.path, f"file is truncated: level {self.index} data ends at "
                                                    f"byte {end} but the file has {file_size} bytes")

    def decode(self, iy: int, ix: int) -> np.ndarray:
        """Decode tile (iy, ix) to RGB; sparse (never written) tiles are white."""
        index = iy * self.grid[1] + ix
        parts = []
        for page, first in self._segments:
            offset = page.dataoffsets[first + index]
            count = page.databytecounts[first + index]
            if not offset or not count:
                return np.full((*self.tile_shape, 3), 255, np.uint8)
            data = self._source.read(offset, count)
            try:
                decoded = self.keyframe.decode(data, first + index, jpegtables=page.jpegtables,
                                               jpegheader=self._jpegheader, _fullsize=True)[0]
            except Exception as exc:
                raise SlideError(self._source.path,
                                 f"cannot decode level {self.index} tile ({iy}, {ix}): {exc}") from exc
            if self._aperio_ycbcr_j2k and not _j2k_uses_mct(data):
                decoded = ycbcr_to_rgb(decoded)
            parts.append(decoded.reshape(decoded.shape[-3:]))
        pixels = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        return np.ascontiguousarray(to_rgb(pixels[: self.tile_shape[0], : self.tile_shape[1]],
                                           min_is_white=self._min_is_white))


def _j2k_uses_mct(codestream: bytes) -> bool:
    """Whether a JPEG 2000 codestream applies the multiple component transform (COD marker).

    Aperio's 33003 tiles hold YCbCr components without it: the decoder then returns YCbCr, which
    must be converted to RGB here. With it, the decoder already returned RGB.
    """
    pos = 2  # after SOC; main header segments are marker(2) + length(2) + contents
    while pos + 9 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[pos: pos + 4])
        if marker == 0xFF52:  # COD: Scod(1), progression order(1), layers(2), then the MCT flag
            return codestream[pos + 8] != 0
        if marker == 0xFF90:  # first tile-part: the main header has ended
            break
        pos += 2 + length
    return False


class TiledLevel(Protocol):
    """One pyramid level cut into tiles: ``decode(iy, ix)`` gives tile (iy, ix) as (h, w, 3) uint8,
    at least the part of the tile inside the level (edge tiles may be cut short or padded)."""

    index: int
    shape: tuple[int, int]
    tile_shape: tuple[int, int]

    def decode(self, iy: int, ix: int) -> np.ndarray: ...


def tile_side(native: int | None, low: int = 256, high: int = 2048, default: int = 512) -> int:
    """The side of the tiles to read from a file whose own tiles (chunks) have side ``native``:
    the native side, or a multiple of it of at least ``low``; at most ``high``; ``default`` when
    the file has none."""
    if not native or native <= 0:
        return default
    side = native * -(-low // native) if native < low else native
    return min(side, high)


@dataclass
class TiledSource:
    """What an opener of a tiled format hands to the slide: its format name, metadata, levels
    (level 0 first) and the resources to close with the slide, in order."""

    format: str
    metadata: SlideMetadata
    levels: list[TiledLevel]
    resources: tuple = ()


class RegionReader(Protocol):
    """What a :class:`~napari_samlung.slide.Slide` reads pixels through."""

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _clip(y: int, x: int, h: int, w: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part (y0, x0, y1, x1) of a box inside an image of ``shape`` (empty if y0 >= y1 or x0 >= x1)."""
    return max(y, 0), max(x, 0), min(y + h, shape[0]), min(x + w, shape[1])


class ArrayRegionReader:
    """Region reads from an image held in memory (a plain PNG or JPEG): one level, no tiles."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        y0, x0, y1, x1 = _clip(y, x, h, w, self.image.shape[:2])
        if y0 < y1 and x0 < x1:
            out[y0 - y: y1 - y, x0 - x: x1 - x] = self.image[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        pass


class TiledRegionReader:
    """Region reads for all levels of one tiled slide, through one tile cache and thread pool."""

    def __init__(self, levels: list[TiledLevel], *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 workers: int | None = None) -> None:
        self.levels = levels
        self.cache = TileCache(cache_bytes)
        self._workers = workers or min(8, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 of ``level`` starting at (y, x); outside the level is white."""
        lv = self.levels[level]
        out = np.full((h, w, 3), 255, np.uint8)
        y0, x0, y1, x1 = _clip(y, x, h, w, lv.shape)
        if y0 >= y1 or x0 >= x1:
            return out
        th, tw = lv.tile_shape
        tiles = [(iy, ix) for iy in range(y0 // th, (y1 - 1) // th + 1)
                 for ix in range(x0 // tw, (x1 - 1) // tw + 1)]
        for (iy, ix), pixels in zip(tiles, self._tiles(lv, tiles)):
            ty, tx = iy * th, ix * tw
            sy0, sy1 = max(y0, ty), min(y1, ty + th)
            sx0, sx1 = max(x0, tx), min(x1, tx + tw)
            out[sy0 - y: sy1 - y, sx0 - x: sx1 - x] = pixels[sy0 - ty: sy1 - ty, sx0 - tx: sx1 - tx]
        return out

    def _tiles(self, lv: TiledLevel, tiles: list[tuple[int, int]]) -> list[np.ndarray]:
        """Decoded tiles, the ones not cached decoded in parallel (one of them in this thread)."""
        def get(tile: tuple[int, int]) -> np.ndarray:
            return self.cache.get((lv.index, *tile), lambda: lv.decode(*tile))

        missing = [t for t in tiles if (lv.index, *t) not in self.cache]
        futures = {t: self._executor().submit(get, t) for t in missing[1:]}
        here = {t: get(t) for t in tiles if t not in futures}
        return [here[t] if t in here else futures[t].result() for t in tiles]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="slide-decode")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self.cache.clear()
