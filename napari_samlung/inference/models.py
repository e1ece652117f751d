"""Build the model a command or the widget segments with, from a checkpoint or a preset."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from napari_samlung.model import SamLung, load_checkpoint
from napari_samlung.model.config import PRESETS


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex digest of a file (identifies the checkpoint a class map was made with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _existing(path: str | os.PathLike, option: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{option} {path}: no such file")
    return path


def load_model(
    checkpoint: str | os.PathLike | None = None,
    sam_weights: str | os.PathLike | None = None,
    preset: str | None = None,
    num_classes: int = 1,
) -> tuple[SamLung, dict[str, Any]]:
    """A SAM-Lung model and a description of where it came from (for the class map's metadata).

    With ``checkpoint``: the SAM-Lung checkpoint (plus ``sam_weights`` unless it is
    self-contained). Without: a fresh ``preset`` model, on ``sam_weights`` when given (for trials;
    its head is untrained).
    """
    info: dict[str, Any] = {}
    if sam_weights is not None:
        sam_weights = _existing(sam_weights, "--sam-weights")
        info["sam_weights"] = str(sam_weights.resolve())
    if checkpoint is not None:
        checkpoint = _existing(checkpoint, "--checkpoint")
        model = load_checkpoint(checkpoint, sam_weights=sam_weights)
        info.update(checkpoint=str(checkpoint.resolve()), checkpoint_sha256=file_sha256(checkpoint))
        if preset is not None and preset != model.config.preset:
            raise ValueError(f"--preset {preset} does not match the checkpoint's model ({model.config.preset})")
    elif preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset}: unknown (choose from {', '.join(PRESETS)})")
        with torch.random.fork_rng():  # the same fresh model every run, so reruns resume consistently
            torch.manual_seed(0)
            model = SamLung(PRESETS[preset](num_classes=num_classes))
        if sam_weights is not None:
            model.load_sam_weights(sam_weights)
        info["untrained_head"] = True
    else:
        raise ValueError("give --checkpoint (a SAM-Lung checkpoint) or --preset (a fresh model, for trials)")
    info["preset"] = model.config.preset
    return model, info
