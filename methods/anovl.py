"""AnoVL: V-V attention, domain-aware prompts and test-time adaptation (METHODS.md §4).

Deng et al., "AnoVL: Adapting Vision-Language Models for Unified Zero-shot Anomaly Localization",
arXiv 2308.15939, 2023; reference code ``hq-deng/AnoVL`` (``vl_test.py``, ``model.py``,
``prompt_ensemble.py``, ``utils.py``).

- **Vision**: V-V attention on every block (``vv_from=1``); patch tokens of the last block from
  the V-V stream, projected (``ln_post(token) @ proj``); the global embedding from the original
  path. Upstream: ViT-B-16-plus-240, ``laion400m_e32``, 240 px.
- **Domain-aware prompts**: a class name in ``texture_classes`` (MVTec's carpet, leather, grid,
  tile, wood by default; case and ``_`` ignored) uses the texture templates ("industrial photo",
  "textural photo", "surface picture"), every other class the object templates ("industrial
  photo", "industrial image", "manufacturing image"): 66 templates x 7 normal / 7 anomalous
  states, unnormalised embeddings averaged and normalised (``prompt_ensemble.py``).
- **Views**: the image and its ``augmentations``. Image score = mean over all views of ``P_abn``
  of the global embedding. By default the views are flips and 90-degree rotations, whose patch
  grids are mapped back to the image's orientation and also feed the adaptation and the map;
  upstream (``utils.py: aug``) scores the image and 21 augmentations (8 small rotations,
  8 translations, a horizontal flip, a grey copy, 3 quarter turns: 22 views) and computes the map
  from the image alone (``map_from_image_only``).
- **Test-time adaptation** (``predict`` only): an adapter ``A`` is trained for ``tta_steps`` AdamW
  steps (lr 1e-3) on the patch features z of the image (or of all views) with the unsupervised
  objective of ``vl_test.py: loss_func``: features perturbed by Gaussian noise (std
  ``tta_noise_std``, upstream 0.05 x 1.1) act as pseudo-anomalies,
  ``L = mean H(p(A z)) + 0.5 mean[-log p_abn(A(z + eps)) - log p_norm(A z)]``
  (entropy minimisation on the clean features plus pseudo-labels: clean normal, noisy abnormal).
- **Map**: ``P_abn`` of ``A z`` per patch, averaged over the views that feed the map, a 3 x 3 mean
  filter on the patch grid with replicated borders (``patch_mean_filter``, as upstream), bilinear
  upsampling (``map_align_corners``); no Gaussian by default (upstream's is commented out).

Defaults and upstream (``presets["upstream"]``, ``vl_test.py`` as run by ``test_zero_shot.sh``
for MVTec AD; every difference is a flag):

========================  ==========================================  ============================
option                    default (zsbench)                           upstream
========================  ==========================================  ============================
input_interpolation       bicubic                                     bilinear (torchvision Resize)
map_align_corners         False                                       True
augmentations             hflip, vflip, rot90/180/270 (6 views)       ``UPSTREAM_AUGMENTATIONS``
map_from_image_only       False (TTA and map average the views)       True
tta_adapter               identity_linear: D x D, identity init       text_adapter: TextAdapter,
                                                                      random init per image
tta_noise_on_unnorm...    False (unit tokens)                         True (projected tokens)
tta_optimizer_per_class   False (fresh AdamW per image)               True (one AdamW per class)
softmax_without_logit...  False (CLIP's 100)                          True (raw cosines)
========================  ==========================================  ============================

With ``tta_optimizer_per_class`` the method is stateful: the result of an image depends on the
images of its class scored before it, so on the image order (the evaluator's is fixed: categories
sorted, images in dataset order, ``--limit`` subsets seeded). The state is keyed by class name and
cleared by :meth:`AnoVL.reset_tta_state`, :meth:`AnoVL.start_category` and whenever the method is
put in eval mode (the evaluator does so at the start of every dataset).

Random numbers: the adapter's random init (``text_adapter``) and the noise come from a generator
seeded with ``seed`` for every image. Upstream draws both from the global torch stream seeded
once per script (also consumed by ``aug``'s shuffle), which no other program can replay.
Upstream's quarter turns go through kornia's bilinear ``rotate`` (cos 90 deg ~ 4e-8 in float32);
here they are exact ``torch.rot90``. Upstream ``vis_test.py`` (VisA) differs again (an aspect-
preserving resize with two overlapping crops, the ``Adapter`` class): not covered by the preset.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsbench.anomaly_maps import (
    CLIP_LOGIT_SCALE,
    gaussian_smooth,
    l2_normalize,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.errors import ConfigError
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.preprocess import resampling_filter
from zsbench.prompt_ensembles import (
    ANOVL_ENSEMBLES,
    ANOVL_TEXTURE_CLASSES,
    ClassTextCache,
    anovl_domain,
    encode_ensemble,
    encode_prompts,
)
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

GridTransform = Callable[[Tensor], Tensor]
#: name -> (transform of [..., H, W] images, inverse transform of [..., h, w] patch grids)
AUGMENTATIONS: dict[str, tuple[GridTransform, GridTransform]] = {
    "hflip": (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    "vflip": (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    "rot90": (lambda x: torch.rot90(x, 1, (-2, -1)), lambda x: torch.rot90(x, -1, (-2, -1))),
    "rot180": (lambda x: torch.rot90(x, 2, (-2, -1)), lambda x: torch.rot90(x, -2, (-2, -1))),
    "rot270": (lambda x: torch.rot90(x, 3, (-2, -1)), lambda x: torch.rot90(x, -3, (-2, -1))),
    "grey": (lambda x: grey_view(x), lambda x: x),
}
#: kornia ``rgb_to_grayscale``'s weights for float images, as upstream's ``grey_img`` uses them
GREY_WEIGHTS = (0.299, 0.587, 0.114)
_NUMBER = r"[+-](?:\d+(?:\.\d*)?|\.\d+)"
#: ``rot<+-degrees>``: a rotation by an arbitrary angle (``utils.py: rot_img``)
ROTATION_VIEW = re.compile(rf"rot({_NUMBER})")
#: ``shift<+-dx><+-dy>``: a translation in grid units (``utils.py: translation_img``)
SHIFT_VIEW = re.compile(rf"shift({_NUMBER})({_NUMBER})")
#: ``utils.py: aug`` in order: rotations by -pi/4 ... pi/4, 8 translations, hflip, grey, 3 quarter
#: turns. With the image itself, 22 views.
UPSTREAM_AUGMENTATIONS = (
    "rot-45", "rot-33.75", "rot-22.5", "rot-11.25", "rot+11.25", "rot+22.5", "rot+33.75", "rot+45",
    "shift+0.2+0.2", "shift-0.2+0.2", "shift-0.2-0.2", "shift+0.2-0.2",
    "shift+0.1+0.1", "shift-0.1+0.1", "shift-0.1-0.1", "shift+0.1-0.1",
    "hflip", "grey", "rot90", "rot180", "rot270",
)
TTA_ADAPTERS = ("identity_linear", "text_adapter")


def grey_view(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` -> the weighted channel sum repeated on 3 channels. Applied to the
    normalised tensor, as upstream's ``grey_img`` (kornia on the loader's normalised output)."""
    r, g, b = images.unbind(dim=-3)
    grey = GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b
    return grey.unsqueeze(-3).expand_as(images).contiguous()


