"""The on-disk class map: a chunked zarr pyramid of labels at model resolution.

Layout of a slide's result folder (``<name>.samlung/``)::

    classmap.zarr/        zarr v3 group; arrays "0" (model resolution), "1", "2", ... (each half
                          the previous, nearest-neighbour), uint8 labels (labels.py conventions);
                          group attribute "samlung" holds the metadata below
    progress.log          chunks finished by an unfinished whole-slide run (for resume)
    checksums.log         CRC-32 of every chunk file as written ("level cy cx crc", "-" for no file;
                          the last line of a chunk counts), so damaged or lost chunks are found
    confidence.zarr/      how sure the model was of each pixel, same levels and chunks (confidence.py),
    confidence-checksums.log  with its own checksums

Coordinates are class-map pixels; ``scale`` is how many level-0 slide pixels one class-map pixel
spans. Reviewed (corrected) regions live in the metadata too, so the engine never overwrites a
pathologist's correction and export finds them in the same place.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numcodecs
import numpy as np
import zarr

from napari_samlung.errors import SamLungError
from napari_samlung.files import write_atomic
from napari_samlung.geometry import Box, intersect
from napari_samlung.labels import BACKGROUND, class_name
from napari_samlung.results.ome import AXES, name_dimensions, ome_attributes

FORMAT = "samlung-classmap"
VERSION = 1
CHUNK = 1024
PYRAMID_CHUNK = 512
ZSTD_LEVEL = 1
MIN_LEVEL_SIZE = 256

_ZSTD = numcodecs.Zstd(level=ZSTD_LEVEL)


class ClassMapError(SamLungError):
    """A class map folder that is missing, of another format, or inconsistent."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Pyramid shapes: halve until the longer side is at most MIN_LEVEL_SIZE."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > MIN_LEVEL_SIZE:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


