"""Scores and training loss of two-prompt (normal, abnormal) methods, defined once.

AnomalyCLIP, CoOp and CoCoOp (and any method of the AnomalyCLIP family) compare a global image
embedding and per-layer patch tokens with a normal and an abnormal text embedding
(METHODS.md section 0):

- image score = ``P_abn`` of the global embedding; image loss = cross-entropy of
  ``[s_n, s_a] / T``;
- per layer, a 2-channel probability map upsampled bilinearly to the input size; the pixel map
  is the weighted sum of the abnormal channels, Gaussian-smoothed;
- segmentation loss = ``segmentation_weight`` x the weighted sum over layers of
  :func:`zsbench.losses.segmentation_loss` (AnomalyCLIP's ``lam``).

A layer weight counts how often a layer's map enters the sums (AnomalyCLIP's aliasing quirk
counts layer 24 four times). Text is ``[2, D]`` shared or ``[B, 2, D]`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zsbench.anomaly_maps import (
    ANOMALYCLIP_TEMPERATURE,
    gaussian_smooth,
    l2_normalize,
    patch_probability_map,
)
from zsbench.losses import segmentation_loss


def image_logits(global_embedding: Tensor, text: Tensor,
                 temperature: float = ANOMALYCLIP_TEMPERATURE) -> Tensor:
    """Cosine similarities over ``temperature``: ``[B, 2]`` from ``[B, D]`` and ``[2, D]`` or
    ``[B, 2, D]`` text."""
    image = l2_normalize(global_embedding.float())
    text = l2_normalize(text.float())
    cosine = image @ text.t() if text.dim() == 2 else torch.einsum("bd,bcd->bc", image, text)
    return cosine / temperature


def layer_probability_maps(patch_tokens: Sequence[Tensor], text: Tensor, grid: tuple[int, int],
                           size: int, temperature: float = ANOMALYCLIP_TEMPERATURE
                           ) -> list[Tensor]:
    """One ``[B, 2, size, size]`` (normal, abnormal) probability map per ``[B, N, D]`` tokens."""
    return [patch_probability_map(tokens, text, grid, size, temperature)
            for tokens in patch_tokens]


def input_probability_maps(backbone: Any, images: Tensor, patch_tokens: Sequence[Tensor],
                           text: Tensor, temperature: float = ANOMALYCLIP_TEMPERATURE
                           ) -> list[Tensor]:
    """:func:`layer_probability_maps` of a batch of ``images``: on their patch grid
    (``backbone.patch_grid``), upsampled to their side."""
    return layer_probability_maps(patch_tokens, text, backbone.patch_grid(images),
                                  images.shape[-1], temperature)


def pixel_anomaly_map(prob_maps: Sequence[Tensor], weights: Sequence[float], sigma: float
                      ) -> Tensor:
    """``gaussian_smooth(sum_l w_l * M_l[:, 1], sigma)``: the pixel map ``[B, S, S]``."""
    if not prob_maps or len(prob_maps) != len(weights):
        raise ValueError(f"need one weight per map, got {len(prob_maps)} maps and "
                         f"{len(weights)} weights")
    summed = sum(weight * prob[:, 1] for prob, weight in zip(prob_maps, weights, strict=True))
    return gaussian_smooth(summed, sigma)


def prompt_training_loss(logits: Tensor, labels: Tensor, prob_maps: Sequence[Tensor],
                         weights: Sequence[float], mask: Tensor, segmentation_weight: float = 1.0
                         ) -> tuple[Tensor, dict[str, float]]:
    """``CE(logits, labels) + lam * sum_l w_l * segmentation_loss(M_l, mask)`` and its two parts
    (the "segmentation" part includes ``lam`` = ``segmentation_weight``, as upstream's logged
    ``loss = lam * loss``)."""
    if len(prob_maps) != len(weights):
        raise ValueError(f"need one weight per map, got {len(prob_maps)} maps and "
                         f"{len(weights)} weights")
    image_loss = F.cross_entropy(logits, labels.long().to(logits.device))
    mask = mask.to(logits.device)
    seg_loss = segmentation_weight * sum(weight * segmentation_loss(prob, mask)
                                         for prob, weight in zip(prob_maps, weights, strict=True))
    total = image_loss + seg_loss
    return total, {"image_ce": float(image_loss.detach()), "segmentation": float(seg_loss.detach())}
