"""Protocols: what a run trains on, what it evaluates on, and the settings that change numbers.

A protocol id is a string a user can type:

- ``"mvtec->all"``: train on the MVTec AD test split, evaluate on every other real dataset;
- ``"visa->mvtec"``, ``"mvtec+visa->btad,mpdd"``: explicit auxiliary and target lists;
- ``"none->all"``: no training (training-free methods);
- ``"paper"``: the field's protocol: ``visa->mvtec`` for MVTec AD and ``mvtec->all`` for the rest.

The protocol fixes the auxiliary datasets and split, the targets, the evaluation resolution, the
mask binarisation threshold and the seed. Map smoothing is part of each method's config (it
differs between methods upstream, e.g. sigma 4 for AnomalyCLIP and 10 for FAPrompt).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from zsbench.errors import ConfigError
from zsbench.registry import ADAPTERS, PROTOCOLS, UnknownNameError, register_protocol


class ProtocolError(ConfigError):
    """A malformed protocol id or one that names an unknown dataset."""


# any word characters (Unicode too): a typo such as 'mvtéc' is parsed, then answered with
# "Unknown dataset ... Did you mean 'mvtec'?" like 'mvtech'
_NAME = r"[\w.-]+"
_ID = re.compile(rf"^\s*(?P<train>{_NAME}(\s*\+\s*{_NAME})*)\s*->\s*"
                 rf"(?P<targets>{_NAME}(\s*,\s*{_NAME})*)\s*$")


@dataclass(frozen=True)
class Protocol:
    """A resolved protocol. ``targets`` may contain ``"all"`` until :meth:`runs` expands it."""

    id: str
    train: tuple[str, ...]
    targets: tuple[str, ...]
    train_split: str = "test"  # the field trains on the auxiliary datasets' test split
    resolution: int = 518  # evaluation resolution of maps and masks
    mask_threshold: float = 0.5  # masks binarised > threshold after bilinear resize
    seed: int = 111
    description: str = ""
    #: per-target training sets overriding ``train`` (the "paper" protocol)
    train_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def with_options(self, **changes: Any) -> Protocol:
        """A copy with some settings changed (resolution, seed, ...)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def train_for(self, target: str) -> tuple[str, ...]:
        return self.train_overrides.get(target, self.train)

    def target_datasets(self, known: list[str] | None = None) -> list[str]:
        """Targets, ``all`` expanded to every registered real dataset not trained on."""
        known = known if known is not None else real_datasets()
        out: list[str] = []
        for t in self.targets:
            if t == "all":
                out.extend(d for d in known if d not in self.train and d not in out)
            elif t not in out:
                out.append(t)
        return out

    def runs(self, known: list[str] | None = None) -> list[tuple[tuple[str, ...], str]]:
        """``(training datasets, target)`` pairs, grouped so each training set is trained once."""
        pairs = [(self.train_for(t), t) for t in self.target_datasets(known)]
        order = {tr: i for i, (tr, _) in reversed(list(enumerate(pairs)))}
        return sorted(pairs, key=lambda p: order[p[0]])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"] = list(self.train)
        d["targets"] = list(self.targets)
        d["train_overrides"] = {k: list(v) for k, v in self.train_overrides.items()}
        return d


def real_datasets() -> list[str]:
    """Registered datasets of the industrial and medical domains (synthetic ones excluded, and
    adapters that set ``in_all = False``, such as a user's own ``folder``)."""
    return [e.name for e in ADAPTERS.entries()
            if e.obj.info.domain != "synthetic" and getattr(e.obj, "in_all", True)]


def _check_dataset(name: str, protocol_id: str) -> None:
    if name not in ADAPTERS:
        err = UnknownNameError("dataset", name, ADAPTERS.names())
        raise ProtocolError(f"protocol {protocol_id!r}: {err}")


def parse_protocol(protocol_id: str, validate: bool = True) -> Protocol:
    """Parse ``"A+B->C,D"`` (``none`` trains on nothing, ``all`` targets every real dataset)."""
    m = _ID.match(protocol_id)
    if not m:
        raise ProtocolError(
            f"malformed protocol id {protocol_id!r}: expected 'TRAIN->TARGETS' such as "
            f"'mvtec->all', 'visa->mvtec', 'mvtec+visa->btad,mpdd' or 'none->all', "
            f"or a named protocol ({', '.join(PROTOCOLS.names())})")
    train = tuple(t.strip().lower() for t in m["train"].split("+"))
    targets = tuple(t.strip().lower() for t in m["targets"].split(","))
    if "none" in train:
        if len(train) > 1:
            raise ProtocolError(f"protocol {protocol_id!r}: 'none' cannot be combined with "
                                f"other training datasets")
        train = ()
    if "all" in train:
        raise ProtocolError(f"protocol {protocol_id!r}: 'all' is only allowed as a target")
    if validate:
        for name in (*train, *(t for t in targets if t != "all")):
            _check_dataset(name, protocol_id)
    overlap = set(train) & set(targets)
    if overlap:
        raise ProtocolError(f"protocol {protocol_id!r} trains and evaluates on the same dataset "
                            f"({', '.join(sorted(overlap))}): that is not zero-shot")
    canonical = f"{'+'.join(train) or 'none'}->{','.join(targets)}"
    return Protocol(id=canonical, train=train, targets=targets,
                    description=_describe(train, targets))


def _describe(train: tuple[str, ...], targets: tuple[str, ...]) -> str:
    """A one-sentence description of a parsed protocol id."""
    trains = (f"Train on {' + '.join(train)} (test split)" if train
              else "No training (training-free evaluation)")
    named = [t for t in targets if t != "all"]
    if "all" in targets:
        others = "every other real dataset" if train else "every real dataset"
        evaluates = f"{others}{' and ' + ', '.join(named) if named else ''}"
    else:
        evaluates = ", ".join(named)
    return f"{trains}; evaluate on {evaluates}."


def resolve_protocol(protocol_id: str, validate: bool = True) -> Protocol:
    """A registered protocol by name, or a parsed id."""
    if protocol_id in PROTOCOLS:
        return PROTOCOLS.get(protocol_id)
    return parse_protocol(protocol_id, validate=validate)


register_protocol("paper", Protocol(
    id="paper", train=("mvtec",), targets=("all", "mvtec"),
    train_overrides={"mvtec": ("visa",)},
    description="The field's protocol: train on MVTec AD (test split) and evaluate on every "
                "other dataset; MVTec AD itself from a model trained on VisA."))
register_protocol("zero-shot", Protocol(
    id="zero-shot", train=(), targets=("all",),
    description="Training-free evaluation on every real dataset (alias of 'none->all')."))
register_protocol("synthetic", Protocol(
    id="synthetic", train=("synthetic_a",), targets=("synthetic_b",), resolution=112, seed=111,
    description="Offline smoke protocol: train on synthetic_a, evaluate on synthetic_b at 112 px."))
