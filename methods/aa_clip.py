"""AA-CLIP: anomaly-aware CLIP through two-stage residual adaptation.

Ma et al., "AA-CLIP: Enhancing Zero-shot Anomaly Detection via Anomaly-Aware CLIP", CVPR 2025,
arXiv:2503.06661; reference code ``Mwxinnn/AA-CLIP`` (commit 53db195: ``train.py``, ``test.py``,
``forward_utils.py``, ``model/adapter.py``, ``model/adapter_modules.py``,
``model/transformer.py``, ``dataset/constants.py``). Facts below are read from that code.

- **Residual adapters** (``model/adapter.py``): after each of the first K blocks of a tower a
  bias-free ``Linear(width, width)`` + LeakyReLU gives ``a``; ``a`` is rescaled to the norm of
  the block output ``x`` (per token) and mixed in, ``x <- w a + (1 - w) x`` with ``w = 0.1``.
  Text: K = 3; vision: K = 6. The text tower's CLIP projection is replaced by a trained bias-free
  ``Linear(text_width, embed_dim)`` + LeakyReLU on the ``ln_final`` EOT token.
- **Anchors**: per class, 6 normal prompts ("{}", "a {}", "the {}" x "{}." / "a photo of {}.")
  and 10 anomalous ones ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect",
  "a {} with damage" x the same templates), each embedding L2-normalised, averaged per side and
  renormalised (``forward_utils.get_adapted_single_class_text_embedding``): ``[2, D]`` anchors.
- **Stage 1** (text adapters only, lr 1e-5, 5 epochs): frozen patch features of layers 6, 12,
  18, 24 from a "surgery" CLIP whose blocks 6..24 use V-V attention instead of q-k attention
  (MLP kept; ``model/transformer.py`` ``DAPM_replace``), ``ln_post(x) @ proj``, normalised, plus
  the normalised plain CLIP image embedding; map = softmax over (normal, anomalous) of
  ``100 x (feature . anchor)`` bilinearly upsampled (align_corners) to the mask; loss = focal +
  2 Dice (``zsbench.losses.segmentation_loss``) + 0.1 x disentangle loss, the square of the
  batch mean of ``<anchor_normal, anchor_anomalous>``.
- **Stage 2** (vision adapters and projections only, anchors frozen, lr 5e-4): vision adapters
  after blocks 1..6 of the plain CLIP; for each level l in (6, 12, 18, 24),
  ``normalize(Linear_l(ln_post(tokens_l)))`` (bias-free ``Linear(vision_width, embed_dim)``
  replacing CLIP's ``proj``); a detection feature = mean over patches of
  ``normalize(Linear_det(ln_post(tokens_24)))``. Loss = cross-entropy of the raw cosines
  ``det . anchors`` + the sum over levels of the stage-1 segmentation loss.
- **Scores** (``test.py``): per level ``(s_a + 1 - s_n) / 2`` of the scaled similarities, a
  Gaussian blur on the patch grid (kernel 7, sigma 1 industrial; 9 and 1.5 medical), bilinear
  upsampling (align_corners), summed over levels. Here each level's map is
  ``(cos_a - cos_n + 1) / 2`` and the levels are averaged: an increasing affine function of
  upstream's map (same pixel ranking) in [0, 1]. Image score = ``map_weight x max(map) +
  (1 - map_weight) x (det . anchor_a + 1) / 2``.

Stages: the trainer calls :meth:`AAClip.start_epoch` before every epoch; epochs
``1..stage1_epochs`` train the text adapters (stage 1), the rest the vision adapters (stage 2).
:meth:`parameter_groups` always returns both groups (text at ``text_lr``, vision at
``image_lr``); the stage's loss gives the other group no gradient, which Adam skips.

Upstream quirks (flags; the ``upstream`` preset sets them as the code has them):
``stage1_last_level_only`` (the stage-1 loop overwrites its loss, so only layer 24 trains the
text adapters), ``surgery_attention_across_batch`` (the surgery attention runs on LND tensors as
if they were batch-first, so V-V attention mixes the images of a batch at each token position),
``class_descriptions`` (hand-written per-class descriptions replace the class names).

Upstream builds the OpenAI weights with nn.GELU (its ``ViT-L-14-336.json`` has no
``quick_gelu``): the ``upstream`` preset sets the shared ``mlp_activation="gelu"``. Not
reproduced: the training-time
augmentation of ``dataset/__init__.py`` (rotation, translation, flips, colour jitter); per-stage
batch sizes (16 and 2 upstream; the trainer has one); the stage-2 ``MultiStepLR`` (halving at
16k and 32k steps); the per-category min-max normalisation of maps and image scores before the
image-score fusion (``forward_utils.metrics_eval``), which needs the whole category. The grid
blur is ``zsbench.anomaly_maps.gaussian_smooth`` (scipy's edge-including reflection); kornia's
``gaussian_blur2d`` upstream reflects without the edge, which differs on the outer patches only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    CLIP_LOGIT_SCALE,
    gaussian_smooth,
    l2_normalize,
    tokens_to_grid,
    upsample,
)
from zsbench.backbone import Backbone
from zsbench.backbone.hooks import BlockHooks
from zsbench.errors import ConfigError
from zsbench.losses import image_cross_entropy, segmentation_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import ClassTextCache, PromptEnsemble, _has_causal_text_mask
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

# -- prompts (dataset/constants.py PROMPTS) -------------------------------------------------------

NORMAL_STATES = ("{}", "a {}", "the {}")
ANOMALOUS_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect",
                    "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")
PROMPTS = PromptEnsemble(NORMAL_STATES, ANOMALOUS_STATES, TEMPLATES)

#: dataset/constants.py REAL_NAMES: the words upstream puts in the prompts instead of the class
#: name, keyed by class name (lower case, "_" and "-" as spaces; see :func:`class_key`)
UPSTREAM_CLASS_DESCRIPTIONS: dict[str, str] = {
    # MVTec AD
    "bottle": "dark bottle", "cable": "top view of three cables",
    "capsule": "black and orange capsule", "carpet": "gray carpet",
    "grid": "metal or plastic mesh", "hazelnut": "single brown hazelnut",
    "leather": "brown leather", "metal nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
    "screw": "screw", "tile": "speckled tile surface",
    "transistor": "a three-legged transistor placed vertically",
    "toothbrush": "toothbrush head", "wood": "wood surface", "zipper": "a black zipper",
    # VisA
    "candle": "candle", "pcb3": "infrared sensor pcb module", "capsules": "capsules",
    "pipe fryum": "pipe-shaped fryum", "pcb4": "battery charging pcb module",
    "macaroni2": "scattered yellow macaroni", "pcb2": "integrated circuits board",
    "chewinggum": "chewing gum", "macaroni1": "orange macaroni", "cashew": "cashew nut",
    "fryum": "wheel-shaped fryum snack", "pcb1": "dual ultrasonic distance sensor pcb module",
    # MPDD
    "connector": "metal clamps with black adjustment knobs",
    "tubes": "scattered metal objects",
    "metal plate": "blue rectangular metal plate with a notch on one side",
    "bracket white": "white, elongated triangular metal bracket with a smooth, matte finish",
    "bracket brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple "
                     "mounting holes along its arms",
    "bracket black": "black ornamental metal bracket with spiral design attached to a "
                     "rectangular frame",
    # BTAD
    "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background,"
          " resembling a stylized wave or energy field radiating outward.",
    "02": "vertical fabric lines in warm, dusty pink and beige tones",
    "03": "oval concentric circular rings in gradient shades of blue and white",
    # medical
    "brain": "scan", "liver": "scan", "retina": "scan",
    "colon clinicdb": "colon endoscopy image", "colon colondb": "colon endoscopy image",
    "kvasir": "colon endoscopy image", "cvc 300": "colon endoscopy image",
}


def class_key(name: str) -> str:
    """A class name as :data:`UPSTREAM_CLASS_DESCRIPTIONS` keys it."""
    return name.strip().lower().replace("_", " ").replace("-", " ")


# -- config ---------------------------------------------------------------------------------------

@dataclass
class AAClipConfig(MethodConfig):
    """AA-CLIP options; defaults follow ``Mwxinnn/AA-CLIP`` train.py/test.py."""

    pos_embed_interpolation: str = option(
        "bicubic-antialias", "resize of the vision position embedding: upstream resizes it once "
                             "with open_clip's resize_pos_embed (model/model.py: bicubic, "
                             "antialias) when it builds the model at 518 px")
    stage1_epochs: int = option(
        5, "trainer epochs 1..stage1_epochs train the text adapters (stage 1), later epochs the "
           "vision adapters (stage 2) (train.py --text_epoch 5, --image_epoch 20; the released "
           "log evaluates stage-2 epoch 15, i.e. 20 epochs in all). Clamped to epochs - 1 so "
           "that stage 2 always runs")
    text_lr: float = option(1e-5, "Adam learning rate of stage 1 (train.py --text_lr)")
    image_lr: float = option(5e-4, "Adam learning rate of stage 2 (train.py --image_lr)")
    text_adapter_layers: int = option(
        3, "text residual adapters after text blocks 1..n (train.py --text_adapt_until 3)")
    image_adapter_layers: int = option(
        6, "vision residual adapters after vision blocks 1..n (train.py --image_adapt_until 6)")
    text_adapter_weight: float = option(
        0.1, "weight w of a text adapter: x <- w a + (1 - w) x (train.py --text_adapt_weight)")
    image_adapter_weight: float = option(
        0.1, "weight w of a vision adapter (train.py --image_adapt_weight)")
    levels: tuple[int, ...] = option(
        (6, 12, 18, 24), "vision blocks whose patch tokens give maps (model/adapter.py levels)")
    projection_relu: bool = option(
        False, "LeakyReLU after the vision projections (train.py/test.py --relu, off in "
               "scripts.sh); the text projection always has it")
    disentangle_weight: float = option(
        0.1, "weight of the stage-1 disentangle loss (train.py --text_norm_weight)")
    logit_scale: float = option(
        CLIP_LOGIT_SCALE, "scale of the patch-anchor similarities before the softmax of the "
                          "training maps (forward_utils.calculate_similarity_map: 100)")
    image_logit_scale: float = option(
        1.0, "scale of the detection feature's similarities in the stage-2 cross-entropy "
             "(train.py: unscaled cosines)")
    surgery_from: int = option(
        6, "stage 1: first vision block whose attention is V-V attention in the surgery CLIP "
           "(train.py --surgery_until_layer 20: DAPM_replace swaps the last 19 blocks)")
    grid_sigma: float = option(
        1.0, "sigma (in patches) of the Gaussian blur of each level's map on the patch grid "
             "(forward_utils.calculate_similarity_map: 1 industrial, 1.5 medical); 0 = none")
    grid_kernel_size: int = option(
        7, "kernel size of that blur (7 industrial, 9 medical); odd")
    map_weight: float = option(
        0.5, "image score = map_weight x max(map) + (1 - map_weight) x detection score "
             "(forward_utils.metrics_eval: 0.5 industrial, 1 (map maximum only) medical)")
    stage1_last_level_only: bool = option(
        False, "upstream quirk: the stage-1 loss is that of layer 24 only (train.py "
               "train_text_adapter assigns loss = ... inside the loop over the levels, "
               "overwriting the earlier levels); false = sum over the levels")
    surgery_attention_across_batch: bool = option(
        False, "upstream quirk: the surgery V-V attention mixes the images of the batch at each "
               "token position instead of the tokens of each image (model/transformer.py "
               "Attention.forward reads its [tokens, batch, width] input as batch-first)")
    class_descriptions: bool = option(
        False, "upstream: hand-written descriptions of the known MVTec AD, VisA, MPDD, BTAD and "
               "medical classes replace the class name in the prompts (dataset/constants.py "
               "REAL_NAMES); other names are used as they are")


# -- adapters -------------------------------------------------------------------------------------

def residual_adapt(x: Tensor, linear: nn.Linear, weight: float) -> Tensor:
    """``w a + (1 - w) x`` with ``a = LeakyReLU(linear(x))`` rescaled to ``x``'s norm per token
    (``model/adapter.py``)."""
    a = F.leaky_relu(linear(x))
    a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return weight * a + (1.0 - weight) * x


def _linears(count: int, width_in: int, width_out: int) -> nn.ModuleList:
    layers = nn.ModuleList(nn.Linear(width_in, width_out, bias=False) for _ in range(count))
    for layer in layers:
        nn.init.xavier_uniform_(layer.weight)  # model/adapter.py _init_weights_
    return layers


@register_method
class AAClip(AnomalyMethod):
    """Anomaly-aware text anchors (stage 1), then patch features aligned to them (stage 2)."""

    config_class = AAClipConfig
    # train.py: 5 text epochs, then the image stage evaluated at its epoch 15 (results/test.log)
    training_defaults = {"epochs": 20}
    presets = {
        # Mwxinnn/AA-CLIP commit 53db195, scripts.sh defaults, industrial domain
        "upstream": {
            "stage1_last_level_only": True,
            "surgery_attention_across_batch": True,
            "class_descriptions": True,
            "mlp_activation": "gelu",  # model config ViT-L-14-336.json without quick_gelu
            "pos_embed_interpolation": "bicubic-antialias",  # model/model.py resize_pos_embed
            "input_interpolation": "bicubic",  # dataset/__init__.py: Resize(BICUBIC)
        },
    }
    info = MethodInfo(
        name="aa_clip",
        title="AA-CLIP (anomaly-aware CLIP)",
        paper="Ma et al., AA-CLIP: Enhancing Zero-shot Anomaly Detection via Anomaly-Aware CLIP, "
              "CVPR 2025",
        trainable=True,
        code="https://github.com/Mwxinnn/AA-CLIP",
        license="Apache-2.0",
        class_aware=True,
    )

    def __init__(self, config: AAClipConfig, backbone: Backbone):
        super().__init__(config, backbone)
        self._check_config(config, backbone)
        self.levels = backbone.check_layers(config.levels, "levels")
        text_width, vision_width = backbone.text_width, backbone.vision_width
        embed_dim = backbone.embed_dim
        self.text_adapters = _linears(config.text_adapter_layers, text_width, text_width)
        self.text_projection = _linears(1, text_width, embed_dim)[0]
        self.image_adapters = _linears(config.image_adapter_layers, vision_width, vision_width)
        self.seg_projections = _linears(len(self.levels), vision_width, embed_dim)
        self.det_projection = _linears(1, vision_width, embed_dim)[0]
        self.to(backbone.device)
        self.stage = 1
        self._anchor_cache: tuple[tuple[int, ...], ClassTextCache] | None = None

    def _check_config(self, config: AAClipConfig, backbone: Backbone) -> None:
        for name, upper in (("text_adapter_layers", backbone.text_layers),
                            ("image_adapter_layers", backbone.vision_layers)):
            value = getattr(config, name)
            if not 0 <= value <= upper:
                raise ConfigError(f"{name} must lie in 0..{upper}, got {value}")
        for name in ("text_adapter_weight", "image_adapter_weight", "map_weight"):
            value = getattr(config, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        for name in ("text_lr", "image_lr", "logit_scale", "image_logit_scale"):
            if getattr(config, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")
        self.require_non_negative("stage1_epochs", "disentangle_weight", "grid_sigma")
        if config.grid_kernel_size < 1 or config.grid_kernel_size % 2 == 0:
            raise ConfigError(f"grid_kernel_size must be a positive odd number, got "
                              f"{config.grid_kernel_size}")
        if not 1 <= config.surgery_from <= backbone.vision_layers:
            raise ConfigError(f"surgery_from must lie in 1..{backbone.vision_layers}, got "
                              f"{config.surgery_from}")

    # -- stages ----------------------------------------------------------------------------------
    def stage_of(self, epoch: int, epochs: int) -> int:
        """1 for the text stage, 2 for the vision stage, of trainer epoch ``epoch`` of
        ``epochs`` (1-indexed)."""
        return 1 if epoch <= self.stage1_epochs(epochs) else 2

    def stage1_epochs(self, epochs: int) -> int:
        """Text-stage epochs of a run of ``epochs``: ``stage1_epochs``, at most ``epochs - 1``."""
        return max(0, min(self.config.stage1_epochs, epochs - 1))

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self.stage1_epochs(epochs) < self.config.stage1_epochs and epoch == 1:
            logger.warning("aa_clip: %d epochs leave %d for stage 1 (stage1_epochs=%d) so that "
                           "stage 2 runs", epochs, self.stage1_epochs(epochs),
                           self.config.stage1_epochs)
        stage = self.stage_of(epoch, epochs)
        if stage != self.stage:
            logger.info("aa_clip: epoch %d/%d trains stage %d", epoch, epochs, stage)
        self.stage = stage

    def text_parameters(self) -> list[nn.Parameter]:
        return [*self.text_adapters.parameters(), *self.text_projection.parameters()]

    def image_parameters(self) -> list[nn.Parameter]:
        return [*self.image_adapters.parameters(), *self.seg_projections.parameters(),
                *self.det_projection.parameters()]

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.text_parameters(), "lr": self.config.text_lr},
                {"params": self.image_parameters(), "lr": self.config.image_lr}]

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: AAClipConfig) -> dict[str, Any]:
        normal, anomalous = PROMPTS.prompts("{}")
        described: dict[str, Any] = {
            "normal": normal, "anomalous": anomalous,
            "averaging": "each prompt embedding L2-normalised, averaged per side, renormalised",
            "class_name": "the class name",
        }
        if config.class_descriptions:
            described["class_name"] = ("the upstream description of a known class "
                                       "(dataset/constants.py REAL_NAMES), else the class name")
            described["class_descriptions"] = dict(UPSTREAM_CLASS_DESCRIPTIONS)
        return described

    def prompt_word(self, class_name: str) -> str:
        if self.config.class_descriptions:
            return UPSTREAM_CLASS_DESCRIPTIONS.get(class_key(class_name), class_name)
        return class_name

    # -- text ------------------------------------------------------------------------------------
    def _text_hooks(self) -> BlockHooks:
        weight = self.config.text_adapter_weight

        def adapt(layer: int, hidden: Tensor) -> Tensor | None:
            if layer > len(self.text_adapters):
                return None
            return residual_adapt(hidden, self.text_adapters[layer - 1], weight)

        return BlockHooks(after=adapt)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Adapted text embeddings ``[P, embed_dim]`` (unnormalised) of plain strings."""
        ids = self.backbone.tokenize(list(texts))
        if _has_causal_text_mask(self.backbone):  # positions after the EOT change nothing
            ids = ids[:, :int(ids.argmax(dim=-1).max()) + 1]
        eye = torch.eye(self.backbone.text_width, device=ids.device)
        pooled = self.backbone.encode_text(ids, hooks=self._text_hooks(), text_projection=eye)
        return F.leaky_relu(self.text_projection(pooled))

    def anchors(self, class_names: Sequence[str]) -> Tensor:
        """Unit anchors ``[C, 2, D]`` (normal, anomalous) of each class of ``class_names``."""
        prompts = [PROMPTS.prompts(self.prompt_word(name)) for name in class_names]
        texts = [p for normal, anomalous in prompts for p in (*normal, *anomalous)]
        embeddings = l2_normalize(self.encode_texts(texts))
        out, start = [], 0
        for normal, anomalous in prompts:
            sides = []
            for count in (len(normal), len(anomalous)):
                sides.append(l2_normalize(embeddings[start:start + count].mean(dim=0)))
                start += count
            out.append(torch.stack(sides))
        return torch.stack(out)

    def frozen_anchors(self, class_names: Sequence[str]) -> Tensor:
        """Per-image anchors ``[B, 2, D]`` without gradient, cached per class until the text
        parameters change."""
        key = tuple(v for p in self.text_parameters() for v in (p.data_ptr(), p._version))
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            self._anchor_cache = (key, ClassTextCache(lambda name: self.anchors([name])[0]))
        return self._anchor_cache[1](list(class_names))

    # -- vision ----------------------------------------------------------------------------------
    def _image_hooks(self) -> BlockHooks:
        weight = self.config.image_adapter_weight

        def adapt(layer: int, hidden: Tensor) -> Tensor | None:
            if layer > len(self.image_adapters):
                return None
            return residual_adapt(hidden, self.image_adapters[layer - 1], weight)

        return BlockHooks(after=adapt)

    def _project(self, linear: nn.Linear, tokens: Tensor) -> Tensor:
        out = linear(self.backbone.ln_post(tokens))
        return l2_normalize(F.leaky_relu(out) if self.config.projection_relu else out)

    def adapted_features(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Stage-2 features: unit patch features ``[B, N, D]`` per level and the detection
        feature ``[B, D]`` (mean of unit vectors, not renormalised)."""
        tokens = self.backbone.encode_image(images, layers=self.levels, token_source="residual",
                                            hooks=self._image_hooks()).patch_tokens
        patches = [self._project(self.seg_projections[i], tokens[layer])
                   for i, layer in enumerate(self.levels)]
        detection = self._project(self.det_projection, tokens[self.levels[-1]]).mean(dim=1)
        return patches, detection

    def _surgery_hooks(self) -> BlockHooks:
        """Blocks from ``surgery_from`` on with V-V attention instead of q-k attention, MLP kept
        (``DAPM_replace``): a ``replace`` hook runs them from the blocks' own weights."""
        first, across = self.config.surgery_from, self.config.surgery_attention_across_batch

        def surgery(layer: int, block: nn.Module, x: Tensor, attn_mask: Tensor | None
                    ) -> Tensor | None:
            if layer < first:
                return None
            normed = block.ln_1(x)
            if across:  # [B, T, W] read as [T, B, W]: attention over the batch
                vv = Backbone.vv_attention(block, normed.transpose(0, 1)).transpose(0, 1)
            else:
                vv = Backbone.vv_attention(block, normed)
            x = x + vv
            return x + block.ls_2(block.mlp(block.ln_2(x)))

        return BlockHooks(replace=surgery)

    def surgery_features(self, images: Tensor) -> list[Tensor]:
        """Stage-1 features per level: unit surgery patch features ``ln_post(x) @ proj`` plus
        the unit CLIP image embedding, ``[B, N, D]`` (not renormalised, as train.py)."""
        with torch.no_grad():
            tokens = self.backbone.encode_image(images, layers=self.levels,
                                                hooks=self._surgery_hooks()).patch_tokens
            image = l2_normalize(self.backbone.encode_image(images).global_embedding)
        return [l2_normalize(tokens[layer]) + image[:, None] for layer in self.levels]

    # -- maps and scores ---------------------------------------------------------------------------
    def training_map(self, features: Tensor, anchors: Tensor, grid: tuple[int, int], size: int
                     ) -> Tensor:
        """``[B, 2, size, size]`` softmax of the upsampled scaled similarities
        (``calculate_similarity_map``, training branch)."""
        logits = self.config.logit_scale * torch.einsum("bnd,bcd->bnc", features, anchors)
        logits = upsample(tokens_to_grid(logits, grid), size, align_corners=True)
        return logits.softmax(dim=1)

    def level_map(self, features: Tensor, anchors: Tensor, grid: tuple[int, int], size: int
                  ) -> Tensor:
        """``[B, size, size]`` map of one level in [0, 1]: ``(cos_a - cos_n + 1) / 2`` blurred on
        the patch grid, then upsampled (``calculate_similarity_map``, test branch)."""
        cos = torch.einsum("bnd,bcd->bnc", features, anchors)
        scores = tokens_to_grid((cos[..., 1] - cos[..., 0] + 1.0) / 2.0, grid)
        sigma = self.config.grid_sigma
        if sigma > 0:
            truncate = (self.config.grid_kernel_size // 2) / sigma  # radius = kernel // 2
            scores = gaussian_smooth(scores, sigma, truncate=truncate)
        return upsample(scores, size, align_corners=True)

    def _predict(self, images: Tensor, class_names: list[str]) -> Prediction:
        anchors = self.frozen_anchors(class_names)
        patches, detection = self.adapted_features(images)
        grid, size = self.backbone.patch_grid(images), images.shape[-1]
        maps = torch.stack([self.level_map(f, anchors, grid, size) for f in patches]).mean(0)
        detection_score = (torch.einsum("bd,bd->b", detection, anchors[:, 1]) + 1.0) / 2.0
        weight = self.config.map_weight
        scores = weight * maps.flatten(1).amax(dim=1) + (1.0 - weight) * detection_score
        return Prediction(scores, maps)

    # -- loss ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images, mask = batch["image"], batch["mask"].float()
        names = list(batch["class_name"])
        grid, size = self.backbone.patch_grid(images), mask.shape[-1]
        if self.stage == 1:
            parts = self._text_stage_loss(images, mask, names, grid, size)
        else:
            parts = self._image_stage_loss(images, mask, batch["label"].long(), names, grid,
                                           size)
        total = torch.stack(list(parts.values())).sum()
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def _text_stage_loss(self, images: Tensor, mask: Tensor, names: list[str],
                         grid: tuple[int, int], size: int) -> dict[str, Tensor]:
        classes = sorted(set(names))
        per_class = self.anchors(classes)
        anchors = per_class[torch.tensor([classes.index(n) for n in names],
                                         device=per_class.device)]
        features = self.surgery_features(images)
        levels = list(zip(self.levels, features, strict=True))
        if self.config.stage1_last_level_only:
            levels = levels[-1:]
        parts = {f"stage1_seg_layer{layer}": segmentation_loss(
            self.training_map(f, anchors, grid, size), mask) for layer, f in levels}
        cosine = (anchors[:, 0] * anchors[:, 1]).sum(dim=-1).mean()
        parts["stage1_disentangle"] = self.config.disentangle_weight * cosine.pow(2)
        return parts

    def _image_stage_loss(self, images: Tensor, mask: Tensor, labels: Tensor, names: list[str],
                          grid: tuple[int, int], size: int) -> dict[str, Tensor]:
        anchors = self.frozen_anchors(names)
        patches, detection = self.adapted_features(images)
        logits = self.config.image_logit_scale * torch.einsum("bd,bcd->bc", detection, anchors)
        parts = {"stage2_image_ce": image_cross_entropy(logits, labels)}
        for layer, features in zip(self.levels, patches, strict=True):
            parts[f"stage2_seg_layer{layer}"] = segmentation_loss(
                self.training_map(features, anchors, grid, size), mask)
        return parts

    # -- released checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Map upstream adapters to this method's trainable state.

        Upstream saves two files (``train.py``): ``text_adapter.pth`` = ``{"epoch",
        "text_adapter", "text_optimizer"}`` and ``image_adapter_{N}.pth`` = ``{"epoch",
        "image_adapter", "image_optimizer"}``. Merge them into one file first, e.g.
        ``torch.save({**torch.load(text), **torch.load(image)}, "aa_clip.pth")``; the epochs
        and optimizer states are ignored. Key mapping:

        - ``text_adapter.{i}.fc.0.weight`` (i < last) -> ``text_adapters.{i}.weight``; the last
          entry (the text projection) -> ``text_projection.weight``;
        - ``image_adapter.layer_adapters.{i}.fc.0.weight`` -> ``image_adapters.{i}.weight``;
        - ``image_adapter.seg_proj.{j}.fc[.0].weight`` -> ``seg_projections.{j}.weight`` and
          ``image_adapter.det_proj.fc[.0].weight`` -> ``det_projection.weight`` (``fc.0`` when
          trained with ``--relu``: build the method with ``projection_relu`` true).

        Any other key is a ValueError naming it; counts and shapes are checked on loading."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"an AA-CLIP checkpoint is a dict with 'text_adapter' and "
                             f"'image_adapter', got {type(obj).__name__}")
        missing = [k for k in ("text_adapter", "image_adapter") if k not in obj]
        if missing:
            hint = (" (merge upstream's text_adapter.pth and image_adapter_N.pth into one file)"
                    if len(missing) == 1 else "")
            raise ValueError(f"not an AA-CLIP checkpoint: missing {missing}{hint}")
        unknown = sorted(str(k) for k in obj if k not in (
            "text_adapter", "image_adapter", "epoch", "text_optimizer", "image_optimizer"))
        if unknown:
            raise ValueError(f"not an AA-CLIP checkpoint: unexpected keys {unknown}")
        text, image = obj["text_adapter"], obj["image_adapter"]
        for name, state in (("text_adapter", text), ("image_adapter", image)):
            if not isinstance(state, Mapping):
                raise ValueError(f"{name!r} is a {type(state).__name__}, not a state dict")
        converted: dict[str, Tensor] = {}
        indices = sorted(_upstream_index(k, "text_adapter") for k in text)
        if not indices or indices != list(range(len(indices))):
            raise ValueError(f"'text_adapter' keys must be 0.fc.0.weight .. n.fc.0.weight, got "
                             f"{sorted(text)}")
        for i in indices:
            ours = ("text_projection.weight" if i == indices[-1]
                    else f"text_adapters.{i}.weight")
            converted[ours] = _tensor(text, f"{i}.fc.0.weight", "text_adapter")
        for key in image:
            converted[_upstream_image_key(str(key))] = _tensor(image, key, "image_adapter")
        return converted


def _upstream_index(key: Any, part: str) -> int:
    pieces = str(key).split(".")
    if len(pieces) != 4 or not pieces[0].isdigit() or pieces[1:] != ["fc", "0", "weight"]:
        raise ValueError(f"unexpected key {part}.{key}")
    return int(pieces[0])


def _upstream_image_key(key: str) -> str:
    pieces = key.split(".")
    if (len(pieces) == 5 and pieces[0] == "layer_adapters" and pieces[1].isdigit()
            and pieces[2:] == ["fc", "0", "weight"]):
        return f"image_adapters.{int(pieces[1])}.weight"
    tail = pieces[2:] if pieces[0] == "seg_proj" else pieces[1:]
    if tail in (["fc", "weight"], ["fc", "0", "weight"]):
        if pieces[0] == "seg_proj" and len(pieces) > 1 and pieces[1].isdigit():
            return f"seg_projections.{int(pieces[1])}.weight"
        if pieces[0] == "det_proj":
            return "det_projection.weight"
    raise ValueError(f"unexpected key image_adapter.{key}")


def _tensor(state: Mapping[Any, Any], key: Any, part: str) -> Tensor:
    value = state[key]
    if not isinstance(value, Tensor):
        raise ValueError(f"'{part}.{key}' is a {type(value).__name__}, not a tensor")
    return value.float().clone()
