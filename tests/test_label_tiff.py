"""Pyramidal label TIFF: tiled, zlib, nearest-neighbour levels, resolution and description."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from classmap_factory import make_classmap

from napari_samlung.annotations.label_tiff import classmap_to_label_tiff


@pytest.fixture
def cm(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(300, 520), dtype=np.uint8)  # noise: any wrong sample shows
    labels[:40, :40] = 255
    return make_classmap(tmp_path / "s.samlung", labels, num_classes=2, scale=2.0, slide_mpp=0.25)


def test_label_tiff_levels_are_tiled_lossless_and_equal_the_class_map(cm, tmp_path):
    path = classmap_to_label_tiff(cm, tmp_path / "labels.tif", tile=64)
    level0 = cm.read((0, 0, *cm.shape))
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(300, 520), (150, 260), (75, 130), (38, 65), (19, 33)]
        for k, level in enumerate(levels):
            page = level.keyframe
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.dtype == np.uint8
            np.testing.assert_array_equal(level.asarray(), level0[:: 2**k, :: 2**k])  # nearest neighbour
            if k < len(cm.levels):
                np.testing.assert_array_equal(level.asarray(), cm.read((0, 0, *cm.levels[k].shape), level=k))


def test_label_tiff_carries_the_class_map_resolution_and_value_meanings(cm, tmp_path):
    path = classmap_to_label_tiff(cm, tmp_path / "labels.tif", tile=64)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((1e4 / 0.5, 1e4 / 0.5))  # slide mpp 0.25 x scale 2
        text = page.description
    assert "0 = Background" in text and "1 = Class 1" in text and "2 = Class 2" in text
    assert "255 = not reviewed" in text and "0.5 microns" in text


def test_ome_label_tiff_has_subifd_levels_and_physical_size(cm, tmp_path):
    path = classmap_to_label_tiff(cm, tmp_path / "labels.ome.tif", tile=64)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert len(tif.series[0].levels) == 5
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata
        assert "255 = not reviewed" in tif.ome_metadata
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), cm.read((0, 0, 150, 260), level=1))


def test_label_tiff_replaces_an_old_file_without_leaving_temporary_files(cm, tmp_path):
    path = tmp_path / "labels.tif"
    path.write_bytes(b"old")
    classmap_to_label_tiff(cm, path, tile=64)
    assert tifffile.imread(path).shape == (300, 520)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif", "s.samlung"]


def test_a_rounded_class_map_keeps_the_slides_physical_extent(tmp_path):
    """The CMU region (2220 x 2967 px at 0.499 um/px) maps to 2216 x 2961 at 0.5 um/px: tags of
    0.5 um/px would overlay it a pixel short; the exact per-axis size spans the slide exactly."""
    labels = np.zeros((2961, 2216), np.uint8)
    cm = make_classmap(tmp_path / "cmu.samlung", labels, scale=0.5 / 0.499, slide_mpp=0.499,
                       slide_shape=(2967, 2220))
    path = classmap_to_label_tiff(cm, tmp_path / "labels.tif", tile=256)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        width_um, height_um = 2216 * 1e4 * xd / xn, 2961 * 1e4 * yd / yn
        assert width_um == pytest.approx(2220 * 0.499, rel=1e-6)
        assert height_um == pytest.approx(2967 * 0.499, rel=1e-6)
        assert "slide level 0: 2220 x 2967 px" in page.description
