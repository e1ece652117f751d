"""Official SAM weights in, SAM-Lung checkpoints in and out; every file read with safe loading.

A SAM-Lung checkpoint is a ``torch.save`` dict::

    {"format": "napari-samlung-checkpoint", "format_version": 1,
     "config": SamLungConfig.to_dict(),
     "trainable": {full key: tensor},       # adapters + head, buffers included
     "encoder": {SAM key: tensor},          # with include_encoder=True, and always once the whole
                                            # network was trained (config encoder_weights "trained")
     "extra": {...}}                        # trainer state: plain types and tensors

Files are only ever read with ``torch.load(weights_only=True)``, which refuses pickled code
instead of running it.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_samlung.errors import SamLungError
from napari_samlung.files import atomic_file

from .config import SamLungConfig
from .samlung import SamLung

FORMAT_TAG = "napari-samlung-checkpoint"
FORMAT_VERSION = 1

#: Top-level prefixes of a full SAM checkpoint that SAM-Lung does not use.
IGNORED_SAM_PREFIXES = ("prompt_encoder.", "mask_decoder.")
_SAM_SIZES = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H"}
_PLAIN_SCALARS = (bool, int, float, str)

PathLike = str | os.PathLike


class CheckpointError(SamLungError):
    """A weights or checkpoint file that cannot be used; the message names the file."""


@dataclass
class SamWeightsReport:
    """What :func:`load_sam_weights` did."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: int = 0  # prompt-encoder / mask-decoder entries of a full SAM file


# ----------------------------------------------------------------------------- reading files

