"""Label images in: the project's label TIFF, or a PNG/TIFF mask, sampled onto the class map.

The image's scale is decided by its size, matched (within a few pixels, the rounding of pyramid
levels) against the sizes it could have: the class map's (model resolution), any pyramid level
of the slide, or, for the project's own label TIFF, the class-map size its description records.
Each class-map pixel takes the image pixel under its centre (nearest neighbour), read lazily from
tiled TIFFs.

Values: class indices (0 background, 1 tumor, ..., 255 not reviewed), except that an image of
only 0 and 255 other than the project's label TIFF is a 0/255 mask whose 255 is tumor (for a
binary model; refused for more classes), by the training data's rules
(:func:`napari_samlung.data.pairs.decode_label`). Reviewed regions are the bounding boxes of the
labelled (not 255) parts; pixels of 255 inside them stay "not reviewed".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr
from scipy import ndimage

from napari_samlung.annotations.importing import AnnotationImportError, Imported, Target, merge_boxes
from napari_samlung.annotations.label_tiff import LabelTiffInfo, read_label_tiff_info
from napari_samlung.data.files import DataError, read_gray
from napari_samlung.data.layouts import INDEXED, RESEARCH
from napari_samlung.data.pairs import decode_label
from napari_samlung.geometry import Box
from napari_samlung.labels import IGNORE

#: How far (pixels per side) an image's size may be from a size it matches.
SIZE_TOLERANCE = 3
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class _Match:
    name: str  # "the class map", "slide level 2", ...
    shape: tuple[int, int]
    exact: bool  # the class map's own grid: no resampling


def read_label_image(path: str | os.PathLike, target: Target) -> Imported:
    """Check a label image against ``target`` and return its labels and reviewed regions.

    Raises :class:`AnnotationImportError` naming ``path`` for an unreadable image, a size that
    matches none of the sizes it could have (all listed), values that are not classes of the map,
    or an image with no labelled pixel.
    """
    path = Path(path)
    pixels, info = _open(path)
    shape = tuple(int(s) for s in pixels.shape[:2])
    own = _own_scale(path, info, target)
    match = _match(path, shape, target, own)
    if match.exact:
        sampled = np.asarray(pixels[...])
    else:
        rows = _nearest(target.shape[0], target.scale, target.slide_shape[0], shape[0])
        cols = _nearest(target.shape[1], target.scale, target.slide_shape[1], shape[1])
        sampled = (pixels.get_orthogonal_selection((rows, cols)) if isinstance(pixels, zarr.Array)
                   else pixels[np.ix_(rows, cols)])
    sampled = np.asarray(sampled, dtype=np.uint8)
    mask = own is None and set(np.unique(sampled).tolist()) <= {0, IGNORE}  # a 0/255 mask: 255 is tumor
    try:
        labels = decode_label(sampled, RESEARCH if mask else INDEXED, target.num_classes, path)
    except DataError as exc:
        raise AnnotationImportError(str(exc)) from None
    regions = _labelled_regions(labels)
    if not regions:
        raise AnnotationImportError(f"{path}: no labelled pixels (every pixel is {IGNORE}, not reviewed)")
    notes = [] if match.exact else [f"{path.name}: {shape[1]} x {shape[0]} px read as {match.name} "
                                    f"({match.shape[1]} x {match.shape[0]}), sampled at the class map's resolution"]
    classes = ", ".join(target.class_names.get(str(v), str(v)) for v in np.unique(labels) if v != IGNORE)
    summary = f"label image ({classes or 'no classes'})"
    return Imported(path, regions, lambda box: labels[box[0]:box[0] + box[2], box[1]:box[1] + box[3]],
                    summary, notes)


def _open(path: Path) -> tuple[Any, LabelTiffInfo | None]:
    """The image's level-0 pixels (a lazy zarr array for TIFF, numpy otherwise) and, for the
    project's own label TIFF, what it says of itself."""
    if not path.is_file():
        raise AnnotationImportError(f"{path}: no such file")
    if path.suffix.lower() not in _TIFF:
        try:
            return read_gray(path), None
        except DataError as exc:
            raise AnnotationImportError(str(exc)) from None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            info = read_label_tiff_info(tif)
            dtype, shape = series.dtype, series.levels[0].shape
        if len(shape) != 2:
            raise AnnotationImportError(f"{path}: expected a single-channel label image, found shape {shape}")
        if dtype != np.uint8 and dtype != np.bool_:
            raise AnnotationImportError(f"{path}: expected 8-bit labels, found {dtype}")
        return zarr.open_array(tifffile.imread(path, aszarr=True, level=0), mode="r"), info
    except AnnotationImportError:
        raise
    except Exception as exc:  # tifffile raises several types for damaged or foreign files
        raise AnnotationImportError(f"{path}: not a readable TIFF ({exc})") from None


def _own_scale(path: Path, info: LabelTiffInfo | None, target: Target) -> float | None:
    """The class-map scale the project's label TIFF records, or None for another image; a label
    TIFF of another slide (another level-0 size) is refused."""
    if info is None or info.scale is None or info.slide_shape is None:
        return None
    scale, (h0, w0) = info.scale, info.slide_shape
    if (h0, w0) != tuple(target.slide_shape):
        raise AnnotationImportError(f"{path}: a label TIFF of a slide of {w0} x {h0} px, but this slide is "
                                    f"{target.slide_shape[1]} x {target.slide_shape[0]} px at level 0")
    return scale


def _match(path: Path, shape: tuple[int, ...], target: Target, own: float | None) -> _Match:
    """The size ``shape`` is (closest within :data:`SIZE_TOLERANCE` px), else an error listing them."""
    candidates = [_Match("the class map", tuple(target.shape), True)]
    if own is not None and not np.isclose(own, target.scale):
        h0, w0 = target.slide_shape
        candidates.append(_Match("the label TIFF's class map", (round(h0 / own), round(w0 / own)), False))
    candidates += [_Match(f"slide level {k}", tuple(s), False) for k, s in enumerate(target.slide_levels)]
    if tuple(shape) == tuple(target.shape):
        return candidates[0]
    close = [c for c in candidates if max(abs(a - b) for a, b in zip(shape, c.shape)) <= SIZE_TOLERANCE]
    if not close:
        sizes = ", ".join(f"{c.shape[1]} x {c.shape[0]} ({c.name})" for c in candidates)
        raise AnnotationImportError(f"{path}: its size {shape[1]} x {shape[0]} matches none of the sizes a label "
                                    f"image of this slide can have: {sizes}")
    best = min(close, key=lambda c: sum(abs(a - b) for a, b in zip(shape, c.shape)))
    return _Match(best.name, best.shape, False)


def _nearest(count: int, scale: float, level0: int, size: int) -> np.ndarray:
    """Index of the image pixel under each class-map pixel's centre, along one axis: the image
    spans the slide's level-0 extent with ``size`` pixels."""
    centres = (np.arange(count) + 0.5) * scale
    return np.clip(np.floor(centres * size / level0).astype(np.int64), 0, size - 1)


def _labelled_regions(labels: np.ndarray) -> list[Box]:
    """Bounding boxes of the labelled parts (8-connected), overlapping ones joined."""
    components, _ = ndimage.label(labels != IGNORE, structure=np.ones((3, 3), bool))
    return merge_boxes([(s[0].start, s[1].start, s[0].stop - s[0].start, s[1].stop - s[1].start)
                        for s in ndimage.find_objects(components) if s is not None])
