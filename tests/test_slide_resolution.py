"""Microns per pixel are taken from a file only when a microscope could have made them."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_samlung.slide import open_slide
from napari_samlung.slide.metadata import aperio_metadata, ome_metadata

PIXELS = np.full((300, 250, 3), 200, dtype=np.uint8)


def _tiff(path, resolution, unit):
    tifffile.imwrite(path, PIXELS, resolution=(resolution, resolution), resolutionunit=unit)
    return path


@pytest.mark.parametrize("resolution, unit", [
    (28.35, "CENTIMETER"),  # 72 dpi as image editors write it in px/cm: once taken as 352.9 um/px
    (37.7953, "CENTIMETER"),  # 96 dpi
    (118.11, "CENTIMETER"),  # 300 dpi
    (72, "INCH"), (96, "INCH"), (150, "INCH"), (300, "INCH"), (600, "INCH"),
])
def test_screen_and_print_densities_are_not_microns_per_pixel(tmp_path, resolution, unit):
    with open_slide(_tiff(tmp_path / "picture.tif", resolution, unit)) as slide:
        assert slide.mpp is None and slide.mpp_source is None
        assert "screen or print density" in slide.mpp_note


@pytest.mark.parametrize("resolution, unit, mpp", [
    (1e4 / 0.25, "CENTIMETER", 0.25),
    (25400 / 0.5, "INCH", 0.5),  # a scanner writing inches is as good as one writing centimetres
])
def test_microscope_resolution_tags_are_taken_in_either_unit(tmp_path, resolution, unit, mpp):
    with open_slide(_tiff(tmp_path / "scan.tif", resolution, unit)) as slide:
        assert slide.mpp == pytest.approx(mpp, rel=1e-4)
        assert (slide.mpp_source, slide.mpp_note) == ("tiff-resolution", None)


def test_implausible_tag_value_is_unknown_with_the_reason(tmp_path):
    with open_slide(_tiff(tmp_path / "coarse.tif", 10.0, "CENTIMETER")) as slide:  # 1000 um/px
        assert slide.mpp is None
        assert "1000 um/px is outside 0.05-20 um/px" in slide.mpp_note


def test_the_users_value_overrides_an_ignored_one(tmp_path):
    with open_slide(_tiff(tmp_path / "picture.tif", 28.35, "CENTIMETER"), mpp=0.5) as slide:
        assert (slide.mpp, slide.mpp_source, slide.mpp_note) == (0.5, "user", None)


def test_aperio_and_ome_placeholders_are_ignored_with_a_note():
    aperio = aperio_metadata("Aperio Image Library v12|AppMag = 20|MPP = 254")
    assert aperio.mpp is None and "the Aperio MPP" in aperio.mpp_note
    ome = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
           '<Pixels PhysicalSizeX="0.001" PhysicalSizeXUnit="µm"/></Image></OME>')
    meta = ome_metadata(ome)
    assert meta.mpp is None and "0.001 um/px is outside" in meta.mpp_note
    assert aperio_metadata("Aperio|MPP = 0.2520").mpp == pytest.approx(0.252)
