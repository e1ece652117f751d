"""The confidence pyramid beside the class map: what it holds, and that resume, repair and older
results keep it consistent with the labels (as the class-map tests in test_engine_resume.py)."""

from __future__ import annotations

import math
import shutil
import threading

import numpy as np
import pytest
import torch

from test_engine import LocalConv, demo_slide, predictor, textured_slide  # noqa: F401  (fixtures)
from napari_samlung.inference.engine import AlreadyComplete, SegmentationParams, iter_segment, segment
from napari_samlung.model import normalize
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap, ConfidenceMissing
from napari_samlung.slide import open_slide

PARAMS = dict(tile_size=128, overlap=16, skip_background=False)
WHOLE = (0, 0, 700, 900)


def balanced_model() -> LocalConv:
    """A LocalConv whose two classes split the textured slide about evenly (so confidence varies)."""
    model = LocalConv()
    with torch.no_grad():
        model.c2.bias[1] -= 0.3
    return model


def all_levels(root) -> list[np.ndarray]:
    confidence = ConfidenceMap.open_for(ClassMap.open(root))
    return [confidence.read((0, 0, *level.shape), level=k) for k, level in enumerate(confidence.levels)]


@pytest.fixture(scope="module")
def reference(textured_slide, tmp_path_factory):  # noqa: F811
    """The confidence pyramid of an uninterrupted whole-slide run (small chunks: several per level)."""
    root = tmp_path_factory.mktemp("ref") / "ref.samlung"
    with pytest.MonkeyPatch.context() as patch:
        from napari_samlung.results import classmap

        patch.setattr(classmap, "CHUNK", 256)
        with open_slide(textured_slide) as slide:
            segment(slide, predictor(balanced_model()), root, SegmentationParams(batch_size=4, **PARAMS))
    return all_levels(root)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 256)


@pytest.mark.parametrize("classes", [2, 3])  # binary (tumour probability), and softmax over three
def test_confidence_is_one_minus_the_normalised_entropy_of_the_blended_probabilities(textured_slide, tmp_path,  # noqa: F811
                                                                                     classes):
    from napari_samlung.inference.predictor import TilePredictor
    from napari_samlung.model import SamLungConfig

    model = balanced_model() if classes == 2 else LocalConv(classes)
    config = SamLungConfig.tiny(num_classes=classes - 1, img_size=128)
    with open_slide(textured_slide) as slide:
        image = slide.read_region(0, 0, 0, *slide.shape)
        with torch.no_grad():
            logits = model(normalize(torch.from_numpy(image)[None], config))[0]
        p = torch.softmax(logits.double(), 0).numpy()
        run = TilePredictor(model, config, "cpu", info={"model": "local-conv"})
        result = segment(slide, run, tmp_path / "out.samlung", SegmentationParams(**PARAMS))
    entropy = -(p * np.log(p)).sum(0) / math.log(classes)
    expected = 1 + np.round(254 * (1 - entropy))
    cm = result.classmap
    got = ConfidenceMap.open_for(cm).read((0, 0, *cm.shape)).astype(np.int16)
    inner = (slice(2, -2), slice(2, -2))  # the slide border: white padding vs zero padding differ
    assert np.abs(got[inner] - expected[inner]).max() <= 1  # float32 blending vs float64 here
    assert got.min() < 128 < got.max(), "degenerate test: the model is equally sure everywhere"


def test_the_confidence_pyramid_has_the_class_maps_levels_and_chunks(textured_slide, tmp_path, reference):  # noqa: F811
    with open_slide(textured_slide) as slide:
        cm = segment(slide, predictor(balanced_model()), tmp_path / "out.samlung",
                     SegmentationParams(**PARAMS)).classmap
    confidence = ConfidenceMap.open_for(cm)
    assert [(a.shape, a.chunks) for a in confidence.levels] == [(a.shape, a.chunks) for a in cm.levels]
    levels = all_levels(cm.root)
    for k in range(1, len(levels)):  # nearest-neighbour, as the class map's display pyramid
        np.testing.assert_array_equal(levels[k], levels[0][:: 2 ** k, :: 2 ** k])
    assert confidence.damaged_chunks() == [] and (cm.root / ConfidenceMap.CHECKSUMS).is_file()


def test_where_no_model_ran_the_confidence_is_zero(demo_slide, tmp_path):  # noqa: F811
    path, _synthetic = demo_slide
    with open_slide(path) as slide:
        result = segment(slide, predictor(), tmp_path / "out.samlung", SegmentationParams(batch_size=4))
    assert result.tiles["background"] > 0
    values = ConfidenceMap.open_for(result.classmap).read((0, 0, 1024, 1024))
    assert (values[:96, :96] == 0).all() and (values[-96:, -96:] == 0).all()  # glass: background tiles
    assert (values[448:576, 448:576] > 0).all()  # the tissue in the middle


@pytest.mark.parametrize("batches", [10, 20])  # rows finished in a chunk; whole chunks too
def test_a_cancelled_then_resumed_run_gives_the_confidence_of_an_uninterrupted_one(textured_slide, tmp_path,  # noqa: F811
                                                                                   reference, batches):
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=2, **PARAMS)
    cancel = threading.Event()
    with open_slide(textured_slide) as slide:
        gen = iter_segment(slide, predictor(balanced_model()), root, params, cancel=cancel)
        for _ in range(batches):
            next(gen)
        cancel.set()
        with pytest.raises(StopIteration) as stop:
            next(gen)
        assert stop.value.value.status == "cancelled"
        model = balanced_model()
        segment(slide, predictor(model), root, params)
    assert 0 < model.tiles < 56, "the resumed run did not resume"  # 7 x 8 tiles in all
    for got, expected in zip(all_levels(root), reference):
        np.testing.assert_array_equal(got, expected)


