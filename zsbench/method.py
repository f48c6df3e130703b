"""The contract every anomaly-detection method implements, and the config-driven factory.

A method is a ``torch.nn.Module`` over the shared backbone. It declares a config dataclass
(subclass of :class:`MethodConfig`) and a :class:`MethodInfo`, and implements :meth:`_predict`
(its own scoring step; the public :meth:`AnomalyMethod.predict` checks the batch and the output
around it); a trainable method also implements :meth:`loss` and :meth:`parameter_groups`. Optional
hooks: :meth:`start_category`, :meth:`start_epoch`, :meth:`describe_prompts`,
:meth:`convert_upstream_checkpoint`. Its kind (training-free, auxiliary-trained, transductive,
stochastic, few-shot) is declared in :class:`MethodInfo` and enforced by the evaluator.
It registers with ``@register_method`` under its ``info.name``. Methods never open files, parse
datasets or compute metrics: the trainer and the evaluator do that.
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

from zsbench.errors import ConfigError
from zsbench.registry import METHODS

logger = logging.getLogger(__name__)


def option(default: Any, help: str, compute_only: bool = False,
           omit_default: bool = False) -> Any:
    """A config field with a help text (shown by ``zsbench methods info``).

    ``compute_only`` marks a field that changes how a number is computed but never the number
    (a chunk size bounding memory; tests prove the invariance): it stays out of the run
    identity and the config hash (:func:`compute_only_fields`). ``omit_default`` marks a field
    added after results existed whose default reproduces them: at its default it is left out of
    the identity, so earlier results keep their config hash."""
    metadata = {"help": help, "compute_only": compute_only, "omit_default": omit_default}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def compute_only_fields(config_class: type) -> frozenset[str]:
    """The config fields declared with ``option(..., compute_only=True)``."""
    return frozenset(f.name for f in dataclasses.fields(config_class)
                     if f.metadata.get("compute_only"))


def omitted_defaults(config_class: type) -> dict[str, Any]:
    """Name -> default of the config fields declared with ``option(..., omit_default=True)``."""
    defaults = config_class()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(config_class)
            if f.metadata.get("omit_default")}


@dataclass
class MethodConfig:
    """Fields shared by every method; subclasses add their own (prompts, layers, quirk flags).

    Upstream quirks are boolean fields named after what they do, each with a help text that cites
    where it comes from."""

    backbone: str = option("ViT-L-14-336-quickgelu", "open_clip model name")
    pretrained: str | None = option(
        "openai", "open_clip pretrained tag, a local weights file, or none (random weights)")
    image_size: int = option(518, "input side in pixels (a multiple of the patch size)")
    precision: str = option("fp32", "fp32 (float32, also inside an enclosing autocast), bf16 or "
                                    "fp16 (autocast on the backbone's device, CUDA or CPU)")
    pos_embed_interpolation: str = option(
        "bilinear", "resize of the vision position embedding to the input's patch grid: "
                    "'bilinear' (F.interpolate bilinear, align_corners=False, no antialias: "
                    "upstream AnomalyCLIP, FAPrompt, TPS) or 'bicubic-antialias' (bicubic, "
                    "antialias=True, align_corners=False: open_clip resize_pos_embed, as in "
                    "APRIL-GAN's bundled open_clip/model.py) or 'bicubic' (no antialias: the "
                    "older open_clip bundled by MuSc)")
    input_interpolation: str = option(
        "bicubic", "filter of the input resize to image_size (PIL, antialiased): bicubic (the "
                   "AnomalyCLIP family) or bilinear (torchvision Resize's default on PIL images)")
    mlp_activation: str = option(
        "native", "MLP activation of the backbone's blocks: 'native' (the model's: QuickGELU for "
                  "OpenAI weights) or 'gelu' (exact GELU even on OpenAI weights: upstream MuSc, "
                  "AdaCLIP, AA-CLIP and VCP-CLIP build ViT-L-14-336 from a config without "
                  "quick_gelu and load OpenAI weights into it)", omit_default=True)


#: the kinds of method (``MethodInfo.kinds``), in the order they are listed
METHOD_KINDS = ("training-free", "auxiliary-trained", "transductive", "stochastic", "few-shot")


@dataclass(frozen=True)
class MethodInfo:
    """What ``zsbench methods list`` shows about a method, including its kind (taxonomy).

    The runner enforces the kind: a **transductive** method's batch is a whole category (its
    reference pool: the other unlabelled test images of that category, recorded in the result),
    never a fixed-size slice; a **stochastic** method samples at test time from a generator
    seeded by the run seed and the category (``AnomalyMethod.sampling_generator``) and its
    config has a ``samples`` field (``--samples``), both recorded in the result's identity; an
    **auxiliary-trained** method is trained on the protocol's auxiliary data first."""

    name: str
    title: str
    paper: str  # citation, e.g. "Zhou et al., AnomalyCLIP, ICLR 2024"
    trainable: bool  # auxiliary-trained (else training-free)
    transductive: bool = False  # uses the category's other test images (MuSc) or adapts on them
    code: str = ""  # upstream repository
    license: str = ""
    class_aware: bool = False  # uses the category word in prompts
    stochastic: bool = False  # samples at test time (Bayes-PFL's prompt distribution)
    few_shot: bool = False  # uses k normal reference images of the target category

    @property
    def kinds(self) -> tuple[str, ...]:
        """The method's kinds, e.g. ``("training-free", "transductive")`` (``METHOD_KINDS``)."""
        flags = {"transductive": self.transductive, "stochastic": self.stochastic,
                 "few-shot": self.few_shot}
        base = "auxiliary-trained" if self.trainable else "training-free"
        return (base, *(kind for kind in METHOD_KINDS[2:] if flags[kind]))

    @property
    def kind(self) -> str:
        """The kinds joined for display, e.g. ``"training-free, transductive"``."""
        return ", ".join(self.kinds)