def affine_view(images: Tensor, theta: Sequence[Sequence[float]]) -> Tensor:
    """``F.affine_grid`` + bilinear ``F.grid_sample`` of ``[B, C, H, W]`` images with the 2 x 3
    matrix ``theta`` (normalised coordinates, align_corners=True, reflection padding), as
    upstream's ``rot_img`` / ``translation_img``."""
    matrix = torch.tensor(theta, dtype=torch.float32).to(images.device, images.dtype)
    grid = F.affine_grid(matrix.expand(images.shape[0], 2, 3), list(images.shape),
                         align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=True)


def view_transform(name: str) -> tuple[GridTransform, GridTransform | None]:
    """The image transform of an augmentation name and its inverse on the patch grid (None when
    the view has no exact inverse there: small rotations and translations)."""
    if name in AUGMENTATIONS:
        return AUGMENTATIONS[name]
    rotation = ROTATION_VIEW.fullmatch(name)
    if rotation:
        angle = math.radians(float(rotation.group(1)))
        theta = ((math.cos(angle), -math.sin(angle), 0.0), (math.sin(angle), math.cos(angle), 0.0))
        return (lambda x: affine_view(x, theta)), None
    shift = SHIFT_VIEW.fullmatch(name)
    if shift:
        dx, dy = float(shift.group(1)), float(shift.group(2))
        theta = ((1.0, 0.0, dx), (0.0, 1.0, dy))
        return (lambda x: affine_view(x, theta)), None
    raise ConfigError(f"augmentations: {name!r} unknown; choose from {', '.join(AUGMENTATIONS)}, "
                      f"rot<+-degrees> (e.g. rot-22.5) or shift<+-dx><+-dy> (e.g. shift+0.1-0.1)")