class _Checksums:
    """The append-only ``checksums.log`` of a result folder (thread-safe appends)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def record(self, level: int, cy: int, cx: int, crc: int | None) -> None:
        line = f"{level} {cy} {cx} {'-' if crc is None else format(crc, '08x')}\n"
        with self._lock, open(self.path, "a") as log:
            log.write(line)

    def read(self) -> dict[tuple[int, int, int], int | None]:
        found: dict[tuple[int, int, int], int | None] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 4 and all(p.isdigit() for p in parts[:3]):
                    try:
                        found[int(parts[0]), int(parts[1]), int(parts[2])] = None if parts[3] == "-" else int(parts[3], 16)
                    except ValueError:
                        continue  # a torn last line
        return found


class ClassMap:
    """A class-map pyramid on disk. Open with :meth:`create` or :meth:`open`."""

    STORE = "classmap.zarr"  # the zarr group in the result folder (a subclass keeps another pyramid)
    CHECKSUMS = "checksums.log"

    def __init__(self, root: Path, group: zarr.Group):
        self.root = Path(root)
        self.group = group
        self.levels: list[zarr.Array] = [group[str(k)] for k in range(len(self.meta["levels"]))]
        self._checksums = _Checksums(self.root / self.CHECKSUMS)

    # -- creation and opening -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        shape: tuple[int, int],
        *,
        scale: float,
        num_classes: int,
        slide: dict[str, Any],
        model: dict[str, Any],
        overwrite: bool = False,
    ) -> "ClassMap":
        """Create an empty class map (all background) in ``root/classmap.zarr``.

        The group is built under a temporary name and renamed into place, so a crash never leaves
        a half-made class map behind.
        """
        root = Path(root)
        target = root / "classmap.zarr"
        if target.exists() and not overwrite:
            raise ClassMapError(f"{target} already exists")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".classmap-{uuid.uuid4().hex}.zarr"
        group = zarr.open_group(tmp, mode="w")
        shapes = level_shapes(shape)
        for k, s in enumerate(shapes):
            chunk = CHUNK if k == 0 else PYRAMID_CHUNK
            group.create_array(str(k), shape=s, chunks=(min(chunk, s[0]), min(chunk, s[1])), dtype="uint8",
                               fill_value=BACKGROUND, compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
                               chunk_key_encoding={"name": "default", "separator": "/"}, dimension_names=AXES)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "status": "empty",
            "shape": list(shapes[0]),
            "levels": [list(s) for s in shapes],
            "scale": float(scale),
            "num_classes": int(num_classes),
            "class_names": {str(v): class_name(v, num_classes) for v in range(num_classes + 1)},
            "slide": slide,
            "model": model,
            "job": None,
            "segmented": [],
            "reviewed": [],
            "created": now(),
        }
        group.attrs.update({"samlung": meta, "ome": ome_attributes(meta)})
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        (root / "progress.log").unlink(missing_ok=True)
        (root / "checksums.log").unlink(missing_ok=True)
        return cls.open(root, mode="r+")

    @classmethod
    def open(cls, root: str | os.PathLike, mode: str = "r") -> "ClassMap":
        """Open the class map in a result folder (``mode`` 'r' or 'r+')."""
        root = Path(root)
        path = root / "classmap.zarr"
        if not (path / "zarr.json").is_file():
            raise ClassMapError(f"no class map in {root} (expected {path})")
        try:
            group = zarr.open_group(path, mode=mode)
            meta = group.attrs["samlung"]
        except Exception as exc:  # zarr raises several types for damaged stores
            raise ClassMapError(f"{path} is not a readable class map: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ClassMapError(f"{path} is not a napari-samlung class map")
        if meta.get("version") != VERSION:
            raise ClassMapError(f"{path} has class-map format version {meta.get('version')}, expected {VERSION}")
        return cls(root, group)

    @staticmethod
    def exists(root: str | os.PathLike) -> bool:
        return (Path(root) / "classmap.zarr" / "zarr.json").is_file()

    @staticmethod
    def changed_ns(root: str | os.PathLike) -> int:
        """When the class map's metadata last changed (every run and applied review changes it)."""
        return (Path(root) / "classmap.zarr" / "zarr.json").stat().st_mtime_ns

    # -- metadata -------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return self.group.attrs["samlung"]

    def refresh(self) -> None:
        """Re-read the metadata from disk: another ClassMap object (the engine's, the widget's) may
        have written it since this one was opened."""
        self.group = zarr.open_group(self.root / self.STORE, mode="r" if self.group.read_only else "r+")

    def update_meta(self, **changes: Any) -> None:
        """Rewrite the metadata on disk with ``changes`` applied (zarr writes zarr.json atomically)."""
        self.refresh()
        meta = dict(self.meta)
        meta.update(changes, updated=now())
        if meta.get("format") == FORMAT:  # the OME-Zarr view follows (and is added to maps made before it)
            if "ome" not in self.group.attrs:
                name_dimensions(self.root / self.STORE, len(self.levels))
            self.group.attrs.update({"samlung": meta, "ome": ome_attributes(meta)})
        else:
            self.group.attrs["samlung"] = meta

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def mpp(self) -> float | None:
        """Microns per class-map pixel (the slide's times ``scale``); None when the slide's is unknown."""
        slide_mpp = (self.meta.get("slide") or {}).get("mpp")
        return None if slide_mpp is None else float(slide_mpp) * self.scale

    @property
    def user_mpp(self) -> float | None:
        """The slide's microns per pixel as the user entered it (not the file's), else None."""
        slide = self.meta.get("slide") or {}
        return float(slide["mpp"]) if slide.get("mpp_source") == "user" and slide.get("mpp") else None

    def record_slide_mpp(self, mpp: float | None, source: str | None) -> None:
        """Keep the slide's microns per pixel and where it came from ('user' for a value entered by
        hand, which then comes back when the slide is opened again)."""
        slide = dict(self.meta.get("slide") or {})
        if (slide.get("mpp"), slide.get("mpp_source")) != (mpp, source):
            self.update_meta(slide={**slide, "mpp": mpp, "mpp_source": source})

    @property
    def status(self) -> str:
        return self.meta["status"]

    @property
    def chunk(self) -> tuple[int, int]:
        return tuple(self.levels[0].chunks)  # type: ignore[return-value]

    @property
    def reviewed(self) -> list[dict[str, Any]]:
        return list(self.meta.get("reviewed", []))

    def reviewed_boxes(self) -> list[Box]:
        return [tuple(r["box"]) for r in self.reviewed]  # type: ignore[misc]

    def add_reviewed(self, box: Box, **info: Any) -> dict[str, Any]:
        """Record ``box`` as reviewed (corrected by a person); returns the record."""
        box = self.clip(box)
        record = {"id": uuid.uuid4().hex[:12], "box": [int(v) for v in box], "created": now(), **info}
        self.refresh()
        self.update_meta(reviewed=self.reviewed + [record])
        return record

    def segmented_fraction(self, box: Box) -> float:
        """How much of ``box`` a finished run or a review has set (0..1); the rest holds no prediction."""
        box = self.clip(box)
        if self.status == "complete":
            return 1.0
        covered = [tuple(r["box"]) for r in self.meta.get("segmented", [])] + self.reviewed_boxes()
        f = max(1, math.ceil(max(box[2:]) / 1024))  # a coarse grid is exact enough for a question to a person
        y, x, h, w = box
        mask = np.zeros((math.ceil(h / f), math.ceil(w / f)), dtype=bool)
        for part in (intersect(box, c) for c in covered):
            if part is not None:
                py, px, ph, pw = part
                mask[(py - y) // f:math.ceil((py - y + ph) / f), (px - x) // f:math.ceil((px - x + pw) / f)] = True
        return float(mask.mean())

    def remove_reviewed(self, region_id: str) -> None:
        self.refresh()
        self.update_meta(reviewed=[r for r in self.reviewed if r["id"] != region_id])

    # -- geometry -------------------------------------------------------------------------------
    def clip(self, box: Box) -> Box:
        """``box`` clipped to the map; ValueError when nothing is left."""
        inside = intersect(box, (0, 0, *self.shape))
        if inside is None:
            raise ClassMapError(f"box {tuple(box)} lies outside the class map of shape {self.shape}")
        return inside

    def to_slide(self, box: Box) -> Box:
        """A class-map box in level-0 slide pixels (rounded outwards)."""
        s = self.scale
        y0, x0 = math.floor(box[0] * s), math.floor(box[1] * s)
        y1, x1 = math.ceil((box[0] + box[2]) * s), math.ceil((box[1] + box[3]) * s)
        return y0, x0, y1 - y0, x1 - x0

    def from_slide(self, box: Box) -> Box:
        """A level-0 slide box in class-map pixels (rounded outwards, clipped to the map)."""
        s = self.scale
        y0, x0 = math.floor(box[0] / s), math.floor(box[1] / s)
        y1, x1 = math.ceil((box[0] + box[2]) / s), math.ceil((box[1] + box[3]) / s)
        return self.clip((y0, x0, y1 - y0, x1 - x0))

    def chunk_box(self, cy: int, cx: int) -> Box:
        ch, cw = self.chunk
        h, w = self.shape
        return cy * ch, cx * cw, min(ch, h - cy * ch), min(cw, w - cx * cw)

    def chunks_in(self, box: Box) -> Iterable[tuple[int, int]]:
        """Indices of the level-0 chunks that ``box`` touches."""
        ch, cw = self.chunk
        for cy in range(box[0] // ch, (box[0] + box[2] - 1) // ch + 1):
            for cx in range(box[1] // cw, (box[1] + box[3] - 1) // cw + 1):
                yield cy, cx

    # -- pixels ---------------------------------------------------------------------------------
    def read(self, box: Box, level: int = 0) -> np.ndarray:
        """Labels of ``box`` at ``level``; a chunk that cannot be decoded is a :class:`ClassMapError`
        naming it."""
        y, x, h, w = box
        try:
            return np.asarray(self.levels[level][y:y + h, x:x + w])
        except Exception as exc:  # the codec's own error for a damaged chunk file
            array = self.levels[level]
            ch, cw = array.chunks
            for cy in range(y // ch, (y + h - 1) // ch + 1):
                for cx in range(x // cw, (x + w - 1) // cw + 1):
                    try:
                        array[cy * ch:(cy + 1) * ch, cx * cw:(cx + 1) * cw]
                    except Exception:
                        raise ClassMapError(f"{self.chunk_path(level, cy, cx)}: damaged class-map chunk "
                                            f"({type(exc).__name__}); segment the slide again to repair it") from None
            raise

    def chunk_path(self, level: int, cy: int, cx: int) -> Path:
        return self.root / self.STORE / str(level) / "c" / str(cy) / str(cx)

    def stored_chunks(self, level: int = 0) -> list[tuple[int, int]]:
        """(cy, cx) of every chunk of ``level`` that has a file, found by listing folders, not by
        reading: a chunk without one holds the fill value (zarr stores no chunk that equals it)."""
        rows = self.root / self.STORE / str(level) / "c"
        found = []
        for row in (os.scandir(rows) if rows.is_dir() else ()):
            if row.name.isdigit() and row.is_dir():
                found += [(int(row.name), int(col.name)) for col in os.scandir(row.path) if col.name.isdigit()]
        return sorted(found)

    def write_chunk(self, level: int, cy: int, cx: int, values: np.ndarray) -> None:
        """Replace one whole chunk of ``level`` with ``values`` (its part inside the array).

        Encodes the chunk exactly as the array's codecs do (raw uint8, zstd) and writes the file
        atomically, without zarr's asynchronous write machinery: ten times faster per chunk, which
        is what lets a GPU run write labels as fast as the model makes them. An all-background
        chunk is removed instead (zarr reads a missing chunk as the fill value).
        """
        array = self.levels[level]
        ch, cw = array.chunks
        if not self._plain_zstd(level):
            h, w = array.shape
            array[cy * ch:min(h, (cy + 1) * ch), cx * cw:min(w, (cx + 1) * cw)] = values
            self._record_box(level, (cy * ch, cx * cw, 1, 1))
            return
        path = self.chunk_path(level, cy, cx)
        if not values.any():
            path.unlink(missing_ok=True)
            self._checksums.record(level, cy, cx, None)
            return
        if values.shape != (ch, cw):
            padded = np.full((ch, cw), BACKGROUND, np.uint8)
            padded[: values.shape[0], : values.shape[1]] = values
            values = padded
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _ZSTD.encode(np.ascontiguousarray(values, dtype=np.uint8))
        write_atomic(path, data)
        self._checksums.record(level, cy, cx, zlib.crc32(data))

    def _record_box(self, level: int, box: Box) -> None:
        """Record the checksums of the chunks a write through zarr touched (read back from disk)."""
        ch, cw = self.levels[level].chunks
        y, x, h, w = box
        for cy in range(y // ch, (y + h - 1) // ch + 1):
            for cx in range(x // cw, (x + w - 1) // cw + 1):
                path = self.chunk_path(level, cy, cx)
                self._checksums.record(level, cy, cx, zlib.crc32(path.read_bytes()) if path.is_file() else None)

    def damaged_chunks(self, levels: Iterable[int] | None = None,
                       keys: set[tuple[int, int]] | None = None) -> list[tuple[int, int, int, str]]:
        """(level, cy, cx, problem) of every recorded chunk whose file is missing or changed, of
        ``levels`` (default: all) and, given ``keys``, only those (cy, cx). Every file checked is read."""
        wanted = set(range(len(self.levels)) if levels is None else levels)
        damaged = []
        for (level, cy, cx), crc in self._checksums.read().items():
            if level not in wanted or (keys is not None and (cy, cx) not in keys):
                continue
            path = self.chunk_path(level, cy, cx)
            if crc is None:
                continue  # an all-background chunk: no file; one that appeared holds zarr's own write
            if not path.is_file():
                damaged.append((level, cy, cx, "missing"))
            elif zlib.crc32(path.read_bytes()) != crc:
                damaged.append((level, cy, cx, "changed or damaged"))
        return damaged

    def damage_summary(self, damaged: list[tuple[int, int, int, str]], most: int = 3) -> str:
        """``damaged`` (from :meth:`damaged_chunks`) as a few words: the first chunk files and problems."""
        names = [f"{self.chunk_path(level, cy, cx).relative_to(self.root)}: {problem}"
                 for level, cy, cx, problem in damaged]
        return "; ".join(names[:most]) + (f"; {len(names) - most} more" if len(names) > most else "")

    def _plain_zstd(self, level: int) -> bool:
        """Whether the level is stored as this module creates it (so chunks can be written directly)."""
        meta = self.levels[level].metadata
        codecs = [type(c).__name__ for c in meta.codecs]
        return (codecs == ["BytesCodec", "ZstdCodec"] and meta.codecs[1].level == ZSTD_LEVEL
                and not meta.codecs[1].checksum and getattr(meta.chunk_key_encoding, "separator", None) == "/"
                and type(meta.chunk_key_encoding).__name__ == "DefaultChunkKeyEncoding")

    def write(self, box: Box, labels: np.ndarray) -> None:
        """Write a block at level 0 and the matching samples of every coarser level."""
        y, x, h, w = box
        if labels.shape != (h, w):
            raise ClassMapError(f"labels of shape {labels.shape} do not fit box {box}")
        self.levels[0][y:y + h, x:x + w] = labels
        self._record_box(0, box)
        self._write_pyramid(box, labels)

    def _write_pyramid(self, box: Box, labels: np.ndarray) -> None:
        for level, level_box, samples in self.pyramid_samples(box, labels):
            y, x, h, w = level_box
            self.levels[level][y:y + h, x:x + w] = samples
            self._record_box(level, level_box)

    def pyramid_samples(self, box: Box, labels: np.ndarray) -> Iterator[tuple[int, Box, np.ndarray]]:
        """(level, box at that level, values) of every coarser-level pixel that a level-0 block sets.

        Level k holds level-0 pixel (i * 2**k, j * 2**k), so every sample a block owns is inside it.
        """
        y, x, h, w = box
        for k in range(1, len(self.levels)):
            f = 1 << k
            ky0, kx0 = -(-y // f), -(-x // f)
            ky1, kx1 = -(-(y + h) // f), -(-(x + w) // f)
            if ky1 <= ky0 or kx1 <= kx0:
                return
            yield k, (ky0, kx0, ky1 - ky0, kx1 - kx0), labels[ky0 * f - y::f, kx0 * f - x::f][: ky1 - ky0, : kx1 - kx0]
