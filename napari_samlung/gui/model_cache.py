"""Loaded models kept between runs, keyed by checkpoint, SAM weights and device (no Qt).

Loading a ViT-B checkpoint takes seconds and hundreds of MB, so the widget keeps the last few
predictors. The key includes each file's size and modification time: a checkpoint rewritten in
place (a fine-tuning run writing ``best.pt`` again) is loaded afresh.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from napari_samlung.errors import SamLungError
from napari_samlung.inference.models import load_predictor
from napari_samlung.inference.predictor import TilePredictor, resolve_device


def check_model_files(checkpoint: str, sam_weights: str) -> tuple[Path, Path | None]:
    """The checkpoint and optional SAM weights as paths; a :class:`SamLungError` naming a missing one."""
    if not checkpoint.strip():
        raise SamLungError("choose a SAM-Lung checkpoint (.pt) first")
    paths = []
    for label, text in (("checkpoint", checkpoint), ("SAM weights", sam_weights)):
        if not text.strip():
            paths.append(None)
            continue
        path = Path(text.strip()).expanduser()
        if not path.is_file():
            raise SamLungError(f"{label} {path}: no such file")
        paths.append(path)
    return paths[0], paths[1]


def _file_key(path: Path | None) -> tuple | None:
    if path is None:
        return None
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _key(checkpoint: Path, sam_weights: Path | None, device: str) -> tuple:
    """A loaded model's key: both files by content stamp, and the device they are on."""
    return _file_key(checkpoint), _file_key(sam_weights), str(resolve_device(device))


class PredictorCache:
    """The most recently used predictors (at most ``capacity``); safe to use from worker threads."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._items: OrderedDict[tuple, TilePredictor] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was actually loaded

    def peek(self, checkpoint: Path, sam_weights: Path | None, device: str) -> TilePredictor | None:
        """The predictor for these files on ``device`` if it is loaded already (nothing is loaded):
        planning a run uses its description to count the tiles an earlier run finished."""
        key = _key(checkpoint, sam_weights, device)
        with self._lock:
            return self._items.get(key)

    def get(self, checkpoint: Path, sam_weights: Path | None, device: str) -> TilePredictor:
        """The predictor for these files on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
        key = _key(checkpoint, sam_weights, device)  # checks the device before anything loads
        with self._lock:  # one load at a time; a second caller waits and reuses it
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            predictor = load_predictor(checkpoint, sam_weights, device=key[2])
            self.loads += 1
            self._items[key] = predictor
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return predictor
