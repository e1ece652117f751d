"""Pyramidal label TIFF: tiled, zlib, nearest-neighbour levels, resolution and description."""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pytest
import tifffile
import zarr
from classmap_factory import make_classmap

from napari_samlung.annotations.label_tiff import classmap_to_label_tiff, label_tile
from napari_samlung.results.classmap import ClassMap


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


def test_mostly_empty_map_exports_as_tifffile_pil_and_openslide_read_it(tmp_path):
    """A map with one segmented patch: the tiles elsewhere share one stored empty tile (libtiff and
    PIL refuse tiles at offset 0), and every reader sees the class map."""
    from PIL import Image
    import openslide

    cm = ClassMap.create(tmp_path / "s.samlung", (3000, 2500), scale=2.0, num_classes=2,
                         slide={"mpp": 0.25, "shape": [6000, 5000]}, model={})
    cm.write((1100, 1300, 700, 600), np.random.default_rng(0).integers(0, 3, (700, 600), dtype=np.uint8))
    labels = cm.read((0, 0, 3000, 2500))
    path = classmap_to_label_tiff(cm, tmp_path / "labels.tif")
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
        page = levels[0].keyframe
        assert page.tilewidth == 256 and len(set(page.dataoffsets)) == 4 * 4 + 1  # the patch's chunk, one empty
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), labels)
    slide = openslide.OpenSlide(str(path))
    try:
        assert slide.level_dimensions[:2] == ((2500, 3000), (1250, 1500))
        for k in (0, 1):
            region = np.asarray(slide.read_region((0, 0), k, slide.level_dimensions[k]))
            np.testing.assert_array_equal(region[..., 0], labels[:: 2**k, :: 2**k])
    finally:
        slide.close()


def test_a_huge_map_with_a_small_segmented_patch_exports_only_that_patch(tmp_path):
    """40,000 x 40,000 px with 2,000 x 2,000 segmented: only the patch's chunks are read and
    encoded; the other 24,000-odd tiles of level 0 point at one empty tile."""
    cm = ClassMap.create(tmp_path / "big.samlung", (40_000, 40_000), scale=1.0, num_classes=1,
                         slide={"mpp": 0.5}, model={})
    patch = np.random.default_rng(2).integers(0, 2, (2000, 2000), dtype=np.uint8)
    y, x = 21_000, 9_000
    cm.write((y, x, 2000, 2000), patch)
    path = classmap_to_label_tiff(cm, tmp_path / "labels.tif")
    assert path.stat().st_size < 3_000_000  # the patch and the tile tables, not 1.6 GB of zeros
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        page = levels[0].keyframe
        assert len(cm.stored_chunks(0)) == 3 * 3  # 1024 px chunks
        (offset, count), shared = Counter(zip(page.dataoffsets, page.databytecounts)).most_common(1)[0]
        assert shared == 157 * 157 - 3 * 3 * 4 * 4  # all but the patch chunks' 256 px tiles
        tif.filehandle.seek(offset)
        assert not np.frombuffer(zlib.decompress(tif.filehandle.read(count)), np.uint8).any()
        level0 = zarr.open_array(tif.aszarr(level=0), mode="r")
        np.testing.assert_array_equal(level0[y - 300:y + 2300, x - 300:x + 2300],
                                      cm.read((y - 300, x - 300, 2600, 2600)))
        for k in range(3, len(levels)):
            f = 2**k
            expected = np.zeros(levels[k].shape, np.uint8)
            expected[-(-y // f):-(-(y + 2000) // f), -(-x // f):-(-(x + 2000) // f)] = patch[-y % f::f, -x % f::f]
            np.testing.assert_array_equal(levels[k].asarray(), expected)


def test_tiles_grow_where_level_0_would_need_over_a_million():
    assert label_tile((40_000, 40_000)) == 256
    assert label_tile((1_000_000, 1_000_000)) == 1024  # 954,529 tiles instead of 15 million
