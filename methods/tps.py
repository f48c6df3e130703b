"""TPS: text prompt shunt for zero-shot anomaly detection (METHODS.md §3).

Ma et al., "TPS: Aligning and Prompting Anything for Zero-Shot Generalized Anomaly Detection",
AAAI 2025; reference code ``majitao-xd/TPS``
(``train.py``, ``test.py``, ``prompt_ensemble.py``, ``AnomalyCLIP_lib/pathway.py``).

- **Vision**: plain CLIP (no V-V path); patch tokens ``ln_post(x) @ proj`` of layers 6, 12, 18,
  24; the global embedding is the final CLS ``@ proj`` without ``ln_post``, as upstream
  (``AnomalyCLIP_lib/AnomalyCLIP.py``: ``x_ori[0, :, :] @ self.proj``).
- **Prompts**: two learners, 12 ctx per prompt and their own deep prompts (depth 9, 4 tokens):
  global "object with all parts flawless." / "object with damaged parts." for the image score,
  shunt "the flawless part." / "the damaged part." for the maps.
- **Pathway**: a small transformer block, shared over layers, that lets the shunt embeddings
  attend to the layer's patch tokens and to the global embeddings; its output is the per-image
  text used for that layer's map.
- **Scores**: image score = ``P_abn`` of the global embedding with the global prompts; pixel
  map = sum over layers of ``P_abn`` maps, Gaussian sigma 4.

Upstream details with nothing to implement: the ``StepLR(7, 0.1)`` scheduler of ``train.py`` is
never stepped (a no-op); the pathway also registers ``visual.proj``, which gets no gradient
(image features are computed under ``no_grad``), so it never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    ANOMALYCLIP_TEMPERATURE,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.losses import image_cross_entropy, segmentation_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.methods.anomalyclip import AnomalyCLIP
from zsbench.prompt_learner import PLACEHOLDER_WORD, PromptLearner
from zsbench.prompt_scoring import pixel_anomaly_map
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

GLOBAL_TEMPLATES = ("object with all parts flawless.", "object with damaged parts.")
SHUNT_TEMPLATES = ("the flawless part.", "the damaged part.")
# Upstream checkpoint: {"prompt_learner": global prompts, "class_learner": shunt prompts,
# "former": pathway.py's PathWay}. Its learners map to ours by name; its pathway modules map to
# Pathway's as below; its image branch is unused at test time (img_projection never changes).
UPSTREAM_LEARNERS = {"prompt_learner": "global_prompts", "class_learner": "shunt_prompts"}
UPSTREAM_PATHWAY_PARAMETERS = {
    **{f"ln_{i}.{p}": f"pathway.ln_{i}.{p}" for i in range(5) for p in ("weight", "bias")},
    **{f"{upstream}.{p}": f"pathway.{ours}.{p}"
       for upstream, ours in (("text_attention", "patch_attention"),
                              ("cross_attention", "global_text_attention"))
       for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")},
    **{f"text_feed.{i}.{p}": f"pathway.feed_forward.{i}.{p}" for i in (0, 2)
       for p in ("weight", "bias")},
    "text_projection": "text_projection",
}
UPSTREAM_PATHWAY_IGNORED = ("img_projection", "img_attention.", "ln_5.", "img_feed.")


@dataclass
class TPSConfig(MethodConfig):
    """TPS options; defaults follow ``majitao-xd/TPS`` except where a quirk flag says."""

    layers: tuple[int, ...] = option((6, 12, 18, 24), "vision blocks whose patch tokens give "
                                                      "maps (train.py: --features_list)")
    n_ctx: int = option(12, "ctx vectors per prompt in both learners (train.py: --n_ctx 12)")
    deep_prompt_depth: int = option(9, "deep text prompts act before text blocks 2..depth "
                                       "(train.py: --depth 9)")
    deep_prompt_length: int = option(4, "positions replaced by each deep prompt "
                                        "(train.py: --t_n_ctx 4)")
    global_ln_post: bool = option(False, "apply ln_post to the global CLS token (upstream "
                                         "AnomalyCLIP_lib/AnomalyCLIP.py does not)")
    pathway_heads: int = option(8, "attention heads of the pathway (pathway.py: 8); must divide "
                                   "the backbone's embed_dim")
    pathway_lr: float = option(1e-4, "learning rate of the pathway (train.py: 'lr': 1e-4); "
                                     "prompts use the trainer's rate (1e-3 upstream)")
    temperature: float = option(ANOMALYCLIP_TEMPERATURE, "softmax temperature of cosine "
                                                         "similarities")
    sigma: float = option(4.0, "Gaussian sigma of the pixel map in pixels")
    drop_pathway_at_test: bool = option(
        False, "upstream quirk: at test time the pathway output is discarded and the raw shunt "
               "embeddings give the maps (test.py: class_feature = patch_classes / norm)")
    train_text_projection: bool = option(
        False, "upstream quirk: CLIP's text_projection is registered in the pathway and "
               "fine-tuned at the pathway's rate (pathway.py: self.text_projection); a trainable "
               "copy used by this method's text encoding, saved with the checkpoint")
    deep_prompt_fp16_cast: bool = option(
        False, "upstream quirk: deep prompts rounded through fp16 (AnomalyCLIP_lib .half())")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, CLIP's GELU approximation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Pathway(nn.Module):
    """The shunt pathway: shunt text attends to patches, then to the global text, then an FFN.

    ``c = LN0(shunt)``, ``t = LN1(global)``, ``p = LN4(patches)``;
    ``c = c + MHA(c, p, p)``; ``c = LN2(c)``; ``c = c + MHA(c, t, c)``; ``c = c + FFN(LN3(c))``.
    Layer-norm names follow upstream ``pathway.py``; its ``text_attention``, ``cross_attention``
    and ``text_feed`` are ``patch_attention``, ``global_text_attention`` and ``feed_forward`` here
    (its unused image branch is left out)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"pathway_heads={heads} must be a positive divisor of the pathway "
                             f"width {width} (the backbone's embed_dim)")
        self.ln_0 = nn.LayerNorm(width)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.ln_3 = nn.LayerNorm(width)
        self.ln_4 = nn.LayerNorm(width)
        self.patch_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.global_text_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(),
                                          nn.Linear(4 * width, width))

    def forward(self, shunt_text: Tensor, global_text: Tensor, patches: Tensor) -> Tensor:
        """``shunt_text``, ``global_text``: [B, 2, D]; ``patches``: [B, N, D] -> [B, 2, D]."""
        c = self.ln_0(shunt_text)
        t = self.ln_1(global_text)
        p = self.ln_4(patches)
        c = c + self.patch_attention(c, p, p, need_weights=False)[0]
        c = self.ln_2(c)
        c = c + self.global_text_attention(c, t, c, need_weights=False)[0]
        return c + self.feed_forward(self.ln_3(c))