class Prediction(NamedTuple):
    """Output of :meth:`AnomalyMethod.predict`."""

    image_scores: Tensor  # [B], higher = more anomalous
    anomaly_maps: Tensor  # [B, H, W] at the input resolution, higher = more anomalous


class AnomalyMethod(nn.Module):
    """Base class of all methods. Subclasses set ``info`` and ``config_class``."""

    info: ClassVar[MethodInfo]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: named sets of config values, e.g. ``{"upstream": {...}}``: every quirk flag set to what
    #: the upstream code does. ``make_config(..., preset=NAME)`` applies one before overrides.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: the paper's training recipe where it differs from the trainer's defaults (15 epochs,
    #: batch 8, Adam lr 1e-3: the AnomalyCLIP family), e.g. ``{"epochs": 10, "batch_size": 32}``;
    #: ``--epochs``/``--train-batch-size``/``--lr`` override it; part of the training identity
    training_defaults: ClassVar[Mapping[str, Any]] = {}
    #: the method computes gradients inside :meth:`predict` (test-time adaptation, e.g. AnoVL):
    #: the evaluator then runs it under ``torch.no_grad()`` instead of ``torch.inference_mode()``
    needs_grad_at_test: ClassVar[bool] = False

    def __init__(self, config: MethodConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.backbone.requires_grad_(False)

    # -- inference ---------------------------------------------------------------------------
    def predict(self, images: Tensor, class_names: Sequence[str]) -> Prediction:
        """Score a batch of preprocessed images ``[B, 3, S, S]`` (``S = config.image_size``);
        ``class_names`` has B words (a single string counts as one).

        Checks the inputs, calls the method's own :meth:`_predict`, and checks its output:
        image scores ``[B]`` and anomaly maps ``[B, H, W]`` (the input size or the evaluation
        size), all finite. A bad input is a ``ValueError``, a bad output a ``RuntimeError``;
        both name the method and the shapes."""
        names = self.check_batch(images, class_names)
        image_scores, anomaly_maps = self._predict(images, names)
        self._check_prediction(images, image_scores, anomaly_maps)
        return Prediction(image_scores, anomaly_maps)

    def _predict(self, images: Tensor, class_names: list[str]) -> Prediction:
        """The method's own scoring step on a checked batch (see :meth:`predict`)."""
        raise NotImplementedError(f"method {self.info.name!r} does not implement _predict")

    def check_batch(self, images: Tensor, class_names: Sequence[str] | str) -> list[str]:
        """The class names of a batch as a list, after checking that ``images`` is
        ``[B, 3, S, S]`` with ``S = config.image_size`` and that there is one name per image."""
        name, size = self.info.name, self.config.image_size
        shape = tuple(getattr(images, "shape", ()))
        if not isinstance(images, Tensor) or len(shape) != 4 or shape[1:] != (3, size, size):
            raise ValueError(f"{name} expects images [B, 3, {size}, {size}] (config "
                             f"image_size={size}); got {type(images).__name__} {list(shape)}")
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        if len(names) != shape[0]:
            raise ValueError(f"{name} needs one class name per image: got {len(names)} class "
                             f"names for {shape[0]} images")
        return names

    def _check_prediction(self, images: Tensor, image_scores: Tensor, anomaly_maps: Tensor
                          ) -> None:
        batch, name = images.shape[0], self.info.name
        if tuple(image_scores.shape) != (batch,) or anomaly_maps.dim() != 3 \
                or anomaly_maps.shape[0] != batch:
            raise RuntimeError(f"{name}._predict returned image scores {list(image_scores.shape)}"
                               f" and maps {list(anomaly_maps.shape)} for {batch} images; "
                               f"expected [{batch}] and [{batch}, H, W]")
        for what, values in (("image scores", image_scores), ("anomaly maps", anomaly_maps)):
            # a finite sum proves every value finite (NaN and inf propagate); only a sum that
            # is not (an overflow or a bad value) needs the element-wise check
            if not bool(torch.isfinite(values.sum())) and not bool(torch.isfinite(values).all()):
                raise RuntimeError(f"{name}._predict returned non-finite {what} (NaN or inf)")

    def start_category(self, category: str) -> None:
        """Called by the evaluator before the first image of each category; a method that keeps
        state across images (AnoVL's per-class test-time optimizer) resets it here."""

    def begin_category(self, category: str, seed: int) -> None:
        """What the evaluator calls before each category: seeds :attr:`sampling_generator`
        from ``seed`` and the category (so a stochastic method's samples do not depend on
        the order or the batching of categories), then calls :meth:`start_category`."""
        digest = hashlib.sha256(f"{int(seed)}:{category}".encode()).digest()
        self._sampling_seed = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
        self._sampling_generator = None
        self.start_category(category)

    @property
    def sampling_generator(self) -> torch.Generator:
        """The generator a stochastic method draws its test-time samples from, on the
        backbone's device; seeded by :meth:`begin_category` (seed 0 before any category)."""
        generator = getattr(self, "_sampling_generator", None)
        device = self.backbone.device if hasattr(self.backbone, "device") else "cpu"
        if generator is None or generator.device != torch.device(device):
            generator = torch.Generator(device=device)
            generator.manual_seed(getattr(self, "_sampling_seed", 0))
            self._sampling_generator = generator
        return generator

    def chunks(self, count: int, size: int) -> list[slice]:
        """Slices of ``range(count)`` of at most ``size`` items: how a transductive method,
        whose batch is a whole category, runs its forward in bounded memory."""
        if size < 1:
            raise ConfigError(f"{self.info.name}: chunk size must be >= 1, got {size}")
        return [slice(start, min(start + size, count)) for start in range(0, count, size)]

    # -- training (trainable methods only) ---------------------------------------------------
    def loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss of a batch with keys ``image`` [B,3,S,S], ``mask`` [B,S,S] in {0,1},
        ``label`` [B] (0 normal, 1 anomaly) and ``class_name`` (B words); returns the total loss
        and its named parts for logging."""
        raise NotImplementedError(f"method {self.info.name!r} is training-free")

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before each training epoch (1-indexed, of ``epochs``; also the
        first epoch after a resume): a method trained in stages (AA-CLIP) switches here."""

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``{"params": [...], "lr": ...}``); empty if training-free.

        A group without "lr" uses the trainer's learning rate."""
        return []

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state of the trainable parameters and buffers only (what a checkpoint stores)."""
        names = {id(p) for g in self.parameter_groups() for p in g["params"]}
        return {k: v.detach().clone() for k, v in self.named_parameters() if id(v) in names}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned (parameters, and buffers a method
        adds to it, such as batch-norm statistics); extra or missing keys are errors."""
        own = self.trainable_state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise KeyError(f"checkpoint does not fit method {self.info.name!r}: "
                           f"missing {missing}, unexpected {extra}")
        params = {**dict(self.named_buffers()), **dict(self.named_parameters())}
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

    @classmethod
    def convert_upstream_checkpoint(cls, obj: Any) -> dict[str, Tensor]:
        """Optional hook: map an upstream checkpoint (the object ``torch.load`` returned) to this
        method's :meth:`trainable_state_dict` keys; raise ``KeyError``/``ValueError``/
        ``TypeError`` naming what does not fit. ``zsbench import-checkpoint`` calls it; a method
        can import upstream checkpoints when it overrides it (:meth:`can_import_upstream`)."""
        raise NotImplementedError(f"method {cls.info.name!r} cannot import upstream checkpoints")

    @classmethod
    def can_import_upstream(cls) -> bool:
        """Whether the method overrides :meth:`convert_upstream_checkpoint`."""
        own = cls.__mro__[:cls.__mro__.index(AnomalyMethod)]
        return any("convert_upstream_checkpoint" in vars(klass) for klass in own)

    @property
    def trainable(self) -> bool:
        return self.info.trainable

    def require_non_negative(self, *names: str) -> None:
        """A :class:`ConfigError` naming the first config option of ``names`` that is negative
        (e.g. ``sigma``, the Gaussian of the pixel maps); for a method's ``__init__``."""
        for name in names:
            value = getattr(self.config, name)
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")


