"""Region reads: tile borders, slide edges, scaled reads, threads, the tile cache, lazy opening."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samlung.slide import open_slide
from napari_samlung.slide.tiles import FileBytes, TileCache
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from slide_factory import he_texture, reduce2

SRC = he_texture(456, 600, seed=2)  # 64 px tiles: partial tiles at the right and bottom edges
TILE = 64


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    """A lossless three-level pyramid of SRC."""
    path = tmp_path_factory.mktemp("regions") / "pyramid.tif"
    return write_pyramidal_tiff(path, SRC, tile=TILE, levels=3, compression="zlib")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("regions") / "single.tif"
    return write_pyramidal_tiff(path, SRC, tile=TILE, levels=1, compression="zlib")


def test_regions_across_tile_borders_equal_the_source(pyramid):
    rng = np.random.default_rng(0)
    with open_slide(pyramid) as slide:
        for _ in range(30):
            h, w = rng.integers(1, 200, 2)
            y, x = rng.integers(0, 456 - h), rng.integers(0, 600 - w)
            np.testing.assert_array_equal(slide.read_region(0, y, x, h, w), SRC[y: y + h, x: x + w])


def test_parts_outside_the_level_are_white(pyramid):
    with open_slide(pyramid) as slide:
        region = slide.read_region(0, -10, 590, 30, 40)
        assert region.shape == (30, 40, 3)
        np.testing.assert_array_equal(region[10:, :10], SRC[:20, 590:])
        assert (region[:10] == 255).all() and (region[:, 10:] == 255).all()
        assert (slide.read_region(0, 1000, 1000, 5, 5) == 255).all()
        assert slide.read_region(0, 3, 3, 0, 7).shape == (0, 7, 3)
        corner = slide.read_region(2, 100, 140, 30, 30)  # level 2 is 114 x 150
        np.testing.assert_array_equal(corner[:14, :10], reduce2(SRC, 2)[100:, 140:])
        assert (corner[14:] == 255).all()


def test_bad_region_arguments_are_rejected(pyramid):
    with open_slide(pyramid) as slide:
        with pytest.raises(ValueError, match="level"):
            slide.read_region(3, 0, 0, 1, 1)
        with pytest.raises(ValueError, match="negative"):
            slide.read_region(0, 0, 0, -1, 1)
        with pytest.raises(ValueError, match="scale"):
            slide.read_scaled(0, 0, 1, 1, 0)
        with pytest.raises(TypeError):
            slide.read_region(0, 0.5, 0, 1, 1)


def test_best_level_is_the_coarsest_that_only_shrinks(pyramid):
    with open_slide(pyramid) as slide:
        assert slide.downsamples == pytest.approx([1, 2, 4], abs=0.03)
        assert [slide.best_level(s) for s in (0.5, 1, 1.9, 2, 3.9, 4, 100)] == [0, 0, 0, 1, 1, 2, 2]


def torch_resize(image: np.ndarray, r: float) -> np.ndarray:
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, scale_factor=1 / r, mode="bilinear", antialias=True,
                                          recompute_scale_factor=False)
    return out[0].permute(1, 2, 0).numpy()


def test_read_scaled_at_scale_one_is_a_plain_read(pyramid):
    with open_slide(pyramid) as slide:
        np.testing.assert_array_equal(slide.read_scaled(7, 9, 50, 60, 1.0), SRC[7:57, 9:69])


def test_read_scaled_equals_resizing_the_whole_level_then_cropping(single):
    # integer ratio and an origin on the level grid: exactly the crop of one big resize of the
    # level framed in white (outside the slide is white; 3 px of frame = 1 output pixel)
    framed = np.pad(SRC, ((3, 3), (3, 3), (0, 0)), constant_values=255)
    reference = torch_resize(framed, 3.0)[1:-1, 1:-1]
    with open_slide(single) as slide:
        np.testing.assert_array_equal(slide.read_scaled(30, 60, 80, 100, 3.0), reference[10:90, 20:120])
        np.testing.assert_array_equal(slide.read_scaled(0, 0, 152, 200, 3.0), reference)


def test_read_scaled_reads_a_reduced_level_when_it_suffices(pyramid):
    with open_slide(pyramid) as slide:
        level2 = slide.read_region(2, 0, 0, 114, 150)
        np.testing.assert_array_equal(slide.read_scaled(0, 0, 114, 150, 4.0), level2)
        reference = torch_resize(slide.read_region(1, 0, 0, 228, 300), 1.5)  # level 1 at 1/1.5
        np.testing.assert_array_equal(slide.read_scaled(36, 60, 40, 50, 3.0), reference[12:52, 20:70])


def triangle_resample(image: np.ndarray, y0: float, x0: float, h: int, w: int, scale: float) -> np.ndarray:
    """Reference of the documented convention, written independently: separable triangle filter of
    radius ``scale`` centred on each output box's centre (the image must cover the filters)."""
    def weights(n_out, origin, size):
        centres = origin + (np.arange(n_out) + 0.5) * scale
        pixels = np.arange(size) + 0.5
        wts = np.clip(1 - np.abs(pixels[None] - centres[:, None]) / scale, 0, None)
        return wts / wts.sum(1, keepdims=True)

    wy = weights(h, y0, image.shape[0])
    wx = weights(w, x0, image.shape[1])
    return np.stack([wy @ image[..., c] @ wx.T for c in range(image.shape[2])], axis=-1)


