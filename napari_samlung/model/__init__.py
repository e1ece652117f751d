"""SAM-Lung in pure torch: SAM ViT encoder with Mona adapters, PSP/CBAM head, checkpoints.

No napari or Qt imports here: the model runs headless (CLIs, DDP workers).
"""

from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .config import SamLungConfig
from .normalize import normalize
from .samlung import SamLung

__all__ = [
    "CheckpointError",
    "SamLung",
    "SamLungConfig",
    "load_checkpoint",
    "normalize",
    "read_checkpoint",
    "save_checkpoint",
]
