"""QuPath-compatible GeoJSON of a class map: one MultiPolygon annotation per class.

QuPath (File > Import objects) reads a ``FeatureCollection`` whose features carry a Polygon or
MultiPolygon ``geometry``, ``properties.objectType: "annotation"`` and
``properties.classification: {"name", "color"}``. Coordinates are level-0 slide pixels (x right,
y down). Rings follow the GeoJSON right-hand rule computed on the numbers as written: exteriors
have positive shoelace area (counter-clockwise), holes negative.

Tracing works on connected components (4-connected, matching the contour convention of
``skimage.measure.find_contours`` at 0.5 with the background fully connected): each component's
outer contour is its exterior ring and its other contours are its holes, so holes are never lost
or given to the wrong polygon. Rings run along pixel edges (exact areas), except that a corner
where two pixels touch only diagonally is cut by half a pixel, so no ring touches itself.
Simplification (Douglas-Peucker, ~1 px) keeps files small; it rarely but possibly lets a thin
hole touch its exterior, which QuPath tolerates.

Measurements go where QuPath (0.4 and later) reads and writes them, ``properties.measurements``,
a JSON object of name -> number: every class feature its own area (``Area µm^2``, of the polygons
as written; only when the slide's microns per pixel are known), and the tumour feature of a
whole-map export the slide's tumour burden (:mod:`~napari_samlung.results.burden`, exact on the
class map's finest level) while the class map's stored figures are current.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure

from napari_samlung.geometry import Box, intersect
from napari_samlung.results import burden
from napari_samlung.results.classmap import ClassMap
from napari_samlung.files import remove_leftovers, write_json_atomic
from napari_samlung.labels import TUMOR, class_color, class_name

#: Longest side, in pixels, of the image traced by default: bounds memory and time on whole slides.
MAX_TRACE_SIZE = 8192
REVIEWED_NAME = "Reviewed region"
REVIEWED_COLOR = (250, 200, 0)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

Ring = np.ndarray  # (N, 2) float (x, y), closed (last point equals the first)
Polygon = list  # [exterior Ring, hole Ring, ...]


def trace_mask(mask: np.ndarray, tolerance: float = 1.0) -> list[Polygon]:
    """Polygons of the True pixels of ``mask``, in pixel-boundary coordinates of the mask.

    Pixel (r, c) covers [c, c + 1) x [r, r + 1). Rings are simplified with Douglas-Peucker at
    ``tolerance`` pixels (0 keeps every vertex); a ring that would collapse keeps its vertices.
    """
    components, _ = ndimage.label(mask, structure=_FOUR_CONNECTED, output=np.int32)
    polygons = []
    for index, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None:
            continue
        piece = np.pad(components[found] == index, 1)
        contours = measure.find_contours(piece.view(np.uint8), 0.5)
        rings = [_simplify(_pixel_edges(_to_xy(c, found)), tolerance) for c in contours]
        areas = [_signed_area(r) for r in rings]
        outer = int(np.argmax(np.abs(areas)))
        polygon = [_oriented(rings[outer], areas[outer], positive=True)]
        polygon += [_oriented(r, a, positive=False) for i, (r, a) in enumerate(zip(rings, areas)) if i != outer]
        polygons.append(polygon)
    return polygons


def labels_to_features(
    labels: np.ndarray,
    num_classes: int,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    pixel_size: float = 1.0,
    tolerance: float = 1.0,
    class_names: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath annotation feature per class present in ``labels`` (values 1..num_classes).

    Output coordinates are ``origin + pixel_boundary * pixel_size`` with ``origin`` as (y, x).
    """
    polygons = {value: trace_mask(labels == value, tolerance) for value in range(1, num_classes + 1)}
    transform = (origin, pixel_size)
    return _class_features({v: [(p, transform) for p in ps] for v, ps in polygons.items()}, num_classes, class_names)


