"""Start ``samlung-finetune`` as a separate process and follow it (headless; no Qt).

The napari widget's "Fine-tune on corrections" button and ``samlung demo`` use this: build the
command line from a :class:`FinetuneConfig`, start it (optionally under torchrun with several
processes), and iterate :func:`run_finetune`, a generator of :class:`FinetuneProgress` parsed from
the run's ``metrics.jsonl`` and console output that returns a :class:`FinetuneResult` holding the
new checkpoint. Setting the ``cancel`` event (or closing the generator) stops the whole process
group, torchrun's workers included.

Training runs in its own process so that a crash, an out-of-memory error or DDP never takes the
viewer down with it, and so that torchrun can own the worker processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

from napari_samlung.errors import SamLungError

METRICS_FILE = "metrics.jsonl"
CONSOLE_FILE = "console.log"
DEVICES = ("auto", "cpu", "cuda")


class FinetuneError(SamLungError):
    """A fine-tuning run that cannot start or that failed (the message says why)."""


@dataclass
class FinetuneConfig:
    """What to fine-tune on and how; mirrors ``samlung-finetune``'s options."""

    data_paths: list[Path]  # exported training sets or research DATA folders
    init_checkpoint: Path  # the SAM-Lung checkpoint to start from
    output_dir: Path
    sam_weights: Path | None = None  # not needed for a self-contained checkpoint
    epochs: int = 1
    max_steps_per_epoch: int | None = None
    batch_size: int = 2
    crop_size: int | None = None
    lr: float | None = None  # None: the program's default
    device: str = "auto"  # 'auto' lets the program choose (CUDA when present)
    workers: int = 0  # DataLoader worker processes per rank
    nproc: int = 1  # processes; more than one starts torchrun (one per GPU)
    extra_args: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise :class:`FinetuneError` naming the first option that cannot work."""
        if not self.data_paths:
            raise FinetuneError("no training data given")
        for path in self.data_paths:
            if not Path(path).exists():
                raise FinetuneError(f"training data {path}: no such folder")
        if not Path(self.init_checkpoint).is_file():
            raise FinetuneError(f"checkpoint {self.init_checkpoint}: no such file")
        if self.sam_weights is not None and not Path(self.sam_weights).is_file():
            raise FinetuneError(f"SAM weights {self.sam_weights}: no such file")
        for name in ("epochs", "batch_size", "nproc"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise FinetuneError(f"max_steps_per_epoch must be at least 1, got {self.max_steps_per_epoch}")
        if self.workers < 0:
            raise FinetuneError(f"workers must not be negative, got {self.workers}")
        if self.lr is not None and not self.lr > 0:
            raise FinetuneError(f"lr must be positive, got {self.lr}")
        if self.device.split(":")[0] not in DEVICES:
            raise FinetuneError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


def build_command(config: FinetuneConfig, python: str | None = None) -> list[str]:
    """The argument vector that runs ``config`` (``python -m training.finetune`` or under torchrun)."""
    python = python or sys.executable
    if config.nproc > 1:
        command = [python, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(config.nproc), "-m", "training.finetune"]
    else:
        command = [python, "-m", "training.finetune"]
    for path in config.data_paths:
        command += ["--data-path", str(path)]
    command += ["--init-checkpoint", str(config.init_checkpoint), "--output-dir", str(config.output_dir),
                "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
                "--workers", str(config.workers)]
    optional = {"--sam-weights": config.sam_weights, "--max-steps-per-epoch": config.max_steps_per_epoch,
                "--crop-size": config.crop_size, "--lr": config.lr,
                "--device": None if config.device == "auto" else config.device}
    for option, value in optional.items():
        if value is not None:
            command += [option, str(value)]
    return command + list(config.extra_args)


@dataclass
class FinetuneProgress:
    """Where a run stands, after new output arrived."""

    done: int = 0  # optimizer steps finished, all epochs
    total: int = 0  # optimizer steps of the whole run (0 until the program says)
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    val_dice: float | None = None
    images_per_s: float | None = None
    log: list[str] = field(default_factory=list)  # console lines since the previous event
    events: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records since then

    def summary(self) -> str:
        """One line for a status label."""
        parts = [f"epoch {self.epoch}/{self.epochs}"] if self.epochs else ["starting"]
        if self.total:
            parts.append(f"step {self.done}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.val_dice is not None:
            parts.append(f"val Dice {self.val_dice:.4f}")
        return "  ".join(parts)


@dataclass
class FinetuneResult:
    """How a run ended: ``checkpoint`` is the best (else last) checkpoint; None when cancelled."""

    output_dir: Path
    cancelled: bool
    checkpoint: Path | None
    returncode: int | None


class _LineTail:
    """Reads the complete lines appended to a file since construction (partial lines wait)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.pending = b""

    def read(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]


