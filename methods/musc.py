"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring of unlabelled images.

Li, Huang, Xue, Zhou, "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with
Mutual Scoring of the Unlabeled Images", ICLR 2024, arXiv 2401.16753; reference code
``xrli-U/MuSc`` (``models/musc.py``, ``models/modules/_LNAMD.py``, ``_MSM.py``, ``_RsCIN.py``,
``configs/musc.yaml``, ``scripts/musc.sh``). Training-free, no prompts, **transductive**: the
images of one category are scored against each other (the evaluator passes the whole category
as one batch; a batch given to :meth:`AnomalyMethod.predict` directly is its own pool).

- **Features**: the frozen CLIP vision tower (OpenAI ViT-L/14@336 at 518 px: a 37 x 37 grid);
  the residual-stream patch tokens (width 1024, before ``ln_post``, CLS dropped) of blocks
  6, 12, 18, 24 (``feature_layers: [5, 11, 17, 23]`` in ``musc.yaml``, +1 in ``musc.py``).
- **LNAMD** (local neighbourhood aggregation with multiple degrees), per image and layer:
  a LayerNorm without learned affine over the whole ``[C, H, W]`` token map (``_LNAMD.py``:
  ``nn.LayerNorm([C, H, W])`` built on the fly), then for each degree r in {1, 3, 5} the mean
  of every patch's r x r neighbourhood per channel (``PatchMaker`` unfold with zero padding
  (r - 1) / 2 + ``MeanMapper`` adaptive pooling = ``avg_pool2d`` counting the padding), then
  L2 normalisation. The zero padding only rescales border patches, which the normalisation
  undoes, so it needs no option.
- **MSM** (mutual scoring), per layer and degree: for patch m of image i and every other image
  j, ``a(j) = min_n ||z_i^m - z_j^n||_2``; the score is the mean of the sorted ``a`` values in
  the interval ``[floor(low (N-1)), floor(high (N-1)))`` (interval average, ``low`` 0, ``high``
  0.3: ``topmin_min=0, topmin_max=0.3`` in ``musc.py``). Patch score = mean over layers and
  degrees. Here the interval always keeps at least one image; upstream takes none (NaN scores)
  when ``floor(0.3 (N-1)) = 0``, i.e. for categories of fewer than 5 images. A pool of one
  image has no reference: its map and score are 0, with a warning (a defined fallback rather
  than an error because the runner's cost measurement predicts on single images).
- **Maps**: the 37 x 37 patch scores, bilinearly upsampled to the input size (upstream
  ``align_corners=True``), no Gaussian (``sigma`` 0, as upstream).
- **Image score**: the maximum of the upsampled map before any Gaussian (``musc.py``:
  ``anomaly_maps.reshape(B, -1).max(-1)``; slightly below the patch maximum when no pixel
  falls on the patch centre), then **RsCIN** (re-scoring with a constrained image-level
  neighbourhood, ``_RsCIN.py``): the scores are min-max normalised over the category; ``W`` =
  cosine similarities of the images' L2-normalised global embeddings (``ln_post(CLS) @
  proj``); for each window k, every row of W keeps its k largest entries (the image itself
  among them), is normalised to sum 1, and the new score is the row's weighted mean of the
  scores; the windows' results are averaged.
  Windows (1, 2, 3) as ``musc.py`` uses for MVTec AD and BTAD (and any other dataset); for
  VisA upstream uses (1, 8, 9): set ``rscin_windows`` for a VisA row.

Memory: the backbone runs ``chunk_size`` images at a time; the layer tokens wait on the CPU
(``offload_features``) while one layer x degree feature set ``[N, P, C]`` at a time is on the
device; MSM compares ``score_chunk_size`` query images with ``score_chunk_size`` reference
images at a time, keeping per-pair minima ``[q, P, N]``, never an ``[N P, N P]`` matrix.
:func:`estimate_peak_bytes` gives the peak device memory (about 3.7 GiB for 200 images of
ViT-L/14 at 518 px with the defaults, 1.6 GiB of it the CLIP weights).

Upstream quirks and differences (``presets["upstream"]`` sets what zsbench can express):

=========================  ==================================  ===================================
option                     default (zsbench)                   upstream
=========================  ==================================  ===================================
map_align_corners          False (pixel areas aligned)         True (``musc.py`` F.interpolate)
precision                  fp32                                fp16 (``torch.cuda.amp.autocast``
                                                               around ``encode_image``)
pos_embed_interpolation    bicubic (as upstream)               bicubic, no antialias (bundled
                                                               ``open_clip/model.py``
                                                               ``resize_pos_embed``)
