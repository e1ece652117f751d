"""`samlung import --geojson`: QuPath GeoJSON into a slide's results as reviewed regions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classmap_factory import make_classmap
from import_support import (MAP_SHAPE, SLIDE_SHAPE, assert_same_training_labels, samlung_import, snapshot,
                            write_slide)

from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.labels import IGNORE
from napari_samlung.results.classmap import ClassMap

REGIONS = [(30, 20, 80, 130), (160, 230, 80, 100)]  # class-map boxes cutting through the objects below


def _source_labels(num_classes: int) -> np.ndarray:
    labels = np.zeros(MAP_SHAPE, np.uint8)
    labels[20:80, 30:110] = 1
    labels[40:60, 50:70] = 0  # a hole
    yy, xx = np.mgrid[:MAP_SHAPE[0], :MAP_SHAPE[1]]
    labels[(yy - 190) ** 2 + (xx - 260) ** 2 < 35**2] = num_classes  # a disc: edges in every direction
    labels[185:195, 250:300] = 1
    return labels


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide") / "slide.tif")


def _source(tmp_path, slide, num_classes: int = 1) -> ClassMap:
    cm = make_classmap(tmp_path / "src" / "slide.samlung", _source_labels(num_classes), scale=2.0,
                       num_classes=num_classes, tile=64, slide_path=str(slide), slide_shape=SLIDE_SHAPE)
    for box in REGIONS:
        cm.add_reviewed(box)
    return cm


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def _feature(rings, name=None, kind="Polygon", object_type="annotation"):
    properties = {"objectType": object_type}
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings}, "properties": properties}


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.mark.parametrize("num_classes", [1, 2])
def test_exported_geojson_imported_into_fresh_results_gives_the_same_training_labels(tmp_path, slide, num_classes):
    source = _source(tmp_path, slide, num_classes)
    exported = tmp_path / "reviewed.geojson"
    classmap_to_geojson(source, exported, reviewed_only=True, reviewed_boxes=True, tolerance=0)
    (tmp_path / "new").mkdir()
    assert samlung_import(slide, "--geojson", exported, "-o", tmp_path / "new", "--preset", "tiny",
                          "--num-classes", num_classes) == 0
    imported = ClassMap.open(tmp_path / "new" / "slide.samlung")
    assert sorted(imported.reviewed_boxes()) == sorted(REGIONS)
    assert_same_training_labels(source.root, imported.root, slide, tmp_path)


def test_default_simplified_export_differs_only_on_class_edges(tmp_path, slide):
    source = _source(tmp_path, slide)
    exported = tmp_path / "simplified.geojson"
    classmap_to_geojson(source, exported, reviewed_only=True, reviewed_boxes=True)  # 1 px Douglas-Peucker
    assert samlung_import(slide, "--geojson", exported, "-o", tmp_path, "--preset", "tiny") == 0
    before, after = source.read((0, 0, *MAP_SHAPE)), ClassMap.open(tmp_path / "slide.samlung").read((0, 0, *MAP_SHAPE))
    padded = np.pad(before, 1, mode="edge")
    edge = np.zeros(MAP_SHAPE, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + MAP_SHAPE[0], dx:dx + MAP_SHAPE[1]] != before
    for y, x, h, w in REGIONS:
        differ = after[y:y + h, x:x + w] != before[y:y + h, x:x + w]
        assert not (differ & ~edge[y:y + h, x:x + w]).any()


def test_qupath_array_with_holes_region_and_class_spelling_sets_pixels_by_their_centres(tmp_path, slide, capsys):
    outer = _rect(60, 40, 160, 140)
    hole = _rect(90, 70, 120, 100)[::-1]
    features = [
        _feature([_rect(40, 20, 240, 220)], "Region*"),
        _feature([[outer, hole]], "tumour", kind="MultiPolygon", object_type="detection"),
    ]
    path = _write(tmp_path / "qupath.geojson", features)  # a bare array, as QuPath writes it
    assert samlung_import(slide, "--geojson", path, "-o", tmp_path, "--preset", "tiny") == 0
    cm = ClassMap.open(tmp_path / "slide.samlung")
    expected = np.full(MAP_SHAPE, IGNORE, np.uint8)
    expected[10:110, 20:120] = 0  # the region: level-0 x 40..240, y 20..220; pixel i's centre is 2i + 1
    expected[20:70, 30:80] = 1  # the polygon: x 60..160, y 40..140
    expected[35:50, 45:60] = 0  # its hole: x 90..120, y 70..100
    np.testing.assert_array_equal(cm.read((0, 0, *MAP_SHAPE)), expected)
    assert cm.reviewed_boxes() == [(10, 20, 100, 100)]
    out = capsys.readouterr().out
    assert "1 polygon(s) (Tumor 1)" in out and "1 reviewed region" in out and "mm²" in out


def test_without_region_rectangles_the_bounding_box_is_reviewed_and_said(tmp_path, slide, capsys):
    path = _write(tmp_path / "one.geojson", _feature([_rect(100, 60, 200, 120)], "Tumor"))  # one Feature
    assert samlung_import(slide, "--geojson", path, "-o", tmp_path, "--preset", "tiny") == 0
    cm = ClassMap.open(tmp_path / "slide.samlung")
    assert cm.reviewed_boxes() == [(30, 50, 30, 50)]
    assert np.all(cm.read((30, 50, 30, 50)) == 1)
    assert "bounding box" in capsys.readouterr().err


def test_self_intersecting_polygon_is_repaired_and_said(tmp_path, slide, capsys):
    bowtie = [[100, 100], [200, 200], [200, 100], [100, 200], [100, 100]]
    path = _write(tmp_path / "bowtie.geojson", {"type": "FeatureCollection", "features": [_feature([bowtie], "Tumor")]})
    assert samlung_import(slide, "--geojson", path, "-o", tmp_path, "--preset", "tiny") == 0
    labels = ClassMap.open(tmp_path / "slide.samlung").read((50, 50, 50, 50))
    assert labels[25, 5] == 1 and labels[25, 45] == 1 and labels[5, 25] == 0  # both wings, not the gaps
    assert "repaired" in capsys.readouterr().err


def test_import_into_segmented_results_keeps_predictions_outside_and_records_once(tmp_path, slide):
    predicted = np.ones(MAP_SHAPE, np.uint8)
    cm = make_classmap(tmp_path / "slide.samlung", predicted, scale=2.0, tile=64, slide_path=str(slide),
                       slide_shape=SLIDE_SHAPE)
    path = _write(tmp_path / "a.geojson", [_feature([_rect(40, 20, 240, 220)], "Reviewed region"),
                                           _feature([_rect(60, 40, 160, 140)], "Tumor")])
    for _ in range(2):
        assert samlung_import(cm.root, "--geojson", path) == 0
    cm.refresh()
    labels = cm.read((0, 0, *MAP_SHAPE))
    assert cm.reviewed_boxes() == [(10, 20, 100, 100)]
    assert labels[5, 5] == 1 and labels[100, 100] == 0 and labels[30, 40] == 1
    assert labels[150:, :].all()  # outside the region: the prediction as it was


BAD_FILES = {
    "not JSON": ("{not json", "not JSON"),
    "not GeoJSON": ({"hello": 1}, "not GeoJSON"),
    "no polygons": ({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 10]}, "properties": {}}]}, "no polygons"),
    "malformed geometry": ([_feature([_rect(10, 10, 50, 50)], "Tumor"), _feature("x", "Tumor")],
                           "feature 2 has a malformed Polygon"),
    "outside": ([_feature([_rect(5000, 10, 5100, 50)], "Tumor")], "outside the slide"),
    "unknown classes": ([_feature([_rect(10, 10, 50, 50)], "Stroma"), _feature([_rect(60, 10, 90, 50)], "Necrosis"),
                         _feature([_rect(60, 60, 90, 90)], "Tumor")], "'Stroma' (feature 1), 'Necrosis' (feature 2)"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_one_line_exit_2_and_the_class_map_untouched(tmp_path, slide, capsys, case):
    content, words = BAD_FILES[case]
    path = tmp_path / "bad.geojson"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    cm = make_classmap(tmp_path / "slide.samlung", _source_labels(1), scale=2.0, tile=64, slide_path=str(slide),
                       slide_shape=SLIDE_SHAPE)
    cm.add_reviewed(REGIONS[0])
    before = snapshot(cm.root)
    capsys.readouterr()
    assert samlung_import(cm.root, "--geojson", path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and words in err
    assert snapshot(cm.root) == before
    # into a slide without results: nothing is made
    (tmp_path / "new").mkdir()
    assert samlung_import(slide, "--geojson", path, "-o", tmp_path / "new", "--preset", "tiny") == 2
    assert list((tmp_path / "new").iterdir()) == []


def test_rasterised_labels_are_exactly_the_pixel_centres_inside_the_polygons(tmp_path):
    import shapely

    from napari_samlung.annotations.geojson_import import read_geojson
    from napari_samlung.annotations.importing import Target

    angles = np.linspace(0, 2 * np.pi, 41)[:-1]
    radii = np.where(np.arange(40) % 2, 300.0, 700.0)  # a star: boundary blocks in every direction
    star = np.stack([1000 + radii * np.cos(angles), 900 + radii * np.sin(angles)], 1)
    hole = np.stack([1000 + 150 * np.cos(angles[::-1]), 900 + 150 * np.sin(angles[::-1])], 1)
    rings = [np.vstack([r, r[:1]]).tolist() for r in (star, hole)]
    path = _write(tmp_path / "star.geojson", [_feature([_rect(0, 0, 2000, 1800)], "Region"), _feature(rings, "Tumor")])
    target = Target((720, 800), 2.5, 1, {"0": "Background", "1": "Tumor"}, (1800, 2000))
    imported = read_geojson(path, target)
    box = imported.regions[0]
    ys, xs = np.mgrid[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    expected = shapely.contains_xy(shapely.Polygon(rings[0], [rings[1]]), (xs + 0.5) * 2.5, (ys + 0.5) * 2.5)
    np.testing.assert_array_equal(imported.labels(box), expected.astype(np.uint8))
