"""Fixed prompt ensembles (state words x templates) and their encoding into class embeddings.

A prompt ensemble describes a class twice, as normal and as anomalous: every state word (``"{}"``
is the class name, e.g. ``"flawless {}"``) is put into every template (e.g. ``"a photo of a {}."``).
The embeddings of one side are averaged into one vector and L2-normalised, giving a ``[2, D]``
text matrix (row 0 normal, row 1 anomalous) per class name.

Sources of the strings (facts read from the public code, see METHODS.md section 4):

- WinCLIP as in anomalib (``src/anomalib/models/image/winclip/prompting.py``, the lists of the
  WinCLIP paper's appendix; also used by ``zqhang/Accurate-WinCLIP-pytorch``): 7 normal and 4
  anomalous states, 21 templates (one of them listed twice upstream, kept so the average matches).
- WinCLIP as in APRIL-GAN (``ByChelsea/VAND-APRIL-GAN`` ``prompt_ensemble.py``, reused by
  AnomalyCLIP's baselines and caoyunkang/WinClip's lineage): the same 7 normal states, 5 anomalous
  states (adds ``"broken {}"``), 35 templates.
- CLIP ImageNet templates: the 80 templates of OpenAI's CLIP zero-shot ImageNet classifier, read
  from ``open_clip.zero_shot_metadata`` (CLIP-AC of the WinCLIP paper uses them).
- AnoVL (``hq-deng/AnoVL`` ``prompt_ensemble.py``): 7 normal / 7 anomalous states and
  domain-aware templates: 22 base templates whose picture noun is replaced by domain words,
  "industrial photo", "textural photo", "surface picture" for texture categories and
  "industrial photo", "industrial image", "manufacturing image" for objects (66 each).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from zsbench.anomaly_maps import l2_normalize

logger = logging.getLogger(__name__)

# -- WinCLIP, anomalib lineage (the WinCLIP paper's lists) ----------------------------------------
WINCLIP_NORMAL_STATES = (
    "{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
    "{} without damage",
)
WINCLIP_ANOMALIB_ANOMALOUS_STATES = (
    "damaged {}", "{} with flaw", "{} with defect", "{} with damage",
)
WINCLIP_ANOMALIB_TEMPLATES = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
    "a dark photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)

# -- WinCLIP, APRIL-GAN lineage ----------------------------------------------------------------
APRIL_GAN_NORMAL_STATES = WINCLIP_NORMAL_STATES
APRIL_GAN_ANOMALOUS_STATES = (
    "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage",
)
APRIL_GAN_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.",
    "a photo of a large {}.", "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a photo of the small {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)

# -- CLIP ImageNet templates and CLIP-AC ----------------------------------------------------------
CLIP_IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{}")
                                                 for template in OPENAI_IMAGENET_TEMPLATES)
CLIP_AC_NORMAL_STATES = ("normal {}",)
CLIP_AC_ANOMALOUS_STATES = ("anomalous {}",)

# -- AnoVL: domain-aware templates --------------------------------------------------------------
ANOVL_NORMAL_STATES = (
    "normal {}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
    "{} without defect", "{} without damage",
)
ANOVL_ANOMALOUS_STATES = (
    "damaged {}", "abnormal {}", "imperfect {}", "blemished {}", "{} with flaw",
    "{} with defect", "{} with damage",
)
#: MVTec AD texture categories (AnoVL ``texture_list``); other class names are objects.
ANOVL_TEXTURE_CLASSES = ("carpet", "leather", "grid", "tile", "wood")
#: Picture nouns replacing "photo" in the base templates, per domain.
ANOVL_DOMAIN_WORDS = {
    "texture": ("industrial photo", "textural photo", "surface picture"),
    "object": ("industrial photo", "industrial image", "manufacturing image"),
}
#: AnoVL's 22 base templates; ``<pic>`` is the picture noun (with its article where the noun
#: starts the template). No final period, as upstream.
ANOVL_BASE_TEMPLATES = (
    "a cropped <pic> of the {}", "a cropped <pic> of a {}", "a close-up <pic> of a {}",
    "a close-up <pic> of the {}", "a bright <pic> of a {}", "a bright <pic> of the {}",
    "a dark <pic> of the {}", "a dark <pic> of a {}", "a jpeg corrupted <pic> of a {}",
    "a jpeg corrupted <pic> of the {}", "a blurry <pic> of the {}", "a blurry <pic> of a {}",
    "<a pic> of a {}", "<a pic> of the {}", "<a pic> of a small {}", "<a pic> of the small {}",
    "<a pic> of a large {}", "<a pic> of the large {}", "<a pic> of the {} for visual inspection",
    "<a pic> of a {} for visual inspection", "<a pic> of the {} for anomaly detection",
    "<a pic> of a {} for anomaly detection",
)


def anovl_domain_templates(picture_noun: str) -> tuple[str, ...]:
    """The 22 base templates with ``picture_noun`` (e.g. "industrial photo") filled in."""
    article = "an" if picture_noun[:1].lower() in "aeiou" else "a"
    return tuple(t.replace("<a pic>", f"{article} {picture_noun}").replace("<pic>", picture_noun)
                 for t in ANOVL_BASE_TEMPLATES)


def anovl_domain(class_name: str, texture_classes: Sequence[str] = ANOVL_TEXTURE_CLASSES) -> str:
    """"texture" when the class name (case and ``_`` ignored) is a texture class, else "object"."""
    key = class_name.strip().lower().replace("_", " ")
    textures = {name.strip().lower().replace("_", " ") for name in texture_classes}
    return "texture" if key in textures else "object"


@dataclass(frozen=True)
class PromptEnsemble:
    """Normal and anomalous state words crossed with templates."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("normal_states", "anomalous_states", "templates"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"prompt ensemble: {name} is empty")
            bad = [v for v in values if v.count("{}") != 1]
            if bad:
                raise ValueError(f"prompt ensemble: every entry of {name} needs exactly one "
                                 f"'{{}}' placeholder, got {bad[:3]}")

    def prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        """(normal prompts, anomalous prompts) for ``class_name``, state-major order."""
        return (compose_prompts(self.normal_states, self.templates, class_name),
                compose_prompts(self.anomalous_states, self.templates, class_name))

    def describe(self) -> dict[str, list[str]]:
        return {"normal_states": list(self.normal_states),
                "anomalous_states": list(self.anomalous_states),
                "templates": list(self.templates)}