=========================  ==================================  ===================================

Upstream builds ``ViT-L-14-336`` at 518 px from its json config, which has no ``quick_gelu``,
and loads the OpenAI weights into it (``open_clip/factory.py`` ``create_model``), so the
released numbers ran the QuickGELU-trained weights with exact GELU: the ``upstream`` preset sets
the shared ``mlp_activation="gelu"``. Not offered: ``divide_num`` (scoring random subsets of a
category separately; upstream default 1: the whole category).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsbench.anomaly_maps import gaussian_smooth, l2_normalize, tokens_to_grid, upsample
from zsbench.errors import ConfigError
from zsbench.method import AnomalyMethod, MethodConfig, MethodInfo, Prediction, option
from zsbench.registry import register_method

logger = logging.getLogger(__name__)

#: how LNAMD normalises a layer's tokens before aggregation
LAYER_NORMS = ("image", "token", "none")
#: LayerNorm epsilon of ``nn.LayerNorm`` (``_LNAMD.py``)
LAYER_NORM_EPS = 1e-5


@dataclass
class MuScConfig(MethodConfig):
    """MuSc options; defaults follow ``xrli-U/MuSc`` (``configs/musc.yaml``, ``scripts/musc.sh``,
    ``models/musc.py``) where the paper does not say otherwise."""

    pos_embed_interpolation: str = option(
        "bicubic", "resize of the vision position embedding (24x24 -> 37x37): bicubic without "
                   "antialias, as upstream's bundled open_clip/model.py resize_pos_embed (the "
                   "paper does not say)")
    layers: tuple[int, ...] = option(
        (6, 12, 18, 24), "vision blocks (1-indexed) whose residual-stream patch tokens are scored "
                         "(musc.yaml feature_layers 5 11 17 23, +1 in musc.py)")
    aggregation_degrees: tuple[int, ...] = option(
        (1, 3, 5), "LNAMD neighbourhood sides r (odd): each patch is the mean of its r x r "
                   "neighbours (musc.yaml r_list)")
    layer_norm: str = option(
        "image", "LNAMD normalisation before aggregation: 'image' = LayerNorm over each image's "
                 "whole [C, H, W] token map of a layer, no affine (_LNAMD.py: "
                 "nn.LayerNorm([C, H, W])); 'token' = per token over C; 'none'")
    interval_low: float = option(
        0.0, "MSM interval average: lower end, a fraction of the N-1 reference images whose "
             "sorted minimum distances are averaged (musc.py topmin_min=0)")
    interval_high: float = option(
        0.3, "MSM interval average: upper end as a fraction of N-1 (musc.py topmin_max=0.3); "
             "the interval keeps at least one image")
    rscin: bool = option(
        True, "re-score the image scores with RsCIN (constrained image-level neighbourhood on "
              "the global embeddings, _RsCIN.py); false: max of the patch scores")
    rscin_windows: tuple[int, ...] = option(
        (1, 2, 3), "RsCIN window sizes k (neighbours kept per image, itself included; larger "
                   "than the category = all): musc.py uses 1 2 3 for MVTec AD and BTAD, 1 8 9 "
                   "for VisA")
    map_align_corners: bool = option(
        False, "upsample the patch map with align_corners=True (musc.py: F.interpolate(..., "
               "mode='bilinear', align_corners=True)); False: pixel areas aligned, as the other "
               "methods")
    sigma: float = option(0.0, "Gaussian sigma of the pixel map in pixels (upstream: none)")
    chunk_size: int = option(8, "images per backbone forward and per LNAMD step (memory bound; "
                                "results do not depend on it)")
    score_chunk_size: int = option(
        4, "images per query block and per reference block of the mutual scoring: the distance "
           "block is (q P) x (q P) (memory bound; results do not depend on it)")
    offload_features: bool = option(
        True, "keep the layer tokens of the category on the CPU between the backbone pass and "
              "the scoring (upstream does the same); false keeps them on the device (faster, "
              "+ layers x N x P x C x 4 bytes there)")


# -- LNAMD ----------------------------------------------------------------------------------------


