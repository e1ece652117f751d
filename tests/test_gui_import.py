"""The Export panel's "Import annotations...": GeoJSON and label images into the slide's results.

Runs under Xvfb with a real viewer and the 1024 px generated slide (0.5 µm/px: with no checkpoint
chosen, new results take the vit_b preset's 0.5 µm/px, so class-map pixels are slide pixels).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtWidgets import QFileDialog

from gui_support import (  # noqa: F401  (fixtures)
    demo_slide,
    demo_source,
    dock,
    isolated_config,
    layers_of,
    notifications,
    open_slide_layer,
    wait_for,
)
from napari_samlung.data.files import write_png
from napari_samlung.labels import IGNORE
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import results_dir

pytestmark = pytest.mark.gui


def _rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(ring, name):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": name}}}


@pytest.fixture
def widget_on_slide(make_napari_viewer, demo_slide):
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    return viewer, dock(viewer)


def test_imported_geojson_makes_results_shows_labels_and_reviewed_region(widget_on_slide, demo_slide, qtbot,
                                                                         tmp_path):
    viewer, widget = widget_on_slide
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature(_rect(100, 200, 400, 500), "Region*"), _feature(_rect(150, 250, 250, 350), "Tumour")]}))
    widget.export.import_file(path)
    wait_for(qtbot, widget)
    assert not notifications("error")
    cm = ClassMap.open(results_dir(demo_slide))
    labels = cm.read((0, 0, *cm.shape))
    assert cm.reviewed_boxes() == [(200, 100, 300, 300)]
    assert (labels[250:350, 150:250] == 1).all() and labels[200:500, 100:400].sum() == 100 * 100
    assert (labels[:200] == IGNORE).all()
    assert len(layers_of(viewer, "classmap")) == 1 and len(layers_of(viewer, "reviewed")[0].data) == 1
    status = widget.export.status.text()
    assert status.startswith("done: imported qupath.geojson: 1 polygon(s) (Tumor 1); 1 reviewed region")


def test_import_button_asks_for_a_label_image_and_imports_it(widget_on_slide, demo_slide, qtbot, tmp_path,
                                                             monkeypatch):
    viewer, widget = widget_on_slide
    mask = np.zeros((1024, 1024), np.uint8)
    mask[100:300, 600:700] = 255
    write_png(tmp_path / "mask.png", mask)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "mask.png"), ""))
    widget.export.import_button.click()
    wait_for(qtbot, widget)
    cm = ClassMap.open(results_dir(demo_slide))
    np.testing.assert_array_equal(cm.read((0, 0, 1024, 1024)), (mask > 0).astype(np.uint8))
    assert cm.reviewed_boxes() == [(0, 0, 1024, 1024)]
    assert widget.export.status.text().startswith("done: imported mask.png: label image (Background, Tumor)")


def test_a_bad_file_says_why_in_one_line_and_makes_no_results(widget_on_slide, demo_slide, qtbot, tmp_path):
    viewer, widget = widget_on_slide
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"hello": "world"}))
    widget.export.import_file(path)
    wait_for(qtbot, widget)
    status = widget.export.status.text()
    assert status.startswith("failed: ") and "bad.geojson: not GeoJSON" in status and "\n" not in status
    assert any("not GeoJSON" in message for message in notifications("error"))
    assert not results_dir(demo_slide).exists()
    assert not layers_of(viewer, "classmap")


def test_import_without_an_open_slide_is_explained(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    path = tmp_path / "a.geojson"
    path.write_text("[]")
    widget.export.import_file(path)
    assert widget.job is None
    assert "no slide open" in widget.export.status.text() and notifications("error")
