"""Bad slide files give one SlideError that names the file and says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samlung.slide import SlideError, open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from slide_factory import he_texture

IMAGE = he_texture(256, 320)


def expect_error(path, match: str, **kwargs) -> SlideError:
    with pytest.raises(SlideError, match=match) as info:
        open_slide(path, **kwargs)
    assert str(path) in str(info.value)
    return info.value


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.svs", "not found")


def test_folder_is_not_a_slide(tmp_path):
    expect_error(tmp_path, "neither an OME-Zarr image nor a DICOM whole-slide image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.touch()
    expect_error(path, "empty")


def test_text_file_renamed_svs(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("this is not a slide\n" * 20)
    expect_error(path, "not a slide or image file")


def test_unsupported_image_kind(tmp_path):
    path = tmp_path / "image.gif"
    path.write_bytes(b"GIF89a" + bytes(100))
    expect_error(path, "not a slide or image file")


def test_truncated_tiff(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "slide.tif", IMAGE, tile=64, compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "truncated")


def test_tiff_cut_inside_its_header(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, IMAGE)
    path.write_bytes(path.read_bytes()[:6])
    expect_error(path, "TIFF")


def test_float_tiff_is_unsupported(tmp_path):
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.float32))
    expect_error(path, "unsupported image.*float32")


def test_palette_tiff_is_unsupported(tmp_path):
    path = tmp_path / "palette.tif"
    colormap = np.zeros((3, 256), np.uint16)
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), photometric="palette", colormap=colormap)
    expect_error(path, "photometric")


def test_unknown_compression_is_unsupported(tmp_path):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, IMAGE, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags[259].overwrite(60000)  # a compression scheme nobody defines
    expect_error(path, "unsupported image: level 0 cannot be decoded")


def test_corrupt_png(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    expect_error(path, "cannot decode the PNG")


def test_invalid_mpp_argument(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "slide.tif", IMAGE, tile=64)
    expect_error(path, "mpp.*positive", mpp=-0.5)
    expect_error(path, "mpp.*positive", mpp=float("nan"))


def test_damaged_tile_fails_when_read_naming_file_and_tile(tmp_path):
    path = write_pyramidal_tiff(tmp_path / "slide.tif", IMAGE, tile=64, levels=1, compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[5], tif.pages[0].databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset: offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        assert slide.read_region(0, 0, 0, 64, 64).shape == (64, 64, 3)  # tile 0 is fine
        with pytest.raises(SlideError, match=r"tile \(1, 0\)") as info:
            slide.read_region(0, 64, 0, 64, 64)  # tile 5 = row 1, column 0 (5 tiles a row)
    assert str(path) in str(info.value)
