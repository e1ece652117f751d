"""Annotation import speed: GeoJSON polygons and label images into a class map. Prints figures.

Builds a class map of SIZE x SIZE pixels (scale 2) holding random tumour blobs with holes, exports
it whole (GeoJSON with the default 1 px simplification, and the label TIFF), then imports each
into fresh results and reports megapixels of reviewed region per second (check + rasterise +
write, pyramid included). A third case imports CELLS small polygons, as QuPath writes cell
detections, over the same area.

Usage: python benchmarks/import_speed.py [--size 4096] [--blobs 300] [--cells 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.annotations.importing import Target, create_unreviewed, read_annotations, write_imported
from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.results.classmap import ClassMap

SCALE = 2.0


def blobs(size: int, count: int, seed: int = 0) -> np.ndarray:
    """Random discs of tumour (1), some with a background hole."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(count):
        cy, cx = rng.integers(0, size, 2)
        radius = int(rng.integers(10, max(11, size // 30)))
        y0, y1, x0, x1 = max(0, cy - radius), min(size, cy + radius), max(0, cx - radius), min(size, cx + radius)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        labels[y0:y1, x0:x1][d2 < radius**2] = 1
        if rng.random() < 0.3:
            labels[y0:y1, x0:x1][d2 < (radius // 3) ** 2] = 0
    return labels


def results(root: Path, size: int, labels: np.ndarray | None = None) -> ClassMap:
    slide = {"path": "/bench/slide.svs", "name": "slide", "format": "aperio-svs",
             "shape": [int(size * SCALE)] * 2, "mpp": 0.25}
    target = Target((size, size), SCALE, 1, {"0": "Background", "1": "Tumor"}, (int(size * SCALE),) * 2, mpp=0.5)
    cm = create_unreviewed(root, target, slide=slide, model={"preset": "vit_b", "mpp": 0.5, "num_classes": 1})
    if labels is not None:
        cm.write((0, 0, size, size), labels)
        cm.add_reviewed((0, 0, size, size))
    return cm


def timed_import(path: Path, root: Path, size: int) -> tuple[float, float, str]:
    """Seconds to check and to write ``path`` into fresh results of the same geometry; its summary."""
    cm = results(root, size)
    target = Target.of(cm)
    start = time.perf_counter()
    imported = read_annotations(path, target)
    checked = time.perf_counter()
    write_imported(cm, imported, what="benchmark")
    return checked - start, time.perf_counter() - checked, imported.message(target)


def cells_geojson(path: Path, size: int, count: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    extent = size * SCALE
    features = [{"type": "Feature", "properties": {"objectType": "annotation",
                                                   "classification": {"name": "Reviewed region"}},
                 "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [extent, 0], [extent, extent], [0, extent],
                                                                  [0, 0]]]}}]
    angles = np.linspace(0, 2 * np.pi, 9)
    for cx, cy in rng.uniform(20, extent - 20, (count, 2)):
        r = rng.uniform(4, 12)
        ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
        ring[-1] = ring[0]
        features.append({"type": "Feature", "properties": {"objectType": "detection",
                                                           "classification": {"name": "Tumor"}},
                         "geometry": {"type": "Polygon", "coordinates": [ring.round(2).tolist()]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="class-map side in pixels (default 4096)")
    parser.add_argument("--blobs", type=int, default=300)
    parser.add_argument("--cells", type=int, default=20000)
    args = parser.parse_args()
    mpix = args.size**2 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = results(tmp / "source.samlung", args.size, blobs(args.size, args.blobs))
        geojson, tiff = tmp / "map.geojson", tmp / "map.tif"
        start = time.perf_counter()
        collection = classmap_to_geojson(source, geojson, reviewed_only=True, reviewed_boxes=True)
        print(f"export GeoJSON: {time.perf_counter() - start:.1f} s, {geojson.stat().st_size / 1e6:.1f} MB, "
              f"{sum(len(f['geometry']['coordinates']) for f in collection['features'])} polygons")
        classmap_to_label_tiff(source, tiff)
        cells_geojson(tmp / "cells.geojson", args.size, args.cells)
        cases = (("GeoJSON, whole-map export", geojson), ("label TIFF", tiff),
                 (f"GeoJSON, {args.cells} cell polygons", tmp / "cells.geojson"))
        for number, (name, path) in enumerate(cases):
            check, write, message = timed_import(path, tmp / f"import-{number}.samlung", args.size)
            total = check + write
            print(f"{name}: {mpix:.1f} MPix reviewed; check {check:.1f} s, rasterise + write {write:.1f} s, "
                  f"{mpix / total:.1f} MPix/s ({message})")


if __name__ == "__main__":
    main()