def check_method_class(cls: type) -> None:
    """The contract a method class meets, checked once when it registers: an ``info``
    (:class:`MethodInfo`), a ``config_class`` (a :class:`MethodConfig` dataclass), ``_predict``;
    a trainable method overrides ``loss`` and ``parameter_groups``; a stochastic method's config
    has an integer ``samples`` field. Raises ``TypeError`` naming the class and what is missing."""
    name = getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, AnomalyMethod)):
        raise TypeError(f"{name} is not an AnomalyMethod subclass")
    info = getattr(cls, "info", None)
    if not isinstance(info, MethodInfo):
        raise TypeError(f"method class {name} needs an info = MethodInfo(...)")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, MethodConfig)
            and dataclasses.is_dataclass(cls.config_class)):
        raise TypeError(f"method {info.name!r}: config_class must be a MethodConfig dataclass")
    missing = [hook for hook in ("_predict",) if getattr(cls, hook) is getattr(AnomalyMethod, hook)]
    if info.trainable:
        missing += [hook for hook in ("loss", "parameter_groups")
                    if getattr(cls, hook) is getattr(AnomalyMethod, hook)]
    if missing:
        raise TypeError(f"method {info.name!r} ({info.kind}) does not implement "
                        f"{', '.join(missing)}")
    if info.stochastic:
        fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
        if "samples" not in fields or fields["samples"].type not in (int, "int"):
            raise TypeError(f"method {info.name!r} is stochastic: its config needs an integer "
                            f"'samples' field (the number of test-time samples, --samples)")


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
        raise ConfigError(f"cannot read {value!r} for config field {field_name!r} ({annotation})")
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config field {field_name!r} expects true/false, got {value!r}")
    if annotation in (int, float):
        try:
            return annotation(value)
        except ValueError:
            kind = "an integer" if annotation is int else "a number"
            raise ConfigError(f"config field {field_name!r} expects {kind}, got {value!r}"
                              ) from None
    if origin in (tuple, list):
        items = [v for v in value.replace(" ", "").strip("()[]").split(",") if v]
        inner = args[0] if args else str
        return origin(_coerce(v, inner, field_name) for v in items)
    return value


