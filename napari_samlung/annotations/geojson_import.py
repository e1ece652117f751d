"""QuPath GeoJSON in: polygons to class-map labels, region rectangles to reviewed regions.

Reads what QuPath writes (File > Export objects) and what :mod:`.geojson` exports: a
``FeatureCollection``, a bare JSON array of Features, or one Feature; Polygon and MultiPolygon
geometries (holes kept) in level-0 slide pixels; the class in ``properties.classification.name``.
Any ``objectType`` (annotation, detection, cell) is read alike.

- Features classified as the project's reviewed regions ("Reviewed region") or a QuPath class
  starting with "Region" mark reviewed regions (their bounding box). Without any, the annotations'
  bounding box is the reviewed region (the notes say so).
- Class names match the class map's case-insensitively ("Tumour" is "Tumor"); unclassified
  polygons are tumor for a binary model. Later features paint over earlier ones.
- Self-intersecting polygons are repaired with ``shapely.make_valid`` (the notes say how many).
- Rasterisation: a class-map pixel takes a polygon's class when its centre lies inside it
  (``shapely.contains_xy``; blocks inside or outside a polygon are decided whole, by a quadtree),
  which makes an export traced on pixel edges come back exactly.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from napari_samlung.annotations.geojson import REVIEWED_NAME
from napari_samlung.annotations.importing import AnnotationImportError, Imported, Target, merge_boxes
from napari_samlung.geometry import Box
from napari_samlung.labels import IGNORE, TUMOR

REGION_PREFIX = "region"  # QuPath's "Region", "Region*" classes
_POLYGONAL = ("Polygon", "MultiPolygon")
MIN_BLOCK = 32  # pixels a side below which a block's centres are tested one by one


@dataclass(frozen=True)
class _Shape:
    value: int  # label value
    polygon: shapely.Polygon  # level-0 pixels, valid, prepared


@dataclass
class _Contents:
    """What a file's features amount to, before any pixel is set."""

    shapes: list[_Shape] = field(default_factory=list)  # in file order: later ones paint over earlier
    regions: list[Box] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # polygons by class name
    unknown: dict[str, int] = field(default_factory=dict)  # class name -> its first feature's number
    repaired: int = 0
    skipped: int = 0
    unclassified: int = 0


def read_geojson(path: str | os.PathLike, target: Target) -> Imported:
    """Check a GeoJSON file against ``target`` and return its labels and reviewed regions.

    Raises :class:`AnnotationImportError` naming ``path`` for a file that is not JSON or not
    GeoJSON, holds no polygons, reaches outside the slide or names classes the map does not have
    (all of them listed).
    """
    path = Path(path)
    contents = _contents(path, _features(path), target)
    if contents.unknown:
        known = ", ".join(dict.fromkeys(target.class_names.values()))
        listed = ", ".join(f"{n!r} (feature {i})" for n, i in contents.unknown.items())
        raise AnnotationImportError(f"{path}: unknown class name(s) {listed}; the class map's classes are {known}")
    if not contents.shapes and not contents.regions:
        raise AnnotationImportError(f"{path}: no polygons (Polygon or MultiPolygon features) to import")
    shapes, regions = contents.shapes, contents.regions or [_bounding_region(path, contents.shapes, target)]
    classes = ", ".join(f"{n} {c}" for n, c in contents.counts.items())
    summary = f"{len(shapes)} polygon(s)" + (f" ({classes})" if classes else "")
    tree = shapely.STRtree([s.polygon for s in shapes]) if shapes else None
    return Imported(path, merge_boxes(regions), lambda box: _rasterise(box, shapes, tree, target), summary,
                    _notes(path, contents, regions, target))


def _contents(path: Path, features: list[dict[str, Any]], target: Target) -> _Contents:
    """Sort the features into class polygons and reviewed regions, checking each against ``target``."""
    names = _class_lookup(target)
    tumor = target.class_names.get(str(TUMOR), "Tumor")
    found = _Contents()
    for number, (feature, parsed) in enumerate(zip(features, _parse(path, features)), start=1):
        geometry, repaired = _polygonal(parsed)
        found.repaired += repaired
        if geometry is None:
            found.skipped += 1
            continue
        name = _class_of(feature)
        if name is not None and _is_region(name):
            found.regions.append(_region_box(path, number, geometry, target))
            continue
        if name is None and target.num_classes == 1:
            found.unclassified += 1
            value, name = TUMOR, tumor
        else:
            value = names.get(_normal(name), -1) if name is not None else -1
            if value < 0:
                found.unknown.setdefault(name or "(no classification)", number)
                continue
            name = target.class_names.get(str(value), name)
        _check_inside(path, number, geometry, target)
        for polygon in geometry.geoms if geometry.geom_type == "MultiPolygon" else [geometry]:
            shapely.prepare(polygon)
            found.shapes.append(_Shape(value, polygon))
            found.counts[name] += 1
    return found


