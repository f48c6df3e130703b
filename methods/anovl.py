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
- **Views**: the image and its ``augmentations`` (flips and 90-degree rotations); each view's
  patch grid is mapped back to the original orientation. Image score = mean over views of
  ``P_abn`` of the global embedding (upstream averages 21 augmented views for the image score).
- **Test-time adaptation** (per image, ``predict`` only): a linear adapter ``A`` (D x D, identity
  weight, zero bias: step 0 is the unadapted model) is trained for ``tta_steps`` AdamW steps
  (lr 1e-3) on the unit patch embeddings z of all views with the unsupervised objective of
  ``vl_test.py: loss_func``: features perturbed by Gaussian noise (std ``tta_noise_std``,
  upstream 0.05 x 1.1) act as pseudo-anomalies,
  ``L = mean H(p(A z)) + 0.5 mean[-log p_abn(A(z + eps)) - log p_norm(A z)]``
  (entropy minimisation on the clean features plus pseudo-labels: clean normal, noisy abnormal).
  Everything is re-initialised per image and the noise generator is seeded with ``seed`` per
  image, so a score depends only on the image itself.
- **Map**: ``P_abn`` of ``A z`` per patch, averaged over the views, a 3 x 3 mean filter on the
  patch grid with replicated borders (``patch_mean_filter``, as upstream), bilinear upsampling;
  no Gaussian by default (upstream's is commented out).

Deviations from the upstream code (documented choices): upstream's adapter is
``0.5 x + 0.5 tanh(Linear(x / |x|)) @ T`` with T the stacked prompt embeddings, reset to a random
init per image while its AdamW state is kept per class across images; ours is an identity-init
linear map re-created per image (deterministic and independent of test order). Upstream perturbs
unnormalised tokens; we perturb unit tokens so the noise scale does not depend on the backbone.
Upstream applies the softmax to raw cosines (logit scale 1); the default here is CLIP's 100 and
``softmax_without_logit_scale`` restores upstream's choice.
"""

from __future__ import annotations

import logging
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
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.prompt_ensembles import (
    ANOVL_ENSEMBLES,
    ANOVL_TEXTURE_CLASSES,
    ClassTextCache,
    anovl_domain,
    encode_ensemble,
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
}


@dataclass
class AnoVLConfig(MethodConfig):
    """AnoVL options; defaults follow ``hq-deng/AnoVL`` (test_zero_shot.sh) where it is clear."""

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
        f"extra views besides the image; any of {', '.join(AUGMENTATIONS)}")
    tta_steps: int = option(5, "test-time adaptation steps per image (test_zero_shot.sh: "
                               "--epoch 5); 0 disables the adapter")
    tta_lr: float = option(1e-3, "AdamW learning rate of the adapter (vl_test.py: 1e-3)")
    tta_noise_std: float = option(0.055, "std of the Gaussian pseudo-anomaly noise on unit "
                                         "patch embeddings (model.py: 0.05 * 1.1)")
    tta_pseudo_label_weight: float = option(0.5, "weight of the pseudo-label term of the TTA "
                                                 "objective (vl_test.py: 0.5)")
    seed: int = option(111, "seed of the TTA noise, reset for every image")
    softmax_without_logit_scale: bool = option(
        False, "upstream quirk: softmax over raw cosine similarities (logit scale 1, "
               "vl_test.py) instead of CLIP's 100")
    patch_mean_filter: bool = option(True, "3x3 mean filter on the patch-level map with "
                                           "replicated borders (vl_test.py avg_pool2d)")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (upstream: none)")


class LinearAdapter(nn.Module):
    """A D x D linear map initialised to the identity."""

    def __init__(self, dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, dim, device=device)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim, device=device))
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def tta_objective(clean_probs: Tensor, noisy_probs: Tensor, pseudo_label_weight: float
                  ) -> Tensor:
    """AnoVL's unsupervised loss on ``[..., 2]`` (normal, anomalous) patch probabilities:
    entropy of the clean predictions plus ``weight`` x (noisy -> anomalous, clean -> normal)."""
    eps = 1e-12
    entropy = -(clean_probs * clean_probs.clamp_min(eps).log()).sum(-1).mean()
    pseudo = (-noisy_probs[..., 1].clamp_min(eps).log()
              - clean_probs[..., 0].clamp_min(eps).log()).mean()
    return entropy + pseudo_label_weight * pseudo


@register_method("anovl")
class AnoVL(AnomalyMethod):
    """V-V attention CLIP with domain-aware prompts and a per-image test-time adapter."""

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

    def __init__(self, config: AnoVLConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        layer = backbone.check_layer(config.map_layer, "map_layer")
        if config.vv_from is not None:
            backbone.check_layer(config.vv_from, "vv_from")
        unknown = [a for a in config.augmentations if a not in AUGMENTATIONS]
        if unknown:
            raise ValueError(f"augmentations {unknown} unknown; choose from "
                             f"{', '.join(AUGMENTATIONS)}")
        if config.tta_steps < 0:
            raise ValueError(f"tta_steps must be >= 0, got {config.tta_steps}")
        for name in ("tta_lr", "tta_noise_std", "tta_pseudo_label_weight", "sigma"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
        self.map_layer = layer
        self.logit_scale = 1.0 if config.softmax_without_logit_scale else CLIP_LOGIT_SCALE
        self.text_cache = ClassTextCache(self.encode_class_text)

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

    # -- forward ---------------------------------------------------------------------------------
    def encode_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Global embeddings ``[V, B, D]`` and orientation-aligned patch tokens ``[V, B, N, D]``
        of the image (view 0) and its augmentations."""
        transforms = [AUGMENTATIONS[name] for name in self.config.augmentations]
        views = torch.cat([images] + [forward(images) for forward, _ in transforms], dim=0)
        features = self.backbone.encode_image(views, layers=(self.map_layer,),
                                              vv_from=self.config.vv_from)
        n_views, batch = 1 + len(transforms), images.shape[0]
        global_embedding = features.global_embedding.reshape(n_views, batch, -1)
        tokens = features.patch_tokens[self.map_layer].reshape(n_views, batch, -1,
                                                                global_embedding.shape[-1])
        aligned = [tokens[0]]
        for view, (_, inverse) in enumerate(transforms, start=1):
            grid = tokens_to_grid(tokens[view], self.backbone.grid_size)  # [B, D, h, w]
            aligned.append(inverse(grid).flatten(2).transpose(1, 2))
        return global_embedding, torch.stack(aligned, dim=0)

    def adapt(self, tokens: Tensor, text: Tensor) -> LinearAdapter:
        """A fresh adapter trained on one image's unit patch tokens ``[V, N, D]`` against its
        ``[2, D]`` text (gradients on, whatever the caller's grad mode)."""
        adapter = LinearAdapter(tokens.shape[-1], device=tokens.device)
        if self.config.tta_steps == 0:
            return adapter
        generator = torch.Generator(device=tokens.device).manual_seed(self.config.seed)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=self.config.tta_lr)
        temperature = 1.0 / self.logit_scale
        with torch.enable_grad():
            for _ in range(self.config.tta_steps):
                noise = torch.randn(tokens.shape, generator=generator, device=tokens.device,
                                    dtype=tokens.dtype) * self.config.tta_noise_std
                clean = text_probabilities(adapter(tokens), text, temperature)
                noisy = text_probabilities(adapter(tokens + noise), text, temperature)
                loss = tta_objective(clean, noisy, self.config.tta_pseudo_label_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return adapter

    def predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        if len(class_names) != images.shape[0]:
            raise ValueError(f"got {len(class_names)} class names for {images.shape[0]} images")
        global_embedding, tokens = self.encode_views(images)
        text = self.text_cache(class_names).to(global_embedding.device)
        temperature = 1.0 / self.logit_scale
        image_scores = torch.stack([text_probabilities(view, text, temperature)[:, 1]
                                    for view in global_embedding], dim=0).mean(dim=0)
        patch_scores = []
        # inference tensors (inference_mode callers) become normal tensors for autograd here
        with torch.inference_mode(False):
            unit_tokens = l2_normalize(tokens.clone())
            text = text.clone()
            for index in range(images.shape[0]):
                adapter = self.adapt(unit_tokens[:, index], text[index])
                with torch.no_grad():
                    probs = text_probabilities(adapter(unit_tokens[:, index]), text[index],
                                               temperature)
                patch_scores.append(probs[..., 1].mean(dim=0))
            scores = torch.stack(patch_scores, dim=0)
        grid = tokens_to_grid(scores, self.backbone.grid_size)
        if self.config.patch_mean_filter:
            grid = F.avg_pool2d(F.pad(grid.unsqueeze(1), (1, 1, 1, 1), mode="replicate"),
                                3, stride=1).squeeze(1)
        maps = upsample(grid, images.shape[-1])
        return Prediction(image_scores, gaussian_smooth(maps, self.config.sigma))
