"""Pair discovery in the research layout and exported sets, and the errors that name the bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_samlung.data import DataError, check_pairs, discover_training_data, load_pair, prediction_inputs
from napari_samlung.data.layouts import hold_out, stable_fraction
from napari_samlung.labels import IGNORE
from training_sets import (
    blob_pair,
    synthetic_research_layout,
    write_export_set,
    write_png,
    write_research_layout,
)


def tile(name: str, split: str | None = None, size: int = 32, seed: int = 0, label: np.ndarray | None = None):
    image, binary = blob_pair(size, seed)
    return name, image, binary if label is None else label, split


def test_research_layout_pairs_by_name_and_thresholds_labels(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=32, train=3, val=2)
    data = discover_training_data([root])
    assert [p.name for p in data.train] == ["t0", "t1", "t2"]
    assert [p.name for p in data.val] == ["v0", "v1"]
    assert data.num_classes == 1 and data.mpp is None and not data.notes
    image, label = load_pair(data.train[0], data.num_classes)
    expected_image, expected_label = blob_pair(32, 0)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(label, expected_label)  # 0/255 on disk -> 0/1


def test_research_jpeg_labels_threshold_above_127(tmp_path):
    root = tmp_path / "DATA"
    image, _ = blob_pair(16, 0)
    raw = np.array([[0, 127, 128, 255]] * 16, dtype=np.uint8).repeat(4, axis=1)
    write_png(root / "train" / "mask" / "a.png", image)
    write_png(root / "train" / "label" / "a.png", raw)
    pair = discover_training_data([root], val_fraction=0.5, require_train=False).train[0]
    _, label = load_pair(pair, 1)
    assert label[0].tolist() == [0] * 8 + [1] * 8


def test_export_sets_combine_with_research_data(tmp_path):
    research = synthetic_research_layout(tmp_path / "DATA", size=32, train=2, val=1)
    labels = np.zeros((32, 32), np.uint8)
    labels[:16] = IGNORE
    labels[20:, 20:] = 1
    tiles = [tile("e0", label=labels), tile("e1", "val", seed=1)]
    export = write_export_set(tmp_path / "SET", tiles, mpp=0.25)
    data = discover_training_data([research, export])
    assert sorted(p.name for p in data.train) == ["e0", "t0", "t1"]
    assert sorted(p.name for p in data.val) == ["e1", "v0"]
    assert data.mpp == 0.25 and data.tile_size == 32
    _, label = load_pair(next(p for p in data.train if p.name == "e0"), 1)
    np.testing.assert_array_equal(label, labels)  # 255 kept: the loss and metrics ignore it


def test_without_validation_data_a_stable_fraction_is_held_out(tmp_path):
    tiles = [tile(f"tile{i:02d}", seed=i, size=16) for i in range(20)]
    data = discover_training_data([write_export_set(tmp_path / "SET", tiles)], val_fraction=0.2)
    expected = sorted(name for name, *_ in tiles if stable_fraction(name) < 0.2)
    assert sorted(p.name for p in data.val) == expected and expected
    assert len(data.train) + len(data.val) == 20
    assert any("held out" in note for note in data.notes)
    # Same names, same choice, whatever the order they come in.
    again, _ = hold_out(list(reversed(data.train + data.val)), 0.2)
    assert sorted(p.name for p in again) == sorted(p.name for p in data.train)


def test_hold_out_keeps_at_least_one_pair_on_each_side(tmp_path):
    tiles = [tile("a", size=16), tile("b", size=16, seed=1)]
    data = discover_training_data([write_export_set(tmp_path / "SET", tiles)], val_fraction=0.01)
    assert len(data.train) == 1 and len(data.val) == 1
    single = write_export_set(tmp_path / "ONE", [tile("a", size=16)])
    with pytest.raises(DataError, match="only one training pair"):
        discover_training_data([single])


def test_several_data_paths_must_agree_on_num_classes(tmp_path):
    a = write_export_set(tmp_path / "A", [tile("a", "train"), tile("b", "val")], num_classes=1)
    b = write_export_set(tmp_path / "B", [tile("c", "train")], num_classes=2)
    with pytest.raises(DataError, match=r"B/manifest.json: num_classes is 2"):
        discover_training_data([a, b])


def test_mpp_is_recorded_only_when_the_manifests_agree(tmp_path):
    a = write_export_set(tmp_path / "A", [tile("a", "train"), tile("b", "val")], mpp=0.5)
    b = write_export_set(tmp_path / "B", [tile("c", "train")], mpp=0.25)
    data = discover_training_data([a, b])
    assert data.mpp is None and any("disagree" in note for note in data.notes)


# ---------------------------------------------------------------- bad input: the message names the file


def test_image_without_label_names_the_image(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    (root / "train" / "label" / "t1.png").unlink()
    with pytest.raises(DataError, match=r"train/mask/t1.png: no label with the same name"):
        discover_training_data([root])


def test_label_without_image_names_the_label(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    (root / "val" / "mask" / "v0.png").unlink()
    write_png(root / "val" / "mask" / "other.png", np.zeros((16, 16, 3), np.uint8))
    write_png(root / "val" / "label" / "other.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"val/label/v0.png: no image with the same name"):
        discover_training_data([root])


def test_size_mismatch_names_the_label(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    write_png(root / "train" / "label" / "t0.png", np.zeros((16, 20), np.uint8))
    data = discover_training_data([root])
    with pytest.raises(DataError, match=r"t0.png: size 20x16 does not match its image"):
        check_pairs(data.train + data.val, data.num_classes)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, content):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    path = root / "train" / "mask" / "t1.png"
    path.write_bytes(path.read_bytes()[:40] if content == "truncated" else content)
    data = discover_training_data([root])
    with pytest.raises(DataError, match=r"train/mask/t1.png: (file is empty|not a readable image)"):
        check_pairs(data.train, data.num_classes)


def test_empty_split_names_the_folder(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    for path in (root / "val" / "mask").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"val/mask: empty split"):
        discover_training_data([root])


def test_no_training_pairs_is_an_error(tmp_path):
    root = write_research_layout(tmp_path / "DATA", {"val": [("v", *blob_pair(16, 0))]})
    with pytest.raises(DataError, match="no training pairs"):
        discover_training_data([root])


def test_label_value_above_num_classes_names_the_file(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[0, 0] = 3
    root = write_export_set(tmp_path / "SET", [tile("a", label=labels), tile("b", "val")])
    data = discover_training_data([root])
    with pytest.raises(DataError, match=r"labels/a.png: label values \[3\] out of range"):
        check_pairs(data.train, data.num_classes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"version": 2}, "unsupported version 2"),
        ({"num_classes": "one"}, "'num_classes' has the wrong type"),
        ({"ignore_index": 0}, "ignore_index must be 255"),
        ({"tiles": []}, "empty split"),
        ({"tiles": [{"image": "images/a.png"}]}, r"tiles\[0\] has no 'label' path"),
        ({"tiles": [{"image": "images/a.png", "label": "labels/a.png", "split": "holdout"}]},
         "split must be one of"),
    ],
)
def test_bad_manifest_is_refused_naming_it(tmp_path, change, message):
    root = write_export_set(tmp_path / "SET", [tile("a")])
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(change)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"SET/manifest.json: .*{message}"):
        discover_training_data([root])


def test_manifest_that_is_not_json_or_lists_a_missing_file(tmp_path):
    root = write_export_set(tmp_path / "SET", [tile("a"), tile("b")])
    (root / "labels" / "b.png").unlink()
    with pytest.raises(DataError, match=r"SET/labels/b.png: listed in .*manifest.json but missing"):
        discover_training_data([root])
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest.json: not valid JSON"):
        discover_training_data([root])


def test_a_folder_of_neither_layout_is_refused(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="neither a research layout"):
        discover_training_data([tmp_path / "stuff"])
    with pytest.raises(DataError, match="is not a folder"):
        discover_training_data([tmp_path / "missing"])


def test_prediction_inputs_of_each_folder_kind(tmp_path):
    root = synthetic_research_layout(tmp_path / "DATA", size=16, train=2, val=1)
    split = prediction_inputs(root / "train")
    assert [(p.name, p.label is not None) for p in split] == [("t0", True), ("t1", True)]
    plain = tmp_path / "plain"
    write_png(plain / "x.png", np.zeros((16, 16, 3), np.uint8))
    assert [(p.name, p.label) for p in prediction_inputs(plain)] == [("x", None)]
    export = write_export_set(tmp_path / "SET", [tile("a"), tile("b", "val")])
    assert [p.name for p in prediction_inputs(export)] == ["a", "b"]
    with pytest.raises(DataError, match="pass its test/ split"):
        prediction_inputs(root)
