"""SamLung: frozen SAM ViT encoder + Mona adapters + PSP/CBAM head, and its runtime switches."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .attention import ATTENTION_MODES
from .config import TUNE_MODES, SamLungConfig
from .encoder import SamImageEncoder
from .head import PSPHead

if TYPE_CHECKING:
    from .checkpoint import SamWeightsReport


class SamLung(nn.Module):
    """Segmentation model: normalized (B, 3, H, W) -> logits (B, num_classes + 1, H, W).

    H and W must be multiples of 16 (256..1024 are the sizes it is meant for). What trains
    follows ``config.tune`` (:meth:`set_tune`): by default the adapters and the head, with the SAM
    encoder weights frozen.
    """

    def __init__(self, config: SamLungConfig) -> None:
        super().__init__()
        if not isinstance(config, SamLungConfig):
            raise TypeError(f"SamLung needs a SamLungConfig, got {type(config).__name__}")
        self.config = config
        self.image_encoder = SamImageEncoder(config)
        self.head = PSPHead(config.out_chans, config.num_classes + 1, config.head_bins, config.head_channels,
                            config.head_dropout, config.cbam_reduction, config.cbam_kernel)
        self._freeze(config.tune or "mona")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_encoder(x), (x.shape[2], x.shape[3]))

    def trainable_modules(self) -> list[tuple[str, nn.Module]]:
        """(state-dict prefix, module) of the parts beside the SAM encoder: every adapter, then the head."""
        adapters = [(f"image_encoder.{name}.", m) for name, m in self.image_encoder.adapters()]
        return [*adapters, ("head.", self.head)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that train under ``config.tune`` (what the optimizer gets)."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters + head state (including buffers such as BatchNorm statistics), full key names."""
        return {prefix + k: v for prefix, m in self.trainable_modules() for k, v in m.state_dict().items()}

    def set_tune(self, mode: str) -> SamLung:
        """Train ``mode``'s parts from now on and record it in the config: ``"mona"`` the adapters
        and the head, ``"full"`` the whole network (its encoder then no longer the SAM file's),
        ``"head"`` the head alone."""
        if mode not in TUNE_MODES:
            raise ValueError(f"tune must be one of {', '.join(TUNE_MODES)}, got {mode!r}")
        encoder = "trained" if mode == "full" else self.config.encoder_weights
        self.config = dataclasses.replace(self.config, tune=mode, encoder_weights=encoder)
        self._freeze(mode)
        return self

    def _freeze(self, mode: str) -> None:
        self.requires_grad_(mode == "full")
        self.head.requires_grad_(True)
        if mode == "mona":
            for _, adapter in self.image_encoder.adapters():
                adapter.requires_grad_(True)

    def load_sam_weights(self, source: str | os.PathLike | dict[str, Any],
                         strict: bool = True) -> SamWeightsReport:
        """Load official SAM encoder weights (a full SAM file or an encoder-only state dict).

        See :func:`napari_samlung.model.checkpoint.load_sam_weights`.
        """
        from .checkpoint import load_sam_weights  # checkpoint.py builds SamLung: import here, not at the top

        report = load_sam_weights(self, source, strict=strict)
        self.config = dataclasses.replace(self.config, encoder_weights="sam")
        return report

    def set_attention(self, mode: str) -> SamLung:
        """How attention is computed (see ``attention.py``).

        ``"fast"``: relative positions folded into fused SDPA kernels; ``"reference"``: the plain
        math; ``"flex"``: FlexAttention in the global blocks (the windowed ones stay ``"fast"``),
        for compiled inference on a GPU.
        """
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        for block in self.image_encoder.blocks:
            block.attn.mode = "fast" if mode == "flex" and block.window_size else mode
        return self

    def set_block_checkpointing(self, enabled: bool) -> SamLung:
        """Recompute each encoder block's activations in backward instead of storing them."""
        for block in self.image_encoder.blocks:
            block.checkpointing = bool(enabled)
        return self

    def compile_blocks(self, **compile_kwargs: Any) -> SamLung:
        """Regional ``torch.compile`` of the encoder blocks (kwargs go to ``torch.compile``).

        The blocks share one code path, so the windowed and the global blocks each compile once
        and the others reuse that code; block checkpointing is traced inside the compiled region.
        """
        for block in self.image_encoder.blocks:
            block.compile(**compile_kwargs)
        return self
