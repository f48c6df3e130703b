"""FAPrompt: fine-grained abnormality prompts for zero-shot anomaly detection (METHODS.md §2).

Zhu et al., "Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection",
ICCV 2025; reference code ``mala-lab/FAPrompt`` (``FAPrompt.py``, ``train.py``, ``test.py``).

- **Vision**: the AnomalyCLIP path: V-V attention from layer 6, global embedding without
  ``ln_post``; only the final layer's patch tokens are used.
- **Compound abnormality prompts (CAP)**: one normal prompt ``[5 ctx] object.`` and 10 abnormal
  prompts ``[the same 5 ctx] [2 own ctx] damaged object.``; the abnormal prototype is the mean of
  the 10 unnormalised abnormal embeddings. Deep text prompts as in AnomalyCLIP: depth 9, 4 tokens
  (``train.sh``: ``--depth 9 --t_n_ctx 4``).
- **Data-dependent abnormality prior (DAP)**: the top-k patches by static-prompt ``P_abn`` feed a
  small MLP whose output ``b`` is added to every abnormal prompt's own ctx tokens; the abnormal
  prompts are re-encoded per image. ``b`` is pushed to zero on normal images.
- **Scores**: pixel map = mean of the static and DAP abnormal maps, Gaussian sigma 10; image
  score = ``0.5 P_abn(global, DAP) + 0.5 (2 max1 + max2) / 3``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    ANOMALYCLIP_TEMPERATURE,
    l2_normalize,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.losses import binary_focal_loss, image_cross_entropy, segmentation_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_learner import PLACEHOLDER_WORD, PromptLearner
from zsbench.prompt_scoring import pixel_anomaly_map
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

NORMAL_TEMPLATE = "object."
ABNORMAL_TEMPLATE = "damaged object."
NORMAL_CTX_GROUP = "normal"
# Upstream checkpoint (FAPrompt.py, AnomalyCLIP_PromptLearner): prior-network names -> ours, and
# the entries never used upstream (prompt projections) or rebuilt from the text (token buffers).
UPSTREAM_PRIOR_KEYS = {f"patch_meta_net.linear{i + 1}.{p}": f"prior.net.{2 * i}.{p}"
                       for i in range(2) for p in ("weight", "bias")}
UPSTREAM_IGNORED_PREFIXES = ("compound_prompt_projections.", "token_prefix", "token_suffix",
                             "tokenized_prompts")
_UPSTREAM_DEEP_PROMPT = re.compile(r"compound_prompts_text\.(\d+)")


@dataclass
class FAPromptConfig(MethodConfig):
    """FAPrompt options; defaults follow the paper and ``mala-lab/FAPrompt``."""

    n_normal_ctx: int = option(5, "ctx vectors of the normal prompt, shared by every abnormal "
                                  "prompt (FAPrompt.py: n_ctx_pos = 5)")
    n_abnormal_prompts: int = option(10, "abnormal prompts of the compound prompt set "
                                         "(FAPrompt.py: num_p = 10)")
    n_abnormal_ctx: int = option(2, "own ctx vectors of each abnormal prompt "
                                    "(FAPrompt.py: n_ctx_neg = 2)")
    deep_prompt_depth: int = option(9, "deep text prompts act before text blocks 2..depth "
                                       "(train.sh: --depth 9)")
    deep_prompt_length: int = option(4, "positions replaced by each deep prompt "
                                        "(train.sh: --t_n_ctx 4)")
    vv_from: int | None = option(6, "first block of the V-V attention path (DPAM_layer = 20 "
                                    "upstream: blocks 6..24 of ViT-L/14); none for plain CLIP")
    patch_layer: int | None = option(None, "vision block whose patch tokens are used; none = the "
                                           "final block (upstream uses the final tokens only)")
    global_ln_post: bool = option(False, "apply ln_post to the global CLS token (upstream "
                                         "AnomalyCLIP_lib/AnomalyCLIP.py does not)")
    temperature: float = option(ANOMALYCLIP_TEMPERATURE, "softmax temperature of cosine "
                                                         "similarities")
    prior_top_k: int = option(10, "patches that feed the abnormality prior (FAPrompt.py: k = 10)")
    prior_hidden_dim: int = option(480, "hidden width of the prior MLP (768 * k // 16 = 480 "
                                        "upstream)")
    prior_uses_first_patches: bool = option(
        False, "upstream quirk: feed the prior with the first k patch tokens (grid positions "
               "0..k-1) instead of the top-k by P_abn, whose indices train.py/test.py compute "
               "but never use")
    focal_on_probability_as_logit: bool = option(
        False, "upstream quirk: the binary focal loss on the fused image score treats that "
               "probability as a logit (train.py: BinaryFocalLoss(logits=True) on score2)")
    deep_prompt_fp16_cast: bool = option(
        False, "upstream quirk: deep prompts rounded through fp16 (AnomalyCLIP_lib .half())")
    dap_segmentation_weight: float = option(0.5, "weight of the segmentation loss of the DAP map")
    orthogonality_weight: float = option(0.1, "weight of the abnormal-prompt orthogonality loss")
    sigma: float = option(10.0, "Gaussian sigma of the pixel map in pixels (test.sh: --sigma 10)")


class FAPromptForward(NamedTuple):
    """Everything one forward pass produces (both prediction and loss read it)."""

    static_probs: Tensor  # [B, N, 2] patch probabilities, static prompts
    dap_probs: Tensor  # [B, N, 2] patch probabilities, image-specific (DAP) prompts
    global_probs: Tensor  # [B, 2] global embedding against the DAP prompts
    prior_bias: Tensor  # [B, text_width] the DAP bias b
    abnormal_embeddings: Tensor  # [n_abnormal_prompts, D] static, unnormalised


def abnormal_group(index: int) -> str:
    return f"abnormal{index}"


def orthogonality_loss(embeddings: Tensor) -> Tensor:
    """Sum over all unordered pairs of ``|cos|`` between the rows of ``embeddings`` [P, D]."""
    unit = l2_normalize(embeddings)
    cosine = unit @ unit.t()
    upper = torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)
    return cosine[upper].abs().sum()


def prior_loss(bias: Tensor, labels: Tensor) -> Tensor:
    """``MSE(b_i, 0)`` (mean over the width) summed over the normal images (label 0)."""
    per_image = bias.pow(2).mean(dim=-1)
    return (per_image * (labels == 0).to(per_image)).sum()


class AbnormalityPrior(nn.Module):
    """DAP's MLP: k concatenated unit patch embeddings -> a bias for the abnormal ctx tokens."""

    def __init__(self, top_k: int, embed_dim: int, hidden_dim: int, text_width: int):
        super().__init__()
        self.top_k = top_k
        self.net = nn.Sequential(nn.Linear(top_k * embed_dim, hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, text_width))

    def select_patches(self, patch_tokens: Tensor, abnormal_probs: Tensor, first_patches: bool
                       ) -> Tensor:
        """``[B, k, D]`` unit patch embeddings: the top-k by ``abnormal_probs`` [B, N], in
        decreasing order, or grid positions 0..k-1 (``first_patches``, the upstream quirk)."""
        if first_patches:
            chosen = patch_tokens[:, :self.top_k]
        else:
            index = abnormal_probs.topk(self.top_k, dim=1).indices
            chosen = patch_tokens.gather(1, index.unsqueeze(-1).expand(-1, -1,
                                                                       patch_tokens.shape[-1]))
        return l2_normalize(chosen)

    def forward(self, selected: Tensor) -> Tensor:
        return self.net(selected.flatten(1))


