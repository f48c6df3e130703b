"""The contract every anomaly-detection method implements, and the config-driven factory.

A method is a ``torch.nn.Module`` over the shared backbone. It declares a config dataclass
(subclass of :class:`MethodConfig`) and a :class:`MethodInfo`, and implements :meth:`predict`;
a trainable method also implements :meth:`loss` and :meth:`parameter_groups`. Methods never open
files, parse datasets or compute metrics: the trainer and the evaluator do that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from zsbench.registry import METHODS

logger = logging.getLogger(__name__)


def option(default: Any, help: str) -> Any:
    """A config field with a help text (shown by ``zsbench methods info``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """Fields shared by every method; subclasses add their own (prompts, layers, quirk flags).

    Upstream quirks are boolean fields named after what they do, each with a help text that cites
    where it comes from."""

    backbone: str = option("ViT-L-14-336-quickgelu", "open_clip model name")
    pretrained: str | None = option(
        "openai", "open_clip pretrained tag, a local weights file, or none (random weights)")
    image_size: int = option(518, "input side in pixels (a multiple of the patch size)")
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast on CUDA only)")


@dataclass(frozen=True)
class MethodInfo:
    """What ``zsbench methods list`` shows about a method."""

    name: str
    title: str
    paper: str  # citation, e.g. "Zhou et al., AnomalyCLIP, ICLR 2024"
    trainable: bool
    transductive: bool = False  # adapts on the test images themselves (e.g. AnoVL)
    code: str = ""  # upstream repository
    license: str = ""
    class_aware: bool = False  # uses the category word in prompts


class Prediction(NamedTuple):
    """Output of :meth:`AnomalyMethod.predict`."""

    image_scores: Tensor  # [B], higher = more anomalous
    anomaly_maps: Tensor  # [B, H, W] at the input resolution, higher = more anomalous


class AnomalyMethod(nn.Module):
    """Base class of all methods. Subclasses set ``info`` and ``config_class``."""

    info: ClassVar[MethodInfo]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.backbone.requires_grad_(False)

    # -- inference ---------------------------------------------------------------------------
    def predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        """Score a batch of preprocessed images ``[B, 3, S, S]``; ``class_names`` has B words."""
        raise NotImplementedError

    # -- training (trainable methods only) ---------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of a batch with keys ``image`` [B,3,S,S], ``mask`` [B,S,S] in {0,1},
        ``label`` [B] (0 normal, 1 anomaly) and ``class_name`` (B words); returns the total loss
        and its named parts for logging."""
        raise NotImplementedError(f"method {self.info.name!r} is training-free")

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``{"params": [...], "lr": ...}``); empty if training-free.

        A group without "lr" uses the trainer's learning rate."""
        return []

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state of the trainable parameters and buffers only (what a checkpoint stores)."""
        names = {id(p) for g in self.parameter_groups() for p in g["params"]}
        return {k: v.detach().clone() for k, v in self.named_parameters() if id(v) in names}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned; extra or missing keys are errors."""
        own = self.trainable_state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise KeyError(f"checkpoint does not fit method {self.info.name!r}: "
                           f"missing {missing}, unexpected {extra}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                if params[k].shape != v.shape:
                    raise ValueError(f"checkpoint tensor {k!r} has shape {tuple(v.shape)}, "
                                     f"method expects {tuple(params[k].shape)}")
                params[k].copy_(v)

    @classmethod
    def describe_prompts(cls, config: MethodConfig) -> dict[str, Any]:
        """Exact prompt strings (and templates) for ``config``, printed by ``methods info``."""
        return {}

    @property
    def trainable(self) -> bool:
        return self.info.trainable


# -- config handling ---------------------------------------------------------------------------

def _coerce(value: Any, annotation: Any, field_name: str) -> Any:
    """Turn a CLI string into the type a config field declares."""
    if not isinstance(value, str):
        return value
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own annotations
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, field_name)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"cannot read {value!r} for config field {field_name!r} ({annotation})")
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {field_name!r} expects true/false, got {value!r}")
    if annotation in (int, float):
        return annotation(value)
    if origin in (tuple, list):
        items = [v for v in value.replace(" ", "").strip("()[]").split(",") if v]
        inner = args[0] if args else str
        return origin(_coerce(v, inner, field_name) for v in items)
    return value


def make_config(method: str | type[AnomalyMethod], overrides: Mapping[str, Any] | None = None
                ) -> MethodConfig:
    """Build a method's config from its defaults and ``overrides`` (strings are parsed)."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    kwargs = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"method {cls.info.name!r} has no config option {key!r}; "
                             f"options: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, fields[key].type, key)
    return cls.config_class(**kwargs)


def config_to_dict(config: MethodConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def config_hash(method: str, config: MethodConfig) -> str:
    """Short stable hash of a method name and its full config (12 hex digits)."""
    blob = json.dumps({"method": method, "config": config_to_dict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def describe_method(name: str) -> dict[str, Any]:
    """Metadata, config options with defaults and help, and exact prompts of a method.

    Prompts come from the method's ``describe_prompts()`` classmethod when it has one (no
    backbone needed)."""
    entry = METHODS.entry(name)
    cls = entry.obj
    defaults = cls.config_class()
    options = [{"name": f.name, "default": getattr(defaults, f.name),
                "help": f.metadata.get("help", "")} for f in dataclasses.fields(cls.config_class)]
    describe_prompts = getattr(cls, "describe_prompts", None)
    prompts = describe_prompts(defaults) if describe_prompts else {}
    info = dataclasses.asdict(cls.info)
    info["source"] = entry.source
    return {"info": info, "options": options, "prompts": prompts}


def build_method(name: str, overrides: Mapping[str, Any] | MethodConfig | None = None,
                 device: str | torch.device = "cpu", backbone: nn.Module | None = None
                 ) -> AnomalyMethod:
    """Config-driven factory: the registered method ``name`` on its backbone, on ``device``."""
    from zsbench.backbone import load_backbone

    cls = METHODS.get(name)
    config = overrides if isinstance(overrides, MethodConfig) else make_config(cls, overrides)
    if backbone is None:
        backbone = load_backbone(config.backbone, config.pretrained, image_size=config.image_size,
                                 device=device, precision=config.precision)
    method = cls(config, backbone)
    logger.info("built method %s (%s) on %s", cls.info.name, config_hash(cls.info.name, config),
                device)
    return method.to(device).eval()
