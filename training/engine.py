"""One training epoch and one validation pass."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from napari_samlung.errors import SamLungError
from napari_samlung.inference.images import predict_labels
from napari_samlung.inference.predictor import TilePredictor
from napari_samlung.metrics import dice_per_image
from napari_samlung.model import normalize
from napari_samlung.model.config import SamLungConfig
from napari_samlung.training_runs.contract import StepEvent
from training.distributed import all_reduce_min, all_reduce_sum
from training.progress import MetricsLog

#: Why a run diverged, and what to try, at the end of its one-line error.
DIVERGED_HINT = "training stopped, earlier checkpoints are kept (try a lower {opt:lr})"


class DivergedError(SamLungError):
    """The loss or the weights stopped being finite numbers: training cannot go on."""


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@dataclass
class EpochProgress:
    """Where the run is: for log lines and ``metrics.jsonl``."""

    epoch: int  # 0-based; reported 1-based
    epochs: int
    steps: int  # optimizer steps this epoch
    global_step: int  # steps before this epoch
    print_freq: int


def train_step(
    model: nn.Module,
    config: SamLungConfig,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One optimizer step on a uint8 (B, H, W, 3) batch already on the device; returns the loss
    (still on the device: reading it would wait for the GPU)."""
    x = normalize(images, config)
    if images.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, amp_dtype):
        logits = model(x)
    loss = criterion(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def train_one_epoch(
    model: nn.Module,
    config: SamLungConfig,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: EpochProgress,
    logger: logging.Logger,
    metrics: MetricsLog,
) -> dict[str, float]:
    """Train for ``progress.steps`` batches; returns the epoch's mean loss and images/s (all ranks).

    Logs every ``print_freq`` steps (and the last) with the loss averaged over those steps and
    over the ranks. A loss that is not finite on any rank raises :class:`DivergedError` on every
    rank at the next log step (the check rides on the reduction the log needs), naming the first
    step where it happened.
    """
    model.train()
    epoch_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, steps, images
    window = torch.zeros(3, dtype=torch.float64, device=device)
    first_bad_step = torch.full((1,), math.inf, dtype=torch.float64, device=device)
    epoch_start = window_start = time.perf_counter()
    for step, (images, labels) in enumerate(itertools.islice(loader, progress.steps), start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss = train_step(model, config, criterion, optimizer, scaler, images, labels, amp_dtype)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        loss64 = loss.detach().double()
        window += torch.stack([loss64, loss.new_ones((), dtype=torch.float64),
                               loss.new_full((), images.shape[0], dtype=torch.float64)])
        first_bad_step = torch.where(torch.isfinite(loss64), first_bad_step, first_bad_step.clamp_max(step))
        if step % progress.print_freq == 0 or step == progress.steps:
            totals = all_reduce_sum(window.clone())
            now = time.perf_counter()
            loss_mean = (totals[0] / totals[1]).item()
            if not math.isfinite(loss_mean):
                bad_step = int(all_reduce_min(first_bad_step)[0].item())
                raise DivergedError(f"epoch {progress.epoch + 1}, step {bad_step}/{progress.steps}: "
                                    f"the loss is {loss_mean}; {DIVERGED_HINT}")
            images_per_s = totals[2].item() / max(now - window_start, 1e-9)
            logger.info(
                f"epoch {progress.epoch + 1}/{progress.epochs}  step {step}/{progress.steps}  "
                f"loss {loss_mean:.4f}  lr {lr:.3g}  {images_per_s:.1f} img/s"
            )
            metrics.write(StepEvent(
                epoch=progress.epoch + 1, epochs=progress.epochs, step=step, steps=progress.steps,
                global_step=progress.global_step + step, loss=loss_mean, lr=lr, images_per_s=images_per_s,
            ))
            epoch_sums += totals
            window.zero_()
            window_start = now
    elapsed = time.perf_counter() - epoch_start
    steps = max(epoch_sums[1].item(), 1.0)
    return {"loss": epoch_sums[0].item() / steps, "images_per_s": epoch_sums[2].item() / max(elapsed, 1e-9)}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> dict[str, float]:
    """Mean per-image Dice of the raw predictions (no post-processing) over all ranks' images."""
    predictor = TilePredictor(model, model.config, device, amp=amp)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # dice sum, images
    for images, labels in loader:
        predicted = predict_labels(predictor, images)
        dice = dice_per_image(predicted, labels.to(device, non_blocking=True), predictor.num_classes)
        sums += torch.stack([dice.sum(), dice.new_full((), dice.numel())])
    all_reduce_sum(sums)
    return {"val_dice": (sums[0] / sums[1].clamp_min(1)).item(), "val_images": int(sums[1].item())}
