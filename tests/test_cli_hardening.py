"""`samlung segment` and `export` in the field: plan before the model, SIGTERM, lost exports, bad values."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from classmap_factory import make_classmap

from napari_samlung.annotations.geojson import classmap_to_geojson
from napari_samlung.cli import EXIT_TERMINATED, main
from napari_samlung.commands import segment as segment_command
from napari_samlung.errors import SamLungError
from napari_samlung.inference.engine import Plan, PlanSummary
from napari_samlung.results.classmap import ClassMap
from napari_samlung.results.confidence import ConfidenceMap, has_confidence
from napari_samlung.slide.tiff_writer import write_pyramidal_tiff
from napari_samlung.synthetic import write_demo_slide

TINY = ["--preset", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "case.svs"
    write_demo_slide(path, (1024, 1024), mpp=0.5)
    return path


@pytest.fixture
def no_model(monkeypatch) -> list[str]:
    """Loading the model fails with a user error that says so; the list records that it was tried."""
    tried: list[str] = []

    def refuse(*args, **kwargs):
        tried.append("load")
        raise SamLungError("the model was loaded")

    monkeypatch.setattr(segment_command, "load_predictor", refuse)
    return tried


def status(argv: list) -> int:
    """``samlung ARGV``'s exit status (argparse's usage errors exit; main returns)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as done:
        return done.code


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- plan before the model ------------------------------------------------------------------------
def test_dry_run_prints_the_plan_without_loading_the_model_or_writing(slide, tmp_path, no_model, capsys):
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"case.svs -> {tmp_path / 'case.samlung'} (new)" in out
    assert "class map 1024 x 1024 px" in out and "at its own resolution" in out
    assert "tiles of 256 px" in out and "with tissue for the model" in out
    assert "time: not estimated (no rate measured for tiny, 256 px tiles on cpu)" in out
    assert not no_model and list(tmp_path.iterdir()) == []


def test_the_time_estimate_comes_only_from_a_measured_rate(monkeypatch):
    plan = Plan(1.0, (20480, 20480), (20480, 20480), (0, 0, 20480, 20480), 1024, 128, 0.5, 0.5, True)
    summary = PlanSummary(plan, {"model": 1379, "background": 100, "done": 0})
    monkeypatch.setattr(segment_command, "_hardware", lambda device: "NVIDIA H100 80GB HBM3")
    args = argparse.Namespace(preset="vit_b", compile=True)
    line = segment_command._estimate(summary, args, None)
    assert line.startswith("time: about 10 s for 1379 tiles at 137.9 tiles/s (measured on ") and "H100" in line
    args.compile = False  # measured compiled only
    assert segment_command._estimate(summary, args, None).startswith("time: not estimated")
    monkeypatch.setattr(segment_command, "_hardware", lambda device: "NVIDIA H200")
    args.compile = True
    assert "not estimated" in segment_command._estimate(summary, args, None)


def test_a_refused_plan_is_one_line_naming_both_resolutions_and_the_option(slide, tmp_path, no_model, capsys):
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--target-mpp", "0.1"]) == 2
    line = one_line(capsys)
    assert line.startswith("samlung segment: error: case.svs:")
    for needle in ("0.1 um/px", "0.5 um/px", "--allow-upsampling"):
        assert needle in line
    assert not no_model and list(tmp_path.iterdir()) == []
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--target-mpp", "0.1", "--allow-upsampling",
                   "--dry-run"]) == 0
    assert "upsampled 5x" in capsys.readouterr().out


