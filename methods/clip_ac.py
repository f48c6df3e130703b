"""CLIP-AC: CLIP with the ImageNet template ensemble, a WinCLIP-paper baseline (METHODS.md §4).

Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023,
define CLIP-AC as CLIP with the two classes "normal [o]" and "anomalous [o]" put into CLIP's
ImageNet prompt templates. zsbench implements:

- **Prompts**: the states ``"normal {}"`` / ``"anomalous {}"`` (``{}`` = the image's class name)
  inside each of the 80 CLIP ImageNet templates (``CLIP_IMAGENET_TEMPLATES``); each prompt
  embedding is L2-normalised, the 80 are averaged per class and the mean is renormalised.
- **Scores**: as the CLIP baseline (:mod:`zsbench.methods.clip`): ``softmax(100 * cos)`` of the
  global embedding for the image score; the same for the last block's projected patch tokens,
  upsampled and Gaussian-smoothed, for the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from zsbench.method import MethodConfig, MethodInfo
from zsbench.methods.clip import ClipConfig, PatchTextScorer
from zsbench.prompt_ensembles import CLIP_AC, encode_ensemble
from zsbench.registry import register_method


@dataclass
class ClipAcConfig(ClipConfig):
    """CLIP-AC options (the CLIP baseline's: map layer, logit scale, sigma)."""


@register_method
class ClipAc(PatchTextScorer):
    """CLIP with "normal/anomalous [o]" states in the CLIP ImageNet template ensemble."""

    config_class = ClipAcConfig
    info = MethodInfo(
        name="clip_ac",
        title="CLIP-AC (ImageNet template ensemble)",
        paper="Jeong et al., WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation, "
              "CVPR 2023 (baseline CLIP-AC)",
        trainable=False,
        code="https://github.com/mlfoundations/open_clip",
        license="MIT (open_clip)",
        class_aware=True,
    )

    @classmethod
    def describe_prompts(cls, config: MethodConfig) -> dict[str, Any]:
        return {**CLIP_AC.describe(),
                "averaging": "each prompt embedding normalised, averaged per state, renormalised"}

    def encode_class_text(self, class_name: str) -> Tensor:
        return encode_ensemble(self.backbone, CLIP_AC, class_name, averaging="normalized")