def lnamd(tokens: Tensor, grid: tuple[int, int], degree: int, layer_norm: str = "image"
          ) -> Tensor:
    """Aggregated unit patch features ``[B, P, C]`` of one layer's tokens ``[B, P, C]``: the
    normalisation ``layer_norm`` (:data:`LAYER_NORMS`), the per-channel mean over each patch's
    ``degree`` x ``degree`` neighbourhood (zero padding counted, as upstream's unfold + adaptive
    pooling), then L2 normalisation."""
    x = tokens.float()
    if layer_norm == "image":
        x = F.layer_norm(x, tuple(x.shape[-2:]), eps=LAYER_NORM_EPS)
    elif layer_norm == "token":
        x = F.layer_norm(x, (x.shape[-1],), eps=LAYER_NORM_EPS)
    elif layer_norm != "none":
        raise ConfigError(f"layer_norm {layer_norm!r} is not one of {', '.join(LAYER_NORMS)}")
    if degree > 1:
        x = tokens_to_grid(x, grid)  # [B, C, h, w]
        x = F.avg_pool2d(x, degree, stride=1, padding=degree // 2, count_include_pad=True)
        x = x.flatten(2).transpose(1, 2)
    return l2_normalize(x)


# -- MSM -----------------------------------------------------------------------------------------


def interval_bounds(references: int, low: float, high: float) -> tuple[int, int]:
    """``(start, stop)`` of the interval average over ``references`` sorted distances:
    ``floor(low R)`` .. ``floor(high R)``, widened to keep at least one value."""
    if references < 1:
        raise ValueError("mutual scoring needs at least one reference image (a category of at "
                         "least 2 images)")
    stop = min(references, max(1, math.floor(high * references)))
    start = min(math.floor(low * references), stop - 1)
    return start, stop


def mutual_scores(features: Tensor, low: float = 0.0, high: float = 0.3, chunk: int = 4
                  ) -> Tensor:
    """MSM patch scores ``[N, P]`` of ``features`` ``[N, P, C]`` (N images of one pool).

    For patch m of image i and each other image j the Euclidean distance to j's nearest patch;
    the score is the mean of those N-1 minima between the ``low`` and ``high`` fractions of
    their sorted order (:func:`interval_bounds`). Query and reference images go ``chunk`` at a
    time: a block holds a ``[chunk P, chunk P]`` distance matrix and ``[chunk, P, N]`` minima."""
    n, p, c = features.shape
    start, stop = interval_bounds(n - 1, low, high)
    z = features.float()
    squared = z.square().sum(-1)  # [N, P]
    out = torch.empty(n, p, dtype=torch.float32, device=z.device)
    for q in _slices(n, chunk):
        queries = z[q].reshape(-1, c)
        minima = torch.empty(q.stop - q.start, p, n, dtype=torch.float32, device=z.device)
        for r in _slices(n, chunk):
            block = queries @ z[r].reshape(-1, c).t()  # [q P, r P]
            block.mul_(-2).add_(squared[q].reshape(-1, 1)).add_(squared[r].reshape(1, -1))
            nearest = block.view(q.stop - q.start, p, r.stop - r.start, p).amin(dim=-1)
            minima[:, :, r] = nearest.clamp_min_(0).sqrt_()
        rows = torch.arange(q.stop - q.start, device=z.device)
        minima[rows, :, rows + q.start] = math.inf  # an image never scores itself
        smallest = minima.topk(stop, dim=-1, largest=False, sorted=True).values
        out[q] = smallest[..., start:stop].mean(dim=-1)
    return out


def _slices(count: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, count)) for s in range(0, count, size)]


# -- RsCIN ---------------------------------------------------------------------------------------


def rscin(scores: Tensor, embeddings: Tensor, windows: Sequence[int]) -> Tensor:
    """Re-scored image scores ``[N]`` from ``scores`` ``[N]`` and global embeddings ``[N, E]``.

    Scores min-max normalised over the pool (all equal -> zeros); ``W`` = cosine similarities
    of the embeddings; per window k each row keeps its k largest entries (k capped at N),
    normalised to sum 1, and averages the scores with them; the windows' results are averaged
    (``_RsCIN.py: RsCIN, MMO``)."""
    s = scores.double()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    e = l2_normalize(embeddings.double())
    similarity = e @ e.t()
    n = similarity.shape[0]
    out = torch.zeros_like(s)
    for k in windows:
        keep = similarity.topk(min(int(k), n), dim=1).indices
        weights = torch.zeros_like(similarity).scatter_(1, keep, 1.0) * similarity
        out += (weights / weights.sum(dim=1, keepdim=True)) @ s
    return (out / len(windows)).float()


# -- memory --------------------------------------------------------------------------------------


