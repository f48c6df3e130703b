"""Build a :class:`~zsbench.backbone.backbone.Backbone`: model configs, weights resolution, loading.

``pretrained`` is ``None`` (random weights from the caller's torch seed), a local file (an
open_clip state dict, a ``.safetensors`` file or an OpenAI TorchScript archive) or an open_clip tag
such as ``"openai"``. A tag uses a cached download when there is one; otherwise the network is
probed with a short timeout first, so that an offline machine fails in seconds with a message that
says where the weights come from and how to pass a local copy.

The activation follows the weights, not only the model name (:func:`plan_activation`): OpenAI
weights were trained with QuickGELU, so ``ViT-L-14-336`` with the ``openai`` tag or with an OpenAI
weights file is built as ``ViT-L-14-336-quickgelu`` (logged, and recorded as the backbone's name);
a contradiction that cannot be resolved is an error naming both sides.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import threading
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from zsbench.backbone.backbone import POS_EMBED_INTERPOLATIONS, PRECISIONS, Backbone
from zsbench.errors import ResourceUnavailableError
from zsbench.provenance import sha256_file as file_sha256  # re-exported (public name)

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
NETWORK_PROBE_TIMEOUT_S = 3.0
OPENAI_CLIP_CACHE = Path("~/.cache/clip").expanduser()  # open_clip's cache for URL downloads
# Non-parameter entries of OpenAI TorchScript state dicts (dropped as open_clip's openai.py does).
NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
OPENAI_TAG = "openai"
QUICKGELU_SUFFIX = "-quickgelu"
# Keys of the OpenAI CLIP layout (also open_clip's own CLIP state dicts): a ViT vision tower with
# OpenAI names and the text tower at the top level (no timm ``visual.trunk``, no ``text.`` tower).
OPENAI_LAYOUT_KEYS = ("visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
                      "transformer.resblocks.0.attn.in_proj_weight", "text_projection")

_configs_registered = False


class WeightsUnavailableError(ResourceUnavailableError):
    """Pretrained weights named by a tag cannot be obtained (offline, download failed)."""


def register_model_configs() -> None:
    """Register the JSON model configs shipped in ``model_configs/`` with open_clip (idempotent)."""
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


def _looks_like_path(value: str) -> bool:
    separators = {"/", os.sep, os.altsep or "/"}
    return any(sep in value for sep in separators) or value.lower().endswith(WEIGHT_SUFFIXES)


def _check_model_name(name: str) -> dict[str, Any]:
    """The open_clip config of ``name``; a clear ``ValueError`` for unknown or unsupported names."""
    register_model_configs()
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"Unknown open_clip model {name!r}.{hint} "
                         f"See open_clip.list_models() for the {len(known)} known names.")
    config = open_clip.get_model_config(name)
    if "timm_model_name" in config["vision_cfg"] or "hf_model_name" in config["text_cfg"]:
        raise ValueError(f"Model {name!r} has a timm or Hugging Face tower; zsbench's backbone "
                         "supports open_clip's own VisionTransformer and TextTransformer only.")
    return config


def _download_location(tag_config: Mapping[str, Any]) -> tuple[str, str, int, bool]:
    """(human-readable source, host, port, is the Hugging Face Hub) of a tag's download."""
    hf_repo = tag_config.get("hf_hub", "")
    if hf_repo and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants as hf_constants

        repo_id, filename = os.path.split(hf_repo)
        endpoint = urlparse(hf_constants.ENDPOINT)
        source = f"{hf_constants.ENDPOINT}/{repo_id} (file {filename or HF_WEIGHTS_NAME})"
        return source, endpoint.hostname or "huggingface.co", endpoint.port or 443, True
    url = urlparse(tag_config.get("url", ""))
    return tag_config.get("url", ""), url.hostname or "", url.port or 443, False


def _cached_weights(tag_config: Mapping[str, Any]) -> Path | None:
    """A previously downloaded weights file for a tag, found without any network access."""
    if tag_config.get("file"):
        return Path(tag_config["file"])
    hf_repo = tag_config.get("hf_hub", "")
    if hf_repo and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_repo)
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str) and os.path.isfile(cached):
                return Path(cached)
    url = tag_config.get("url", "")
    if url:
        cached_file = OPENAI_CLIP_CACHE / os.path.basename(urlparse(url).path)
        if cached_file.is_file():
            return cached_file
    return None


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants as hf_constants
    except ImportError:
        return False
    return bool(hf_constants.HF_HUB_OFFLINE)


