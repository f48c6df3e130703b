"""VCP-CLIP: visual context prompting for zero-shot anomaly segmentation.

Qu et al., "VCP-CLIP: A visual context prompting model for zero-shot anomaly segmentation",
ECCV 2024 (arXiv 2407.12276); reference code ``xiaozhen228/VCP-CLIP`` (``train.py``,
``test.py``, ``models/model_CLIP.py``, ``models/pre_vcp.py``, ``models/post_vcp.py``,
``models/prompt_ensemble.py``). Facts below are read from that code.

- **Vision**: plain CLIP (ViT-L/14@336 at 518 px, position embedding resized bicubic with
  antialias as ``models/model_CLIP.py: resize_pos_embed``). The residual-stream tokens of blocks
  6, 12, 18, 24 (before ``ln_post``) are used; the global embedding is ``ln_post(CLS) @ proj``.
- **Unified text prompt** (class-agnostic): ``"a photo of a good {}"`` / ``"a photo of a damaged
  {}"``, where ``{}`` is not a word but r = 2 vectors (``--prompt_len 2``).
- **Pre-VCP**: those r vectors are ``q + Conv1d(1 -> r, kernel 3, same)(g)``: a learnable query
  ``q`` [r, W] plus a 1-D convolution over the image's global embedding ``g``. Every image thus
  has its own prompts: the text side has a batch dimension.
- **Deep text prompting (DTP)**: n = 1 learnable token (``--deep_prompt_len 1``) inserted after
  SOT before block 1 (after the positional embedding, the sequence cut to 77) and replaced
  before each of blocks 2..12 (``--total_d_layer_len 11``); every prompt goes through one shared
  ``Linear(W, W)`` and dropout 0.1; after block 12 the prompt positions are removed and a
  learnable ``LayerNorm(W, eps=1e-6)`` runs before ``ln_final``. Text embedding = EOT token
  ``@ text_projection`` (frozen); templates are L2-normalised, averaged, renormalised.
- **Pre-VCP map** (per layer): ``Linear(width, D)`` on the patch tokens, unit norm, logits
  ``exp(t1) * <patch, text>`` with a learnable ``t1`` (init ``log(1/0.07)``).
- **Post-VCP** (shared over layers): the two text embeddings attend to the layer's unit-norm
  raw patch tokens: 8-head cross-attention (queries ``Linear(D, width)`` of the text, keys and
  values ``Linear(width, width)`` of the patches, ``Linear(width, width)`` out), output L2-
  normalised in the vision width; logits ``exp(t2) * <patch, text'>`` with its own ``t2``.
- **Maps**: logits upsampled bilinearly (``align_corners=True``) to the input, then softmax over
  (normal, abnormal). Training: focal + Dice (abnormal channel) for both maps at every layer.
  Test: per-branch mean over layers; pixel map = ``gaussian(0.2 pre + 0.8 post, sigma 8)``;
  image score = mean of the 2000 largest pixels of the pre map + the same of the post map
  (``test.py``; upstream also min-max normalises both per category, which changes no metric
  computed per category and is left out).
- **Training** (``train.sh``, ``train.py``): the auxiliary dataset's test split, Adam betas
  (0.5, 0.999), lr 2e-5 when trained on MVTec AD (4e-5 on VisA), the two temperatures at lr 0.01,
  batch 32, 10 epochs (``training_defaults``), seed 333 (zsbench: the protocol's seed). Not
  reproduced here (outside a method): fp16 autocast in training
  and test (``precision=fp16`` on CUDA comes close), and the augmentation of
  ``utils/dataset.py`` (albumentations rotate / rot90 / brightness-contrast / noise / blur, and
  for MVTec AD a 2x2 mosaic of four anomalous images with probability 0.2).

Upstream quirk (off by default; on in the ``upstream`` preset): ``mlp_activation="gelu"`` (the
shared backbone option): upstream builds its own CLIP with ``nn.GELU`` in every block
(``models/transformer.py`` ``ResidualAttentionBlock``) and loads OpenAI weights that were
trained with QuickGELU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsbench.anomaly_maps import gaussian_smooth, l2_normalize, tokens_to_grid, upsample
from zsbench.backbone.hooks import BlockHooks
from zsbench.errors import ConfigError
from zsbench.losses import dice_loss, focal_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

#: the word whose single token marks where the r visual-context vectors go in a template
SLOT_WORD = "X"
#: models/pre_vcp.py and models/post_vcp.py: both temperatures start at log(1 / 0.07)
INITIAL_TEMPERATURE = 0.07


@dataclass
class VCPCLIPConfig(MethodConfig):
    """VCP-CLIP options; defaults follow ``xiaozhen228/VCP-CLIP`` (train.sh / test.sh)."""

    pos_embed_interpolation: str = option(
        "bicubic-antialias", "resize of the vision position embedding: upstream resizes it "
                             "bicubic with antialias (models/model_CLIP.py resize_pos_embed)")
    layers: tuple[int, ...] = option((6, 12, 18, 24), "vision blocks whose residual-stream "
                                                      "tokens are used (--features_list)")
    normal_templates: tuple[str, ...] = option(
        ("a photo of a good {}",), "normal prompts; {} is where the visual context vectors go "
                                   "(models/prompt_ensemble.py)")
    abnormal_templates: tuple[str, ...] = option(
        ("a photo of a damaged {}",), "abnormal prompts (models/prompt_ensemble.py)")
    context_vectors: int = option(2, "visual context vectors r replacing {} (--prompt_len)")
    use_global_context: bool = option(
        True, "Pre-VCP: add the image's global embedding (through the Conv1d) to the learnable "
              "context; false = static learnable context only (--use_global)")
    text_prompt_length: int = option(
        1, "deep text prompt tokens n per text block (--deep_prompt_len); 0 disables DTP "
           "(--total_d_layer_len 0)")
    text_prompt_dropout: float = option(0.1, "dropout on the deep text prompts while training "
                                             "(models/model_CLIP.py prompt_dropout)")
    post_vcp_heads: int = option(8, "heads of the Post-VCP cross-attention "
                                    "(models/post_vcp.py num_heads)")
    post_vcp_attention_scale: float = option(
        1.0, "factor on q.k in the Post-VCP attention (models/post_vcp.py: beta_t = 1; the "
             "dim_out**-0.5 scale it defines is never used)")
    upsample_align_corners: bool = option(True, "bilinear upsampling of the logit maps with "
                                                "align_corners=True (train.py, test.py)")
    pre_map_weight: float = option(0.2, "weight of the Pre-VCP map in the pixel map; the Post-VCP "
                                        "map gets 1 - it (test.py: alpha = 0.2)")
    image_score_top_k: int = option(
        2000, "image score: mean of the k largest pixels of each branch's map at the input size "
              "(test.py: can_k = -2000), clipped to the number of pixels")
    sigma: float = option(8.0, "Gaussian sigma of the pixel map in pixels (test.py: sigma=8)")
    learning_rate: float = option(
        2e-5, "learning rate of everything but the temperatures (train.sh: 2e-5 trained on "
              "MVTec AD, 4e-5 trained on VisA)")
    temperature_learning_rate: float = option(0.01, "learning rate of the two temperatures "
                                                    "(train.py: lr 0.01)")


class VCPForward(NamedTuple):
    """Per-layer logits of both branches at patch resolution, ``[B, N, 2]`` each."""

    pre_logits: list[Tensor]
    post_logits: list[Tensor]


# -- Pre-VCP -------------------------------------------------------------------------------------


class PreVCP(nn.Module):
    """Visual context vectors ``q + Conv1d(g)`` [B, r, W] from the global embedding ``g``."""

    def __init__(self, vectors: int, width: int, use_global: bool):
        super().__init__()
        self.use_global = use_global
        self.query = nn.Parameter(torch.empty(1, vectors, width))
        nn.init.trunc_normal_(self.query)  # models/pre_vcp.py: std 1, cut at +-2
        self.context = nn.Conv1d(1, vectors, kernel_size=3, padding="same")

    def forward(self, global_embedding: Tensor) -> Tensor:
        batch = global_embedding.shape[0]
        vectors = self.query.expand(batch, -1, -1)
        if self.use_global:
            vectors = vectors + self.context(global_embedding.unsqueeze(1))
        return vectors


class DeepTextPrompts(nn.Module):
    """DTP: one token set inserted before text block 1, replaced before blocks 2..L, removed
    after block L and followed by a learnable LayerNorm (``models/model_CLIP.py``)."""

    def __init__(self, length: int, width: int, layers: int, dropout: float):
        super().__init__()
        self.length = length
        self.shallow = nn.Parameter(torch.empty(1, length, width).uniform_(-1, 1))
        self.deep = nn.Parameter(torch.empty(layers - 1, length, width).uniform_(-1, 1))
        self.projection = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.projection.weight, a=0, mode="fan_out")
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def token(self, layer: int) -> Tensor:
        """The (projected, dropped-out) prompt ``[n, W]`` for text block ``layer`` (1-indexed)."""
        raw = self.shallow[0] if layer == 1 else self.deep[layer - 2]
        # functional call: a parameter view is no module input (cost.py's FLOP counter tracks
        # module inputs and cannot handle views of parameters made under no_grad)
        return self.dropout(F.linear(raw, self.projection.weight, self.projection.bias))

    def before(self, layer: int, hidden: Tensor) -> Tensor:
        n, count = self.length, hidden.shape[0]
        prompt = self.token(layer).to(hidden.dtype).unsqueeze(0).expand(count, -1, -1)
        if layer == 1:  # insert after SOT and cut the sequence back to its length
            return torch.cat([hidden[:, :1], prompt, hidden[:, 1:-n]], dim=1)
        return torch.cat([hidden[:, :1], prompt, hidden[:, 1 + n:]], dim=1)

    def finish(self, hidden: Tensor) -> Tensor:
        """After the last block: drop the prompt positions, then the learnable LayerNorm."""
        hidden = torch.cat([hidden[:, :1], hidden[:, 1 + self.length:]], dim=1)
        return self.norm(hidden)


# -- Post-VCP ------------------------------------------------------------------------------------


class PostVCP(nn.Module):
    """Cross-attention of the text embeddings (queries) on unit patch tokens (keys, values);
    returns unit image-specific text embeddings in the vision width ``[B, C, width]``."""

    def __init__(self, text_dim: int, width: int, heads: int, scale: float):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.query = nn.Linear(text_dim, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, text: Tensor, patches: Tensor) -> Tensor:
        (batch, classes, _), n_patches = text.shape, patches.shape[1]
        q = self.query(text).reshape(batch, classes, self.heads, -1)
        k = self.key(patches).reshape(batch, n_patches, self.heads, -1)
        v = self.value(patches).reshape(batch, n_patches, self.heads, -1)
        attention = (torch.einsum("bchd,bnhd->bhcn", q, k) * self.scale).softmax(dim=-1)
        attended = torch.einsum("bhcn,bnhd->bchd", attention, v).reshape(batch, classes, -1)
        return l2_normalize(self.out(attended))


def top_k_mean(maps: Tensor, k: int) -> Tensor:
    """Mean of the ``k`` largest values of each map ``[B, H, W]`` (all of them if fewer)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


