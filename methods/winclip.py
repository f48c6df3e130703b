"""WinCLIP: compositional prompt ensemble and multi-scale window scores (METHODS.md §4).

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023.
No official code; two public lineages disagree and both are implemented (``prompt_lineage``).

**Prompts.** A compositional prompt ensemble (:mod:`zsbench.prompt_ensembles`): every state word
inside every template, averaged per side (normal / anomalous) and L2-normalised.

**Windows.** Windows of k x k patches (k in ``window_sizes``, default 2 and 3; stride 1) are
re-encoded by the vision transformer on CLS + their own patch tokens only
(``Backbone.encode_windows``, chunked), giving one embedding per window. A grid of h x w patches
has (h - k + 1)(w - k + 1) windows of size k. The per-patch score of a scale is the harmonic mean
of the scores of the windows that cover the patch (:func:`harmonic_window_aggregation`).

**Lineages** (``prompt_lineage``):

- ``"anomalib"`` (default): anomalib's ``WinClipModel`` (also ``zqhang/Accurate-WinCLIP-pytorch``,
  the WinCLIP numbers of the AnomalyCLIP paper): the paper's lists, 7 normal / 4 anomalous states
  x 21 templates, the *unnormalised* prompt embeddings averaged; ``P_abn`` with T = 0.07;
  map = harmonic mean over [image score (every patch), scale-2 map, scale-3 map] of ``P_abn``.
- ``"april_gan"``: the APRIL-GAN ensemble (7 normal / 5 anomalous states incl. "broken {}" x 35
  templates, each prompt normalised before averaging) with caoyunkang/WinClip's scoring: softmax
  with logit scale 100; per scale the harmonic mean of the windows' *normality* ``P_norm``, then
  map = 1 - harmonic mean of those over the window scales (no image scale, as
  ``WinCLIP/model.py: calculate_textual_anomaly_score``).

The default is anomalib because it follows the lists of the WinCLIP paper's appendix and the
published reimplementation whose numbers other papers quote (AnomalyCLIP's WinCLIP rows); the
other lineage is what APRIL-GAN-derived code calls WinCLIP.

**Image score.** ``P_abn`` of the global embedding (both lineages); ``image_score_adds_map_max``
adds the maximum of the patch-resolution map (WinCLIP+'s fusion of the two; off by default, as in
zero-shot WinCLIP). **Map** upsampled bilinearly to the input size; no smoothing by default
(neither anomalib nor caoyunkang/WinClip smooth WinCLIP maps).

Upstream backbone: ViT-B-16-plus-240 at 240 px, ``laion400m_e31`` (anomalib) or ``laion400m_e32``
(caoyunkang/WinClip); the config's ``backbone`` / ``pretrained`` decide.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    ANOMALYCLIP_TEMPERATURE,
    CLIP_LOGIT_SCALE,
    gaussian_smooth,
    harmonic_mean,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.backbone.backbone import DEFAULT_WINDOW_CHUNK_TOKENS
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import (
    WINCLIP_ANOMALIB,
    WINCLIP_APRIL_GAN,
    ClassTextCache,
    PromptEnsemble,
    encode_ensemble,
)
from zsbench.registry import register_method

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WinClipLineage:
    """Everything that differs between the two public WinCLIP implementations."""

    ensemble: PromptEnsemble
    averaging: str  # "raw" or "normalized" (see encode_ensemble)
    temperature: float  # softmax temperature of cosine similarities
    aggregates_normality: bool  # 1 - HM(P_norm) instead of HM(P_abn)
    includes_image_scale: bool  # the image score is one of the harmonic-mean scales
    source: str


LINEAGES = {
    "anomalib": WinClipLineage(WINCLIP_ANOMALIB, "raw", ANOMALYCLIP_TEMPERATURE,
                               aggregates_normality=False, includes_image_scale=True,
                               source="anomalib src/anomalib/models/image/winclip"),
    "april_gan": WinClipLineage(WINCLIP_APRIL_GAN, "normalized", 1.0 / CLIP_LOGIT_SCALE,
                                aggregates_normality=True, includes_image_scale=False,
                                source="ByChelsea/VAND-APRIL-GAN prompt_ensemble.py + "
                                       "caoyunkang/WinClip WinCLIP/model.py"),
}


@dataclass
class WinClipConfig(MethodConfig):
    """WinCLIP options; see the module docstring for the two lineages."""

    backbone: str = option("ViT-B-16-plus-240", "open_clip model name (WinCLIP upstream: "
                                                "ViT-B-16-plus-240)")
    pretrained: str | None = option("laion400m_e31", "open_clip tag or weights file (anomalib: "
                                                     "laion400m_e31; caoyunkang: laion400m_e32)")
    image_size: int = option(240, "input side in pixels (upstream 240)")
    prompt_lineage: str = option("anomalib", "anomalib (paper lists, T=0.07, HM of P_abn incl. "
                                             "the image scale) or april_gan (APRIL-GAN ensemble, "
                                             "scale 100, 1 - HM of P_norm)")
    window_sizes: tuple[int, ...] = option((2, 3), "window sides in patches (stride 1)")
    image_score_adds_map_max: bool = option(
        False, "add the maximum of the patch-level map to the global image score (WinCLIP+ "
               "fusion; zero-shot WinCLIP uses the global score only)")
    window_chunk_tokens: int = option(DEFAULT_WINDOW_CHUNK_TOKENS,
                                      "tokens per chunk when re-encoding windows")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (upstream: none)")


def window_indices(grid: tuple[int, int], window: int, stride: int = 1) -> Tensor:
    """Row-major patch indices ``[W, window * window]`` of all windows on a ``grid`` (h, w)."""
    height, width = grid
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    if window > min(height, width):
        raise ValueError(f"window of {window} patches does not fit the {height}x{width} grid")
    index = torch.arange(height * width).reshape(height, width)
    windows = index.unfold(0, window, stride).unfold(1, window, stride)
    return windows.reshape(-1, window * window)


def harmonic_window_aggregation(window_scores: Tensor, windows: Tensor, n_patches: int,
                                eps: float = 1e-12) -> Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it.

    ``window_scores`` [B, W], ``windows`` [W, m] patch indices -> [B, n_patches]. Every patch
    must be covered by at least one window."""
    if window_scores.shape[-1] != windows.shape[0]:
        raise ValueError(f"{window_scores.shape[-1]} window scores for {windows.shape[0]} windows")
    flat = windows.reshape(-1).to(window_scores.device)
    counts = torch.bincount(flat, minlength=n_patches).to(window_scores.dtype)
    if bool((counts == 0).any()):
        raise ValueError("some patches are covered by no window")
    reciprocal = 1.0 / window_scores.clamp_min(eps)
    sums = reciprocal.new_zeros(window_scores.shape[0], n_patches)
    sums.index_add_(1, flat, reciprocal.repeat_interleave(windows.shape[1], dim=1))
    return counts / sums