def test_a_damaged_confidence_chunk_is_segmented_again(textured_slide, tmp_path, reference):  # noqa: F811
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=4, **PARAMS)
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(balanced_model()), root, params)
        ConfidenceMap.open_for(ClassMap.open(root)).chunk_path(0, 1, 1).write_bytes(b"not zstd")
        model = balanced_model()
        repaired = segment(slide, predictor(model), root, params)
        assert 0 < model.tiles < 30
        assert any("confidence.zarr/0/c/1/1" in note for note in repaired.plan.notes), repaired.plan.notes
        with pytest.raises(AlreadyComplete):
            segment(slide, predictor(balanced_model()), root, params)
    for got, expected in zip(all_levels(root), reference):
        np.testing.assert_array_equal(got, expected)


def test_results_made_without_confidence_get_it_on_the_next_run_keeping_reviews(textured_slide, tmp_path,  # noqa: F811
                                                                               reference):
    root = tmp_path / "out.samlung"
    params = SegmentationParams(batch_size=4, **PARAMS)
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(balanced_model()), root, params)
        cm = ClassMap.open(root, mode="r+")
        cm.write((300, 400, 50, 60), np.full((50, 60), 7, np.uint8))
        cm.add_reviewed((300, 400, 50, 60))
        shutil.rmtree(root / ConfidenceMap.STORE)  # as results of an earlier version
        with pytest.raises(ConfidenceMissing):
            ConfidenceMap.open_for(ClassMap.open(root))
        rerun = segment(slide, predictor(balanced_model()), root, params)
    assert rerun.status == "complete" and any("no confidence map" in n for n in rerun.plan.notes)
    assert (ClassMap.open(root).read((300, 400, 50, 60)) == 7).all()
    got = all_levels(root)[0]
    outside = np.ones(got.shape, bool)
    outside[300:350, 400:460] = False  # reviewed pixels keep what they had: here none
    np.testing.assert_array_equal(got[outside], reference[0][outside])


def test_a_new_class_map_in_the_folder_does_not_inherit_the_old_confidence(textured_slide, tmp_path):  # noqa: F811
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        cm = segment(slide, predictor(balanced_model()), root, SegmentationParams(**PARAMS)).classmap
    other = ClassMap.create(root, (100, 100), scale=1.0, num_classes=1, slide={}, model={}, overwrite=True)
    with pytest.raises(ConfidenceMissing, match="earlier class map"):
        ConfidenceMap.open_for(other)
    assert cm.shape != other.shape


@pytest.mark.parametrize("binary", [True, False])
def test_a_coin_toss_scores_least_a_certain_class_most_and_an_unsegmented_pixel_zero(binary):
    from napari_samlung.inference.confidence import confidence_of

    if binary:
        probs = torch.tensor([[0.5, 1.0, 0.0, 0.9]])
    else:  # three classes: uniform, certain, certain, and a two-way split
        probs = torch.tensor([[[1 / 3, 1.0, 0.0, 0.5]], [[1 / 3, 0.0, 1.0, 0.5]], [[1 / 3, 0.0, 0.0, 0.0]]])
    covered = torch.tensor([[1, 1, 0, 1]], dtype=torch.uint8)  # the third pixel: no model tile
    got = confidence_of(probs, binary, covered)[0].tolist()
    split = 1 - (0.469 if binary else math.log(2) / math.log(3))  # 0.9/0.1: 0.469 bits
    assert got[:3] == [1, 255, 0] and got[3] == pytest.approx(1 + 254 * split, abs=1)


def test_the_gpu_and_cpu_ways_of_scoring_a_binary_band_agree():
    """The torch way (what a GPU runs) checked on the CPU against the numpy way the CPU runs."""
    from napari_samlung.inference.confidence import binary_on_device, binary_on_host

    probs = torch.rand(64, 300, generator=torch.Generator().manual_seed(0))
    probs[0, :3] = torch.tensor([0.0, 1.0, 1.0 + 1e-7])  # the ends, and a sum that rounds above one
    covered = (torch.rand(64, 300, generator=torch.Generator().manual_seed(1)) > 0.1).to(torch.uint8)
    host = binary_on_host(probs, covered)
    assert torch.equal(binary_on_device(probs, covered), host)
    assert host[0, :3].tolist() == [255, 255, 255] and (host[covered == 0] == 0).all()


@pytest.mark.slow
def test_a_killed_segment_command_resumes_to_the_confidence_of_an_uninterrupted_one(tmp_path):
    """SIGKILL: no handler runs, so only what the writer had finished and logged is kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from napari_samlung.synthetic import write_demo_slide

    slide = tmp_path / "tall.svs"
    write_demo_slide(slide, (2048, 768), mpp=0.5)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    killed.mkdir(), whole.mkdir()

    def command(out):
        return [sys.executable, "-m", "napari_samlung.cli", "segment", str(slide), "--preset", "tiny", "--device",
                "cpu", "--batch-size", "1", "--no-export", "-o", str(out)]

    log = killed / "tall.samlung" / "progress.log"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (log.is_file() and log.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; use a larger slide"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    for out in (killed, whole):
        done = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        resumed = int(done.stdout.split(" resumed")[0].rsplit(", ", 1)[1])  # "..., N resumed, ..."
        assert (resumed > 0) == (out == killed), done.stdout
    got, expected = all_levels(killed / "tall.samlung"), all_levels(whole / "tall.samlung")
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert (got[0] > 0).any() and (got[0] == 0).any()  # tissue scored, glass not