def network_reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Whether a TCP connection to ``host:port`` (or the configured HTTPS proxy) opens in time.

    Runs in a daemon thread so that a hanging DNS lookup cannot block longer than ``timeout``
    (default ``NETWORK_PROBE_TIMEOUT_S``)."""
    timeout = NETWORK_PROBE_TIMEOUT_S if timeout is None else timeout
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parsed.hostname or host, parsed.port or 80
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


def _unavailable(name: str, tag: str, reason: str, source: str) -> WeightsUnavailableError:
    problem = (f"Cannot get the {name!r} weights for tag {tag!r}: {reason}. They are downloaded "
               f"from {source}. Download that file on a machine with network access and pass it "
               f"as a local file: ")
    return WeightsUnavailableError(f"{problem}pretrained='/path/to/file'.",
                                   cli=f"{problem}--pretrained /path/to/file")


def resolve_weights(name: str, pretrained: str | os.PathLike[str] | None) -> tuple[Path | None,
                                                                                  dict[str, Any]]:
    """The weights file for ``pretrained`` (None for random weights) and the tag's open_clip config.

    Raises ``FileNotFoundError`` for a path that does not exist, ``ValueError`` for a tag the model
    does not have (listing its tags) and :class:`WeightsUnavailableError` when a tag's weights are
    neither cached nor downloadable right now."""
    if pretrained is None or (isinstance(pretrained, str) and pretrained.strip().lower()
                              in ("", "none")):
        return None, {}
    value = os.fspath(pretrained)
    if os.path.isfile(value):
        return Path(value), {}
    if isinstance(pretrained, os.PathLike) or _looks_like_path(value):
        raise FileNotFoundError(f"Weights file {value!r} does not exist (pretrained={value!r}).")
    tag_config = open_clip.get_pretrained_cfg(name, value)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(name)
        listing = ", ".join(tags) if tags else "none (use a local file or pretrained=None)"
        raise ValueError(f"Unknown pretrained tag {value!r} for model {name!r}; "
                         f"known tags: {listing}.")
    cached = _cached_weights(tag_config)
    if cached is not None:
        logger.info("using cached weights %s for %s/%s", cached, name, value)
        return cached, tag_config
    source, host, port, from_hub = _download_location(tag_config)
    if from_hub and _hf_offline():
        raise _unavailable(name, value, "HF_HUB_OFFLINE is set and no cached copy exists",
                           source)
    if not network_reachable(host, port):
        raise _unavailable(name, value, f"no cached copy and {host}:{port} is unreachable",
                           source)
    logger.info("downloading weights for %s/%s from %s", name, value, source)
    try:
        downloaded = open_clip.pretrained.download_pretrained(tag_config)
    except Exception as err:  # any download failure gets the same actionable message
        raise _unavailable(name, value, f"download failed ({err})", source) from err
    return Path(downloaded), tag_config


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(entry.endswith("constants.pkl") for entry in archive.namelist())


@dataclass(frozen=True)
class WeightsFileInfo:
    """What a weights file says about its origin (used to choose the activation)."""

    torchscript: bool  # an OpenAI-style TorchScript archive (how OpenAI released CLIP)
    openai_entries: bool  # holds OpenAI's non-parameter entries (input_resolution, ...)
    openai_layout: bool  # OpenAI CLIP key names (shared by open_clip's own CLIP state dicts)

    @property
    def openai_release(self) -> bool:
        """Certainly OpenAI's release: its TorchScript archive or a state dict taken from one."""
        return self.torchscript or self.openai_entries

    def describe(self, path: str | os.PathLike[str]) -> str:
        if self.torchscript:
            return f"weights file {os.fspath(path)!r} (an OpenAI TorchScript archive)"
        if self.openai_entries:
            return (f"weights file {os.fspath(path)!r} (an OpenAI state dict: it holds "
                    f"{', '.join(NON_PARAMETER_KEYS)})")
        return f"weights file {os.fspath(path)!r}"