@register_method
class FAPrompt(AnomalyMethod):
    """Compound abnormality prompts with a data-dependent abnormality prior."""

    config_class = FAPromptConfig
    presets = {
        # mala-lab/FAPrompt (commit 7e9d9d2): train.py/test.py as released
        "upstream": {
            "prior_uses_first_patches": True,  # the top-k indices (pk_indx) are computed, unused
            "focal_on_probability_as_logit": True,
            "deep_prompt_fp16_cast": True,
            "pos_embed_interpolation": "bilinear",  # AnomalyCLIP_lib/AnomalyCLIP.py
            "input_interpolation": "bicubic",  # utils.py get_transform: BICUBIC
        },
    }
    info = MethodInfo(
        name="faprompt",
        title="FAPrompt",
        paper="Zhu et al., Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly "
              "Detection, ICCV 2025",
        trainable=True,
        code="https://github.com/mala-lab/FAPrompt",
        license="MIT",
        class_aware=False,
    )

    def __init__(self, config: FAPromptConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        for name in ("n_normal_ctx", "n_abnormal_prompts", "n_abnormal_ctx", "prior_top_k",
                     "prior_hidden_dim"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        if config.n_abnormal_prompts < 2 and config.orthogonality_weight:
            raise ValueError("the orthogonality loss needs n_abnormal_prompts >= 2 "
                             f"(got {config.n_abnormal_prompts}); set orthogonality_weight=0")
        self.patch_layer = backbone.check_layer(config.patch_layer, "patch_layer")
        n_patches = backbone.grid_size[0] * backbone.grid_size[1]
        if config.prior_top_k > n_patches:
            raise ValueError(f"prior_top_k={config.prior_top_k} exceeds the {n_patches} patches "
                             f"of image_size={backbone.image_size}")
        self.abnormal_groups = [abnormal_group(i) for i in range(config.n_abnormal_prompts)]
        self.prompt_learner = PromptLearner(
            backbone, [NORMAL_TEMPLATE] + [ABNORMAL_TEMPLATE] * config.n_abnormal_prompts,
            ctx_groups=[[(NORMAL_CTX_GROUP, config.n_normal_ctx)]]
            + [[(NORMAL_CTX_GROUP, config.n_normal_ctx), (group, config.n_abnormal_ctx)]
               for group in self.abnormal_groups],
            deep_prompt_depth=config.deep_prompt_depth,
            deep_prompt_length=config.deep_prompt_length,
            deep_prompt_fp16_cast=config.deep_prompt_fp16_cast)
        self.prior = AbnormalityPrior(config.prior_top_k, backbone.embed_dim,
                                      config.prior_hidden_dim, backbone.text_width
                                      ).to(backbone.device)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: FAPromptConfig) -> dict[str, Any]:
        normal_ctx = " ".join([PLACEHOLDER_WORD] * config.n_normal_ctx)
        own_ctx = " ".join([PLACEHOLDER_WORD] * config.n_abnormal_ctx)
        return {
            "normal": f"{normal_ctx} {NORMAL_TEMPLATE}",
            "abnormal": [f"{normal_ctx} {own_ctx} {ABNORMAL_TEMPLATE}"]
            * config.n_abnormal_prompts,
            "context": f"each {PLACEHOLDER_WORD} is a learned vector; the first "
                       f"{config.n_normal_ctx} are shared by all prompts, the next "
                       f"{config.n_abnormal_ctx} are each abnormal prompt's own and receive the "
                       f"per-image prior bias",
            "deep_prompts": f"{config.deep_prompt_depth - 1} x {config.deep_prompt_length} "
                            f"learned tokens before text blocks 2..{config.deep_prompt_depth}",
        }

    def static_text(self) -> tuple[Tensor, Tensor]:
        """Unnormalised normal ``[D]`` and abnormal ``[P, D]`` embeddings without the prior."""
        embeddings = self.prompt_learner()
        return embeddings[0], embeddings[1:]

    def dap_abnormal_prototype(self, bias: Tensor) -> Tensor:
        """Per-image abnormal prototypes ``[B, D]``: abnormal prompts re-encoded with ``bias``
        [B, text_width] on their own ctx, averaged unnormalised."""
        abnormal = self.prompt_learner(ctx_bias=bias,
                                       prompts=range(1, 1 + self.config.n_abnormal_prompts),
                                       ctx_bias_groups=self.abnormal_groups)
        return abnormal.mean(dim=1)

    # -- forward ---------------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> FAPromptForward:
        """Static and prior-conditioned probabilities of the patches and the global embedding."""
        config = self.config
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=(self.patch_layer,),
                                                  vv_from=config.vv_from,
                                                  global_ln_post=config.global_ln_post)
        patches = features.patch_tokens[self.patch_layer]
        normal, abnormal = self.static_text()
        static_text = torch.stack([normal, abnormal.mean(dim=0)])  # [2, D]
        static_probs = text_probabilities(patches, static_text, config.temperature)

        selected = self.prior.select_patches(patches, static_probs[..., 1],
                                             config.prior_uses_first_patches)
        bias = self.prior(selected)  # [B, W]
        dap_abnormal = self.dap_abnormal_prototype(bias)  # [B, D]
        dap_text = torch.stack([normal.expand_as(dap_abnormal), dap_abnormal], dim=1)  # [B, 2, D]
        dap_probs = text_probabilities(patches, dap_text, config.temperature)
        global_probs = text_probabilities(features.global_embedding, dap_text, config.temperature)
        return FAPromptForward(static_probs, dap_probs, global_probs, bias, abnormal)

    # -- scores ----------------------------------------------------------------------------------
    @staticmethod
    def fused_image_score(out: FAPromptForward) -> Tensor:
        """``0.5 P_abn(global, DAP) + 0.5 (2 max1 + max2) / 3`` at patch resolution."""
        max_static = out.static_probs[..., 1].amax(dim=1)
        max_dap = out.dap_probs[..., 1].amax(dim=1)
        return 0.5 * out.global_probs[:, 1] + 0.5 * (2 * max_static + max_dap) / 3

    def probability_maps(self, out: FAPromptForward, images: Tensor, size: int
                         ) -> tuple[Tensor, Tensor]:
        """Static and DAP maps ``[B, 2, size, size]`` (normal, abnormal)."""
        grid = self.backbone.patch_grid(images)
        return (upsample(tokens_to_grid(out.static_probs, grid), size),
                upsample(tokens_to_grid(out.dap_probs, grid), size))

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        out = self.forward_features(images)
        static_map, dap_map = self.probability_maps(out, images, images.shape[-1])
        return Prediction(self.fused_image_score(out),
                          pixel_anomaly_map([static_map, dap_map], [0.5, 0.5], self.config.sigma))

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        config = self.config
        images, mask, labels = batch["image"], batch["mask"].float(), batch["label"].long()
        out = self.forward_features(images)
        static_map, dap_map = self.probability_maps(out, images, mask.shape[-1])
        parts = {
            "seg_static": segmentation_loss(static_map, mask),
            "seg_dap": config.dap_segmentation_weight * segmentation_loss(dap_map, mask),
            "image_ce": image_cross_entropy(out.global_probs, labels, are_logits=False),
            # upstream BinaryFocalLoss(alpha=1): no class weighting, hence alpha=-1 here
            "image_focal": binary_focal_loss(
                self.fused_image_score(out), labels, gamma=2.0, alpha=-1.0,
                inputs_are_logits=config.focal_on_probability_as_logit),
            "orthogonality": config.orthogonality_weight
            * orthogonality_loss(out.abnormal_embeddings),
            "prior": prior_loss(out.prior_bias, labels),
        }
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt_learner.parameters()) + list(self.prior.parameters())}]

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``{"prompt_learner": state}`` (``FAPrompt.py``'s prompt learner; the
        bare state works too) to this method's trainable state:

        - ``ctx_pos`` ``[1, 1, n_normal_ctx, W]`` -> ``prompt_learner.ctx_group.normal``;
        - ``ctx_neg`` ``[1, P, n_abnormal_ctx, W]``: ``ctx_neg[0, i]`` ->
          ``prompt_learner.ctx_group.abnormal{i}`` (P abnormal prompts);
        - ``compound_prompts_text.{j}`` -> ``prompt_learner.deep_prompts.{j}``;
        - ``patch_meta_net.linear1`` / ``linear2`` ``.weight`` / ``.bias`` -> ``prior.net.0`` /
          ``prior.net.2`` (upstream's ``Sequential(linear1, ReLU, linear2)``).

        ``compound_prompt_projections.*`` (never used upstream) and the token buffers are
        ignored; any other key, or a missing one, is a ValueError naming it. Shapes are checked
        against the method (backbone width, prompt counts, prior width) when it is loaded."""
        state = obj.get("prompt_learner", obj) if isinstance(obj, Mapping) else None
        if not isinstance(state, Mapping):
            raise ValueError(f"a FAPrompt checkpoint is a dict {{'prompt_learner': state}}, got "
                             f"{type(obj).__name__}")
        used = {k: v for k, v in state.items() if not str(k).startswith(UPSTREAM_IGNORED_PREFIXES)}
        deep = {int(m.group(1)): v for k, v in used.items()
                if (m := _UPSTREAM_DEEP_PROMPT.fullmatch(str(k)))}
        known = {"ctx_pos", "ctx_neg", *UPSTREAM_PRIOR_KEYS}
        missing = sorted(known - set(used))
        unknown = sorted(str(k) for k in used if k not in known
                         and not _UPSTREAM_DEEP_PROMPT.fullmatch(str(k)))
        if missing or unknown:
            raise ValueError(f"not a FAPrompt prompt-learner state: missing {missing}, "
                             f"unexpected {unknown}")
        for key, value in used.items():
            if not isinstance(value, Tensor):
                raise ValueError(f"{key!r} is a {type(value).__name__}, not a tensor")
        ctx_pos, ctx_neg = used["ctx_pos"].float(), used["ctx_neg"].float()
        if ctx_pos.dim() < 2 or math.prod(ctx_pos.shape[:-2]) != 1:
            raise ValueError(f"'ctx_pos' has shape {tuple(ctx_pos.shape)}; expected "
                             f"[1, 1, n_ctx, W] (one class, one normal prompt)")
        if ctx_neg.dim() < 3 or math.prod(ctx_neg.shape[:-3]) != 1:
            raise ValueError(f"'ctx_neg' has shape {tuple(ctx_neg.shape)}; expected "
                             f"[1, n_prompts, n_ctx, W] (one class)")
        if ctx_pos.shape[-1] != ctx_neg.shape[-1]:
            raise ValueError(f"'ctx_pos' {tuple(ctx_pos.shape)} and 'ctx_neg' "
                             f"{tuple(ctx_neg.shape)} have different widths")
        converted = {f"prompt_learner.ctx_group.{NORMAL_CTX_GROUP}":
                     ctx_pos.reshape(ctx_pos.shape[-2:]).clone()}
        for index, own in enumerate(ctx_neg.reshape(-1, *ctx_neg.shape[-2:])):
            converted[f"prompt_learner.ctx_group.{abnormal_group(index)}"] = own.clone()
        if sorted(deep) != list(range(len(deep))):
            raise ValueError(f"compound_prompts_text indices {sorted(deep)} are not "
                             f"0..{len(deep) - 1}")
        for index, prompt in deep.items():
            converted[f"prompt_learner.deep_prompts.{index}"] = prompt.float().clone()
        for upstream, ours in UPSTREAM_PRIOR_KEYS.items():
            converted[ours] = used[upstream].float().clone()
        return converted
