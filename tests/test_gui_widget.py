"""The dock widget end to end: segment, review, export, fine-tune, reopen, bad input.

Runs under Xvfb (``xvfb-run -a python -m pytest tests/test_gui_*.py``) with the tiny model on a
1024 px generated slide (scale 1: the slide and the model are both at 0.5 µm/px).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile
from napari.utils.notifications import notification_manager

from gui_support import (  # noqa: F401  (fixtures)
    demo_slide,
    demo_source,
    dock,
    isolated_config,
    layers_of,
    notifications,
    open_slide_layer,
    ready_widget,
    view,
    wait_for,
)
from napari_samlung.model.checkpoint import read_checkpoint
from napari_samlung.results.drafts import list_drafts
from napari_samlung.data import SegmentationDataset, discover_training_data, read_export_set
from napari_samlung.gui._panel import Host, Panel
from napari_samlung.gui.bug_log import log_path
from napari_samlung.gui.layers import ROLE
from napari_samlung.gui.settings import load_settings
from napari_samlung.inference.engine import SegmentationError
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import results_dir
from napari_samlung.labels import IGNORE, TUMOR
from napari_samlung.slide import Slide

pytestmark = pytest.mark.gui


def segment_full(qtbot, widget):
    widget.segment.full_button.click()
    wait_for(qtbot, widget)


def draw_rectangle(viewer, y0, x0, y1, x1):
    """A Shapes layer with one rectangle (world coordinates), selected as the active layer."""
    shapes = viewer.add_shapes([[[y0, x0], [y0, x1], [y1, x1], [y1, x0]]], shape_type="rectangle", name="roi")
    viewer.layers.selection.active = shapes
    return shapes


def test_segment_visible_region_covers_the_view_plus_context_and_shows_labels(
        make_napari_viewer, qtbot, demo_slide, tiny_checkpoint):
    viewer = make_napari_viewer(show=True)  # shown, napari's progress bar processes events re-entrantly
    slide_layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    view(viewer, 256, 256, 200)  # world units are µm: the view is centred on level-0 pixel (512, 512)
    canvas_h, canvas_w = viewer.canvas.size
    half_h, half_w = 200 / 2 / 0.5, 200 * canvas_w / canvas_h / 2 / 0.5  # level-0 pixels
    widget.segment.visible_button.click()
    wait_for(qtbot, widget)

    assert not notifications("error")
    assert widget.segment.status.text().startswith("complete: ")  # the summary, not a late progress line
    cm = ClassMap.open(results_dir(demo_slide))
    (run,) = cm.meta["segmented"]
    y, x, h, w = run["box"]
    margin = 0.25 * 256  # CONTEXT * tile side, at scale 1
    assert (y, x) == pytest.approx((512 - half_h - margin, 512 - half_w - margin), abs=2)
    assert (h, w) == pytest.approx((2 * (half_h + margin), 2 * (half_w + margin)), abs=3)
    assert cm.status == "partial"
    (labels,) = layers_of(viewer, "classmap")
    assert labels.multiscale and labels.scale[-1] == pytest.approx(0.5)
    assert np.array_equal(np.asarray(labels.data[0][y:y + h, x:x + w]), cm.read((y, x, h, w)))
    assert set(np.unique(cm.read((y, x, h, w)))) <= {0, TUMOR}


def test_full_slide_result_persists_and_a_new_viewer_shows_it_again(make_napari_viewer, qtbot, demo_slide,
                                                                     tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    segment_full(qtbot, widget)
    cm = ClassMap.open(results_dir(demo_slide))
    assert cm.status == "complete" and cm.shape == (1024, 1024)
    assert widget.models.loads == 1
    segment_full(qtbot, widget)  # complete already: nothing recomputed, the model stays loaded
    assert any("already segmented" in m for m in notifications("info"))
    assert widget.models.loads == 1
    viewer.close()

    again = make_napari_viewer()
    layers = again.open(str(demo_slide), plugin="napari-samlung")
    assert [layer.metadata[ROLE] for layer in layers] == ["slide", "classmap"]
    dock(again)  # the widget finds the layers the reader added and adds no second copy
    qtbot.wait(50)
    assert len(layers_of(again, "classmap")) == 1
    assert np.array_equal(np.asarray(layers[1].data[0]), cm.read((0, 0, 1024, 1024)))


def test_review_paint_undo_apply_then_export_reads_back_as_training_data(
        make_napari_viewer, qtbot, demo_slide, tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    slide_layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    segment_full(qtbot, widget)
    before = ClassMap.open(results_dir(demo_slide)).read((0, 0, 1024, 1024))

    draw_rectangle(viewer, 99.75, 49.75, 249.75, 199.75)  # µm on pixel edges: level-0 y 200..500, x 100..400
    widget.review.review_button.click()
    wait_for(qtbot, widget)
    (draft_layer,) = layers_of(viewer, "draft")
    assert draft_layer.data.shape == (300, 300) and draft_layer.mode == "paint"
    assert tuple(draft_layer.translate) == pytest.approx((100, 50))  # pixel centres line up with the slide's
    draft_layer.paint((150, 150), 0)
    draft_layer.fill((5, 5), TUMOR)  # whatever region holds (5, 5) becomes tumor
    draft_layer.undo()
    draft_layer.undo()
    assert np.array_equal(np.asarray(draft_layer.data), before[200:500, 100:400])  # undo writes back to disk
    draft_layer.data_setitem((np.arange(40, 80).repeat(40), np.tile(np.arange(10, 50), 40)), TUMOR)
    draft_layer.data_setitem((np.arange(200, 240).repeat(40), np.tile(np.arange(200, 240), 40)), 0)
    edited = np.asarray(draft_layer.data).copy()
    assert ClassMap.open(results_dir(demo_slide)).read((0, 0, 1024, 1024)).tobytes() == before.tobytes()
    draft_layer.save(str(tmp_path / "draft.geojson"), plugin="napari-samlung")  # placed in level-0 pixels
    points = np.array([p for f in json.loads((tmp_path / "draft.geojson").read_text())["features"]
                       for polygon in f["geometry"]["coordinates"] for ring in polygon for p in ring])
    assert (points.min(0) >= [100, 200]).all() and (points.max(0) <= [400, 500]).all()

    widget.review.apply_button.click()
    wait_for(qtbot, widget)
    cm = ClassMap.open(results_dir(demo_slide))
    assert np.array_equal(cm.read((200, 100, 300, 300)), edited)
    assert [r["box"] for r in cm.reviewed] == [[200, 100, 300, 300]]
    assert not layers_of(viewer, "draft") and not list_drafts(cm)
    (reviewed,) = layers_of(viewer, "reviewed")
    corners = np.asarray(reviewed.data[0])
    assert corners.min(0) == pytest.approx([99.75, 49.75])
    assert corners.max(0) == pytest.approx([249.75, 199.75])
    draw_rectangle(viewer, 299.75, 299.75, 349.75, 349.75)  # a second region joins the first one
    widget.review.review_button.click()
    wait_for(qtbot, widget)
    widget.review.apply_button.click()
    wait_for(qtbot, widget)
    assert len(reviewed.data) == 2 and reviewed.shape_type == ["rectangle"] * 2
    assert np.asarray(reviewed.data[1]).max(0) == pytest.approx([349.75, 349.75])

    export = widget.export
    export.training_set.set_text(str(tmp_path / "set"))
    export.geojson.set_text(str(tmp_path / "tumor.geojson"))
    export.label_tiff.set_text(str(tmp_path / "labels.tif"))
    for button in (export.set_button, export.geojson_button, export.tiff_button):
        viewer.layers.selection.active = slide_layer
        button.click()
        wait_for(qtbot, widget)
    assert not notifications("error")

    exported = read_export_set(tmp_path / "set")
    assert exported.tile_size == 256 and len(exported.pairs) >= 1
    data = discover_training_data([tmp_path / "set"], require_train=False)
    image, label = SegmentationDataset(data.train + data.val, num_classes=1)[0]
    assert image.shape == (256, 256, 3) and label.shape == (256, 256)
    assert set(np.unique(label.numpy())) <= {0, TUMOR, IGNORE}
    collection = json.loads((tmp_path / "tumor.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert any(f["properties"]["classification"]["name"] == "Tumor" for f in collection["features"])
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        final = ClassMap.open(cm.root).read((0, 0, 1024, 1024))
        assert np.array_equal(tif.series[0].levels[0].asarray(), final)

    viewer.close()  # reopened: the reviewed region comes back with the slide
    again = make_napari_viewer()
    layers = again.open(str(demo_slide), plugin="napari-samlung")
    assert [layer.metadata[ROLE] for layer in layers] == ["slide", "classmap", "reviewed"]
    assert np.asarray(layers[2].data[0]).min(0) == pytest.approx([99.75, 49.75])


def test_unapplied_draft_survives_closing_napari_and_is_offered_again(make_napari_viewer, qtbot, demo_slide,
                                                                       tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    view(viewer, 256, 256, 200)
    widget.segment.visible_button.click()
    wait_for(qtbot, widget)
    view(viewer, 256, 256, 50)
    widget.review.review_button.click()
    wait_for(qtbot, widget)
    (draft_layer,) = layers_of(viewer, "draft")
    draft_layer.fill((0, 0), 0)
    draft_layer.paint((20, 20), TUMOR)
    edited = np.asarray(draft_layer.data).copy()
    cm_before = ClassMap.open(results_dir(demo_slide)).read((0, 0, 1024, 1024))
    viewer.close()

    again = make_napari_viewer()
    open_slide_layer(again, demo_slide)
    widget = dock(again)
    assert widget.review.resume_button.isEnabled() and "(1)" in widget.review.resume_button.text()
    assert np.array_equal(ClassMap.open(results_dir(demo_slide)).read((0, 0, 1024, 1024)), cm_before)
    widget.review.resume_button.click()
    (resumed,) = layers_of(again, "draft")
    assert np.array_equal(np.asarray(resumed.data), edited)
    widget.review.discard_button.click()
    wait_for(qtbot, widget)
    assert not layers_of(again, "draft")
    assert not list_drafts(ClassMap.open(results_dir(demo_slide)))


def test_cancelled_full_slide_run_resumes_where_it_stopped(make_napari_viewer, qtbot, demo_slide,
                                                           tiny_checkpoint, monkeypatch):
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 256)  # several chunks on this small slide, some done by the cancel
    read_scaled = Slide.read_scaled

    def slow_read(self, *args):  # a slide slow enough that the cancel lands before the run ends
        time.sleep(0.05)
        return read_scaled(self, *args)

    monkeypatch.setattr(Slide, "read_scaled", slow_read)
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.segment.batch_size.setValue(1)
    stopped = []

    def cancel_after_some_tiles(event):  # late enough that whole class-map chunks are finished
        if getattr(event, "done", 0) >= 0.5 * getattr(event, "total", 1) and not stopped:
            stopped.append(event.done)
            widget.segment.cancel_button.click()

    widget.segment.full_button.click()
    widget.job.worker.yielded.connect(cancel_after_some_tiles)
    wait_for(qtbot, widget)
    assert stopped and "cancelled" in widget.segment.status.text()
    assert ClassMap.open(results_dir(demo_slide)).status == "incomplete"
    segment_full(qtbot, widget)
    assert "complete" in widget.segment.status.text()
    assert int(widget.segment.status.text().split(" resumed")[0].split(", ")[-1]) > 0
    assert ClassMap.open(results_dir(demo_slide)).status == "complete"


@pytest.mark.slow
def test_fine_tune_from_the_widget_offers_the_new_checkpoint(make_napari_viewer, qtbot, demo_slide,
                                                             tiny_checkpoint, isolated_config):
    viewer = make_napari_viewer()
    slide_layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.segment.device.setCurrentText("cpu")
    segment_full(qtbot, widget)
    draw_rectangle(viewer, 50, 50, 200, 350)  # level-0 300 x 600 px: more than one 256 px tile
    widget.review.review_button.click()
    wait_for(qtbot, widget)
    widget.review.apply_button.click()
    wait_for(qtbot, widget)

    panel = widget.finetune
    panel.tune.setCurrentText("Head only")
    panel.epochs.setValue(1)
    panel.max_steps.setValue(1)
    panel.batch_size.setValue(1)
    viewer.layers.selection.active = slide_layer
    panel.run_button.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=120_000)
    assert not notifications("error"), notifications("error")
    assert panel.use_button.isEnabled() and panel.new_checkpoint.is_file()
    assert read_checkpoint(panel.new_checkpoint)["config"]["tune"] == "head"  # the panel's choice trained
    assert "epoch 1/1" in panel.log.toPlainText()
    panel.use_button.click()
    assert widget.segment.checkpoint.text() == str(panel.new_checkpoint)
    assert load_settings().checkpoint == str(panel.new_checkpoint)
    view(viewer, 256, 256, 100)
    widget.segment.visible_button.click()  # segments with the fine-tuned model
    wait_for(qtbot, widget)
    assert widget.models.loads == 2 and not notifications("error")


def test_model_settings_are_remembered_by_the_next_widget(make_napari_viewer, tiny_checkpoint, tmp_path,
                                                          isolated_config):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    widget.segment.checkpoint.set_text(str(tiny_checkpoint))
    widget.segment.device.setCurrentText("cpu")
    widget.segment.project_dir.set_text(str(tmp_path / "project"))
    assert isolated_config.is_file()
    viewer.close()
    widget = dock(make_napari_viewer())
    assert widget.segment.checkpoint.text() == str(tiny_checkpoint)
    assert widget.segment.device.currentText() == "cpu"
    assert widget.segment.project_dir.text() == str(tmp_path / "project")


def test_panels_share_choices_through_the_widgets_state(make_napari_viewer, tmp_path):
    widget = dock(make_napari_viewer())
    assert isinstance(widget, Host)
    assert all(isinstance(panel, Panel) for panel in (widget.segment, widget.review, widget.export, widget.finetune))
    widget.state.checkpoint = str(tmp_path / "new.pt")  # as 'Use the new checkpoint' does
    assert widget.segment.checkpoint.text() == str(tmp_path / "new.pt")
    assert load_settings().checkpoint == str(tmp_path / "new.pt")
    widget.export.training_set.set_text(str(tmp_path / "set"))
    assert widget.state.training_set_for(tmp_path / "results") == tmp_path / "set"


def test_errors_are_worded_with_field_labels_and_bugs_keep_their_traceback(make_napari_viewer):
    widget = dock(make_napari_viewer())
    assert widget.field_label("sam_weights") == "SAM weights" and widget.field_label("region") == "region"
    with widget.user_errors():
        raise SegmentationError("must be positive, got 0", param="target_mpp")
    with widget.user_errors():
        {}["missing"]
    user, bug = [n for n in notification_manager.records if str(n.severity) == "error"]
    assert user.message == "Model µm/px: must be positive, got 0"
    assert isinstance(bug.exception, KeyError) and f"details in {log_path()}" in bug.message
    assert "KeyError: 'missing'" in log_path().read_text(encoding="utf-8")


def test_results_go_to_the_chosen_project_folder(make_napari_viewer, qtbot, demo_slide, tiny_checkpoint,
                                                  tmp_path):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    (tmp_path / "project").mkdir()  # a chosen folder must exist (a missing one is refused)
    widget.segment.project_dir.set_text(str(tmp_path / "project"))
    view(viewer, 256, 256, 100)
    widget.segment.visible_button.click()
    wait_for(qtbot, widget)
    assert ClassMap.exists(results_dir(demo_slide, tmp_path / "project"))
    assert not results_dir(demo_slide).exists()


# -- bad input: a clear message, and nothing changed ---------------------------------------------
def test_no_slide_open_is_explained(make_napari_viewer, qtbot, tiny_checkpoint):
    viewer = make_napari_viewer()
    widget = dock(viewer)
    widget.segment.checkpoint.set_text(str(tiny_checkpoint))
    for button in (widget.segment.visible_button, widget.segment.full_button, widget.review.review_button,
                   widget.export.set_button):
        button.click()
    assert widget.job is None
    errors = notifications("error")
    assert len(errors) == 4 and all("no slide open" in m for m in errors)


def test_missing_model_files_are_refused_before_anything_runs(make_napari_viewer, demo_slide, tiny_checkpoint,
                                                              tmp_path):
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    widget = dock(viewer)
    segment = widget.segment
    for checkpoint, sam_weights, message in (
            ("", "", "choose a SAM-Lung checkpoint"),
            (str(tmp_path / "missing.pt"), "", "missing.pt: no such file"),
            (str(tiny_checkpoint), str(tmp_path / "sam.pth"), "sam.pth: no such file")):
        segment.checkpoint.set_text(checkpoint)
        segment.sam_weights.set_text(sam_weights)
        segment.full_button.click()
        assert widget.job is None
        assert message in notifications("error")[-1]
    assert len(notifications("error")) == 3
    assert not results_dir(demo_slide).exists()


def test_a_file_that_is_no_checkpoint_fails_with_a_message_and_writes_nothing(make_napari_viewer, qtbot,
                                                                             demo_slide, tmp_path):
    viewer = make_napari_viewer()
    fake = tmp_path / "notes.pt"
    fake.write_text("not a checkpoint")
    _, widget = ready_widget(viewer, demo_slide, fake)
    widget.segment.full_button.click()
    wait_for(qtbot, widget)
    (error,) = notifications("error")
    assert "notes.pt" in error
    assert not results_dir(demo_slide).exists() and not layers_of(viewer, "classmap")


def test_a_view_outside_the_slide_is_refused(make_napari_viewer, demo_slide, tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    view(viewer, -5000, -5000, 100)
    widget.segment.visible_button.click()
    assert widget.job is None
    assert any("shows no part of the slide" in m for m in notifications("error"))
    assert not results_dir(demo_slide).exists()


def test_review_needs_a_segmentation_and_a_region_on_the_slide(make_napari_viewer, qtbot, demo_slide,
                                                               tiny_checkpoint):
    viewer = make_napari_viewer()
    slide_layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.review.review_button.click()
    assert any("no segmentation yet" in m for m in notifications("error"))
    view(viewer, 256, 256, 100)
    widget.segment.visible_button.click()
    wait_for(qtbot, widget)
    draw_rectangle(viewer, 9000, 9000, 9100, 9100)
    widget.review.review_button.click()
    widget.review.apply_button.click()
    assert widget.job is None and not layers_of(viewer, "draft")
    errors = notifications("error")
    assert any("outside the slide" in m for m in errors) and any("no review open" in m for m in errors)
