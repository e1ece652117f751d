"""Turn uint8 RGB tiles into the normalized float batch SAM-Lung expects (one place for it)."""

from __future__ import annotations

import functools

import torch

from .config import SamLungConfig


def normalize(images: torch.Tensor, config: SamLungConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize a uint8 RGB batch, (B, H, W, 3) or (B, 3, H, W), to float32 (B, 3, H, W).

    Computes ``(images / 255 - mean) / std`` with the config's H&E statistics, on the images'
    device. A channels-last input comes back as a channels-last strided (B, 3, H, W) view, which
    the patch-embedding convolution reads without a copy; it is computed over rows of
    interleaved RGB values (the per-channel factors repeated along the row), which vectorizes far
    better than broadcasting over a 3-long channel axis. ``out``: an optional float32 buffer of
    (B, H, W, 3) for channels-last input, reused to spare the page faults of a fresh allocation.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"normalize: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize: images must be uint8 RGB (0..255), got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"normalize: images must be 4-D (B, H, W, 3) or (B, 3, H, W), got shape "
                         f"{tuple(images.shape)}")
    channels_first, channels_last = images.shape[1] == 3, images.shape[-1] == 3
    if channels_first == channels_last:
        raise ValueError(f"normalize: cannot tell where the 3 RGB channels are in shape {tuple(images.shape)}")
    if channels_last and images.is_contiguous():
        b, h, w, _ = images.shape
        scale, shift = _factors(tuple(config.pixel_mean), tuple(config.pixel_std), w, images.device)
        rows = images.view(b * h, w * 3)
        if out is not None:
            out = out.view(b * h, w * 3)
        if images.device.type == "cpu":  # with a uint8 operand the CPU kernel does not vectorize: 7x slower
            values = rows.float() if out is None else out.copy_(rows)
            result = torch.addcmul(shift, values, scale, out=values)
        else:
            result = torch.addcmul(shift, rows, scale, out=out)
        return result.view(b, h, w, 3).permute(0, 3, 1, 2)
    if channels_last:
        images = images.permute(0, 3, 1, 2)
    scale, shift = _factors(tuple(config.pixel_mean), tuple(config.pixel_std), 1, images.device)
    return torch.addcmul(shift.view(1, 3, 1, 1), images.float(), scale.view(1, 3, 1, 1))


@functools.lru_cache(maxsize=16)
def _factors(mean: tuple[float, ...], std: tuple[float, ...], repeat: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value scale and shift, repeated ``repeat`` times, made once per device.

    Building them from Python numbers on every call would copy host memory to the GPU
    synchronously, stalling the CPU until the GPU has finished all the work queued before.
    """
    std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
    scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
    return scale.repeat(repeat).to(device), shift.repeat(repeat).to(device)
