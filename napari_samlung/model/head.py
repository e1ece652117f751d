"""Pyramid pooling (PSPNet) segmentation head with CBAM attention in every pyramid branch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CBAM(nn.Module):
    """Convolutional block attention: channel attention (shared MLP over avg- and max-pooled
    descriptors), then spatial attention (a k x k convolution over channel mean and max)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptors = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)])
        avg, mx = self.channel_mlp(descriptors).chunk(2)
        x = x * torch.sigmoid(avg + mx)
        summary = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(summary))


def _group_count(channels: int) -> int:
    """GroupNorm groups with at least 4 channels each (at most 8 groups), so a 1x1 map still has spread."""
    for groups in (8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class PyramidBranch(nn.Module):
    """CBAM on the full feature map, average-pool to ``bins x bins``, 1x1 conv, GroupNorm, ReLU.

    CBAM runs before pooling: after pooling to 1x1 its spatial attention would see one pixel.
    GroupNorm instead of BatchNorm so the branch trains at batch size 1.
    """

    def __init__(self, in_channels: int, out_channels: int, bins: int, reduction: int,
                 kernel_size: int) -> None:
        super().__init__()
        self.attention = CBAM(in_channels, reduction, kernel_size)
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(_group_count(out_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm(self.conv(self.pool(self.attention(x)))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class PSPHead(nn.Module):
    """Features (B, C, h, w) -> logits (B, num_outputs, H, W) at the requested output size."""

    def __init__(self, in_channels: int, num_outputs: int, bins: Sequence[int] = (1, 2, 3, 6),
                 channels: int = 64, dropout: float = 0.1, cbam_reduction: int = 16,
                 cbam_kernel: int = 5) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            PyramidBranch(in_channels, channels, b, cbam_reduction, cbam_kernel) for b in bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + channels * len(bins), channels, 1, bias=False),
            nn.BatchNorm2d(channels),  # over the full feature map: fine at batch 1; SyncBatchNorm under DDP
            nn.ReLU(),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_outputs, 1)

    def forward(self, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        pyramid = torch.cat([features, *(branch(features) for branch in self.branches)], dim=1)
        logits = self.classifier(self.dropout(self.bottleneck(pyramid)))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