def test_every_slide_is_planned_before_the_model_loads(slide, tmp_path, no_model, capsys):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    out = tmp_path / "out"
    out.mkdir()
    assert status(["segment", slide, text, *TINY, "-o", out]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "notes.svs" in lines[0] and lines[1].endswith("the model was loaded"), lines


def test_a_missing_results_folder_is_worded_as_the_option_before_the_model_loads(slide, tmp_path, no_model, capsys):
    assert status(["segment", slide, *TINY, "-o", tmp_path / "nowhere"]) == 2
    assert one_line(capsys) == f"samlung segment: error: -o/--output: {tmp_path / 'nowhere'}: no such folder"
    assert not no_model


@pytest.mark.parametrize("argv,needle", [
    (["segment", "{slide}", *TINY, "--tile-size", "65536"], "--tile-size"),
    (["segment", "{slide}", "--preset", "tiny", "--device", "banana"], "--device: banana"),
    (["segment", "{slide}", "--preset", "tiny", "--device", "cuda:7"], "--device"),
    (["export", "{tmp}", "--training-set", "{tmp}/SET", "--tile-size", "65536"], "--tile-size"),
    (["export", "{tmp}", "--training-set", "{tmp}/SET", "--tile-size", "0"], "--tile-size"),
])
def test_bad_devices_and_tile_sizes_are_one_line_and_exit_2(slide, tmp_path, no_model, capsys, argv, needle):
    argv = [a.format(slide=slide, tmp=tmp_path) for a in argv]
    assert status(argv) == 2
    assert needle in one_line(capsys)
    assert not no_model


# -- SIGTERM ----------------------------------------------------------------------------------------
def test_sigterm_keeps_the_finished_tiles_says_so_in_one_line_and_the_rerun_resumes(tmp_path, capsys):
    slide = tmp_path / "tall.svs"
    write_demo_slide(slide, (2048, 768), mpp=0.5)
    argv = [sys.executable, "-m", "napari_samlung.cli", "segment", str(slide), *TINY, "--batch-size", "1",
            "--no-export", "-o", str(tmp_path)]
    log = tmp_path / "tall.samlung" / "progress.log"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (log.is_file() and log.read_text()):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped; use a larger slide"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_TERMINATED == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("samlung segment: stopped by SIGTERM; tall.svs: ")
    kept = int(lines[0].split("tall.svs: ")[1].split(" of ")[0])
    assert kept > 0 and "rerun the same command to resume" in lines[0]
    assert status(argv[3:] + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"(incomplete; {kept} finished tiles are resumed" in out and f"{kept} already done" in out
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f" {kept} resumed" in again.stdout
    assert ClassMap.open(tmp_path / "tall.samlung").status == "complete"


# -- exports of a complete class map ----------------------------------------------------------------
def test_a_complete_map_gets_its_missing_exports_and_leftovers_of_a_killed_export_go(slide, tmp_path, capsys):
    assert status(["segment", slide, *TINY, "-o", tmp_path]) == 0
    root = tmp_path / "case.samlung"
    tiff, geojson = root / "case-labels.tif", root / "case.geojson"
    expected = tifffile.imread(tiff)
    tiff.unlink()  # killed while the label TIFF was written: its temporary folder stays
    geojson.unlink()
    (root / ".case-labels.tif.x1y2z3.levels").mkdir()
    (root / ".case-labels.tif.x1y2z3.levels" / "partial.tif").write_bytes(b"II*\0")
    (root / ".case.geojson.a1b2c3.tmp").write_text('{"type": "Feat')
    capsys.readouterr()

    assert status(["segment", slide, *TINY, "-o", tmp_path]) == 0
    assert "already complete; its label TIFF and GeoJSON were missing" in capsys.readouterr().out
    np.testing.assert_array_equal(tifffile.imread(tiff), expected)
    assert json.loads(geojson.read_text())["type"] == "FeatureCollection"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".case")) == []

    assert status(["segment", slide, *TINY, "-o", tmp_path]) == 0
    assert "already complete (use --overwrite to segment again); skipped" in capsys.readouterr().out
    ClassMap.open(root, mode="r+").add_reviewed((0, 0, 64, 64))  # the class map changed after the export
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--dry-run"]) == 0
    assert "complete: its label TIFF and GeoJSON written again" in capsys.readouterr().out
    assert status(["segment", slide, *TINY, "-o", tmp_path]) == 0
    assert "written again" in capsys.readouterr().out


def test_dry_run_says_a_complete_map_without_confidence_is_segmented_again_as_the_run_does(slide, tmp_path, capsys):
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--no-export"]) == 0
    root = tmp_path / "case.samlung"
    shutil.rmtree(root / ConfidenceMap.STORE)  # as results of an earlier version
    capsys.readouterr()
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--no-export", "--dry-run"]) == 0
    assert "complete without a confidence map (made by an earlier version): segmented again" in capsys.readouterr().out
    assert status(["segment", slide, *TINY, "-o", tmp_path, "--no-export"]) == 0
    assert "segmented again to make one" in capsys.readouterr().err  # the run's note says the same
    assert has_confidence(ClassMap.open(root))


def test_writers_remove_the_leftovers_of_killed_writes_of_the_same_file_only(tmp_path):
    for name in (".a.tif.q1.levels", ".b.tif.q1.levels"):
        (tmp_path / name).mkdir()
    write_pyramidal_tiff(tmp_path / "a.tif", np.zeros((64, 64), np.uint8), tile=16, compression="zlib",
                         kind="labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.tif.q1.levels", "a.tif"]

    labels = np.zeros((32, 32), np.uint8)
    labels[4:20, 4:20] = 1
    cm = make_classmap(tmp_path / "m.samlung", labels)
    for name in (".a.geojson.r2.tmp", ".b.geojson.r2.tmp"):
        (tmp_path / name).write_text("{")
    classmap_to_geojson(cm, tmp_path / "a.geojson")
    assert sorted(p.name for p in tmp_path.glob("*geojson*")) == [".b.geojson.r2.tmp", "a.geojson"]