@register_method
class VCPCLIP(AnomalyMethod):
    """Image-conditioned text prompts before (Pre-VCP) and after (Post-VCP) the text encoder."""

    config_class = VCPCLIPConfig
    # train.sh: 10 epochs, batch size 32 (learning rates are config fields)
    training_defaults = {"epochs": 10, "batch_size": 32}
    presets = {
        # xiaozhen228/VCP-CLIP (commit 4dd96ec) as released
        "upstream": {
            "mlp_activation": "gelu",  # models/transformer.py: nn.GELU with OpenAI weights
            "pos_embed_interpolation": "bicubic-antialias",  # resize_pos_embed
            "input_interpolation": "bicubic",  # models/model_CLIP.py _transform_test
        },
    }
    info = MethodInfo(
        name="vcp_clip",
        title="VCP-CLIP",
        paper="Qu et al., VCP-CLIP: A visual context prompting model for zero-shot anomaly "
              "segmentation, ECCV 2024",
        trainable=True,
        code="https://github.com/xiaozhen228/VCP-CLIP",
        license="MIT",
        class_aware=False,
    )

    def __init__(self, config: VCPCLIPConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self.require_non_negative("sigma", "text_prompt_length", "post_vcp_attention_scale")
        for name in ("context_vectors", "post_vcp_heads", "image_score_top_k"):
            if getattr(config, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
        if not 0.0 <= config.pre_map_weight <= 1.0:
            raise ConfigError(f"pre_map_weight must lie in [0, 1], got {config.pre_map_weight}")
        if not 0.0 <= config.text_prompt_dropout < 1.0:
            raise ConfigError(f"text_prompt_dropout must lie in [0, 1), got "
                              f"{config.text_prompt_dropout}")
        if not config.normal_templates or not config.abnormal_templates:
            raise ConfigError("normal_templates and abnormal_templates need one prompt each at "
                              "least")
        if backbone.embed_dim != backbone.text_width:
            raise ConfigError(f"Pre-VCP adds the global image embedding (dim {backbone.embed_dim})"
                              f" to text-width vectors ({backbone.text_width}): backbone "
                              f"{config.backbone!r} needs embed_dim == text width")
        if backbone.vision_width % config.post_vcp_heads:
            raise ConfigError(f"post_vcp_heads={config.post_vcp_heads} does not divide the "
                              f"vision width {backbone.vision_width}")
        self.layers = backbone.check_layers(config.layers, "layers")
        width, dim, text_width = backbone.vision_width, backbone.embed_dim, backbone.text_width
        device = backbone.device
        self.pre_vcp = PreVCP(config.context_vectors, text_width, config.use_global_context)
        self.text_prompt = (DeepTextPrompts(config.text_prompt_length, text_width,
                                            backbone.text_layers, config.text_prompt_dropout)
                            if config.text_prompt_length else None)
        self.patch_projections = nn.ModuleList(nn.Linear(width, dim) for _ in self.layers)
        self.post_vcp = PostVCP(dim, width, config.post_vcp_heads,
                                config.post_vcp_attention_scale)
        start = math.log(1 / INITIAL_TEMPERATURE)
        self.pre_logit_scale = nn.Parameter(torch.tensor(start))
        self.post_logit_scale = nn.Parameter(torch.tensor(start))
        ids, self._slots = self._template_ids()
        self.register_buffer("_ids", ids, persistent=False)  # follows .to(device)
        self.to(device)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: VCPCLIPConfig) -> dict[str, Any]:
        slot = "[" + " ".join(f"v{i + 1}" for i in range(config.context_vectors)) + "]"
        return {
            "normal": [t.format(slot) for t in config.normal_templates],
            "abnormal": [t.format(slot) for t in config.abnormal_templates],
            "context": f"{slot}: {config.context_vectors} vectors per image, a learned query plus "
                       f"a Conv1d of the image's global embedding (Pre-VCP); no class name",
            "deep_prompts": (f"{config.text_prompt_length} learned token(s) after SOT in every "
                             f"text block, through a shared Linear, removed before ln_final"
                             if config.text_prompt_length else "none"),
        }

    def _template_ids(self) -> tuple[Tensor, list[int]]:
        """Token ids ``[T, L]`` of all templates (normal first) with r slot tokens where ``{}``
        is, and the slot's first position in each."""
        config, r = self.config, self.config.context_vectors
        slot_id = int(self.backbone.tokenize([SLOT_WORD])[0, 1])
        rows, slots = [], []
        for template in (*config.normal_templates, *config.abnormal_templates):
            if template.count("{}") != 1:
                raise ConfigError(f"template {template!r} needs exactly one {{}} (where the visual "
                                  f"context vectors go)")
            ids = self.backbone.tokenize([template.format(SLOT_WORD)])[0].cpu()
            where = (ids == slot_id).nonzero().flatten()
            if len(where) != 1:
                raise ConfigError(f"template {template!r}: the word {SLOT_WORD!r} must not appear "
                                  f"in it (it marks the slot)")
            slot, length = int(where[0]), ids.shape[0]
            expanded = torch.cat([ids[:slot], ids.new_full((r,), slot_id), ids[slot + 1:]])
            expanded = expanded[:length]
            end = int(expanded.argmax())
            if expanded[end] != ids.max() or end >= length - config.text_prompt_length:
                raise ConfigError(f"template {template!r} with {r} context vectors and "
                                  f"{config.text_prompt_length} deep prompt token(s) exceeds the "
                                  f"context length {length}")
            rows.append(expanded)
            slots.append(slot)
        return torch.stack(rows).to(self.backbone.device), slots

    def _text_hooks(self) -> BlockHooks | None:
        """The deep text prompts as text-tower hooks (inserted, replaced, removed at the end)."""
        prompts = self.text_prompt
        if prompts is None:
            return None
        last = self.backbone.text_layers

        def after(layer: int, hidden: Tensor) -> Tensor | None:
            return prompts.finish(hidden) if layer == last else None

        return BlockHooks(before=prompts.before, after=after)

    def encode_prompts(self, context: Tensor) -> Tensor:
        """Unit text embeddings ``[B, 2, D]`` (normal, abnormal) from per-image visual context
        vectors ``[B, r, W]``: every template encoded per image, normalised, averaged per class,
        renormalised."""
        batch, r, width = context.shape
        ids = self._ids  # [T, L]
        tokens = self.backbone.token_embedding(ids)  # [T, L, W]
        rows = []
        for index, slot in enumerate(self._slots):
            rows.append(torch.cat([tokens[index, :slot].expand(batch, -1, -1), context.to(tokens),
                                   tokens[index, slot + r:].expand(batch, -1, -1)], dim=1))
        embeddings = torch.stack(rows, dim=1)  # [B, T, L, W]
        n_templates, length = ids.shape
        encoded = self.backbone.encode_text(
            ids.expand(batch, -1, -1).reshape(-1, length),
            embeddings.reshape(-1, length, width), hooks=self._text_hooks())
        encoded = l2_normalize(encoded.reshape(batch, n_templates, -1))
        n_normal = len(self.config.normal_templates)
        classes = [encoded[:, :n_normal].mean(dim=1), encoded[:, n_normal:].mean(dim=1)]
        return l2_normalize(torch.stack(classes, dim=1))

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> VCPForward:
        """Both branches' per-layer logits at patch resolution."""
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=self.layers,
                                                  token_source="residual")
        text = self.encode_prompts(self.pre_vcp(features.global_embedding))  # [B, 2, D]
        pre_logits, post_logits = [], []
        for projection, layer in zip(self.patch_projections, self.layers, strict=True):
            tokens = features.patch_tokens[layer]
            projected = l2_normalize(projection(tokens))
            pre_logits.append(self.pre_logit_scale.exp()
                              * torch.einsum("bnd,bcd->bnc", projected, text))
            raw = l2_normalize(tokens)
            adapted = self.post_vcp(text, raw)  # [B, 2, width]
            post_logits.append(self.post_logit_scale.exp()
                               * torch.einsum("bnd,bcd->bnc", raw, adapted))
        return VCPForward(pre_logits, post_logits)

    def probability_map(self, logits: Tensor, images: Tensor, size: int) -> Tensor:
        """``[B, 2, size, size]``: logits upsampled bilinearly, then softmax over the classes."""
        grid = self.backbone.patch_grid(images)
        return upsample(tokens_to_grid(logits, grid), size,
                        align_corners=self.config.upsample_align_corners).softmax(dim=1)

    # -- scores ----------------------------------------------------------------------------------
    def branch_maps(self, out: VCPForward, images: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """Abnormal probability of each branch, mean over the layers: ``[B, size, size]`` x 2."""
        pre = torch.stack([self.probability_map(x, images, size)[:, 1] for x in out.pre_logits])
        post = torch.stack([self.probability_map(x, images, size)[:, 1]
                            for x in out.post_logits])
        return pre.mean(dim=0), post.mean(dim=0)

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        config = self.config
        pre, post = self.branch_maps(self.forward_features(images), images, images.shape[-1])
        weight = config.pre_map_weight
        pixel = gaussian_smooth(weight * pre + (1 - weight) * post, config.sigma)
        score = (top_k_mean(pre, config.image_score_top_k)
                 + top_k_mean(post, config.image_score_top_k))
        return Prediction(score, pixel)

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Sum over the layers and both branches of focal + Dice (abnormal channel)."""
        images, mask = batch["image"], (batch["mask"].float() > 0.5).float()
        out = self.forward_features(images)
        size = mask.shape[-1]
        parts: dict[str, Tensor] = {}
        for branch, logits in (("pre", out.pre_logits), ("post", out.post_logits)):
            maps = [self.probability_map(x, images, size) for x in logits]
            parts[f"{branch}_focal"] = torch.stack([focal_loss(m, mask) for m in maps]).sum()
            parts[f"{branch}_dice"] = torch.stack([dice_loss(m[:, 1], mask) for m in maps]).sum()
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        temperatures = [self.pre_logit_scale, self.post_logit_scale]
        main = [p for n, p in self.named_parameters()
                if not n.startswith("backbone.") and all(p is not t for t in temperatures)]
        return [{"params": main, "lr": self.config.learning_rate},
                {"params": temperatures, "lr": self.config.temperature_learning_rate}]

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``train.py`` checkpoint (``train_visa.pth``, ``train_mvtec.pth``,
        ``epoch_*_group_id_*.pth``) to this method's trainable state. Its layout is
        ``{"trainable_linearlayer": ..., "New_Lan_Embed": ..., "Zero_try": ..., <CLIP params
        named *prompt*>}``:

        - ``trainable_linearlayer``: ``fc.{i}.weight/bias`` -> ``patch_projections.{i}.*``;
        - ``New_Lan_Embed``: ``prompt_query`` -> ``pre_vcp.query``, ``prompt_linear1.fc.*``
          (Conv1d) -> ``pre_vcp.context.*``, ``prompt_temp`` -> ``pre_logit_scale``;
        - ``Zero_try``: ``q_proj_pre`` / ``k_proj_pre_1`` / ``v_proj_pre_1`` / ``proj_post_t``
          (1x1 Conv1d, kernel axis dropped) -> ``post_vcp.query/key/value/out``,
          ``prompt_temp_l1`` -> ``post_logit_scale``;
        - top level: ``prompt_embeddings`` -> ``text_prompt.shallow``,
          ``deep_prompt_embeddings`` -> ``text_prompt.deep``, ``prompt_proj.*`` ->
          ``text_prompt.projection.*``, ``prompt_norm.*`` -> ``text_prompt.norm.*``;
          ``prompt_text_projection`` (created, never used upstream) is ignored.

        A missing part or key is a ValueError naming it; so is an unknown key in
        ``New_Lan_Embed`` or among the ``*prompt*`` entries (loaded strictly upstream). Unknown
        entries elsewhere are logged and ignored, as ``test.py`` (``strict=False``) does."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"a VCP-CLIP checkpoint is a dict saved by train.py, got "
                            f"{type(obj).__name__}")
        missing_parts = [k for k in ("trainable_linearlayer", "New_Lan_Embed", "Zero_try")
                         if not isinstance(obj.get(k), Mapping)]
        if missing_parts:
            raise ValueError(f"not a VCP-CLIP train.py checkpoint: missing the state dicts "
                             f"{missing_parts}; keys: {sorted(map(str, obj))[:12]}")
        out: dict[str, Tensor] = {}

        def take(part: str, state: Mapping[str, Any], mapping: Mapping[str, str],
                 squeeze_conv: bool = False, strict: bool = True) -> None:
            unknown = sorted(str(k) for k in state if k not in mapping)
            missing = sorted(k for k in mapping if k not in state)
            if missing or (unknown and strict):
                raise ValueError(f"{part} does not fit VCP-CLIP: missing {missing}, unexpected "
                                 f"{unknown}")
            if unknown:
                logger.warning("VCP-CLIP checkpoint: ignoring %s entries %s (upstream test.py "
                               "ignores them too)", part, unknown)
            for theirs, ours in mapping.items():
                value = state[theirs]
                if not isinstance(value, Tensor):
                    raise ValueError(f"{part}.{theirs} is a {type(value).__name__}, not a tensor")
                value = value.detach().float().clone()
                if squeeze_conv and theirs.endswith(".weight"):
                    if value.dim() != 3 or value.shape[-1] != 1:
                        raise ValueError(f"{part}.{theirs} has shape {tuple(value.shape)}; "
                                         f"expected a 1x1 Conv1d weight [out, in, 1]")
                    value = value[..., 0]
                out[ours] = value

        linear = obj["trainable_linearlayer"]
        indices = sorted({int(str(k).split(".")[1]) for k in linear
                          if str(k).startswith("fc.") and str(k).split(".")[1].isdigit()})
        take("trainable_linearlayer", linear,  # test.py: load_state_dict(strict=False)
             {f"fc.{i}.{p}": f"patch_projections.{i}.{p}" for i in indices
              for p in ("weight", "bias")}, strict=False)
        if indices != list(range(len(indices))) or not indices:
            raise ValueError(f"trainable_linearlayer layers {indices} are not 0..k-1")
        take("New_Lan_Embed", obj["New_Lan_Embed"],
             {"prompt_query": "pre_vcp.query", "prompt_linear1.fc.weight": "pre_vcp.context.weight",
              "prompt_linear1.fc.bias": "pre_vcp.context.bias", "prompt_temp": "pre_logit_scale"})
        zero = obj["Zero_try"]
        conv_names = {"q_proj_pre": "query", "k_proj_pre_1": "key", "v_proj_pre_1": "value",
                      "proj_post_t": "out"}
        take("Zero_try", {k: v for k, v in zero.items() if k != "prompt_temp_l1"},
             {f"{theirs}.{p}": f"post_vcp.{ours}.{p}" for theirs, ours in conv_names.items()
              for p in ("weight", "bias")}, squeeze_conv=True, strict=False)  # test.py: lenient
        take("Zero_try", {k: v for k, v in zero.items() if k == "prompt_temp_l1"},
             {"prompt_temp_l1": "post_logit_scale"})
        top = {k: v for k, v in obj.items()
               if k not in ("trainable_linearlayer", "New_Lan_Embed", "Zero_try",
                            "prompt_text_projection")}
        # test.py _load_stages reads only the CLIP parameters named *prompt*
        take("the CLIP prompt parameters", {k: v for k, v in top.items() if "prompt" in str(k)},
             {"prompt_embeddings": "text_prompt.shallow",
              "deep_prompt_embeddings": "text_prompt.deep",
              "prompt_proj.weight": "text_prompt.projection.weight",
              "prompt_proj.bias": "text_prompt.projection.bias",
              "prompt_norm.weight": "text_prompt.norm.weight",
              "prompt_norm.bias": "text_prompt.norm.bias"})
        return out
