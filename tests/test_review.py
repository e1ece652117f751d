"""Review drafts: editing on disk, applying into the class map, and recovery after crashes."""

from __future__ import annotations

import numpy as np
import pytest
from classmap_factory import make_classmap, square_with_hole

from napari_samlung.results import drafts as review
from napari_samlung.results.drafts import ReviewError, list_drafts, open_draft, start_review
from napari_samlung.results.classmap import ClassMap
from napari_samlung.labels import IGNORE

SHAPE = (300, 520)  # three pyramid levels: 300x520, 150x260, 75x130


@pytest.fixture
def cm(tmp_path):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 260:] = 1
    return make_classmap(tmp_path / "slide.samlung", labels)


def _paint(draft, value=1):
    """Edit a draft as napari does: straight into its zarr array."""
    draft.data[10:30, 5:25] = value


def test_start_review_copies_the_box_into_a_draft_on_disk(cm):
    draft = start_review(cm, (100, 250, 40, 30))
    assert draft.box == (100, 250, 40, 30)
    assert draft.path.is_dir() and draft.path.parent == cm.root / "drafts"
    np.testing.assert_array_equal(draft.data[...], cm.read((100, 250, 40, 30)))
    reopened = open_draft(ClassMap.open(cm.root), draft.id)
    assert reopened.box == draft.box and reopened.created == draft.created


def test_editing_a_draft_leaves_the_class_map_unchanged(cm):
    before = cm.read((0, 0, *SHAPE)).copy()
    draft = start_review(cm, (0, 0, 64, 64))
    _paint(draft, 1)
    np.testing.assert_array_equal(ClassMap.open(cm.root).read((0, 0, *SHAPE)), before)


def test_apply_writes_the_draft_and_records_the_region(cm):
    box = (40, 200, 120, 100)
    draft = start_review(cm, box)
    draft.data[...] = 0
    draft.data[20:60, 10:90] = 1
    record = draft.apply()

    reopened = ClassMap.open(cm.root)
    expected = np.zeros(box[2:], dtype=np.uint8)
    expected[20:60, 10:90] = 1
    np.testing.assert_array_equal(reopened.read(box), expected)
    level1 = reopened.read((20, 100, 60, 50), level=1)  # the same box on level 1 (nearest neighbour)
    np.testing.assert_array_equal(level1, expected[::2, ::2])
    assert reopened.reviewed_boxes() == [box]
    assert reopened.reviewed[0]["draft"] == draft.id == record["draft"]
    assert not draft.path.exists() and list_drafts(reopened) == []


def test_discard_removes_the_draft_and_keeps_the_class_map(cm):
    before = cm.read((0, 0, *SHAPE)).copy()
    draft = start_review(cm, (0, 0, 50, 50))
    _paint(draft, 1)
    draft.discard()
    assert list_drafts(cm) == []
    np.testing.assert_array_equal(cm.read((0, 0, *SHAPE)), before)
    assert cm.reviewed == []


def test_a_draft_left_by_a_crash_is_offered_again_with_its_edits(cm):
    draft = start_review(cm, (0, 0, 50, 50))
    _paint(draft, 1)
    del draft  # napari closed or crashed before "Apply"

    reopened = ClassMap.open(cm.root, mode="r+")
    assert reopened.read((10, 5, 20, 20)).max() == 0  # class map untouched
    (left,) = list_drafts(reopened)
    assert np.all(left.data[10:30, 5:25] == 1)
    left.apply()
    assert np.all(ClassMap.open(cm.root).read((10, 5, 20, 20)) == 1)


def test_crash_after_writing_pixels_is_finished_by_applying_again(cm, monkeypatch):
    draft = start_review(cm, (0, 0, 50, 50))
    _paint(draft, 1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ClassMap, "add_reviewed", crash)
    with pytest.raises(KeyboardInterrupt):
        draft.apply()
    monkeypatch.undo()
    assert draft.path.exists() and cm.reviewed == []

    (again,) = list_drafts(ClassMap.open(cm.root, mode="r+"))
    again.apply()
    final = ClassMap.open(cm.root)
    assert np.all(final.read((10, 5, 20, 20)) == 1)
    assert final.reviewed_boxes() == [(0, 0, 50, 50)]


