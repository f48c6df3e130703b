"""CoOp for zero-shot anomaly detection (Zhou et al., IJCV 2022), zsbench's own pinned version.

CoOp learns a context placed before the class words; here the "classes" are the two states,
"[ctx] normal {cls}." and "[ctx] anomalous {cls}.", with the image's category word as {cls}
(class-aware). The ZSAD papers that report CoOp released no code for it, so this version is
ours (METHODS.md section 4): trained like AnomalyCLIP on the test split of an auxiliary dataset
with image cross-entropy + the focal/Dice segmentation loss on patch maps; plain CLIP features
(no V-V path, ``ln_post`` on the global embedding), maps from last-layer patch tokens,
T = 0.07, Gaussian sigma 4.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zsbench.anomaly_maps import text_probabilities
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_learner import PLACEHOLDER_WORD, PromptLearner
from zsbench.prompt_scoring import (
    image_logits,
    input_probability_maps,
    pixel_anomaly_map,
    prompt_training_loss,
)
from zsbench.registry import register_method

logger = logging.getLogger(__name__)


# -- config ----------------------------------------------------------------------------------------

@dataclass
class CoOpConfig(MethodConfig):
    n_ctx: int = option(8, "learnable context vectors before the state words (zsbench's pin)")
    shared_context: bool = option(
        True, "one context for both states, as CoOp's unified context shared by all classes; "
        "false gives the normal and anomalous prompts their own")
    feature_layers: tuple[int, ...] = option(
        (24,), "vision layers whose patch tokens give maps (the last layer of ViT-L/14)")
    temperature: float = option(0.07, "softmax temperature T of P_abn")
    sigma: float = option(4.0, "Gaussian smoothing sigma of the pixel map")


# -- prompts ---------------------------------------------------------------------------------------

NORMAL_TEMPLATE = "normal {}."
ANOMALOUS_TEMPLATE = "anomalous {}."


# -- method ----------------------------------------------------------------------------------------

@register_method
class CoOp(AnomalyMethod):
    """CoOp: a learnable context before "normal {cls}." / "anomalous {cls}."."""

    config_class = CoOpConfig
    info = MethodInfo(
        name="coop", title="CoOp",
        paper="Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022 "
              "(ZSAD version pinned by zsbench)",
        trainable=True, transductive=False, code="https://github.com/KaiyangZhou/CoOp",
        license="MIT", class_aware=True)

    def __init__(self, config: CoOpConfig, backbone: torch.nn.Module):
        super().__init__(config, backbone)
        self.feature_layers = backbone.check_layers(config.feature_layers, "feature_layers")
        self.prompt_learner = PromptLearner(
            backbone, [NORMAL_TEMPLATE, ANOMALOUS_TEMPLATE], n_ctx=config.n_ctx,
            shared_ctx=config.shared_context, deep_prompt_depth=0)

    @classmethod
    def describe_prompts(cls, config: CoOpConfig) -> dict[str, Any]:
        context = " ".join([PLACEHOLDER_WORD] * config.n_ctx)
        sharing = "shared by both prompts" if config.shared_context else "one set per prompt"
        return {"normal": f"{context} {NORMAL_TEMPLATE}",
                "anomalous": f"{context} {ANOMALOUS_TEMPLATE}",
                "context": f"each {PLACEHOLDER_WORD} is a learnable vector ({sharing}); {{}} is "
                           f"the image's category word"}

    # -- forward: features ---------------------------------------------------------------------
    def image_features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Plain CLIP: global embedding ``[B, D]`` and patch tokens of each feature layer."""
        features = self.backbone.encode_image(images, layers=self.feature_layers)
        return features.global_embedding, [features.patch_tokens[layer]
                                           for layer in self.feature_layers]

    def text_embeddings(self, class_names: Sequence[str], global_embedding: Tensor) -> Tensor:
        """``[B, 2, D]`` (normal, anomalous) text embeddings of each image's class."""
        unique = list(dict.fromkeys(class_names))
        per_class = self.prompt_learner(unique)  # [C, 2, D]
        index = torch.tensor([unique.index(name) for name in class_names],
                             device=per_class.device)
        return per_class[index]

    # -- scores ---------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        global_embedding, patch_tokens = self.image_features(images)
        text = self.text_embeddings(class_names, global_embedding)
        image_scores = text_probabilities(global_embedding, text, self.config.temperature)[:, 1]
        maps = input_probability_maps(self.backbone, images, patch_tokens, text,
                                      self.config.temperature)
        anomaly_maps = pixel_anomaly_map(maps, [1.0] * len(maps), self.config.sigma)
        return Prediction(image_scores, anomaly_maps)

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"]
        names = self.check_batch(images, batch["class_name"])
        with torch.no_grad():  # the backbone is frozen: no gradient flows into the image side
            global_embedding, patch_tokens = self.image_features(images)
        text = self.text_embeddings(names, global_embedding)
        maps = input_probability_maps(self.backbone, images, patch_tokens, text,
                                      self.config.temperature)
        return prompt_training_loss(image_logits(global_embedding, text, self.config.temperature),
                                    batch["label"], maps, [1.0] * len(maps), batch["mask"])

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt_learner.parameters())}]
