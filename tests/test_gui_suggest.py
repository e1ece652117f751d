"""Where to look next in the viewer: the confidence layer (hidden until turned on) and "Next
suggestion", which goes to the least confident field not yet reviewed nor open, and opens a review.

Runs under Xvfb with a real viewer and widget. The class map and confidence map are written directly
(no model run) over the 1024 px demo slide (0.5 µm/px, class map at scale 1, tiles of 256 px, so
fields step by 224 px), so the test takes seconds.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from classmap_factory import make_classmap
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
from napari_samlung.gui.layers import DRAFT_BOX
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap
from napari_samlung.results.folders import results_dir

pytestmark = pytest.mark.gui

SIDE, TILE, STRIDE, MPP = 1024, 256, 224, 0.5
LEAST_SURE, NEXT = (2, 3), (1, 1)  # fields (row, col) with a blob of low confidence, lowest first


def field_box(r: int, c: int) -> list[int]:
    y, x = r * STRIDE, c * STRIDE
    return [y, x, min(TILE, SIDE - y), min(TILE, SIDE - x)]


@pytest.fixture
def results(demo_slide):  # noqa: F811
    cm = make_classmap(results_dir(demo_slide), np.zeros((SIDE, SIDE), np.uint8), scale=1.0, slide_mpp=MPP,
                       tile=TILE, slide_path=str(demo_slide), slide_shape=(SIDE, SIDE))
    values = np.full((SIDE, SIDE), 240, np.uint8)
    for (r, c), value in ((LEAST_SURE, 30), (NEXT, 90)):
        values[r * STRIDE + 48:r * STRIDE + 208, c * STRIDE + 48:c * STRIDE + 208] = value  # inside it alone
    ConfidenceMap.create_for(cm).write((0, 0, SIDE, SIDE), values)
    return cm


def press(qtbot, widget, button) -> None:
    button.click()
    if widget.job is not None:
        wait_for(qtbot, widget)


def test_the_confidence_layer_comes_with_the_results_hidden_in_micrometres(make_napari_viewer, qtbot,
                                                                           demo_slide, results):  # noqa: F811
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    dock(viewer)
    qtbot.waitUntil(lambda: len(layers_of(viewer, "confidence")) == 1, timeout=10_000)
    (layer,) = layers_of(viewer, "confidence")
    assert not layer.visible and layer.multiscale
    assert tuple(layer.scale[-2:]) == (MPP, MPP) and str(layer.units[-1]) in ("um", "micrometer")
    assert layer.data[0][LEAST_SURE[0] * STRIDE + 100, LEAST_SURE[1] * STRIDE + 100] == 30


def test_next_suggestion_goes_to_the_least_confident_open_field_and_reviewed_fields_leave(
        make_napari_viewer, qtbot, demo_slide, results):  # noqa: F811
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    review = widget.review

    press(qtbot, widget, review.next_button)
    (first,) = layers_of(viewer, "draft")
    assert first.metadata[DRAFT_BOX] == field_box(*LEAST_SURE)
    y, x, h, w = field_box(*LEAST_SURE)
    center = viewer.scene.camera.center[-2:]
    assert center == pytest.approx(((y + h / 2) * MPP, (x + w / 2) * MPP), abs=MPP)  # within a pixel
    assert review.status.text().startswith("suggested field: mean confidence")

    press(qtbot, widget, review.next_button)  # the first is open in a draft: the next one
    second = layers_of(viewer, "draft")[-1]
    assert second.metadata[DRAFT_BOX] == field_box(*NEXT)

    viewer.layers.selection.active = first
    press(qtbot, widget, review.apply_button)
    viewer.layers.selection.active = second
    press(qtbot, widget, review.discard_button)
    assert ClassMap.open(results.root).reviewed_boxes() == [tuple(field_box(*LEAST_SURE))]

    press(qtbot, widget, review.next_button)  # reviewed: it left the list; the discarded one is back
    (third,) = layers_of(viewer, "draft")
    assert third.metadata[DRAFT_BOX] == field_box(*NEXT)


def test_next_suggestion_on_results_without_confidence_says_to_segment_again(make_napari_viewer, qtbot,
                                                                             demo_slide, results):  # noqa: F811
    shutil.rmtree(results.root / ConfidenceMap.STORE)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    widget.review.next_button.click()
    assert widget.job is None and not layers_of(viewer, "draft") and not layers_of(viewer, "confidence")
    (error,) = notifications("error")
    assert "no confidence map" in error and "'segment again'" in error and "\n" not in error
