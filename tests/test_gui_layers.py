"""Qt-free parts of the plugin: coordinates, layer data, settings and the model cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gui_support import isolated_config  # noqa: F401  (fixtures)
from napari_samlung.results.drafts import start_review
from napari_samlung.geometry import SlideFrame, grow
from napari_samlung.gui.layers import (
    DRAFT_BOX,
    DRAFT_ID,
    RESULTS,
    ROLE,
    classmap_layer,
    draft_layer,
    label_colors,
    reviewed_layer,
)
from napari_samlung.gui.model_cache import PredictorCache, check_model_files
from napari_samlung.gui.settings import WidgetSettings, load_settings, save_settings, settings_path
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.folders import find_results, results_dir
from napari_samlung.labels import IGNORE, TUMOR

MICRONS = SlideFrame((0.5, 0.5), (0.0, 0.0), ("um", "um"))


# -- coordinates ----------------------------------------------------------------------------------
def test_world_points_and_level0_pixels_convert_both_ways():
    frame = SlideFrame((0.5, 0.25), (10.0, -4.0))
    assert frame.to_level0(10.0, -4.0) == (0.5, 0.5)  # the centre of pixel (0, 0)
    assert frame.to_world(*frame.to_level0(33.3, 7.1)) == pytest.approx((33.3, 7.1))


def test_a_world_rectangle_on_pixel_edges_becomes_exactly_those_pixels():
    # pixel k spans world [(k - 0.5) * s, (k + 0.5) * s): rows 200..499, columns 100..399
    assert MICRONS.world_rect_to_box(99.75, 49.75, 249.75, 199.75) == (200, 100, 300, 300)
    assert MICRONS.world_rect_to_box(249.75, 199.75, 99.75, 49.75) == (200, 100, 300, 300)  # any corner order
    assert MICRONS.world_rect_to_box(100.0, 50.0, 100.1, 50.1)[2:] == (1, 1)


def test_the_visible_box_is_what_the_canvas_shows():
    # 800 x 600 screen pixels at 4 screen px per µm show 200 x 150 µm = 400 x 300 level-0 pixels,
    # from the middle of pixel (312, 362): the pixels cut at the edges count too
    assert MICRONS.visible_box((256.0, 256.0), 4.0, (800, 600)) == (312, 362, 401, 301)
    assert MICRONS.visible_box((255.75, 255.75), 4.0, (800, 600)) == (312, 362, 400, 300)
    with pytest.raises(ValueError, match="zoom must be positive"):
        MICRONS.visible_box((0.0, 0.0), 0.0, (800, 600))


def test_grid_pixels_land_on_the_slide_pixels_they_cover():
    # class-map pixel i covers level-0 [4i, 4i + 4): its centre is level-0 continuous 4i + 2
    scale, translate = MICRONS.grid_placement(4.0, offset=(10, 20))
    assert scale == (2.0, 2.0)
    assert translate == pytest.approx(MICRONS.to_world((10 + 0.5) * 4, (20 + 0.5) * 4))
    corners = MICRONS.box_to_world_rect((10, 20, 5, 6), 4.0)
    assert corners[0] == pytest.approx(MICRONS.to_world(40, 80))
    assert corners[2] == pytest.approx(MICRONS.to_world(60, 104))


def test_grow_adds_the_margin_on_every_side():
    assert grow((10, 20, 30, 40), 5) == (5, 15, 40, 50)


# -- layer data -----------------------------------------------------------------------------------
@pytest.fixture
def classmap(tmp_path) -> ClassMap:
    slide = tmp_path / "case.svs"
    cm = ClassMap.create(results_dir(slide), (600, 500), scale=2.0, num_classes=1, slide={"mpp": 0.5},
                         model={})
    cm.write((0, 0, 100, 100), np.full((100, 100), TUMOR, np.uint8))
    return cm


def test_classmap_layer_is_a_placed_multiscale_labels_layer_of_the_files_on_disk(classmap, tmp_path):
    data, kwargs, kind = classmap_layer(classmap, MICRONS, tmp_path / "case.svs", "case")
    assert kind == "labels" and kwargs["multiscale"] and len(data) == len(classmap.levels) == 3
    assert data[0].array is classmap.levels[0]  # the zarr arrays, wrapped: napari reads only what it draws
    # class-map pixel (0, 0) covers level-0 [0, 2): its centre, level-0 (1, 1), is at world 0.25 µm
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["translate"] == pytest.approx((0.25, 0.25))
    assert kwargs["units"] == ("um", "um")
    assert kwargs["metadata"][ROLE] == "classmap"
    assert kwargs["metadata"][RESULTS] == str(classmap.root.resolve())


def test_label_colors_hide_background_and_grey_out_ignored_pixels():
    colors = label_colors(2)
    assert colors[0][3] == 0 and colors[None][3] == 0
    assert colors[1] == pytest.approx((200 / 255, 0, 0, 1)) and colors[2][3] == 1
    assert colors[IGNORE][3] < 1


def test_reviewed_layer_outlines_each_recorded_region(classmap, tmp_path):
    classmap.add_reviewed((10, 20, 30, 40))
    rectangles, kwargs, kind = reviewed_layer(classmap, MICRONS, tmp_path / "case.svs", "case")
    assert kind == "shapes" and kwargs["shape_type"] == "rectangle"
    assert rectangles == [MICRONS.box_to_world_rect((10, 20, 30, 40), 2.0)]


def test_draft_layer_edits_the_draft_array_in_place_where_it_belongs(classmap, tmp_path):
    draft = start_review(classmap, (50, 60, 70, 80))
    data, kwargs, kind = draft_layer(draft, MICRONS, tmp_path / "case.svs", "case")
    assert kind == "labels" and data is draft.data
    assert kwargs["metadata"][DRAFT_ID] == draft.id and kwargs["metadata"][DRAFT_BOX] == [50, 60, 70, 80]
    assert kwargs["translate"] == pytest.approx(MICRONS.grid_placement(2.0, (50, 60))[1])


def test_results_are_found_in_the_project_folder_first_then_beside_the_slide(tmp_path, classmap):
    slide = tmp_path / "case.svs"
    assert find_results(slide) == results_dir(slide)
    assert find_results(slide, tmp_path / "elsewhere") == results_dir(slide)
    ClassMap.create(results_dir(slide, tmp_path / "project"), (10, 10), scale=1.0, num_classes=1, slide={},
                    model={})
    assert find_results(slide, tmp_path / "project") == results_dir(slide, tmp_path / "project")
    assert find_results(tmp_path / "other.svs") is None


# -- settings -------------------------------------------------------------------------------------
def test_settings_live_where_the_environment_says_and_round_trip(isolated_config):
    assert settings_path() == isolated_config
    assert load_settings() == WidgetSettings()  # nothing saved yet
    chosen = WidgetSettings(checkpoint="/models/best.pt", device="cuda", project_dir="/data/project")
    save_settings(chosen)
    assert load_settings() == chosen
    assert [p.name for p in isolated_config.parent.iterdir()] == ["settings.json"]  # no temporary left


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"checkpoint": 3, "device": "cpu"})])
def test_damaged_settings_fall_back_to_defaults_field_by_field(isolated_config, content):
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(content)
    settings = load_settings()
    assert settings.checkpoint == ""
    assert settings.device == ("cpu" if "device" in content else "auto")


# -- model files and cache ------------------------------------------------------------------------
def test_model_files_are_checked_with_messages_naming_them(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="choose a SAM-Lung checkpoint"):
        check_model_files("  ", "")
    with pytest.raises(ValueError, match="checkpoint .*nope.pt: no such file"):
        check_model_files(str(tmp_path / "nope.pt"), "")
    with pytest.raises(ValueError, match="SAM weights .*sam.pth: no such file"):
        check_model_files(str(tiny_checkpoint), str(tmp_path / "sam.pth"))
    assert check_model_files(str(tiny_checkpoint), "") == (tiny_checkpoint, None)


def test_the_cache_loads_a_model_once_and_again_when_the_file_changes(tmp_path, tiny_checkpoint):
    import os
    import shutil

    cache = PredictorCache(capacity=1)
    first = cache.get(tiny_checkpoint, None, "cpu")
    assert cache.get(tiny_checkpoint, None, "cpu") is first and cache.loads == 1
    copy = shutil.copy(tiny_checkpoint, tmp_path / "copy.pt")
    other = cache.get(copy, None, "cpu")
    assert other is not first and cache.loads == 2
    os.utime(copy, ns=(1, 1))  # rewritten in place (as fine-tuning does): loaded afresh
    assert cache.get(copy, None, "cpu") is not other and cache.loads == 3
    assert cache.get(tiny_checkpoint, None, "cpu") is not first  # evicted (capacity 1): loaded again
