"""AnomalyCLIP: object-agnostic prompt learning (Zhou et al., ICLR 2024), METHODS.md sections 0-1.

Two learnable prompts, "[12 ctx] object." and "[12 other ctx] damaged object.", with deep text
prompts; image features from the V-V attention path (DPAM) from layer 6. Trained on the test
split of an auxiliary dataset with image cross-entropy and a focal + Dice segmentation loss.
Upstream quirks are config flags; the presets "upstream" (HEAD: layer 24 only, ``lam`` 4) and
"upstream-original" (the release behind the published numbers: four aliased copies of layer 24)
set them as each version does. Released checkpoints import with
:meth:`AnomalyCLIP.convert_upstream_checkpoint` (``zsbench import-checkpoint``).
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
class AnomalyCLIPConfig(MethodConfig):
    n_ctx: int = option(12, "learnable context vectors per prompt (upstream n_ctx 12)")
    deep_prompt_depth: int = option(
        9, "deep text prompts act before text blocks 2..depth (upstream depth 9: 8 prompts)")
    deep_prompt_length: int = option(4, "tokens per deep text prompt (upstream t_n_ctx 4)")
    vv_from: int = option(6, "first vision block of the V-V attention path (DPAM)")
    feature_layers: tuple[int, ...] = option(
        (6, 12, 18, 24), "vision layers whose patch tokens give maps (the paper's 6, 12, 18, 24)")
    alias_layers_to_last: bool = option(
        True, "upstream quirk: an in-place aliasing bug in AnomalyCLIP's V-V path (original "
        "release; fixed upstream 2025-04-13 by cloning the layer outputs) made every feature layer "
        "equal the last one, so the published numbers and released checkpoints use the last "
        "layer's map and loss counted once per feature layer (4 x layer 24 in the map and in the "
        "segmentation loss); false = each listed layer once (upstream HEAD)")
    lam: float = option(
        1.0, "segmentation-loss weight: training loss = image CE + lam x the sum over the listed "
        "feature layers of focal + 2 Dice (upstream HEAD train.py: lam = 4 with --features_list "
        "24; the original release has no lam, i.e. 1). Default 1: with alias_layers_to_last (the "
        "default) the sum already counts layer 24 four times, the published 4 x layer-24 loss; "
        "lam 4 on top would train 16 x. Not used at test time (upstream test.py sums the layer "
        "maps unweighted)")
    global_ln_post: bool = option(
        False, "apply ln_post to the global CLS before proj as open_clip does; upstream "
        "AnomalyCLIP does not (false; its issue #14 says the effect is small)")
    deep_prompt_fp16_cast: bool = option(
        False, "upstream quirk: round the deep text prompts through fp16, cast after their "
        "per-prompt expansion as upstream (AnomalyCLIP_lib/AnomalyCLIP.py: .expand(...)"
        ".permute(1, 0, 2).half()), so gradients are rounded per prompt too; true reproduces "
        "upstream exactly")
    temperature: float = option(0.07, "softmax temperature T of P_abn (fixed, not CLIP's 100)")
    sigma: float = option(4.0, "Gaussian smoothing sigma of the pixel map (upstream 4)")


# -- prompts ---------------------------------------------------------------------------------------

NORMAL_TEMPLATE = "object."
ABNORMAL_TEMPLATE = "damaged object."


# -- method ----------------------------------------------------------------------------------------

@register_method
class AnomalyCLIP(AnomalyMethod):
    """AnomalyCLIP on the shared backbone; only the prompt learner is trained."""

    config_class = AnomalyCLIPConfig
    # Both upstream versions train 4 x the layer-24 segmentation loss and rank pixels the same;
    # the original release's maps are 4 x HEAD's (4 aliased copies of layer 24 summed).
    presets = {
        # zqhang/AnomalyCLIP HEAD (since 2025-04-13, commit 45ed4dd): train.sh/test.sh
        "upstream": {
            "feature_layers": (24,),  # train.sh/test.sh: --features_list 24
            "alias_layers_to_last": False,  # AnomalyCLIP_lib/AnomalyCLIP.py: out_tokens .clone()
            "lam": 4.0,  # train.py: lam = 4; loss = lam * loss
            "deep_prompt_fp16_cast": True,
            "pos_embed_interpolation": "bilinear",  # AnomalyCLIP_lib/AnomalyCLIP.py
            "input_interpolation": "bicubic",  # utils.py get_transform: BICUBIC
        },
        # zqhang/AnomalyCLIP original release (2024-03-19, commit 2b70f77): published numbers
        # and released checkpoints
        "upstream-original": {
            "feature_layers": (6, 12, 18, 24),  # train.sh/test.sh: --features_list 6 12 18 24
            "alias_layers_to_last": True,  # AnomalyCLIP_lib/AnomalyCLIP.py: out_tokens.append(x)
            "lam": 1.0,  # train.py: loss = the plain sum over the listed layers
            "deep_prompt_fp16_cast": True,
            "pos_embed_interpolation": "bilinear",  # AnomalyCLIP_lib/AnomalyCLIP.py
            "input_interpolation": "bicubic",  # utils.py get_transform: BICUBIC
        },
    }
    info = MethodInfo(
        name="anomalyclip", title="AnomalyCLIP",
        paper="Zhou et al., AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly "
              "Detection, ICLR 2024",
        trainable=True, transductive=False, code="https://github.com/zqhang/AnomalyCLIP",
        license="MIT", class_aware=False)

    def __init__(self, config: AnomalyCLIPConfig, backbone: torch.nn.Module):
        super().__init__(config, backbone)
        self.feature_layers = backbone.check_layers(config.feature_layers, "feature_layers")
        self.prompt_learner = PromptLearner(
            backbone, [NORMAL_TEMPLATE, ABNORMAL_TEMPLATE], n_ctx=config.n_ctx,
            deep_prompt_depth=config.deep_prompt_depth,
            deep_prompt_length=config.deep_prompt_length,
            deep_prompt_fp16_cast=config.deep_prompt_fp16_cast)

    @classmethod
    def describe_prompts(cls, config: AnomalyCLIPConfig) -> dict[str, Any]:
        context = " ".join([PLACEHOLDER_WORD] * config.n_ctx)
        return {
            "normal": f"{context} {NORMAL_TEMPLATE}",
            "abnormal": f"{context} {ABNORMAL_TEMPLATE}",
            "context": f"each {PLACEHOLDER_WORD} is a learnable vector; the two prompts have "
                       f"their own {config.n_ctx}",
            "deep_prompts": f"{max(config.deep_prompt_depth - 1, 0)} x "
                            f"{config.deep_prompt_length} learnable tokens replacing positions "
                            f"1..{config.deep_prompt_length} before text blocks "
                            f"2..{config.deep_prompt_depth}, shared by both prompts",
        }

    # -- forward: features ---------------------------------------------------------------------
    def text_embeddings(self) -> Tensor:
        """``[2, D]`` unnormalised (normal, abnormal) text embeddings."""
        return self.prompt_learner()

    def layer_weights(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The layers read from the backbone and how often each enters the sums (the map's and,
        times ``lam``, the segmentation loss's)."""
        if self.config.alias_layers_to_last:
            return (self.backbone.vision_layers,), (float(len(self.feature_layers)),)
        return self.feature_layers, (1.0,) * len(self.feature_layers)

    def image_features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Global embedding ``[B, D]`` (original path) and V-V patch tokens per used layer."""
        layers, _ = self.layer_weights()
        features = self.backbone.encode_image(images, layers=layers, vv_from=self.config.vv_from,
                                              global_ln_post=self.config.global_ln_post)
        return features.global_embedding, [features.patch_tokens[layer] for layer in layers]

    # -- scores ---------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        text = self.text_embeddings()
        global_embedding, patch_tokens = self.image_features(images)
        image_scores = text_probabilities(global_embedding, text, self.config.temperature)[:, 1]
        _, weights = self.layer_weights()
        maps = input_probability_maps(self.backbone, images, patch_tokens, text,
                                      self.config.temperature)
        return Prediction(image_scores, pixel_anomaly_map(maps, weights, self.config.sigma))

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"]
        with torch.no_grad():  # the backbone is frozen: no gradient flows into the image side
            global_embedding, patch_tokens = self.image_features(images)
        text = self.text_embeddings()
        _, weights = self.layer_weights()
        maps = input_probability_maps(self.backbone, images, patch_tokens, text,
                                      self.config.temperature)
        return prompt_training_loss(image_logits(global_embedding, text, self.config.temperature),
                                    batch["label"], maps, weights, batch["mask"],
                                    segmentation_weight=self.config.lam)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt_learner.parameters())}]

    # -- released checkpoints -------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``{"prompt_learner": state}`` to this method's trainable state.

        ``ctx_pos`` / ``ctx_neg`` ``[1, 1, n_ctx, W]`` become ``prompt_learner.ctx`` ``[2, n_ctx,
        W]`` (normal first) and ``compound_prompts_text.{i}`` become
        ``prompt_learner.deep_prompts.{i}``; the unused ``compound_prompt_projections.*`` and
        the token buffers are ignored. Shapes are checked against the backbone on loading."""
        state = obj.get("prompt_learner", obj) if isinstance(obj, Mapping) else None
        if not isinstance(state, Mapping):
            raise ValueError(f"an AnomalyCLIP checkpoint is a dict {{'prompt_learner': state}}, "
                             f"got {type(obj).__name__}")
        ignored_prefixes = ("compound_prompt_projections.", "token_prefix", "token_suffix",
                            "tokenized_prompts")
        used = {k: v for k, v in state.items() if not k.startswith(ignored_prefixes)}
        missing = [k for k in ("ctx_pos", "ctx_neg") if k not in used]
        deep = {k: v for k, v in used.items() if k.startswith("compound_prompts_text.")}
        unknown = sorted(set(used) - set(deep) - {"ctx_pos", "ctx_neg"})
        if missing or unknown:
            raise ValueError(f"not an AnomalyCLIP prompt-learner state: missing {missing}, "
                             f"unexpected {unknown}")
        ctx_pos, ctx_neg = (torch.as_tensor(used[k]).float() for k in ("ctx_pos", "ctx_neg"))
        if ctx_pos.shape != ctx_neg.shape or ctx_pos.dim() < 2:
            raise ValueError(f"ctx_pos {tuple(ctx_pos.shape)} and ctx_neg "
                             f"{tuple(ctx_neg.shape)} must have the same shape [..., n_ctx, W]")
        converted = {"prompt_learner.ctx": torch.stack(
            [ctx_pos.reshape(-1, ctx_pos.shape[-1]), ctx_neg.reshape(-1, ctx_neg.shape[-1])])}
        indices = sorted(int(k.rsplit(".", 1)[1]) for k in deep)
        if indices != list(range(len(indices))):
            raise ValueError(f"compound_prompts_text indices {indices} are not "
                             f"0..{len(indices) - 1}")
        for index in indices:
            converted[f"prompt_learner.deep_prompts.{index}"] = torch.as_tensor(
                deep[f"compound_prompts_text.{index}"]).float()
        return converted
