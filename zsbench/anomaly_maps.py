"""Shared map math: text-patch similarity -> anomaly probabilities, upsampling, smoothing.

Every method builds its maps from these functions so that conventions (temperature, upsampling
mode, the Gaussian filter) are defined once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Softmax temperature of the AnomalyCLIP family (METHODS.md section 0), not CLIP's logit scale.
ANOMALYCLIP_TEMPERATURE = 0.07
#: CLIP's learned logit scale, used by the WinCLIP/APRIL-GAN lineage (softmax(100 x cos)).
CLIP_LOGIT_SCALE = 100.0


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def text_probabilities(features: Tensor, text: Tensor, temperature: float = ANOMALYCLIP_TEMPERATURE
                       ) -> Tensor:
    """Softmax over text classes of cosine similarities divided by ``temperature``.

    ``features``: [B, D] or [B, N, D]; ``text``: [C, D] shared, or [B, C, D] per image.
    Returns [B, C] or [B, N, C]. Class 0 is "normal", the last class "anomalous" by convention."""
    f = l2_normalize(features.float())
    t = l2_normalize(text.float())
    if t.dim() == 2:
        logits = f @ t.t()
    elif f.dim() == 2:
        logits = torch.einsum("bd,bcd->bc", f, t)
    else:
        logits = torch.einsum("bnd,bcd->bnc", f, t)
    return (logits / temperature).softmax(dim=-1)


def tokens_to_grid(values: Tensor, grid: tuple[int, int]) -> Tensor:
    """[B, N] or [B, N, C] patch values -> [B, h, w] or [B, C, h, w] (row-major patches)."""
    h, w = grid
    if values.dim() == 2:
        return values.reshape(values.shape[0], h, w)
    return values.reshape(values.shape[0], h, w, values.shape[-1]).permute(0, 3, 1, 2)


def upsample(maps: Tensor, size: int | tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear upsampling (no antialias) of [B, h, w] or [B, C, h, w].

    ``align_corners=False`` (the default, the AnomalyCLIP family) maps pixel areas onto each
    other; ``True`` (e.g. AnoVL's ``vl_test.py``) puts the corner patch centres on the corner
    pixels, as ``F.interpolate(..., align_corners=True)``."""
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    size = (size, size) if isinstance(size, int) else size
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=align_corners)
    return x.squeeze(1) if squeeze else x


def patch_probability_map(patch_tokens: Tensor, text: Tensor, grid: tuple[int, int],
                          size: int, temperature: float = ANOMALYCLIP_TEMPERATURE) -> Tensor:
    """Both class probabilities per pixel: [B, C, size, size] from [B, N, D] patch tokens."""
    probs = text_probabilities(patch_tokens, text, temperature)  # [B, N, C]
    return upsample(tokens_to_grid(probs, grid), size)


@lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius rule
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _symmetric_indices(n: int, radius: int) -> np.ndarray:
    # scipy's mode="reflect" is half-sample symmetric: (d c b a | a b c d | d c b a)
    return np.pad(np.arange(n), radius, mode="symmetric")


def gaussian_smooth(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian filter of [B, H, W] maps, equal to ``scipy.ndimage.gaussian_filter``
    (mode "reflect", the given truncate) applied per map; runs on any device."""
    if sigma <= 0:
        return maps
    kernel = _gaussian_kernel(float(sigma), float(truncate))
    radius = (len(kernel) - 1) // 2
    k = torch.as_tensor(kernel, dtype=torch.float32, device=maps.device)
    x = maps.float()
    b, h, w = x.shape
    rows = torch.as_tensor(_symmetric_indices(h, radius), device=maps.device)
    cols = torch.as_tensor(_symmetric_indices(w, radius), device=maps.device)
    # filter along H then W, each as a 1-D convolution over the padded axis
    x = x[:, rows, :].permute(0, 2, 1).reshape(b * w, 1, h + 2 * radius)
    x = F.conv1d(x, k.view(1, 1, -1)).reshape(b, w, h).permute(0, 2, 1)
    x = x[:, :, cols].reshape(b * h, 1, w + 2 * radius)
    x = F.conv1d(x, k.view(1, 1, -1)).reshape(b, h, w)
    return x


def harmonic_mean(x: Tensor, dim: int, eps: float = 1e-12) -> Tensor:
    """Harmonic mean along ``dim`` (WinCLIP's aggregation of window and scale scores)."""
    n = x.shape[dim]
    return n / (1.0 / x.clamp_min(eps)).sum(dim=dim)
