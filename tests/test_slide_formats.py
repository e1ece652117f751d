"""Every supported slide layout opens with the right levels, microns per pixel and pixels."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from napari_samlung.slide import LevelView, open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from slide_factory import he_texture, reduce2, write_generic, write_ndpi, write_ome_planes, write_svs_rgb_j2k

SRC = he_texture(600, 832, seed=1)
SRC_EVEN = SRC[:512, :768]  # NDPI levels need sides divisible by 8 x tile width


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def full(slide, level: int = 0) -> np.ndarray:
    return slide.read_region(level, 0, 0, *slide.level_shapes[level])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("formats")


# --- the real SVS -------------------------------------------------------------------------------

def test_real_svs_has_one_level_and_no_associated_images(real_svs):
    with open_slide(real_svs) as slide:
        assert slide.format == "aperio-svs"
        assert slide.level_shapes == [(2967, 2220)]
        assert slide.downsamples == [1.0]
        assert isinstance(slide.levels[0], zarr.Array) and slide.levels[0].shape == (2967, 2220, 3)


def test_real_svs_reads_mpp_from_the_aperio_description(real_svs):
    with open_slide(real_svs) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "aperio"
        assert slide.magnification == 20  # AppMag is metadata, not the pixel size
        assert slide.properties["aperio.AppMag"] == "20"


def test_real_svs_region_equals_tifffile_full_read(real_svs):
    reference = tifffile.imread(real_svs)
    with open_slide(real_svs) as slide:
        np.testing.assert_array_equal(full(slide), reference)
        np.testing.assert_array_equal(slide.read_region(0, 1000, 500, 300, 700),
                                      reference[1000:1300, 500:1200])


def test_user_mpp_overrides_the_file(real_svs):
    with open_slide(real_svs, mpp=0.25) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.25, "user")


# --- generated Aperio SVS -----------------------------------------------------------------------

def write_svs(folder: Path, compression: str) -> Path:
    return write_pyramidal_tiff(folder / f"aperio-{compression}.svs", SRC, mpp=0.499, tile=64, factor=4,
                                compression=compression, flavor="svs", magnification=20,
                                associated={"label": SRC[:60, :80].copy(), "macro": SRC[:100, :300].copy()})


@pytest.mark.parametrize("compression", ["jpeg", "jpeg2000"])
def test_generated_svs_levels_exclude_thumbnail_label_and_macro(folder, compression):
    path = write_svs(folder, compression)
    with tifffile.TiffFile(path) as tif:  # the file really has the associated images
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
    with open_slide(path) as slide:
        assert slide.format == "aperio-svs"
        assert slide.level_shapes == [(600, 832), (150, 208), (38, 52)]
        assert slide.downsamples == pytest.approx([1, 4, 4 * (600 / 38 + 832 / 52) / 8], rel=1e-6)
        assert (slide.mpp, slide.mpp_source, slide.magnification) == (pytest.approx(0.499), "aperio", 20)
        assert mean_error(full(slide), SRC) < 3
        assert mean_error(full(slide, 1), reduce2(SRC, 2)) < 6  # JPEG loses more on denser texture


def test_aperio_ycbcr_jpeg2000_tiles_are_converted_to_rgb(folder):
    path = write_svs(folder, "jpeg2000")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == 33003
        assert mean_error(tif.pages[0].asarray(), SRC) > 30  # stored as YCbCr, not RGB
    with open_slide(path) as slide:
        assert isinstance(slide.levels[0], LevelView)
        assert mean_error(np.asarray(slide.levels[0][:, :]), SRC) < 3


def test_aperio_rgb_jpeg2000_tiles(folder):
    path = write_svs_rgb_j2k(folder / "aperio-33005.svs", [SRC, reduce2(SRC, 2)], mpp=0.2527)
    with open_slide(path) as slide:
        assert slide.format == "aperio-svs"
        assert slide.level_shapes == [(600, 832), (150, 208)]
        assert slide.mpp == pytest.approx(0.2527)
        assert mean_error(full(slide), SRC) < 2


# --- OME-TIFF -----------------------------------------------------------------------------------

def test_ome_tiff_with_subifd_pyramid(folder):
    path = write_pyramidal_tiff(folder / "slide.ome.tif", SRC, mpp=0.25, tile=64, levels=3, flavor="ome",
                                compression="zlib")
    with open_slide(path) as slide:
        assert slide.format == "ome-tiff"
        assert slide.level_shapes == [(600, 832), (300, 416), (150, 208)]
        assert slide.downsamples == [1, 2, 4]
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.25), "ome")
        np.testing.assert_array_equal(full(slide), SRC)
        with tifffile.TiffFile(path) as tif:
            np.testing.assert_array_equal(full(slide, 2), tif.series[0].levels[2].asarray())
        assert all(isinstance(level, zarr.Array) for level in slide.levels)
        np.testing.assert_array_equal(slide.levels[2][:], full(slide, 2))


def test_ome_tiff_with_channel_planes_and_nanometre_pixel_size(folder):
    path = write_ome_planes(folder / "planes.ome.tif", [SRC, reduce2(SRC)], mpp_nm=452.0)
    with open_slide(path) as slide:
        assert slide.format == "ome-tiff"
        assert slide.level_shapes == [(600, 832), (300, 416)]
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.452), "ome")
        np.testing.assert_array_equal(full(slide), SRC)
        np.testing.assert_array_equal(full(slide, 1), reduce2(SRC))
        np.testing.assert_array_equal(np.asarray(slide.levels[1][10:20, 30:40]), reduce2(SRC)[10:20, 30:40])


# --- NDPI ---------------------------------------------------------------------------------------

def test_ndpi_levels_mpp_and_excluded_macro_and_map(folder):
    levels = [SRC_EVEN, reduce2(SRC_EVEN, 2)]
    path = write_ndpi(folder / "slide.ndpi", levels, mpp=0.2265, macro=SRC_EVEN[::8, ::8].copy(),
                      map_image=SRC_EVEN[::16, ::16, 0].copy())
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ndpi and [s.name for s in tif.series] == ["Baseline", "Macro", "Map"]
        assert tif.pages[0].is_tiled and tif.pages[0].chunks[:2] == (8, 64)  # McuStarts make it tiled
    with open_slide(path) as slide:
        assert slide.format == "ndpi"
        assert slide.level_shapes == [(512, 768), (128, 192)]
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.2265), "tiff-resolution")
        assert slide.magnification == 20
        assert mean_error(full(slide), SRC_EVEN) < 3
        assert mean_error(full(slide, 1), levels[1]) < 4
        np.testing.assert_array_equal(slide.read_region(0, 3, 60, 20, 10), full(slide)[3:23, 60:70])


# --- generic pyramidal TIFF and plain images ----------------------------------------------------

def test_pyramid_as_following_pages(folder):
    path = write_pyramidal_tiff(folder / "pages.tif", SRC, mpp=0.5, tile=64, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 5 and len(tif.pages[0].subifds or ()) == 0
    with open_slide(path) as slide:
        assert slide.format == "pyramidal-tiff"
        assert slide.level_shapes == [(600, 832), (300, 416), (150, 208), (75, 104), (38, 52)]
        assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.5), "tiff-resolution")
        np.testing.assert_array_equal(full(slide), SRC)
        np.testing.assert_array_equal(full(slide, 1), reduce2(SRC))


def test_pyramid_as_tifffile_series_levels(folder):
    levels = [SRC, reduce2(SRC), reduce2(SRC, 2)]
    path = write_generic(folder / "subifds.tif", levels, subifds=True, resolution=(1e4 / 0.3,) * 2,
                         resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.format == "pyramidal-tiff"
        assert slide.level_shapes == [lv.shape[:2] for lv in levels]
        assert slide.mpp == pytest.approx(0.3)
        for i, level in enumerate(levels):
            np.testing.assert_array_equal(full(slide, i), level)
            np.testing.assert_array_equal(np.asarray(slide.levels[i][5:50, 7:70]), level[5:50, 7:70])


def test_page_of_another_aspect_ratio_is_not_a_level(folder):
    levels = [SRC, reduce2(SRC), np.ascontiguousarray(SRC[:100, :50])]
    path = write_generic(folder / "with-label.tif", levels, subifds=False)
    with open_slide(path) as slide:
        assert slide.level_shapes == [(600, 832), (300, 416)]


def test_single_level_tiff_is_an_image_without_mpp(folder):
    path = folder / "plain.tif"
    tifffile.imwrite(path, SRC, tile=(64, 64), compression="zlib")
    with open_slide(path) as slide:
        assert (slide.format, slide.level_shapes) == ("image", [(600, 832)])
        assert (slide.mpp, slide.mpp_source) == (None, None)
        np.testing.assert_array_equal(full(slide), SRC)


def test_inch_resolution_is_not_taken_as_mpp(folder):
    path = folder / "dpi.tif"
    tifffile.imwrite(path, SRC, resolution=(72, 72), resolutionunit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp is None


def test_striped_tiff_reads_by_strips(folder):
    path = folder / "striped.tif"
    tifffile.imwrite(path, SRC, rowsperstrip=7, compression="lzw")
    with open_slide(path) as slide:
        np.testing.assert_array_equal(full(slide), SRC)
        np.testing.assert_array_equal(slide.read_region(0, 5, 3, 20, 900)[:, :829], SRC[5:25, 3:832])


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_png_and_jpeg_are_single_level_images(folder, kind):
    path = folder / f"image.{'png' if kind == 'png' else 'jpg'}"
    encode = imagecodecs.png_encode if kind == "png" else imagecodecs.jpeg8_encode
    path.write_bytes(encode(SRC))
    with open_slide(path) as slide:
        assert (slide.format, slide.level_shapes, slide.mpp) == ("image", [(600, 832)], None)
        assert isinstance(slide.levels[0], np.ndarray)
        assert mean_error(full(slide), SRC) < (0.01 if kind == "png" else 3)
        assert slide.read_region(0, -5, -5, 10, 10)[:5].min() == 255


def test_rgba_is_composited_over_white(folder):
    rgba = np.dstack([SRC, np.full(SRC.shape[:2], 255, np.uint8)])
    rgba[:100, :100, 3] = 0  # transparent
    rgba[100:200, :100, 3] = 128  # half transparent
    expected = SRC.astype(np.float64)
    expected[:100, :100] = 255
    expected[100:200, :100] = (expected[100:200, :100] * 128 + 255 * 127) / 255
    (folder / "rgba.png").write_bytes(imagecodecs.png_encode(rgba))
    tifffile.imwrite(folder / "rgba.tif", rgba, tile=(64, 64), photometric="rgb", extrasamples=[2])
    for name in ("rgba.png", "rgba.tif"):
        with open_slide(folder / name) as slide:
            assert slide.levels[0].shape == (600, 832, 3)
            assert np.abs(full(slide) - expected).max() <= 0.5 + 1e-9


def test_grayscale_and_16_bit_become_rgb(folder):
    gray = SRC[..., 1].copy()
    tifffile.imwrite(folder / "gray.tif", gray, tile=(64, 64), photometric="minisblack")
    tifffile.imwrite(folder / "white-is-zero.tif", 255 - gray, photometric="miniswhite")
    (folder / "gray16.png").write_bytes(imagecodecs.png_encode(gray.astype(np.uint16) * 257))
    for name in ("gray.tif", "white-is-zero.tif", "gray16.png"):
        with open_slide(folder / name) as slide:
            region = full(slide)
            assert region.shape == (600, 832, 3), name
            for c in range(3):
                np.testing.assert_array_equal(region[..., c], gray, err_msg=name)
            np.testing.assert_array_equal(np.asarray(slide.levels[0])[..., 2], gray, err_msg=name)
