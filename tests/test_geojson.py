"""QuPath GeoJSON export: geometry in level-0 pixels, holes, classes, pyramid levels, regions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from classmap_factory import make_classmap, square_with_hole

from napari_samlung.annotations.geojson import classmap_to_geojson, labels_to_features, trace_mask
from napari_samlung.results.classmap import ClassMap
from napari_samlung.labels import class_color


def shoelace(ring) -> float:
    points = np.asarray(ring, dtype=float)
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def assert_qupath_valid(collection: dict) -> None:
    """The structure QuPath's importer needs, and GeoJSON's ring rules."""
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert isinstance(props["classification"]["name"], str)
        color = props["classification"]["color"]
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        geometry = feature["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        for polygon in polygons:
            for index, ring in enumerate(polygon):
                assert len(ring) >= 4 and ring[0] == ring[-1]
                assert all(len(p) == 2 and all(math.isfinite(v) for v in p) for p in ring)
                area = shoelace(ring)
                assert area > 0 if index == 0 else area < 0  # exterior counter-clockwise, holes clockwise


def test_square_with_hole_round_trips_in_level0_pixels(tmp_path):
    cm = make_classmap(tmp_path / "s.samlung", square_with_hole(), scale=2.0)
    path = tmp_path / "out.geojson"
    returned = classmap_to_geojson(cm, path, tolerance=1.0)
    collection = json.loads(path.read_text())
    assert collection == json.loads(json.dumps(returned))
    assert_qupath_valid(collection)

    (feature,) = collection["features"]
    assert feature["properties"]["classification"] == {"name": "Tumor", "color": list(class_color(1))}
    (polygon,) = feature["geometry"]["coordinates"]
    exterior, hole = polygon
    # rows 20:80, cols 30:110 at scale 2 -> x 60..220, y 40..160 in level-0 pixels
    assert shoelace(exterior) == pytest.approx(160 * 120)
    assert shoelace(hole) == pytest.approx(-(40 * 40))
    xs, ys = np.array(exterior)[:, 0], np.array(exterior)[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (60, 220, 40, 160)
    hx, hy = np.array(hole)[:, 0], np.array(hole)[:, 1]
    assert (hx.min(), hx.max(), hy.min(), hy.max()) == (100, 140, 80, 120)


def test_island_inside_a_hole_is_its_own_polygon_and_areas_are_exact():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 5:55] = True
    mask[15:45, 15:45] = False
    mask[25:35, 25:35] = True  # island in the hole
    yy, xx = np.mgrid[:60, :60]
    blob = np.zeros((60, 60), dtype=bool)
    blob[(yy - 30) ** 2 + (xx - 30) ** 2 < 20**2] = True
    polygons = trace_mask(mask, tolerance=0)
    assert sorted(len(p) for p in polygons) == [1, 2]
    total = sum(shoelace(ring) for polygon in polygons for ring in polygon)
    assert total == mask.sum()  # pixel-edge rings: exact areas, holes subtracted
    (disk,) = trace_mask(blob, tolerance=0)
    assert shoelace(disk[0]) == blob.sum()


def test_pixels_touching_only_at_a_corner_never_make_a_self_touching_ring():
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)
    (polygon,) = trace_mask(mask, tolerance=0)  # one 4-connected component, no enclosed hole
    (ring,) = polygon
    points = [tuple(p) for p in ring[:-1]]
    assert len(points) == len(set(points))
    assert shoelace(ring) == pytest.approx(mask.sum() - 0.5)  # two saddle corners cut by 1/4 each


def test_classes_get_their_own_feature_names_and_colors(tmp_path):
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[4:20, 4:20] = 1
    labels[30:40, 30:60] = 2
    labels[50:60, 2:6] = 255  # ignored pixels are no class
    cm = make_classmap(tmp_path / "s.samlung", labels, num_classes=2, scale=1.0)
    collection = classmap_to_geojson(cm, tmp_path / "out.geojson")
    assert_qupath_valid(collection)
    names = {f["properties"]["classification"]["name"]: f for f in collection["features"]}
    assert set(names) == {"Class 1", "Class 2"}
    assert names["Class 2"]["properties"]["classification"]["color"] == list(class_color(2))
    assert shoelace(names["Class 2"]["geometry"]["coordinates"][0][0]) == pytest.approx(300)


def test_whole_map_is_traced_on_the_level_that_fits_the_budget(tmp_path, monkeypatch):
    labels = np.zeros((1000, 1200), dtype=np.uint8)
    labels[200:600, 400:1000] = 1  # multiples of 4: exact on level 2
    cm = make_classmap(tmp_path / "s.samlung", labels, scale=1.5)
    levels_read = []
    original = ClassMap.read
    monkeypatch.setattr(ClassMap, "read", lambda self, box, level=0: levels_read.append(level) or original(self, box, level))
    collection = classmap_to_geojson(cm, max_size=300)
    assert levels_read == [2]  # 1200 / 4 = 300: level 0 is never loaded
    ring = collection["features"][0]["geometry"]["coordinates"][0][0]
    xs, ys = np.array(ring)[:, 0], np.array(ring)[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (600, 1500, 300, 900)  # times scale 1.5


def test_reviewed_only_traces_inside_reviewed_regions_and_adds_their_rectangles(tmp_path):
    labels = np.zeros((100, 200), dtype=np.uint8)
    labels[10:40, 10:40] = 1  # reviewed region A covers rows 0:50, cols 0:50
    labels[10:40, 150:190] = 1  # not reviewed
    cm = make_classmap(tmp_path / "s.samlung", labels, scale=2.0)
    cm.add_reviewed((0, 0, 50, 50))
    cm.add_reviewed((30, 30, 40, 40))  # overlaps A: traced together, not twice
    collection = classmap_to_geojson(cm, reviewed_only=True, reviewed_boxes=True)
    assert_qupath_valid(collection)
    tumor, *rectangles = collection["features"]
    (polygon,) = tumor["geometry"]["coordinates"]
    assert shoelace(polygon[0]) == pytest.approx(30 * 30 * 4)
    assert len(rectangles) == 2
    assert rectangles[0]["geometry"]["coordinates"][0] == [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    assert rectangles[0]["properties"]["name"].endswith(cm.reviewed[0]["id"])


def test_reviewed_only_without_reviewed_regions_is_an_error(tmp_path):
    cm = make_classmap(tmp_path / "s.samlung", square_with_hole())
    with pytest.raises(ValueError, match="no reviewed regions"):
        classmap_to_geojson(cm, reviewed_only=True)


def test_simplification_keeps_files_small_and_shapes_close():
    yy, xx = np.mgrid[:400, :400]
    disk = (yy - 200) ** 2 + (xx - 200) ** 2 < 150**2
    exact = trace_mask(disk, tolerance=0)[0][0]
    simple = trace_mask(disk, tolerance=1.0)[0][0]
    assert len(simple) < len(exact) / 4
    assert shoelace(simple) == pytest.approx(disk.sum(), rel=0.005)


def test_plain_label_arrays_export_with_an_origin_and_pixel_size():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:4, 3:8] = 1
    (feature,) = labels_to_features(labels, 1, origin=(100.0, 50.0), pixel_size=4.0)
    ring = np.array(feature["geometry"]["coordinates"][0][0])
    assert (ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()) == (62, 108, 82, 116)


def test_geojson_file_is_replaced_atomically(tmp_path):
    cm = make_classmap(tmp_path / "s.samlung", square_with_hole())
    path = tmp_path / "out.geojson"
    path.write_text("old")
    classmap_to_geojson(cm, path)
    assert json.loads(path.read_text())["type"] == "FeatureCollection"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.geojson", "s.samlung"]


def test_features_carry_their_area_and_the_tumour_feature_the_slide_burden_as_qupath_measurements(tmp_path):
    from napari_samlung.results import burden

    cm = make_classmap(tmp_path / "s.samlung", square_with_hole(), scale=2.0, slide_mpp=0.25)
    (unmeasured,) = classmap_to_geojson(cm)["features"]
    area_um2 = (160 * 120 - 40 * 40) * 0.25 ** 2  # level-0 px of the polygon, 0.25 µm each side
    assert unmeasured["properties"]["measurements"] == {"Area µm^2": pytest.approx(area_um2)}
    figures = burden.update_metadata(cm.root)
    (feature,) = classmap_to_geojson(ClassMap.open(cm.root), tmp_path / "m.geojson")["features"]
    measurements = json.loads((tmp_path / "m.geojson").read_text())["features"][0]["properties"]["measurements"]
    assert measurements == feature["properties"]["measurements"]
    assert measurements["Tumour area mm^2"] == pytest.approx(area_um2 / 1e6) == pytest.approx(figures.tumour_mm2)
    assert measurements["Tumour regions >= 0.01 mm^2"] == 0  # 1,100 µm²: smaller than 0.01 mm²
    assert all(isinstance(v, (int, float)) for v in measurements.values())
    reviewed = ClassMap.open(cm.root, mode="r+")
    reviewed.add_reviewed((0, 0, 60, 60))
    (part, _) = classmap_to_geojson(reviewed, reviewed_only=True, reviewed_boxes=True)["features"]
    assert set(part["properties"]["measurements"]) == {"Area µm^2"}  # slide figures describe the whole map
