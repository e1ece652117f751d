"""OME-Zarr images as slides: NGFF 0.4 and 0.5 as the ome-zarr package writes them (and the
bioformats2raw layout), made from the real SVS's pixels and compared with the tifffile path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_samlung.results.classmap import ClassMap
from gui_support import PLUGIN, isolated_config  # noqa: F401  (fixture: no real settings touched)
from napari_samlung.slide import SlideError, open_slide

pytestmark = [pytest.mark.filterwarnings("ignore:Scale value not provided:UserWarning"),  # ome-zarr: channel axis
              pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")]  # its import
BOX = (900, 400, 1200, 1000)  # y, x, h, w of the shared SVS: tissue and glass


@pytest.fixture(scope="module")
def pixels(real_svs) -> np.ndarray:
    y, x, h, w = BOX
    with open_slide(real_svs) as svs:
        return svs.read_region(0, y, x, h, w)


def write_ome_zarr(path: Path, image: np.ndarray, version: str, axes: str = "cyx",
                   scale: float | None = 0.499, unit: str | None = "micrometer", group: str | None = None) -> Path:
    """``image`` (in ``axes`` order) written by ome-zarr-py with a 3-level pyramid, 256 px chunks."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    target = root if group is None else root.create_group(group)
    spatial = [a for a in axes if a in "zyx"]
    chunks = tuple(256 if a in "yx" else 1 if a in "tz" else n for a, n in zip(axes, image.shape))
    write_image(image, target, axes=list(axes), fmt=fmt, scale_factors=(2, 4), storage_options={"chunks": chunks},
                scale=None if scale is None else {a: scale for a in spatial},
                axes_units=None if unit is None else {a: unit for a in spatial})
    return path


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def ome_zarr(request, pixels, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(f"omezarr{request.param}") / "cmu.ome.zarr"
    return write_ome_zarr(folder, np.moveaxis(pixels, -1, 0), request.param)


def test_ome_zarr_is_valid_by_ome_zarr_models(ome_zarr):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v04 import Image as Image04
    from ome_zarr_models.v05 import Image as Image05

    assert isinstance(open_ome_zarr(zarr.open_group(str(ome_zarr), mode="r")), (Image04, Image05))


def test_ome_zarr_opens_as_a_pyramid_with_its_micrometre_scale(ome_zarr, pixels):
    with open_slide(ome_zarr) as slide:
        assert slide.format == "ome-zarr"
        assert slide.level_shapes == [(1200, 1000), (600, 500), (300, 250)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "ome-zarr"
        assert slide.levels[1].shape == (600, 500, 3)


def test_ome_zarr_pixels_equal_the_tifffile_path_exactly(ome_zarr, pixels):
    with open_slide(ome_zarr) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, *slide.shape), pixels)
        np.testing.assert_array_equal(slide.read_region(0, 333, 17, 400, 900), pixels[333:733, 17:917])
        np.testing.assert_array_equal(slide.levels[0][100:110, 990:], pixels[100:110, 990:])


def test_ome_zarr_reduced_levels_are_the_stored_arrays(ome_zarr):
    group = zarr.open_group(str(ome_zarr), mode="r")
    ome = group.attrs.get("ome", group.attrs.asdict())
    path = ome["multiscales"][0]["datasets"][2]["path"]
    stored = np.moveaxis(np.asarray(group[path]), 0, -1)
    with open_slide(ome_zarr) as slide:
        np.testing.assert_array_equal(slide.read_region(2, 0, 0, *slide.level_shapes[2]), stored)


def test_reads_decode_only_the_chunks_they_touch(ome_zarr):
    with open_slide(ome_zarr) as slide:
        slide.read_region(0, 0, 0, 10, 10)
        assert slide.cache_stats.decodes == 1
        slide.read_region(0, 200, 200, 100, 100)  # four 256 px chunks, one of them cached
        assert slide.cache_stats.decodes == 4


def test_time_and_z_take_the_first_plane_and_nanometres_convert(pixels, tmp_path):
    pixels = pixels[:512, :512]
    cyx = np.moveaxis(pixels, -1, 0)
    tczyx = np.stack([np.stack([cyx, 255 - cyx], axis=1)] * 2)  # t=2, c=3, z=2
    path = write_ome_zarr(tmp_path / "stack.zarr", tczyx, "0.4", axes="tczyx", scale=499.0, unit="nanometer")
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, *slide.shape), pixels)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.properties["ome-zarr.plane"] == "t=0 of 2, z=0 of 2"


def test_without_a_unit_the_mpp_is_unknown_and_says_why(pixels, tmp_path):
    path = write_ome_zarr(tmp_path / "nounit.zarr", np.moveaxis(pixels, -1, 0), "0.5", unit=None)
    with open_slide(path) as slide:
        assert slide.mpp is None and "no unit" in slide.mpp_note
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "user"


def test_y_x_c_axes_are_read(pixels, tmp_path):
    path = tmp_path / "yxc.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("0", data=pixels, chunks=(256, 256, 3))
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}, {"name": "c", "type": "channel"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.25, 0.25, 1]}]}]}]}
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, *slide.shape), pixels)
        assert slide.mpp == 0.25


