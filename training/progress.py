"""How a run reports: log lines (console, and ``train.log`` on rank 0) and ``metrics.jsonl``.

``metrics.jsonl`` holds one event per line, flushed at once, so the napari widget can tail it;
the events and their encoding are the fine-tuning contract's
(:mod:`napari_samlung.training_runs.contract`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from napari_samlung.training_runs.contract import Event, RunFolder, encode_event

LOGGER_NAME = "samlung-finetune"


def setup_logging(is_main: bool, output_dir: Path | None) -> logging.Logger:
    """INFO on rank 0 (console and ``output_dir/train.log``), warnings only elsewhere."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if is_main and output_dir is not None:
        handler = logging.FileHandler(RunFolder(output_dir).train_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


class MetricsLog:
    """Appends events to ``metrics.jsonl`` (rank 0 only; a no-op elsewhere)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = None if path is None else open(path, "a", encoding="utf-8")

    def write(self, event: Event) -> None:
        """Append ``event`` as one line, flushed so that a reader sees it at once."""
        if self._file is None:
            return
        self._file.write(encode_event(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