def test_read_scaled_at_fractional_origins_and_scales_follows_the_convention(single):
    # a smooth image, so snapping the origin to the level grid (< 1/2 pixel) changes little
    yy, xx = np.mgrid[:456, :600]
    smooth = np.stack([100 + 60 * np.sin(yy / 40), 120 + 50 * np.cos(xx / 50), 90 + 0.1 * yy], -1)
    path = single.parent / "smooth.tif"
    write_pyramidal_tiff(path, smooth.round().astype(np.uint8), tile=TILE, levels=1, compression="zlib")
    with open_slide(path) as slide:
        for y0, x0, scale in [(10.3, 20.7, 2.37), (20.5, 400.2, 3.1), (100.25, 100.75, 0.6)]:
            out = slide.read_scaled(y0, x0, 40, 50, scale)
            if scale > 1:
                expected = triangle_resample(smooth, y0, x0, 40, 50, scale)
            else:  # upsampling: bilinear between pixel centres
                expected = _bilinear(smooth, y0, x0, 40, 50, scale)
            assert np.abs(out.astype(float) - expected).max() <= 3, (y0, x0, scale)


def _bilinear(image, y0, x0, h, w, scale):
    ys = np.clip(y0 + (np.arange(h) + 0.5) * scale - 0.5, 0, image.shape[0] - 1)
    xs = np.clip(x0 + (np.arange(w) + 0.5) * scale - 0.5, 0, image.shape[1] - 1)
    y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y_hi, x_hi = np.minimum(y_lo + 1, image.shape[0] - 1), np.minimum(x_lo + 1, image.shape[1] - 1)
    fy, fx = (ys - y_lo)[:, None, None], (xs - x_lo)[None, :, None]
    top = image[y_lo][:, x_lo] * (1 - fx) + image[y_lo][:, x_hi] * fx
    bottom = image[y_hi][:, x_lo] * (1 - fx) + image[y_hi][:, x_hi] * fx
    return top * (1 - fy) + bottom * fy


def test_big_scaled_reads_are_cut_into_blocks_with_the_same_result(single, monkeypatch):
    from napari_samlung.slide import resample

    with open_slide(single) as slide:
        whole = slide.read_scaled(0, 0, 150, 200, 3.0)
        monkeypatch.setattr(resample, "MAX_READ_PIXELS", 64 * 64)
        np.testing.assert_array_equal(slide.read_scaled(0, 0, 150, 200, 3.0), whole)


