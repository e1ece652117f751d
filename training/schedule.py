"""The learning-rate schedule: linear warm-up, then polynomial decay, stepped per batch."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

#: Factor of the base learning rate at the first warm-up step, as in the research code.
WARMUP_START = 1e-3


def poly_factor(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    Rises linearly from ``WARMUP_START`` to 1 over ``warmup_steps``, then decays as
    ``(1 - progress) ** power`` to 0 at ``total_steps``.
    """
    if warmup_steps > 0 and step <= warmup_steps:
        alpha = step / warmup_steps
        return WARMUP_START * (1 - alpha) + alpha
    decay_steps = max(total_steps - warmup_steps, 1)
    return max(1.0 - (step - warmup_steps) / decay_steps, 0.0) ** power


def poly_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, power: float = 0.9,
    start_step: int = 0,
) -> LambdaLR:
    """A per-step scheduler following :func:`poly_factor` (its state_dict holds plain numbers),
    standing at ``start_step`` (steps already done, as by ``--start_epoch``)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # LambdaLR's base rate, needed to start further on
    return LambdaLR(optimizer, lambda step: poly_factor(step, total_steps, warmup_steps, power),
                    last_epoch=start_step - 1)
