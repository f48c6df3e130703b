"""AdaCLIP: hybrid (static + dynamic) learnable prompts in both CLIP towers.

Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024 (arXiv 2407.15795); reference code ``caoyunkang/AdaCLIP``
(``method/adaclip.py``, ``method/trainer.py``, ``train.py``, ``test.py``, ``loss.py``).

- **Static prompts**: per prompted layer, ``prompt_length`` learnable tokens in each tower
  (``PromptLayer.static_prompts``, init N(0, 0.02)), for the first ``prompt_depth`` blocks.
  Vision: the tokens are appended to the sequence before block 1 and the appended tokens are
  replaced before blocks 2..depth (after that they are carried along); attention has no
  positions, so appending after the patches (zsbench's :class:`BlockHooks` layout) equals
  upstream's placement. Text: positions 1..length are replaced before blocks 2..depth, as deep
  prompts (upstream also allocates a text prompt for block 1 that it never uses).
- **Dynamic prompts**: the frozen CLIP's global embedding of the image (``ln_post(CLS) @ proj``,
  no prompts) goes through ``prompt_length`` linear heads per tower to ``[B, length, width]``
  tokens, *added* to the static tokens at every prompted layer. The text prompts thus depend on
  the image: every image encodes its own prompt set (deep text prompts ``[B*P, n, width]``).
- **Text**: a class-aware ensemble (7 normal states, 5 abnormal states, 4 templates; the
  class name fills the state); each side is the normalised mean of its unit embeddings. With
  dynamic prompts that is 48 text sequences per image; ``prompt_ensemble="minimal"`` (one
  state per side, one template) is a cheap variant for tests and the demo.
- **Vision outputs**: the residual-stream patch tokens (no ``ln_post``) of layers 6, 12, 18, 24
  each through a trained ``Linear(vision_width, embed_dim)``; the prompted global embedding
  through a trained ``Linear(embed_dim, embed_dim)``; all L2-normalised.
- **Maps**: logits ``100 cos(patch, text)`` per layer. Test: mean of the layers' logits,
  bilinear upsampling (align_corners=True), softmax, abnormal channel, Gaussian sigma 4.
  Training: per layer, upsampled logits -> softmax -> focal + Dice (abnormal vs mask, normal vs
  1 - mask).
- **Hybrid semantic fusion (HSF)**: k-means (k = 20) over the patch embeddings (mean over the
  map layers); the cluster with the highest mean anomaly probability gives a centroid, fused
  with the global embedding: ``normalize(0.2 centroid + 0.8 global)``. Image score = softmax of
  ``100 cos(fused, text)``, abnormal class; image loss = focal loss on it. This is the paper's
  HSF as the earlier implementation left commented out in ``HybridSemanticFusion.forward``
  computes it; the released code runs a variant (``hsf_mean_of_top_clusters``).

k-means runs here in torch with a deterministic farthest-point initialisation that starts at
the most anomalous patch (upstream: scikit-learn ``KMeans(n_init="auto")``, a random k-means++
start, so its scores vary from run to run); clusters are capped at the number of points.

Upstream quirks (flags, all set by the ``upstream`` preset): ``hsf_mean_of_top_clusters`` (the
"upgraded" HSF of the released code), ``prompt_fp16_cast``, and the shared backbone options
``mlp_activation="gelu"`` (the model is built from a config without ``quick_gelu``: nn.GELU on
OpenAI weights) and ``pos_embed_interpolation="bicubic"``. Upstream details outside a method:
it trains with AdamW (weight decay 0.01; zsbench's trainer uses Adam) under fp16 autocast; its
batch size 1 and 5 epochs are the ``training_defaults``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsbench.anomaly_maps import CLIP_LOGIT_SCALE, gaussian_smooth, l2_normalize, tokens_to_grid
from zsbench.anomaly_maps import upsample as upsample_maps
from zsbench.backbone.hooks import BlockHooks
from zsbench.errors import ConfigError
from zsbench.losses import focal_loss, segmentation_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import (
    APRIL_GAN_ANOMALOUS_STATES,
    APRIL_GAN_NORMAL_STATES,
    APRIL_GAN_TEMPLATES,
    PromptEnsemble,
)
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

#: adaclip.py TextEmbebddingLayer: the APRIL-GAN states with its first four templates;
#: "minimal" keeps the first state of each side in the first template (2 prompts per image
#: instead of 48: a cheap variant for tests and the demo, not the paper's)
PROMPT_ENSEMBLES = {
    "adaclip": PromptEnsemble(APRIL_GAN_NORMAL_STATES, APRIL_GAN_ANOMALOUS_STATES,
                              APRIL_GAN_TEMPLATES[:4]),
    "minimal": PromptEnsemble(APRIL_GAN_NORMAL_STATES[:1], APRIL_GAN_ANOMALOUS_STATES[:1],
                              APRIL_GAN_TEMPLATES[:1]),
}
#: HSF (adaclip.py HybridSemanticFusion): top-scoring patches kept per cluster in the
#: "upgraded" variant (n_aggregate_patch_tokens = k_clusters * 5)
HSF_PATCHES_PER_CLUSTER = 5


# -- config ----------------------------------------------------------------------------------------

@dataclass
class AdaCLIPConfig(MethodConfig):
    """AdaCLIP options; defaults follow the paper and ``caoyunkang/AdaCLIP`` (train.py/test.py)."""

    layers: tuple[int, ...] = option(
        (6, 12, 18, 24), "vision blocks whose patch tokens give maps (train.py: the quarters of "
                         "the vision depth, 6/12/18/24 for ViT-L/14)")
    prompt_depth: int = option(4, "prompted blocks per tower: vision 1..depth, text 2..depth "
                                  "(train.py: --prompting_depth 4)")
    prompt_length: int = option(5, "learnable tokens per prompted layer and tower "
                                   "(train.py: --prompting_length 5)")
    static_prompts: bool = option(True, "learn static (shared) prompts (train.py: "
                                        "--prompting_type SD, the 'S')")
    dynamic_prompts: bool = option(True, "generate dynamic (per-image) prompts from the frozen "
                                         "global embedding (--prompting_type SD, the 'D')")
    use_hsf: bool = option(True, "hybrid semantic fusion for the image score (train.py: "
                                 "--use_hsf True); false = the prompted global embedding alone")
    k_clusters: int = option(20, "k-means clusters of HSF (train.py: --k_clusters 20)")
    hsf_alpha: float = option(0.2, "weight of the HSF centroid in the fused image embedding "
                                   "(adaclip.py visual_text_similarity: alpha = 0.2)")
    kmeans_max_iterations: int = option(300, "Lloyd iterations of HSF's k-means at most (stops "
                                             "when assignments repeat; sklearn's max_iter 300)")
    logit_scale: float = option(CLIP_LOGIT_SCALE, "scale of the cosine similarities before the "
                                                  "softmax (adaclip.py: 100)")
    upsample_align_corners: bool = option(True, "bilinear upsampling of the patch logits with "
                                                "align_corners=True (adaclip.py)")
    prompt_ensemble: str = option(
        "adaclip", "text ensemble: 'adaclip' (7 normal x 4 templates, 5 abnormal x 4 templates, "
                   "adaclip.py TextEmbebddingLayer) or 'minimal' ('{}' / 'damaged {}' in 'a bad "
                   "photo of a {}.': 2 prompts per image, for tests and the demo)")
    sigma: float = option(4.0, "Gaussian sigma of the pixel map in pixels (trainer.py "
                               "evaluation: gaussian_filter sigma=4)")
    learning_rate: float | None = option(
        0.01, "learning rate of every trainable part (train.py: --learning_rate 0.01); none = "
              "the trainer's")
    hsf_mean_of_top_clusters: bool = option(
        False, "upstream quirk: HSF clusters only the k_clusters*5 most anomalous patches (their "
               "tokens of all map layers concatenated) and averages all cluster centroids, instead "
               "of the paper's most anomalous cluster of all patches (adaclip.py "
               "HybridSemanticFusion.forward; its comment calls it an 'upgraded' version)")
    prompt_fp16_cast: bool = option(
        False, "upstream quirk: prompt tokens rounded through fp16 before use (adaclip.py "
               "PromptLayer.forward_text/forward_visual: .half())")


class AdaCLIPForward(NamedTuple):
    """What one forward pass computes (prediction and loss both read it)."""

    layer_logits: list[Tensor]  # per map layer [B, N, 2], scaled cosine similarities
    image_probs: Tensor  # [B, 2] softmax of the (HSF-fused) image embedding against the text


# -- HSF -------------------------------------------------------------------------------------------

def kmeans(points: Tensor, k: int, max_iterations: int) -> Tensor:
    """Cluster labels ``[B, M]`` of ``points`` ``[B, M, F]`` (each batch item on its own).

    Deterministic: farthest-point initialisation starting at point 0, then Lloyd iterations
    until the assignments repeat (at most ``max_iterations``); an emptied cluster keeps its
    centre. ``k`` is capped at M."""
    x = points.detach().float()
    batch, count, _ = x.shape
    k = max(1, min(int(k), count))
    rows = torch.arange(batch, device=x.device)
    centers = x[:, :1]
    nearest = (x - centers).pow(2).sum(-1)
    for _ in range(1, k):
        chosen = x[rows, nearest.argmax(dim=1)].unsqueeze(1)
        centers = torch.cat([centers, chosen], dim=1)
        nearest = torch.minimum(nearest, (x - chosen).pow(2).sum(-1))
    labels = None
    for _ in range(max(1, max_iterations)):
        distances = torch.cdist(x, centers, compute_mode="donot_use_mm_for_euclid_dist")
        new_labels = distances.argmin(dim=-1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        one_hot = F.one_hot(labels, k).to(x.dtype)  # [B, M, k]
        counts = one_hot.sum(dim=1).unsqueeze(-1)  # [B, k, 1]
        sums = one_hot.transpose(1, 2) @ x
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return labels


def hsf_most_anomalous_cluster(patch_tokens: Sequence[Tensor], abnormal: Tensor, k: int,
                               max_iterations: int) -> Tensor:
    """The paper's HSF: k-means over all patch embeddings (mean over the map layers); the
    centroid of the cluster with the highest mean ``abnormal`` probability, normalised [B, D]."""
    average = torch.stack(list(patch_tokens), dim=0).mean(dim=0)  # [B, N, D]
    order = abnormal.argsort(dim=1, descending=True, stable=True)
    points = average.gather(1, order.unsqueeze(-1).expand(-1, -1, average.shape[-1]))
    scores = abnormal.gather(1, order)
    labels = kmeans(points, k, max_iterations)
    one_hot = F.one_hot(labels, int(labels.max()) + 1).to(scores.dtype)  # [B, N, k]
    counts = one_hot.sum(dim=1)
    cluster_scores = (one_hot * scores.unsqueeze(-1)).sum(dim=1) / counts.clamp_min(1)
    cluster_scores = cluster_scores.masked_fill(counts == 0, float("-inf"))
    members = (labels == cluster_scores.argmax(dim=1, keepdim=True)).to(points.dtype)
    centroid = (members.unsqueeze(-1) * points).sum(dim=1) / members.sum(1, keepdim=True)
    return l2_normalize(centroid)


def hsf_mean_of_top_clusters(patch_tokens: Sequence[Tensor], abnormal: Tensor, k: int,
                             max_iterations: int) -> Tensor:
    """Upstream's HSF: the ``5 k`` most anomalous patches, clustered on their tokens of all map
    layers concatenated; each centroid is the mean of its members' tokens over all layers; the
    result is the normalised mean of the centroids [B, D]."""
    top = abnormal.topk(min(abnormal.shape[1], HSF_PATCHES_PER_CLUSTER * k), dim=1).indices
    index = top.unsqueeze(-1).expand(-1, -1, patch_tokens[0].shape[-1])
    selected = [tokens.gather(1, index) for tokens in patch_tokens]  # each [B, m, D]
    labels = kmeans(torch.cat(selected, dim=-1), k, max_iterations)
    one_hot = F.one_hot(labels, int(labels.max()) + 1).to(selected[0].dtype)  # [B, m, k]
    counts = one_hot.sum(dim=1)  # [B, k]
    layer_mean = torch.stack(selected, dim=0).mean(dim=0)  # [B, m, D]
    centroids = (one_hot.transpose(1, 2) @ layer_mean) / counts.clamp_min(1).unsqueeze(-1)
    present = (counts > 0).to(centroids.dtype).unsqueeze(-1)
    return l2_normalize((centroids * present).sum(dim=1) / present.sum(dim=1))


# -- method ----------------------------------------------------------------------------------------

def _linear_heads(count: int, in_features: int, out_features: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(in_features, out_features) for _ in range(count))


def _prompt_list(count: int, length: int, width: int) -> nn.ParameterList:
    prompts = nn.ParameterList(nn.Parameter(torch.empty(length, width)) for _ in range(count))
    for prompt in prompts:
        nn.init.normal_(prompt, std=0.02)
    return prompts


@register_method
class AdaCLIP(AnomalyMethod):
    """Hybrid static + dynamic prompts in both towers, projected multi-layer maps, HSF."""

    config_class = AdaCLIPConfig
    # train.py: 5 epochs, batch size 1 (the per-group learning rates are config fields)
    training_defaults = {"epochs": 5, "batch_size": 1}
    presets = {
        # caoyunkang/AdaCLIP (commit e27ee32) as released
        "upstream": {
            "hsf_mean_of_top_clusters": True,
            "prompt_fp16_cast": True,
            "input_interpolation": "bicubic",  # trainer.py: Resize(BICUBIC) to a square
            # clip_model.py resize_pos_embed: bicubic without antialias
            "pos_embed_interpolation": "bicubic",
            "mlp_activation": "gelu",  # custom_clip.py create_model: no quick_gelu in the config
        },
    }
    info = MethodInfo(
        name="adaclip",
        title="AdaCLIP (hybrid learnable prompts)",
        paper="Cao et al., AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot "
              "Anomaly Detection, ECCV 2024",
        trainable=True,
        code="https://github.com/caoyunkang/AdaCLIP",
        license="MIT",
        class_aware=True,
    )

    def __init__(self, config: AdaCLIPConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self.layers = backbone.check_layers(config.layers, "layers")
        self.require_non_negative("sigma")
        depth, length = config.prompt_depth, config.prompt_length
        limit = min(backbone.vision_layers, backbone.text_layers)
        if not 1 <= depth <= limit:
            raise ConfigError(f"prompt_depth must be in 1..{limit}, got {depth}")
        if length < 1:
            raise ConfigError(f"prompt_length must be >= 1, got {length}")
        if not (config.static_prompts or config.dynamic_prompts):
            raise ConfigError("static_prompts and dynamic_prompts are both false: AdaCLIP needs "
                              "at least one kind of prompt")
        if config.k_clusters < 1:
            raise ConfigError(f"k_clusters must be >= 1, got {config.k_clusters}")
        if not 0.0 <= config.hsf_alpha <= 1.0:
            raise ConfigError(f"hsf_alpha must be in [0, 1], got {config.hsf_alpha}")
        if config.prompt_ensemble not in PROMPT_ENSEMBLES:
            raise ConfigError(f"prompt_ensemble must be one of {', '.join(PROMPT_ENSEMBLES)}, "
                              f"got {config.prompt_ensemble!r}")
        self.ensemble = PROMPT_ENSEMBLES[config.prompt_ensemble]
        if config.logit_scale <= 0:
            raise ConfigError(f"logit_scale must be > 0, got {config.logit_scale}")
        if config.learning_rate is not None and config.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0 or none, got {config.learning_rate}")
        embed, vision, text = backbone.embed_dim, backbone.vision_width, backbone.text_width
        if config.static_prompts:
            self.visual_static_prompts = _prompt_list(depth, length, vision)
            self.text_static_prompts = _prompt_list(depth - 1, length, text)
        if config.dynamic_prompts:
            self.dynamic_visual_generator = _linear_heads(length, embed, vision)
            self.dynamic_text_generator = _linear_heads(length, embed, text)
        self.patch_projections = _linear_heads(len(self.layers), vision, embed)
        self.cls_projection = nn.Linear(embed, embed)
        self.to(backbone.device)
        self._ids_cache: dict[str, Tensor] = {}

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: AdaCLIPConfig) -> dict[str, Any]:
        depth, length = config.prompt_depth, config.prompt_length
        kinds = " + ".join(k for k, on in (("static", config.static_prompts),
                                           ("dynamic (per image)", config.dynamic_prompts)) if on)
        return {
            **PROMPT_ENSEMBLES.get(config.prompt_ensemble, PROMPT_ENSEMBLES["adaclip"]).describe(),
            "class_name": "{} in a state is the image's class name ('-' read as a space)",
            "averaging": "unit embeddings averaged per side, then normalised",
            "text_prompts": f"{kinds}: {length} tokens replace positions 1..{length} before "
                            f"text blocks 2..{depth}",
            "vision_prompts": f"{kinds}: {length} tokens appended before vision block 1, "
                              f"replaced before blocks 2..{depth}",
        }

    def _prompt_tokens(self, static: nn.ParameterList | None, dynamic: Tensor | None,
                       index: int) -> Tensor:
        """Layer ``index``'s prompt tokens ``[B, length, width]`` (static + dynamic)."""
        parts = []
        if static is not None:
            parts.append(static[index])
        if dynamic is not None:
            parts.append(dynamic)
        tokens = parts[0] + parts[1] if len(parts) == 2 else parts[0]
        if self.config.prompt_fp16_cast:
            tokens = tokens.half().float()
        return tokens

    def _dynamic_prompts(self, images: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Per-image (vision, text) prompt tokens ``[B, length, width]`` from the frozen global
        embedding (adaclip.py generate_and_set_dynamic_promtps), or (None, None)."""
        if not self.config.dynamic_prompts:
            return None, None
        with torch.no_grad():
            frozen = self.backbone.encode_image(images).global_embedding
        vision = torch.stack([head(frozen) for head in self.dynamic_visual_generator], dim=1)
        text = torch.stack([head(frozen) for head in self.dynamic_text_generator], dim=1)
        return vision, text

    def _class_ids(self, class_name: str) -> Tensor:
        """Token ids ``[P, L]`` of the ensemble for one class (normal prompts first)."""
        ids = self._ids_cache.get(class_name)
        if ids is None:
            normal, abnormal = self.ensemble.prompts(class_name.replace("-", " "))
            ids = self.backbone.tokenize(normal + abnormal)
            self._ids_cache[class_name] = ids
        return ids

    def text_features(self, class_names: Sequence[str], dynamic: Tensor | None,
                      batch: int) -> Tensor:
        """Unit text embeddings ``[B, 2, D]`` (normal, abnormal), one prompt set per image."""
        names = list(class_names)
        if len(names) != batch:
            raise ValueError(f"{len(names)} class names for {batch} images")
        ids = torch.cat([self._class_ids(name) for name in names], dim=0)  # [B * P, 77]
        ids = ids.to(self.backbone.device)
        per_image = ids.shape[0] // batch
        # causal text tower: positions after the last EOT cannot change the pooled token
        length = max(int(ids.argmax(dim=-1).max()) + 1, self.config.prompt_length + 2)
        ids = ids[:, :length]
        static = getattr(self, "text_static_prompts", None)
        deep = []
        for index in range(self.config.prompt_depth - 1):
            tokens = self._prompt_tokens(static, dynamic, index)
            tokens = tokens.expand(batch, -1, -1) if tokens.ndim == 2 else tokens
            deep.append(tokens.unsqueeze(1).expand(-1, per_image, -1, -1)
                        .reshape(batch * per_image, *tokens.shape[1:]))
        embeddings = l2_normalize(self.backbone.encode_text(ids, deep_prompts=deep))
        embeddings = embeddings.reshape(batch, per_image, -1)
        n_normal = len(self.ensemble.normal_states) * len(self.ensemble.templates)
        sides = [embeddings[:, :n_normal].mean(dim=1), embeddings[:, n_normal:].mean(dim=1)]
        return l2_normalize(torch.stack(sides, dim=1))

    def _vision_hooks(self, dynamic: Tensor | None, batch: int) -> BlockHooks:
        static = getattr(self, "visual_static_prompts", None)
        depth, length = self.config.prompt_depth, self.config.prompt_length

        def prompt(layer: int, hidden: Tensor) -> Tensor | None:
            if layer > depth:
                return None
            tokens = self._prompt_tokens(static, dynamic, layer - 1).to(hidden.dtype)
            tokens = tokens.expand(batch, -1, -1) if tokens.ndim == 2 else tokens
            kept = hidden if layer == 1 else hidden[:, :-length]
            return torch.cat([kept, tokens], dim=1)

        return BlockHooks(before=prompt)

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, images: Tensor, class_names: Sequence[str]) -> AdaCLIPForward:
        batch = images.shape[0]
        dynamic_vision, dynamic_text = self._dynamic_prompts(images)
        features = self.backbone.encode_image(images, layers=self.layers,
                                              token_source="residual",
                                              hooks=self._vision_hooks(dynamic_vision, batch))
        patches = [l2_normalize(head(features.patch_tokens[layer]))
                   for head, layer in zip(self.patch_projections, self.layers, strict=True)]
        image = l2_normalize(self.cls_projection(features.global_embedding))
        text = self.text_features(class_names, dynamic_text, batch)  # [B, 2, D]
        scale = self.config.logit_scale
        layer_logits = [scale * torch.einsum("bnd,bcd->bnc", tokens, text) for tokens in patches]
        if self.config.use_hsf:
            abnormal = torch.stack(layer_logits).mean(dim=0).softmax(dim=-1)[..., 1]
            fuse = (hsf_mean_of_top_clusters if self.config.hsf_mean_of_top_clusters
                    else hsf_most_anomalous_cluster)
            centroid = fuse(patches, abnormal, self.config.k_clusters,
                            self.config.kmeans_max_iterations)
            alpha = self.config.hsf_alpha
            image = l2_normalize(alpha * centroid + (1 - alpha) * image)
        image_probs = (scale * torch.einsum("bd,bcd->bc", image, text)).softmax(dim=-1)
        return AdaCLIPForward(layer_logits, image_probs)

    def upsample(self, logits: Tensor, images: Tensor, size: int) -> Tensor:
        """Patch logits ``[B, N, 2]`` -> ``[B, 2, size, size]`` (bilinear)."""
        grid = tokens_to_grid(logits, self.backbone.patch_grid(images))
        return upsample_maps(grid, size, align_corners=self.config.upsample_align_corners)

    # -- scores ----------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        out = self.forward_features(images, class_names)
        mean_logits = torch.stack(out.layer_logits).mean(dim=0)
        maps = self.upsample(mean_logits, images, images.shape[-1]).softmax(dim=1)[:, 1]
        return Prediction(out.image_probs[:, 1], gaussian_smooth(maps, self.config.sigma))

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Focal loss of the image probabilities + per layer focal + 2 Dice on the upsampled
        softmax maps (trainer.py train_one_batch)."""
        images, mask, labels = batch["image"], batch["mask"].float(), batch["label"].long()
        out = self.forward_features(images, batch["class_name"])
        parts = {"image_focal": focal_loss(out.image_probs, labels)}
        for layer, logits in zip(self.layers, out.layer_logits, strict=True):
            prob_map = self.upsample(logits, images, mask.shape[-1]).softmax(dim=1)
            parts[f"seg_layer{layer}"] = segmentation_loss(prob_map, mask)
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        own = [p for name, p in self.named_parameters() if not name.startswith("backbone.")]
        group: dict[str, Any] = {"params": own}
        if self.config.learning_rate is not None:
            group["lr"] = self.config.learning_rate
        return [group]

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream checkpoint (``trainer.py`` ``AdaCLIP_Trainer.save``: the trainer's
        state dict filtered to the learnable modules, keys ``clip_model.<module>...``; the prefix
        is optional here) to this method's trainable state:

        - ``visual_prompter.static_prompts.{j}`` -> ``visual_static_prompts.{j}``;
        - ``text_prompter.static_prompts.{j}`` for j >= 1 -> ``text_static_prompts.{j-1}``
          (j = 0 is never used upstream: dropped);
        - ``patch_token_layer.head.{i}.*`` -> ``patch_projections.{i}.*``;
        - ``cls_token_layer.head.0.*`` -> ``cls_projection.*``;
        - ``dynamic_visual_prompt_generator.head.{i}.*`` -> ``dynamic_visual_generator.{i}.*``;
        - ``dynamic_text_prompt_generator.head.{i}.*`` -> ``dynamic_text_generator.{i}.*``.

        Any other key is a ValueError naming it, as is a file without the projection layers or
        without any prompts; shapes (depth, length, layers) are checked on loading."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"an AdaCLIP checkpoint is a state dict (trainer.py save), got "
                             f"{type(obj).__name__}")
        converted: dict[str, Tensor] = {}
        unknown = []
        for key, value in obj.items():
            name = str(key).removeprefix("clip_model.")
            target = _upstream_key(name)
            if target is None:
                unknown.append(str(key))
                continue
            if target == "":
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{key!r} is a {type(value).__name__}, not a tensor")
            converted[target] = value.detach().float().clone()
        if unknown:
            raise ValueError(f"not an AdaCLIP checkpoint: unexpected keys {sorted(unknown)[:8]}")
        required = {
            "patch_token_layer.head.0.weight": "patch_projections.0.weight",
            "cls_token_layer.head.0.weight": "cls_projection.weight",
        }
        missing = [f"clip_model.{k}" for k, ours in required.items() if ours not in converted]
        if not any(k.startswith(("visual_static", "dynamic_visual")) for k in converted):
            missing.append("clip_model.visual_prompter.static_prompts.0 or "
                           "clip_model.dynamic_visual_prompt_generator.head.0.weight")
        if missing:
            raise ValueError(f"not an AdaCLIP checkpoint: missing {missing}")
        return converted


_UPSTREAM_PATTERNS = (
    (re.compile(r"visual_prompter\.static_prompts\.(\d+)"), "visual_static_prompts.{0}"),
    (re.compile(r"text_prompter\.static_prompts\.(\d+)"), "text_static_prompts.{0}"),
    (re.compile(r"patch_token_layer\.head\.(\d+)\.(weight|bias)"), "patch_projections.{0}.{1}"),
    (re.compile(r"cls_token_layer\.head\.0\.(weight|bias)"), "cls_projection.{0}"),
    (re.compile(r"dynamic_visual_prompt_generator\.head\.(\d+)\.(weight|bias)"),
     "dynamic_visual_generator.{0}.{1}"),
    (re.compile(r"dynamic_text_prompt_generator\.head\.(\d+)\.(weight|bias)"),
     "dynamic_text_generator.{0}.{1}"),
)


def _upstream_key(name: str) -> str | None:
    """Our name for an upstream key; "" for the unused text prompt of block 1; None if unknown."""
    for pattern, target in _UPSTREAM_PATTERNS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        groups = list(match.groups())
        if target.startswith("text_static"):
            if int(groups[0]) == 0:
                return ""
            groups[0] = str(int(groups[0]) - 1)
        return target.format(*groups)
    return None
