"""Training losses of the AnomalyCLIP family (METHODS.md section 0), defined once.

The focal loss works on probabilities (not logits), as the upstream code does, with the one-hot
target clamped to [smooth, 1 - smooth] and ``pt + smooth`` inside the log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def focal_loss(probs: Tensor, target: Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> Tensor:
    """Multi-class focal loss on a probability map.

    ``probs``: [B, C, H, W] (or [B, C]) class probabilities; ``target``: [B, H, W] (or [B]) class
    indices (a float 0/1 mask is accepted). Mean over all pixels."""
    num_classes = probs.shape[1]
    p = probs.movedim(1, -1).reshape(-1, num_classes)
    t = target.reshape(-1).long()
    one_hot = F.one_hot(t, num_classes).to(p.dtype)
    one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(probs: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss per image: ``1 - mean_i (2 sum(p t) + s) / (sum p + sum t + s)``.

    ``probs`` and ``target``: [B, H, W] (any trailing shape)."""
    p = probs.reshape(probs.shape[0], -1)
    t = target.reshape(target.shape[0], -1).to(p.dtype)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.mean()


def segmentation_loss(prob_map: Tensor, mask: Tensor) -> Tensor:
    """``Focal(M, g) + Dice(M_abn, g) + Dice(M_norm, 1 - g)`` for a 2-channel map
    ``prob_map`` [B, 2, H, W] (normal, abnormal) and a 0/1 mask [B, H, W]."""
    g = mask.float()
    return (focal_loss(prob_map, g) + dice_loss(prob_map[:, 1], g)
            + dice_loss(prob_map[:, 0], 1.0 - g))


def image_cross_entropy(probs_or_logits: Tensor, labels: Tensor, are_logits: bool = True) -> Tensor:
    """Cross-entropy of image-level two-class scores against 0/1 labels."""
    if are_logits:
        return F.cross_entropy(probs_or_logits, labels.long())
    return F.nll_loss(torch.log(probs_or_logits.clamp_min(1e-12)), labels.long())


def binary_focal_loss(inputs: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25,
                      inputs_are_logits: bool = True) -> Tensor:
    """Binary focal loss (RetinaNet form) of scores against 0/1 targets, mean over items.

    With ``inputs_are_logits=True`` a sigmoid is applied first; passing a probability with
    ``inputs_are_logits=True`` reproduces FAPrompt's upstream quirk (METHODS.md section 2)."""
    targets = targets.float()
    if inputs_are_logits:
        p = torch.sigmoid(inputs)
        ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    else:
        p = inputs.clamp(1e-6, 1 - 1e-6)
        ce = F.binary_cross_entropy(p, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean()
