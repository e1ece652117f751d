"""The pyramidal TIFF writer: level contents, lossless labels, atomic output, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_samlung.slide import open_slide
from napari_samlung.slide.tiff_writer import Sparse, write_pyramidal_tiff
from slide_factory import he_texture, reduce2

RGB = he_texture(300, 457, seed=4)  # odd width: the last column of each level is a half block


def test_rgb_levels_are_area_averages_of_the_level_above(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "rgb.tif", RGB, tile=64, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        levels = [page.asarray() for page in tif.pages]
        assert all(page.is_tiled and page.tilewidth == 64 for page in tif.pages)
    assert [lv.shape[:2] for lv in levels] == [(300, 457), (150, 229), (75, 115), (38, 58)]
    np.testing.assert_array_equal(levels[0], RGB)
    for upper, lower in zip(levels, levels[1:]):
        np.testing.assert_array_equal(lower, reduce2(upper))


def test_label_levels_are_nearest_neighbour_and_lossless(tmp_path):
    labels = np.random.default_rng(0).integers(0, 4, (300, 457)).astype(np.uint8)
    labels[:20] = 255
    path = write_pyramidal_tiff(tmp_path / "labels.tif", labels, tile=64, compression="zlib", kind="labels",
                                levels=3)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == 8  # deflate
        levels = [page.asarray() for page in tif.pages]
    np.testing.assert_array_equal(levels[0], labels)
    np.testing.assert_array_equal(levels[1], labels[::2, ::2])
    np.testing.assert_array_equal(levels[2], labels[::4, ::4])


def test_label_values_above_255_survive_in_16_bit(tmp_path):
    labels = np.arange(300 * 400, dtype=np.uint16).reshape(300, 400) % 1000
    path = write_pyramidal_tiff(tmp_path / "labels16.tif", labels, tile=64, compression="lzw", kind="labels")
    np.testing.assert_array_equal(tifffile.imread(path), labels)


def test_levels_stop_when_the_smallest_fits_one_tile(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "a.tif", RGB, tile=128)
    with open_slide(path) as slide:
        assert slide.level_shapes == [(300, 457), (150, 229), (75, 115)]
    path = write_pyramidal_tiff(tmp_path / "b.tif", RGB, tile=128, levels=1)
    with open_slide(path) as slide:
        assert slide.level_shapes == [(300, 457)]


def test_description_goes_into_level_0(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "d.tif", RGB, tile=64, description="values: 0 = background")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].description == "values: 0 = background"
    path = write_pyramidal_tiff(tmp_path / "d.ome.tif", RGB, tile=64, flavor="ome", description="hello")
    with tifffile.TiffFile(path) as tif:
        assert "<Description>hello</Description>" in tif.ome_metadata


def test_zarr_source_is_read_in_tiles(tmp_path):
    source = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=RGB.shape, dtype=np.uint8,
                               chunks=(100, 100, 3))
    source[:] = RGB
    path = write_pyramidal_tiff(tmp_path / "from-zarr.tif", source, tile=64, compression="zlib", mpp=0.5)
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, 300, 457), RGB)
        assert slide.mpp == pytest.approx(0.5)


def test_progress_counts_every_tile(tmp_path):
    seen = []
    write_pyramidal_tiff(tmp_path / "p.tif", RGB, tile=64, progress=lambda *counts: seen.append(counts))
    total = 5 * 8 + 3 * 4 + 2 * 2 + 1
    assert seen == [(i, total) for i in range(1, total + 1)]


class FailingSource:
    """An array-like that breaks after a few reads, like a source on a failing disk."""

    shape, dtype = RGB.shape, RGB.dtype

    def __init__(self) -> None:
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        if self.reads > 5:
            raise OSError("read failed")
        return RGB[key]


def test_failed_write_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    target = tmp_path / "slide.tif"
    with pytest.raises(OSError, match="read failed"):
        write_pyramidal_tiff(target, FailingSource(), tile=64)
    assert list(tmp_path.iterdir()) == []
    write_pyramidal_tiff(target, RGB, tile=64)
    before = target.read_bytes()
    with pytest.raises(OSError):
        write_pyramidal_tiff(target, FailingSource(), tile=64)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="labels", compression="jpeg"), "lossless"),
    (dict(tile=100), "multiple of 16"),
    (dict(flavor="ndpi"), "flavor"),
    (dict(compression="webp"), "compression"),
    (dict(levels=0), "levels"),
    (dict(factor=3), "factor"),
    (dict(mpp=0), "mpp"),
    (dict(associated={"label": RGB[:10, :10].copy()}), "associated"),
    (dict(flavor="svs", description="x"), "Aperio"),
])
def test_invalid_arguments_are_rejected(tmp_path, kwargs, match):
    source = RGB[..., 0].copy() if kwargs.get("kind") == "labels" else RGB
    with pytest.raises(ValueError, match=match):
        write_pyramidal_tiff(tmp_path / "x.tif", source, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_wrong_source_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        write_pyramidal_tiff(tmp_path / "x.tif", RGB[..., 0])
    with pytest.raises(ValueError, match="folder"):
        write_pyramidal_tiff(tmp_path / "missing" / "x.tif", RGB)


class CountingSource:
    """A label array that records the boxes read from it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        rows, cols = key
        self.reads.append((rows.start, cols.start, rows.stop, cols.stop))
        return self.array[key]


@pytest.mark.parametrize("name, compression", [("s.tif", "zlib"), ("s.ome.tif", "lzw"), ("s.tif", "none")])
def test_sparse_labels_read_only_near_their_boxes_and_share_one_empty_tile(tmp_path, name, compression):
    labels = np.zeros((300, 457), np.uint8)
    labels[70:140, 200:300] = np.random.default_rng(1).integers(1, 4, (70, 100))
    source = CountingSource(labels)
    path = write_pyramidal_tiff(tmp_path / name, source, tile=64, compression=compression, kind="labels",
                                flavor="ome" if name.endswith(".ome.tif") else "tiff",
                                sparse=Sparse(0, [(70, 200, 70, 100)]))
    assert source.reads and all(y0 < 140 and x0 < 300 and y1 > 70 and x1 > 200 for y0, x0, y1, x1 in source.reads)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) == 4
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
        page = levels[0].keyframe
        tiles = list(zip(page.dataoffsets, page.databytecounts))
        occupied = {(1, 3), (1, 4), (2, 3), (2, 4)}  # (row, column) of the 64 px tiles the box touches
        empty = [tile for i, tile in enumerate(tiles) if divmod(i, 8) not in occupied]
        assert len(set(empty)) == 1 and empty[0][0] > 0 and empty[0][1] > 0  # one stored empty tile
        assert len(set(tiles)) == len(occupied) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_sparse_labels_with_nothing_stored_are_all_fill(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "e.tif", np.ones((200, 130), np.uint8), tile=64, compression="zlib",
                                kind="labels", sparse=Sparse(255, []))
    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    assert [level.shape for level in levels] == [(200, 130), (100, 65), (50, 33)]  # the last: one tile
    assert all((level == 255).all() for level in levels)


def test_sparse_writing_is_for_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        write_pyramidal_tiff(tmp_path / "x.tif", RGB, sparse=Sparse(0, []))