@register_method
class WinClip(AnomalyMethod):
    """Zero-shot WinCLIP: compositional prompts, window embeddings, harmonic aggregation."""

    config_class = WinClipConfig
    info = MethodInfo(
        name="winclip",
        title="WinCLIP",
        paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, "
              "CVPR 2023",
        trainable=False,
        code="https://github.com/openvinotoolkit/anomalib (reimplementation; no official code)",
        license="Apache-2.0 (anomalib)",
        class_aware=True,
    )

    def __init__(self, config: WinClipConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        if config.prompt_lineage not in LINEAGES:
            raise ValueError(f"prompt_lineage {config.prompt_lineage!r} is not one of "
                             f"{', '.join(LINEAGES)}")
        if not config.window_sizes:
            raise ValueError("window_sizes is empty; give at least one window side")
        if config.window_chunk_tokens < 1:
            raise ValueError(f"window_chunk_tokens must be >= 1, got {config.window_chunk_tokens}")
        self.require_non_negative("sigma")
        self.lineage = LINEAGES[config.prompt_lineage]
        grid = tuple(backbone.grid_size)
        self.n_patches = grid[0] * grid[1]
        self.windows: dict[int, Tensor] = {}
        for size in config.window_sizes:
            try:
                self.windows[size] = window_indices(grid, size)
            except ValueError as err:
                raise ValueError(f"window_sizes contains {size}: {err} "
                                 f"(image_size={backbone.image_size})") from err
        self.text_cache = ClassTextCache(self.encode_class_text)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: WinClipConfig) -> dict[str, Any]:
        lineage = LINEAGES.get(config.prompt_lineage)
        if lineage is None:
            raise ValueError(f"prompt_lineage {config.prompt_lineage!r} is not one of "
                             f"{', '.join(LINEAGES)}")
        return {"lineage": config.prompt_lineage, "source": lineage.source,
                **lineage.ensemble.describe(), "averaging": lineage.averaging}

    def encode_class_text(self, class_name: str) -> Tensor:
        return encode_ensemble(self.backbone, self.lineage.ensemble, class_name,
                               averaging=self.lineage.averaging)

    # -- forward and scores ----------------------------------------------------------------------
    def window_probabilities(self, images: Tensor, text: Tensor) -> dict[int, Tensor]:
        """Per window size, ``[B, W, 2]`` (normal, anomalous) probabilities of every window."""
        return {size: text_probabilities(
                    self.backbone.encode_windows(images, windows,
                                                 self.config.window_chunk_tokens),
                    text, self.lineage.temperature)
                for size, windows in self.windows.items()}

    def patch_scores(self, image_probs: Tensor, window_probs: dict[int, Tensor]) -> Tensor:
        """``[B, N]`` patch anomaly scores from the image and window probabilities."""
        column = 0 if self.lineage.aggregates_normality else 1
        scales = [harmonic_window_aggregation(window_probs[size][..., column], windows,
                                              self.n_patches)
                  for size, windows in self.windows.items()]
        if self.lineage.includes_image_scale:
            scales.insert(0, image_probs[:, column:column + 1].expand(-1, self.n_patches))
        combined = harmonic_mean(torch.stack(scales, dim=0), dim=0)
        return 1.0 - combined if self.lineage.aggregates_normality else combined

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        if tuple(images.shape[-2:]) != (self.backbone.image_size,) * 2:
            raise ValueError(f"WinCLIP's windows were built for image_size="
                             f"{self.backbone.image_size}; got images of "
                             f"{tuple(images.shape[-2:])}")
        global_embedding = self.backbone.encode_image(images).global_embedding
        text = self.text_cache(class_names).to(global_embedding.device)
        image_probs = text_probabilities(global_embedding, text, self.lineage.temperature)
        patch_scores = self.patch_scores(image_probs, self.window_probabilities(images, text))
        image_scores = image_probs[:, 1]
        if self.config.image_score_adds_map_max:
            image_scores = image_scores + patch_scores.amax(dim=1)
        maps = upsample(tokens_to_grid(patch_scores, self.backbone.grid_size), images.shape[-1])
        return Prediction(image_scores, gaussian_smooth(maps, self.config.sigma))
