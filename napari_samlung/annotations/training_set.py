"""Export of reviewed regions as a training set that ``samlung-finetune --data-path`` reads.

Layout (read by :func:`napari_samlung.data.layouts.read_export_set`)::

    SET/manifest.json       format, version, num_classes, class_names, ignore_index, mpp,
                            tile_size, created, tiles: [{image, label, slide, level, x, y,
                            width, height, region}] with the level-0 box of every tile
    SET/images/<id>.png     RGB tile at model resolution
    SET/labels/<id>.png     0 background, 1..N classes, 255 outside reviewed regions

Tiles cover every exported reviewed region: a region smaller than a tile gets one tile centred
on it; larger ones get evenly spaced, slightly overlapping tiles that stay inside the region.
A tile's labels come from every reviewed region it touches. Tile ids are ``<slide>_x<X>_y<Y>``
with the tile's level-0 origin, as in the manifest: stable across exports, so appending a slide
again replaces its tiles.
The whole set is built in a temporary folder beside the target and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np

from napari_samlung.annotations.errors import ExportError
from napari_samlung.data.files import DataError
from napari_samlung.data.layouts import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, read_export_set
from napari_samlung.geometry import Box, intersect
from napari_samlung.results.classmap import ClassMap, now
from napari_samlung.labels import IGNORE

if TYPE_CHECKING:
    from napari_samlung.slide import Slide

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


@dataclass(frozen=True)
class PlannedTile:
    """One tile to export: its id, class-map box (may reach past the map) and source region."""

    name: str
    box: Box
    region: str


@dataclass
class _Source:
    classmap: ClassMap
    slide: Slide
    regions: Sequence[str] | None


def export_training_set(
    classmap: ClassMap,
    slide: Slide,
    out_dir: str | os.PathLike,
    *,
    tile_size: int | None = None,
    regions: Sequence[str] | None = None,
    overwrite: bool = False,
    append: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Export the reviewed regions of one slide (all, or the ids in ``regions``) to ``out_dir``.

    ``tile_size`` defaults to the model's tile size recorded in the class map. An existing set is
    replaced only with ``overwrite``; with ``append`` its tiles are kept (same ids replaced).
    """
    return export_training_sets([(classmap, slide)], out_dir, tile_size=tile_size, overwrite=overwrite,
                                append=append, progress=progress, regions=regions)


def export_training_sets(
    sources: Sequence[tuple[ClassMap, Slide]],
    out_dir: str | os.PathLike,
    *,
    tile_size: int | None = None,
    overwrite: bool = False,
    append: bool = False,
    progress: Progress | None = None,
    regions: Sequence[str] | None = None,
) -> Path:
    """Export the reviewed regions of several slides into one set (see :func:`export_training_set`;
    ``regions`` only applies to a single source)."""
    if not sources:
        raise ExportError("nothing to export: no class maps given")
    if regions is not None and len(sources) > 1:
        raise ExportError("regions can only be chosen when exporting one slide")
    out = Path(out_dir)
    existing = _existing_set(out, overwrite, append)
    items = [_Source(cm, slide, regions) for cm, slide in sources]
    header = _header(items, tile_size, existing)
    size = header["tile_size"]

    plans = [(item, plan_tiles(item.classmap, _slide_name(item.slide), size, item.regions)) for item in items]
    _check_names(plans, existing)
    total = sum(len(tiles) for _, tiles in plans)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        records: dict[str, dict[str, Any]] = {}
        if existing is not None:
            records = _carry_over(existing, out, tmp)
        jobs = [(item, tile, item.classmap.reviewed_boxes(), str(Path(item.slide.path).resolve()))
                for item, tiles in plans for tile in tiles]
        # Reading, resampling and PNG encoding release the GIL: tiles are made in parallel.
        pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        try:
            made = pool.map(lambda job: _write_tile(tmp, *job), jobs)
            for done, (job, record) in enumerate(zip(jobs, made), start=1):
                records[job[1].name] = record
                if progress is not None:
                    progress(done, total)
        finally:
            pool.shutdown(cancel_futures=True)
        manifest = {**header, "created": now(), "tiles": list(records.values())}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def plan_tiles(classmap: ClassMap, slide_name: str, tile_size: int, regions: Sequence[str] | None = None) -> list[PlannedTile]:
    """The tiles that cover the reviewed regions (all, or the ids in ``regions``), without repeats."""
    records = classmap.reviewed
    if not records:
        raise ExportError(f"{classmap.root}: no reviewed regions (review and apply a region first)")
    if regions is not None:
        wanted = set(regions)
        missing = sorted(wanted - {r["id"] for r in records})
        if missing:
            raise ExportError(f"{classmap.root}: no reviewed region with id {', '.join(missing)}")
        records = [r for r in records if r["id"] in wanted]
    height, width = classmap.shape
    tiles: dict[str, PlannedTile] = {}
    for record in records:
        y, x, h, w = record["box"]
        for ty in _starts(y, h, tile_size, height):
            for tx in _starts(x, w, tile_size, width):
                y0, x0, _, _ = level0_box(classmap, (ty, tx, tile_size, tile_size))
                name = f"{slide_name}_x{x0}_y{y0}"
                tiles.setdefault(name, PlannedTile(name, (ty, tx, tile_size, tile_size), record["id"]))
    return list(tiles.values())


