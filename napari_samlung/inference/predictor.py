"""Run a segmentation model on batches of uint8 tiles on one device."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from napari_samlung.errors import SamLungError
from napari_samlung.model.normalize import normalize


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA when present; anything but the CPU or an existing CUDA device is a
    :class:`SamLungError` about the ``device`` parameter, before any work starts."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise SamLungError(f"{device}: not a device (choose auto, cpu, cuda or cuda:N)", param="device")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SamLungError(f"{resolved}: CUDA is not available on this machine", param="device")
        if resolved.index is not None and resolved.index >= count:
            raise SamLungError(f"{resolved}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}",
                               param="device")
    return resolved


class TilePredictor:
    """Normalizes tiles, runs the model (bf16 autocast on CUDA) and returns logits on the device.

    ``config`` supplies ``pixel_mean``/``pixel_std`` (model normalization), ``num_classes`` and
    ``mpp``; it is the model's own ``SamLungConfig`` for SAM-Lung. ``info`` describes the model
    (checkpoint path, preset) for the class map's metadata.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        device: str | torch.device | None = "auto",
        *,
        amp: bool = True,
        compile: bool = False,
        info: dict[str, Any] | None = None,
    ):
        self.device = resolve_device(device)
        self.config = config
        self.model = model.eval().to(self.device)
        self.info = dict(info or {})
        self.num_classes = int(config.num_classes)
        self.amp_dtype = torch.bfloat16 if amp and self.device.type == "cuda" else None
        self._input: torch.Tensor | None = None
        # host-to-device copies on their own stream overlap the previous batch's compute
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.input_copied: torch.cuda.Event | None = None  # when the last call's host tiles may be reused
        self.compiled = bool(compile and hasattr(model, "compile_blocks"))
        if self.compiled:
            model.compile_blocks()

    @property
    def tile_size(self) -> int:
        return int(self.config.img_size)

    @property
    def mpp(self) -> float | None:
        return getattr(self.config, "mpp", None)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.inference_mode()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 tiles (host, ideally pinned, or device) -> (B, C, H, W) logits on the device.

        On CUDA, ``input_copied`` is then the event after which the host tiles may be overwritten.
        """
        x = self._to_device(tiles)
        out = None
        if self.device.type == "cpu" and x.shape[-1] == 3:  # reuse the float batch: spares page faults
            if self._input is None or self._input.shape != x.shape:
                self._input = torch.empty(x.shape, dtype=torch.float32)
            out = self._input
        x = normalize(x, self.config, out=out)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self.model(x)

    def _to_device(self, tiles: torch.Tensor) -> torch.Tensor:
        if self._copy_stream is None or tiles.device.type != "cpu":
            self.input_copied = None
            return tiles.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            x = tiles.to(self.device, non_blocking=True)
            self.input_copied = torch.cuda.Event()
            self.input_copied.record()
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # allocated on the copy stream, freed after the compute stream's use
        return x
