"""Bayes-PFL: Bayesian prompt flow learning for zero-shot anomaly detection.

Qu et al., "Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", CVPR 2025
(arXiv:2503.10080); reference code ``xiaozhen228/Bayes-PFL`` (``models/VPB.py``,
``models/PFL.py``, ``models/flows.py``, ``loss.py``, ``train.py``, ``test.py``).

- **Prompt bank**: B = 3 prompt pairs; pair i is ``[SOT] ctx_i (5) state_i (5) <class> [EOT]``
  with learnable context vectors ``ctx_i`` shared by the normal and abnormal prompt, and
  learnable normal / abnormal state vectors (init N(+0.5, 0.02) / N(-0.5, 0.02)); the class
  word is the dataset's prompt word, lower-cased (``VPB.py``: ``"X " + name``, the X replaced).
- **Prompt flow (PFL)**: the prompt space is a distribution. An *image-specific* distribution:
  a Gaussian whose mean and variance are MLPs of the image's global CLIP embedding, pushed
  through K = 10 planar flows whose parameters are linear maps of the same embedding; a sample
  is added to every context vector. Two *image-agnostic* distributions (normal, abnormal): the
  same construction on a learned free "state" vector with free flow parameters and one shared
  encoder; a sample is added to every normal (resp. abnormal) state vector.
  Training draws one sample (per image / per batch) and adds ``0.01 x KL(q_K || N(0, I))`` of
  each distribution (single-sample flow ELBO); the test averages R = ``samples`` = 10 draws, all
  taken from :attr:`sampling_generator`.
- **Residual cross-modal attention (RCA)**: per vision layer (6, 12, 18, 24; residual-stream
  tokens before ``ln_post``) a linear projection to the text width (L2-normalised) is attended
  to by the text embeddings (4 heads, query = a linear map of the text, scale ``D^-0.5``),
  added back to them and renormalised; the pixel logits are ``exp(t_pix) <patch, text'>``.
- **Scores**: pixel map = mean over layers, prompts and samples of the abnormal softmax of each
  (normal, abnormal) pair of logits upsampled (bilinear, align_corners=True) to the input size,
  Gaussian sigma 8 (``test.py``). Image probability = mean over prompts and samples of the
  softmax of ``exp(t_img) <mapped text, image>`` with the text through a learned linear map;
  image score = ``0.5`` of it + ``0.5`` of the mean of the top-k (2000 at 518 px) pixels of the
  unsmoothed map (``metric_and_visualization.py``; upstream min-max normalises both per category
  first, which a per-image score cannot do).
- **Loss** (``train.py``): image CE + sum over layers of (class-balanced focal + foreground
  Dice) on the maps of one randomly chosen prompt pair per step, + ``0.01 (KL_ctx + KL_normal +
  KL_abnormal)`` + an orthogonality loss (mean squared cosine between the prompts of the bank).

Upstream quirks (each a flag, see the config; the ``upstream`` preset sets them all):
planar flows without the invertibility constraint; image-agnostic samples drawn once and reused
for every test image; a second training stage that trains only an image-score head on the
global embedding plus an attention-pooled fusion of the patch tokens (released checkpoints are
from that stage); a smaller top-k for the image score on a fixed list of categories.
Not reproduced: upstream selects the epoch and the switch to its second stage by early stopping
on a validation split of the *target* dataset; its cosine learning-rate schedule with warm-up.
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

from zsbench.anomaly_maps import gaussian_smooth, l2_normalize, tokens_to_grid, upsample
from zsbench.errors import ConfigError
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.normalizing_flows import (
    AmortizedPlanarFlow,
    FreePlanarFlow,
    flow_kl,
    planar_flow,
)
from zsbench.prompt_learner import PLACEHOLDER_WORD
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

#: ``metric_and_visualization.py`` (calcuate_metric_pixel): image-score top-k of 20 instead of
#: 2000 pixels for these categories (MVTec AD / VisA names)
UPSTREAM_SMALL_TOP_K_CATEGORIES = ("capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw",
                                   "cashew", "chewinggum")
#: the resolution at which upstream counts its top-k pixels (``--image_size 518``)
UPSTREAM_MAP_SIZE = 518
IMAGE_SCORES = ("fused", "global")


@dataclass
class BayesPFLConfig(MethodConfig):
    """Bayes-PFL options; defaults follow the paper and ``train.sh`` / ``test.sh`` upstream."""

    pos_embed_interpolation: str = option(
        "bicubic-antialias", "resize of the vision position embedding: upstream "
                             "models/model_CLIP.py resize_pos_embed is bicubic, antialias=True")
    layers: tuple[int, ...] = option((6, 12, 18, 24), "vision blocks whose residual-stream "
                                                      "tokens feed RCA (--features_list)")
    prompt_bank_size: int = option(3, "prompt pairs in the bank, B (--prompt_num 3)")
    n_context: int = option(5, "context vectors per prompt, P (--prompt_context_len 5)")
    n_state: int = option(5, "normal / abnormal state vectors per prompt, Q "
                             "(--prompt_state_len 5)")
    num_flows: int = option(10, "planar flows per distribution, K (--num_flows 10)")
    samples: int = option(10, "Monte-Carlo prompt samples per image at test time, R "
                              "(test.sh: --sample_num 10)")
    rca_heads: int = option(4, "attention heads of RCA (VPB.py Zero_Parameter: num_heads=4)")
    temperature: float = option(0.07, "initial temperature of both learnable logit scales "
                                      "(exp(t) = 1/0.07)")
    kl_weight: float = option(0.01, "weight of each distribution's KL term (VPB.py: 0.01 * kl)")
    orthogonality_weight: float = option(1.0, "weight of the prompt-bank orthogonality loss")
    train_one_prompt_per_step: bool = option(
        True, "image CE and segmentation losses on one random prompt pair per step (train.py); "
              "false: their mean over all pairs")
    image_score: str = option("fused", "'fused': image_score_weight x mean image probability + "
                                       "the rest x top-k mean of the unsmoothed map "
                                       "(test.py, alpha 0.5); 'global': the image probability")
    image_score_weight: float = option(0.5, "weight of the image probability in the fused score")
    image_score_top_k: int = option(2000, "pixels averaged for the fused score, counted at 518 px "
                                          "and scaled with the map area")
    sigma: float = option(8.0, "Gaussian sigma of the pixel map in pixels (test.py: sigm=8)")
    classifier_epochs: int = option(
        0, "final training epochs that train only the image-score head(s) with the image CE "
           "(train.py stage 2; prompts, flows and RCA frozen)")
    lr_prompt: float = option(1e-3, "learning rate of the prompt bank (--learning_rate_prompt)")
    lr_flow: float = option(1e-3, "learning rate of the flow parameters and agnostic states "
                                  "(--learning_rate_PFL)")
    lr_linear: float = option(1e-4, "learning rate of the encoders, RCA and the image heads "
                                    "(--learning_rate_linear)")
    lr_temperature: float = option(0.01, "learning rate of the two logit scales (train.py)")
    # -- upstream quirks ------------------------------------------------------------------------
    planar_unconstrained: bool = option(
        False, "upstream quirk: planar flows use u as is, without the u_hat reparameterisation "
               "that keeps them invertible (models/flows.py Planar.forward)")
    agnostic_samples_per_category: bool = option(
        False, "upstream quirk: the image-agnostic samples are drawn once and reused for every "
               "test image (VPB.py forward_ensemble caches zk_n / zk_a for the whole run; here "
               "once per category) instead of fresh samples per image")
    image_fusion_head: bool = option(
        False, "upstream quirk: image score from image_mapping(global + attention-pooled fusion "
               "of the patch tokens) instead of the global embedding (VPB.py forward, stage 2; "
               "the released checkpoints); trained in the last classifier_epochs epochs")
    small_top_k_categories: bool = option(
        False, "upstream quirk: top-k of 20 instead of 2000 pixels for the categories "
               f"{', '.join(UPSTREAM_SMALL_TOP_K_CATEGORIES)} (metric_and_visualization.py)")


class TextSamples(NamedTuple):
    """Sampled prompt biases and, in training, their KL terms."""

    context: Tensor  # [B, S, D] added to the context vectors
    normal: Tensor  # [B or 1, S, D] added to the normal state vectors
    abnormal: Tensor  # [B or 1, S, D] added to the abnormal state vectors
    kl: dict[str, Tensor]  # training only


class GaussianEncoder(nn.Module):
    """Mean and variance MLPs (Linear-Softplus-Linear-Softplus-Linear) of a vector; the variance
    is ``exp(h / 2)`` of the second MLP's output h (``VPB.py`` Encoder returns ``exp(0.5 h)``,
    which ``PFL.py`` then treats as the variance)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, hidden), nn.Softplus(), nn.Linear(hidden, hidden),
                                 nn.Softplus(), nn.Linear(hidden, dim))

        self.mean, self.log_variance = mlp(), mlp()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(x), torch.exp(0.5 * self.log_variance(x))


