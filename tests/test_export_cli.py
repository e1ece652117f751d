"""`samlung export` pieces: outputs from a result folder, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import tifffile
from classmap_factory import make_classmap
from slide_factory import he_texture

from napari_samlung.cli import main
from napari_samlung.commands.export import add_arguments as add_export_arguments, run as run_export
from napari_samlung.data.files import read_rgb
from napari_samlung.data.layouts import read_export_set
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.lock import writing
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
    tumour_mm2 = 80 * 120 * 1.0 ** 2 / 1e6  # class-map pixels of 1 µm (slide 0.5 µm/px, scale 2)
    assert collection["features"][0]["properties"]["measurements"]["Tumour area mm^2"] == pytest.approx(tumour_mm2)
    assert f"Tumour {tumour_mm2:.3g} mm² of " in out


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
        (None, ["{results}"], "nothing to do"),
        ("no-regions", ["{results}", "--training-set", "{tmp}/SET"], "no reviewed regions"),
        ("bad-slide", ["{results}", "--training-set", "{tmp}/SET", "--slide", "{tmp}/fake.svs"], "fake.svs"),
        ("existing", ["{results}", "--geojson", "{tmp}/x.geojson"], "already exists"),
        (None, ["{results}", "--label-tiff", "{tmp}/missing/x.tif"], "does not exist"),
    ],
)
def test_bad_input_raises_one_line_errors_naming_the_path(results, tmp_path, setup, argv, message):
    if setup == "no-regions":
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


def test_reviewed_regions_are_listed_in_slide_pixels_and_removed_by_id(results, tmp_path, capsys):
    region = ClassMap.open(results).reviewed[0]["id"]
    assert export(results, "--list-reviewed") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{results}: 1 reviewed region(s) (id, level-0 x y width height, reviewed)"
    assert out[1].split()[:5] == [region, "20", "20", "200", "120"]  # class-map box (10, 10, 60, 100) at scale 2

    assert export(results, "--remove-reviewed", region, "--list-reviewed") == 0
    assert ClassMap.open(results).reviewed == []
    assert capsys.readouterr().out.splitlines() == [f"removed reviewed region {region} from {results}",
                                                    f"{results}: 0 reviewed region(s)"]


def test_removing_an_unknown_region_names_the_known_ones_and_removes_none(results):
    region = ClassMap.open(results).reviewed[0]["id"]
    with pytest.raises(ValueError) as info:
        export(results, "--remove-reviewed", region, "--remove-reviewed", "nope")
    assert str(info.value) == f"--remove-reviewed: {results}: no reviewed region nope (its reviewed regions: {region})"
    assert len(ClassMap.open(results).reviewed) == 1


def test_removing_waits_for_no_one_while_another_process_writes_the_results(results):
    region = ClassMap.open(results).reviewed[0]["id"]
    with writing(results, "a review being applied"), pytest.raises(ValueError, match="a review being applied"):
        export(results, "--remove-reviewed", region)
    assert len(ClassMap.open(results).reviewed) == 1


def test_a_damaged_chunk_is_one_line_and_exit_2(results, tmp_path, capsys):
    chunk = next(p for p in (results / "classmap.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"garbage" * 10)
    assert main(["export", str(results), "--geojson", str(tmp_path / "x.geojson")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(chunk) in lines[0], lines