def estimate_peak_bytes(n_images: int, patches: int, dim: int, *, layers: int = 4,
                        chunk_size: int = 8, score_chunk_size: int = 4,
                        offload_features: bool = True, image_size: int = 0,
                        heads: int = 16, weights_bytes: int = 0, value_bytes: int = 4
                        ) -> dict[str, int]:
    """Estimated device memory (bytes) of MuSc on one category, by phase, and the peak.

    ``patches`` per image (P), token width ``dim`` (C, also the ViT width), ``heads`` of the
    ViT (its attention matrix is counted as if materialised: an upper bound), ``weights_bytes``
    of the backbone, ``image_size`` of the inputs (the evaluator keeps the category's images
    and maps on the device). Phases: ``forward`` (a chunk's activations, ~10 width-sized
    tensors per token, the attention matrix, its layer tokens), ``features`` (one layer x
    degree feature set ``N P C`` plus an LNAMD chunk), ``scoring`` (that set, the
    ``(q P)^2`` distance block and ``q P N`` minima with their top-k values and indices),
    ``maps``; ``stored_tokens`` is on the device only without ``offload_features``."""
    n, p, c, v = int(n_images), int(patches), int(dim), int(value_bytes)
    tokens = p + 1
    stored = 0 if offload_features else layers * n * p * c * v
    images = n * 3 * image_size * image_size * v
    forward = (chunk_size * tokens * c * v * 10 + chunk_size * heads * tokens * tokens * v
               + chunk_size * layers * p * c * v)
    feature_set = n * p * c * v + n * p * v  # features + their squared norms
    lnamd_chunk = 3 * chunk_size * p * c * v
    q = score_chunk_size
    block = (q * p) ** 2 * v + q * p * q * v
    minima = q * p * n * v + q * p * n * (v + 8)  # minima + top-k values and int64 indices
    scores = 2 * n * p * v  # the running sum and one MSM result
    maps = 3 * n * image_size * image_size * v  # upsampled, smoothed, and a temporary
    phases = {
        "weights": int(weights_bytes),
        "images": images,
        "stored_tokens": stored,
        "forward": forward,
        "features": feature_set + lnamd_chunk,
        "scoring": feature_set + block + minima + scores,
        "maps": maps,
    }
    resident = phases["weights"] + images + stored
    phases["peak"] = resident + max(forward, phases["features"] + scores, phases["scoring"], maps)
    return phases


# -- method --------------------------------------------------------------------------------------


