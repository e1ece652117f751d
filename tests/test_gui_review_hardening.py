"""Review, export, fine-tune and the viewer made field-ready (issue 11): a review that cannot swallow
a slide, reviewed regions that can be removed, status lines that are never stale, and a viewer that
opens slides with this plugin, shows µm, class names and outlines, and keeps its record layers still.

Runs under Xvfb. Class maps are written directly (no model run) over the 1024 px demo slide (0.5 µm/px,
class map at scale 1), so these tests take seconds.
"""

from __future__ import annotations

import gc
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from classmap_factory import make_classmap
from gui_support import (  # noqa: F401  (fixtures)
    PLUGIN,
    demo_slide,
    demo_source,
    dock,
    isolated_config,
    layers_of,
    notifications,
    open_slide_layer,
    ready_widget,
    wait_for,
)
from napari_samlung.gui import _export_panel
from napari_samlung.gui._panel import Panel
from napari_samlung.gui.layers import IDLE_DRAFT
from napari_samlung.labels import IGNORE, TUMOR
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.drafts import MAX_REVIEW_SIDE, list_drafts
from napari_samlung.results.folders import results_dir

pytestmark = pytest.mark.gui

SIDE = 1024


def tumor_square() -> np.ndarray:
    labels = np.zeros((SIDE, SIDE), np.uint8)
    labels[200:600, 300:700] = TUMOR
    return labels


def segmented(slide: Path, labels: np.ndarray | None = None, tile: int = 256) -> ClassMap:
    """A complete class map for ``slide`` as a run at the slide's resolution would leave it."""
    return make_classmap(results_dir(slide), tumor_square() if labels is None else labels, scale=1.0,
                         slide_mpp=0.5, tile=tile, slide_path=str(slide), slide_shape=(SIDE, SIDE))


def draw_rectangle(viewer, y0, x0, y1, x1):
    """A Shapes layer with one rectangle (world µm), selected as the active layer."""
    shapes = viewer.add_shapes([[[y0, x0], [y0, x1], [y1, x1], [y1, x0]]], shape_type="rectangle", name="roi")
    viewer.layers.selection.active = shapes
    return shapes


def press(qtbot, widget, button) -> None:
    """Click ``button`` and wait for the job it started, if any."""
    button.click()
    if widget.job is not None:
        wait_for(qtbot, widget)


def review_and_apply(qtbot, viewer, widget, rectangle) -> None:
    draw_rectangle(viewer, *rectangle)
    press(qtbot, widget, widget.review.review_button)
    press(qtbot, widget, widget.review.apply_button)