def _safe_load(path: PathLike, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` to the CPU, every failure turned into a CheckpointError.

    ``mmap`` maps a zip-format file instead of reading it (weights copied once into the model).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them itself
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported global:? GLOBAL (\S+)", str(exc), re.IGNORECASE)
        code = found.group(1) if found else _pickled_code(path)
        if code:
            raise CheckpointError(f"{path}: refused: it carries pickled code or objects ({code}) "
                                  "that safe (weights_only) loading does not run") from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle data: a plain pickle? "
                              "save checkpoints with torch.save)") from None
    except Exception as exc:  # truncated zip, text file, empty file...: torch raises many kinds
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{first_line}") from None


def _pickled_code(path: PathLike, limit: int = 1 << 26) -> str | None:
    """The first global (a function or class) the pickle in ``path`` would load, read without
    running it; None when it names none or cannot be parsed."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                return str(arg).replace(" ", ".")
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # truncated or not a pickle at all: nothing to name
        return None
    return None


def read_checkpoint(path: PathLike, mmap: bool = False) -> dict[str, Any]:
    """Safely load a SAM-Lung checkpoint to the CPU and check its structure.

    Returns the raw dict (``config`` still a dict, ``extra`` as saved); raises CheckpointError.
    ``mmap`` maps the tensors instead of reading them: cheap when only the config is wanted.
    """
    content = _safe_load(path, mmap=mmap)
    if not isinstance(content, dict) or content.get("format") != FORMAT_TAG:
        is_state_dict = isinstance(content, dict) and content and all(
            isinstance(v, torch.Tensor) for v in content.values())
        hint = " (it looks like model weights: an official SAM file goes to {opt:sam_weights})"
        hint = hint if is_state_dict else ""
        raise CheckpointError(f"{path}: not a napari-samlung checkpoint{hint}")
    version = content.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer napari-samlung (format version {version}; "
                              f"this one reads up to {FORMAT_VERSION})")
    try:
        SamLungConfig.from_dict(content.get("config"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_tensor_dict(path, content, "trainable")
    if "encoder" in content:
        _check_tensor_dict(path, content, "encoder")
    if not isinstance(content.get("extra", {}), dict):
        raise CheckpointError(f"{path}: 'extra' must be a dict")
    return content


def _check_tensor_dict(path: PathLike, content: dict[str, Any], name: str) -> None:
    entries = content.get(name)
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: {name!r} is missing or not a dict")
    for key, value in entries.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name}[{key!r}] is not a named tensor")


# ----------------------------------------------------------------------------- SAM weights

def load_sam_weights(model: SamLung, source: PathLike | dict[str, Any],
                     strict: bool = True) -> SamWeightsReport:
    """Copy official SAM image-encoder weights into ``model.image_encoder``.

    ``source`` is a file or a state dict: either a full SAM checkpoint (``image_encoder.*``
    keys; ``prompt_encoder.*`` / ``mask_decoder.*`` are ignored) or an encoder-only state dict.
    A wrong shape (for instance a ViT-L or ViT-H file) is a CheckpointError naming the key.
    With ``strict``, missing or unexpected encoder keys are an error too; otherwise they are
    listed in the returned report.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "SAM state dict"
    state = _safe_load(source, mmap=True) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: expected a state dict of SAM weights, got {type(state).__name__}")
    full_layout = any(isinstance(k, str) and k.startswith("image_encoder.") for k in state)
    prefix = "image_encoder." if full_layout else ""
    weights, unexpected, ignored = {}, [], 0
    for key, value in state.items():
        key = str(key)
        if full_layout and key.startswith(IGNORED_SAM_PREFIXES):
            ignored += 1
        elif key.startswith(prefix) and isinstance(value, torch.Tensor):
            weights[key[len(prefix):]] = value
        else:
            unexpected.append(key)

    targets = model.image_encoder.sam_state_dict()
    if not weights.keys() & targets.keys():
        raise CheckpointError(f"{name}: no SAM image-encoder weights found (expected keys such as "
                              "'image_encoder.pos_embed' or 'pos_embed')")
    for key, target in targets.items():
        if key in weights and weights[key].shape != target.shape:
            hint = _shape_hint(weights, model.config)
            raise CheckpointError(f"{name}: key {prefix + key!r} has shape {tuple(weights[key].shape)}, "
                                  f"the model expects {tuple(target.shape)}{hint}")
    unexpected += [prefix + k for k in weights if k not in targets]
    missing = [prefix + k for k in targets if k not in weights]
    if strict and (missing or unexpected):
        raise CheckpointError(f"{name}: does not match the SAM-Lung image encoder: "
                              f"{_key_summary(missing, unexpected)}")
    with torch.no_grad():
        for key, target in targets.items():
            if key in weights:
                target.copy_(weights[key])
    return SamWeightsReport(name, len(targets) - len(missing), missing, unexpected, ignored)


def _shape_hint(weights: dict[str, torch.Tensor], config: SamLungConfig) -> str:
    """Why shapes differ, when the file says so: another SAM size, or another training tile size."""
    proj = weights.get("patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4 and proj.shape[0] != config.embed_dim:
        kind = _SAM_SIZES.get(proj.shape[0], f"embed dim {proj.shape[0]}")
        ours = _SAM_SIZES.get(config.embed_dim, f"embed dim {config.embed_dim}")
        advice = " (use sam_vit_b_01ec64.pth)" if ours == "ViT-B" else ""
        return f": this is a SAM {kind} file, the model is {ours}{advice}"
    pos = weights.get("pos_embed")
    if pos is not None and pos.ndim == 4 and pos.shape[1] != config.grid_size:
        size = pos.shape[1] * config.patch_size
        return (f": its position embedding is for {size} px inputs; build the model with img_size={size} "
                "(other tile sizes are resized at run time)")
    return ""


def _key_summary(missing: list[str], unexpected: list[str], shown: int = 5) -> str:
    """'2 missing key(s) (a, b); 1 unexpected key(s) (c)', listing at most ``shown`` of each."""
    parts = []
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {kind} key(s) ({', '.join(keys[:shown])}{more})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- SAM-Lung checkpoints

def save_checkpoint(model: SamLung, path: PathLike, include_encoder: bool = False,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write config + adapters/head state (+ the SAM encoder weights with ``include_encoder``, or
    when they were trained: no other file holds them) + ``extra`` (trainer state: dicts/lists/tuples
    of str, int, float, bool, None and tensors).

    The file appears atomically (:func:`napari_samlung.files.atomic_file`).
    """
    if not isinstance(model, SamLung):
        raise TypeError(f"save_checkpoint needs a SamLung model, got {type(model).__name__}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"save_checkpoint: extra must be a dict, got {type(extra).__name__}")
    _check_plain(extra, "extra")
    content: dict[str, Any] = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "trainable": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "extra": extra,
    }
    if include_encoder or model.config.encoder_weights == "trained":
        content["encoder"] = {k: v.detach().cpu() for k, v in model.image_encoder.sam_state_dict().items()}
    path = Path(path)
    with atomic_file(path, fsync=True) as f:
        torch.save(content, f)
    return path


def _check_plain(value: Any, where: str) -> None:
    """Refuse what weights_only loading could not read back, naming where it sits in ``extra``.

    Exact types: subclasses such as numpy.float64 pickle as code that safe loading refuses.
    """
    if value is None or type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if not (key is None or type(key) in _PLAIN_SCALARS):
                raise TypeError(f"save_checkpoint: {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    raise TypeError(f"save_checkpoint: {where} is a {kind}; only dicts, lists, tuples, str, int, float, "
                    "bool, None and tensors can be stored")


def load_checkpoint(path: PathLike, sam_weights: PathLike | dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu") -> SamLung:
    """Rebuild the model a checkpoint describes, with its weights, on ``map_location``.

    The encoder weights come from the checkpoint when it holds them (``include_encoder``, or a
    whole network trained), over ``sam_weights``; otherwise from ``sam_weights`` (the official file).
    """
    content = read_checkpoint(path)
    config = SamLungConfig.from_dict(content["config"])
    if "encoder" not in content and config.encoder_weights == "trained":
        raise CheckpointError(f"{path}: its encoder was trained (tune {config.tune}) but the file does not "
                              "hold the encoder weights: damaged or written by another program")
    if "encoder" not in content and sam_weights is None:
        raise CheckpointError(f"{path}: holds only the adapters and head, not the SAM encoder weights; "
                              "pass the official SAM ViT-B file (sam_vit_b_01ec64.pth) with {opt:sam_weights}")
    with torch.device("meta"):  # no random initialization: every tensor is filled from the files below
        model = SamLung(config)
    model.to_empty(device="cpu")
    if "encoder" in content:
        try:
            load_sam_weights(model, content["encoder"])
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: encoder weights: {exc}") from None
    else:
        model.load_sam_weights(sam_weights)
    _load_trainable(model, content["trainable"], path)
    return model.to(map_location)


def _load_trainable(model: SamLung, state: dict[str, torch.Tensor], path: PathLike) -> None:
    targets = model.trainable_state_dict()
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets]
    if missing or unexpected:
        raise CheckpointError(f"{path}: adapters/head do not match its config: "
                              f"{_key_summary(missing, unexpected)}")
    with torch.no_grad():
        for key, target in targets.items():
            if state[key].shape != target.shape:
                raise CheckpointError(f"{path}: key {key!r} has shape {tuple(state[key].shape)}, the model "
                                      f"expects {tuple(target.shape)}")
            target.copy_(state[key])