class AgnosticState(FreePlanarFlow):
    """An image-agnostic distribution: a learned state vector (the encoder's input) and free
    planar-flow parameters."""

    def __init__(self, dim: int, num_flows: int):
        super().__init__(dim, num_flows)
        self.state = nn.Parameter(torch.randn(dim))


class ResidualCrossAttention(nn.Module):
    """RCA: text embeddings attend to projected patch tokens of one layer; the attended values
    are added back to the text (residual) and renormalised (``VPB.py`` Zero_Parameter)."""

    def __init__(self, vision_width: int, dim: int, heads: int, n_layers: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)  # upstream Conv1d(kernel_size=1), same default init
        self.patch_projections = nn.ModuleList(nn.Linear(vision_width, dim, bias=False)
                                               for _ in range(n_layers))

    def forward(self, text: Tensor, patches: Tensor, layer_index: int) -> tuple[Tensor, Tensor]:
        """``text`` [B, T, D] (unit), ``patches`` [B, N, V] -> updated text [B, T, D] and unit
        projected patches [B, N, D]."""
        dense = l2_normalize(self.patch_projections[layer_index](patches))
        batch, n_text, dim = text.shape
        query = self.query(text).reshape(batch, n_text, self.heads, dim // self.heads)
        keys = dense.reshape(batch, dense.shape[1], self.heads, dim // self.heads)
        attention = (torch.einsum("bthc,bnhc->bhtn", query, keys) * dim ** -0.5).softmax(-1)
        attended = torch.einsum("bhtn,bnhc->bthc", attention, keys).reshape(batch, n_text, dim)
        return l2_normalize(attended + text), dense


class PatchFusion(nn.Module):
    """Attention pooling of the concatenated patch tokens of all layers to one vector
    (``VPB.py`` Global_Feature): Linear -> softmax-weighted sum over patches -> Linear."""

    def __init__(self, vision_width: int, n_layers: int, dim: int):
        super().__init__()
        hidden = vision_width // 2
        self.fuse = nn.Linear(vision_width * n_layers, hidden)
        self.compress = nn.Linear(hidden, 1)
        self.post = nn.Linear(hidden, dim)

    def forward(self, patches: Sequence[Tensor]) -> Tensor:
        x = self.fuse(torch.cat(list(patches), dim=-1))  # [B, N, hidden]
        weights = self.compress(x).softmax(dim=1)
        return self.post((weights * x).sum(dim=1))


def balanced_focal_loss(probs: Tensor, mask: Tensor, gamma: float = 2.0, eps: float = 1e-8
                        ) -> Tensor:
    """Focal loss on a (normal, abnormal) probability map [B, 2, H, W], averaged separately
    over the defect and the normal pixels of the batch and summed (``loss.py`` FocalLoss)."""
    defect = mask > 0.5
    pt = torch.where(defect, probs[:, 1], probs[:, 0])
    loss = -(1.0 - pt).pow(gamma) * torch.log(pt + eps)
    fg, bg = defect.to(loss.dtype), (~defect).to(loss.dtype)
    return (loss * fg).sum() / (fg.sum() + eps) + (loss * bg).sum() / (bg.sum() + eps)


def foreground_dice_loss(abnormal: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """``1 - (2 sum(p g) + eps) / (sum p + sum g + eps)`` over the whole batch, abnormal channel
    only (``loss.py`` DiceLoss returns loss_f)."""
    target = mask.to(abnormal.dtype)
    return 1.0 - (2 * (abnormal * target).sum() + eps) / (abnormal.sum() + target.sum() + eps)


def orthogonality_loss(embeddings: Tensor) -> Tensor:
    """Mean over ``[..., P, P]`` of the squared cosines between the P embeddings ``[..., P, D]``
    with the diagonal set to zero (``loss.py`` Orthogonal_Loss)."""
    unit = l2_normalize(embeddings)
    cosine = unit @ unit.transpose(-1, -2)
    off_diagonal = 1.0 - torch.eye(cosine.shape[-1], device=cosine.device, dtype=cosine.dtype)
    return (cosine.pow(2) * off_diagonal).mean()


@register_method
class BayesPFL(AnomalyMethod):
    """Prompt bank + normalizing-flow prompt distributions + residual cross-modal attention."""

    config_class = BayesPFLConfig
    # train.sh: 30 epochs, batch size 32 (learning rates are config fields)
    training_defaults = {"epochs": 30, "batch_size": 32}
    presets = {
        # xiaozhen228/Bayes-PFL (commit 8f155a0): train.py / test.py / models as released
        "upstream": {
            "planar_unconstrained": True,
            "agnostic_samples_per_category": True,
            "image_fusion_head": True,
            # stage 2 starts after 4 epochs without validation gain (patience 3) and runs until
            # the same early stop or epoch 30; its length is data-dependent upstream
            "classifier_epochs": 4,
            "small_top_k_categories": True,
            "pos_embed_interpolation": "bicubic-antialias",  # model_CLIP.py resize_pos_embed
            "input_interpolation": "bicubic",  # train.py _transform_test: BICUBIC
        },
    }
    info = MethodInfo(
        name="bayes_pfl",
        title="Bayes-PFL",
        paper="Qu et al., Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection, "
              "CVPR 2025",
        trainable=True,
        stochastic=True,
        code="https://github.com/xiaozhen228/Bayes-PFL",
        license="MIT",
        class_aware=True,
    )

    def __init__(self, config: BayesPFLConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self._check_config(config, backbone)
        self.layers = backbone.check_layers(config.layers, "layers")
        dim, width, vision = backbone.embed_dim, backbone.text_width, backbone.vision_width
        bank, flows = config.prompt_bank_size, config.num_flows
        self.prompt_context = nn.Parameter(torch.empty(bank, config.n_context, width))
        self.prompt_state_normal = nn.Parameter(torch.empty(bank, config.n_state, width))
        self.prompt_state_abnormal = nn.Parameter(torch.empty(bank, config.n_state, width))
        scale = float(torch.log(torch.tensor(1.0 / config.temperature)))
        self.temperature_pixel = nn.Parameter(torch.tensor(scale))
        self.temperature_image = nn.Parameter(torch.tensor(scale))
        self.image_specific_encoder = GaussianEncoder(dim, vision // 2)
        self.image_specific_flow = AmortizedPlanarFlow(dim, dim, flows)
        self.image_agnostic_encoder = GaussianEncoder(dim, vision // 2)
        self.normal_flow = AgnosticState(dim, flows)
        self.abnormal_flow = AgnosticState(dim, flows)
        self.rca = ResidualCrossAttention(vision, dim, config.rca_heads, len(self.layers))
        self.class_mapping = nn.Linear(dim, dim)
        self.image_mapping = nn.Linear(dim, dim)
        self.fusion = PatchFusion(vision, len(self.layers), dim)
        self._initialise()
        self.to(backbone.device)
        self._placeholder_id = int(backbone.tokenize([PLACEHOLDER_WORD])[0, 1])
        self._category: str | None = None
        self._agnostic_noise: tuple[Tensor, Tensor] | None = None
        self._classifier_stage = False

    def _check_config(self, config: BayesPFLConfig, backbone: nn.Module) -> None:
        for name in ("samples", "prompt_bank_size", "n_context", "n_state", "rca_heads",
                     "image_score_top_k"):
            if getattr(config, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
        self.require_non_negative("num_flows", "sigma", "kl_weight", "orthogonality_weight",
                                  "classifier_epochs")
        if config.image_score not in IMAGE_SCORES:
            raise ConfigError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got "
                              f"{config.image_score!r}")
        if not 0.0 <= config.image_score_weight <= 1.0:
            raise ConfigError(f"image_score_weight must lie in [0, 1], got "
                              f"{config.image_score_weight}")
        if config.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {config.temperature}")
        if config.image_fusion_head and config.classifier_epochs < 1:
            raise ConfigError("image_fusion_head needs classifier_epochs >= 1 (the head is "
                              "trained only in those final epochs)")
        if backbone.embed_dim % config.rca_heads:
            raise ConfigError(f"rca_heads={config.rca_heads} must divide the embedding width "
                              f"{backbone.embed_dim}")
        if backbone.embed_dim != backbone.text_width:
            raise ConfigError(f"bayes_pfl adds embedding-space samples to text tokens: it needs "
                              f"embed_dim == text_width, got {backbone.embed_dim} and "
                              f"{backbone.text_width} for {backbone.name!r}")

    def _initialise(self) -> None:
        """Upstream ``Context_Prompting``: every Linear N(0, 0.02) with zero bias (RCA's query,
        a Conv1d upstream, keeps PyTorch's default); prompts truncated-normal (context mean 0,
        normal states +0.5, abnormal states -0.5, std 0.02); flow parameters N(0, 1)."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.rca.query:
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.prompt_context, mean=0.0, std=0.02)
        nn.init.trunc_normal_(self.prompt_state_normal, mean=0.5, std=0.02)
        nn.init.trunc_normal_(self.prompt_state_abnormal, mean=-0.5, std=0.02)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: BayesPFLConfig) -> dict[str, Any]:
        ctx = " ".join([PLACEHOLDER_WORD] * config.n_context)
        state = " ".join([PLACEHOLDER_WORD] * config.n_state)
        return {
            "normal": [f"{ctx} {state} {{}}"] * config.prompt_bank_size,
            "abnormal": [f"{ctx} {state} {{}}"] * config.prompt_bank_size,
            "context": f"{{}} is the class word (lower case); pair i shares its first "
                       f"{config.n_context} {PLACEHOLDER_WORD} (learned context + an "
                       f"image-specific flow sample); the next {config.n_state} are learned "
                       f"normal or abnormal state vectors + an image-agnostic flow sample; "
                       f"{config.samples} samples at test time",
        }

    def token_ids(self, class_names: Sequence[str]) -> Tensor:
        """Token ids ``[B, L]`` of ``X x (P+Q) <class word>``, cut after the last EOT of the
        batch (the causal text mask makes the cut exact)."""
        n = self.config.n_context + self.config.n_state
        texts = [" ".join([PLACEHOLDER_WORD] * n + [name.lower()]) for name in class_names]
        ids = self.backbone.tokenize(texts)
        if bool((ids[:, -1] != 0).any()):
            raise ValueError(f"a bayes_pfl prompt fills the context length: {texts}")
        if not bool((ids[:, 1:1 + n] == self._placeholder_id).all()):
            raise ValueError(f"class words {list(class_names)} merge with the placeholder "
                             f"{PLACEHOLDER_WORD!r}")
        return ids[:, :int(ids.argmax(dim=-1).max()) + 1]

    def encode_prompts(self, ids: Tensor, samples: TextSamples) -> Tensor:
        """Unit text embeddings ``[B, S, P, 2, D]`` (pair index last: normal, abnormal) of the
        prompt bank with the sampled biases ``samples`` (S samples per image)."""
        batch, length = ids.shape
        n_samples = samples.context.shape[1]
        bank, width = self.config.prompt_bank_size, self.backbone.text_width
        shape = (batch, n_samples, bank, 2)
        context = (self.prompt_context[None, None, :, None]  # [1, 1, P, 1, n_ctx, W]
                   + samples.context[:, :, None, None, None, :]).expand(*shape, -1, -1)
        states = torch.stack([self.prompt_state_normal, self.prompt_state_abnormal], dim=1)
        state_bias = torch.stack([samples.normal, samples.abnormal], dim=-2)  # [B|1, S, 2, D]
        state_tokens = (states[None, None] + state_bias[:, :, None, :, None, :]
                        ).expand(*shape, -1, -1)
        tokens = self.backbone.token_embedding(ids)[:, None, None, None]  # [B, 1, 1, 1, L, W]
        n = self.config.n_context + self.config.n_state
        sequence = torch.cat([tokens[..., :1, :].expand(*shape, 1, width), context, state_tokens,
                              tokens[..., 1 + n:, :].expand(*shape, length - 1 - n, width)],
                             dim=-2)
        flat_ids = ids[:, None, None, None].expand(*shape, length).reshape(-1, length)
        encoded = self.backbone.encode_text(flat_ids, sequence.reshape(-1, length, width))
        return l2_normalize(encoded.reshape(*shape, -1))

    # -- prompt distributions --------------------------------------------------------------------
    def _noise(self, global_embedding: Tensor, n_samples: int, training: bool
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Standard normal noise of the three distributions: ``[B, S, D]`` image-specific and
        ``[B|1, S, D]`` normal / abnormal. Training: torch's global RNG, one draw per image and
        one per batch for the agnostic ones (``train.py``). Test: :attr:`sampling_generator`,
        image by image (so batching does not change the draws)."""
        batch, dim = global_embedding.shape
        device = global_embedding.device
        if training:
            return (torch.randn(batch, 1, dim, device=device),
                    torch.randn(1, 1, dim, device=device), torch.randn(1, 1, dim, device=device))
        generator = self.sampling_generator

        def draw() -> Tensor:
            return torch.randn(n_samples, dim, generator=generator, device=device)

        if self.config.agnostic_samples_per_category:
            if self._agnostic_noise is None or self._agnostic_noise[0].shape[1] != n_samples:
                self._agnostic_noise = (draw()[None], draw()[None])
            context = torch.stack([draw() for _ in range(batch)])
            return context, *self._agnostic_noise
        drawn = [torch.stack([draw() for _ in range(3)]) for _ in range(batch)]  # [3, S, D] each
        context, normal, abnormal = torch.stack(drawn, dim=1).unbind(0)
        return context, normal, abnormal

    def sample_prompts(self, global_embedding: Tensor, n_samples: int, training: bool
                       ) -> TextSamples:
        """Samples of the image-specific and the two image-agnostic flow distributions (and, in
        training, each one's single-sample KL to N(0, I))."""
        invertible = not self.config.planar_unconstrained
        noise_context, noise_normal, noise_abnormal = self._noise(global_embedding, n_samples,
                                                                  training)
        mean, variance = self.image_specific_encoder(global_embedding)  # [B, D]
        u, w, b = self.image_specific_flow.flow_parameters(global_embedding)  # [B, K, D], [B, K]
        z0 = mean[:, None] + variance.sqrt()[:, None] * noise_context
        context, log_det = planar_flow(z0, u[:, None], w[:, None], b[:, None], invertible)
        kl = {"kl_context": flow_kl(z0, mean[:, None], variance[:, None], context, log_det)}
        biases = []
        for name, flow, noise in (("normal", self.normal_flow, noise_normal),
                                  ("abnormal", self.abnormal_flow, noise_abnormal)):
            # stack, not a view: a view of a parameter confuses torch's module tracker (FLOP
            # counting) under no_grad
            mean, variance = self.image_agnostic_encoder(torch.stack([flow.state]))  # [1, D]
            z0 = mean[:, None] + variance.sqrt()[:, None] * noise
            z, log_det = planar_flow(z0, *flow.flow_parameters(), invertible)
            biases.append(z)
            kl[f"kl_{name}"] = flow_kl(z0, mean[:, None], variance[:, None], z, log_det)
        return TextSamples(context, biases[0], biases[1], kl if training else {})

    # -- forward ---------------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Global embedding ``[B, D]`` (ln_post, proj) and residual-stream tokens ``[B, N, V]``
        of the configured layers (``model_CLIP.py`` VisionTransformer.forward)."""
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=self.layers,
                                                  token_source="residual")
        return features.global_embedding, [features.patch_tokens[layer] for layer in self.layers]

    def image_logits(self, text: Tensor, global_embedding: Tensor, patches: Sequence[Tensor],
                     fusion_head: bool, frozen_scale: bool = False) -> Tensor:
        """``exp(t_img) <mapped text, image>`` ``[B, S, P, 2]``; the image vector is the global
        embedding, or ``image_mapping(global + fusion(patches))`` with the fusion head;
        ``frozen_scale`` detaches ``t_img`` (not in upstream's stage-2 optimizer)."""
        scale = self.temperature_image.exp()
        if frozen_scale:
            scale = scale.detach()
        image = global_embedding
        if fusion_head:
            image = self.image_mapping(global_embedding + self.fusion(patches))
        mapped = l2_normalize(self.class_mapping(text))
        return scale * torch.einsum("bspcd,bd->bspc", mapped, l2_normalize(image))

    def patch_logits(self, text: Tensor, patches: Sequence[Tensor]) -> list[Tensor]:
        """Per layer, RCA pixel logits ``[B, N, S, P, 2]``."""
        flat = text.reshape(text.shape[0], -1, text.shape[-1])
        out = []
        for index, tokens in enumerate(patches):
            updated, dense = self.rca(flat, tokens, index)
            logits = self.temperature_pixel.exp() * dense @ updated.transpose(1, 2)
            out.append(logits.reshape(*logits.shape[:2], *text.shape[1:4]))
        return out

    def _upsampled_probabilities(self, logits: Tensor, size: int) -> Tensor:
        """Pair logits ``[B, N, ..., 2]`` -> abnormal probabilities ``[B, M, size, size]``: the
        logits upsampled (bilinear, align_corners=True), then the pair softmax (``VPB.py``,
        ``test.py``), computed as the sigmoid of the upsampled logit difference (bilinear
        interpolation is linear, so this is the same number at half the cost)."""
        grid = self.backbone.grid_size
        difference = logits[..., 1] - logits[..., 0]
        flat = difference.reshape(difference.shape[0], difference.shape[1], -1)  # [B, N, M]
        return upsample(tokens_to_grid(flat, grid), size, align_corners=True).sigmoid()

    # -- scores ----------------------------------------------------------------------------------
    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        config = self.config
        global_embedding, patches = self.encode_image(images)
        samples = self.sample_prompts(global_embedding, config.samples, training=False)
        text = self.encode_prompts(self.token_ids(class_names), samples)  # [B, S, P, 2, D]
        probability = self.image_logits(text, global_embedding, patches,
                                        config.image_fusion_head).softmax(-1)[..., 1]
        size = images.shape[-1]
        raw = images.new_zeros(images.shape[0], size, size, dtype=torch.float32)
        for logits in self.patch_logits(text, patches):
            for sample in range(config.samples):  # bounded memory: one sample's maps at a time
                raw = raw + self._upsampled_probabilities(logits[:, :, sample], size).sum(1)
        raw = raw / (len(patches) * config.samples * config.prompt_bank_size)
        image_scores = probability.mean(dim=(1, 2))
        if config.image_score == "fused":
            top = raw.flatten(1).topk(self.top_k(size), dim=1).values.mean(dim=1)
            image_scores = (config.image_score_weight * image_scores
                            + (1.0 - config.image_score_weight) * top)
        return Prediction(image_scores, gaussian_smooth(raw, config.sigma))

    def top_k(self, size: int) -> int:
        """Pixels of the fused image score for a ``size`` x ``size`` map (counted at 518 px
        upstream, scaled with the area; 20 for the upstream list with
        ``small_top_k_categories``)."""
        count = self.config.image_score_top_k
        if self.config.small_top_k_categories and self._category in \
                UPSTREAM_SMALL_TOP_K_CATEGORIES:
            count = 20
        scaled = round(count * size * size / UPSTREAM_MAP_SIZE ** 2)
        return int(min(max(scaled, 1), size * size))

    def start_category(self, category: str) -> None:
        self._category = category
        self._agnostic_noise = None

    # -- loss ------------------------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._classifier_stage = epoch > epochs - self.config.classifier_epochs
        if self._classifier_stage:
            logger.info("bayes_pfl: epoch %d/%d trains the image-score head only", epoch, epochs)

    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        config = self.config
        images, mask, labels = batch["image"], batch["mask"].float(), batch["label"].long()
        global_embedding, patches = self.encode_image(images)
        ids = self.token_ids(batch["class_name"])
        bank = config.prompt_bank_size
        pairs = ([int(torch.randint(bank, (1,)))] if config.train_one_prompt_per_step
                 else list(range(bank)))
        if self._classifier_stage:  # train.py stage 2: image CE on the head(s) only
            with torch.no_grad():
                text = self.encode_prompts(ids, self.sample_prompts(global_embedding, 1, True))
            logits = self.image_logits(text, global_embedding, patches, config.image_fusion_head,
                                       frozen_scale=True)
            ce = torch.stack([F.cross_entropy(logits[:, 0, p], labels) for p in pairs]).mean()
            return ce, {"image_ce": float(ce.detach())}

        samples = self.sample_prompts(global_embedding, 1, training=True)
        text = self.encode_prompts(ids, samples)  # [B, 1, P, 2, D]
        logits = self.image_logits(text, global_embedding, patches, fusion_head=False)
        parts = {"image_ce": torch.stack([F.cross_entropy(logits[:, 0, p], labels)
                                          for p in pairs]).mean()}
        focal, dice = [], []
        for layer_logits in self.patch_logits(text, patches):
            for p in pairs:
                abnormal = self._upsampled_probabilities(layer_logits[:, :, 0, p], mask.shape[-1])
                probs = torch.stack([1.0 - abnormal[:, 0], abnormal[:, 0]], dim=1)
                focal.append(balanced_focal_loss(probs, mask))
                dice.append(foreground_dice_loss(abnormal[:, 0], mask))
        parts["focal"] = torch.stack(focal).sum() / len(pairs)
        parts["dice"] = torch.stack(dice).sum() / len(pairs)
        parts["kl"] = config.kl_weight * sum(samples.kl.values())
        parts["orthogonality"] = config.orthogonality_weight * (
            orthogonality_loss(text[:, 0, :, 0]) + orthogonality_loss(text[:, 0, :, 1]))
        total = torch.stack(list(parts.values())).sum()
        logged = {name: float(value.detach()) for name, value in parts.items()}
        logged.update({name: float(value.detach()) for name, value in samples.kl.items()})
        return total, logged

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Upstream ``train.py`` groups: prompts 1e-3, flow parameters and agnostic states 1e-3,
        logit scales 1e-2, encoders / RCA / image heads 1e-4."""
        config = self.config
        flows = [*self.image_specific_flow.parameters(), *self.normal_flow.parameters(),
                 *self.abnormal_flow.parameters()]
        linear = [*self.image_specific_encoder.parameters(),
                  *self.image_agnostic_encoder.parameters(), *self.rca.parameters(),
                  *self.class_mapping.parameters(), *self.image_mapping.parameters(),
                  *self.fusion.parameters()]
        return [
            {"params": [self.prompt_context, self.prompt_state_normal,
                        self.prompt_state_abnormal], "lr": config.lr_prompt},
            {"params": flows, "lr": config.lr_flow},
            {"params": [self.temperature_pixel, self.temperature_image],
             "lr": config.lr_temperature},
            {"params": linear, "lr": config.lr_linear},
        ]

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map an upstream ``{"MyModel": Context_Prompting.state_dict()}`` (``train.py``
        ``torch.save``; the bare state works too) to this method's trainable state:

        - ``prompt_context``, ``prompt_state_normal``, ``prompt_state_abnormal``,
          ``temperature_pixel``, ``temperature_image``, ``class_mapping.*``,
          ``image_mapping.*``: same names;
        - ``context_encoder.weight_mean.module.{i}.*`` / ``.weight_log_variance.module.{i}.*`` ->
          ``image_specific_encoder.mean.{i}.*`` / ``.log_variance.{i}.*``; ``state_encoder.*``
          likewise -> ``image_agnostic_encoder.*``;
        - ``PFL_context.amor_{u,w,b}.*`` -> ``image_specific_flow.amortize_{u,w,b}.*``;
        - ``PFL_{normal,abnormal}.amor_u`` [1, K, D, 1] / ``amor_w`` [1, K, 1, D] / ``amor_b``
          [1, K, 1, 1] / ``state`` [1, D] -> ``{normal,abnormal}_flow.u`` [K, D] / ``w`` / ``b``
          [K] / ``state`` [D];
        - ``RCA.q_proj_pre.weight`` [D, D, 1] (Conv1d) -> ``rca.query.weight`` [D, D] (+ bias);
          ``RCA.linear_proj.{i}.weight`` -> ``rca.patch_projections.{i}.weight``;
        - ``fuse.fuse_modules`` / ``compress`` / ``post_process`` -> ``fusion.fuse`` /
          ``compress`` / ``post``.

        Ignored: the never-trained decoders (``*decoder*``, ``PFL_*.p_mu.*``: their
        reconstruction loss is not part of the training loss) and the copies of the shared
        encoders under ``PFL_context.encoder`` / ``PFL_normal.encoder`` /
        ``PFL_abnormal.encoder`` (checked equal to ``context_encoder`` / ``state_encoder``).
        A missing or unknown key is a ValueError naming it."""
        state = obj.get("MyModel", obj) if isinstance(obj, Mapping) else None
        if not isinstance(state, Mapping):
            raise ValueError(f"a Bayes-PFL checkpoint is a dict {{'MyModel': state_dict}}, got "
                             f"{type(obj).__name__}")
        for key, value in state.items():
            if not isinstance(value, Tensor):
                raise ValueError(f"{key!r} is a {type(value).__name__}, not a tensor")
        converted: dict[str, Tensor] = {}
        unknown: list[str] = []
        for key, value in state.items():
            key = str(key)
            target = _upstream_target(key)
            if target is None:
                if not _upstream_ignored(key):
                    unknown.append(key)
                continue
            name, reshape = target
            converted[name] = reshape(value.detach().float()).clone()
        for copy, original in (("PFL_context.encoder.", "context_encoder."),
                               ("PFL_normal.encoder.", "state_encoder."),
                               ("PFL_abnormal.encoder.", "state_encoder.")):
            for key, value in state.items():
                if str(key).startswith(copy):
                    twin = original + str(key)[len(copy):]
                    if twin in state and not torch.equal(value, state[twin]):
                        raise ValueError(f"{key!r} differs from {twin!r}: upstream shares this "
                                         f"encoder, the file is inconsistent")
        required = {"prompt_context", "prompt_state_normal", "prompt_state_abnormal",
                    "temperature_pixel", "temperature_image", "class_mapping.weight",
                    "rca.query.weight", "image_specific_flow.amortize_u.weight",
                    "normal_flow.state", "abnormal_flow.state", "image_specific_encoder.mean.0"
                    ".weight", "image_agnostic_encoder.mean.0.weight", "fusion.fuse.weight"}
        missing = sorted(required - set(converted))
        if missing or unknown:
            raise ValueError(f"not a Bayes-PFL Context_Prompting state: missing {missing} (our "
                             f"names), unexpected {sorted(unknown)}")
        return converted


_DIRECT = {"prompt_context", "prompt_state_normal", "prompt_state_abnormal", "temperature_pixel",
           "temperature_image", "class_mapping.weight", "class_mapping.bias",
           "image_mapping.weight", "image_mapping.bias"}
_ENCODER = re.compile(r"(context|state)_encoder\.weight_(mean|log_variance)\.module\.(\d+)\."
                      r"(weight|bias)")
_AMORTIZED = re.compile(r"PFL_context\.amor_([uwb])\.(weight|bias)")
_AGNOSTIC = re.compile(r"PFL_(normal|abnormal)\.(amor_u|amor_w|amor_b|state)")
_RCA_PROJECTION = re.compile(r"RCA\.linear_proj\.(\d+)\.weight")
_FUSION = {"fuse_modules": "fuse", "compress": "compress", "post_process": "post"}
_FUSION_KEY = re.compile(r"fuse\.(fuse_modules|compress|post_process)\.(weight|bias)")
_IGNORED = re.compile(r"(context|state)_decoder\..*|PFL_(context|normal|abnormal)\."
                      r"(decoder|p_mu|encoder)\..*")


def _keep(x: Tensor) -> Tensor:
    return x


def _upstream_target(key: str) -> tuple[str, Any] | None:
    """Our name of upstream ``key`` and the reshape it needs, or None."""
    if key in _DIRECT:
        return key, _keep
    if m := _ENCODER.fullmatch(key):
        owner = "image_specific_encoder" if m.group(1) == "context" else "image_agnostic_encoder"
        head = "mean" if m.group(2) == "mean" else "log_variance"
        return f"{owner}.{head}.{m.group(3)}.{m.group(4)}", _keep
    if m := _AMORTIZED.fullmatch(key):
        return f"image_specific_flow.amortize_{m.group(1)}.{m.group(2)}", _keep
    if m := _AGNOSTIC.fullmatch(key):
        name = {"amor_u": "u", "amor_w": "w", "amor_b": "b", "state": "state"}[m.group(2)]
        flat = {"u": lambda x: x.reshape(x.shape[-3], x.shape[-2] * x.shape[-1]),
                "w": lambda x: x.reshape(x.shape[-3], x.shape[-2] * x.shape[-1]),
                "b": lambda x: x.reshape(-1), "state": lambda x: x.reshape(-1)}[name]
        return f"{m.group(1)}_flow.{name}", flat
    if key == "RCA.q_proj_pre.weight":
        return "rca.query.weight", lambda x: x.reshape(x.shape[0], -1)
    if key == "RCA.q_proj_pre.bias":
        return "rca.query.bias", _keep
    if m := _RCA_PROJECTION.fullmatch(key):
        return f"rca.patch_projections.{m.group(1)}.weight", _keep
    if m := _FUSION_KEY.fullmatch(key):
        return f"fusion.{_FUSION[m.group(1)]}.{m.group(2)}", _keep
    return None


def _upstream_ignored(key: str) -> bool:
    return _IGNORED.fullmatch(key) is not None