def classmap_to_geojson(
    classmap: ClassMap,
    path: str | os.PathLike | None = None,
    *,
    level: int | None = None,
    regions: Iterable[Box] | None = None,
    reviewed_only: bool = False,
    reviewed_boxes: bool = False,
    max_size: int = MAX_TRACE_SIZE,
    tolerance: float = 1.0,
) -> dict[str, Any]:
    """The class map as a GeoJSON ``FeatureCollection`` in level-0 slide pixels, written to
    ``path`` atomically unless it is None.

    Traces the whole map, or only inside ``regions`` (class-map boxes) or the reviewed regions
    (``reviewed_only``). Each area is traced on pyramid level ``level``, or by default on the
    finest level on which it spans at most ``max_size`` pixels per side, so a whole-slide map is
    never loaded at full resolution. Memory is about 7 bytes per traced pixel, plus 10 per pixel
    of the largest object's bounding box (``find_contours`` works in float64): at most about
    1.2 GB for a 8192 x 8192 trace filled by one object. ``reviewed_boxes`` adds each reviewed
    region as a rectangle annotation named after its id. The temporary files of earlier writes of
    ``path`` that were killed are removed.
    """
    if reviewed_only:
        if regions is not None:
            raise ValueError("give either regions or reviewed_only, not both")
        regions = classmap.reviewed_boxes()
        if not regions:
            raise ValueError(f"{classmap.root}: no reviewed regions to export")
    if level is not None and not 0 <= level < len(classmap.levels):
        raise ValueError(f"level {level} does not exist (the class map has levels 0..{len(classmap.levels) - 1})")
    areas = [[(0, 0, *classmap.shape)]] if regions is None else _groups(
        [classmap.clip(tuple(int(v) for v in box)) for box in regions])
    traced: dict[int, list] = {value: [] for value in range(1, classmap.num_classes + 1)}
    for group in areas:
        k = _trace_level(_bounding_box(group), len(classmap.levels), max_size) if level is None else level
        labels, (ky0, kx0) = _read_inside(classmap, group, k)
        size = 2**k * classmap.scale
        transform = ((ky0 * size, kx0 * size), size)
        for value in traced:
            traced[value] += [(p, transform) for p in trace_mask(labels == value, tolerance)]
    slide_mpp = (classmap.meta.get("slide") or {}).get("mpp")
    figures = burden.stored(classmap) if regions is None else None
    features = _class_features(traced, classmap.num_classes, classmap.meta.get("class_names"), slide_mpp,
                               {TUMOR: burden_measurements(figures)} if figures is not None else None)
    if reviewed_boxes:
        features += [_rectangle_feature(classmap, record) for record in classmap.reviewed]
    collection = {"type": "FeatureCollection", "features": features}
    if path is not None:
        remove_leftovers(path)
        write_json_atomic(path, collection)
    return collection


# -- tracing helpers ------------------------------------------------------------------------------
def export_geojson(root: str | os.PathLike, path: str | os.PathLike, **options: Any) -> None:
    """:func:`classmap_to_geojson` of the results at ``root``, written to ``path``: a function of
    paths, so that another process can run it (the widget traces in a child process)."""
    classmap_to_geojson(ClassMap.open(root), path, **options)


def _to_xy(contour: np.ndarray, found: tuple[slice, slice]) -> Ring:
    # find_contours gives (row, col) of the padded piece with pixel centres at integers;
    # pixel-boundary coordinates put them at +0.5.
    ys = contour[:, 0] - 0.5 + found[0].start
    xs = contour[:, 1] - 0.5 + found[1].start
    return np.stack([xs, ys], axis=1)


def _pixel_edges(ring: Ring) -> Ring:
    """The pixel-edge polygon behind a marching-squares ring of a binary mask.

    Every marching-squares vertex is the midpoint of a pixel edge; where the ring turns from a
    horizontal edge to a vertical one, the pixel corner between them is the true vertex. At a
    saddle corner the ring passes twice; there the half-pixel cut stays, so the ring never
    touches itself (valid for JTS/QuPath).
    """
    points, after = ring[:-1], np.roll(ring[:-1], -1, axis=0)
    horizontal = points[:, 1] == np.round(points[:, 1])  # on a horizontal edge: y is an integer
    turns = horizontal != np.roll(horizontal, -1)
    corners = np.where(horizontal[:, None], np.stack([after[:, 0], points[:, 1]], 1),
                       np.stack([points[:, 0], after[:, 1]], 1))
    _, inverse, counts = np.unique(corners[turns], axis=0, return_inverse=True, return_counts=True)
    saddle = np.zeros(len(points), dtype=bool)
    saddle[turns] = counts[inverse.ravel()] > 1
    candidates = np.stack([np.where(saddle[:, None], points, corners), after], axis=1)
    keep = np.stack([turns, saddle], axis=1)
    out = candidates[keep]
    out = out[np.any(out != np.roll(out, 1, axis=0), axis=1)]  # two saddles in a row repeat a point
    return np.concatenate([out, out[:1]])


def _simplify(ring: Ring, tolerance: float) -> Ring:
    if tolerance <= 0:
        return ring
    simple = measure.approximate_polygon(ring, tolerance)
    return simple if len(simple) >= 4 and abs(_signed_area(simple)) > 0 else ring


def _signed_area(ring: Ring) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _oriented(ring: Ring, area: float, positive: bool) -> Ring:
    return ring if (area > 0) == positive else ring[::-1]


