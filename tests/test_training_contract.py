"""The fine-tuning contract holds both sides together: the launcher's options parse in the trainer,
the trainer's events read back in the launcher, and file names are spelled in one module only."""

from __future__ import annotations

import ast
import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from napari_samlung.training_runs import contract
from napari_samlung.training_runs.contract import (
    TRAINER_MODULE,
    DoneEvent,
    EpochEvent,
    ErrorEvent,
    EvaluationEvent,
    FinetuneConfig,
    RunFolder,
    StartEvent,
    StepEvent,
    decode_event,
    read_record,
    trainer_options,
)
from napari_samlung.training_runs.launcher import RunMonitor, build_command
from training.progress import MetricsLog

ROOT = Path(__file__).resolve().parents[1]


def _trainer_args(command: list[str]):
    """What the trainer's own argument parser makes of the options after ``-m training.finetune``."""
    trainer = importlib.import_module(TRAINER_MODULE)
    return trainer.get_args_parser().parse_args(command[command.index(TRAINER_MODULE) + 1:])


@pytest.mark.parametrize("config", [
    FinetuneConfig([Path("a"), Path("b")], Path("c.pt"), Path("out"), sam_weights=Path("sam.pth"), epochs=3,
                   max_steps_per_epoch=7, batch_size=2, crop_size=48, lr=0.001, device="cuda:1", workers=2,
                   tune="head", extra_args=("--amp",)),
    FinetuneConfig([Path("a")], Path("c.pt"), Path("out"), nproc=2),  # defaults, under torchrun
], ids=["every-option", "defaults"])
def test_the_launchers_command_means_the_same_to_the_trainers_parser(config):
    args = _trainer_args(build_command(config, python="py"))
    options = trainer_options(config)
    for name, value in options.items():
        if value is not None:
            assert getattr(args, name) == value, name
    assert args.amp == ("--amp" in config.extra_args)


def test_events_written_by_the_trainer_read_back_in_the_launcher_with_the_same_values(tmp_path):
    folder = RunFolder(tmp_path)
    monitor = RunMonitor(folder)
    written = [
        StartEvent(epochs=2, start_epoch=1, steps=3, train_images=6, val_images=2, world_size=2, batch_size=1,
                   resumed=False),
        StepEvent(epoch=1, epochs=2, step=3, steps=3, global_step=3, loss=0.25, lr=0.01, images_per_s=12.5),
        EpochEvent(epoch=1, epochs=2, loss=0.3, lr=0.005, val_dice=0.75, val_images=2, best_dice=0.75,
                   is_best=True, images_per_s=11.0, time_s=1.5),
        EvaluationEvent(str(folder.best), "test", {"images": 2, "dice": 0.5, "hd95": None}),
        DoneEvent(best=str(folder.best), last=str(folder.last)),
    ]
    metrics = MetricsLog(folder.metrics)
    for event in written:
        metrics.write(event)
    metrics.close()

    progress = monitor.poll()
    assert [decode_event(record) for record in progress.events] == written
    assert [record["event"] for record in progress.events] == ["start", "step", "epoch", "test", "done"]
    assert (progress.done, progress.total, progress.epoch, progress.epochs) == (3, 6, 1, 2)
    assert (progress.loss, progress.val_dice, progress.images_per_s) == (0.25, 0.75, 12.5)
    assert monitor.outcome == written[-1]
    assert monitor.poll() is None  # nothing new


def test_non_finite_values_and_foreign_lines_read_back_without_breaking_the_reader(tmp_path):
    folder = RunFolder(tmp_path)
    monitor = RunMonitor(folder)
    metrics = MetricsLog(folder.metrics)
    metrics.write(StepEvent(epoch=1, epochs=1, step=1, steps=1, global_step=1, loss=math.nan, lr=0.01,
                            images_per_s=1.0))
    metrics.close()
    with open(folder.metrics, "a") as f:
        f.write('not json\n[1, 2]\n{"event": "step"}\n{"event": "later-kind", "x": 1}\n')
    error = ErrorEvent("no training pairs")
    metrics = MetricsLog(folder.metrics)
    metrics.write(error)
    metrics.close()

    progress = monitor.poll()
    events = [decode_event(record) for record in progress.events]
    assert events[0].loss is None and progress.loss is None  # NaN travels as null: strict JSON
    assert len(events) == 4  # the lines that are no JSON object are no records
    assert events[1:3] == [None, None]  # incomplete or of an unknown kind: kept as records, not understood
    assert events[-1] == error and monitor.outcome == error
    assert read_record("not json") is None and read_record("[1, 2]") is None


def _string_constants(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_the_trainer_and_launcher_spell_no_run_file_name_themselves():
    names = {contract.BEST_CHECKPOINT, contract.LAST_CHECKPOINT, contract.TRAIN_LOG, contract.METRICS_FILE,
             contract.CONSOLE_FILE}
    sources = [*sorted((ROOT / "training").glob("*.py")), ROOT / "napari_samlung/training_runs/launcher.py"]
    for path in sources:
        for text in _string_constants(path):
            assert text not in names and "digest-rank" not in text, f"{path.name} spells {text!r}"
    assert RunFolder(Path("run")).digest(1) == Path("run/digest-rank1.txt")


def test_the_contract_imports_neither_torch_nor_napari_nor_qt():
    code = ("import sys, napari_samlung.training_runs.contract; "
            "print(sorted({'torch', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

