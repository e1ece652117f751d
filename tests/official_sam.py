"""The official segment_anything modules, for comparisons in tests.

The ``segment_anything`` package imports torchvision in its ``__init__``; the modeling code does
not need it, so where torchvision is not importable empty stand-in modules are registered first.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import partial

import torch
from torch import nn

from napari_samlung.model import SamLungConfig


def _stub_torchvision() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.ops", "torchvision.ops.boxes"):
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    # names segment_anything imports from them (never called by the modeling code)
    sys.modules["torchvision.transforms.functional"].resize = None
    sys.modules["torchvision.transforms.functional"].to_pil_image = None
    sys.modules["torchvision.ops.boxes"].batched_nms = None
    sys.modules["torchvision.ops.boxes"].box_area = None


_stub_torchvision()
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def official_encoder(config: SamLungConfig) -> ImageEncoderViT:
    """segment_anything's encoder with the dims of ``config``."""
    return ImageEncoderViT(
        img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
        depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        out_chans=config.out_chans, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=config.window_size,
        global_attn_indexes=config.global_attn_indexes,
    )


def official_sam(config: SamLungConfig, prompt_dim: int = 32) -> Sam:
    """A whole segment_anything ``Sam`` (encoder, prompt and mask decoder) around ``config``'s encoder."""
    grid = config.grid_size
    return Sam(
        image_encoder=official_encoder(config),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(config.img_size, config.img_size), mask_in_chans=8),
        mask_decoder=MaskDecoder(transformer_dim=prompt_dim, num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64,
                                                               num_heads=2),
                                 iou_head_depth=2, iou_head_hidden_dim=32),
    )


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``|got - want| / |want|`` (Frobenius norms over all elements)."""
    return ((got - want).norm() / want.norm()).item()


def randomize_positions_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random relative-position tables and position embedding (SAM initializes both at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return module