@register_method
class MuSc(AnomalyMethod):
    """Mutual scoring of a category's unlabelled images (LNAMD + MSM + RsCIN)."""

    config_class = MuScConfig
    info = MethodInfo(
        name="musc",
        title="MuSc",
        paper="Li et al., MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation "
              "with Mutual Scoring of the Unlabeled Images, ICLR 2024 (arXiv 2401.16753)",
        trainable=False,
        transductive=True,
        code="https://github.com/xrli-U/MuSc",
        license="MIT",
        class_aware=False,
    )
    presets = {
        # models/musc.py as scripts/musc.sh runs it (MVTec AD and BTAD windows; VisA: 1, 8, 9)
        "upstream": {
            "layers": (6, 12, 18, 24),
            "aggregation_degrees": (1, 3, 5),
            "layer_norm": "image",
            "interval_low": 0.0,
            "interval_high": 0.3,
            "rscin": True,
            "rscin_windows": (1, 2, 3),
            "map_align_corners": True,
            "sigma": 0.0,
            "precision": "fp16",
            "pos_embed_interpolation": "bicubic",
            "mlp_activation": "gelu",  # open_clip/factory.py: ViT-L-14-336.json, OpenAI weights
        },
    }

    def __init__(self, config: MuScConfig, backbone: nn.Module):
        super().__init__(config, backbone)
        self.layers = backbone.check_layers(config.layers, "layers")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers {list(config.layers)} lists a block twice")
        degrees = tuple(int(r) for r in config.aggregation_degrees)
        if not degrees or any(r < 1 or r % 2 == 0 for r in degrees):
            raise ConfigError(f"aggregation_degrees must be odd integers >= 1, got "
                              f"{list(config.aggregation_degrees)}")
        self.degrees = degrees
        if config.layer_norm not in LAYER_NORMS:
            raise ConfigError(f"layer_norm {config.layer_norm!r} is not one of "
                              f"{', '.join(LAYER_NORMS)}")
        if not 0.0 <= config.interval_low < config.interval_high <= 1.0:
            raise ConfigError(f"interval_low/interval_high must satisfy 0 <= low < high <= 1, got "
                              f"{config.interval_low}, {config.interval_high}")
        if config.rscin and (not config.rscin_windows
                             or any(int(k) < 1 for k in config.rscin_windows)):
            raise ConfigError(f"rscin_windows must be integers >= 1, got "
                              f"{list(config.rscin_windows)}")
        for name in ("chunk_size", "score_chunk_size"):
            if getattr(config, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
        self.require_non_negative("sigma")
        self._warned_single = False

    @classmethod
    def describe_prompts(cls, config: MuScConfig) -> dict[str, Any]:
        return {"prompts": "none: MuSc compares the images of a category with each other "
                           "and uses no text"}

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[dict[int, Tensor], Tensor]:
        """Residual-stream patch tokens ``{layer: [N, P, C]}`` (on the CPU with
        ``offload_features``) and global embeddings ``[N, E]``, ``chunk_size`` images at a
        time."""
        store = torch.device("cpu") if self.config.offload_features else images.device
        tokens: dict[int, list[Tensor]] = {layer: [] for layer in self.layers}
        embeddings = []
        for part in self.chunks(images.shape[0], self.config.chunk_size):
            features = self.backbone.encode_image(images[part], layers=self.layers,
                                                  token_source="residual")
            for layer in self.layers:
                tokens[layer].append(features.patch_tokens[layer].float().to(store))
            embeddings.append(features.global_embedding.float())
        return ({layer: torch.cat(parts) for layer, parts in tokens.items()},
                torch.cat(embeddings))

    def aggregated(self, tokens: Tensor, degree: int, device: torch.device) -> Tensor:
        """LNAMD features ``[N, P, C]`` of one layer's tokens for one degree, on ``device``."""
        out = torch.empty(tokens.shape, dtype=torch.float32, device=device)
        for part in self.chunks(tokens.shape[0], self.config.chunk_size):
            out[part] = lnamd(tokens[part].to(device), self.backbone.grid_size, degree,
                              self.config.layer_norm)
        return out

    def patch_scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """MSM patch scores ``[N, P]`` (mean over layers and degrees) and the global embeddings
        ``[N, E]`` of a pool of images. A pool of one image has no reference: zero scores and a
        warning (the runner's cost measurement calls :meth:`predict` on one image)."""
        tokens, embeddings = self.encode(images)
        if images.shape[0] < 2:
            if not self._warned_single:  # once per instance (the cost measurement repeats it)
                logger.warning("%s scores each image against the other images of its "
                               "category; a pool of one image (a 1-image category, --limit 1, "
                               "or the single-image latency of --cost) has none: its score and "
                               "map are 0", self.info.name)
                self._warned_single = True
            patches = tokens[self.layers[0]].shape[1]
            return torch.zeros(1, patches, device=images.device), embeddings
        total = torch.zeros(images.shape[0], tokens[self.layers[0]].shape[1],
                            dtype=torch.float32, device=images.device)
        for layer in self.layers:
            for degree in self.degrees:
                features = self.aggregated(tokens[layer], degree, images.device)
                total += mutual_scores(features, self.config.interval_low,
                                       self.config.interval_high, self.config.score_chunk_size)
                del features
        return total / (len(self.layers) * len(self.degrees)), embeddings

    def image_scores(self, maps: Tensor, embeddings: Tensor) -> Tensor:
        """Max of each upsampled map ``[N, H, W]`` (before any Gaussian), re-scored by RsCIN
        when ``rscin``."""
        scores = maps.flatten(1).amax(dim=1)
        if self.config.rscin:
            scores = rscin(scores, embeddings, self.config.rscin_windows)
        return scores

    def _predict(self, images: Tensor, class_names: list[str]) -> Prediction:
        patch_scores, embeddings = self.patch_scores(images)
        grid = tokens_to_grid(patch_scores, self.backbone.grid_size)
        maps = upsample(grid, images.shape[-1], align_corners=self.config.map_align_corners)
        return Prediction(self.image_scores(maps, embeddings),
                          gaussian_smooth(maps, self.config.sigma))

    def estimate_peak_bytes(self, n_images: int) -> dict[str, int]:
        """:func:`estimate_peak_bytes` for this method's backbone and config."""
        visual = self.backbone.model.visual
        heads = visual.transformer.resblocks[0].attn.num_heads
        weights = sum(t.numel() * t.element_size() for t in self.backbone.parameters())
        h, w = self.backbone.grid_size
        return estimate_peak_bytes(
            n_images, h * w, self.backbone.vision_width, layers=len(self.layers),
            chunk_size=self.config.chunk_size, score_chunk_size=self.config.score_chunk_size,
            offload_features=self.config.offload_features, image_size=self.config.image_size,
            heads=heads, weights_bytes=weights)
