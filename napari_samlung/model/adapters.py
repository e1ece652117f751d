"""Mona adapter: a small convolutional bottleneck added to the frozen encoder's token stream."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiScaleDepthwise(nn.Module):
    """Mean of depthwise 3x3, 5x5 and 7x7 convolutions plus the identity, as ONE 7x7 convolution.

    The three kernels (smaller ones zero-padded to 7x7), averaged, with 1 added at the centre tap,
    give the same function; the merged kernel is rebuilt from the three parameters in every
    forward, so parameters and gradients are those of the three-convolution form at a third
    of the cost.
    """

    kernel_sizes = (3, 5, 7)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in self.kernel_sizes
        )

    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The equivalent 7x7 depthwise (weight, bias)."""
        size = max(self.kernel_sizes)
        padded = [F.pad(c.weight, [(size - c.kernel_size[0]) // 2] * 4) for c in self.convs]
        weight = sum(padded) / len(self.convs)
        identity = torch.zeros(size, size, dtype=weight.dtype, device=weight.device)
        identity[size // 2, size // 2] = 1.0
        bias = sum(c.bias for c in self.convs) / len(self.convs)
        return weight + identity, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.merged_kernel()
        return F.conv2d(x, weight, bias, padding=max(self.kernel_sizes) // 2, groups=x.shape[1])


class MonaAdapter(nn.Module):
    """Mona on a (B, H, W, C) token grid; returns ``x + up(dropout(gelu(mix(down(scaled_norm(x))))))``.

    ``scaled_norm(x) = LayerNorm(x) * gamma + x * gammax`` (gamma starts at 1e-6, gammax at 1);
    ``mix`` is the multi-scale depthwise convolution plus identity followed by a 1x1 projection
    plus identity. The up-projection starts at zero, so a fresh adapter is the identity.
    """

    def __init__(self, dim: int, inner_dim: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, inner_dim)
        self.depthwise = MultiScaleDepthwise(inner_dim)
        self.pointwise = nn.Conv2d(inner_dim, inner_dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(inner_dim, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(self.norm(x) * self.gamma + x * self.gammax)
        # A (B, H, W, C) tensor permuted to (B, C, H, W) is channels-last in memory: no copy.
        y = self.depthwise(y.permute(0, 3, 1, 2))
        y = y + self.pointwise(y)
        y = self.dropout(F.gelu(y.permute(0, 2, 3, 1)))
        return x + self.up(y)