@dataclass
class AnoVLConfig(MethodConfig):
    """AnoVL options; defaults follow ``hq-deng/AnoVL`` (test_zero_shot.sh) where it is clear;
    ``presets["upstream"]`` sets every flag to what ``vl_test.py`` does."""

    backbone: str = option("ViT-B-16-plus-240", "open_clip model name (upstream ViT-B-16-plus-240)")
    pretrained: str | None = option("laion400m_e32", "open_clip tag or weights file (upstream "
                                                     "laion400m_e32)")
    image_size: int = option(240, "input side in pixels (upstream 240)")
    vv_from: int | None = option(1, "first block of the V-V attention path (AnoVL: all blocks); "
                                    "none for plain CLIP tokens")
    map_layer: int | None = option(None, "vision block whose patch tokens give the map; none = "
                                         "the last block")
    texture_classes: tuple[str, ...] = option(ANOVL_TEXTURE_CLASSES,
                                              "class names that get the texture templates")
    augmentations: tuple[str, ...] = option(
        ("hflip", "vflip", "rot90", "rot180", "rot270"),
        f"extra views besides the image, all averaged in the image score: "
        f"{', '.join(AUGMENTATIONS)} (grey: kornia's weights on the normalised tensor), "
        f"rot<+-deg> (rotation, bilinear, reflection padding; utils.py rot_img) and "
        f"shift<+-dx><+-dy> (translation by dx, dy in [-1, 1] grid units, reflection padding; "
        f"utils.py translation_img). rot<deg> and shift views have no inverse on the patch grid "
        f"and need map_from_image_only. Upstream (utils.py aug): the 21 views "
        f"{', '.join(UPSTREAM_AUGMENTATIONS)}")
    map_from_image_only: bool = option(
        False, "adapt and map on the image's own patch tokens; the views then enter the image "
               "score only (vl_test.py: the map path encodes `image`, the score `aug(image)`). "
               "False: TTA and map use every view, mapped back to the image's orientation")
    map_align_corners: bool = option(
        False, "upsample the patch map with align_corners=True (vl_test.py: F.interpolate(..., "
               "align_corners=True)); False: pixel areas aligned, as the other methods")
    tta_steps: int = option(5, "test-time adaptation steps per image (test_zero_shot.sh: "
                               "--epoch 5); 0 disables the adapter")
    tta_lr: float = option(1e-3, "AdamW learning rate of the adapter (vl_test.py: 1e-3)")
    tta_noise_std: float = option(
        0.055, "std of the Gaussian pseudo-anomaly noise (model.py TextAdapter.aug: 0.05 * "
               "1.1). Upstream adds it to the un-normalised projected tokens; on unit tokens "
               "(the default) of a 640-d backbone its norm is ~1.4, larger than the token")
    tta_pseudo_label_weight: float = option(0.5, "weight of the pseudo-label term of the TTA "
                                                 "objective (vl_test.py: 0.5)")
    tta_adapter: str = option(
        "identity_linear", "identity_linear: a D x D linear map reset to the identity for every "
                           "image (step 0 is the unadapted model); text_adapter: upstream's "
                           "TextAdapter (model.py), x -> 0.5 x + 0.5 tanh(W x/|x| + b) @ T, T the "
                           "unit embeddings of every prompt of the class (normal, then "
                           "anomalous), W and b re-drawn with nn.Linear's default init for every "
                           "image (vl_test.py: weight_reset applied to the class's "
                           "adapter before each image)")
    tta_noise_on_unnormalized_tokens: bool = option(
        False, "the adapter works on the un-normalised projected patch tokens (ln_post(token) @ "
               "proj) and the noise is added to them (vl_test.py: TextAdapter.aug on "
               "patch_tokens_ln); False: on unit tokens, so that the noise scale does not depend "
               "on the backbone's token norms")
    tta_optimizer_per_class: bool = option(
        False, "one adapter and one AdamW per class name, kept across the class's images: every "
               "image re-initialises the adapter but continues the optimizer's moments and step "
               "count (vl_test.py: opts, one AdamW per class). Results then depend on the image "
               "order (the evaluator's is fixed); the state is cleared at every evaluation "
               "(eval()), by start_category() and reset_tta_state(). False: a fresh AdamW per "
               "image, so a score depends on the image alone")
    seed: int = option(111, "seed of the TTA noise and adapter init, reset for every image")
    softmax_without_logit_scale: bool = option(
        False, "upstream quirk: softmax over raw cosine similarities (logit scale 1, "
               "vl_test.py) instead of CLIP's 100")
    patch_mean_filter: bool = option(True, "3x3 mean filter on the patch-level map with "
                                           "replicated borders (vl_test.py avg_pool2d)")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (upstream: none)")
    chunk_size: int = option(8, "images encoded and adapted at a time: the evaluator gives a "
                                "transductive method its whole category as one batch",
                             compute_only=True)