class FinetuneProcess:
    """One ``samlung-finetune`` process (group): start, poll its output, cancel."""

    def __init__(self, config: FinetuneConfig, python: str | None = None):
        config.validate()
        self.config = config
        self.command = build_command(config, python)
        self.output_dir = Path(config.output_dir)
        self.process: subprocess.Popen | None = None
        self._metrics: _LineTail | None = None
        self._console: _LineTail | None = None
        self.state = FinetuneProgress()
        self.outcome: dict[str, Any] | None = None  # the 'done' or 'error' record

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = _LineTail(self.output_dir / METRICS_FILE)  # only this run's records
        console_path = self.output_dir / CONSOLE_FILE
        self._console = _LineTail(console_path)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(console_path, "ab") as console:
            self.process = subprocess.Popen(
                self.command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                **_new_process_group())

    def poll(self) -> FinetuneProgress | None:
        """New output since the last call as a progress event, or None when nothing came."""
        assert self._metrics is not None and self._console is not None, "start() first"
        log = self._console.read()
        events = []
        for line in self._metrics.read():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                events.append(record)
                self._update(record)
        if not log and not events:
            return None
        return dataclasses.replace(self.state, log=log, events=events)

    def _update(self, record: dict[str, Any]) -> None:
        state, event = self.state, record.get("event")
        if event == "start":
            state.epochs = int(record.get("epochs") or 0)
            steps = int(record.get("steps") or 0)
            state.total = state.epochs * steps
            state.epoch = max(0, int(record.get("start_epoch") or 1) - 1)
            state.done = state.epoch * steps
        elif event == "step":
            state.epoch, state.epochs = int(record["epoch"]), int(record.get("epochs") or state.epochs)
            state.done = int(record.get("global_step") or state.done)
            state.loss, state.images_per_s = record.get("loss"), record.get("images_per_s")
        elif event == "epoch":
            state.epoch = int(record["epoch"])
            state.val_dice = record.get("val_dice")
            if state.epochs and state.total:
                state.done = state.epoch * state.total // state.epochs
        elif event in ("done", "error"):
            self.outcome = record

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the process group: terminate, then kill after ``grace_s`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, getattr(signal, "SIGKILL", signal.SIGTERM))
            process.wait()

    def failure(self) -> str:
        """Why the finished process failed, in one line."""
        if self.outcome and self.outcome.get("event") == "error":
            return str(self.outcome.get("message"))
        tail = [line.strip() for line in _tail_lines(self.output_dir / CONSOLE_FILE, 20) if line.strip()]
        last = tail[-1] if tail else "no output"
        return f"exit status {self.process.returncode if self.process else '?'}: {last}"


def run_finetune(
    config: FinetuneConfig,
    cancel: threading.Event | None = None,
    *,
    poll_s: float = 0.25,
    python: str | None = None,
) -> Generator[FinetuneProgress, None, FinetuneResult]:
    """Run ``samlung-finetune`` for ``config``; yields progress, returns the result.

    Raises :class:`FinetuneError` when the options are invalid or the run fails (with the
    program's own error message). Closing the generator early stops the process.
    """
    run = FinetuneProcess(config, python)
    run.start()
    try:
        while True:
            finished = not run.running  # read the output after checking, so nothing is missed
            event = run.poll()
            if event is not None:
                yield event
            if finished:
                break
            if cancel is not None and cancel.is_set():
                run.cancel()
                while (event := run.poll()) is not None:
                    yield event
                return FinetuneResult(run.output_dir, True, None, run.process.returncode)
            time.sleep(poll_s)
    finally:
        run.cancel()
    returncode = run.process.returncode
    outcome = run.outcome or {}
    if returncode != 0 or outcome.get("event") != "done":
        raise FinetuneError(f"fine-tuning failed ({run.failure()}); see {run.output_dir / CONSOLE_FILE}")
    checkpoint = outcome.get("best") or outcome.get("last")
    if not checkpoint or not Path(checkpoint).is_file():
        raise FinetuneError(f"fine-tuning finished but wrote no checkpoint into {run.output_dir}")
    return FinetuneResult(run.output_dir, False, Path(checkpoint), returncode)


def _new_process_group() -> dict[str, Any]:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        if os.name == "nt":
            process.terminate() if sig == signal.SIGTERM else process.kill()
        else:
            os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail_lines(path: Path, count: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            return f.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return []
