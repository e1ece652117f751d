"""How a run reports: log lines (console, and ``train.log`` on rank 0) and ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per line, flushed at once, so the napari widget can tail
it: ``{"event": "start" | "step" | "epoch" | "test" | "done" | "error", ...}``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

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
        handler = logging.FileHandler(output_dir / "train.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    return value


class MetricsLog:
    """Appends events to ``metrics.jsonl`` (rank 0 only; a no-op elsewhere)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = None if path is None else open(path, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