def _notes(path: Path, contents: _Contents, regions: list[Box], target: Target) -> list[str]:
    """What the user should know about an import: repairs, assumptions, what was left out."""
    notes = []
    if contents.repaired:
        notes.append(f"{path.name}: {contents.repaired} self-intersecting or otherwise invalid polygon(s) "
                     "repaired (shapely make_valid)")
    if contents.skipped:
        notes.append(f"{path.name}: {contents.skipped} feature(s) without polygons (points, lines) ignored")
    if contents.unclassified:
        notes.append(f"{path.name}: {contents.unclassified} unclassified polygon(s) imported as "
                     f"{target.class_names.get(str(TUMOR), 'Tumor')}")
    if not contents.regions:
        y, x, h, w = (v * target.scale for v in regions[0])
        notes.append(f"{path.name}: no reviewed-region rectangles in the file; the annotations' bounding box "
                     f"(x {x:.0f}, y {y:.0f}, {w:.0f} x {h:.0f} level-0 px) is the reviewed region, background "
                     "where no annotation lies")
    outside = _outside(contents.shapes, regions, target)
    if outside:
        notes.append(f"{path.name}: {outside} polygon(s) lie outside every reviewed region and are not imported")
    return notes


# -- reading --------------------------------------------------------------------------------------
def _features(path: Path) -> list[dict[str, Any]]:
    """The features of a GeoJSON file: a FeatureCollection, a list of Features or one Feature."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise AnnotationImportError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise AnnotationImportError(f"{path}: not JSON ({getattr(exc, 'msg', exc)}{where})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection" and isinstance(data.get("features"), list):
        features = data["features"]
    elif kind == "Feature":
        features = [data]
    elif kind in _POLYGONAL:
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationImportError(f"{path}: not GeoJSON (expected a FeatureCollection, a Feature or a list "
                                    "of Features as QuPath writes them)")
    for number, feature in enumerate(features, start=1):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AnnotationImportError(f"{path}: item {number} is not a GeoJSON Feature")
    return features


def _parse(path: Path, features: list[dict[str, Any]]) -> list[shapely.Geometry | None]:
    """Every feature's geometry (None where it has none), parsed by GEOS in one call."""
    raw = [f.get("geometry") if isinstance(f.get("geometry"), dict) else None for f in features]
    try:
        return list(shapely.from_geojson([None if g is None else json.dumps(g) for g in raw]))
    except Exception:  # GEOS names no feature: find the first malformed one
        for number, geometry in enumerate(raw, start=1):
            try:
                shapely.from_geojson(None if geometry is None else json.dumps(geometry))
            except Exception as exc:
                kind = geometry.get("type", "geometry") if isinstance(geometry, dict) else "geometry"
                raise AnnotationImportError(f"{path}: feature {number} has a malformed {kind} "
                                            f"({str(exc).splitlines()[0]})") from None
        raise


def _polygonal(geometry: shapely.Geometry | None) -> tuple[shapely.Geometry | None, bool]:
    """The polygonal part of a geometry, made valid, or None when it has none; and whether it had
    to be repaired."""
    if geometry is None:
        return None, False
    invalid = not geometry.is_valid
    if invalid:
        geometry = shapely.make_valid(geometry)
    if geometry.geom_type in _POLYGONAL:
        return (None if geometry.is_empty else geometry), invalid
    polygons = [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and not p.is_empty]
    polygons += [q for p in shapely.get_parts(geometry) if p.geom_type == "MultiPolygon" for q in p.geoms]
    if not polygons:
        return None, invalid
    return shapely.MultiPolygon(polygons) if len(polygons) > 1 else polygons[0], invalid


def _class_of(feature: dict[str, Any]) -> str | None:
    properties = feature.get("properties") or {}
    classification = properties.get("classification")
    if isinstance(classification, dict):
        classification = classification.get("name")
    return classification if isinstance(classification, str) and classification.strip() else None


def _normal(name: str) -> str:
    return " ".join(name.lower().replace("tumour", "tumor").split())


def _is_region(name: str) -> bool:
    text = _normal(name)
    return text == _normal(REVIEWED_NAME) or text.startswith(REGION_PREFIX)


def _class_lookup(target: Target) -> dict[str, int]:
    names = {_normal(n): int(v) for v, n in target.class_names.items()}
    names.setdefault(_normal("Not reviewed"), IGNORE)
    return names


