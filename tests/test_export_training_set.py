"""Training-set export: layout, tile contents, labels outside reviewed regions, atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classmap_factory import make_classmap
from slide_factory import he_texture

from napari_samlung.annotations.errors import ExportError
from napari_samlung.annotations.training_set import export_training_set, export_training_sets, plan_tiles
from napari_samlung.data.files import read_gray, read_rgb
from napari_samlung.data.layouts import discover_training_data, read_export_set
from napari_samlung.data.pairs import load_pair
from napari_samlung.labels import IGNORE
from napari_samlung.slide import open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff

SLIDE_SHAPE = (512, 768)  # level 0; the class map is at scale 2: 256 x 384
TILE = 64
REGION_SMALL = (10, 20, 40, 50)  # smaller than a tile: one tile
REGION_LARGE = (100, 150, 100, 150)  # 2 x 3 tiles


def _labels() -> np.ndarray:
    labels = np.zeros((256, 384), dtype=np.uint8)
    labels[30:150, 40:300] = 1
    return labels


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "slide-A.tif"
    return write_pyramidal_tiff(path, he_texture(*SLIDE_SHAPE), mpp=0.25, tile=64, compression="zlib")


@pytest.fixture
def slide(slide_file):
    with open_slide(slide_file) as opened:
        yield opened


@pytest.fixture
def cm(tmp_path, slide_file):
    classmap = make_classmap(tmp_path / "slide-A.samlung", _labels(), scale=2.0, tile=TILE,
                             slide_path=str(slide_file), slide_shape=SLIDE_SHAPE)
    classmap.add_reviewed(REGION_SMALL)
    classmap.add_reviewed(REGION_LARGE)
    return classmap


def test_export_writes_the_manifest_layout_the_trainer_reads(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("format", "version", "num_classes", "class_names", "ignore_index",
                                     "mpp", "tile_size")} == {
        "format": "samlung-training-set", "version": 1, "num_classes": 1,
        "class_names": {"0": "Background", "1": "Tumor"}, "ignore_index": 255, "mpp": 0.5, "tile_size": TILE}
    assert len(manifest["tiles"]) == 1 + 6
    ids = [r["id"] for r in cm.reviewed]
    for tile in manifest["tiles"]:
        assert set(tile) == {"image", "label", "slide", "level", "x", "y", "width", "height", "region"}
        assert tile["slide"] == str(slide.path.resolve()) and tile["level"] == 0
        assert (tile["width"], tile["height"]) == (2 * TILE, 2 * TILE)
        assert tile["region"] in ids
    data = discover_training_data([out], val_fraction=0.3)
    assert data.num_classes == 1 and data.mpp == 0.5 and data.tile_size == TILE
    for pair in read_export_set(out).pairs:
        image, label = load_pair(pair, 1)
        assert image.shape == (TILE, TILE, 3) and label.shape == (TILE, TILE)


def test_tiles_cover_regions_and_a_small_region_gets_one_centred_tile(cm):
    tiles = plan_tiles(cm, "slide-A", TILE)
    boxes = {t.box for t in tiles}
    assert (0, 13, TILE, TILE) in boxes  # rows centred at 10 - 12 -> clamped to 0; cols 20 - 7
    large = [b for b in boxes if b[0] >= 100]
    assert sorted({b[0] for b in large}) == [100, 136] and sorted({b[1] for b in large}) == [150, 193, 236]
    covered = np.zeros((256, 384), bool)
    for y, x, h, w in boxes:
        covered[y:y + h, x:x + w] = True
    for y, x, h, w in (REGION_SMALL, REGION_LARGE):
        assert covered[y:y + h, x:x + w].all()


def test_image_tiles_equal_the_slide_read_at_model_resolution(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET")
    manifest = json.loads((out / "manifest.json").read_text())
    for tile in manifest["tiles"]:
        expected = slide.read_scaled(tile["y"], tile["x"], TILE, TILE, 2.0)
        np.testing.assert_array_equal(read_rgb(out / tile["image"]), expected)


def test_labels_are_255_outside_reviewed_regions_and_class_values_inside(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET")
    manifest = json.loads((out / "manifest.json").read_text())
    truth = np.full((256, 384), IGNORE, np.uint8)
    for y, x, h, w in cm.reviewed_boxes():
        truth[y:y + h, x:x + w] = _labels()[y:y + h, x:x + w]
    for tile in manifest["tiles"]:
        y, x = tile["y"] // 2, tile["x"] // 2
        label = read_gray(out / tile["label"])
        np.testing.assert_array_equal(label, truth[y:y + TILE, x:x + TILE])
    small = read_gray(out / "labels" / "slide-A_x26_y0.png")  # level-0 origin (class map: 13, 0)
    assert set(np.unique(small)) == {0, 1, IGNORE}


def test_other_reviewed_regions_inside_a_tile_keep_their_labels(tmp_path, slide):
    cm = make_classmap(tmp_path / "m.samlung", np.ones((256, 384), np.uint8), scale=2.0, tile=TILE,
                       slide_path=str(slide.path), slide_shape=SLIDE_SHAPE)
    first = cm.add_reviewed((0, 0, 20, 20))
    cm.add_reviewed((40, 40, 10, 10))  # inside the first region's tile (0, 0, 64, 64)
    out = export_training_set(cm, slide, tmp_path / "SET", regions=[first["id"]])
    (tile,) = json.loads((out / "manifest.json").read_text())["tiles"]
    label = read_gray(out / tile["label"])
    assert (label[:20, :20] == 1).all() and (label[40:50, 40:50] == 1).all()
    assert (label == 1).sum() == 400 + 100 and (label == IGNORE).sum() == TILE * TILE - 500


def test_tile_names_are_stable_across_exports(cm, slide, tmp_path):
    first = export_training_set(cm, slide, tmp_path / "A")
    second = export_training_set(cm, slide, tmp_path / "B")
    assert sorted(p.name for p in (first / "images").iterdir()) == sorted(p.name for p in (second / "images").iterdir())
    assert "slide-A_x300_y200.png" in {p.name for p in (first / "labels").iterdir()}


def test_tile_names_carry_the_level0_origin_the_manifest_records(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET")
    for tile in json.loads((out / "manifest.json").read_text())["tiles"]:
        assert tile["image"].endswith(f"_x{tile['x']}_y{tile['y']}.png"), tile


def test_existing_set_is_replaced_only_with_overwrite(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET")
    (out / "images" / "stale.png").write_bytes(b"x")
    with pytest.raises(ExportError, match="already there"):
        export_training_set(cm, slide, out)
    assert (out / "images" / "stale.png").exists()
    export_training_set(cm, slide, out, overwrite=True)
    assert not (out / "images" / "stale.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SET", "slide-A.samlung"]  # no temporary folders


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_crash_during_export_leaves_the_old_set_whole(cm, slide, tmp_path, mode):
    out = export_training_set(cm, slide, tmp_path / "SET")
    before = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    cm.write((0, 0, 256, 384), np.zeros((256, 384), np.uint8))  # the new export would change every label

    def crash(done, total):
        if done == 3:
            raise KeyboardInterrupt("power cut")

    with pytest.raises(KeyboardInterrupt):
        export_training_set(cm, slide, out, progress=crash, **{mode: True})
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == before  # hard links not written through
    read_export_set(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SET", "slide-A.samlung"]


def test_a_folder_that_is_not_a_training_set_is_never_replaced(cm, slide, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="not a training set"):
        export_training_set(cm, slide, tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def test_several_slides_go_into_one_set_at_once_or_by_appending(cm, slide, tmp_path, slide_file):
    other_path = tmp_path / "slide-B.tif"
    other_path.write_bytes(slide_file.read_bytes())
    with open_slide(other_path) as other:
        cm_b = make_classmap(tmp_path / "slide-B.samlung", _labels(), scale=2.0, tile=TILE,
                             slide_path=str(other_path), slide_shape=SLIDE_SHAPE)
        cm_b.add_reviewed((0, 0, 64, 64))
        both = export_training_sets([(cm, slide), (cm_b, other)], tmp_path / "BOTH")
        assert len(read_export_set(both).pairs) == 7 + 1

        appended = export_training_set(cm, slide, tmp_path / "APPENDED")
        export_training_set(cm_b, other, appended, append=True)
        export_training_set(cm_b, other, appended, append=True)  # again: same tiles replaced, not added
        names = sorted(p.name for p in read_export_set(appended).pairs)
        assert names == sorted(p.name for p in read_export_set(both).pairs)


def test_two_different_slides_with_one_name_are_refused(cm, slide, tmp_path, slide_file):
    twin = tmp_path / "elsewhere" / "slide-A.tif"
    twin.parent.mkdir()
    twin.write_bytes(slide_file.read_bytes())
    out = export_training_set(cm, slide, tmp_path / "SET")
    with open_slide(twin) as other:
        cm_twin = make_classmap(tmp_path / "twin.samlung", _labels(), scale=2.0, tile=TILE,
                                slide_path=str(twin), slide_shape=SLIDE_SHAPE)
        cm_twin.add_reviewed((0, 0, 10, 10))
        with pytest.raises(ExportError, match="another slide named 'slide-A'"):
            export_training_set(cm_twin, other, out, append=True)


def test_a_class_map_without_reviewed_regions_is_a_clear_error(tmp_path, slide):
    cm = make_classmap(tmp_path / "m.samlung", _labels(), scale=2.0, tile=TILE, slide_shape=SLIDE_SHAPE)
    with pytest.raises(ExportError, match="no reviewed regions"):
        export_training_set(cm, slide, tmp_path / "SET")
    assert not (tmp_path / "SET").exists()


def test_a_slide_of_another_size_and_unknown_region_ids_are_refused(cm, tmp_path, slide):
    wrong = make_classmap(tmp_path / "w.samlung", _labels(), scale=2.0, tile=TILE, slide_shape=(100, 100))
    wrong.add_reviewed((0, 0, 10, 10))
    with pytest.raises(ExportError, match="768 x 512"):
        export_training_set(wrong, slide, tmp_path / "SET")
    with pytest.raises(ExportError, match="nope"):
        export_training_set(cm, slide, tmp_path / "SET", regions=["nope"])


def test_tile_size_can_be_chosen_and_append_keeps_it(cm, slide, tmp_path):
    out = export_training_set(cm, slide, tmp_path / "SET", tile_size=32)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tile_size"] == 32
    assert read_rgb(out / manifest["tiles"][0]["image"]).shape == (32, 32, 3)
    with pytest.raises(ExportError, match="cannot append"):
        export_training_set(cm, slide, out, append=True, tile_size=64)
