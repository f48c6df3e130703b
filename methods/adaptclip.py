"""AdaptCLIP: adapting CLIP with a visual and a textual adapter, zero-shot path.

Gao et al., "AdaptCLIP: Adapting CLIP for Universal Visual Anomaly Detection", AAAI 2026
(arXiv 2505.09926); reference code ``gaobb/AdaptCLIP`` (``adaptcliplib/adaptclip.py``,
``train.py``, ``test.py``, ``scripts/*.sh``).

The frozen CLIP is a service; adapters act only at its output ends (no hooks in the towers):

- **Vision**: the AnomalyCLIP path (V-V attention from block 6, ``DPAM_layer = 20`` upstream);
  global embedding = final CLS ``@ proj`` without ``ln_post``; both adapters use the patch tokens
  of the final block (``query_patch_feats[-1]``, the last of ``--features_list 6 12 18 24``).
- **Visual adapter (VA)**: two residual MLPs ``x + W2 ReLU(BN(W1 x))`` (no biases, bottleneck
  ``D / 4``), one on the global embedding, one on every patch token. The adapted features are
  compared (cosine / 0.07, softmax) with **fixed** text: the WinCLIP prompt ensemble for
  ``"object"`` (7 normal x 21 templates, 4 anomalous x 21), unnormalised embeddings averaged.
- **Textual adapter (TA)**: two learnable prompts ``[SOT] ctx_1..ctx_12 . [EOT]`` (normal,
  abnormal; no class word, no deep prompts), compared with the **fixed** (un-adapted) global
  embedding and patch tokens.
- **Alternating learning**: each adapter learns against the other modality frozen, so the two
  branches share neither parameters nor losses. Upstream trains both on every step with one
  Adam over the summed losses; the authors confirm this *is* the alternating learning of the
  paper, executed concurrently (gaobb/AdaptCLIP issue #15). ``schedule`` also offers literal
  alternation by step or by epoch (:meth:`AdaptCLIP.start_epoch` and a step counter).
- **Loss per branch**: image cross-entropy + focal + Dice(abnormal, g) + Dice(normal, 1 - g) on
  the 2-channel map upsampled bilinearly to the mask size; total = sum over branches.
- **Scores**: pixel map = mean of the two abnormal maps, Gaussian sigma 4; image score = mean of
  the two global ``P_abn`` and the maximum of the smoothed map (``test.py``, 0-shot branch,
  ``--fusion_type average_mean``).

Not implemented: the prompt-query adapter (PQA), the few-shot branch that needs normal
reference images of the target category (``MethodInfo.few_shot``); it is trained jointly
upstream but shares nothing with VA/TA, so leaving it out changes no zero-shot output. An
upstream checkpoint's ``pq_learner`` is accepted and ignored.

Known difference from the released code: upstream's patch-token tensor includes the V-V CLS
token, so the local adapter's batch-norm statistics count it (1 token of 1,370 per image at
518 px); the shared backbone returns patch tokens only.
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

from zsbench.anomaly_maps import (
    ANOMALYCLIP_TEMPERATURE,
    gaussian_smooth,
    harmonic_mean,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.errors import ConfigError
from zsbench.losses import segmentation_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import (
    AVERAGING_MODES,
    WINCLIP_ANOMALIB,
    ClassTextCache,
    encode_ensemble,
)
from zsbench.prompt_learner import PLACEHOLDER_WORD, PromptLearner
from zsbench.prompt_scoring import image_logits
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

#: the learnable prompts' words after the context vectors (adaptclip.py, TextualAdapter:
#: ``" ".join(["X"] * n_ctx) + "."``, the same tokens for the normal and the abnormal prompt)
TEXTUAL_TEMPLATE = "."
BRANCHES = ("visual", "textual")
BRANCH_CHOICES = ("both", *BRANCHES)
FUSIONS = ("mean", "harmonic")
SCHEDULES = ("simultaneous", "alternate-steps", "alternate-epochs")
# Upstream VisualAdapter state: ResMLP names (``local_adater`` is upstream's spelling).
UPSTREAM_VISUAL_PREFIXES = {"local_adater.": "local_adapter.", "global_adapter.": "global_adapter."}
UPSTREAM_MLP_KEYS = ("fc.0.weight", "fc.1.weight", "fc.1.bias", "fc.1.running_mean",
                     "fc.1.running_var", "fc.1.num_batches_tracked", "fc.3.weight")
UPSTREAM_TEXTUAL_IGNORED = ("token_prefix_pos", "token_suffix_pos", "token_prefix_neg",
                            "token_suffix_neg", "tokenized_prompts_pos", "tokenized_prompts_neg")


@dataclass
class AdaptCLIPConfig(MethodConfig):
    """AdaptCLIP options; defaults follow the paper and ``gaobb/AdaptCLIP``."""

    vv_from: int | None = option(6, "first block of the V-V attention path (train.py: "
                                    "DPAM_layer = 20, blocks 6..24 of ViT-L/14); none = plain "
                                    "CLIP")
    patch_layer: int | None = option(None, "vision block whose patch tokens both adapters use; "
                                           "none = the final block (train.py/test.py: "
                                           "query_patch_feats[-1] of --features_list 6 12 18 24)")
    global_ln_post: bool = option(False, "apply ln_post to the global CLS token (upstream "
                                         "adaptcliplib/adaptclip.py does not)")
    n_ctx: int = option(12, "learnable context vectors of each textual prompt "
                            "(train_adaptclip.sh: n_ctx=12)")
    adapter_reduction: int = option(4, "bottleneck reduction of the visual adapter's residual "
                                       "MLPs, hidden width = embed_dim / reduction "
                                       "(train_adaptclip.sh: vl_reduction=4)")
    static_prompt_class: str = option("object", "word in the fixed WinCLIP prompt ensemble of "
                                                "the visual branch (TextualAdapter.prompt)")
    static_prompt_averaging: str = option(
        "raw", "averaging of the fixed prompt embeddings of one side before L2 normalisation: "
               "raw (TextualAdapter.prepare_static_text_feature: mean of unnormalised "
               "embeddings) or normalized")
    temperature: float = option(ANOMALYCLIP_TEMPERATURE, "softmax temperature of cosine "
                                                         "similarities (adaptclip.py: / 0.07)")
    branches: str = option("both", "adapters used for training and scores: both, visual (VA "
                                   "only) or textual (TA only), the README's ablation rows")
    fusion: str = option("mean", "how the branches' maps and image scores are combined: mean "
                                 "(test.py --fusion_type average_mean, the default) or harmonic")
    schedule: str = option(
        "simultaneous", "training schedule of the two adapters: simultaneous (both every step, "
                        "train.py; the paper's alternating learning, as each adapter learns "
                        "against the other modality frozen, issue #15), alternate-steps (visual "
                        "on odd, textual on even steps of each epoch) or alternate-epochs "
                        "(visual on odd, textual on even epochs)")
    sigma: float = option(4.0, "Gaussian sigma of the pixel map in pixels (test.py --sigma 4)")


class BranchOutput(NamedTuple):
    """One adapter's comparison of image and text."""

    image_logits: Tensor  # [B, 2] cosine / temperature of the global embedding
    patch_probs: Tensor  # [B, N, 2] patch probabilities (normal, abnormal)