# -- class-map helpers ----------------------------------------------------------------------------
def _groups(boxes: Sequence[Box]) -> list[list[Box]]:
    """Boxes gathered into groups that overlap or touch, so polygons of one class never overlap."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        grown = (a[0] - 1, a[1] - 1, a[2] + 2, a[3] + 2)
        for j in range(i):
            if intersect(grown, boxes[j]) is not None:
                parent[root(i)] = root(j)
    groups: dict[int, list[Box]] = {}
    for i, box in enumerate(boxes):
        groups.setdefault(root(i), []).append(box)
    return list(groups.values())


def _bounding_box(boxes: Sequence[Box]) -> Box:
    y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    y1, x1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return y0, x0, y1 - y0, x1 - x0


def _trace_level(box: Box, levels: int, max_size: int) -> int:
    """The finest level on which ``box`` spans at most ``max_size`` pixels (else the coarsest)."""
    for k in range(levels):
        if max(-(-box[2] // 2**k), -(-box[3] // 2**k)) <= max_size:
            return k
    return levels - 1


def _level_range(start: int, length: int, factor: int) -> tuple[int, int]:
    # Level k holds level-0 pixel i * 2**k: the samples that lie inside [start, start + length).
    return -(-start // factor), -(-(start + length) // factor)


def _read_inside(classmap: ClassMap, boxes: Sequence[Box], k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Level-``k`` labels over the boxes' bounding box, zero outside the boxes; and its origin."""
    factor = 2**k
    y, x, h, w = _bounding_box(boxes)
    ky0, ky1 = _level_range(y, h, factor)
    kx0, kx1 = _level_range(x, w, factor)
    labels = classmap.read((ky0, kx0, ky1 - ky0, kx1 - kx0), level=k)
    if len(boxes) > 1:
        inside = np.zeros(labels.shape, dtype=bool)
        for box in boxes:
            by0, by1 = _level_range(box[0], box[2], factor)
            bx0, bx1 = _level_range(box[1], box[3], factor)
            inside[by0 - ky0:by1 - ky0, bx0 - kx0:bx1 - kx0] = True
        labels = np.where(inside, labels, 0)
    return labels, (ky0, kx0)


# -- features -------------------------------------------------------------------------------------
def _coordinates(ring: Ring, transform: tuple[tuple[float, float], float]) -> list[list[float]]:
    (oy, ox), size = transform
    points = np.round(np.stack([ox + ring[:, 0] * size, oy + ring[:, 1] * size], axis=1), 2)
    return points.tolist()


def burden_measurements(figures: burden.Burden) -> dict[str, float]:
    """A slide's tumour burden as QuPath measurements (figures that are unknown are left out)."""
    named = {
        "Tumour area mm^2": figures.tumour_mm2,
        "Tissue area mm^2": figures.tissue_mm2,
        "Tumour % of tissue": None if figures.tumour_fraction is None else 100 * figures.tumour_fraction,
        f"Tumour regions >= {figures.min_region_area_mm2:g} mm^2": figures.regions,
        "Segmented % of tissue": None if figures.segmented_fraction is None else 100 * figures.segmented_fraction,
    }
    return {name: value if isinstance(value, int) else float(f"{value:.7g}")  # 7 digits: tidy, exact enough
            for name, value in named.items() if value is not None}


def _class_features(traced: dict[int, list], num_classes: int, class_names: dict[str, str] | None,
                    slide_mpp: float | None = None,
                    extra: dict[int, dict[str, float]] | None = None) -> list[dict]:
    """One feature per class with polygons; with ``slide_mpp`` (microns per level-0 pixel) each
    carries its area, and ``extra`` adds measurements by class value."""
    features = []
    for value, polygons in traced.items():
        if not polygons:
            continue
        name = (class_names or {}).get(str(value)) or class_name(value, num_classes)
        geometry = {"type": "MultiPolygon",
                    "coordinates": [[_coordinates(r, t) for r in polygon] for polygon, t in polygons]}
        feature = _feature(geometry, name, class_color(value))
        measurements = {}
        if slide_mpp is not None:
            pixels = sum(_signed_area(r) * t[1] ** 2 for polygon, t in polygons for r in polygon)
            measurements["Area µm^2"] = round(pixels * float(slide_mpp) ** 2, 2)
        measurements.update((extra or {}).get(value, {}))
        if measurements:
            feature["properties"]["measurements"] = measurements
        features.append(feature)
    return features


def _rectangle_feature(classmap: ClassMap, record: dict[str, Any]) -> dict[str, Any]:
    y, x, h, w = classmap.to_slide(tuple(record["box"]))
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]  # positive shoelace area
    feature = _feature({"type": "Polygon", "coordinates": [ring]}, REVIEWED_NAME, REVIEWED_COLOR)
    feature["properties"]["name"] = f"{REVIEWED_NAME} {record['id']}"
    return feature


def _feature(geometry: dict[str, Any], name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geometry,
        "properties": {"objectType": "annotation", "classification": {"name": name, "color": list(color)}},
    }
