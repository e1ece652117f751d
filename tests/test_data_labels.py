"""Research tumor masks stored as 0/1 instead of 0/255 are read as tumor, never as all background;
a mask that is neither is refused naming the file. The same for training data and evaluation folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_samlung.data import DataError, check_pairs, discover_training_data, load_pair, prediction_inputs
from napari_samlung.data.layouts import RESEARCH
from napari_samlung.data.pairs import decode_label
from training_sets import blob_pair, write_png


def research_root(root: Path, labels: dict[str, np.ndarray], split: str = "train") -> Path:
    """``root/split/mask`` images and ``label`` files holding exactly ``labels`` (no scaling)."""
    for name, label in labels.items():
        write_png(root / split / "mask" / f"{name}.png", blob_pair(label.shape[0], 0)[0])
        write_png(root / split / "label" / f"{name}.png", label)
    return root


def test_zero_one_research_labels_train_as_tumor(tmp_path):
    _, mask = blob_pair(32, 3)
    root = research_root(tmp_path / "DATA", {"a": mask, "b": mask})
    research_root(root, {"v": mask}, split="val")
    data = discover_training_data([root])
    check_pairs(data.train + data.val, data.num_classes)
    _, label = load_pair(data.train[0], data.num_classes)
    np.testing.assert_array_equal(label, mask)
    assert label.sum() > 0


def test_zero_one_and_zero_255_files_mix_in_one_layout(tmp_path):
    _, mask = blob_pair(32, 4)
    root = research_root(tmp_path / "DATA", {"ones": mask, "bytes": mask * 255, "empty": 0 * mask})
    pairs = {p.name: p for p in discover_training_data([root], val_fraction=0.5, require_train=False).train}
    for name, expected in {"ones": mask, "bytes": mask, "empty": 0 * mask}.items():
        np.testing.assert_array_equal(load_pair(pairs[name], 1)[1], expected, err_msg=name)


def test_an_evaluation_folder_reads_zero_one_labels_the_same_way(tmp_path):
    _, mask = blob_pair(32, 5)
    split = research_root(tmp_path / "DATA", {"t": mask}, split="test") / "test"
    (pair,) = prediction_inputs(split)
    np.testing.assert_array_equal(load_pair(pair, 1)[1], mask)


@pytest.mark.parametrize("top", [2, 100, 127])
def test_a_mask_that_is_neither_zero_one_nor_zero_255_is_refused_naming_the_file(tmp_path, top):
    label = np.zeros((16, 16), np.uint8)
    label[:4, :4] = top
    root = research_root(tmp_path / "DATA", {"odd": label, "fine": (label > 0).astype(np.uint8)})
    data = discover_training_data([root], val_fraction=0.5, require_train=False)
    with pytest.raises(DataError, match=rf"label/odd.png: label values up to {top}, none above 127: "
                                        r"neither a 0/255 nor a 0/1 tumor mask"):
        check_pairs(data.train, 1)


def test_jpeg_ringing_around_a_zero_255_mask_still_thresholds_at_127():
    raw = np.array([[0, 1, 2, 126, 127, 128, 200, 255]], np.uint8)
    assert decode_label(raw, RESEARCH, 1, "x.png").tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]


def test_class_indices_keep_their_meaning_with_several_classes():
    raw = np.array([[0, 1, 2, 255]], np.uint8)
    assert decode_label(raw, RESEARCH, 2, "x.png").tolist() == [[0, 1, 2, 255]]


def test_a_zero_255_mask_given_to_a_model_of_more_classes_is_refused(tmp_path):
    """A 2-class checkpoint on binary masks used to score pixel accuracy 0.0 without a word."""
    _, mask = blob_pair(32, 6)
    split = research_root(tmp_path / "DATA", {"t": mask * 255}, split="test") / "test"
    (pair,) = prediction_inputs(split)
    with pytest.raises(DataError, match=r"label/t.png: a 0/255 tumor mask, but the model has 2 classes"):
        load_pair(pair, 2)
    np.testing.assert_array_equal(load_pair(pair, 1)[1], mask)