# -- checks ---------------------------------------------------------------------------------------
def _check_inside(path: Path, number: int, geometry: shapely.Geometry, target: Target) -> None:
    """Refuse coordinates outside the slide; exports reach up to about one class-map pixel past it."""
    h0, w0 = target.slide_shape
    margin = target.scale + 1
    x0, y0, x1, y1 = geometry.bounds
    if x0 < -margin or y0 < -margin or x1 > w0 + margin or y1 > h0 + margin:
        raise AnnotationImportError(
            f"{path}: coordinates outside the slide: feature {number} spans x {x0:.0f}..{x1:.0f}, "
            f"y {y0:.0f}..{y1:.0f}, the slide is {w0} x {h0} px at level 0 (GeoJSON coordinates must be "
            "level-0 pixels)")


def _region_box(path: Path, number: int, geometry: shapely.Geometry, target: Target) -> Box:
    _check_inside(path, number, geometry, target)
    box = target.box_of(*geometry.bounds)
    if box is None:
        raise AnnotationImportError(f"{path}: reviewed region (feature {number}) covers no class-map pixel")
    return box


def _bounding_region(path: Path, shapes: list[_Shape], target: Target) -> Box:
    x0, y0, x1, y1 = shapely.total_bounds([s.polygon for s in shapes])
    box = target.box_of(x0, y0, x1, y1)
    if box is None:
        raise AnnotationImportError(f"{path}: the polygons cover no class-map pixel (too small at the class "
                                    f"map's resolution of {target.scale:g} level-0 px per pixel)")
    return box


def _outside(shapes: list[_Shape], regions: list[Box], target: Target) -> int:
    """How many polygons touch no reviewed region."""
    polygons = np.array([s.polygon for s in shapes], dtype=object)
    touching = np.zeros(len(shapes), dtype=bool)
    for y, x, h, w in regions:
        s = target.scale
        touching |= shapely.intersects(polygons, shapely.box(x * s, y * s, (x + w) * s, (y + h) * s))
    return int((~touching).sum())


# -- rasterising ----------------------------------------------------------------------------------
def _rasterise(box: Box, shapes: list[_Shape], tree: shapely.STRtree | None, target: Target) -> np.ndarray:
    """Labels of a class-map box: background, then each polygon's class at the pixels whose centres
    it contains, in file order."""
    y, x, h, w = box
    labels = np.zeros((h, w), np.uint8)
    if tree is None:
        return labels
    s = target.scale
    for index in sorted(tree.query(shapely.box(x * s, y * s, (x + w) * s, (y + h) * s))):
        shape = shapes[index]
        bx0, by0, bx1, by1 = shape.polygon.bounds
        (r0, r1), (c0, c1) = target.centre_range(by0, by1, 0), target.centre_range(bx0, bx1, 1)
        r0, r1, c0, c1 = max(r0, y), min(r1, y + h), max(c0, x), min(c1, x + w)
        if r1 > r0 and c1 > c0:
            _paint(labels, shape, (r0 - y, r1 - y, c0 - x, c1 - x), (y, x), s)
    return labels


def _paint(labels: np.ndarray, shape: _Shape, cells: tuple[int, int, int, int], origin: tuple[int, int],
           scale: float) -> None:
    """Set ``shape``'s value at the pixels of ``labels[r0:r1, c0:c1]`` whose centres it contains.

    Quadtree: a block whose pixel centres span a rectangle inside the polygon's interior is filled
    whole, one that the polygon does not reach is skipped, and only blocks on its boundary (down
    to MIN_BLOCK pixels a side) test every centre, so the result is exactly ``contains_xy``'s.
    """
    stack = [cells]
    (oy, ox), polygon = origin, shape.polygon
    while stack:
        r0, r1, c0, c1 = stack.pop()
        if min(r1 - r0, c1 - c0) >= 2 * MIN_BLOCK:
            centres = shapely.box((ox + c0 + 0.5) * scale, (oy + r0 + 0.5) * scale,
                                  (ox + c1 - 0.5) * scale, (oy + r1 - 0.5) * scale)
            if shapely.contains_properly(polygon, centres):
                labels[r0:r1, c0:c1] = shape.value
                continue
            if not shapely.intersects(polygon, centres):
                continue
            rm, cm = (r0 + r1) // 2, (c0 + c1) // 2
            stack += [(r0, rm, c0, cm), (r0, rm, cm, c1), (rm, r1, c0, cm), (rm, r1, cm, c1)]
            continue
        ys = ((np.arange(r0, r1) + oy + 0.5) * scale)[:, None]
        xs = ((np.arange(c0, c1) + ox + 0.5) * scale)[None, :]
        labels[r0:r1, c0:c1][shapely.contains_xy(polygon, xs, ys)] = shape.value
