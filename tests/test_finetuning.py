"""The headless fine-tuning launcher: command lines, a real short run, cancel, failures."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from napari_samlung.data import write_png
from napari_samlung.training_runs.launcher import (
    FinetuneConfig,
    FinetuneError,
    build_command,
    run_finetune,
)
from napari_samlung.model import load_checkpoint
from training_sets import read_events


@pytest.fixture(scope="module")
def research_data(tmp_path_factory) -> Path:
    """A research-layout DATA folder: 3 training and 1 validation 64x64 pairs."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 1)):
        for i in range(count):
            image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            label = np.zeros((64, 64), np.uint8)
            label[16:48, 8 + i:40 + i] = 255
            for sub, array in (("mask", image), ("label", label)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                write_png(root / split / sub / f"t{i}.png", array)
    return root


def _config(data: Path, ckpt: Path, out: Path, **changes) -> FinetuneConfig:
    options = dict(data_paths=[data], init_checkpoint=ckpt, output_dir=out, epochs=1, max_steps_per_epoch=1,
                   batch_size=1, device="cpu", workers=0)
    return FinetuneConfig(**{**options, **changes})


def test_command_line_holds_every_given_option(tmp_path):
    config = FinetuneConfig([tmp_path / "a", tmp_path / "b"], tmp_path / "c.pt", tmp_path / "out",
                            sam_weights=tmp_path / "sam.pth", epochs=3, max_steps_per_epoch=7, batch_size=2,
                            lr=0.001, device="cuda", workers=2, extra_args=("--amp",))
    command = build_command(config, python="py")
    assert command[:3] == ["py", "-m", "training.finetune"]
    joined = " ".join(command)
    for part in (f"--data-path {tmp_path / 'a'} --data-path {tmp_path / 'b'}",
                 f"--init-checkpoint {tmp_path / 'c.pt'}", f"--output-dir {tmp_path / 'out'}", "--epochs 3",
                 "--batch-size 2", "--workers 2", f"--sam-weights {tmp_path / 'sam.pth'}",
                 "--max-steps-per-epoch 7", "--lr 0.001", "--device cuda"):
        assert part in joined
    assert command[-1] == "--amp"


def test_command_line_uses_torchrun_for_several_processes_and_leaves_auto_device_out(tmp_path):
    config = FinetuneConfig([tmp_path], tmp_path / "c.pt", tmp_path / "out", nproc=4)
    command = build_command(config, python="py")
    assert command[:8] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                           "-m", "training.finetune"]
    assert "--device" not in command and "--sam-weights" not in command


@pytest.mark.parametrize("change, message", [
    ({"init_checkpoint": Path("/nonexistent/model.pt")}, "checkpoint /nonexistent/model.pt: no such file"),
    ({"data_paths": [Path("/nonexistent/set")]}, "training data /nonexistent/set: no such folder"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"device": "tpu"}, "device must be one of"),
])
def test_invalid_options_are_refused_before_anything_starts(tmp_path, research_data, tiny_checkpoint, change,
                                                            message):
    config = _config(research_data, tiny_checkpoint, tmp_path / "out", **change)
    with pytest.raises(FinetuneError, match=message):
        next(run_finetune(config))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_one_step_run_reports_progress_and_returns_a_loadable_checkpoint(tmp_path, research_data,
                                                                          tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()  # an earlier run's records in the same folder must not count
    stale = {"event": "done", "best": "/old/best.pt", "last": None}
    (out / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
    gen = run_finetune(_config(research_data, tiny_checkpoint, out), poll_s=0.05)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert not result.cancelled and result.returncode == 0
    assert result.checkpoint == out / "best.pt" and result.checkpoint.is_file()
    load_checkpoint(result.checkpoint)
    records = [r for e in events for r in e.events]
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "done"
    assert events[-1].done == events[-1].total == 1 and events[-1].epochs == 1
    assert events[-1].loss is not None
    assert any("epoch 1/1" in line for e in events for line in e.log)


@pytest.mark.slow
def test_cancel_stops_the_process_and_returns_no_checkpoint(tmp_path, research_data, tiny_checkpoint):
    cancel = threading.Event()
    config = _config(research_data, tiny_checkpoint, tmp_path / "out", epochs=1000, max_steps_per_epoch=None)
    gen = run_finetune(config, cancel, poll_s=0.05)
    first = next(gen)  # the process is up and talking
    assert first.log or first.events
    children = psutil.Process().children(recursive=True)
    assert children
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    result = stop.value.value
    assert result.cancelled and result.checkpoint is None
    assert result.returncode != 0  # terminated by the signal, not finished
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


@pytest.mark.slow
def test_closing_the_generator_early_stops_the_process(tmp_path, research_data, tiny_checkpoint):
    config = _config(research_data, tiny_checkpoint, tmp_path / "out", epochs=1000, max_steps_per_epoch=None)
    gen = run_finetune(config, poll_s=0.05)
    next(gen)
    children = psutil.Process().children(recursive=True)
    assert children
    gen.close()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive


@pytest.mark.slow
def test_a_failing_run_raises_with_the_programs_own_message(tmp_path, tiny_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FinetuneError, match="neither a research layout"):
        for _ in run_finetune(_config(empty, tiny_checkpoint, tmp_path / "out"), poll_s=0.05):
            pass


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on CPU is exercised on POSIX")
def test_two_processes_under_torchrun_finish_with_a_checkpoint(tmp_path, research_data, tiny_checkpoint):
    config = _config(research_data, tiny_checkpoint, tmp_path / "out", nproc=2)
    gen = run_finetune(config, poll_s=0.1)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    assert result.checkpoint.is_file()
    start = read_events(tmp_path / "out")[0]
    assert start["world_size"] == 2
