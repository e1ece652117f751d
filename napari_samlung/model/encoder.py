"""SAM ViT image encoder with Mona adapters, under the official SAM parameter names.

``patch_embed.proj``, ``pos_embed``, ``blocks.N.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,
attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}`` and ``neck.0..3`` match ``sam_vit_b_01ec64.pth``
(under its ``image_encoder.`` prefix); the adapters are ``blocks.N.adapter_attn`` and
``blocks.N.adapter_mlp``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .adapters import MonaAdapter
from .attention import RelPosAttention, window_partition, window_unpartition
from .config import SamLungConfig

ADAPTER_NAMES = ("adapter_attn", "adapter_mlp")


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MLP(nn.Module):
    """Transformer feed-forward: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (SAM's neck norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (windowed or global attention) with a Mona adapter after the
    attention residual and one after the MLP residual."""

    def __init__(self, config: SamLungConfig, window_size: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size = window_size
        self.checkpointing = False
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, config.num_heads, window_size or config.grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))
        self.adapter_attn = MonaAdapter(dim, config.adapter_dim, config.adapter_dropout)
        self.adapter_mlp = MonaAdapter(dim, config.adapter_dim, config.adapter_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size:
            h, w = y.shape[1:3]
            y = window_unpartition(self.attn(window_partition(y, self.window_size)), self.window_size, h, w)
        else:
            y = self.attn(y)
        x = self.adapter_attn(x + y)
        return self.adapter_mlp(x + self.mlp(self.norm2(x)))


class SamImageEncoder(nn.Module):
    """(B, 3, H, W) normalized images -> (B, out_chans, H/16, W/16) features, adapters included.

    Any H, W that are multiples of the patch size work: the absolute position embedding is
    resized (bicubic) and the global blocks' relative-position tables interpolated.
    """

    def __init__(self, config: SamLungConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        grid = config.grid_size
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))
        self.blocks = nn.ModuleList(
            EncoderBlock(config, 0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.embed_dim, config.out_chans, 1, bias=False),
            ChannelLayerNorm(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False),
            ChannelLayerNorm(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image encoder: expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
            raise ValueError(f"image encoder: height and width must be multiples of {self.patch_size}, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The absolute position embedding for an h x w token grid, (1, h, w, C)."""
        pos = self.pos_embed
        if pos.shape[1:3] == (h, w):
            return pos
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False,
                            antialias=True)
        return pos.permute(0, 2, 3, 1)

    def adapters(self) -> list[tuple[str, MonaAdapter]]:
        """(name, module) of every adapter, names relative to this encoder."""
        return [(f"blocks.{i}.{name}", getattr(block, name))
                for i, block in enumerate(self.blocks) for name in ADAPTER_NAMES]

    def sam_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's own (SAM) weights in the official layout, without the adapters."""
        return {k: v for k, v in self.state_dict().items() if not is_adapter_key(k)}


def is_adapter_key(key: str) -> bool:
    """Whether an encoder state-dict key belongs to an adapter rather than to SAM."""
    return any(f".{name}." in key for name in ADAPTER_NAMES)
