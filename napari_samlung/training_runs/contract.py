"""The fine-tuning contract: what ``samlung-finetune`` is asked to do and what it leaves behind.

Both sides import this one module: ``training/`` writes the output folder and the metrics events,
:mod:`napari_samlung.training_runs.launcher` builds the command line and reads them back. It holds

- :class:`FinetuneConfig`, a run request, and :func:`trainer_argv`, the trainer's options for it;
- :class:`RunFolder`, the names of the files in a run's output folder;
- the ``metrics.jsonl`` events (one dataclass per kind) with :func:`encode_event`,
  :func:`read_record` and :func:`decode_event` for one line of the file.

Standard library only (no torch, napari or Qt): the widget imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from napari_samlung.errors import SamLungError, flag_name

TRAINER_MODULE = "training.finetune"  # run as ``python -m``, alone or under torchrun
DEVICES = ("auto", "cpu", "cuda")
#: ``--tune`` values: Mona adapters + head, the whole network, the head alone (the model's
#: ``SamLungConfig.tune`` takes the same words).
TUNE_MODES = ("mona", "full", "head")

BEST_CHECKPOINT = "best.pt"  # the highest validation Dice
LAST_CHECKPOINT = "last.pt"  # the latest epoch, with the state ``--resume`` needs
TRAIN_LOG = "train.log"  # rank 0's log lines, time-stamped
METRICS_FILE = "metrics.jsonl"  # the events below, one JSON object per line
CONSOLE_FILE = "console.log"  # the launcher's capture of every process's stdout and stderr

KIND_KEY, TIME_KEY = "event", "time"  # in every metrics line, beside the event's own fields


class FinetuneError(SamLungError):
    """A fine-tuning run that cannot start or that failed (the message says why)."""


@dataclass
class FinetuneConfig:
    """What to fine-tune on and how: a request that :func:`trainer_argv` turns into options."""

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
    tune: str | None = None  # one of TUNE_MODES; None: the program's default for the checkpoint
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
        if self.tune is not None and self.tune not in TUNE_MODES:
            raise FinetuneError(f"tune must be one of {', '.join(TUNE_MODES)}, got {self.tune!r}")


def trainer_options(config: FinetuneConfig) -> dict[str, Any]:
    """The trainer's option values for ``config``, keyed by its argument names (argparse ``dest``).

    None leaves an option to the trainer's default; a list repeats the option once per item.
    """
    return {
        "data_path": [str(path) for path in config.data_paths],
        "init_checkpoint": str(config.init_checkpoint),
        "output_dir": str(config.output_dir),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "workers": config.workers,
        "sam_weights": None if config.sam_weights is None else str(config.sam_weights),
        "max_steps_per_epoch": config.max_steps_per_epoch,
        "crop_size": config.crop_size,
        "lr": config.lr,
        "device": None if config.device == "auto" else config.device,
        "tune": config.tune,
    }


def trainer_argv(config: FinetuneConfig) -> list[str]:
    """The trainer's command-line options for ``config`` (``--batch-size 2`` for ``batch_size``),
    followed by ``config.extra_args``."""
    argv: list[str] = []
    for name, value in trainer_options(config).items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                argv += [flag_name(name), str(item)]
    return argv + list(config.extra_args)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run's output folder (``--output-dir``)."""

    root: Path

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def console(self) -> Path:
        return self.root / CONSOLE_FILE

    def digest(self, rank: int) -> Path:
        """The SHA-256 of rank ``rank``'s trainable weights (``--rank-digests``, for DDP checks)."""
        return self.root / f"digest-rank{rank}.txt"


class _Event:
    """A ``metrics.jsonl`` event: a dataclass whose fields are the line's fields."""

    kind: ClassVar[str]  # the line's "event" value

    def fields(self) -> dict[str, Any]:
        """The line's own fields, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_fields(cls, record: dict[str, Any]) -> Self:
        """The event from a line's object (other keys, the kind and time included, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})


@dataclass(frozen=True)
class StartEvent(_Event):
    """Training starts or resumes."""

    kind: ClassVar[str] = "start"
    epochs: int
    start_epoch: int  # 1-based: the first epoch this process trains
    steps: int  # optimizer steps per epoch
    train_images: int
    val_images: int
    world_size: int
    batch_size: int  # per process
    resumed: bool


@dataclass(frozen=True)
class StepEvent(_Event):
    """Every ``--print-freq`` steps: the loss averaged over those steps and the ranks."""

    kind: ClassVar[str] = "step"
    epoch: int  # 1-based
    epochs: int
    step: int  # within the epoch
    steps: int
    global_step: int  # over all epochs
    loss: float | None  # None where not finite
    lr: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEvent(_Event):
    """An epoch ended and was validated."""

    kind: ClassVar[str] = "epoch"
    epoch: int  # 1-based
    epochs: int
    loss: float | None
    lr: float
    val_dice: float | None
    val_images: int
    best_dice: float | None
    is_best: bool
    images_per_s: float
    time_s: float


@dataclass(frozen=True)
class EvaluationEvent(_Event):
    """``--test-only`` evaluated a checkpoint; ``summary``'s keys are the line's other fields."""

    kind: ClassVar[str] = "test"
    checkpoint: str
    split: str
    summary: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "split": self.split, **self.summary}

    @classmethod
    def from_fields(cls, record: dict[str, Any]) -> Self:
        summary = {key: value for key, value in record.items()
                   if key not in (KIND_KEY, TIME_KEY, "checkpoint", "split")}
        return cls(record["checkpoint"], record["split"], summary)


@dataclass(frozen=True)
class DoneEvent(_Event):
    """Training finished: the checkpoints it left (None where it wrote none)."""

    kind: ClassVar[str] = "done"
    best: str | None
    last: str | None


@dataclass(frozen=True)
class ErrorEvent(_Event):
    """The program stopped on a user error (the message it printed)."""

    kind: ClassVar[str] = "error"
    message: str


Event = StartEvent | StepEvent | EpochEvent | EvaluationEvent | DoneEvent | ErrorEvent
EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (StartEvent, StepEvent, EpochEvent, EvaluationEvent, DoneEvent, ErrorEvent)}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    return value


def encode_event(event: Event) -> str:
    """One ``metrics.jsonl`` line (no newline): ``{"event": kind, "time": unix seconds, fields...}``."""
    record = {KIND_KEY: event.kind, TIME_KEY: round(time.time(), 3),
              **{key: _plain(value) for key, value in event.fields().items()}}
    return json.dumps(record)


def read_record(line: str) -> dict[str, Any] | None:
    """The JSON object on one line, or None for anything else (a torn or foreign line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def decode_event(record: dict[str, Any]) -> Event | None:
    """The event a line's object holds, or None for an unknown kind or missing fields."""
    kind = record.get(KIND_KEY)
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return None
    try:
        return cls.from_fields(record)
    except (TypeError, KeyError):
        return None
