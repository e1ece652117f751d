"""Multi-head self-attention with SAM's decomposed relative-position bias, two ways.

``reference``: the plain math, an explicit (N x N) attention matrix plus the bias, softmax.
``fast``: the bias folded into augmented queries and keys so ``scaled_dot_product_attention``
can pick a fused kernel (flash / memory-efficient) with no bias tensor:

    q' = [q * scale, rel_h(q), rel_w(q)],  k' = [k, onehot(row), onehot(col)],  v' = [v, 0]

since q'.k'_j = scale * q.k_j + rel_h(q)[row(j)] + rel_w(q)[col(j)]. Widths are padded with
zeros to a multiple of 8, which the fused kernels want.
``flex``: FlexAttention adds the bias inside the kernel as a score modification, so the head
width stays 64; folding a 64 x 64 global grid widens it to 192, three times the attention FLOPs.
Fast only under ``torch.compile`` (which generates the fused kernel); eager it is the plain math.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES = ("fast", "reference", "flex")


def relative_position_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, head_dim) embeddings of the offsets ``i - j`` along one axis.

    ``table`` holds one row per offset (2 * trained_size - 1 rows); it is linearly interpolated
    when the token grid differs from the one it was trained for, as SAM does.
    """
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    positions = torch.arange(size, device=table.device)
    return table[positions[:, None] - positions[None, :] + (size - 1)]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nh * nw, window, window, C), zero-padding H and W up to whole windows."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.view(b, nh, window, nw, window, c).transpose(2, 3)
    return x.reshape(b * nh * nw, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nh * nw, window, window, C) -> (B, height, width, C)."""
    nh, nw = -(-height // window), -(-width // window)
    c = windows.shape[-1]
    x = windows.view(-1, nh, nw, window, window, c).transpose(2, 3).reshape(-1, nh * window, nw * window, c)
    return x[:, :height, :width]  # a strided view when padded: the residual add that follows copies anyway


class RelPosAttention(nn.Module):
    """SAM's attention over a (B, H, W, C) token grid with decomposed relative positions.

    Parameter names (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``) match the official SAM
    checkpoint. ``input_size`` is the grid the relative-position tables are trained for (the
    window, or the whole grid at ``img_size`` for global blocks).
    """

    def __init__(self, dim: int, num_heads: int, input_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size - 1, self.head_dim))
        self.mode = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # rel_h[..., y, x, k] = q(y, x) . R_h[y - k], rel_w[..., y, x, k] = q(y, x) . R_w[x - k]:
        # (B, heads, h, w, h) and (B, heads, h, w, w), the bias of query (y, x) towards key row / column k.
        grid_q = q.reshape(b, self.num_heads, h, w, self.head_dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, relative_position_table(self.rel_pos_h, h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, relative_position_table(self.rel_pos_w, w))
        attend = {"fast": self._folded, "reference": self._reference, "flex": self._flex}[self.mode]
        out = attend(q, k, v, rel_h.reshape(b, self.num_heads, n, h), rel_w.reshape(b, self.num_heads, n, w))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def _reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        b, heads, n, _ = rel_h.shape
        # key index = row * w + col
        bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, n, n)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias
        return attn.softmax(dim=-1) @ v

    def _folded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        b, heads, n, d = q.shape
        h, w = rel_h.shape[-1], rel_w.shape[-1]
        pad = -(d + h + w) % 8
        width = d + h + w + pad
        # Key-side one-hots of each token's row and column, plus the zero padding: (N, h + w + pad).
        rows = torch.arange(n, device=q.device) // w
        cols = torch.arange(n, device=q.device) % w
        slots = torch.arange(h + w + pad, device=q.device)
        key_extra = ((slots == rows[:, None]) | (slots == h + cols[:, None])).to(k.dtype)
        zeros = q.new_zeros(()).expand(b, heads, n, pad)
        q_aug = torch.cat([q * self.scale, rel_h.to(q.dtype), rel_w.to(q.dtype), zeros], dim=-1)
        k_aug = torch.cat([k, key_extra.expand(b, heads, n, h + w + pad)], dim=-1)
        v_aug = F.pad(v, (0, width - d))
        out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0)
        return out[..., :d]

    def _flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        if q.requires_grad:  # an inference path: training keeps the folded kernels
            return self._folded(q, k, v, rel_h, rel_w)
        from torch.nn.attention.flex_attention import flex_attention  # torch >= 2.5

        w = rel_w.shape[-1]
        rel_h, rel_w = rel_h.to(q.dtype), rel_w.to(q.dtype)
        # Compiled, the tables must reach the kernel as graph inputs: inductor's CPU template refuses
        # score-mod buffers computed in the same graph. Eager, this does nothing.
        torch._dynamo.graph_break()

        def add_relative_positions(score, b, head, query, key):
            return score + rel_h[b, head, query, key // w] + rel_w[b, head, query, key % w]

        return flex_attention(q, k, v, score_mod=add_relative_positions, scale=self.scale)
