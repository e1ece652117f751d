"""Option types and option groups shared by the ``samlung`` commands.

A bad value caught here is an argparse usage error: one line naming the option, exit status 2.
"""

from __future__ import annotations

import argparse
import math

from napari_samlung.model.config import PRESETS


def positive_int(text: str) -> int:
    """A whole number above zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number, zero or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero (``nan`` and ``inf`` are refused)."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --sam-weights / --preset / --num-classes / --device, for commands that build a model."""
    group = parser.add_argument_group("model")
    group.add_argument("--checkpoint", metavar="CKPT", help="SAM-Lung checkpoint (.pt)")
    group.add_argument("--sam-weights", metavar="SAM.pth",
                       help="official SAM ViT-B weights (sam_vit_b_01ec64.pth); not needed for a self-contained checkpoint")
    group.add_argument("--preset", choices=tuple(PRESETS),
                       help="build a fresh model of this preset instead of loading a checkpoint (for trials)")
    group.add_argument("--num-classes", type=positive_int, default=1,
                       help="classes besides background, for --preset (default 1: tumor)")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
