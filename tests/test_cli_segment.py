"""`samlung segment` as a user runs it: outputs, crash and resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_samlung.results.classmap import ClassMap
from napari_samlung.model import SamLung, SamLungConfig, save_checkpoint
from napari_samlung.synthetic import write_demo_slide


def samlung(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_samlung.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slides") / "case.svs"
    write_demo_slide(path, (1024, 1024), mpp=0.5)
    return path


@pytest.fixture(scope="module")
def tall_slide(tmp_path_factory) -> Path:
    """Two class-map chunk rows (1024 px each), so a run can be killed between them."""
    path = tmp_path_factory.mktemp("slides") / "tall.svs"
    write_demo_slide(path, (2048, 768), mpp=0.5)
    return path


def read_all(root: Path) -> np.ndarray:
    cm = ClassMap.open(root)
    return cm.read((0, 0, *cm.shape))


def test_segment_writes_class_map_label_tiff_and_geojson(slide, tmp_path):
    import json

    import tifffile

    done = samlung("segment", slide, "--preset", "tiny", "--device", "cpu", "-o", tmp_path)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "case.samlung"
    cm = ClassMap.open(root)
    assert cm.status == "complete" and cm.shape == (1024, 1024)
    labels = read_all(root)
    with tifffile.TiffFile(root / "case-labels.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), labels)
    collection = json.loads((root / "case.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert "tiles segmented" in done.stdout and str(root) in done.stdout
    figures = cm.meta["burden"]  # measured before the exports, so the GeoJSON carries it
    pixel_area_mm2 = 0.5 ** 2 / 1e6
    assert figures["tumour_mm2"] == pytest.approx(int((labels == 1).sum()) * pixel_area_mm2)
    tumour = [f for f in collection["features"] if f["properties"]["classification"]["name"] == "Tumor"]
    for feature in tumour:
        assert feature["properties"]["measurements"]["Tumour area mm^2"] == pytest.approx(figures["tumour_mm2"], rel=1e-6)
    assert f"Tumour {figures['tumour_mm2']:.3g} mm²" in done.stdout
    import csv

    (row,) = csv.DictReader((tmp_path / "summary.csv").open())
    assert row["slide"] == "case" and float(row["tumour_area_mm2"]) == pytest.approx(figures["tumour_mm2"], rel=1e-3)
    assert row["results"] == str(root.resolve())


def test_rerun_after_a_killed_run_resumes_and_matches_an_uninterrupted_run(tall_slide, tmp_path):
    common = ["--preset", "tiny", "--device", "cpu", "--batch-size", "1", "--no-export"]
    for name in ("whole", "killed"):
        (tmp_path / name).mkdir()  # a chosen results folder must exist
    whole = samlung("segment", tall_slide, "-o", tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    log = out / "tall.samlung" / "progress.log"
    proc = subprocess.Popen([sys.executable, "-m", "napari_samlung.cli", "segment", str(tall_slide), "-o", str(out),
                             *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().splitlines():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted; use a larger slide"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ClassMap.open(out / "tall.samlung").status == "incomplete"
    finished_before = len(log.read_text().splitlines())

    resumed = samlung("segment", tall_slide, "-o", out, *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and " 0 resumed" not in resumed.stdout
    assert ClassMap.open(out / "tall.samlung").status == "complete"
    np.testing.assert_array_equal(read_all(out / "tall.samlung"), read_all(tmp_path / "whole" / "tall.samlung"))
    assert finished_before == 1
    cm = ClassMap.open(out / "tall.samlung")  # the display pyramid is whole after the resume too
    for k in range(1, len(cm.levels)):
        np.testing.assert_array_equal(cm.read((0, 0, *cm.levels[k].shape), level=k),
                                      read_all(out / "tall.samlung")[:: 2 ** k, :: 2 ** k])

    again = samlung("segment", tall_slide, "-o", out, *common)
    assert again.returncode == 0 and "already complete" in again.stdout


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_a_missing_slide_is_named(tmp_path):
    one_line_error(samlung("segment", tmp_path / "nope.svs", "--preset", "tiny"), "nope.svs", "no such file")


def test_a_text_file_is_not_a_slide(tmp_path):
    fake = tmp_path / "notes.svs"
    fake.write_text("not an image\n")
    one_line_error(samlung("segment", fake, "--preset", "tiny", "-o", tmp_path), "notes.svs")
    assert not (tmp_path / "notes.samlung").exists()


def test_a_truncated_slide_fails_without_leaving_a_complete_looking_result(slide, tmp_path):
    cut = tmp_path / "cut.svs"
    data = slide.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    done = samlung("segment", cut, "--preset", "tiny", "--device", "cpu", "-o", tmp_path)
    one_line_error(done, "cut.svs")
    root = tmp_path / "cut.samlung"
    assert not ClassMap.exists(root) or ClassMap.open(root).status != "complete"


def test_a_missing_checkpoint_is_named(slide, tmp_path):
    one_line_error(samlung("segment", slide, "--checkpoint", tmp_path / "gone.pt"), "gone.pt", "no such file")


def test_a_checkpoint_that_does_not_fit_the_sam_weights_is_refused(slide, tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(SamLung(SamLungConfig.tiny()), ckpt)  # without encoder: needs SAM weights
    other = tmp_path / "other_sam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 8, 8, 32)}, other)
    one_line_error(samlung("segment", slide, "--checkpoint", ckpt, "--sam-weights", other, "-o", tmp_path))
    assert not (tmp_path / "case.samlung").exists()


def test_a_checkpoint_file_that_is_not_a_checkpoint_is_refused(slide, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    one_line_error(samlung("segment", slide, "--checkpoint", bad, "-o", tmp_path), "bad.pt")


@pytest.mark.parametrize("region,needle", [(["99999", "99999", "10", "10"], "outside the slide"),
                                           (["0", "0", "0", "10"], "positive"),
                                           (["0", "0", "-5", "10"], "positive")])
def test_bad_regions_are_refused(slide, tmp_path, region, needle):
    done = samlung("segment", slide, "--preset", "tiny", "--device", "cpu", "-o", tmp_path, "--region", *region)
    one_line_error(done, "--region", needle)
    assert not ClassMap.exists(tmp_path / "case.samlung") or ClassMap.open(tmp_path / "case.samlung").status == "empty"


@pytest.mark.parametrize("option,value", [("--tile-size", "0"), ("--batch-size", "-1"), ("--overlap", "-3"),
                                          ("--mpp", "0")])
def test_non_positive_sizes_are_refused(slide, option, value):
    one_line_error(samlung("segment", slide, "--preset", "tiny", option, value), option)


def test_under_torchrun_each_rank_takes_its_share_of_the_slides(slide, tmp_path):
    import shutil

    slides = [shutil.copy(slide, tmp_path / f"s{i}.svs") for i in range(3)]
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}  # what torchrun sets
    (tmp_path / "out").mkdir()
    done = samlung("segment", *slides, "--preset", "tiny", "--device", "cpu", "--no-export", "-o", tmp_path / "out",
                   env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.samlung")) == ["s1.samlung"]  # slides[1::2]
    assert (tmp_path / "out" / "summary.csv").read_text().splitlines()[1].startswith("s1,")  # its burden row
