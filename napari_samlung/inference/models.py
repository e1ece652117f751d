"""Build the model a command or the widget segments with, from a checkpoint or a preset.

Every front end (``samlung segment``/``predict``/``demo``, the widget) loads through
:func:`load_predictor`, so the checks and the metadata recorded with a class map are the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from napari_samlung.errors import SamLungError
from napari_samlung.inference.engine import ModelSpec
from napari_samlung.inference.predictor import TilePredictor, resolve_device
from napari_samlung.model import CheckpointError, SamLung, load_checkpoint
from napari_samlung.model.checkpoint import read_checkpoint
from napari_samlung.model.config import PRESETS, SamLungConfig


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex digest of a file (identifies the checkpoint a class map was made with)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _existing(path: str | os.PathLike, param: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file", param=param)
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
        sam_weights = _existing(sam_weights, "sam_weights")
        info["sam_weights"] = str(sam_weights.resolve())
    if checkpoint is not None:
        checkpoint = _existing(checkpoint, "checkpoint")
        model = load_checkpoint(checkpoint, sam_weights=sam_weights)
        info.update(checkpoint=str(checkpoint.resolve()), checkpoint_sha256=file_sha256(checkpoint))
        if preset is not None and preset != model.config.preset:
            raise SamLungError(f"{preset} does not match the checkpoint's model ({model.config.preset})",
                               param="preset")
    elif preset is not None:
        if preset not in PRESETS:
            raise SamLungError(f"{preset}: unknown (choose from {', '.join(PRESETS)})", param="preset")
        with torch.random.fork_rng():  # the same fresh model every run, so reruns resume consistently
            torch.manual_seed(0)
            model = SamLung(PRESETS[preset](num_classes=num_classes))
        if sam_weights is not None:
            model.load_sam_weights(sam_weights)
        info["untrained_head"] = True
    else:
        raise SamLungError("give {opt:checkpoint} (a SAM-Lung checkpoint) or {opt:preset} (a fresh model, for trials)")
    info["preset"] = model.config.preset
    return model, info


def model_spec(checkpoint: str | os.PathLike | None = None, preset: str | None = None,
               num_classes: int = 1) -> ModelSpec:
    """The tile side and resolution of the model :func:`load_model` would build, read from the
    checkpoint's config without loading its weights: a run is planned (and refused) before then."""
    if checkpoint is not None:
        path = _existing(checkpoint, "checkpoint")
        config = SamLungConfig.from_dict(read_checkpoint(path, mmap=True)["config"])
    elif preset in PRESETS:
        config = PRESETS[preset](num_classes=num_classes)
    else:
        return load_model(checkpoint, None, preset, num_classes)  # raises the same error load_model would
    return ModelSpec(tile_size=int(config.img_size), mpp=config.mpp, preset=config.preset,
                     num_classes=int(config.num_classes))


def load_predictor(
    checkpoint: str | os.PathLike | None = None,
    sam_weights: str | os.PathLike | None = None,
    preset: str | None = None,
    num_classes: int = 1,
    *,
    device: str | torch.device | None = "auto",
    amp: bool = True,
    compile: bool = False,
) -> TilePredictor:
    """The model of :func:`load_model` on ``device``, ready to predict tiles.

    The device is checked first, so a bad one is refused before seconds of loading.
    """
    device = resolve_device(device)
    model, info = load_model(checkpoint, sam_weights, preset, num_classes)
    return TilePredictor(model, model.config, device, amp=amp, compile=compile, info=info)
