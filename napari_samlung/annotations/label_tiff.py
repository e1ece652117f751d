"""Pyramidal label TIFF of a class map: tiled, zlib (lossless), nearest-neighbour levels.

The pixels are the class map's (model resolution), streamed from level 0 by the slide writer,
so a whole-slide map never sits in memory. The resolution tags carry the class map's exact
microns per pixel along each axis: the slide's level-0 extent over the map's size (the map's size
is rounded, so ``scale`` alone would drift by up to a pixel across the slide), so that a viewer
placing images by their physical size overlays it on the slide in place. The image description
says what the values mean and the slide's level-0 size.
A path ending in ``.ome.tif``/``.ome.tiff`` gets an OME-TIFF (SubIFD levels), any other a
generic pyramidal TIFF (reduced levels as following pages).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_samlung.results.classmap import ClassMap
from napari_samlung.labels import IGNORE, class_name
from napari_samlung.slide.tiff_writer import Progress, write_pyramidal_tiff


def label_description(classmap: ClassMap) -> str:
    """One ASCII line naming the label values, the resolution and the source slide."""
    classes = ", ".join(f"{v} = {classmap.meta.get('class_names', {}).get(str(v)) or class_name(v, classmap.num_classes)}"
                        for v in range(classmap.num_classes + 1))
    mpp = classmap.mpp
    slide = (classmap.meta.get("slide") or {}).get("path", "unknown")
    text = (f"napari-samlung class map. Values: {classes}, {IGNORE} = not reviewed (ignore). "
            f"One pixel = {classmap.scale:g} level-0 slide pixels{_slide_size(classmap)}"
            + (f" = {mpp:g} microns." if mpp is not None else " (microns per pixel unknown).")
            + f" Slide: {slide}")
    return text.encode("ascii", "backslashreplace").decode("ascii")


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


def classmap_to_label_tiff(
    classmap: ClassMap, path: str | os.PathLike, *, tile: int = 256, progress: Progress | None = None
) -> Path:
    """Write the class map as a pyramidal label TIFF at ``path`` (atomically); returns the path."""
    path = Path(path)
    flavor = "ome" if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else "tiff"
    return write_pyramidal_tiff(path, classmap.levels[0], mpp=exact_mpp(classmap), tile=tile, compression="zlib",
                                kind="labels", flavor=flavor, description=label_description(classmap),
                                progress=progress)