def write_large_slide(path: Path, side: int, mpp: float = 0.5, tile: int = 256) -> Path:
    """A pyramidal JPEG TIFF of ``side`` px a side in a second: one encoded tile, repeated."""
    import imagecodecs

    pattern = np.indices((tile, tile)).sum(0) % 64
    jpeg = imagecodecs.jpeg8_encode(np.stack([200 - pattern, 120 + pattern, 180 + pattern // 2], -1)
                                    .astype(np.uint8), level=75)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level_side = side
        while True:
            tw.write(itertools.repeat(jpeg, (-(-level_side // tile)) ** 2), shape=(level_side, level_side, 3),
                     dtype="uint8", tile=(tile, tile), compression="jpeg", photometric="rgb",
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                     subfiletype=0 if level_side == side else 1)
            if level_side <= tile:
                return path
            level_side = -(-level_side // 2)


# -- 1. a review that cannot swallow a slide -------------------------------------------------------
def test_whole_slide_zoom_over_a_large_slide_is_refused_in_one_line_and_makes_nothing(
        make_napari_viewer, tmp_path):
    side = MAX_REVIEW_SIDE + 808  # 9000 px at scale 1
    slide = write_large_slide(tmp_path / "large.tif", side)
    cm = ClassMap.create(results_dir(slide), (side, side), scale=1.0, num_classes=1, slide={"mpp": 0.5},
                         model={})
    cm.update_meta(status="complete")
    viewer = make_napari_viewer()
    open_slide_layer(viewer, slide)
    widget = dock(viewer)
    viewer.reset_view()  # the whole slide in view
    asked = []
    widget.review.confirm = lambda question: asked.append(question) or True
    widget.review.review_button.click()

    assert widget.job is None and not asked and not layers_of(viewer, "draft")
    (error,) = notifications("error")
    assert "\n" not in error and f"{side} x {side} px" in error
    assert "zoom in, or draw a smaller rectangle" in error
    assert widget.review.status.text() == f"failed: {error}"
    assert not (cm.root / "drafts").exists() and not ClassMap.open(cm.root).reviewed


def test_a_region_with_unsegmented_parts_is_reviewed_only_if_the_user_agrees(make_napari_viewer, qtbot,
                                                                              demo_slide):
    cm = segmented(demo_slide)
    cm.update_meta(status="partial", segmented=[{"box": [0, 0, SIDE // 2, SIDE]}])  # the top half only
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    asked = []
    widget.review.confirm = lambda question: asked.append(question) or False
    draw_rectangle(viewer, 205.75, 99.75, 355.75, 249.75)  # level-0 rows 412..712: 200 of 300 not segmented
    widget.review.review_button.click()

    assert widget.job is None and not layers_of(viewer, "draft") and not list_drafts(cm)
    (question,) = asked
    assert "67% of this region has not been segmented" in question and "anyway" in question
    assert widget.review.status.text().startswith("cancelled: 67% of the region is not segmented")

    widget.review.confirm = lambda question: asked.append(question) or True
    press(qtbot, widget, widget.review.review_button)
    assert len(asked) == 2 and len(layers_of(viewer, "draft")) == 1
    assert widget.review.status.text().startswith("reviewing 300 x 300 px")

    asked.clear()
    draw_rectangle(viewer, 10, 10, 100, 100)  # inside the segmented half: nothing to ask
    press(qtbot, widget, widget.review.review_button)
    assert not asked and len(layers_of(viewer, "draft")) == 2


def test_a_reviewed_region_can_be_removed_and_its_pixels_stay(make_napari_viewer, qtbot, demo_slide):
    cm = segmented(demo_slide)
    viewer = make_napari_viewer()
    slide_layer = open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    review = widget.review
    review_and_apply(qtbot, viewer, widget, (99.75, 49.75, 249.75, 199.75))  # level-0 200..500, 100..400
    review_and_apply(qtbot, viewer, widget, (299.75, 299.75, 349.75, 349.75))
    first, second = ClassMap.open(cm.root).reviewed
    assert [review.regions.itemText(i) for i in range(review.regions.count())] == [
        "region 1: 300 x 300 px at x 100, y 200", "region 2: 100 x 100 px at x 600, y 600"]
    assert review.status.text() == "done: region 2 reviewed"
    pixels = ClassMap.open(cm.root).read((0, 0, SIDE, SIDE))

    review.regions.setCurrentIndex(0)
    review.regions.activated.emit(0)  # chosen as a person would: the view moves to it
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx((174.75, 124.75))
    viewer.layers.selection.active = slide_layer
    press(qtbot, widget, review.remove_button)

    after = ClassMap.open(cm.root)
    assert after.reviewed == [second]
    assert np.array_equal(after.read((0, 0, SIDE, SIDE)), pixels)  # the pixels stay as reviewed
    (reviewed,) = layers_of(viewer, "reviewed")
    assert len(reviewed.data) == 1 and np.asarray(reviewed.data[0]).min(0) == pytest.approx([299.75, 299.75])
    assert review.regions.count() == 1 and review.regions.itemData(0)[0] == second["id"]
    assert review.status.text().startswith("done: region 1 is no longer reviewed")
    assert first["id"] not in [r["id"] for r in after.reviewed] and not notifications("error")


# -- 2. true status --------------------------------------------------------------------------------
def test_every_panel_says_how_its_last_action_ended_and_forgets_it_on_another_slide(
        make_napari_viewer, qtbot, demo_slide, tiny_checkpoint, tmp_path, monkeypatch):
    segmented(demo_slide)
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    review, export, finetune = widget.review, widget.export, widget.finetune
    assert all(isinstance(panel, Panel) for panel in widget.panels)

    export.label_tiff.set_text(str(tmp_path / "labels.tif"))
    press(qtbot, widget, export.tiff_button)
    assert export.status.text() == f"done: label TIFF written to {tmp_path / 'labels.tif'}"
    export.label_tiff.set_text(str(tmp_path / "missing" / "labels.tif"))  # refused before any work
    press(qtbot, widget, export.tiff_button)
    assert export.status.text() == f"failed: Label TIFF: the folder {tmp_path / 'missing'} does not exist"
    assert notifications("error")[-1] == export.status.text().removeprefix("failed: ")

    def disk_full(cm, path, cancel):  # fails in the worker, after the start
        yield "Writing the label TIFF"
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(_export_panel, "label_tiff_job", disk_full)
    export.label_tiff.set_text(str(tmp_path / "labels.tif"))
    press(qtbot, widget, export.tiff_button)
    assert export.status.text() == f"failed: {tmp_path / 'labels.tif'}: No space left on device"

    press(qtbot, widget, review.apply_button)
    assert review.status.text() == "failed: no review open: press 'Review region' first"

    review_and_apply(qtbot, viewer, widget, (0, 0, 60, 60))  # one 256 px tile: too little to fine-tune on
    finetune.run_button.click()
    qtbot.waitUntil(lambda: not finetune.running, timeout=120_000)
    assert finetune.summary.text().startswith("failed: fine-tuning needs at least two exported tiles")

    other = Path(shutil.copy(demo_slide, tmp_path / "other.svs"))
    export.geojson.set_text(str(tmp_path / "slide.geojson"))
    open_slide_layer(viewer, other)  # the current slide changes
    assert review.status.text() == export.status.text() == finetune.summary.text() == ""
    assert export.geojson.text() == export.label_tiff.text() == ""  # they named the other slide's files
    assert review.regions.count() == 0 and not review.remove_button.isEnabled()  # no results there yet


# -- 3. a responsive, legible viewer -----------------------------------------------------------------
def test_slides_open_with_this_plugin_without_asking_unless_the_user_chose_a_reader(make_napari_viewer,
                                                                                     demo_slide, tmp_path):
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {"*.tif": "napari"}  # the user's own choice for .tif stays
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    assert plugins.extension2reader == {"*.tif": "napari", "*.svs": PLUGIN, "*.ndpi": PLUGIN,
                                        "*.tiff": PLUGIN, "*.dcm": PLUGIN, "*.mrxs": PLUGIN, "*.scn": PLUGIN,
                                        "*.bif": PLUGIN, "*.vms": PLUGIN, "*.vmu": PLUGIN}

    other = shutil.copy(demo_slide, tmp_path / "other.svs")
    (layer,) = viewer.open(other, plugin=None)[:1]  # as File > Open does: the preference, no dialog
    assert layer.metadata["samlung_role"] == "slide"


def test_a_slide_read_by_napari_s_own_reader_is_explained(make_napari_viewer, demo_slide):
    viewer = make_napari_viewer()
    viewer.open(str(demo_slide))  # viewer.open's default is napari's builtin reader
    widget = dock(viewer)
    widget.review.review_button.click()
    (error,) = notifications("error")
    assert "napari's own reader" in error and f"plugin='{PLUGIN}'" in error


def test_scale_bar_in_micrometres_and_class_names_under_the_cursor(make_napari_viewer, qtbot, demo_slide):
    labels = tumor_square()
    labels[900:, 900:] = IGNORE
    segmented(demo_slide, labels)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    dock(viewer)
    qtbot.wait(50)
    assert viewer.canvas.overlays.scale_bar.visible
    assert [str(unit) for unit in viewer.layers.units] == ["micrometer"] * 2

    (classmap,) = layers_of(viewer, "classmap")
    for (y, x), name in (((400, 500), "Tumor"), ((50, 50), "Background"), ((950, 950), "Not reviewed")):
        status = classmap.get_status((y * 0.5, x * 0.5), world=True, view_direction=None,
                                     dims_displayed=[0, 1])
        assert f"class: {name}" in status["coordinates"], status


def test_outlines_read_on_h_and_e_and_follow_a_rebuilt_class_map(make_napari_viewer, demo_slide):
    segmented(demo_slide)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    (classmap,) = layers_of(viewer, "classmap")
    widget.review.outlines.setChecked(True)
    assert classmap.contour > 0 and classmap.opacity == 1.0
    viewer.layers.remove(classmap)
    for _step in widget.show_results(widget.current_slide(), results_dir(demo_slide)):  # shown anew
        pass
    (rebuilt,) = layers_of(viewer, "classmap")
    assert rebuilt.contour > 0
    widget.review.outlines.setChecked(False)
    assert rebuilt.contour == 0 and rebuilt.opacity == 0.5


def test_the_reviewed_regions_layer_never_takes_the_selection_nor_offers_move_tools(
        make_napari_viewer, qtbot, demo_slide):
    cm = segmented(demo_slide)
    viewer = make_napari_viewer()
    slide_layer = open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    review_and_apply(qtbot, viewer, widget, (50, 50, 100, 100))
    (reviewed,) = layers_of(viewer, "reviewed")
    assert viewer.layers.selection.active is not reviewed
    assert not reviewed.editable and reviewed.mode == "pan_zoom"
    reviewed.mode = "select"
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2
    assert reviewed.mode == "pan_zoom" and not reviewed.editable
    viewer.layers.selection.active = slide_layer
    review_and_apply(qtbot, viewer, widget, (150, 150, 200, 200))  # updated, still display only
    assert len(reviewed.data) == 2 and not reviewed.editable
    assert viewer.layers.selection.active is not reviewed
    viewer.close()

    again = make_napari_viewer()
    layers = again.open(str(demo_slide), plugin=PLUGIN)  # the reader adds the record layer last: selected
    assert again.layers.selection.active is layers[-1] and layers[-1].metadata["samlung_role"] == "reviewed"
    dock(again)
    qtbot.wait(50)
    (reviewed,) = layers_of(again, "reviewed")
    assert again.layers.selection.active is not reviewed and not reviewed.editable
    assert len(ClassMap.open(cm.root).reviewed) == 2


def test_the_panels_scroll_so_the_window_fits_a_laptop_screen_and_status_lines_never_resize_the_canvas(
        make_napari_viewer, qtbot, demo_slide):
    viewer = make_napari_viewer(show=True)  # a shown window grows to fit its docks
    viewer.window.resize(1280, 720)
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    qtbot.wait(50)
    window, canvas = viewer.window._qt_window, viewer.window._qt_viewer.canvas.native
    assert window.height() <= 720 and widget.parentWidget().minimumSizeHint().height() < 400
    size = canvas.size()
    path = "/" + "/".join(f"a-long-folder-name-{n:02d}" for n in range(12)) + "/training-set"
    message = f"done: training set written to {path}"
    for panel in (widget.segment, widget.review, widget.export):
        panel.status.setText(message)
    qtbot.wait(50)
    assert canvas.size() == size and window.height() <= 720


def prepared(qtbot, viewer) -> None:
    """Wait until the widget has added the layers a review takes over (after results are shown)."""
    qtbot.waitUntil(lambda: bool(layers_of(viewer, "reviewed") and layers_of(viewer, IDLE_DRAFT)
                                 and not layers_of(viewer, IDLE_DRAFT)[0].visible), timeout=5000)


def test_reviews_take_over_one_layer_prepared_before_the_first_and_add_none(make_napari_viewer, qtbot,
                                                                            demo_slide):
    cm = segmented(demo_slide)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    active = viewer.layers.selection.active
    prepared(qtbot, viewer)  # added after the slide's results, one per turn, selection untouched
    assert viewer.layers.selection.active is active
    (reviewed,) = layers_of(viewer, "reviewed")
    (aside,) = layers_of(viewer, IDLE_DRAFT)
    assert len(reviewed.data) == 0 and not reviewed.editable
    assert not aside.visible and not aside.editable and aside.data.shape == (1, 1)
    layers = list(viewer.layers)

    draw_rectangle(viewer, 99.75, 49.75, 249.75, 199.75)  # level-0 200..500, 100..400
    layers.append(viewer.layers["roi"])
    press(qtbot, widget, widget.review.review_button)
    (draft,) = layers_of(viewer, "draft")
    assert draft is aside and list(viewer.layers) == layers  # taken over: no layer added
    assert draft.visible and draft.editable and draft.mode == "paint" and viewer.layers.selection.active is draft
    assert draft.data.shape == (300, 300) and tuple(draft.translate) == pytest.approx((100, 50))
    draft.paint((150, 150), 0)
    press(qtbot, widget, widget.review.apply_button)
    assert list(viewer.layers) == layers and layers_of(viewer, IDLE_DRAFT) == [draft]
    assert not draft.visible and not draft.editable and draft.data.shape == (1, 1)
    assert len(reviewed.data) == 1 and viewer.layers.selection.active is not reviewed

    before = ClassMap.open(cm.root).read((600, 600, 100, 100))
    draw_rectangle(viewer, 299.75, 299.75, 349.75, 349.75)  # a second review: the same layer again
    press(qtbot, widget, widget.review.review_button)
    assert layers_of(viewer, "draft") == [draft] and draft.data.shape == (100, 100)
    draft.undo()  # the history of the closed review is gone: nothing to undo here
    assert np.array_equal(np.asarray(draft.data), before)
    assert tuple(draft.translate) == pytest.approx((300, 300))


def test_closing_reviews_keeps_one_layer_aside_and_removes_others_without_a_full_garbage_collection(
        make_napari_viewer, qtbot, demo_slide, monkeypatch):
    cm = segmented(demo_slide)
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    prepared(qtbot, viewer)
    for rectangle in ((49.75, 49.75, 99.75, 99.75), (299.75, 299.75, 349.75, 349.75)):
        draw_rectangle(viewer, *rectangle)
        press(qtbot, widget, widget.review.review_button)
    assert len(layers_of(viewer, "draft")) == 2 and not layers_of(viewer, IDLE_DRAFT)
    frozen = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: frozen.append(gc.get_freeze_count()) or collect(*args))
    for draft in layers_of(viewer, "draft"):
        viewer.layers.selection.active = draft
        press(qtbot, widget, widget.review.apply_button)
    assert not layers_of(viewer, "draft") and len(layers_of(viewer, IDLE_DRAFT)) == 1
    assert len(ClassMap.open(cm.root).reviewed) == 2
    assert frozen and all(count > 10_000 for count in frozen)  # napari's collection saw only new objects
    assert gc.get_freeze_count() == 0


def test_opening_a_slide_whose_class_map_is_damaged_says_so_in_one_line(make_napari_viewer, qtbot, demo_slide):
    cm = segmented(demo_slide)
    damaged = cm.chunk_path(0, 0, 0)
    damaged.write_bytes(b"garbage")
    viewer = make_napari_viewer()
    dock(viewer)
    open_slide_layer(viewer, demo_slide)
    qtbot.waitUntil(lambda: bool(notifications("warning")), timeout=10_000)
    (warning,) = [w for w in notifications("warning") if "damaged" in w]
    assert "1 damaged or missing class-map chunk(s)" in warning and "0/c/0/0" in warning
    assert "\n" not in warning