class LinearAdapter(nn.Module):
    """A D x D linear map initialised to the identity (:meth:`reset` sets it back)."""

    def __init__(self, dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, dim, device=device)
        self.reset()

    def reset(self, generator: torch.Generator | None = None) -> None:
        """Identity weight, zero bias (``generator`` unused: nothing random)."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(self.linear.in_features,
                                               device=self.linear.weight.device))
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class TextAdapter(nn.Module):
    """AnoVL's ``TextAdapter`` (``model.py``): ``x -> 0.5 x + 0.5 tanh(W x/|x| + b) @ T``.

    ``T`` ``[K, D]`` holds the unit embeddings of every prompt of a class (normal, then
    anomalous); ``W, b`` (``Linear(D, K)``) are the trained parameters. ``x`` keeps its norm in
    the residual half: on un-normalised tokens the token dominates, on unit tokens the text
    half does."""

    def __init__(self, prompt_embeddings: Tensor):
        super().__init__()
        self.register_buffer("prompt_embeddings", prompt_embeddings.detach().float().clone(),
                             persistent=False)
        count, dim = prompt_embeddings.shape
        self.linear = nn.Linear(dim, count, device=prompt_embeddings.device)

    def reset(self, generator: torch.Generator | None = None) -> None:
        """``nn.Linear.reset_parameters`` drawn from ``generator``: kaiming-uniform weight
        (a = sqrt 5) and a uniform bias, both bounded by 1/sqrt(D) (upstream ``weight_reset``)."""
        fan_in = self.linear.in_features
        gain = math.sqrt(2.0 / (1 + 5))  # torch's leaky_relu gain for a = sqrt(5)
        weight_bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
        bias_bound = 1 / math.sqrt(fan_in)
        with torch.no_grad():
            self.linear.weight.uniform_(-weight_bound, weight_bound, generator=generator)
            self.linear.bias.uniform_(-bias_bound, bias_bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        affinity = torch.tanh(self.linear(l2_normalize(x)))
        return 0.5 * x + 0.5 * (affinity @ self.prompt_embeddings)


@dataclass
class ClassAdaptation:
    """The TTA state of one class name (``tta_optimizer_per_class``): the adapter whose weights
    every image re-initialises, the AdamW that carries on, and how many images it has seen."""

    adapter: nn.Module
    optimizer: torch.optim.Optimizer
    images: int = 0


def tta_objective(clean_probs: Tensor, noisy_probs: Tensor, pseudo_label_weight: float
                  ) -> Tensor:
    """AnoVL's unsupervised loss on ``[..., 2]`` (normal, anomalous) patch probabilities:
    entropy of the clean predictions plus ``weight`` x (noisy -> anomalous, clean -> normal)."""
    eps = 1e-12
    entropy = -(clean_probs * clean_probs.clamp_min(eps).log()).sum(-1).mean()
    pseudo = (-noisy_probs[..., 1].clamp_min(eps).log()
              - clean_probs[..., 0].clamp_min(eps).log()).mean()
    return entropy + pseudo_label_weight * pseudo


@register_method
class AnoVL(AnomalyMethod):
    """V-V attention CLIP with domain-aware prompts and a test-time adapter."""

    config_class = AnoVLConfig
    info = MethodInfo(
        name="anovl",
        title="AnoVL",
        paper="Deng et al., AnoVL: Adapting Vision-Language Models for Unified Zero-shot Anomaly "
              "Localization, arXiv 2308.15939, 2023",
        trainable=False,
        transductive=True,
        code="https://github.com/hq-deng/AnoVL",
        license="see upstream repository",
        class_aware=True,
    )
    needs_grad_at_test = True  # the test-time adapter steps an optimizer inside predict
    presets = {
        # vl_test.py as test_zero_shot.sh runs it on MVTec AD
        "upstream": {
            "backbone": "ViT-B-16-plus-240",
            "pretrained": "laion400m_e32",
            "image_size": 240,
            "input_interpolation": "bilinear",
            "vv_from": 1,
            "augmentations": UPSTREAM_AUGMENTATIONS,
            "map_from_image_only": True,
            "map_align_corners": True,
            "tta_steps": 5,
            "tta_lr": 1e-3,
            "tta_noise_std": 0.055,
            "tta_pseudo_label_weight": 0.5,
            "tta_adapter": "text_adapter",
            "tta_noise_on_unnormalized_tokens": True,
            "tta_optimizer_per_class": True,
            "softmax_without_logit_scale": True,
            "patch_mean_filter": True,
            "sigma": 0.0,
        },
    }

    def __init__(self, config: AnoVLConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        layer = backbone.check_layer(config.map_layer, "map_layer")
        if config.vv_from is not None:
            backbone.check_layer(config.vv_from, "vv_from")
        resampling_filter(config.input_interpolation)
        self.views = [view_transform(name) for name in config.augmentations]
        no_inverse = [name for name, (_, inverse) in zip(config.augmentations, self.views,
                                                             strict=True)
                      if inverse is None]
        if no_inverse and not config.map_from_image_only:
            raise ConfigError(f"augmentations {no_inverse} have no inverse on the patch grid: "
                              f"they can only score the image (set map_from_image_only=true)")
        if config.tta_adapter not in TTA_ADAPTERS:
            raise ConfigError(f"tta_adapter {config.tta_adapter!r} is not one of "
                              f"{', '.join(TTA_ADAPTERS)}")
        if config.tta_steps < 0:
            raise ConfigError(f"tta_steps must be >= 0, got {config.tta_steps}")
        self.require_non_negative("tta_lr", "tta_noise_std", "tta_pseudo_label_weight", "sigma")
        self.map_layer = layer
        self.logit_scale = 1.0 if config.softmax_without_logit_scale else CLIP_LOGIT_SCALE
        self.text_cache = ClassTextCache(self.encode_class_text)
        self.prompt_bank = ClassTextCache(self.encode_prompt_bank)
        #: class name -> its adapter and optimizer (``tta_optimizer_per_class`` only)
        self.tta_state: dict[str, ClassAdaptation] = {}

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: AnoVLConfig) -> dict[str, Any]:
        return {"texture_classes": list(config.texture_classes),
                "domain_rule": "texture templates for a class name in texture_classes (case "
                               "and '_' ignored), object templates otherwise",
                **{domain: ensemble.describe() for domain, ensemble in ANOVL_ENSEMBLES.items()},
                "averaging": "unnormalised prompt embeddings averaged, then normalised"}

    def encode_class_text(self, class_name: str) -> Tensor:
        domain = anovl_domain(class_name, self.config.texture_classes)
        return encode_ensemble(self.backbone, ANOVL_ENSEMBLES[domain], class_name,
                               averaging="raw")

    def encode_prompt_bank(self, class_name: str) -> Tensor:
        """``[2 P, D]`` unit embeddings of every prompt of the class, the normal ones first, each
        side template-major as ``prompt_ensemble.py`` builds them: the ``T`` of the
        ``text_adapter``."""
        ensemble = ANOVL_ENSEMBLES[anovl_domain(class_name, self.config.texture_classes)]
        sides = []
        for states in (ensemble.normal_states, ensemble.anomalous_states):
            prompts = [template.format(state.format(class_name))
                       for template in ensemble.templates for state in states]
            sides.append(l2_normalize(encode_prompts(self.backbone, prompts).float()))
        return torch.cat(sides, dim=0)

    # -- state across images (tta_optimizer_per_class) ---------------------------------------------
    def reset_tta_state(self) -> None:
        """Forget every class's adapter and optimizer: the next image of each class starts fresh."""
        self.tta_state.clear()

    def start_category(self, category: str) -> None:
        """Called before the first image of a category: its TTA state starts fresh, also when
        two categories share a class name (VisA's pcb1-pcb4)."""
        self.reset_tta_state()

    def train(self, mode: bool = True) -> AnoVL:
        # a new evaluation (the evaluator calls eval() first) never inherits an earlier one's
        # optimizer states
        if hasattr(self, "tta_state"):
            self.reset_tta_state()
        return super().train(mode)

    # -- forward ---------------------------------------------------------------------------------
    def encode_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Global embeddings ``[V, B, D]`` of the image (view 0) and its augmentations, and the
        patch tokens that feed the adaptation and the map, ``[V', B, N, D]``: the image's alone
        (V' = 1) with ``map_from_image_only``, else every view's, mapped back to the image's
        orientation."""
        views = torch.cat([images] + [forward(images) for forward, _ in self.views], dim=0)
        features = self.backbone.encode_image(views, layers=(self.map_layer,),
                                              vv_from=self.config.vv_from)
        n_views, batch = 1 + len(self.views), images.shape[0]
        global_embedding = features.global_embedding.reshape(n_views, batch, -1)
        tokens = features.patch_tokens[self.map_layer].reshape(n_views, batch, -1,
                                                                global_embedding.shape[-1])
        if self.config.map_from_image_only:
            return global_embedding, tokens[:1]
        aligned = [tokens[0]]
        for view, (_, inverse) in enumerate(self.views, start=1):
            grid = tokens_to_grid(tokens[view], self.backbone.grid_size)  # [B, D, h, w]
            aligned.append(inverse(grid).flatten(2).transpose(1, 2))
        return global_embedding, torch.stack(aligned, dim=0)

    def _new_adapter(self, class_name: str, features: Tensor) -> nn.Module:
        if self.config.tta_adapter == "text_adapter":
            bank = self.prompt_bank.get(class_name).to(features.device)
            return TextAdapter(bank)
        return LinearAdapter(features.shape[-1], device=features.device)

    def _adaptation(self, class_name: str, features: Tensor) -> ClassAdaptation:
        """This image's adapter and optimizer: the class's (created on first use) with
        ``tta_optimizer_per_class``, else new ones."""
        if not self.config.tta_optimizer_per_class:
            adapter = self._new_adapter(class_name, features)
            return ClassAdaptation(adapter, torch.optim.AdamW(adapter.parameters(),
                                                              lr=self.config.tta_lr))
        state = self.tta_state.get(class_name)
        if state is not None and state.optimizer.param_groups[0]["params"][0].device != \
                features.device:
            logger.warning("anovl: TTA state of class %r is on another device; starting fresh",
                           class_name)
            state = None
        if state is None:
            adapter = self._new_adapter(class_name, features)
            state = ClassAdaptation(adapter, torch.optim.AdamW(adapter.parameters(),
                                                               lr=self.config.tta_lr))
            self.tta_state[class_name] = state
        return state

    def adapt(self, features: Tensor, text: Tensor, class_name: str) -> nn.Module:
        """The adapter of one image, trained on its patch features ``[V, N, D]`` (unit tokens,
        or the projected tokens with ``tta_noise_on_unnormalized_tokens``) against its ``[2, D]``
        text (gradients on, whatever the caller's grad mode)."""
        if self.config.tta_steps == 0:
            return nn.Identity()
        generator = torch.Generator(device=features.device).manual_seed(self.config.seed)
        state = self._adaptation(class_name, features)
        adapter, optimizer = state.adapter, state.optimizer
        adapter.reset(generator)
        state.images += 1
        temperature = 1.0 / self.logit_scale
        with torch.enable_grad():
            for _ in range(self.config.tta_steps):
                noise = torch.randn(features.shape, generator=generator, device=features.device,
                                    dtype=features.dtype) * self.config.tta_noise_std
                clean = text_probabilities(adapter(features), text, temperature)
                noisy = text_probabilities(adapter(features + noise), text, temperature)
                loss = tta_objective(clean, noisy, self.config.tta_pseudo_label_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return adapter

    def patch_scores(self, images: Tensor, class_names: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Image scores ``[B]`` and the patch-level anomaly map ``[B, h, w]`` (after the mean
        filter, before upsampling). Images are adapted in batch order."""
        class_names = self.check_batch(images, class_names)
        global_embedding, tokens = self.encode_views(images)
        text = self.text_cache(class_names).to(global_embedding.device)
        temperature = 1.0 / self.logit_scale
        image_scores = torch.stack([text_probabilities(view, text, temperature)[:, 1]
                                    for view in global_embedding], dim=0).mean(dim=0)
        patch_scores = []
        # inference tensors (inference_mode callers) become normal tensors for autograd here
        with torch.inference_mode(False):
            features = tokens.clone().float()
            if not self.config.tta_noise_on_unnormalized_tokens:
                features = l2_normalize(features)
            text = text.clone()
            for index, class_name in enumerate(class_names):
                adapter = self.adapt(features[:, index], text[index], class_name)
                with torch.no_grad():
                    probs = text_probabilities(adapter(features[:, index]), text[index],
                                               temperature)
                patch_scores.append(probs[..., 1].mean(dim=0))
            scores = torch.stack(patch_scores, dim=0)
        grid = tokens_to_grid(scores, self.backbone.grid_size)
        if self.config.patch_mean_filter:
            grid = F.avg_pool2d(F.pad(grid.unsqueeze(1), (1, 1, 1, 1), mode="replicate"),
                                3, stride=1).squeeze(1)
        return image_scores, grid

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        """Images are adapted one after the other in batch order, ``chunk_size`` encoded at a
        time (the same numbers for any chunk size)."""
        scores, maps = [], []
        for part in self.chunks(images.shape[0], self.config.chunk_size):
            image_scores, grid = self.patch_scores(images[part], class_names[part])
            scores.append(image_scores)
            maps.append(gaussian_smooth(upsample(grid, images.shape[-1],
                                                 align_corners=self.config.map_align_corners),
                                        self.config.sigma))
        return Prediction(torch.cat(scores), torch.cat(maps))
