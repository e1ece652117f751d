"""The whole-slide engine: tiling, seamless stitching, tissue skipping, resume, reviewed regions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_samlung.results.classmap import ClassMap
from napari_samlung.inference.engine import (AlreadyComplete, SegmentationError, SegmentationParams, iter_segment,
                                             segment)
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.inference.stitching import Stitcher, TileKind
from napari_samlung.inference.tiling import TileGrid
from napari_samlung.model import SamLungConfig, normalize
from napari_samlung.synthetic import SyntheticSlide, write_demo_slide
from napari_samlung.slide import open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff

CONFIG = SamLungConfig.tiny(num_classes=1, img_size=128)


class LocalConv(nn.Module):
    """A model whose output at a pixel depends only on its 5x5 neighbourhood. With overlap 16 a tile's
    outer 4 px in a shared zone have weight 0, so stitching must give the one-piece result."""

    def __init__(self, classes: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, classes, 3, padding=1)
        self.calls = 0
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.tiles += x.shape[0]
        return self.c2(torch.relu(self.c1(x)))


def predictor(model: nn.Module | None = None) -> TilePredictor:
    return TilePredictor(model or LocalConv(), CONFIG, "cpu", info={"model": "local-conv"})


@pytest.fixture(scope="module")
def textured_slide(tmp_path_factory) -> Path:
    """A 900 x 700 lossless pyramidal TIFF with smooth random texture and no background."""
    rng = np.random.default_rng(0)
    from scipy import ndimage

    image = ndimage.uniform_filter((rng.random((700, 900, 3)) * 255).astype(np.uint8), size=(7, 7, 1))
    path = tmp_path_factory.mktemp("slides") / "textured.tif"
    write_pyramidal_tiff(path, image, mpp=0.5, tile=128, compression="zlib", kind="rgb", flavor="tiff")
    return path


@pytest.fixture(scope="module")
def demo_slide(tmp_path_factory) -> tuple[Path, SyntheticSlide]:
    """A 1024 x 1024 synthetic H&E slide with glass around the tissue and a known tumor."""
    path = tmp_path_factory.mktemp("slides") / "demo.svs"
    return path, write_demo_slide(path, (1024, 1024), mpp=0.5)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("box,tile,overlap", [((5, 7, 100, 130), 32, 8), ((0, 0, 64, 64), 64, 0),
                                              ((3, 0, 70, 33), 32, 15), ((0, 0, 20, 20), 32, 4)])
def test_stitcher_gives_the_weighted_average_of_overlapping_tiles(box, tile, overlap, classes):
    grid = TileGrid(box, tile, overlap)
    y0, x0, h, w = box
    canvas, weight_sum = np.zeros((classes, 200, 200)), np.zeros((200, 200))
    logits = {}
    background = {(r, c) for r, c in grid.tiles() if (r + 2 * c) % 3 == 1}  # no tissue: certainly class 0
    for r, c in grid.tiles():
        logits[r, c] = torch.randn(classes, tile, tile, generator=torch.Generator().manual_seed(r * 31 + c))
        probs = torch.softmax(logits[r, c], 0).numpy()
        if (r, c) in background:
            probs = np.zeros_like(probs)
            probs[0] = 1
        y, x, _, _ = grid.tile_box(r, c)
        canvas[:, y:y + tile, x:x + tile] += probs * grid.weights(r, c)
        weight_sum[y:y + tile, x:x + tile] += grid.weights(r, c)
    np.testing.assert_allclose(weight_sum[y0:y0 + h, x0:x0 + w], 1.0, atol=1e-6)
    out = np.full((200, 200), 99)
    stitcher = Stitcher(grid, classes - 1, "cpu")
    for r, c in grid.tiles():
        if (r, c) in background:
            blocks = stitcher.add(r, c, TileKind.BACKGROUND)
        else:
            blocks = stitcher.add(r, c, TileKind.MODEL, stitcher.probabilities(logits[r, c][None])[0])
        for block in blocks:
            y, x, bh, bw = block.box
            assert (out[y:y + bh, x:x + bw] == 99).all(), "a pixel was finished twice"
            out[y:y + bh, x:x + bw] = 0 if block.labels is None else block.labels.numpy()
    assert stitcher.rows_done == grid.shape[0]
    assert (out[y0:y0 + h, x0:x0 + w] == canvas.argmax(0)[y0:y0 + h, x0:x0 + w]).all()
    assert (out == 99).sum() == out.size - h * w, "pixels outside the box were written"


def test_stitcher_refuses_tiles_out_of_row_major_order():
    stitcher = Stitcher(TileGrid((0, 0, 100, 100), 64, 8), 1, "cpu")
    probs = torch.rand(64, 64)
    assert stitcher.add(0, 0, TileKind.MODEL, probs) == []
    with pytest.raises(ValueError, match="row-major"):
        stitcher.add(1, 0, TileKind.MODEL, probs)


def test_tile_grid_rejects_overlap_of_half_a_tile():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid((0, 0, 100, 100), 64, 32)


def test_whole_slide_equals_segmenting_the_image_in_one_piece(textured_slide, tmp_path):
    model = LocalConv()
    with open_slide(textured_slide) as slide:
        image = slide.read_region(0, 0, 0, *slide.shape)
        with torch.no_grad():  # balance the two classes so the comparison means something
            logits = model(normalize(torch.from_numpy(image)[None], CONFIG))
            model.c2.bias[1] -= (logits[0, 1] - logits[0, 0]).median()
            whole = model(normalize(torch.from_numpy(image)[None], CONFIG)).argmax(1)[0].numpy()
        result = segment(slide, predictor(model), tmp_path / "out.samlung",
                         SegmentationParams(tile_size=128, overlap=16, batch_size=4, skip_background=False))
    assert result.status == "complete" and result.tiles["model"] == len(TileGrid((0, 0, 700, 900), 128, 16))
    cm = ClassMap.open(result.root)
    got = cm.read((0, 0, *cm.shape))
    inner = (slice(2, -2), slice(2, -2))  # the slide border: white padding vs zero padding differ
    agreement = (got[inner] == whole[inner]).mean()
    assert agreement > 0.99995, f"stitched result differs from the one-piece result at {1 - agreement:.3%}"
    assert 0.05 < got.mean() < 0.95, "degenerate test: the model predicts a single class"
    for k in range(1, len(cm.levels)):  # the display pyramid is nearest-neighbour of level 0
        f = 2 ** k
        np.testing.assert_array_equal(cm.read((0, 0, *cm.levels[k].shape), level=k), got[::f, ::f])


def test_tiles_without_tissue_are_skipped_and_left_background(demo_slide, tmp_path):
    path, synthetic = demo_slide
    model = LocalConv()
    with open_slide(path) as slide:
        result = segment(slide, predictor(model), tmp_path / "out.samlung", SegmentationParams(batch_size=4))
    assert result.tiles["background"] > 0
    assert model.tiles == result.tiles["model"], "the model ran on tiles without tissue"
    labels = result.classmap.read((0, 0, 1024, 1024))
    glass = synthetic[:, :].min(-1) > 235  # the glass colour is (242, 240, 244)
    corners = np.zeros_like(glass)
    corners[:96, :96] = corners[:96, -96:] = corners[-96:, :96] = corners[-96:, -96:] = True
    assert glass[corners].all(), "test slide should have glass in its corners"
    assert (labels[corners] == 0).all()


def test_region_segmentation_writes_only_inside_the_region(textured_slide, tmp_path):
    with open_slide(textured_slide) as slide:
        result = segment(slide, predictor(), tmp_path / "out.samlung", SegmentationParams(tile_size=128, overlap=16),
                         region=(100, 200, 300, 250))
    cm = result.classmap
    labels = cm.read((0, 0, *cm.shape))
    outside = np.ones_like(labels, bool)
    outside[100:400, 200:450] = False
    assert (labels[outside] == 0).all() and labels[~outside].any()
    assert cm.status == "partial" and cm.meta["segmented"][0]["box"] == [100, 200, 300, 250]


def test_reviewed_regions_are_never_overwritten(textured_slide, tmp_path):
    root = tmp_path / "out.samlung"
    params = SegmentationParams(tile_size=128, overlap=16, skip_background=False)
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(), root, params, region=(0, 0, 10, 10))
        cm = ClassMap.open(root, mode="r+")
        correction = np.full((150, 170), 7, np.uint8)
        cm.write((300, 400, 150, 170), correction)
        cm.add_reviewed((300, 400, 150, 170))
        segment(slide, predictor(), root, params)
    labels = ClassMap.open(root).read((0, 0, 700, 900))
    assert (labels[300:450, 400:570] == 7).all()
    assert (labels[:300] != 7).all()


def test_a_complete_class_map_is_only_recomputed_with_overwrite(textured_slide, tmp_path):
    root = tmp_path / "out.samlung"
    params = SegmentationParams(tile_size=128, overlap=16, skip_background=False)
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(), root, params)
        with pytest.raises(AlreadyComplete):
            segment(slide, predictor(), root, params)
        model = LocalConv()
        assert segment(slide, predictor(model), root, params, overwrite=True).status == "complete"
        assert model.tiles > 0


def test_cancel_stops_within_one_batch_and_the_run_resumes(textured_slide, tmp_path, monkeypatch):
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 256)  # so that some chunks are finished before the cancel
    root = tmp_path / "out.samlung"
    params = SegmentationParams(tile_size=128, overlap=16, batch_size=2, skip_background=False)
    cancel = threading.Event()
    model = LocalConv()
    with open_slide(textured_slide) as slide:
        gen = iter_segment(slide, predictor(model), root, params, cancel=cancel)
        next(gen)
        next(gen)
        cancel.set()
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value.status == "cancelled"
        assert model.calls == 2, "the model ran after cancel"
        assert ClassMap.open(root).status == "incomplete"
        resumed = segment(slide, predictor(), root, params)
    assert resumed.status == "complete"
    with open_slide(textured_slide) as slide:
        fresh = segment(slide, predictor(), tmp_path / "fresh.samlung", params)
    np.testing.assert_array_equal(resumed.classmap.read((0, 0, 700, 900)), fresh.classmap.read((0, 0, 700, 900)))


def test_an_unfinished_run_with_other_settings_is_not_silently_mixed(textured_slide, tmp_path):
    root = tmp_path / "out.samlung"
    cancel = threading.Event()
    with open_slide(textured_slide) as slide:
        gen = iter_segment(slide, predictor(), root, SegmentationParams(tile_size=128, overlap=16), cancel=cancel)
        next(gen)
        cancel.set()
        list(gen)
        with pytest.raises(SegmentationError, match="other settings"):
            segment(slide, predictor(), root, SegmentationParams(tile_size=128, overlap=32))


def test_postprocessing_opens_and_closes_the_stitched_labels(textured_slide, tmp_path):
    from napari_samlung.inference.postprocess import morphological_cleanup

    params = SegmentationParams(tile_size=128, overlap=16, skip_background=False)
    with open_slide(textured_slide) as slide:
        raw = segment(slide, predictor(), tmp_path / "raw.samlung", params).classmap.read((0, 0, 700, 900))
        params.postprocess, params.kernel_size, params.iterations = True, 5, 2
        cleaned = segment(slide, predictor(), tmp_path / "clean.samlung", params).classmap.read((0, 0, 700, 900))
    np.testing.assert_array_equal(cleaned, morphological_cleanup(raw, 5, 2))
    assert (cleaned != raw).any()


def test_region_outside_the_slide_and_bad_sizes_are_refused(textured_slide, tmp_path):
    with open_slide(textured_slide) as slide:
        with pytest.raises(SegmentationError, match="outside the slide"):
            segment(slide, predictor(), tmp_path / "a", region=(5000, 5000, 10, 10))
        with pytest.raises(SegmentationError, match="positive"):
            segment(slide, predictor(), tmp_path / "b", region=(0, 0, 0, 10))
        with pytest.raises(SegmentationError, match="overlap"):
            segment(slide, predictor(), tmp_path / "c", SegmentationParams(tile_size=128, overlap=64))
    assert not (tmp_path / "a").exists()


def test_resolution_follows_the_models_microns_per_pixel(textured_slide, tmp_path):
    with open_slide(textured_slide) as slide:
        result = segment(slide, predictor(), tmp_path / "out.samlung",
                         SegmentationParams(tile_size=128, overlap=16, target_mpp=1.0, skip_background=False))
    cm = result.classmap
    assert cm.shape == (350, 450) and cm.scale == pytest.approx(2.0)
    assert cm.to_slide((10, 20, 5, 5)) == (20, 40, 10, 10)


def test_a_region_reviewed_during_a_run_is_kept(textured_slide, tmp_path, monkeypatch):
    from napari_samlung.inference import classmap_writer as writer
    from napari_samlung.results import classmap

    monkeypatch.setattr(writer, "PROTECT_REFRESH_S", 0.0)
    monkeypatch.setattr(classmap, "CHUNK", 256)  # several chunk rows on this small slide
    root = tmp_path / "out.samlung"
    params = SegmentationParams(tile_size=128, overlap=16, batch_size=1, skip_background=False)
    with open_slide(textured_slide) as slide:
        gen = iter_segment(slide, predictor(), root, params)
        while not next(gen).written:  # run until the first chunks are on disk (the bottom is not yet)
            pass
        widget_view = ClassMap.open(root, mode="r+")  # as the napari widget holds it
        widget_view.add_reviewed((600, 0, 100, 900))
        widget_view.write((600, 0, 100, 900), np.full((100, 900), 9, np.uint8))
        for _ in gen:
            pass
    cm = ClassMap.open(root)
    assert (cm.read((600, 0, 100, 900)) == 9).all()
    assert len(cm.reviewed) == 1 and cm.status == "complete"


@pytest.mark.parametrize("full", [False, True])
def test_loader_hands_out_tiles_in_order_in_batches(full):
    from napari_samlung.inference.loader import TileLoader

    items = list(range(23))
    loader = TileLoader(items, lambda i: np.full((8, 8, 3), i, np.uint8), tile=8, batch_size=4, workers=3,
                        full_batches=full)
    seen = []
    for batch_items, tiles in loader:
        assert tiles.shape[0] == (4 if full else len(batch_items))
        assert [int(v) for v in tiles[:len(batch_items), 0, 0, 0]] == batch_items
        seen += batch_items
        loader.release(None)
    assert seen == items


def test_chunks_written_directly_read_back_through_zarr(tmp_path):
    cm = ClassMap.create(tmp_path / "x.samlung", (1500, 1300), scale=1.0, num_classes=2, slide={}, model={})
    rng = np.random.default_rng(0)
    interior = rng.integers(0, 3, (1024, 1024), dtype=np.uint8)
    edge = rng.integers(0, 3, (476, 276), dtype=np.uint8)  # the corner chunk is cut by the map's edge
    cm.write_chunk(0, 0, 0, interior)
    cm.write_chunk(0, 1, 1, edge)
    reopened = ClassMap.open(cm.root)
    np.testing.assert_array_equal(reopened.read((0, 0, 1024, 1024)), interior)
    np.testing.assert_array_equal(reopened.read((1024, 1024, 476, 276)), edge)
    cm.write_chunk(0, 0, 0, np.zeros((1024, 1024), np.uint8))  # all background: the chunk file goes away
    assert not (cm.root / "classmap.zarr" / "0" / "c" / "0" / "0").exists()
    assert (ClassMap.open(cm.root).read((0, 0, 1024, 1024)) == 0).all()