def test_crash_before_removing_the_draft_does_not_record_the_region_twice(cm, monkeypatch):
    draft = start_review(cm, (0, 0, 50, 50))
    _paint(draft, 1)

    def crash(path):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(review, "_remove_folder", crash)
    with pytest.raises(KeyboardInterrupt):
        draft.apply()
    monkeypatch.undo()
    assert len(ClassMap.open(cm.root).reviewed) == 1 and draft.path.exists()

    (again,) = list_drafts(ClassMap.open(cm.root, mode="r+"))
    again.apply()
    assert len(ClassMap.open(cm.root).reviewed) == 1 and list_drafts(cm) == []


def test_box_partly_outside_is_clipped_and_box_outside_is_an_error(cm):
    assert start_review(cm, (280, 500, 50, 50)).box == (280, 500, 20, 20)
    with pytest.raises(ValueError, match=r"\(400, 0, 10, 10\).*\(300, 520\)"):
        start_review(cm, (400, 0, 10, 10))
    with pytest.raises(ValueError, match="no area"):
        start_review(cm, (0, 0, 0, 10))


def test_label_values_that_are_not_classes_refuse_to_apply_and_keep_the_draft(cm):
    draft = start_review(cm, (0, 0, 20, 20))
    draft.data[0, 0] = 7
    draft.data[1, 1] = IGNORE  # "not sure": allowed
    with pytest.raises(ReviewError, match=r"\[7\]"):
        draft.apply()
    assert draft.path.exists() and cm.read((0, 0, 1, 1))[0, 0] == 0 and cm.reviewed == []


def test_applying_into_a_read_only_class_map_is_a_clear_error(cm):
    draft = start_review(cm, (0, 0, 20, 20))
    read_only = ClassMap.open(cm.root, mode="r")
    with pytest.raises(ReviewError, match="read-only"):
        open_draft(read_only, draft.id).apply()
    assert draft.path.exists()


def test_a_draft_for_another_class_map_shape_refuses_to_apply(cm):
    draft = start_review(cm, (0, 0, 20, 20))
    recreated = ClassMap.create(cm.root, (100, 100), scale=2.0, num_classes=1, slide={}, model={}, overwrite=True)
    with pytest.raises(ReviewError, match="shape"):
        open_draft(recreated, draft.id).apply()


def test_leftovers_of_interrupted_draft_operations_are_not_drafts(cm):
    start_review(cm, (0, 0, 20, 20))
    folder = cm.root / "drafts"
    (folder / ".tmp-abc.zarr").mkdir()
    (folder / ".trash-1234-def.zarr").mkdir()
    assert len(list_drafts(cm)) == 1
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_reviewed_regions_persist_and_drafts_list_oldest_first(tmp_path):
    cm = make_classmap(tmp_path / "s.samlung", square_with_hole())
    first = start_review(cm, (0, 0, 30, 30))
    second = start_review(cm, (50, 50, 30, 30))
    assert [d.id for d in list_drafts(cm)] == [first.id, second.id]
    second.apply()
    first.apply()
    assert sorted(ClassMap.open(cm.root).reviewed_boxes()) == [(0, 0, 30, 30), (50, 50, 30, 30)]


def test_a_region_applied_during_a_segmentation_run_survives_the_runs_metadata_update(cm):
    engine_view = ClassMap.open(cm.root, mode="r+")  # the engine's own object, opened before the review
    start_review(cm, (0, 0, 20, 20)).apply()
    engine_view.update_meta(status="complete")  # the run finishes
    assert ClassMap.open(cm.root).reviewed_boxes() == [(0, 0, 20, 20)]