@register_method
class TPS(AnomalyMethod):
    """Global prompts for the image score, shunt prompts refined per layer by a pathway."""

    config_class = TPSConfig
    presets = {
        # majitao-xd/TPS (commit 20e01ca): train.py/test.py as released
        "upstream": {
            "drop_pathway_at_test": True,
            "train_text_projection": True,
            "deep_prompt_fp16_cast": True,
            "pos_embed_interpolation": "bilinear",  # AnomalyCLIP_lib/AnomalyCLIP.py
            "input_interpolation": "bicubic",  # utils.py get_transform: BICUBIC
        },
    }
    info = MethodInfo(
        name="tps",
        title="TPS (text prompt shunt)",
        paper="Ma et al., TPS: Aligning and Prompting Anything for Zero-Shot Generalized Anomaly "
              "Detection, AAAI 2025",
        trainable=True,
        code="https://github.com/majitao-xd/TPS",
        license="MIT",
        class_aware=False,
    )

    def __init__(self, config: TPSConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self.layers = backbone.check_layers(config.layers, "layers")
        learner_options = {"n_ctx": config.n_ctx, "deep_prompt_depth": config.deep_prompt_depth,
                           "deep_prompt_length": config.deep_prompt_length,
                           "deep_prompt_fp16_cast": config.deep_prompt_fp16_cast}
        self.global_prompts = PromptLearner(backbone, list(GLOBAL_TEMPLATES), **learner_options)
        self.shunt_prompts = PromptLearner(backbone, list(SHUNT_TEMPLATES), **learner_options)
        self.pathway = Pathway(backbone.embed_dim, config.pathway_heads).to(backbone.device)
        self.text_projection: nn.Parameter | None = None
        if config.train_text_projection:
            tower = getattr(backbone.model, "text", backbone.model)
            frozen = tower._parameters.get("text_projection")
            if frozen is None:
                raise ValueError(f"train_text_projection needs a text tower with a "
                                 f"text_projection matrix; backbone {backbone.name!r} has none")
            self.text_projection = nn.Parameter(frozen.detach().clone())

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: TPSConfig) -> dict[str, Any]:
        ctx = " ".join([PLACEHOLDER_WORD] * config.n_ctx)
        return {
            "global": {"normal": f"{ctx} {GLOBAL_TEMPLATES[0]}",
                       "abnormal": f"{ctx} {GLOBAL_TEMPLATES[1]}"},
            "shunt": {"normal": f"{ctx} {SHUNT_TEMPLATES[0]}",
                      "abnormal": f"{ctx} {SHUNT_TEMPLATES[1]}"},
            "context": f"each {PLACEHOLDER_WORD} is a learned vector, separate per prompt",
            "deep_prompts": f"{config.deep_prompt_depth - 1} x {config.deep_prompt_length} "
                            f"learned tokens before text blocks 2..{config.deep_prompt_depth}, "
                            f"one set per learner",
        }

    def text_embeddings(self) -> tuple[Tensor, Tensor]:
        """Unnormalised global and shunt embeddings, ``[2, D]`` each (normal, abnormal)."""
        projection = self.text_projection
        return (self.global_prompts(text_projection=projection),
                self.shunt_prompts(text_projection=projection))

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Global embedding [B, D] and patch tokens {layer: [B, N, D]} (frozen backbone)."""
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=self.layers,
                                                  global_ln_post=self.config.global_ln_post)
        return features.global_embedding, features.patch_tokens

    def layer_probability_maps(self, patch_tokens: dict[int, Tensor], global_text: Tensor,
                               shunt_text: Tensor, grid: tuple[int, int], size: int,
                               use_pathway: bool) -> list[Tensor]:
        """Per layer ``[B, 2, size, size]`` maps of the patches against the pathway output
        (``use_pathway``) or against the raw shunt embeddings."""
        maps = []
        for layer in self.layers:
            patches = patch_tokens[layer]
            if use_pathway:
                batch = patches.shape[0]
                text = self.pathway(shunt_text.expand(batch, -1, -1),
                                    global_text.expand(batch, -1, -1), patches)
            else:
                text = shunt_text
            probs = text_probabilities(patches, text, self.config.temperature)
            maps.append(upsample(tokens_to_grid(probs, grid), size))
        return maps

    # -- scores ----------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        global_embedding, patch_tokens = self.encode(images)
        global_text, shunt_text = self.text_embeddings()
        image_scores = text_probabilities(global_embedding, global_text,
                                          self.config.temperature)[:, 1]
        maps = self.layer_probability_maps(patch_tokens, global_text, shunt_text,
                                           self.backbone.patch_grid(images), images.shape[-1],
                                           use_pathway=not self.config.drop_pathway_at_test)
        return Prediction(image_scores,
                          pixel_anomaly_map(maps, [1.0] * len(maps), self.config.sigma))

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images, mask, labels = batch["image"], batch["mask"].float(), batch["label"].long()
        global_embedding, patch_tokens = self.encode(images)
        global_text, shunt_text = self.text_embeddings()
        global_probs = text_probabilities(global_embedding, global_text, self.config.temperature)
        parts = {"image_ce": image_cross_entropy(global_probs, labels, are_logits=False)}
        maps = self.layer_probability_maps(patch_tokens, global_text, shunt_text,
                                           self.backbone.patch_grid(images), mask.shape[-1],
                                           use_pathway=True)
        for layer, prob_map in zip(self.layers, maps, strict=True):
            parts[f"seg_layer{layer}"] = segmentation_loss(prob_map, mask)
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        pathway = list(self.pathway.parameters())
        if self.text_projection is not None:
            pathway.append(self.text_projection)
        return [{"params": list(self.global_prompts.parameters())
                 + list(self.shunt_prompts.parameters())},
                {"params": pathway, "lr": self.config.pathway_lr}]

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``{"prompt_learner", "class_learner", "former"}`` checkpoint
        (``train.py``) to this method's trainable state:

        - ``prompt_learner`` (global prompts) and ``class_learner`` (shunt prompts), each in
          AnomalyCLIP's layout (:meth:`AnomalyCLIP.convert_upstream_checkpoint`) ->
          ``global_prompts.*`` and ``shunt_prompts.*``;
        - ``former`` (``pathway.py``): ``ln_0..ln_4`` -> ``pathway.ln_0..ln_4``,
          ``text_attention`` -> ``pathway.patch_attention``, ``cross_attention`` ->
          ``pathway.global_text_attention``, ``text_feed.{0,2}`` -> ``pathway.feed_forward.{0,2}``,
          and its trained ``text_projection`` (it replaces CLIP's at test time) ->
          ``text_projection``, so the method must be built with ``train_text_projection`` true.

        Ignored: ``img_projection`` (CLIP's visual projection, which upstream never trains),
        ``img_attention``, ``ln_5`` and ``img_feed`` (the image branch, unused at test time),
        and each learner's prompt projections and token buffers. Any other key, or a missing
        one, is a ValueError naming it; shapes are checked against the method on loading."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a TPS checkpoint is a dict with keys 'prompt_learner', "
                             f"'class_learner' and 'former', got {type(obj).__name__}")
        parts = (*UPSTREAM_LEARNERS, "former")
        missing = [k for k in parts if k not in obj]
        unknown = sorted(str(k) for k in obj if k not in parts)
        if missing or unknown:
            raise ValueError(f"not a TPS checkpoint: missing {missing}, unexpected {unknown} "
                             f"(expected keys {list(parts)})")
        converted: dict[str, Tensor] = {}
        for upstream, ours in UPSTREAM_LEARNERS.items():
            if not isinstance(obj[upstream], Mapping):
                raise ValueError(f"{upstream!r} is a {type(obj[upstream]).__name__}, not a "
                                 f"state dict")
            try:
                learner = AnomalyCLIP.convert_upstream_checkpoint({"prompt_learner":
                                                                   obj[upstream]})
            except ValueError as err:
                raise ValueError(f"{upstream!r}: {err}") from err
            prefix = "prompt_learner."
            converted.update({f"{ours}.{k[len(prefix):]}": v for k, v in learner.items()})
        former = obj["former"]
        if not isinstance(former, Mapping):
            raise ValueError(f"'former' is a {type(former).__name__}, not a state dict")
        used = {str(k): v for k, v in former.items()
                if not str(k).startswith(UPSTREAM_PATHWAY_IGNORED)}
        missing = sorted(set(UPSTREAM_PATHWAY_PARAMETERS) - set(used))
        unknown = sorted(set(used) - set(UPSTREAM_PATHWAY_PARAMETERS))
        if missing or unknown:
            raise ValueError(f"'former' is not TPS's pathway: missing "
                             f"{['former.' + k for k in missing]}, unexpected "
                             f"{['former.' + k for k in unknown]}")
        for upstream, ours in UPSTREAM_PATHWAY_PARAMETERS.items():
            value = used[upstream]
            if not isinstance(value, Tensor):
                raise ValueError(f"'former.{upstream}' is a {type(value).__name__}, not a tensor")
            converted[ours] = value.float().clone()
        return converted
