"""The OpenSlide path (other scanners' formats) against the tifffile path on the same files:
the real SVS and pyramids written here; microns per pixel, errors and which files go where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_samlung.slide import SlideError, open_slide
from napari_samlung.slide.formats import is_slide_candidate
from napari_samlung.slide.reader import open_slide_with_openslide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from napari_samlung.slide.tiles import tile_side


def whole(slide, level: int) -> np.ndarray:
    return slide.read_region(level, 0, 0, *slide.level_shapes[level])


@pytest.fixture(scope="module")
def pyramid(real_svs, tmp_path_factory) -> Path:
    """Part of the real SVS as a 3-level JPEG pyramid with power-of-two levels (exact downsamples)."""
    pixels = tifffile.imread(real_svs)[1000:2024, 600:1368]
    return write_pyramidal_tiff(tmp_path_factory.mktemp("pyramid") / "part.tif", pixels, mpp=0.25, tile=256,
                                compression="jpeg", quality=90)


def test_the_real_svs_through_openslide_equals_the_tifffile_path(real_svs):
    with open_slide(real_svs) as ours, open_slide_with_openslide(real_svs) as other:
        assert other.format == "aperio-svs" and other.level_shapes == ours.level_shapes
        assert other.mpp == pytest.approx(0.499) and other.mpp_source == "openslide"
        assert other.magnification == 20
        np.testing.assert_array_equal(whole(other, 0), whole(ours, 0))


def test_every_level_of_a_pyramid_through_openslide_equals_the_tifffile_path(pyramid):
    with open_slide(pyramid) as ours, open_slide_with_openslide(pyramid) as other:
        assert other.format == "pyramidal-tiff"
        assert other.level_shapes == ours.level_shapes == [(1024, 768), (512, 384), (256, 192)]
        assert other.mpp == pytest.approx(0.25)
        for level in range(3):
            np.testing.assert_array_equal(whole(other, level), whole(ours, level))
        np.testing.assert_array_equal(other.read_region(1, 100, 90, 300, 250), ours.read_region(1, 100, 90, 300, 250))
        np.testing.assert_array_equal(other.levels[2][10:20, 150:], ours.read_region(2, 10, 150, 10, 42))


def test_openslide_reads_are_tiled_cached_and_white_outside(pyramid):
    with open_slide_with_openslide(pyramid) as slide:
        slide.read_region(0, 10, 10, 100, 100)
        assert slide.cache_stats.decodes == 1  # one 256 px tile, not the level
        slide.read_region(0, 200, 200, 100, 100)
        assert slide.cache_stats.decodes == 4
        outside = slide.read_region(0, 1000, 740, 50, 50)
        assert (outside[24:] == 255).all() and (outside[:, 28:] == 255).all()


def test_an_implausible_openslide_mpp_is_ignored_with_a_note(tmp_path):
    path = tmp_path / "print.tif"
    pixels = np.full((512, 512, 3), 200, np.uint8)
    # 1e6 px/cm is 0.01 um/px: outside what microscopes make
    tifffile.imwrite(path, pixels, tile=(256, 256), resolution=(1e6, 1e6), resolutionunit="CENTIMETER",
                     compression="zlib")
    with open_slide_with_openslide(path) as slide:
        assert slide.mpp is None and "OpenSlide's mpp-x" in slide.mpp_note


def test_openslide_closes_with_the_slide(pyramid):
    slide = open_slide_with_openslide(pyramid)
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        slide.read_region(0, 0, 0, 10, 10)


@pytest.mark.parametrize("name", ["fake.mrxs", "fake.vms", "fake.bif", "fake.dcm"])
def test_a_file_named_like_another_scanners_slide_but_not_one_is_one_error(name, tmp_path):
    path = tmp_path / name
    path.write_text("[GENERAL]\nnot a slide\n")
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    assert str(caught.value).startswith(str(path)) and "not a slide" in str(caught.value)


def test_a_mirax_index_without_its_data_folder_is_refused(tmp_path):
    index = tmp_path / "case.mrxs"
    index.write_text("[GENERAL]\nSLIDE_VERSION = 01.03\n")
    with pytest.raises(SlideError, match="case.mrxs: not a slide"):
        open_slide(index)


def test_slide_candidates_are_told_by_name_folder_or_dicom_magic(tmp_path, pyramid):
    dicom = tmp_path / "IM0001"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    zarr_folder = tmp_path / "image.ome.zarr"
    zarr_folder.mkdir()
    (zarr_folder / "zarr.json").write_text("{}")
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    for path in (pyramid, dicom, zarr_folder, tmp_path / "slide.MRXS", tmp_path / "x.scn"):
        assert is_slide_candidate(path), path
    for path in (notes, pyramid.parent / "missing.png", tmp_path / "empty-folder"):
        assert not is_slide_candidate(path), path


def test_tiles_read_are_the_files_own_bounded():
    assert tile_side(512) == 512 and tile_side(240) == 480 and tile_side(100) == 300
    assert tile_side(8192) == 2048 and tile_side(None) == 512


def write_leica_scn(path: Path, pixels: np.ndarray, offset: tuple[int, int], mpp: float) -> tuple[int, int]:
    """A Leica SCN layout (BigTIFF, the Leica XML in level 0's description): ``pixels`` as the main
    image with a half-size level, placed at ``offset`` (y, x) px inside a collection (the slide)
    larger by that offset on every side; returns the collection's (height, width) in pixels."""
    h, w = pixels.shape[:2]
    (oy, ox), nm = offset, round(mpp * 1000)
    size = (h + 2 * oy, w + 2 * ox)
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">
<collection name="test" sizeX="{size[1] * nm}" sizeY="{size[0] * nm}"><barcode>dGVzdA==</barcode>
<image name="main"><creationDate>2026-01-01T00:00:00.0Z</creationDate>
<device model="Leica SCN400;Leica SCN" version="1.5" />
<pixels sizeX="{w}" sizeY="{h}"><dimension sizeX="{w}" sizeY="{h}" r="0" ifd="0" />
<dimension sizeX="{w // 2}" sizeY="{h // 2}" r="1" ifd="1" /></pixels>
<view sizeX="{w * nm}" sizeY="{h * nm}" offsetX="{ox * nm}" offsetY="{oy * nm}" spacingZ="0" />
<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings><illuminationSettings>
<numericalAperture>0.7</numericalAperture><illuminationSource>brightfield</illuminationSource>
</illuminationSettings></scanSettings></image></collection></scn>"""
    half = pixels.reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    common = dict(tile=(256, 256), compression="zlib", photometric="rgb", metadata=None,
                  resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(pixels, description=xml, **common)
        tif.write(half, **common)
    return size


def test_a_leica_scn_goes_to_openslide_which_places_its_image_in_the_slide(real_svs, tmp_path):
    pixels = tifffile.imread(real_svs)[1000:1512, 600:1112]
    size = write_leica_scn(tmp_path / "case.scn", pixels, (96, 64), 0.5)
    with open_slide(tmp_path / "case.scn") as slide:
        assert slide.format == "leica-scn" and slide.level_shapes == [size, (size[0] // 2, size[1] // 2)]
        assert slide.mpp == 0.5 and slide.magnification == 20
        whole = slide.read_region(0, 0, 0, *size)
    np.testing.assert_array_equal(whole[96:608, 64:576], pixels)  # lossless tiles: exact
    # outside the scanned image OpenSlide gives transparent pixels: composited over white
    assert (whole[:96] == 255).all() and (whole[:, :64] == 255).all() and (whole[608:] == 255).all()
