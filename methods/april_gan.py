"""APRIL-GAN: trained linear maps from intermediate CLIP tokens to the text space (METHODS.md §4).

Chen et al., "A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 VAND
Workshop Challenge Tracks 1&2: 1st Place on Zero-shot AD and 4th Place on Few-shot AD", arXiv
2305.17382; reference code ``ByChelsea/VAND-APRIL-GAN`` (``train.py``, ``test.py``, ``model.py``,
``prompt_ensemble.py``).

- **Vision**: OpenAI CLIP ViT-L/14@336 at 518 px (``ViT-L-14-336-quickgelu``: the OpenAI
  weights need QuickGELU). The residual-stream tokens of blocks 6, 12, 18, 24 (before
  ``ln_post``, CLS removed) each go through their own trained ``Linear(vision_width, embed_dim)``.
- **Text**: the APRIL-GAN WinCLIP-style ensemble (7 normal / 5 anomalous states x 35 templates,
  every prompt embedding normalised, averaged, renormalised) for the image's class name
  (class-aware, as upstream); ``prompt_class_name`` fixes one word for all images instead.
- **Map** per layer: ``softmax(100 * [cos(p, t_n), cos(p, t_a)])`` of the projected patch tokens.
  Upstream upsamples the 100 x cos *logits* bilinearly (align_corners=True) to the input size and
  applies the softmax per pixel (``softmax_after_upsampling``, default, as the released
  checkpoints were trained that way); otherwise the per-patch probabilities are upsampled with the
  shared convention (align_corners=False). Pixel map = sum over layers (range [0, n_layers]);
  upstream ``test.py`` applies no Gaussian (``sigma`` 0).
- **Image score**: ``softmax(100 * cos)`` of the global embedding (``ln_post(CLS) @ proj``).
- **Loss** (``train.py``): sum over layers of ``focal(M_l, g) + dice(M_l[abnormal], g)``, no Dice on
  the normal channel; Adam lr 1e-3, betas (0.5, 0.999) (the trainer's settings).
- **Checkpoints**: upstream saves ``{"trainable_linearlayer": LinearLayer.state_dict()}`` with
  keys ``fc.{i}.weight`` / ``fc.{i}.bias``; :meth:`AprilGan.convert_upstream_checkpoint` maps them
  to ``patch_projections.{i}.*``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    CLIP_LOGIT_SCALE,
    gaussian_smooth,
    l2_normalize,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.losses import dice_loss, focal_loss
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import WINCLIP_APRIL_GAN, ClassTextCache, encode_ensemble
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

UPSTREAM_CHECKPOINT_KEY = "trainable_linearlayer"
_UPSTREAM_PARAM = re.compile(r"^fc\.(\d+)\.(weight|bias)$")


@dataclass
class AprilGanConfig(MethodConfig):
    """APRIL-GAN options; defaults follow ``ByChelsea/VAND-APRIL-GAN`` (train.sh, test.py)."""

    layers: tuple[int, ...] = option((6, 12, 18, 24), "vision blocks whose residual-stream "
                                                      "tokens are projected (--features_list)")
    prompt_class_name: str | None = option(
        None, "none = each image's class name in the prompts (class-aware, upstream); a word "
              "such as 'object' makes the prompts class-agnostic")
    softmax_after_upsampling: bool = option(
        True, "upsample the 100*cos logits bilinearly with align_corners=True and take the "
              "softmax per pixel (train.py/test.py); false: per-patch softmax, then the shared "
              "align_corners=False upsampling")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (test.py: none)")
    pos_embed_interpolation: str = option(
        "bicubic-antialias", "resize of the vision position embedding to the input's patch grid: "
                             "APRIL-GAN's bundled open_clip (open_clip/model.py resize_pos_embed, "
                             "called by create_model in open_clip/factory.py) uses bicubic, "
                             "antialias=True, align_corners=False; 'bilinear' is the AnomalyCLIP "
                             "convention")


@register_method
class AprilGan(AnomalyMethod):
    """Frozen CLIP + one trained linear projection per intermediate layer."""

    config_class = AprilGanConfig
    presets = {
        # ByChelsea/VAND-APRIL-GAN: train.sh/test_zero_shot.sh as released
        "upstream": {
            # train.py/test.py run under torch.cuda.amp.autocast() (a no-op on CPU upstream)
            "precision": "fp16",
            "pos_embed_interpolation": "bicubic-antialias",
            "input_interpolation": "bicubic",  # open_clip/transform.py: Resize BICUBIC
        },
    }
    info = MethodInfo(
        name="april_gan",
        title="APRIL-GAN",
        paper="Chen et al., A Zero-/Few-Shot Anomaly Classification and Segmentation Method for "
              "CVPR 2023 VAND Workshop Challenge Tracks 1&2, arXiv 2305.17382",
        trainable=True,
        code="https://github.com/ByChelsea/VAND-APRIL-GAN",
        license="see upstream repository",
        class_aware=True,
    )

    def __init__(self, config: AprilGanConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        backbone.check_layers(config.layers, "layers")
        if config.prompt_class_name is not None and not config.prompt_class_name.strip():
            raise ValueError("prompt_class_name must be none or a non-empty word")
        self.require_non_negative("sigma")
        self.layers = tuple(config.layers)
        self.patch_projections = nn.ModuleList(
            nn.Linear(backbone.vision_width, backbone.embed_dim, device=backbone.device)
            for _ in self.layers)
        self.text_cache = ClassTextCache(self.encode_class_text)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: AprilGanConfig) -> dict[str, Any]:
        return {**WINCLIP_APRIL_GAN.describe(),
                "class_name": config.prompt_class_name or "the image's class name",
                "averaging": "each prompt embedding normalised, averaged per state, renormalised"}

    def encode_class_text(self, class_name: str) -> Tensor:
        return encode_ensemble(self.backbone, WINCLIP_APRIL_GAN, class_name,
                               averaging="normalized")

    def class_text(self, class_names: Sequence[str], device: torch.device) -> Tensor:
        """``[B, 2, D]`` unit text embeddings for a batch."""
        if self.config.prompt_class_name is not None:
            class_names = [self.config.prompt_class_name] * len(class_names)
        return self.text_cache(class_names).to(device)

    # -- forward ---------------------------------------------------------------------------------
    def layer_probabilities(self, images: Tensor, text: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Global ``[B, 2]`` probabilities and, per layer, ``[B, 2, S, S]`` pixel probabilities."""
        with torch.no_grad():
            features = self.backbone.encode_image(images, layers=self.layers,
                                                  token_source="residual")
        global_probs = text_probabilities(features.global_embedding, text, 1.0 / CLIP_LOGIT_SCALE)
        size = images.shape[-1]
        maps = []
        for layer, projection in zip(self.layers, self.patch_projections, strict=True):
            tokens = projection(features.patch_tokens[layer].to(projection.weight.dtype))
            if self.config.softmax_after_upsampling:
                logits = CLIP_LOGIT_SCALE * torch.einsum(
                    "bnd,bcd->bnc", l2_normalize(tokens), l2_normalize(text))
                grid = tokens_to_grid(logits, self.backbone.grid_size)
                grid = nn.functional.interpolate(grid, size=(size, size), mode="bilinear",
                                                 align_corners=True)
                maps.append(grid.softmax(dim=1))
            else:
                probs = text_probabilities(tokens, text, 1.0 / CLIP_LOGIT_SCALE)
                maps.append(upsample(tokens_to_grid(probs, self.backbone.grid_size), size))
        return global_probs, maps

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        text = self.class_text(class_names, images.device)
        global_probs, maps = self.layer_probabilities(images, text)
        pixel_map = torch.stack([m[:, 1] for m in maps], dim=0).sum(dim=0)
        return Prediction(global_probs[:, 1], gaussian_smooth(pixel_map, self.config.sigma))

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images, masks = batch["image"], batch["mask"].float()
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} differs from the image size "
                             f"{tuple(images.shape[-2:])}")
        text = self.class_text(list(batch["class_name"]), images.device)
        _, maps = self.layer_probabilities(images, text)
        focal = sum(focal_loss(m, masks) for m in maps)
        dice = sum(dice_loss(m[:, 1], masks) for m in maps)
        total = focal + dice
        return total, {"focal": float(focal.detach()), "dice": float(dice.detach())}

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.patch_projections.parameters())}]

    # -- upstream checkpoints --------------------------------------------------------------------
    @classmethod
    def convert_upstream_checkpoint(cls, obj: Mapping[str, Any]) -> dict[str, Tensor]:
        """Map APRIL-GAN's ``{"trainable_linearlayer": {"fc.{i}.weight", "fc.{i}.bias"}}`` (or
        the inner state dict) to :meth:`trainable_state_dict` keys
        ``patch_projections.{i}.weight/bias``. Raises ``KeyError`` for missing or unexpected
        keys and ``ValueError`` for inconsistent shapes; the method's own
        :meth:`load_trainable_state_dict` then checks the shapes against its backbone."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"an APRIL-GAN checkpoint is a dict, got {type(obj).__name__}")
        state = obj.get(UPSTREAM_CHECKPOINT_KEY, obj)
        if not isinstance(state, Mapping):
            raise TypeError(f"checkpoint[{UPSTREAM_CHECKPOINT_KEY!r}] must be a state dict, got "
                            f"{type(state).__name__}")
        unexpected = sorted(k for k in state if not _UPSTREAM_PARAM.match(str(k)))
        if unexpected:
            raise KeyError(f"not an APRIL-GAN LinearLayer state dict: unexpected keys "
                           f"{unexpected[:5]} (expected {UPSTREAM_CHECKPOINT_KEY!r} -> "
                           f"fc.<i>.weight / fc.<i>.bias)")
        indices = sorted({int(_UPSTREAM_PARAM.match(k).group(1)) for k in state})
        if not indices:
            raise KeyError("the APRIL-GAN checkpoint holds no fc.<i> parameters")
        expected = {f"fc.{i}.{p}" for i in range(indices[-1] + 1) for p in ("weight", "bias")}
        missing = sorted(expected - set(state))
        if missing:
            raise KeyError(f"APRIL-GAN checkpoint is missing {missing[:5]}")
        converted: dict[str, Tensor] = {}
        weight_shape = None
        for index in range(indices[-1] + 1):
            weight, bias = state[f"fc.{index}.weight"], state[f"fc.{index}.bias"]
            if not (torch.is_tensor(weight) and torch.is_tensor(bias)):
                raise ValueError(f"fc.{index} parameters must be tensors")
            if weight.ndim != 2 or bias.shape != (weight.shape[0],):
                raise ValueError(f"fc.{index}: weight {tuple(weight.shape)} and bias "
                                 f"{tuple(bias.shape)} are not a Linear layer's")
            if weight_shape is not None and weight.shape != weight_shape:
                raise ValueError(f"fc.{index}.weight has shape {tuple(weight.shape)}, fc.0 has "
                                 f"{tuple(weight_shape)}")
            weight_shape = weight.shape
            converted[f"patch_projections.{index}.weight"] = weight.detach().float().clone()
            converted[f"patch_projections.{index}.bias"] = bias.detach().float().clone()
        return converted
