"""Pyramidal label TIFF of a class map: tiled, zlib (lossless), nearest-neighbour levels.

The pixels are the class map's (model resolution), streamed from level 0 by the slide writer,
so a whole-slide map never sits in memory. The resolution tags carry the class map's exact
microns per pixel along each axis: the slide's level-0 extent over the map's size (the map's size
is rounded, so ``scale`` alone would drift by up to a pixel across the slide), so that a viewer
placing images by their physical size overlays it on the slide in place. The image description
says what the values mean and the slide's level-0 size.
A path ending in ``.ome.tif``/``.ome.tiff`` gets an OME-TIFF (SubIFD levels), any other a
generic pyramidal TIFF (reduced levels as following pages).

Only the chunks the class map has stored are read (the others hold its fill value, background):
a huge map of which a small region was segmented exports in time and memory for that region.
Tiles are 256 px, larger where level 0 would otherwise need more than MAX_TILES of them (TIFF
keeps an offset and a byte count for every tile, empty or not).
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.ome import class_names
from napari_samlung.labels import IGNORE, class_name
from napari_samlung.slide.tiff_writer import Progress, Sparse, write_pyramidal_tiff

TILE = 256
MAX_TILE = 1024  # the class map's own chunk side
MAX_TILES = 1 << 20  # level-0 tiles before the tile side doubles: 12-16 MB of tile table
MARKER = "napari-samlung class map."  # how the description starts: a label TIFF of this project


@dataclass(frozen=True)
class LabelTiffInfo:
    """What a label TIFF's description says (see :func:`label_description`)."""

    class_names: dict[int, str]  # label value -> class name, "Not reviewed" included
    scale: float | None  # level-0 slide pixels per label pixel
    slide_shape: tuple[int, int] | None  # the slide's level-0 (height, width)


def label_description(classmap: ClassMap) -> str:
    """One ASCII line naming the label values, the resolution and the source slide."""
    classes = ", ".join(f"{v} = {name}" for v, name in class_names(classmap.meta).items() if v != IGNORE)
    mpp = classmap.mpp
    slide = (classmap.meta.get("slide") or {}).get("path", "unknown")
    text = (f"{MARKER} Values: {classes}, {IGNORE} = not reviewed (ignore). "
            f"One pixel = {classmap.scale:g} level-0 slide pixels{_slide_size(classmap)}"
            + (f" = {mpp:g} microns." if mpp is not None else " (microns per pixel unknown).")
            + f" Slide: {slide}")
    return text.encode("ascii", "backslashreplace").decode("ascii")


def read_label_description(text: str) -> LabelTiffInfo | None:
    """The meaning of a description :func:`label_description` wrote, or None for any other text."""
    if not text.startswith(MARKER):
        return None
    values = re.search(r"Values: (.*?)\. One pixel = ", text)
    names = {int(v): n for v, n in re.findall(r"(\d+) = (.*?)(?=, \d+ = |$)", values.group(1))} if values else {}
    names[IGNORE] = class_name(IGNORE)
    scale = re.search(r"One pixel = ([0-9.eE+-]+) level-0 slide pixels", text)
    size = re.search(r"\(slide level 0: (\d+) x (\d+) px\)", text)
    return LabelTiffInfo(dict(sorted(names.items())), float(scale.group(1)) if scale else None,
                         (int(size.group(2)), int(size.group(1))) if size else None)


def read_label_tiff_info(tif) -> LabelTiffInfo | None:
    """What an open ``tifffile.TiffFile`` says of itself if it is this project's label TIFF (plain,
    or OME-TIFF with the description in its first Image), else None."""
    text = tif.pages[0].description or ""
    if tif.is_ome:
        image = next((el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("}Image")), None)
        found = None if image is None else next((el for el in image if el.tag.endswith("}Description")), None)
        text = (found.text or "") if found is not None else ""
    return read_label_description(text)


def _slide_size(classmap: ClassMap) -> str:
    shape = (classmap.meta.get("slide") or {}).get("shape")
    return f" (slide level 0: {shape[1]} x {shape[0]} px)" if shape else ""


def exact_mpp(classmap: ClassMap) -> tuple[float, float] | None:
    """(y, x) microns per class-map pixel from the slide's level-0 extent, or None when unknown."""
    slide = classmap.meta.get("slide") or {}
    if slide.get("mpp") is None:
        return None
    if not slide.get("shape"):
        return (classmap.mpp,) * 2
    (h0, w0), (h, w) = slide["shape"], classmap.shape
    return float(slide["mpp"]) * h0 / h, float(slide["mpp"]) * w0 / w


def label_tile(shape: tuple[int, int]) -> int:
    """The tile side for a label TIFF of ``shape``: TILE, doubled while level 0 would need more than
    MAX_TILES tiles (up to MAX_TILE)."""
    tile = TILE
    while tile < MAX_TILE and math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile) > MAX_TILES:
        tile *= 2
    return tile


def stored_part(classmap: ClassMap) -> Sparse:
    """Where level 0 of ``classmap`` can hold anything but its fill value: its stored chunks."""
    level0 = classmap.levels[0]
    ch, cw = level0.chunks
    return Sparse(int(level0.fill_value), [(cy * ch, cx * cw, ch, cw) for cy, cx in classmap.stored_chunks(0)])


def classmap_to_label_tiff(
    classmap: ClassMap, path: str | os.PathLike, *, tile: int | None = None, progress: Progress | None = None
) -> Path:
    """Write the class map as a pyramidal label TIFF at ``path`` (atomically); returns the path.
    ``tile``: the tile side (default :func:`label_tile`)."""
    path = Path(path)
    flavor = "ome" if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else "tiff"
    return write_pyramidal_tiff(path, classmap.levels[0], mpp=exact_mpp(classmap),
                                tile=label_tile(classmap.shape) if tile is None else tile, compression="zlib",
                                kind="labels", flavor=flavor, description=label_description(classmap),
                                progress=progress, sparse=stored_part(classmap))