def preset_values(method: str | type[AnomalyMethod], preset: str) -> dict[str, Any]:
    """The config values of a method's named preset; an unknown name lists the known ones."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    if preset not in cls.presets:
        known = ", ".join(sorted(cls.presets)) or "none"
        raise ConfigError(f"method {cls.info.name!r} has no preset {preset!r}; presets: {known}")
    return dict(cls.presets[preset])


def make_config(method: str | type[AnomalyMethod], overrides: Mapping[str, Any] | None = None,
                preset: str | None = None) -> MethodConfig:
    """Build a method's config from its defaults, then the named ``preset`` (if any), then
    ``overrides`` (strings are parsed)."""
    cls = METHODS.get(method) if isinstance(method, str) else method
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    values = preset_values(cls, preset) if preset else {}
    values.update(overrides or {})
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"method {cls.info.name!r} has no config option {key!r}; "
                              f"options: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, fields[key].type, key)
    return cls.config_class(**kwargs)


def config_to_dict(config: MethodConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def config_from_dict(method_name: str, values: Mapping[str, Any]) -> MethodConfig:
    """A method config from a recorded config dict (JSON lists back to tuples)."""
    cls = METHODS.get(method_name)
    defaults = cls.config_class()
    restored = {k: tuple(v) if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple)
                else v for k, v in values.items()}
    return make_config(cls, restored)


def config_hash(method: str, config: MethodConfig) -> str:
    """Short stable hash of a method name and its full config (12 hex digits); a local weights
    file enters by its sha256, not its path (:func:`zsbench.identity.method_identity`)."""
    from zsbench.identity import method_identity

    blob = json.dumps(method_identity(method, config_to_dict(config)), sort_keys=True)
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
    info["kinds"], info["kind"] = list(cls.info.kinds), cls.info.kind
    info["source"] = entry.source
    presets = {name: dict(values) for name, values in cls.presets.items()}
    return {"info": info, "options": options, "prompts": prompts, "presets": presets,
            "training_defaults": dict(cls.training_defaults)}


def build_method(name: str, overrides: Mapping[str, Any] | MethodConfig | None = None,
                 device: str | torch.device = "cpu", backbone: nn.Module | None = None
                 ) -> AnomalyMethod:
    """Config-driven factory: the registered method ``name`` on its backbone, on ``device``."""
    from zsbench.backbone import load_backbone

    cls = METHODS.get(name)
    config = overrides if isinstance(overrides, MethodConfig) else make_config(cls, overrides)
    if backbone is None:
        backbone = load_backbone(config.backbone, config.pretrained, image_size=config.image_size,
                                 device=device, precision=config.precision,
                                 pos_embed_interpolation=config.pos_embed_interpolation,
                                 mlp_activation=config.mlp_activation)
    elif hasattr(backbone, "with_options"):  # a given backbone computes as the config says
        adapted = backbone.with_options(precision=config.precision,
                                        pos_embed_interpolation=config.pos_embed_interpolation,
                                        mlp_activation=config.mlp_activation)
        if adapted is not backbone:
            logger.info("%s: the given backbone runs with precision=%s, pos_embed_interpolation=%s,"
                        " mlp_activation=%s (the method config; weights shared)", cls.info.name,
                        config.precision, config.pos_embed_interpolation, config.mlp_activation)
        backbone = adapted
    method = cls(config, backbone)
    logger.info("built method %s (%s) on %s", cls.info.name, config_hash(cls.info.name, config),
                device)
    return method.to(device).eval()