def read_weights_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor],
                                                             WeightsFileInfo]:
    """:func:`read_state_dict` and what the file says about its origin."""
    path = Path(path)
    torchscript = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        elif _is_torchscript_archive(path):
            torchscript = True
            with warnings.catch_warnings():  # torch deprecates jit.load; OpenAI archives need it
                warnings.simplefilter("ignore", FutureWarning)
                loaded = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"Cannot read weights file {str(path)!r}: {err}") from err
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"Weights file {str(path)!r} holds no state dict "
                         f"(found {type(loaded).__name__}).")
    state = {(key[len("module."):] if key.startswith("module.") else key): value
             for key, value in loaded.items() if torch.is_tensor(value)}
    openai_entries = any(key in state for key in NON_PARAMETER_KEYS)
    for key in NON_PARAMETER_KEYS:
        state.pop(key, None)
    openai_layout = (all(key in state for key in OPENAI_LAYOUT_KEYS)
                     and not any(key.startswith("visual.trunk.") for key in state))
    return state, WeightsFileInfo(torchscript, openai_entries, openai_layout)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: open_clip/PyTorch checkpoint, safetensors or TorchScript archive.

    Unwraps ``{"state_dict": ...}``, strips a ``module.`` prefix and drops the non-parameter
    entries of OpenAI archives."""
    return read_weights_file(path)[0]


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor],
                path: str | os.PathLike[str]) -> None:
    logit_scale = state.get("logit_scale")
    if logit_scale is not None and logit_scale.ndim != model.logit_scale.ndim:
        state["logit_scale"] = logit_scale.reshape(model.logit_scale.shape)
    own = model.state_dict()
    for key in {name for name, _ in model.named_buffers()} - set(own):
        state.pop(key, None)  # non-persistent buffers (attn_mask) that traced archives persist
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise ValueError(f"Weights file {os.fspath(path)!r} does not fit the model: "
                         f"missing [{show(missing)}], unexpected [{show(unexpected)}], "
                         f"wrong shape [{show(wrong_shape)}].")
    model.load_state_dict(state, strict=True)


def load_weights_file(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a weights file strictly into an open_clip model; mismatches name the file."""
    _load_state(model, read_state_dict(path), path)


# -- activation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActivationPlan:
    """How to build a model so that its activation fits its weights."""

    model_name: str  # the open_clip name to build: the effective name recorded on the backbone
    force_quick_gelu: bool  # open_clip.create_model(force_quick_gelu=...)
    quick_gelu: bool  # the activation the built model has
    note: str | None = None  # what was resolved, logged as a warning


