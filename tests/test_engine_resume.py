"""Nothing finished is lost: cancelled runs keep their finished rows, region and whole-slide runs
share one tile grid and reuse each other's chunks, resume knows a checkpoint by its content, and
plans are made (and absurd ones refused) before any work."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from test_engine import LocalConv, textured_slide  # noqa: F401  (fixture)
from napari_samlung.inference.engine import (MAX_UPSAMPLING, ModelSpec, SegmentationError, SegmentationParams,
                                             count_tiles, iter_segment, plan_segmentation, run_key, segment)
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.model import SamLungConfig
from napari_samlung.results.classmap import ClassMap
from napari_samlung.slide import open_slide

CONFIG = SamLungConfig.tiny(num_classes=1, img_size=128)
PARAMS = dict(tile_size=128, overlap=16, skip_background=False)
WHOLE = (0, 0, 700, 900)


def predictor(model: LocalConv, info: dict | None = None) -> TilePredictor:
    return TilePredictor(model, CONFIG, "cpu", info=info or {"model": "local-conv"})


def cancel_after(slide, root, model, batches: int, params: SegmentationParams, **kwargs):
    cancel = threading.Event()
    gen = iter_segment(slide, predictor(model, kwargs.pop("info", None)), root, params, cancel=cancel, **kwargs)
    for _ in range(batches):
        next(gen)
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    return stop.value.value


@pytest.fixture(scope="module")
def reference(textured_slide, tmp_path_factory):  # noqa: F811
    """An uninterrupted whole-slide run, and how many tiles it took."""
    model = LocalConv()
    with open_slide(textured_slide) as slide:
        result = segment(slide, predictor(model), tmp_path_factory.mktemp("ref") / "ref.samlung",
                         SegmentationParams(**PARAMS))
    return result.classmap.read(WHOLE), model.tiles


def test_a_cancel_before_the_first_chunk_keeps_the_finished_rows(textured_slide, tmp_path, reference):  # noqa: F811
    """The default 1024 px chunks span the whole 700 px slide: before, nothing was kept."""
    expected, all_tiles = reference
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=4, **PARAMS)
    with open_slide(textured_slide) as slide:
        first = cancel_after(slide, root, LocalConv(), 8, params)
        assert first.status == "cancelled" and first.tiles["processed"] >= 16
        log = (root / "progress.log").read_text()
        assert "s-rows" in log, log
        rerun = LocalConv()
        resumed = segment(slide, predictor(rerun), root, params)
    assert resumed.status == "complete" and resumed.tiles["done"] > 0
    assert rerun.tiles < all_tiles - 8, (rerun.tiles, all_tiles)
    np.testing.assert_array_equal(resumed.classmap.read(WHOLE), expected)
    cm = resumed.classmap
    for k in range(1, len(cm.levels)):  # the display pyramid is whole too
        np.testing.assert_array_equal(cm.read((0, 0, *cm.levels[k].shape), level=k), expected[:: 2 ** k, :: 2 ** k])


def test_a_whole_slide_run_reuses_a_region_runs_chunks(textured_slide, tmp_path, reference, monkeypatch):  # noqa: F811
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 128)
    expected, all_tiles = reference
    root = tmp_path / "out.samlung"
    params = SegmentationParams(**PARAMS)
    with open_slide(textured_slide) as slide:
        region = segment(slide, predictor(LocalConv()), root, params, region=(100, 150, 400, 500))
        assert region.status == "complete"
        np.testing.assert_array_equal(region.classmap.read((100, 150, 400, 500)), expected[100:500, 150:650])
        whole = LocalConv()
        result = segment(slide, predictor(whole), root, params)
    assert result.tiles["done"] > 0 and whole.tiles < all_tiles
    np.testing.assert_array_equal(result.classmap.read(WHOLE), expected)


def test_a_region_run_reuses_a_cancelled_whole_slide_runs_chunks(textured_slide, tmp_path, reference,  # noqa: F811
                                                                 monkeypatch):
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 128)
    expected, _ = reference
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=8, **PARAMS)
    with open_slide(textured_slide) as slide:
        cancel_after(slide, root, LocalConv(), 3, params)
        region = LocalConv()
        result = segment(slide, predictor(region), root, params, region=(0, 0, 120, 300))
    assert result.tiles["done"] > 0 and region.tiles == 0
    np.testing.assert_array_equal(result.classmap.read((0, 0, 120, 300)), expected[:120, :300])


def test_resume_knows_a_copied_checkpoint_by_its_content(textured_slide, tmp_path, reference):  # noqa: F811
    expected, _ = reference
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=4, **PARAMS)
    here = {"checkpoint": "/data/a/ckpt.pt", "checkpoint_sha256": "ab" * 32, "preset": "tiny"}
    copied = {**here, "checkpoint": "/home/me/ckpt-copy.pt"}
    with open_slide(textured_slide) as slide:
        cancel_after(slide, root, LocalConv(), 8, params, info=here)
        resumed = segment(slide, predictor(LocalConv(), copied), root, params)
        assert resumed.status == "complete" and resumed.tiles["done"] > 0
        other = {**here, "checkpoint_sha256": "cd" * 32}
        cancel_after(slide, tmp_path / "b.samlung", LocalConv(), 2, params, info=here)
        with pytest.raises(SegmentationError, match="other settings"):
            segment(slide, predictor(LocalConv(), other), tmp_path / "b.samlung", params)
    np.testing.assert_array_equal(resumed.classmap.read(WHOLE), expected)


def _slide(mpp, shape=(300, 250), note=None):
    return SimpleNamespace(mpp=mpp, mpp_note=note, shape=shape, path=SimpleNamespace(name="picture.tif"))


def test_a_plan_that_upsamples_more_than_twice_is_refused_naming_both_resolutions():
    model = ModelSpec(tile_size=1024, mpp=0.5)
    with pytest.raises(SegmentationError) as refused:
        plan_segmentation(_slide(352.9), model, SegmentationParams())
    message = str(refused.value)
    assert "0.5 um/px" in message and "352.9 um/px" in message and "--allow-upsampling" in message
    assert refused.value.worded(lambda p: f"[{p}]").count("[allow_upsampling]") == 1
    plan = plan_segmentation(_slide(352.9), model, SegmentationParams(allow_upsampling=True))
    assert plan.upsampling > 700
    assert plan_segmentation(_slide(0.5 * MAX_UPSAMPLING), model, SegmentationParams()).upsampling == MAX_UPSAMPLING


def test_unknown_resolution_is_planned_at_level_zero_with_the_reason():
    plan = plan_segmentation(_slide(None, note="the resolution tags say 72 dpi"), ModelSpec(1024, 0.5),
                             SegmentationParams())
    assert plan.scale == 1.0 and plan.shape == (300, 250)
    assert any("72 dpi" in n and "{opt:mpp}" in n for n in plan.notes)


def test_a_plan_counts_tissue_and_finished_tiles_without_a_model(textured_slide, tmp_path):  # noqa: F811
    params = SegmentationParams(batch_size=4, **PARAMS)
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        plan = plan_segmentation(slide, ModelSpec(128, None), params)
        fresh = count_tiles(slide, plan, params)
        assert fresh.tiles == {"model": 56, "background": 0, "done": 0} and fresh.total == len(plan.grid())
        cancel_after(slide, root, LocalConv(), 8, params)
        key = run_key(plan, {"model": "local-conv"}, params)
        later = count_tiles(slide, plan, params, root, key)
    assert later.tiles["done"] > 0 and later.total == fresh.total
    assert any("56 in all" in line for line in fresh.lines())


@pytest.mark.parametrize("tile", [16, 100, 65536])
def test_absurd_tile_sizes_are_refused_before_any_allocation(tile):
    with pytest.raises(SegmentationError, match="tile-size"):
        SegmentationParams(tile_size=tile).validate()


def test_a_complete_map_reads_the_same_through_the_class_map_api(textured_slide, tmp_path, reference):  # noqa: F811
    """A region run marks only the chunks whose pixels equal a whole-slide run's as finished."""
    from napari_samlung.inference.classmap_writer import read_progress

    expected, _ = reference
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(LocalConv()), root, SegmentationParams(**PARAMS), region=(0, 0, 200, 200))
    cm = ClassMap.open(root)
    assert read_progress(root / "progress.log", "s") == set()  # 1024 px chunks: none inside the settled part
    np.testing.assert_array_equal(cm.read((0, 0, 180, 180)), expected[:180, :180])
