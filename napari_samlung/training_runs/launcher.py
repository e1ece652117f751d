"""Start ``samlung-finetune`` as a separate process and follow it (headless; no Qt).

The napari widget's "Fine-tune on corrections" button and ``samlung demo`` use this: build the
command line from a :class:`FinetuneConfig`, start it (optionally under torchrun with several
processes), and iterate :func:`run_finetune`, a generator of :class:`FinetuneProgress` parsed from
the run's ``metrics.jsonl`` and console output that returns a :class:`FinetuneResult` holding the
new checkpoint. Setting the ``cancel`` event (or closing the generator) stops the whole process
group, torchrun's workers included.

Training runs in its own process so that a crash, an out-of-memory error or DDP never takes the
viewer down with it, and so that torchrun can own the worker processes. What the program is
asked and what it writes (options, file names, events) is fixed in :mod:`.contract`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

from napari_samlung.training_runs.contract import (
    TRAINER_MODULE,
    DoneEvent,
    EpochEvent,
    ErrorEvent,
    Event,
    FinetuneConfig,
    FinetuneError,
    RunFolder,
    StartEvent,
    StepEvent,
    decode_event,
    read_record,
    trainer_argv,
)


def build_command(config: FinetuneConfig, python: str | None = None) -> list[str]:
    """The argument vector that runs ``config`` (``python -m training.finetune`` or under torchrun)."""
    command = [python or sys.executable]
    if config.nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(config.nproc)]
    return command + ["-m", TRAINER_MODULE, *trainer_argv(config)]


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


class RunMonitor:
    """Follows a run's folder: the metrics records and console lines appended since construction
    (an earlier run's records in the same folder do not count), folded into a :class:`FinetuneProgress`."""

    def __init__(self, folder: RunFolder):
        self._metrics = _LineTail(folder.metrics)
        self._console = _LineTail(folder.console)
        self.state = FinetuneProgress()
        self.outcome: DoneEvent | ErrorEvent | None = None

    def poll(self) -> FinetuneProgress | None:
        """New output since the last call as a progress event, or None when nothing came."""
        log = self._console.read()
        records = [record for record in map(read_record, self._metrics.read()) if record is not None]
        for record in records:
            event = decode_event(record)
            if event is not None:
                self._update(event)
        if not log and not records:
            return None
        return dataclasses.replace(self.state, log=log, events=records)

    def _update(self, event: Event) -> None:
        state = self.state
        if isinstance(event, StartEvent):
            state.epochs = event.epochs
            state.total = event.epochs * event.steps
            state.epoch = max(0, event.start_epoch - 1)
            state.done = state.epoch * event.steps
        elif isinstance(event, StepEvent):
            state.epoch, state.epochs, state.done = event.epoch, event.epochs, event.global_step
            state.loss, state.images_per_s = event.loss, event.images_per_s
        elif isinstance(event, EpochEvent):
            state.epoch, state.val_dice = event.epoch, event.val_dice
            if state.epochs and state.total:
                state.done = state.epoch * state.total // state.epochs
        elif isinstance(event, (DoneEvent, ErrorEvent)):
            self.outcome = event


class FinetuneProcess:
    """One ``samlung-finetune`` process (group): start, poll its output, cancel."""

    def __init__(self, config: FinetuneConfig, python: str | None = None):
        config.validate()
        self.config = config
        self.command = build_command(config, python)
        self.folder = RunFolder(Path(config.output_dir))
        self.process: subprocess.Popen | None = None
        self.monitor: RunMonitor | None = None

    def start(self) -> None:
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.monitor = RunMonitor(self.folder)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.folder.console, "ab") as console:
            self.process = subprocess.Popen(
                self.command, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                **_new_process_group())

    def poll(self) -> FinetuneProgress | None:
        """New output since the last call as a progress event, or None when nothing came."""
        assert self.monitor is not None, "start() first"
        return self.monitor.poll()

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
        if self.monitor is not None and isinstance(self.monitor.outcome, ErrorEvent):
            return self.monitor.outcome.message
        tail = [line.strip() for line in _tail_lines(self.folder.console, 20) if line.strip()]
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
                return FinetuneResult(run.folder.root, True, None, run.process.returncode)
            time.sleep(poll_s)
    finally:
        run.cancel()
    returncode = run.process.returncode
    outcome = run.monitor.outcome
    if returncode != 0 or not isinstance(outcome, DoneEvent):
        raise FinetuneError(f"fine-tuning failed ({run.failure()}); see {run.folder.console}")
    checkpoint = outcome.best or outcome.last
    if not checkpoint or not Path(checkpoint).is_file():
        raise FinetuneError(f"fine-tuning finished but wrote no checkpoint into {run.folder.root}")
    return FinetuneResult(run.folder.root, False, Path(checkpoint), returncode)


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
