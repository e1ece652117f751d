"""`samlung import --labels`: the project's label TIFF and PNG/TIFF masks into a slide's results."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from classmap_factory import make_classmap
from import_support import (MAP_SHAPE, SLIDE_SHAPE, assert_same_training_labels, samlung_import, snapshot,
                            write_slide)

from napari_samlung.annotations.label_tiff import classmap_to_label_tiff
from napari_samlung.data.files import write_png
from napari_samlung.labels import IGNORE
from napari_samlung.results.classmap import ClassMap

REGIONS = [(30, 20, 80, 130), (160, 230, 80, 100)]


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_slide(tmp_path_factory.mktemp("slide") / "slide.tif")


def _reviewed_only_labels() -> np.ndarray:
    """Labels as imported results hold them: classes inside the reviewed regions, 255 elsewhere."""
    content = np.zeros(MAP_SHAPE, np.uint8)
    content[20:80, 30:110] = 1
    content[40:60, 50:70] = 0
    yy, xx = np.mgrid[:MAP_SHAPE[0], :MAP_SHAPE[1]]
    content[(yy - 190) ** 2 + (xx - 260) ** 2 < 35**2] = 1
    labels = np.full(MAP_SHAPE, IGNORE, np.uint8)
    for y, x, h, w in REGIONS:
        labels[y:y + h, x:x + w] = content[y:y + h, x:x + w]
    return labels


def _mask(shape, box, value=255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = value
    return mask


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.tif"])
def test_exported_label_tiff_imported_into_fresh_results_gives_the_same_training_labels(tmp_path, slide, name):
    source = make_classmap(tmp_path / "src" / "slide.samlung", _reviewed_only_labels(), scale=2.0, tile=64,
                           slide_path=str(slide), slide_shape=SLIDE_SHAPE)
    for box in REGIONS:
        source.add_reviewed(box)
    exported = classmap_to_label_tiff(source, tmp_path / name)
    (tmp_path / "new").mkdir()
    assert samlung_import(slide, "--labels", exported, "-o", tmp_path / "new", "--preset", "tiny") == 0
    imported = ClassMap.open(tmp_path / "new" / "slide.samlung")
    assert sorted(imported.reviewed_boxes()) == sorted(REGIONS)
    assert_same_training_labels(source.root, imported.root, slide, tmp_path)


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.tif"])
def test_label_tiff_of_a_background_only_region_is_read_as_class_indices_not_a_mask(tmp_path, slide, name):
    labels = np.full(MAP_SHAPE, IGNORE, np.uint8)
    labels[10:40, 20:60] = 0  # reviewed, no tumour: only 0 and 255, which a foreign mask would make tumour
    source = make_classmap(tmp_path / "src" / "slide.samlung", labels, scale=2.0, slide_shape=SLIDE_SHAPE)
    exported = classmap_to_label_tiff(source, tmp_path / name)
    assert samlung_import(slide, "--labels", exported, "-o", tmp_path, "--preset", "tiny") == 0
    cm = ClassMap.open(tmp_path / "slide.samlung")
    assert cm.reviewed_boxes() == [(10, 20, 30, 40)]
    np.testing.assert_array_equal(cm.read((0, 0, *MAP_SHAPE)), labels)


def test_label_tiff_of_a_coarser_class_map_is_sampled_at_the_new_pixel_centres(tmp_path, slide):
    coarse = np.full((128, 192), IGNORE, np.uint8)
    coarse[10:60, 20:90] = 0
    coarse[20:40, 30:50] = 1
    source = make_classmap(tmp_path / "src" / "slide.samlung", coarse, scale=4.0, slide_shape=SLIDE_SHAPE)
    exported = classmap_to_label_tiff(source, tmp_path / "coarse.tif")
    assert samlung_import(slide, "--labels", exported, "-o", tmp_path, "--preset", "tiny") == 0
    labels = ClassMap.open(tmp_path / "slide.samlung").read((0, 0, *MAP_SHAPE))
    # fine pixel i has its centre at level-0 2i + 1, inside coarse pixel (2i + 1) // 4 = i // 2
    np.testing.assert_array_equal(labels, coarse.repeat(2, axis=0).repeat(2, axis=1))


def test_binary_png_mask_at_slide_resolution_is_tumor_sampled_at_pixel_centres(tmp_path, slide, capsys):
    mask = tmp_path / "mask.png"
    write_png(mask, _mask(SLIDE_SHAPE, (40, 60, 140, 160)))  # level-0 rows 40..140, cols 60..160
    assert samlung_import(slide, "--labels", mask, "-o", tmp_path, "--preset", "tiny") == 0
    cm = ClassMap.open(tmp_path / "slide.samlung")
    expected = _mask(MAP_SHAPE, (20, 30, 70, 80), 1)  # class-map pixel i's centre is level-0 2i + 1
    np.testing.assert_array_equal(cm.read((0, 0, *MAP_SHAPE)), expected)
    assert cm.reviewed_boxes() == [(0, 0, *MAP_SHAPE)]  # every pixel of a mask is labelled
    assert "slide level 0" in capsys.readouterr().err


def test_mask_a_few_pixels_off_a_pyramid_level_is_matched_to_it(tmp_path, slide):
    with tifffile.TiffFile(slide) as tif:
        level1 = tif.series[0].levels[1].shape[:2]
    off = (level1[0] - 2, level1[1] + 1)
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, _mask(off, (20, 30, 70, 80), 1))
    assert samlung_import(slide, "--labels", mask, "-o", tmp_path, "--preset", "tiny") == 0
    labels = ClassMap.open(tmp_path / "slide.samlung").read((0, 0, *MAP_SHAPE))
    assert labels[25:65, 35:75].all() and not labels[:15].any() and not labels[:, 85:].any()


def test_class_indices_with_not_reviewed_keep_255_and_review_only_the_labelled_part(tmp_path, slide):
    labels = np.full(MAP_SHAPE, IGNORE, np.uint8)
    labels[10:50, 20:60] = 0
    labels[20:30, 30:40] = 1
    write_png(tmp_path / "indices.png", labels)
    assert samlung_import(slide, "--labels", tmp_path / "indices.png", "-o", tmp_path, "--preset", "tiny") == 0
    cm = ClassMap.open(tmp_path / "slide.samlung")
    assert cm.reviewed_boxes() == [(10, 20, 40, 40)]
    np.testing.assert_array_equal(cm.read((0, 0, *MAP_SHAPE)), labels)


def _other_slide_tiff(tmp_path):
    other = make_classmap(tmp_path / "other.samlung", np.ones((128, 192), np.uint8), scale=2.0,
                          slide_shape=(256, 384))
    return classmap_to_label_tiff(other, tmp_path / "other-labels.tif")


BAD_IMAGES = {
    "size matches nothing": (lambda p: write_png(p / "bad.png", np.zeros((100, 100), np.uint8)),
                             "bad.png", "768 x 512 (slide level 0)"),
    "values not classes": (lambda p: write_png(p / "bad.png", _mask(MAP_SHAPE, (0, 0, 10, 10), 7)),
                           "bad.png", "label values [7]"),
    "not an image": (lambda p: (p / "bad.png").write_text("hello"), "bad.png", "not a readable image"),
    "another slide's label TIFF": (_other_slide_tiff, "other-labels.tif", "768 x 512"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_is_one_line_exit_2_and_the_class_map_untouched(tmp_path, slide, capsys, case):
    make, name, words = BAD_IMAGES[case]
    make(tmp_path)
    cm = make_classmap(tmp_path / "slide.samlung", np.ones(MAP_SHAPE, np.uint8), scale=2.0, tile=64,
                       slide_path=str(slide), slide_shape=SLIDE_SHAPE)
    before = snapshot(cm.root)
    capsys.readouterr()
    assert samlung_import(cm.root, "--labels", tmp_path / name) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and words in err
    assert snapshot(cm.root) == before


def test_label_tiff_with_nothing_reviewed_is_refused_and_makes_no_results(tmp_path, slide, capsys):
    unreviewed = make_classmap(tmp_path / "src" / "slide.samlung", np.full(MAP_SHAPE, IGNORE, np.uint8), scale=2.0,
                               slide_shape=SLIDE_SHAPE)
    exported = classmap_to_label_tiff(unreviewed, tmp_path / "empty.tif")
    (tmp_path / "new").mkdir()
    assert samlung_import(slide, "--labels", exported, "-o", tmp_path / "new", "--preset", "tiny") == 2
    assert "no labelled pixels" in capsys.readouterr().err
    assert list((tmp_path / "new").iterdir()) == []