def bioformats2raw(path: Path, pixels: np.ndarray, unit: str | None) -> Path:
    """The bioformats2raw layout: the image as series "0", OME-XML in OME/METADATA.ome.xml."""
    write_ome_zarr(path, np.moveaxis(pixels, -1, 0), "0.4", group="0", unit=unit, scale=1.0 if unit is None else 0.499)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME").attrs["series"] = ["0"]
    (path / "OME" / "METADATA.ome.xml").write_text(
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels '
        'PhysicalSizeX="0.499" PhysicalSizeXUnit="µm" PhysicalSizeY="0.499" SizeX="1000" SizeY="1200" '
        'SizeC="3" SizeZ="1" SizeT="1" Type="uint8" DimensionOrder="XYCZT"/></Image></OME>', encoding="utf-8")
    return path


def test_bioformats2raw_layout_opens_its_first_series(pixels, tmp_path):
    with open_slide(bioformats2raw(tmp_path / "b2r.zarr", pixels, "micrometer")) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, *slide.shape), pixels)
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "ome-zarr"


def test_bioformats2raw_without_units_takes_the_mpp_from_its_ome_xml(pixels, tmp_path):
    with open_slide(bioformats2raw(tmp_path / "b2r.zarr", pixels, None)) as slide:
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "ome"


def test_more_channels_pick_red_green_and_blue_by_their_omero_colours(pixels, tmp_path):
    cyx = np.moveaxis(pixels, -1, 0)
    five = np.stack([cyx[2], np.zeros_like(cyx[0]), cyx[0], cyx[1], cyx[0]])  # blue, dapi, red, green, ...
    path = write_ome_zarr(tmp_path / "five.zarr", five, "0.5")
    root = zarr.open_group(str(path), mode="r+")
    ome = dict(root.attrs["ome"])
    ome["omero"] = {"channels": [{"color": c} for c in ("0000FF", "FFFFFF", "FF0000", "00FF00", "FF00FF")]}
    root.attrs["ome"] = ome
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 0, *slide.shape), pixels)


@pytest.mark.parametrize("problem, needle", [
    ("label", "label image"), ("no-multiscales", "not an OME-Zarr image"), ("float", "float32"),
    ("channels", "5 channels"), ("missing-level", "missing level"),
])
def test_unusable_zarr_folders_are_one_error_naming_them(problem, needle, pixels, tmp_path):
    path = tmp_path / f"{problem}.zarr"
    cyx = np.moveaxis(pixels[:64, :64], -1, 0)
    if problem == "float":
        write_ome_zarr(path, cyx.astype(np.float32), "0.5")
    elif problem == "channels":
        write_ome_zarr(path, np.concatenate([cyx, cyx[:2]]), "0.5")
    else:
        write_ome_zarr(path, cyx, "0.5")
    root = zarr.open_group(str(path), mode="r+")
    ome = dict(root.attrs["ome"])
    if problem == "label":
        ome["image-label"] = {"colors": []}
    elif problem == "no-multiscales":
        del ome["multiscales"]
    elif problem == "missing-level":
        ome["multiscales"] = [{**ome["multiscales"][0],
                               "datasets": [*ome["multiscales"][0]["datasets"], {"path": "nope"}]}]
    root.attrs["ome"] = ome
    with pytest.raises(SlideError) as caught:
        open_slide(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message


def test_a_damaged_chunk_is_an_error_naming_the_folder(pixels, tmp_path):
    path = write_ome_zarr(tmp_path / "damaged.zarr", np.moveaxis(pixels, -1, 0), "0.4")
    chunk = next(p for p in (path / "s0").rglob("*") if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"garbage")
    with open_slide(path) as slide, pytest.raises(SlideError, match=re.escape(str(path))):
        slide.read_region(0, 0, 0, *slide.shape)


@pytest.mark.slow
def test_samlung_segment_runs_on_an_ome_zarr_slide(ome_zarr, tmp_path):
    done = subprocess.run([sys.executable, "-m", "napari_samlung.cli", "segment", str(ome_zarr), "--preset", "tiny",
                           "--device", "cpu", "--region", "0", "0", "600", "500", "--no-export", "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cm = ClassMap.open(next(tmp_path.glob("*.samlung")))
    assert cm.meta["slide"]["format"] == "ome-zarr"
    assert int(re.search(r"(\d+) tiles segmented", done.stdout).group(1)) > 0, done.stdout


@pytest.mark.gui
def test_napari_opens_the_ome_zarr_through_the_plugin_reader(ome_zarr, pixels, make_napari_viewer):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(ome_zarr), plugin=PLUGIN)
    assert layer.rgb and layer.multiscale and len(layer.data) == 3
    assert layer.metadata["format"] == "ome-zarr"
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    np.testing.assert_array_equal(np.asarray(layer.data[0][300:400, 100:600]), pixels[300:400, 100:600])