def level0_box(classmap: ClassMap, box: Box) -> Box:
    """A class-map box in level-0 slide pixels, as the manifest records it."""
    s = classmap.scale
    y, x, h, w = box
    y0, x0 = round(y * s), round(x * s)
    return y0, x0, round((y + h) * s) - y0, round((x + w) * s) - x0


def tile_labels(classmap: ClassMap, box: Box, reviewed: Sequence[Box]) -> np.ndarray:
    """Class-map labels in ``box``, :data:`IGNORE` wherever no reviewed region covers it."""
    labels = np.full(box[2:], IGNORE, dtype=np.uint8)
    for region in reviewed:
        part = intersect(box, region)
        if part is not None:
            y, x = part[0] - box[0], part[1] - box[1]
            labels[y:y + part[2], x:x + part[3]] = classmap.read(part)
    return labels


def _starts(start: int, length: int, tile: int, limit: int) -> list[int]:
    """Tile origins along one axis covering [start, start + length) inside [0, limit)."""
    if length <= tile:
        centred = start - (tile - length) // 2
        return [min(max(centred, 0), max(limit - tile, 0))]
    count = math.ceil(length / tile)
    return [start + round(i * (length - tile) / (count - 1)) for i in range(count)]


def _slide_name(slide: Slide) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", slide.name).strip("._") or "slide"