def compose_prompts(states: Sequence[str], templates: Sequence[str], class_name: str
                    ) -> list[str]:
    """Every state (with ``class_name`` filled in) inside every template, state-major."""
    return [template.format(state.format(class_name)) for state in states
            for template in templates]


WINCLIP_ANOMALIB = PromptEnsemble(WINCLIP_NORMAL_STATES, WINCLIP_ANOMALIB_ANOMALOUS_STATES,
                                  WINCLIP_ANOMALIB_TEMPLATES)
WINCLIP_APRIL_GAN = PromptEnsemble(APRIL_GAN_NORMAL_STATES, APRIL_GAN_ANOMALOUS_STATES,
                                   APRIL_GAN_TEMPLATES)
CLIP_AC = PromptEnsemble(CLIP_AC_NORMAL_STATES, CLIP_AC_ANOMALOUS_STATES,
                         CLIP_IMAGENET_TEMPLATES)
ANOVL_ENSEMBLES = {
    domain: PromptEnsemble(ANOVL_NORMAL_STATES, ANOVL_ANOMALOUS_STATES,
                           tuple(t for noun in nouns for t in anovl_domain_templates(noun)))
    for domain, nouns in ANOVL_DOMAIN_WORDS.items()
}

#: How the embeddings of one side of an ensemble are averaged.
AVERAGING_MODES = ("normalized", "raw")


def _has_causal_text_mask(backbone: torch.nn.Module) -> bool:
    text = getattr(backbone.model, "text", backbone.model)
    return getattr(text, "attn_mask", None) is not None


def encode_prompts(backbone: torch.nn.Module, prompts: Sequence[str], batch_size: int = 256
                   ) -> Tensor:
    """Unnormalised text embeddings ``[P, D]`` of plain strings, in batches.

    With a causal text tower (CLIP's), positions after the last end-of-text token cannot change
    the pooled embedding, so token ids are cut to the longest prompt: the same embeddings, several
    times faster than the full context length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for start in range(0, len(prompts), batch_size):
        ids = backbone.tokenize(list(prompts[start:start + batch_size]))
        if _has_causal_text_mask(backbone):
            ids = ids[:, :int(ids.argmax(dim=-1).max()) + 1]
        parts.append(backbone.encode_text(ids))
    if not parts:
        raise ValueError("no prompts to encode")
    return torch.cat(parts, dim=0)


def encode_ensemble(backbone: torch.nn.Module, ensemble: PromptEnsemble, class_name: str,
                    averaging: str = "normalized", batch_size: int = 256) -> Tensor:
    """``[2, D]`` unit text embeddings (normal, anomalous) of ``ensemble`` for ``class_name``.

    ``averaging="normalized"`` L2-normalises every prompt embedding before the mean (APRIL-GAN);
    ``"raw"`` averages the unnormalised embeddings (anomalib, caoyunkang/WinClip V1, AnoVL). The
    mean is L2-normalised in both cases."""
    if averaging not in AVERAGING_MODES:
        raise ValueError(f"averaging {averaging!r} is not one of {', '.join(AVERAGING_MODES)}")
    sides = []
    for prompts in ensemble.prompts(class_name):
        embeddings = encode_prompts(backbone, prompts, batch_size)
        if averaging == "normalized":
            embeddings = l2_normalize(embeddings)
        sides.append(l2_normalize(embeddings.mean(dim=0)))
    return torch.stack(sides, dim=0)


class ClassTextCache:
    """Fixed ``[2, D]`` text embeddings per class name, computed once and reused.

    ``encode(class_name)`` builds one class's embeddings. Calling the cache with B class names
    returns ``[B, 2, D]``. Embeddings are computed outside inference mode and without gradients,
    so that a cache filled during evaluation also serves training steps."""

    def __init__(self, encode: Callable[[str], Tensor]):
        self._encode = encode
        self._cache: dict[str, Tensor] = {}

    def get(self, class_name: str) -> Tensor:
        if not isinstance(class_name, str) or not class_name.strip():
            raise ValueError(f"class name must be a non-empty string, got {class_name!r}")
        cached = self._cache.get(class_name)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                cached = self._encode(class_name).detach()
            self._cache[class_name] = cached
            logger.debug("encoded text embeddings for class %r", class_name)
        return cached

    def __call__(self, class_names: Sequence[str]) -> Tensor:
        if isinstance(class_names, str):
            raise TypeError("class_names must be a sequence of class names, not one string")
        if len(class_names) == 0:
            raise ValueError("class_names is empty")
        return torch.stack([self.get(name) for name in class_names], dim=0)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
