"""CLIP zero-shot baseline: two class-aware prompts, global and patch scores (METHODS.md §4).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021. Papers that list "CLIP" as a zero-shot anomaly baseline released no code, so zsbench
pins its own version:

- **Prompts**: ``"a photo of a normal {}."`` and ``"a photo of an anomalous {}."`` with ``{}`` the
  image's class name (``class_names`` of :meth:`predict`; the dataset's prompt word).
- **Image score**: ``P_abn = softmax(100 * [cos(g, t_n), cos(g, t_a)])[1]`` of the global image
  embedding g (open_clip's ``encode_image``: ``ln_post(CLS) @ proj``). 100 is CLIP's learned logit
  scale (``CLIP_LOGIT_SCALE``), not the AnomalyCLIP family's T = 0.07.
- **Map**: the same probability for every patch token of the last vision block, projected like the
  CLS token (``ln_post(token) @ proj``), bilinearly upsampled from the patch grid to the input
  size (align_corners=False) and smoothed with a Gaussian (sigma 4 by default, as the AnomalyCLIP
  family). Raw CLIP patch tokens are poorly aligned with text, which is what this baseline shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from zsbench.anomaly_maps import (
    CLIP_LOGIT_SCALE,
    gaussian_smooth,
    l2_normalize,
    patch_probability_map,
    text_probabilities,
)
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import ClassTextCache, encode_prompts
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

NORMAL_PROMPT = "a photo of a normal {}."
ANOMALOUS_PROMPT = "a photo of an anomalous {}."


@dataclass
class ClipConfig(MethodConfig):
    """CLIP baseline options."""

    map_layer: int | None = option(None, "vision block whose patch tokens give the map "
                                         "(1-indexed); none = the last block")
    logit_scale: float = option(CLIP_LOGIT_SCALE, "multiplier of the cosine similarities before "
                                                  "the softmax (CLIP's learned scale is 100)")
    sigma: float = option(4.0, "Gaussian sigma of the pixel map in pixels; 0 disables")


class PatchTextScorer(AnomalyMethod):
    """Shared scoring of zero-shot baselines that compare the global embedding and the patch
    tokens of one layer with a fixed ``[2, D]`` text matrix per class (CLIP and CLIP-AC).

    Subclasses implement :meth:`encode_class_text`."""

    config_class = ClipConfig

    def __init__(self, config: ClipConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        layer = backbone.check_layer(config.map_layer, "map_layer")
        if config.logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {config.logit_scale}")
        self.require_non_negative("sigma")
        self.map_layer = layer
        self.text_cache = ClassTextCache(self.encode_class_text)

    def encode_class_text(self, class_name: str) -> Tensor:
        """``[2, D]`` unit text embeddings (normal, anomalous) of one class."""
        raise NotImplementedError

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        features = self.backbone.encode_image(images, layers=(self.map_layer,))
        text = self.text_cache(class_names).to(features.global_embedding.device)
        temperature = 1.0 / self.config.logit_scale
        image_scores = text_probabilities(features.global_embedding, text, temperature)[:, 1]
        maps = patch_probability_map(features.patch_tokens[self.map_layer], text,
                                     self.backbone.grid_size, images.shape[-1], temperature)
        return Prediction(image_scores, gaussian_smooth(maps[:, 1], self.config.sigma))


@register_method
class ClipBaseline(PatchTextScorer):
    """CLIP with one normal and one anomalous class-aware prompt."""

    info = MethodInfo(
        name="clip",
        title="CLIP (zero-shot baseline)",
        paper="Radford et al., Learning Transferable Visual Models From Natural Language "
              "Supervision, ICML 2021",
        trainable=False,
        code="https://github.com/mlfoundations/open_clip",
        license="MIT (open_clip)",
        class_aware=True,
    )

    @classmethod
    def describe_prompts(cls, config: MethodConfig) -> dict[str, Any]:
        return {"normal": NORMAL_PROMPT, "anomalous": ANOMALOUS_PROMPT,
                "class_name": "{} is the image's class name (the dataset's prompt word)"}

    def encode_class_text(self, class_name: str) -> Tensor:
        prompts = [NORMAL_PROMPT.format(class_name), ANOMALOUS_PROMPT.format(class_name)]
        return l2_normalize(encode_prompts(self.backbone, prompts))