def _header(items: Sequence[_Source], tile_size: int | None, existing: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest fields shared by all tiles; the sources (and an appended set) must agree."""
    first = items[0].classmap
    for item in items:
        cm, slide = item.classmap, item.slide
        recorded = tuple(cm.meta.get("slide", {}).get("shape") or ())
        if recorded and tuple(slide.shape) != recorded:
            raise ExportError(f"{slide.path}: slide of size {slide.shape[1]} x {slide.shape[0]}, but the class map in "
                              f"{cm.root} was made from one of {recorded[1]} x {recorded[0]}")
        if cm.num_classes != first.num_classes:
            raise ExportError(f"{cm.root}: {cm.num_classes} classes, but {first.root} has {first.num_classes}")
    if tile_size is None:
        sizes = {item.classmap.meta.get("model", {}).get("tile") for item in items}
        if existing is not None:
            tile_size = existing["tile_size"]
        elif len(sizes) == 1 and None not in sizes:
            tile_size = sizes.pop()
        else:
            raise ExportError(f"{first.root}: no single model tile size recorded; give a tile size")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 16:
        raise ExportError(f"tile size must be an integer of at least 16, got {tile_size!r}")
    mpps = [m for m in (item.classmap.mpp for item in items) if m is not None]
    if existing and existing.get("mpp") is not None:
        mpps.insert(0, existing["mpp"])
    for mpp in mpps:
        if not math.isclose(mpp, mpps[0], rel_tol=0.01):
            raise ExportError(f"the slides are at different resolutions ({mpps[0]:g} and {mpp:g} microns per pixel); "
                              "export them into separate sets")
    header = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "num_classes": first.num_classes,
              "class_names": first.meta.get("class_names"), "ignore_index": IGNORE,
              "mpp": mpps[0] if mpps else None, "tile_size": tile_size}
    if existing is not None:
        for key in ("num_classes", "tile_size"):
            if existing.get(key) != header[key]:
                raise ExportError(f"cannot append: the set has {key} {existing.get(key)}, this export {header[key]}")
    return header


def _existing_set(out: Path, overwrite: bool, append: bool) -> dict[str, Any] | None:
    """The manifest of the set at ``out`` to append to (None when starting afresh); refusals."""
    if overwrite and append:
        raise ExportError("give either overwrite or append, not both")
    if not out.exists():
        return None
    if not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    is_set = (out / MANIFEST_NAME).is_file()
    if not is_set and any(out.iterdir()):
        raise ExportError(f"{out}: a folder that is not a training set is there; choose another output")
    if not is_set:
        return None
    if append:
        try:
            read_export_set(out)
            return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (DataError, OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot append to {out}: {exc}") from None
    if not overwrite:
        raise ExportError(f"{out}: a training set is already there (overwrite to replace it, or append to add to it)")
    return None


def _check_names(plans: Sequence[tuple[_Source, list[PlannedTile]]], existing: dict[str, Any] | None) -> None:
    """Two different slides must not share a name: their tile ids would collide."""
    owners: dict[str, str] = {}
    for tile in (existing or {}).get("tiles", []):
        owners.setdefault(Path(tile["image"]).stem.rsplit("_x", 1)[0], tile.get("slide", ""))
    for item, _ in plans:
        name, path = _slide_name(item.slide), str(Path(item.slide.path).resolve())
        if owners.setdefault(name, path) != path:
            raise ExportError(f"{path}: another slide named {name!r} ({owners[name]}) is in the set; "
                              "rename one of them or export into separate sets")


def _carry_over(manifest: dict[str, Any], old: Path, tmp: Path) -> dict[str, dict[str, Any]]:
    """Hard-link (or copy) the tiles of the set being appended to into the new folder."""
    records = {}
    for tile in manifest["tiles"]:
        for key in ("image", "label"):
            source, target = old / tile[key], tmp / tile[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        records[Path(tile["image"]).stem] = tile
    return records


def _write_tile(tmp: Path, item: _Source, tile: PlannedTile, reviewed: Sequence[Box], slide_path: str) -> dict[str, Any]:
    cm, s = item.classmap, item.classmap.scale
    y, x, h, w = tile.box
    image = np.asarray(item.slide.read_scaled(y * s, x * s, h, w, s))
    if image.shape != (h, w, 3):
        raise ExportError(f"{item.slide.path}: read a tile of shape {image.shape}, expected {(h, w, 3)}")
    image_path, label_path = f"images/{tile.name}.png", f"labels/{tile.name}.png"
    _write_png(tmp / image_path, image)
    _write_png(tmp / label_path, tile_labels(cm, tile.box, reviewed))
    y0, x0, h0, w0 = level0_box(cm, tile.box)
    return {"image": image_path, "label": label_path, "slide": slide_path, "level": 0,
            "x": x0, "y": y0, "width": w0, "height": h0, "region": tile.region}


def _write_png(path: Path, array: np.ndarray) -> None:
    # zlib level 1: three times faster than the default for 2-3% larger files. A new file, not
    # written through: a hard link carried over from an appended set keeps the old set intact.
    data = imagecodecs.png_encode(np.ascontiguousarray(array), level=1)
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _replace_folder(tmp: Path, target: Path) -> None:
    """Put ``tmp`` at ``target``, moving an existing folder aside first and deleting it after.

    Two renames: a crash between them leaves the previous set whole as ``.<name>.old-*``.
    """
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