class ResidualMLP(nn.Module):
    """``x + W2 ReLU(BN(W1 x))`` over the last dimension (adaptclip.py ``ResMLP``), biases off.

    Batch norm counts every row of the flattened input (images x tokens). A training batch of
    a single row cannot give batch statistics: it is normalised with the running ones."""

    def __init__(self, width: int, reduction: int):
        super().__init__()
        hidden = width // reduction
        self.fc = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden),
                                nn.ReLU(inplace=True), nn.Linear(hidden, width, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        linear1, norm, relu, linear2 = self.fc
        hidden = linear1(flat)
        if self.training and hidden.shape[0] < 2:
            hidden = F.batch_norm(hidden, norm.running_mean, norm.running_var, norm.weight,
                                  norm.bias, training=False, eps=norm.eps)
        else:
            hidden = norm(hidden)
        return x + linear2(relu(hidden)).reshape(x.shape)


class VisualAdapter(nn.Module):
    """VA: a residual MLP on the global embedding and one on the patch tokens."""

    def __init__(self, embed_dim: int, reduction: int):
        super().__init__()
        self.global_adapter = ResidualMLP(embed_dim, reduction)
        self.local_adapter = ResidualMLP(embed_dim, reduction)

    def forward(self, global_embedding: Tensor, patch_tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.global_adapter(global_embedding), self.local_adapter(patch_tokens)


def fuse(values: Sequence[Tensor], fusion: str) -> Tensor:
    """Element-wise arithmetic (``mean``) or harmonic mean of same-shaped tensors (test.py
    ``fusion_fun``)."""
    stacked = torch.stack(list(values))
    if fusion == "mean":
        return stacked.mean(dim=0)
    return harmonic_mean(stacked, dim=0)


@register_method
class AdaptCLIP(AnomalyMethod):
    """Zero-shot AdaptCLIP: a visual and a textual adapter learned alternately."""

    config_class = AdaptCLIPConfig
    presets = {
        # README ablation rows 1 and 2 (0-shot): one adapter alone
        "textual-only": {"branches": "textual"},
        "visual-only": {"branches": "visual"},
    }
    info = MethodInfo(
        name="adaptclip",
        title="AdaptCLIP",
        paper="Gao et al., AdaptCLIP: Adapting CLIP for Universal Visual Anomaly Detection, "
              "AAAI 2026 (arXiv 2505.09926)",
        trainable=True,
        code="https://github.com/gaobb/AdaptCLIP",
        license="GPL-2.0",
        class_aware=False,
    )

    def __init__(self, config: AdaptCLIPConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        for name, value, choices in (("branches", config.branches, BRANCH_CHOICES),
                                     ("fusion", config.fusion, FUSIONS),
                                     ("schedule", config.schedule, SCHEDULES),
                                     ("static_prompt_averaging", config.static_prompt_averaging,
                                      AVERAGING_MODES)):
            if value not in choices:
                raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
        if config.n_ctx < 1:
            raise ConfigError(f"n_ctx must be >= 1, got {config.n_ctx}")
        if not 1 <= config.adapter_reduction <= backbone.embed_dim:
            raise ConfigError(f"adapter_reduction must be in 1..{backbone.embed_dim} (the "
                              f"embed_dim), got {config.adapter_reduction}")
        if config.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {config.temperature}")
        if not config.static_prompt_class.strip():
            raise ConfigError("static_prompt_class must be a non-empty word")
        self.require_non_negative("sigma")
        self.patch_layer = backbone.check_layer(config.patch_layer, "patch_layer")
        if config.vv_from is not None:
            backbone.check_layer(config.vv_from, "vv_from")
        self.branches = BRANCHES if config.branches == "both" else (config.branches,)
        self.visual_adapter = VisualAdapter(backbone.embed_dim, config.adapter_reduction
                                            ).to(backbone.device)
        self.textual_adapter = PromptLearner(backbone, [TEXTUAL_TEMPLATE, TEXTUAL_TEMPLATE],
                                             n_ctx=config.n_ctx, deep_prompt_depth=0)
        for name, module in (("visual", self.visual_adapter), ("textual", self.textual_adapter)):
            module.requires_grad_(name in self.branches)  # an unused adapter stays as built
        self.static_text = ClassTextCache(lambda word: encode_ensemble(
            backbone, WINCLIP_ANOMALIB, word, averaging=config.static_prompt_averaging))
        self._epoch = 1
        self._step_in_epoch = 0

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: AdaptCLIPConfig) -> dict[str, Any]:
        learned = " ".join([PLACEHOLDER_WORD] * config.n_ctx + [TEXTUAL_TEMPLATE])
        normal, anomalous = WINCLIP_ANOMALIB.prompts(config.static_prompt_class)
        return {
            "textual_adapter": {"normal": learned, "abnormal": learned,
                                "context": f"each {PLACEHOLDER_WORD} is a learned vector, "
                                           "separate for the normal and the abnormal prompt"},
            "visual_adapter_static": {"normal": normal, "abnormal": anomalous,
                                      "averaging": config.static_prompt_averaging},
        }

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Frozen global embedding ``[B, D]`` and patch tokens ``[B, N, D]`` of the patch layer."""
        config = self.config
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=(self.patch_layer,),
                                                  vv_from=config.vv_from,
                                                  global_ln_post=config.global_ln_post)
        return features.global_embedding, features.patch_tokens[self.patch_layer]

    def visual_branch(self, global_embedding: Tensor, patches: Tensor) -> BranchOutput:
        """Adapted image features against the fixed prompt-ensemble text."""
        text = self.static_text.get(self.config.static_prompt_class).to(patches.device)
        adapted_global, adapted_patches = self.visual_adapter(global_embedding, patches)
        return BranchOutput(image_logits(adapted_global, text, self.config.temperature),
                            text_probabilities(adapted_patches, text, self.config.temperature))

    def textual_branch(self, global_embedding: Tensor, patches: Tensor) -> BranchOutput:
        """Fixed image features against the learned prompts."""
        text = self.textual_adapter()  # [2, D] unnormalised
        return BranchOutput(image_logits(global_embedding, text, self.config.temperature),
                            text_probabilities(patches, text, self.config.temperature))

    def forward_branches(self, images: Tensor, branches: Sequence[str]) -> dict[str, BranchOutput]:
        global_embedding, patches = self.encode(images)
        run = {"visual": self.visual_branch, "textual": self.textual_branch}
        return {name: run[name](global_embedding, patches) for name in branches}

    def probability_map(self, out: BranchOutput, images: Tensor, size: int) -> Tensor:
        """``[B, 2, size, size]`` (normal, abnormal) bilinear upsampling of the patch grid."""
        return upsample(tokens_to_grid(out.patch_probs, self.backbone.patch_grid(images)), size)

    # -- scores ----------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        outs = self.forward_branches(images, self.branches)
        size = images.shape[-1]
        maps = [self.probability_map(out, images, size)[:, 1] for out in outs.values()]
        pixel = gaussian_smooth(fuse(maps, self.config.fusion), self.config.sigma)
        scores = [out.image_logits.softmax(dim=-1)[:, 1] for out in outs.values()]
        image = fuse([*scores, pixel.flatten(1).amax(dim=1)], self.config.fusion)
        return Prediction(image, pixel)

    # -- training --------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Alternation by epoch reads ``epoch``; the step counter restarts every epoch (so a
        resumed run alternates as an uninterrupted one)."""
        self._epoch = int(epoch)
        self._step_in_epoch = 0

    def trained_branches(self) -> tuple[str, ...]:
        """The branches the next training step trains (``schedule``; visual first)."""
        if len(self.branches) == 1 or self.config.schedule == "simultaneous":
            return self.branches
        counter = self._epoch - 1 if self.config.schedule == "alternate-epochs" \
            else self._step_in_epoch
        return (BRANCHES[counter % 2],)

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images, mask, labels = batch["image"], batch["mask"].float(), batch["label"].long()
        branches = self.trained_branches()
        if self.training:
            self._step_in_epoch += 1
        outs = self.forward_branches(images, branches)
        labels = labels.to(images.device)
        terms: list[Tensor] = []
        parts = {f"{name}_{kind}": 0.0 for name in self.branches
                 for kind in ("image_ce", "segmentation")}
        for name, out in outs.items():
            image_loss = F.cross_entropy(out.image_logits, labels)
            seg_loss = segmentation_loss(self.probability_map(out, images, mask.shape[-1]),
                                         mask.to(images.device))
            terms += [image_loss, seg_loss]
            parts[f"{name}_image_ce"] = float(image_loss.detach())
            parts[f"{name}_segmentation"] = float(seg_loss.detach())
        return torch.stack(terms).sum(), parts

    def parameter_groups(self) -> list[dict[str, Any]]:
        params: list[nn.Parameter] = []
        if "visual" in self.branches:
            params += list(self.visual_adapter.parameters())
        if "textual" in self.branches:
            params += list(self.textual_adapter.parameters())
        return [{"params": params}]

    # -- checkpoint state (parameters and the visual adapter's batch-norm statistics) ------------
    def _norm_buffers(self) -> dict[str, Tensor]:
        return {f"visual_adapter.{name}": buffer
                for name, buffer in self.visual_adapter.named_buffers()}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Both adapters' parameters and the visual adapter's batch-norm running statistics
        (needed at test time), whatever ``branches`` trains."""
        modules = {"visual_adapter": self.visual_adapter, "textual_adapter": self.textual_adapter}
        state = {f"{prefix}.{name}": p.detach().clone() for prefix, module in modules.items()
                 for name, p in module.named_parameters()}
        state.update({k: v.detach().clone() for k, v in self._norm_buffers().items()})
        return state

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``epoch_15.pth`` (``train.py``: ``{"textual_learner": ...,
        "visual_learner": ..., "pq_learner": ...}`` state dicts) to this method's state:

        - ``textual_learner.ctx_pos`` / ``ctx_neg`` ``[1, 1, n_ctx, W]`` ->
          ``textual_adapter.ctx`` ``[2, n_ctx, W]`` (normal, abnormal); its token buffers are
          rebuilt from the text and ignored;
        - ``visual_learner.local_adater.fc.*`` / ``global_adapter.fc.*`` (weights, batch-norm
          affine and running statistics) -> ``visual_adapter.local_adapter.fc.*`` /
          ``visual_adapter.global_adapter.fc.*``;
        - ``pq_learner`` (the few-shot prompt-query adapter, not implemented) is ignored.

        A missing or unexpected key is a ValueError naming it; shapes are checked against the
        method (backbone widths, ``n_ctx``, ``adapter_reduction``) when it is loaded."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"an AdaptCLIP checkpoint is a dict of state dicts, got "
                            f"{type(obj).__name__}")
        missing = [k for k in ("textual_learner", "visual_learner") if k not in obj]
        unknown = sorted(str(k) for k in obj
                         if k not in ("textual_learner", "visual_learner", "pq_learner"))
        if missing or unknown:
            raise ValueError(f"expected keys 'textual_learner', 'visual_learner' (and "
                             f"'pq_learner'): missing {missing}, unexpected {unknown}")
        if "pq_learner" in obj:
            logger.info("AdaptCLIP checkpoint: 'pq_learner' (the few-shot prompt-query adapter) "
                        "is not used by the zero-shot method; ignored")
        textual, visual = obj["textual_learner"], obj["visual_learner"]
        for name, part in (("textual_learner", textual), ("visual_learner", visual)):
            if not isinstance(part, Mapping):
                raise TypeError(f"{name!r} is a {type(part).__name__}, not a state dict")
            for key, value in part.items():
                if not isinstance(value, Tensor):
                    raise TypeError(f"{name}.{key} is a {type(value).__name__}, not a tensor")
        converted = {"textual_adapter.ctx": cls._convert_ctx(textual)}
        expected = {f"{upstream}{key}": f"visual_adapter.{ours}{key}"
                    for upstream, ours in UPSTREAM_VISUAL_PREFIXES.items()
                    for key in UPSTREAM_MLP_KEYS}
        missing = sorted(set(expected) - set(visual))
        unknown = sorted(str(k) for k in set(visual) - set(expected))
        if missing or unknown:
            raise ValueError(f"not an AdaptCLIP visual_learner state: missing "
                             f"{['visual_learner.' + k for k in missing]}, unexpected "
                             f"{['visual_learner.' + k for k in unknown]}")
        for upstream, ours in expected.items():
            value = visual[upstream]
            converted[ours] = (value.long() if upstream.endswith("num_batches_tracked")
                               else value.float()).clone()
        return converted

    @staticmethod
    def _convert_ctx(textual: Mapping[str, Tensor]) -> Tensor:
        missing = [f"textual_learner.{k}" for k in ("ctx_pos", "ctx_neg") if k not in textual]
        unknown = sorted(f"textual_learner.{k}" for k in textual
                         if k not in ("ctx_pos", "ctx_neg", *UPSTREAM_TEXTUAL_IGNORED))
        if missing or unknown:
            raise ValueError(f"not an AdaptCLIP textual_learner state: missing {missing}, "
                             f"unexpected {unknown}")
        contexts = []
        for key in ("ctx_pos", "ctx_neg"):
            ctx = textual[key].float()
            if ctx.dim() < 2 or math.prod(ctx.shape[:-2]) != 1:
                raise ValueError(f"textual_learner.{key} has shape {tuple(ctx.shape)}; expected "
                                 f"[1, 1, n_ctx, W] (one prompt)")
            contexts.append(ctx.reshape(ctx.shape[-2:]))
        if contexts[0].shape != contexts[1].shape:
            raise ValueError(f"textual_learner.ctx_pos {tuple(contexts[0].shape)} and ctx_neg "
                             f"{tuple(contexts[1].shape)} differ in shape")
        return torch.stack(contexts).clone()
