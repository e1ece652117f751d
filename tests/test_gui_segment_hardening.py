"""The Segment panel made field-ready (issue 11): the slide's µm/px field, plan before work, work
done after a cancel, a status line that is never stale, and no pandas import on the main thread.

Runs under Xvfb with the tiny model (256 px tiles, 0.5 µm/px) on the 1024 px demo slide (0.5 µm/px).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gui_support import (  # noqa: F401  (fixtures)
    demo_slide,
    demo_source,
    dock,
    isolated_config,
    notifications,
    open_slide_layer,
    ready_widget,
    view,
    wait_for,
)
from napari_samlung.gui import _widget
from napari_samlung.gui._common import Job
from napari_samlung.gui._panel import Panel
from napari_samlung.gui._viewer import SlideContext
from napari_samlung.gui._segment_panel import SegmentPanel
from napari_samlung.inference.engine import SegmentationError
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import results_dir
from napari_samlung.slide import Slide

pytestmark = pytest.mark.gui


def enter_slide_mpp(widget, value: float) -> None:
    """Type ``value`` into the Slide µm/px field, as a person would (the field announces it when done)."""
    field = widget.segment.slide_mpp
    field.setValue(value)
    field.editingFinished.emit()


def press(qtbot, widget, button) -> None:
    button.click()
    if widget.job is not None:
        wait_for(qtbot, widget)


# -- the slide's microns per pixel ---------------------------------------------------------------
def test_slide_mpp_field_shows_the_files_value_or_why_it_is_unknown(make_napari_viewer, demo_slide, tmp_path):
    viewer = make_napari_viewer()
    open_slide_layer(viewer, demo_slide)
    segment = dock(viewer).segment
    assert segment.slide_mpp.value() == pytest.approx(0.5)
    assert "Aperio" in segment.slide_mpp_source.text()

    picture = tmp_path / "picture.tif"  # 72 dpi written in px/cm, as image editors do
    tifffile.imwrite(picture, np.full((300, 250, 3), 200, np.uint8), resolution=(28.35, 28.35),
                     resolutionunit="CENTIMETER")
    open_slide_layer(viewer, picture)
    assert segment.slide_mpp.value() == 0 and segment.slide_mpp.text() == "unknown"
    assert "72 dpi" in segment.slide_mpp_source.text() and "unknown" in segment.slide_mpp_source.text()


def test_an_entered_slide_mpp_overrides_the_file_is_kept_with_the_results_and_comes_back(
        make_napari_viewer, qtbot, demo_slide, tiny_checkpoint):
    viewer = make_napari_viewer()
    slide_layer, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    enter_slide_mpp(widget, 0.25)  # the file says 0.5: the model (0.5) now segments at half the size
    slide = widget.slide_for(SlideContext.of(slide_layer))
    assert (slide.mpp, slide.mpp_source) == (0.25, "user")
    assert "entered here" in widget.segment.slide_mpp_source.text()
    press(qtbot, widget, widget.segment.full_button)
    assert not notifications("error")
    cm = ClassMap.open(results_dir(demo_slide))
    assert cm.shape == (512, 512)
    assert (cm.meta["slide"]["mpp"], cm.meta["slide"]["mpp_source"]) == (0.25, "user")
    viewer.close()

    again = make_napari_viewer()
    open_slide_layer(again, demo_slide)
    widget = dock(again)
    assert widget.segment.slide_mpp.value() == pytest.approx(0.25)
    assert "entered here" in widget.segment.slide_mpp_source.text()
    enter_slide_mpp(widget, 0)  # back to the file's value, in the results too
    assert widget.segment.slide_mpp.value() == pytest.approx(0.5)
    assert ClassMap.open(results_dir(demo_slide)).meta["slide"]["mpp_source"] == "aperio"


def test_the_two_resolutions_have_distinct_labels(make_napari_viewer):
    widget = dock(make_napari_viewer())
    assert widget.field_label("mpp") == "Slide µm/px" and widget.field_label("target_mpp") == "Model µm/px"
    assert widget.field_label("results_folder") == "Results folder"


# -- plan before work ------------------------------------------------------------------------------
def test_a_refused_plan_loads_no_model_and_names_the_widgets_fields(make_napari_viewer, qtbot, demo_slide,
                                                                    tiny_checkpoint):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    enter_slide_mpp(widget, 2.0)  # the model's 0.5 µm/px would upsample the slide 4x
    press(qtbot, widget, widget.segment.full_button)
    (error,) = notifications("error")
    assert "upsample" in error and "--" not in error
    assert all(label in error for label in ("Slide µm/px", "Model µm/px", "'allow upsampling'"))
    assert widget.models.loads == 0 and not ClassMap.exists(results_dir(demo_slide))
    assert widget.segment.status.text().startswith("failed: ") and "upsample" in widget.segment.status.text()


def test_a_large_plan_is_shown_and_asked_about_before_the_model_loads(make_napari_viewer, qtbot, demo_slide,
                                                                      tiny_checkpoint, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    monkeypatch.setattr(SegmentPanel, "ASK_ABOVE", 10)
    questions = []

    def answer(yes: bool):
        def confirm(question: str) -> bool:
            questions.append(question)
            return yes
        return confirm

    widget.segment.confirm = answer(False)
    enter_slide_mpp(widget, 2.0)
    widget.segment.allow_upsampling.setChecked(True)  # 4x finer than the slide: allowed now
    press(qtbot, widget, widget.segment.full_button)
    assert not notifications("error")
    (question,) = questions
    tiles = int(re.search(r"on ([\d,]+) tiles", question).group(1).replace(",", ""))
    assert tiles > 10 and "upsampled 4x" in question
    assert "upsampled 4x" in widget.segment.plan.text() and "class map 4096 x 4096" in widget.segment.plan.text()
    assert widget.segment.status.text() == f"not started: you declined a run of {tiles:,} model tiles"
    assert widget.models.loads == 0 and not ClassMap.exists(results_dir(demo_slide))

    enter_slide_mpp(widget, 0)  # the file's 0.5: a small region, asked about and run
    widget.segment.confirm = answer(True)
    monkeypatch.setattr(SegmentPanel, "ASK_ABOVE", 0)
    view(viewer, 256, 256, 100)
    press(qtbot, widget, widget.segment.visible_button)
    assert len(questions) == 2 and widget.models.loads == 1
    assert widget.segment.status.text().startswith("complete: ")


def test_a_missing_results_folder_fails_before_any_work_naming_the_field(make_napari_viewer, demo_slide,
                                                                         tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    missing = tmp_path / "missing"
    widget.segment.project_dir.set_text(str(missing))
    widget.segment.full_button.click()
    assert widget.job is None and widget.models.loads == 0
    (error,) = notifications("error")
    assert error == f"Results folder: {missing}: no such folder"
    assert widget.segment.status.text() == f"failed: {error}"
    assert not missing.exists() and not results_dir(demo_slide).exists()


def test_a_read_only_slide_folder_sends_results_to_the_users_folder_with_a_notice(
        make_napari_viewer, qtbot, demo_slide, tiny_checkpoint, tmp_path, monkeypatch):
    from napari_samlung.results import folders

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    writable = folders.writable
    monkeypatch.setattr(folders, "writable", lambda folder: folder != demo_slide.parent and writable(folder))
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    view(viewer, 256, 256, 100)
    press(qtbot, widget, widget.segment.visible_button)
    assert not notifications("error")
    assert any("is not writable" in m and str(tmp_path / "data") in m for m in notifications("warning"))
    assert ClassMap.exists(folders.user_results_dir(demo_slide)) and not results_dir(demo_slide).exists()


# -- status: work done, failures, slide changes --------------------------------------------------
def test_status_after_cancel_reports_the_work_done(make_napari_viewer, qtbot, demo_slide, tiny_checkpoint,
                                                   monkeypatch):
    read_scaled = Slide.read_scaled

    def slow_read(self, *args):  # slow enough that the cancel lands before the run ends
        time.sleep(0.05)
        return read_scaled(self, *args)

    monkeypatch.setattr(Slide, "read_scaled", slow_read)
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    widget.segment.batch_size.setValue(1)
    seen = []

    def cancel_after_some_tiles(event):
        if getattr(event, "total", 0) and event.done >= 3 and not seen:
            seen.append(event)
            widget.segment.cancel_button.click()

    widget.segment.full_button.click()
    widget.job.worker.yielded.connect(cancel_after_some_tiles)
    wait_for(qtbot, widget)
    status = widget.segment.status.text()
    match = re.fullmatch(r"cancelled after (\d+) of (\d+) tiles; finished rows are kept — "
                         r"press 'Segment full slide' to resume", status)
    assert match, status
    done, total = map(int, match.groups())
    assert seen[0].done <= done < total == seen[0].total


def test_a_failed_run_says_so_instead_of_a_stale_progress_line(make_napari_viewer, qtbot, demo_slide, tmp_path):
    fake = tmp_path / "notes.pt"
    fake.write_text("not a checkpoint")
    viewer = make_napari_viewer()
    _, widget = ready_widget(viewer, demo_slide, fake)
    press(qtbot, widget, widget.segment.full_button)
    status = widget.segment.status.text()
    assert status.startswith("failed: ") and "notes.pt" in status
    assert widget.models.loads == 0


def test_status_and_plan_clear_when_the_current_slide_changes(make_napari_viewer, qtbot, demo_slide,
                                                              tiny_checkpoint, tmp_path):
    viewer = make_napari_viewer()
    first, widget = ready_widget(viewer, demo_slide, tiny_checkpoint)
    heard = {panel: 0 for panel in widget.panels}
    for panel in widget.panels[1:]:  # the other panels' own hooks, counted
        panel.slide_changed = lambda panel=panel: heard.__setitem__(panel, heard[panel] + 1)
    view(viewer, -5000, -5000, 100)
    widget.segment.visible_button.click()
    assert widget.segment.status.text().startswith("failed: the view shows no part of the slide")

    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.full((300, 250, 3), 200, np.uint8))
    second = open_slide_layer(viewer, other)
    assert widget.segment.status.text() == "" and widget.segment.plan.text() == ""
    assert widget.segment.slide_mpp.text() == "unknown"
    assert all(heard[panel] == 1 for panel in widget.panels[1:])
    viewer.layers.selection.active = first  # back to the first slide: told again
    assert widget.segment.slide_mpp.value() == pytest.approx(0.5)
    assert all(heard[panel] == 2 for panel in widget.panels[1:])
    viewer.layers.remove(second)
    viewer.layers.remove(first)
    assert not widget.segment.slide_mpp.isEnabled() and "no slide open" in widget.segment.slide_mpp_source.text()


def test_the_panel_contract_has_the_slide_hook():
    assert "slide_changed" in dir(Panel) and callable(SegmentPanel.slide_changed)


def test_a_failed_job_reaches_its_on_error(qtbot):
    def work(cancel):
        yield "planning"
        raise SegmentationError("must be a multiple of 16, got 100", param="tile_size")

    errors, done = [], []
    job = Job(work, description="test", on_done=done.append, on_error=errors.append)
    qtbot.waitUntil(lambda: not job.running, timeout=10_000)
    assert [str(e) for e in errors] == ["--tile-size: must be a multiple of 16, got 100"] and done == []


# -- freezes ------------------------------------------------------------------------------------
def test_the_widget_warms_its_imports_when_it_starts(make_napari_viewer, monkeypatch):
    started = []
    monkeypatch.setattr(_widget, "warm_imports", lambda: started.append(True))
    dock(make_napari_viewer())
    assert started == [True]


def test_warmed_imports_are_all_napari_needs_for_the_first_labels_and_shapes_layers():
    """In a fresh interpreter (nothing imported by other tests): after the widget's imports and its
    warm-up, making labels and shapes layers does not import pandas (it did, on the main thread: a
    freeze of 1-1.6 s when a run's first labels appeared)."""
    script = """
import sys
import numpy as np
import napari_samlung.gui._widget
from napari_samlung.gui._common import warm_imports
warm_imports().join()
before = set(sys.modules)
from napari.layers import Labels, Shapes
Labels(np.zeros((4, 4), np.uint8))
Shapes([[[0, 0], [0, 4], [4, 4], [4, 0]]], shape_type="rectangle")
print("pandas" in before, sorted(name for name in set(sys.modules) - before if name.startswith("pandas")))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True []"
