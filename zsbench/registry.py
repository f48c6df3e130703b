"""Name -> object registries for methods, dataset adapters and protocols.

Built-ins register themselves with a decorator when their package is imported; other installed
packages add entries through entry points (groups ``zsbench.methods`` and ``zsbench.adapters``),
so a new method or dataset needs no fork::

    # in a plug-in's pyproject.toml
    [project.entry-points."zsbench.methods"]
    my_method = "my_pkg.my_method:MyMethod"
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from zsbench.errors import ZsbenchError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownNameError(ZsbenchError, KeyError):
    """A name that is not registered; the message lists the known names and a close match."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"Unknown {kind} {name!r}.{hint} Known {kind}s: {listing}.")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


@dataclass
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    source: str = "built-in"  # "built-in" or "plugin:<distribution>"
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A registry of named objects with lazy built-in import and entry-point discovery.

    Args:
        kind: what the entries are, used in messages ("method", "dataset", "protocol").
        builtin_module: module whose import registers the built-ins (imported on first lookup).
        entry_point_group: entry-point group scanned once for plug-ins, or None.
    """

    def __init__(self, kind: str, builtin_module: str | None, entry_point_group: str | None):
        self.kind = kind
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False

    def register(self, name: str, obj: T | None = None, *, source: str = "built-in",
                 **metadata: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` it returns a decorator."""

        def add(target: T) -> T:
            key = name.lower()
            if key in self._entries and self._entries[key].obj is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._entries[key].source})")
            self._entries[key] = Entry(key, target, source, metadata)
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._entries.pop(name.lower(), None)

    def discover(self, force: bool = False) -> None:
        """Import the built-ins and load plug-ins from entry points (once)."""
        if self._discovered and not force:
            return
        self._discovered = True
        if self._builtin_module:
            importlib.import_module(self._builtin_module)
        if self._group:
            for ep in entry_points(group=self._group):
                if ep.name.lower() in self._entries:
                    continue
                try:
                    obj = ep.load()
                except Exception as err:  # a broken plug-in must not break the toolkit
                    logger.warning("Could not load %s plug-in %r (%s): %s",
                                   self.kind, ep.name, ep.value, err)
                    continue
                dist = getattr(ep, "dist", None)
                source = f"plugin:{dist.name}" if dist is not None else "plugin"
                self.register(ep.name, obj, source=source)

    @property
    def discovered(self) -> bool:
        """Whether the built-ins and plug-ins have been imported (:meth:`discover`)."""
        return self._discovered

    def loaded_entries(self) -> list[Entry[T]]:
        """The entries registered so far, without importing built-ins or plug-ins."""
        return [self._entries[n] for n in sorted(self._entries)]

    def plugin_names(self) -> list[str]:
        """The names installed plug-ins declare (entry points), without loading them."""
        if not self._group:
            return []
        return sorted({ep.name.lower() for ep in entry_points(group=self._group)})

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        self.discover()
        key = name.lower()
        if key not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[key]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        self.discover()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self.discover()
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


METHODS: Registry[Any] = Registry("method", "zsbench.methods", "zsbench.methods")
ADAPTERS: Registry[Any] = Registry("dataset", "zsbench.adapters", "zsbench.adapters")
PROTOCOLS: Registry[Any] = Registry("protocol", "zsbench.protocols", None)


def import_submodules(package: str, path: list[str], kind: str) -> dict[str, str]:
    """Import every public module of a built-in package (so each registers itself).

    A module that fails to import (e.g. an optional dependency is missing) is logged and
    skipped so the others still register; returns ``{module name: error}`` of those skipped."""
    import pkgutil

    failed: dict[str, str] = {}
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package}.{module.name}")
        except Exception as err:  # one broken module must not hide the others
            failed[module.name] = f"{type(err).__name__}: {err}"
            logger.warning("%s module %r was skipped: %s", kind, module.name, err)
    return failed


def register_method(name: Any = None) -> Any:
    """Class decorator: register an :class:`zsbench.method.AnomalyMethod` subclass under its
    ``info.name`` (``@register_method`` or ``@register_method()``). A name given must be that
    same name: a method registered under another key is an error."""

    def add(cls: T) -> T:
        from zsbench.method import check_method_class

        check_method_class(cls)
        key = cls.info.name  # type: ignore[attr-defined]
        if name is not None and name.lower() != key.lower():
            raise ValueError(f"method class {cls.__name__} has info.name {key!r} but is "
                             f"registered as {name!r}; register it under its info.name")
        return METHODS.register(key, cls)

    if isinstance(name, type):  # bare @register_method
        cls, name = name, None
        return add(cls)
    return add


def register_adapter(name: str) -> Callable[[T], T]:
    """Class decorator: register a :class:`zsbench.adapter.DatasetAdapter` subclass."""
    return ADAPTERS.register(name)


def register_protocol(name: str, protocol: Any) -> Any:
    """Register a named protocol (a :class:`zsbench.protocols.Protocol`)."""
    return PROTOCOLS.register(name, protocol)