def test_concurrent_reads_give_identical_results(pyramid):
    rng = np.random.default_rng(1)
    boxes = [(int(lv), *map(int, rng.integers(-20, 300, 2)), *map(int, rng.integers(1, 150, 2)))
             for lv in rng.integers(0, 3, 200)]
    with open_slide(pyramid) as slide:
        sequential = [slide.read_region(*box) for box in boxes]
    with open_slide(pyramid, cache_bytes=30 * TILE * TILE * 3) as slide:  # evictions under way
        with ThreadPoolExecutor(6) as pool:
            parallel = list(pool.map(lambda box: slide.read_region(*box), boxes))
    for a, b in zip(sequential, parallel):
        np.testing.assert_array_equal(a, b)


def test_cache_stays_within_its_byte_bound(pyramid):
    bound = 10 * TILE * TILE * 3
    with open_slide(pyramid, cache_bytes=bound) as slide:
        slide.read_region(0, 0, 0, 456, 600)
        stats = slide.cache_stats
        assert stats.decodes == 8 * 10  # every tile decoded once
        assert stats.nbytes <= bound and stats.tiles == 10


def test_overlapping_reads_decode_each_tile_once(pyramid):
    with open_slide(pyramid) as slide:
        for y in range(0, 456, 96):
            for x in range(0, 600, 96):
                slide.read_region(0, y - 32, x - 32, 160, 160)  # 64 px overlap between requests
        assert slide.cache_stats.decodes == 8 * 10


def test_concurrent_requests_for_one_tile_share_one_decode():
    cache = TileCache(10**6)
    loads = []
    gate = threading.Event()

    def load():
        loads.append(1)
        gate.wait(5)
        return np.zeros(10, np.uint8)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, "tile", load) for _ in range(8)]
        time.sleep(0.2)  # let every thread ask before the load finishes
        gate.set()
        results = [f.result() for f in futures]
    assert len(loads) == 1
    assert all(r is results[0] for r in results)
    assert cache.stats.decodes == 1 and cache.stats.hits == 7


def test_a_failed_load_is_retried_by_the_next_request():
    cache = TileCache(10**6)

    def fail():
        raise OSError("disk gone")

    with pytest.raises(OSError):
        cache.get("tile", fail)
    assert cache.get("tile", lambda: np.ones(3)).sum() == 3


def test_opening_reads_no_pixel_data(pyramid, monkeypatch):
    reads = []
    original = FileBytes.read
    monkeypatch.setattr(FileBytes, "read", lambda self, *a: reads.append(a) or original(self, *a))
    with open_slide(pyramid) as slide:
        _ = slide.levels, slide.level_shapes, slide.mpp, slide.shape
        assert reads == [] and slide.cache_stats.decodes == 0
        slide.read_region(0, 0, 0, 10, 10)
        assert len(reads) == 1 and slide.cache_stats.decodes == 1


def test_reading_a_closed_slide_fails(pyramid):
    slide = open_slide(pyramid)
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        slide.read_region(0, 0, 0, 1, 1)


def test_level_views_slice_like_numpy(tmp_path):
    rgba = np.dstack([SRC, np.full(SRC.shape[:2], 255, np.uint8)])
    import tifffile

    tifffile.imwrite(tmp_path / "rgba.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=[2])
    with open_slide(tmp_path / "rgba.tif") as slide:
        view = slide.levels[0]
        assert (view.shape, view.dtype, view.ndim, len(view)) == ((456, 600, 3), np.uint8, 3, 456)
        for key in [np.s_[10:20, 30:45], np.s_[5], np.s_[-1, -3:], np.s_[::50, 7::90, 1], np.s_[..., 0],
                    np.s_[100:50], np.s_[400:10:-37, 3], np.s_[:, -1]]:
            np.testing.assert_array_equal(view[key], SRC[key], err_msg=str(key))
        with pytest.raises(IndexError):
            view[456]
