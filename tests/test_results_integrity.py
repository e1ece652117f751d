"""Damaged results are noticed: chunks carry checksums; reruns redo damaged or lost chunks and say
how many; reading a damaged chunk is one error naming it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from test_engine import LocalConv, predictor, textured_slide  # noqa: F401  (fixture)
from napari_samlung.inference.engine import AlreadyComplete, SegmentationParams, iter_segment, segment
from napari_samlung.results.classmap import ClassMap, ClassMapError
from napari_samlung.slide import open_slide

PARAMS = SegmentationParams(tile_size=128, overlap=16, batch_size=4, skip_background=False)
WHOLE = (0, 0, 700, 900)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    from napari_samlung.results import classmap

    monkeypatch.setattr(classmap, "CHUNK", 256)


@pytest.fixture
def fresh(textured_slide, tmp_path):  # noqa: F811
    with open_slide(textured_slide) as slide:
        return segment(slide, predictor(LocalConv()), tmp_path / "fresh.samlung", PARAMS).classmap.read(WHOLE)


def _chunk_file(cm: ClassMap, level: int = 0):
    cy, cx = 1, 1
    path = cm.chunk_path(level, cy, cx)
    assert path.is_file()
    return path


def test_a_chunk_lost_from_a_complete_map_is_made_again(textured_slide, tmp_path, fresh):  # noqa: F811
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(LocalConv()), root, PARAMS)
        _chunk_file(ClassMap.open(root)).unlink()
        model = LocalConv()
        repaired = segment(slide, predictor(model), root, PARAMS)
        assert repaired.status == "complete" and 0 < model.tiles < 30
        assert any("1 damaged or missing chunk(s)" in n for n in repaired.plan.notes), repaired.plan.notes
        with pytest.raises(AlreadyComplete):  # whole again
            segment(slide, predictor(LocalConv()), root, PARAMS)
    np.testing.assert_array_equal(ClassMap.open(root).read(WHOLE), fresh)


def test_garbage_in_a_finished_chunk_of_an_interrupted_run_is_redone(textured_slide, tmp_path, fresh):  # noqa: F811
    root = tmp_path / "out.samlung"
    cancel = threading.Event()
    with open_slide(textured_slide) as slide:
        gen = iter_segment(slide, predictor(LocalConv()), root, PARAMS, cancel=cancel)
        while not (root / "progress.log").is_file() or "s 1 1" not in (root / "progress.log").read_text():
            next(gen)
        cancel.set()
        list(gen)
        _chunk_file(ClassMap.open(root)).write_bytes(b"not zstd at all")
        resumed = segment(slide, predictor(LocalConv()), root, PARAMS)
    assert resumed.status == "complete"
    assert any("damaged or missing" in n and "0/c/1/1" in n for n in resumed.plan.notes), resumed.plan.notes
    np.testing.assert_array_equal(ClassMap.open(root).read(WHOLE), fresh)


def test_a_damaged_coarse_level_is_rebuilt_from_level_zero(textured_slide, tmp_path, fresh):  # noqa: F811
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(LocalConv()), root, PARAMS)
        cm = ClassMap.open(root)
        cm.chunk_path(1, 0, 0).write_bytes(b"garbage")
        model = LocalConv()
        segment(slide, predictor(model), root, PARAMS)
    assert model.tiles == 0  # level 0 was whole: nothing for the model to do
    cm = ClassMap.open(root)
    np.testing.assert_array_equal(cm.read((0, 0, *cm.levels[1].shape), level=1), fresh[::2, ::2])


def test_reading_a_damaged_chunk_names_it_in_one_line(textured_slide, tmp_path):  # noqa: F811
    root = tmp_path / "out.samlung"
    with open_slide(textured_slide) as slide:
        segment(slide, predictor(LocalConv()), root, PARAMS)
    cm = ClassMap.open(root)
    _chunk_file(cm).write_bytes(b"garbage")
    with pytest.raises(ClassMapError) as damaged:
        cm.read(WHOLE)
    assert str(cm.chunk_path(0, 1, 1)) in str(damaged.value) and "\n" not in str(damaged.value)
    assert cm.damaged_chunks() == [(0, 1, 1, "changed or damaged")]


def test_a_review_applied_through_zarr_keeps_the_checksums_true(tmp_path):
    from classmap_factory import make_classmap
    from napari_samlung.results.drafts import start_review

    cm = make_classmap(tmp_path / "m.samlung", np.zeros((300, 300), np.uint8))
    draft = start_review(cm, (10, 10, 100, 100))
    draft.data[...] = 1
    draft.apply()
    assert cm.damaged_chunks() == []
