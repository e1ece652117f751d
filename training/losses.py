"""The training loss: 0.5 soft Dice + 0.5 cross-entropy, pixels labelled IGNORE left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_samlung.labels import IGNORE

#: Cross-entropy class weights of a binary model (background, tumor), as in the research code.
BINARY_CLASS_WEIGHTS = (1.0, 1.5)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes (background included) of the soft Dice over the whole batch.

    ``logits`` (B, C, H, W), ``target`` (B, H, W) integer classes; ignored pixels count for
    neither the probabilities nor the one-hot target. ``eps`` smooths empty classes.
    """
    probs = logits.float().softmax(1)
    valid = target != ignore_index
    one_hot = F.one_hot(torch.where(valid, target, 0).long(), logits.shape[1]).permute(0, 3, 1, 2)
    valid = valid.unsqueeze(1)
    probs = probs * valid
    one_hot = one_hot * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    sizes = probs.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2.0 * intersection + eps) / (sizes + eps)).mean()


class SegmentationLoss(nn.Module):
    """``dice_weight`` x soft Dice + ``ce_weight`` x weighted cross-entropy (default 0.5 each).

    A binary model (``num_classes`` 1) weights tumor 1.5 against background 1.0.
    """

    def __init__(
        self, num_classes: int, dice_weight: float = 0.5, ce_weight: float = 0.5, ignore_index: int = IGNORE
    ) -> None:
        super().__init__()
        weights = torch.tensor(BINARY_CLASS_WEIGHTS) if num_classes == 1 else torch.ones(num_classes + 1)
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice_weight, self.ce_weight, self.ignore_index = dice_weight, ce_weight, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        valid = target != self.ignore_index
        # Weighted mean over the valid pixels, written out so a batch with none gives 0, not NaN.
        ce_sum = F.cross_entropy(
            logits.float(), target, weight=self.class_weights, ignore_index=self.ignore_index, reduction="sum"
        )
        weight_sum = (self.class_weights[torch.where(valid, target, 0)] * valid).sum()
        ce = ce_sum / weight_sum.clamp_min(1e-12)
        dice = soft_dice_loss(logits, target, self.ignore_index)
        return self.ce_weight * ce + self.dice_weight * dice
