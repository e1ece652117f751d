"""`samlung export` pieces: outputs from a result folder, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import tifffile
from classmap_factory import make_classmap
from slide_factory import he_texture

from napari_samlung.commands.export import add_export_arguments, run_export
from napari_samlung.data.files import read_rgb
from napari_samlung.data.layouts import read_export_set
from napari_samlung.slide import open_slide
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff


def export(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="samlung export")
    add_export_arguments(parser)
    return run_export(parser.parse_args([str(a) for a in argv]))


@pytest.fixture
def results(tmp_path):
    """A result folder for a generated 256 x 384 slide, class map at scale 2 with one reviewed region."""
    slide = write_pyramidal_tiff(tmp_path / "slide.tif", he_texture(256, 384), mpp=0.5, tile=64, compression="zlib")
    labels = np.zeros((128, 192), np.uint8)
    labels[20:100, 30:150] = 1
    cm = make_classmap(tmp_path / "slide.samlung", labels, scale=2.0, slide_mpp=0.5, tile=64,
                       slide_path=str(slide), slide_shape=(256, 384))
    cm.add_reviewed((10, 10, 60, 100))
    return cm.root


def test_export_writes_training_set_geojson_and_label_tiff(results, tmp_path, capsys):
    code = export(results, "--training-set", tmp_path / "SET", "--geojson", tmp_path / "a.geojson",
                  "--label-tiff", tmp_path / "a.tif")
    assert code == 0
    assert len(read_export_set(tmp_path / "SET").pairs) == 2  # 60 x 100 region, 64 px tiles: 1 x 2
    collection = json.loads((tmp_path / "a.geojson").read_text())
    assert collection["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert tifffile.imread(tmp_path / "a.tif").shape == (128, 192)
    out = capsys.readouterr().out
    assert "2 tiles" in out and "a.geojson" in out and "a.tif" in out


def test_slide_can_be_given_instead_of_the_recorded_one(results, tmp_path):
    moved = tmp_path / "moved.tif"
    (tmp_path / "slide.tif").rename(moved)
    with pytest.raises(ValueError, match="slide.tif"):
        export(results, "--training-set", tmp_path / "SET")
    assert export(results, "--training-set", tmp_path / "SET", "--slide", moved) == 0
    manifest = json.loads((tmp_path / "SET" / "manifest.json").read_text())
    assert manifest["tiles"][0]["slide"] == str(moved.resolve())


def test_reviewed_only_geojson_holds_the_region_rectangles(results, tmp_path):
    export(results, "--geojson", tmp_path / "r.geojson", "--reviewed-only")
    features = json.loads((tmp_path / "r.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert names == ["Tumor", "Reviewed region"]


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["{tmp}/nowhere", "--geojson", "{tmp}/x.geojson"], "nowhere"),
        (None, ["{results}"], "nothing to export"),
        ("no-regions", ["{results}", "--training-set", "{tmp}/SET"], "no reviewed regions"),
        ("bad-slide", ["{results}", "--training-set", "{tmp}/SET", "--slide", "{tmp}/fake.svs"], "fake.svs"),
        ("existing", ["{results}", "--geojson", "{tmp}/x.geojson"], "already exists"),
        (None, ["{results}", "--label-tiff", "{tmp}/missing/x.tif"], "does not exist"),
    ],
)
def test_bad_input_raises_one_line_errors_naming_the_path(results, tmp_path, setup, argv, message):
    if setup == "no-regions":
        from napari_samlung.results.classmap import ClassMap

        cm = ClassMap.open(results, mode="r+")
        cm.remove_reviewed(cm.reviewed[0]["id"])
    elif setup == "bad-slide":
        (tmp_path / "fake.svs").write_text("not a slide")
    elif setup == "existing":
        (tmp_path / "x.geojson").write_text("{}")
    argv = [a.format(tmp=tmp_path, results=results) for a in argv]
    with pytest.raises(ValueError) as info:
        export(*argv)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "SET").exists()


def test_real_svs_exports_tiles_read_at_model_resolution(real_svs, tmp_path):
    with open_slide(real_svs) as slide:
        h, w = slide.shape
        cm = make_classmap(tmp_path / "cmu.samlung", np.ones(((h + 1) // 2, (w + 1) // 2), np.uint8), scale=2.0,
                           slide_mpp=slide.mpp, tile=128, slide_path=str(real_svs), slide_shape=(h, w))
        cm.add_reviewed((300, 400, 100, 200))
        assert export(cm.root, "--training-set", tmp_path / "SET") == 0
        pairs = read_export_set(tmp_path / "SET").pairs
        assert len(pairs) == 2
        manifest = json.loads((tmp_path / "SET" / "manifest.json").read_text())
        assert manifest["mpp"] == pytest.approx(slide.mpp * 2)
        for tile in manifest["tiles"]:
            expected = slide.read_scaled(tile["y"], tile["x"], 128, 128, 2.0)
            np.testing.assert_array_equal(read_rgb(tmp_path / "SET" / tile["image"]), expected)