def _base_name(name: str) -> str:
    return name[:-len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else name


def _without_quick_gelu(config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "quick_gelu"}


def quickgelu_variant(name: str, config: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """``(model name, force_quick_gelu)`` that builds model ``name`` with QuickGELU.

    ``name`` itself when its config has ``quick_gelu``; else the registered ``<name>-quickgelu``
    when that config is the same apart from ``quick_gelu``; else ``name`` with
    ``force_quick_gelu=True`` (open_clip's ``create_model`` sets ``quick_gelu`` then)."""
    config = open_clip.get_model_config(name) if config is None else config
    if config.get("quick_gelu", False):
        return name, False
    candidate = name + QUICKGELU_SUFFIX
    if candidate in open_clip.list_models():
        other = open_clip.get_model_config(candidate)
        if other.get("quick_gelu", False) and \
                _without_quick_gelu(other) == _without_quick_gelu(config):
            return candidate, False
    return name, True


def _has_openai_weights(name: str) -> bool:
    """Whether OpenAI released weights for this architecture (an ``openai`` tag exists)."""
    return any(OPENAI_TAG in open_clip.list_pretrained_tags_by_model(candidate)
               for candidate in {name, _base_name(name), _base_name(name) + QUICKGELU_SUFFIX})


def _weights_activation(name: str, tag: str | None, tag_config: Mapping[str, Any] | None,
                        weights_file: str | os.PathLike[str] | None,
                        file_info: WeightsFileInfo | None) -> tuple[bool | None, bool, str]:
    """What the weights need: ``(quick_gelu or None when unknown, certain, their source)``
    (the order of evidence of :func:`plan_activation`)."""
    if tag_config:
        return bool(tag_config.get("quick_gelu", False)), True, f"pretrained tag {tag!r}"
    if file_info is not None and weights_file is not None:
        source = file_info.describe(weights_file)
        if file_info.openai_release:
            return True, True, source
        if file_info.openai_layout and _has_openai_weights(name):
            return True, False, source
        return None, False, source
    return None, False, ""


def plan_activation(name: str, config: Mapping[str, Any], *, tag: str | None = None,
                    tag_config: Mapping[str, Any] | None = None,
                    weights_file: str | os.PathLike[str] | None = None,
                    file_info: WeightsFileInfo | None = None,
                    quick_gelu: bool | None = None) -> ActivationPlan:
    """Choose QuickGELU or GELU for model ``name`` (open_clip ``config``) and its weights.

    What the weights need, strongest first:

    - an open_clip tag: its ``quick_gelu`` (``openai`` and other QuickGELU tags are True);
    - a local file that is certainly OpenAI's release (TorchScript archive, or a state dict
      with OpenAI's ``input_resolution``/``context_length``/``vocab_size`` entries): QuickGELU;
    - a local file in the OpenAI CLIP key layout for an architecture OpenAI released weights
      for (an ``openai`` tag exists): QuickGELU, an assumption (open_clip saves its own CLIP
      weights with the same keys), logged as such; ``quick_gelu=False`` overrides it;
    - otherwise (random weights, other files) the model config.

    ``quick_gelu`` (True/False) states the activation explicitly; it is an error when it
    contradicts a tag or a certain OpenAI file. When the weights need QuickGELU and the config
    has GELU, the QuickGELU variant is built (``<name>-quickgelu`` when registered, else
    ``force_quick_gelu``) and the plan carries a note saying so. When the weights need GELU but
    the config has QuickGELU (a ``-quickgelu`` name), it is a ``ValueError`` naming both."""
    model_quick_gelu = bool(config.get("quick_gelu", False))
    needed, certain, source = _weights_activation(name, tag, tag_config, weights_file, file_info)
    activation = {True: "QuickGELU", False: "GELU"}
    if quick_gelu is not None:
        if certain and bool(quick_gelu) != needed:
            raise ValueError(f"quick_gelu={bool(quick_gelu)} contradicts the weights: {source} "
                             f"of model {name!r} needs {activation[needed]} (quick_gelu="
                             f"{needed}).")
        wanted, reason = bool(quick_gelu), f"quick_gelu={bool(quick_gelu)} was asked for"
    elif needed is None:
        wanted, reason = model_quick_gelu, ""
    else:
        wanted = needed
        reason = (f"{source} was trained with {activation[needed]}" if certain else
                  f"{source} has the OpenAI CLIP key layout and OpenAI's {_base_name(name)} "
                  f"weights were trained with QuickGELU (an assumption: open_clip saves GELU "
                  f"weights with the same keys; pass quick_gelu=False to load_backbone, or use "
                  f"the weights' open_clip tag, for GELU weights)")
    if wanted == model_quick_gelu:
        return ActivationPlan(name, False, wanted)
    if not wanted:
        base = _base_name(name)
        hint = (f"use model {base!r}" if base != name and base in open_clip.list_models()
                else "use a model config without quick_gelu")
        raise ValueError(f"model {name!r} uses QuickGELU (quick_gelu true in its config) but "
                         f"{reason}; {hint}.")
    variant, force = quickgelu_variant(name, config)
    built = f"{variant!r}" if not force else f"{name!r} with force_quick_gelu=True"
    note = (f"QuickGELU/GELU mismatch resolved: model {name!r} uses GELU (quick_gelu false in its "
            f"config) but {reason}; building {built} (QuickGELU), recorded as backbone name "
            f"{variant!r}.")
    return ActivationPlan(variant, force, True, note)


def _file_normalisation(name: str) -> dict[str, Any]:
    """mean/std for weights from a file: those of the model's tags when all tags agree."""
    stats = {(tuple(cfg["mean"]), tuple(cfg["std"]))
             for tag in open_clip.list_pretrained_tags_by_model(name)
             if "mean" in (cfg := open_clip.get_pretrained_cfg(name, tag))}
    if len(stats) == 1:
        mean, std = stats.pop()
        return {"mean": mean, "std": std}
    return {}


class _RandomInitNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """Drop open_clip's root-logger warning for a model built without weights: zsbench always
    builds the model empty and loads the weights itself, so the notice would be misleading."""
    notice = _RandomInitNoticeFilter()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def init_random_vision_tower(model: torch.nn.Module) -> None:
    """Give a random vision tower the scaled init open_clip uses for its text tower.

    open_clip leaves its vision ``init_parameters`` commented out (a FIXME in
    ``open_clip/transformer.py``), so random vision blocks keep PyTorch's default init, whose
    updates swamp the residual stream and mix all tokens within a few layers. With the GPT-2
    style scaling (attention in-projection std ``w^-0.5``, output projections
    ``w^-0.5 (2L)^-0.5``, MLP input ``(2w)^-0.5``) random patch tokens stay local, which is what
    tests and the offline demo with random weights need. Pretrained weights are unaffected."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        return
    width, layers = transformer.width, len(blocks)
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    for block in blocks:
        attn = block.attn
        if hasattr(attn, "in_proj_weight") and attn.in_proj_weight is not None:
            torch.nn.init.normal_(attn.in_proj_weight, std=width ** -0.5)
            torch.nn.init.normal_(attn.out_proj.weight, std=proj_std)
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "c_fc"):
            torch.nn.init.normal_(mlp.c_fc.weight, std=(2 * width) ** -0.5)
            torch.nn.init.normal_(mlp.c_proj.weight, std=proj_std)


def load_backbone(name: str, pretrained: str | os.PathLike[str] | None = None,
                  image_size: int | None = None, device: str | torch.device = "cpu",
                  precision: str = "fp32", pos_embed_interpolation: str = "bilinear",
                  quick_gelu: bool | None = None, mlp_activation: str = "native") -> Backbone:
    """Build the open_clip model ``name`` with its weights and wrap it as a frozen ``Backbone``.

    ``image_size`` defaults to the config's native size and must be a multiple of the patch size;
    ``precision`` "fp32" computes in float32 even inside an enclosing autocast, "bf16"/"fp16"
    autocast inside the encode calls (weights stay fp32); ``pos_embed_interpolation`` is one of
    ``POS_EMBED_INTERPOLATIONS``. The activation follows the weights (:func:`plan_activation`;
    ``quick_gelu`` True/False states it explicitly); the backbone's ``name`` is the model that was
    built (e.g. ``ViT-L-14-336-quickgelu`` for ``ViT-L-14-336`` with OpenAI weights) and its
    ``weights_sha256`` the sha256 of the weights file (local or the tag's cached download).
    ``mlp_activation`` "gelu" computes the blocks with exact GELU whatever the model has (an
    upstream quirk; ``MLP_ACTIVATIONS``).
    """
    config = _check_model_name(name)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"pos_embed_interpolation {pos_embed_interpolation!r} is not one of "
                         f"{', '.join(POS_EMBED_INTERPOLATIONS)}")
    patch_size = config["vision_cfg"].get("patch_size", 16)
    native_size = config["vision_cfg"].get("image_size", 224)
    image_size = native_size if image_size is None else image_size
    if not isinstance(image_size, int) or image_size <= 0 or image_size % patch_size:
        raise ValueError(f"image_size {image_size!r} must be a positive multiple of the patch "
                         f"size {patch_size} of model {name!r}")
    weights_path, tag_config = resolve_weights(name, pretrained)
    state: dict[str, torch.Tensor] | None = None
    file_info: WeightsFileInfo | None = None
    weights_sha256 = None
    if weights_path is not None:
        state, file_info = read_weights_file(weights_path)
        weights_sha256 = file_sha256(weights_path)
    plan = plan_activation(name, config, tag=None if not tag_config else os.fspath(pretrained),
                           tag_config=tag_config, weights_file=weights_path,
                           file_info=file_info, quick_gelu=quick_gelu)
    if plan.note:
        logger.warning("%s", plan.note)
    normalisation = ({k: tag_config[k] for k in ("mean", "std") if k in tag_config}
                     if tag_config else _file_normalisation(name))
    with _without_random_init_notice():
        model = open_clip.create_model(plan.model_name, pretrained=None, precision="fp32",
                                       device="cpu", force_quick_gelu=plan.force_quick_gelu,
                                       force_preprocess_cfg=normalisation or None)
    if weights_path is None:
        init_random_vision_tower(model)
        logger.info("%s: random weights (scaled vision init)", plan.model_name)
    else:
        _load_state(model, state, weights_path)
        logger.info("loaded %s weights from %s (sha256 %s, %s)", plan.model_name, weights_path,
                    weights_sha256[:12], "QuickGELU" if plan.quick_gelu else "GELU")
    backbone = Backbone(model, name=plan.model_name, pretrained=None if weights_path is None
                        else os.fspath(pretrained), image_size=image_size, precision=precision,
                        weights_sha256=weights_sha256,
                        pos_embed_interpolation=pos_embed_interpolation,
                        mlp_activation=mlp_activation)
    return backbone.to(device)
