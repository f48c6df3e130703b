"""Dual-Image Enhanced CLIP: test images as mutual visual references, plus test-time adaptation.

Zhang, Deng, Bao and Li, "Dual-Image Enhanced CLIP for Zero-Shot Anomaly Detection", arXiv
2405.04782, 2024 (University of Alberta). No public code.

**What the paper states** (abstract and summary; the method section could not be obtained here):
pairs of test images are processed together, each one the visual reference of the other; a
*joint vision-language* score combines the reference comparison with the usual CLIP text
prompts; V-V attention sharpens the patch tokens for localisation; a test-time adaptation (TTA)
module trained on *synthesised anomalies* refines the localisation; evaluated on MVTec AD and
VisA. Everything else below is **not specified by the paper (as available to us)**: the simplest
faithful reading, each a named config option.

1. **Features.** One forward per image (in chunks of ``chunk_size``): the global embedding
   (original path) and the projected patch tokens of ``map_layer`` (default: the last block)
   from the V-V path from block ``vv_from`` (default 1, all blocks, as the authors' AnoVL).
2. **Pairing** (``pairing``; transductive: the batch is the whole category). ``random``
   (default): a random permutation of the images of one class name (drawn from
   ``sampling_generator``) cut into consecutive pairs, each the other's reference; with an odd
   count the last image of the permutation takes the one before it as its reference (one-way).
   ``adjacent``: the same on the batch order. ``nearest``: each image's reference is the other
   image with the most similar global embedding (not necessarily mutual). A class with a single
   image has no reference: its visual score is 0 (language only).
3. **Joint vision-language patch score.** Language: ``P_abn`` = softmax(``logit_scale`` x cos)
   of the (adapted, step 5) unit patch token against the class's [normal, anomalous] text.
   Vision: ``1 - max_q cos(z_p, r_q)`` over the reference's patch tokens ``r`` (the distance to
   the nearest reference patch). Joint = ``(1 - visual_weight) * language + visual_weight *
   vision``.
4. **Image score** = ``(1 - image_map_weight) * P_abn(global) + image_map_weight * max`` of
   the joint patch scores (so the reference also enters classification).
5. **TTA with synthesised anomalies** (``tta_steps`` > 0). Per test image, ``tta_synthetic``
   DRAEM-style copies: a blob mask (value noise at a random coarse resolution, bilinearly
   upsampled, thresholded at the quantile giving an area drawn from ``tta_area``; a Perlin-noise
   substitute) blended as ``(1 - m) x + m ((1 - b) s + b x)``, ``b ~ U[0, tta_max_blend]``, the
   source ``s`` the image itself rotated by a multiple of 90 degrees, rolled and with permuted
   channels (``tta_source = self``; DRAEM's DTD textures are external data) or Gaussian noise
   (``noise``). The copies go through the frozen backbone once; a D x D linear adapter on unit
   patch tokens, reset to the identity for every image, takes ``tta_steps`` Adam steps (lr
   ``tta_lr``) on the soft binary cross-entropy between each patch's ``P_abn`` and the fraction
   of its pixels inside the mask. The adapted tokens give the image's language patch scores;
   the reference comparison uses the unadapted tokens. Every random number comes from
   ``sampling_generator`` (one seed per image drawn up front, so chunking changes nothing).
6. **Map**: joint patch scores upsampled bilinearly, optional Gaussian ``sigma`` (default none).

Defaults chosen without the paper: backbone/size (zsbench's ViT-L-14-336 openai at 518),
``vv_from`` 1, prompts (AnoVL's domain-aware ensemble, the co-author's earlier work; WinCLIP and
APRIL-GAN ensembles selectable), logit scale 100, ``visual_weight`` 0.5, ``image_map_weight``
0.5, pairing ``random``, TTA 5 Adam steps at 1e-3 (AnoVL's), 1 synthetic copy, area 2-20 %,
blend up to 0.8 (DRAEM's), sigma 0. No upstream code, hence no ``upstream`` preset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
from zsbench.prompt_ensembles import (
    ANOVL_ENSEMBLES,
    ANOVL_TEXTURE_CLASSES,
    WINCLIP_ANOMALIB,
    WINCLIP_APRIL_GAN,
    ClassTextCache,
    anovl_domain,
    encode_ensemble,
)
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

PAIRINGS = ("random", "adjacent", "nearest")
PROMPT_ENSEMBLES = ("anovl", "winclip", "april_gan")
TTA_SOURCES = ("self", "noise")
_SEED_BOUND = 2 ** 62


@dataclass
class DualImageClipConfig(MethodConfig):
    """Dual-Image Enhanced CLIP options; "not specified" = not given by the paper as available
    to us (see the module docstring)."""

    vv_from: int | None = option(1, "first block of the V-V attention path of the patch tokens "
                                    "(paper: V-V attention; start block not specified, 1 = all "
                                    "blocks as AnoVL); none for plain CLIP tokens")
    map_layer: int | None = option(None, "vision block whose patch tokens are scored; none = the "
                                         "last block (not specified)")
    prompt_ensemble: str = option(
        "anovl", "text prompts (not specified): anovl (AnoVL's domain-aware templates, raw "
                 "averaging), winclip (WinCLIP paper lists, raw averaging) or april_gan "
                 "(APRIL-GAN lists, normalised averaging)")
    texture_classes: tuple[str, ...] = option(ANOVL_TEXTURE_CLASSES,
                                              "class names that get AnoVL's texture templates")
    logit_scale: float = option(CLIP_LOGIT_SCALE, "softmax scale of the patch/global text "
                                                  "similarities (not specified; CLIP's 100)")
    pairing: str = option(
        "random", "which test image is each image's reference (not specified): random "
                  "(a random permutation of the class's images cut into mutual pairs; odd "
                  "leftover refers to the image before it), adjacent (the same on the batch "
                  "order) or nearest (the other image with the closest global embedding)")
    visual_weight: float = option(0.5, "weight of the reference distance in the joint patch "
                                       "score, 1 - weight on the text P_abn (not specified)")
    image_map_weight: float = option(0.5, "weight of the maximum joint patch score in the image "
                                          "score, 1 - weight on the global text P_abn "
                                          "(not specified)")
    tta_steps: int = option(5, "Adam steps of the per-image test-time adapter on synthesised "
                               "anomalies; 0 disables TTA (not specified; AnoVL's 5)")
    tta_lr: float = option(1e-3, "Adam learning rate of the adapter (not specified; AnoVL's)")
    tta_synthetic: int = option(1, "synthesised anomalous copies of each image for its TTA "
                                   "(not specified)")
    tta_area: tuple[float, float] = option(
        (0.02, 0.2), "range of the synthesised mask's area fraction, drawn uniformly "
                     "(not specified)")
    tta_max_blend: float = option(0.8, "the image's share b inside the mask is drawn from "
                                       "U[0, tta_max_blend] (DRAEM's 0.8)")
    tta_source: str = option(
        "self", "what is pasted inside the mask: self (the image rotated by k x 90 degrees, "
                "rolled, channels permuted; DRAEM uses external DTD textures) or noise "
                "(standard Gaussian in normalised pixel space)")
    chunk_size: int = option(16, "images per backbone forward (the batch is a whole category)")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (not specified)")


# -- pairing ---------------------------------------------------------------------------------------

def pair_images(class_names: Sequence[str], rule: str, generator: torch.Generator | None = None,
                global_embeddings: Tensor | None = None) -> Tensor:
    """``[B]`` index of each image's reference image, within its class name; ``-1`` when the
    class has a single image. See ``DualImageClipConfig.pairing`` for the rules; ``random``
    draws one permutation per class (in order of first appearance) from ``generator``."""
    if rule not in PAIRINGS:
        raise ConfigError(f"pairing {rule!r} is not one of {', '.join(PAIRINGS)}")
    partner = torch.full((len(class_names),), -1, dtype=torch.long)
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(class_names):
        groups.setdefault(name, []).append(index)
    for members in groups.values():
        if len(members) < 2:
            continue
        if rule == "nearest":
            if global_embeddings is None:
                raise ValueError("pairing 'nearest' needs the global embeddings")
            unit = l2_normalize(global_embeddings[members].float())
            similarity = unit @ unit.t()
            similarity.fill_diagonal_(float("-inf"))
            best = similarity.argmax(dim=1).cpu()
            partner[members] = torch.tensor(members)[best]
            continue
        if rule == "random":
            device = generator.device if generator is not None else "cpu"
            order = torch.randperm(len(members), generator=generator, device=device).cpu()
            ordered = [members[i] for i in order.tolist()]
        else:
            ordered = list(members)
        for a, b in zip(ordered[0::2], ordered[1::2], strict=False):
            partner[a], partner[b] = b, a
        if len(ordered) % 2:
            partner[ordered[-1]] = ordered[-2]
    return partner


# -- scores ----------------------------------------------------------------------------------------

def reference_distance(tokens: Tensor, reference: Tensor) -> Tensor:
    """``[B, N]``: for every patch of ``tokens`` [B, N, D], 1 - the cosine similarity of the most
    similar patch of its ``reference`` [B, M, D]."""
    similarity = torch.einsum("bnd,bmd->bnm", l2_normalize(tokens.float()),
                              l2_normalize(reference.float()))
    return 1.0 - similarity.amax(dim=-1)


def joint_scores(language: Tensor, visual: Tensor, visual_weight: float) -> Tensor:
    """The joint vision-language score: ``(1 - w) * language + w * visual``."""
    return (1.0 - visual_weight) * language + visual_weight * visual


# -- synthesised anomalies -------------------------------------------------------------------------

def blob_mask(size: int, grid: int, area: float, generator: torch.Generator) -> Tensor:
    """``[size, size]`` float mask of value-noise blobs covering about ``area`` of the image:
    uniform noise on a random (2..max(2, grid))^2 lattice, bilinearly upsampled, thresholded at
    the (1 - area) quantile (at least one pixel)."""
    device = generator.device
    high = max(2, grid)
    rows, cols = (int(v) for v in torch.randint(2, high + 1, (2,), generator=generator,
                                                 device=device))
    lattice = torch.rand(1, 1, rows, cols, generator=generator, device=device)
    field = F.interpolate(lattice, size=(size, size), mode="bilinear",
                          align_corners=False).flatten()
    keep = max(1, min(field.numel(), round(area * field.numel())))
    threshold = field.kthvalue(field.numel() - keep + 1).values
    return (field >= threshold).float().reshape(size, size)


def anomaly_source(image: Tensor, source: str, generator: torch.Generator) -> Tensor:
    """What is pasted inside a mask: the image turned, rolled and channel-permuted (``self``),
    or standard Gaussian noise (``noise``)."""
    device = generator.device
    if source == "noise":
        return torch.randn(image.shape, generator=generator, device=device).to(image)
    turns = int(torch.randint(1, 4, (1,), generator=generator, device=device))
    shifts = torch.randint(0, image.shape[-1], (2,), generator=generator, device=device)
    channels = torch.randperm(image.shape[0], generator=generator, device=device)
    moved = torch.rot90(image, turns, dims=(-2, -1))
    moved = torch.roll(moved, shifts=(int(shifts[0]), int(shifts[1])), dims=(-2, -1))
    return moved[channels.to(image.device)]


def synthesize_anomalies(image: Tensor, count: int, grid: int, area: tuple[float, float],
                         max_blend: float, source: str, generator: torch.Generator
                         ) -> tuple[Tensor, Tensor]:
    """``count`` DRAEM-style anomalous copies of ``image`` [3, S, S] and their masks [count, S,
    S]: ``(1 - m) x + m ((1 - b) s + b x)`` with ``b ~ U[0, max_blend]``."""
    device, size = generator.device, image.shape[-1]
    copies, masks = [], []
    for _ in range(count):
        fraction = area[0] + (area[1] - area[0]) * float(
            torch.rand((), generator=generator, device=device))
        mask = blob_mask(size, grid, fraction, generator).to(image)
        blend = max_blend * float(torch.rand((), generator=generator, device=device))
        pasted = (1.0 - blend) * anomaly_source(image, source, generator) + blend * image
        copies.append(image * (1.0 - mask) + pasted * mask)
        masks.append(mask)
    return torch.stack(copies), torch.stack(masks)


class IdentityLinear(nn.Module):
    """A D x D linear map initialised to the identity (zero bias)."""

    def __init__(self, dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, dim, device=device)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim, device=self.linear.weight.device))
            self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def tta_loss(probabilities: Tensor, labels: Tensor) -> Tensor:
    """Soft binary cross-entropy of ``[..., 2]`` (normal, anomalous) patch probabilities against
    the anomalous fraction ``labels`` [...] of each patch."""
    eps = 1e-12
    return -(labels * probabilities[..., 1].clamp_min(eps).log()
             + (1.0 - labels) * probabilities[..., 0].clamp_min(eps).log()).mean()


@register_method
class DualImageClip(AnomalyMethod):
    """Test images scored against each other and against text prompts, with a TTA adapter."""

    config_class = DualImageClipConfig
    info = MethodInfo(
        name="dual_image_clip",
        title="Dual-Image Enhanced CLIP",
        paper="Zhang et al., Dual-Image Enhanced CLIP for Zero-Shot Anomaly Detection, arXiv "
              "2405.04782, 2024",
        trainable=False,
        transductive=True,
        code="none public (zsbench reading of the paper)",
        license="",
        class_aware=True,
    )
    needs_grad_at_test = True  # the test-time adapter steps an optimizer inside predict

    def __init__(self, config: DualImageClipConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self.map_layer = backbone.check_layer(config.map_layer, "map_layer")
        if config.vv_from is not None:
            backbone.check_layer(config.vv_from, "vv_from")
        for name, value, choices in (("pairing", config.pairing, PAIRINGS),
                                     ("prompt_ensemble", config.prompt_ensemble, PROMPT_ENSEMBLES),
                                     ("tta_source", config.tta_source, TTA_SOURCES)):
            if value not in choices:
                raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")
        for name in ("visual_weight", "image_map_weight", "tta_max_blend"):
            value = getattr(config, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        area = tuple(config.tta_area)
        if len(area) != 2 or not 0.0 < area[0] <= area[1] < 1.0:
            raise ConfigError(f"tta_area must be two fractions 0 < low <= high < 1, got "
                              f"{config.tta_area}")
        if config.tta_steps < 0:
            raise ConfigError(f"tta_steps must be >= 0, got {config.tta_steps}")
        if config.tta_synthetic < 1:
            raise ConfigError(f"tta_synthetic must be >= 1, got {config.tta_synthetic}")
        if config.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {config.chunk_size}")
        if config.logit_scale <= 0:
            raise ConfigError(f"logit_scale must be > 0, got {config.logit_scale}")
        self.require_non_negative("tta_lr", "sigma")
        self.text_cache = ClassTextCache(self.encode_class_text)

    # -- prompts ---------------------------------------------------------------------------------
    @classmethod
    def describe_prompts(cls, config: DualImageClipConfig) -> dict[str, Any]:
        if config.prompt_ensemble == "anovl":
            return {"ensemble": "anovl", "texture_classes": list(config.texture_classes),
                    **{domain: ensemble.describe() for domain, ensemble in
                       ANOVL_ENSEMBLES.items()},
                    "averaging": "unnormalised prompt embeddings averaged, then normalised"}
        ensemble = WINCLIP_ANOMALIB if config.prompt_ensemble == "winclip" else WINCLIP_APRIL_GAN
        averaging = "raw" if config.prompt_ensemble == "winclip" else "normalized"
        return {"ensemble": config.prompt_ensemble, **ensemble.describe(), "averaging": averaging}

    def encode_class_text(self, class_name: str) -> Tensor:
        """``[2, D]`` unit (normal, anomalous) text embeddings of ``prompt_ensemble``."""
        choice = self.config.prompt_ensemble
        if choice == "anovl":
            domain = anovl_domain(class_name, self.config.texture_classes)
            return encode_ensemble(self.backbone, ANOVL_ENSEMBLES[domain], class_name, "raw")
        if choice == "winclip":
            return encode_ensemble(self.backbone, WINCLIP_ANOMALIB, class_name, "raw")
        return encode_ensemble(self.backbone, WINCLIP_APRIL_GAN, class_name, "normalized")

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Global embeddings ``[B, D]`` and patch tokens ``[B, N, D]`` (V-V path), in chunks."""
        globals_, tokens = [], []
        for part in self.chunks(images.shape[0], self.config.chunk_size):
            features = self.backbone.encode_image(images[part], layers=(self.map_layer,),
                                                  vv_from=self.config.vv_from)
            globals_.append(features.global_embedding.float())
            tokens.append(features.patch_tokens[self.map_layer].float())
        return torch.cat(globals_), torch.cat(tokens)

    def adapt(self, image: Tensor, text: Tensor, seed: int) -> nn.Module:
        """The adapter of one image [3, S, S], trained on its synthesised anomalies against its
        ``[2, D]`` text (gradients on, whatever the caller's grad mode)."""
        config = self.config
        generator = torch.Generator(device=image.device).manual_seed(seed)
        grid = self.backbone.grid_size
        copies, masks = synthesize_anomalies(image, config.tta_synthetic, max(grid),
                                             tuple(config.tta_area), config.tta_max_blend,
                                             config.tta_source, generator)
        with torch.no_grad():
            _, tokens = self.encode(copies)
        labels = F.adaptive_avg_pool2d(masks.unsqueeze(1), tuple(grid)).flatten(1)  # [k, N]
        with torch.inference_mode(False), torch.enable_grad():
            features = l2_normalize(tokens.clone())
            labels, text = labels.clone(), text.clone()
            adapter = IdentityLinear(features.shape[-1], device=features.device)
            optimizer = torch.optim.Adam(adapter.parameters(), lr=config.tta_lr)
            for _ in range(config.tta_steps):
                probabilities = text_probabilities(adapter(features), text,
                                                   1.0 / config.logit_scale)
                loss = tta_loss(probabilities, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return adapter

    def language_scores(self, tokens: Tensor, text: Tensor, images: Tensor, seeds: Sequence[int]
                        ) -> Tensor:
        """``[B, N]`` text ``P_abn`` of every patch, each image's tokens through its adapter
        when TTA is on."""
        temperature = 1.0 / self.config.logit_scale
        unit = l2_normalize(tokens)
        if self.config.tta_steps == 0:
            return text_probabilities(unit, text, temperature)[..., 1]
        scores = []
        for index in range(tokens.shape[0]):
            adapter = self.adapt(images[index], text[index], seeds[index])
            with torch.inference_mode(False), torch.no_grad():
                adapted = adapter(unit[index:index + 1].clone())
                scores.append(text_probabilities(adapted, text[index:index + 1],
                                                 temperature)[..., 1])
        return torch.cat(scores)

    def patch_scores(self, images: Tensor, class_names: Sequence[str]
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """Image scores ``[B]``, joint patch scores ``[B, N]`` and each image's reference index
        ``[B]`` (-1: none) for a checked batch (a whole category)."""
        class_names = self.check_batch(images, class_names)
        config = self.config
        global_embedding, tokens = self.encode(images)
        text = self.text_cache(class_names).to(global_embedding.device)
        generator = self.sampling_generator
        partner = pair_images(class_names, config.pairing, generator, global_embedding)
        seeds = ([0] * len(class_names) if config.tta_steps == 0 else
                 torch.randint(0, _SEED_BOUND, (len(class_names),), generator=generator,
                               device=generator.device).tolist())
        joint = []
        for part in self.chunks(images.shape[0], config.chunk_size):
            own = tokens[part]
            language = self.language_scores(own, text[part], images[part], seeds[part])
            references = partner[part]
            visual = torch.zeros_like(language)
            has = references >= 0
            if bool(has.any()):
                visual[has.to(visual.device)] = reference_distance(
                    own[has.to(own.device)], tokens[references[has].to(tokens.device)])
            joint.append(joint_scores(language, visual, config.visual_weight))
        joint_patches = torch.cat(joint)
        if bool((partner < 0).any()):
            logger.info("dual_image_clip: %d image(s) have no other image of their class as "
                           "a reference; their visual score is 0", int((partner < 0).sum()))
        global_probability = text_probabilities(global_embedding, text,
                                                1.0 / config.logit_scale)[:, 1]
        image_scores = ((1.0 - config.image_map_weight) * global_probability
                        + config.image_map_weight * joint_patches.amax(dim=1))
        return image_scores, joint_patches, partner

    def _predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        image_scores, joint_patches, _ = self.patch_scores(images, class_names)
        grid = tokens_to_grid(joint_patches, self.backbone.grid_size)
        maps = upsample(grid, images.shape[-1])
        return Prediction(image_scores, gaussian_smooth(maps, self.config.sigma))
