"""Method metadata for ``methods list``, ``methods info`` and ``submit --check`` without torch.

The method modules import torch and open_clip (seconds and about 1 GB), yet what these commands
show (:class:`~zsbench.method.MethodInfo`, config options with defaults and help, presets, exact
prompts: :func:`zsbench.method.describe_method`) is a pure function of the source code. The first
call imports the methods and stores the description of the built-in ones as JSON in the user's
cache folder (``$ZSBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/zsbench`` or ``~/.cache/zsbench``)
under a key hashing every source file of zsbench and of its built-in methods; later calls read it.
Editing any of those files changes the key, so a stale description is never shown. Plug-in
methods (entry points) and methods registered in this process are always described from their
classes (then torch is imported as before).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zsbench import __version__
from zsbench.errors import ZsbenchError
from zsbench.registry import METHODS, UnknownNameError

logger = logging.getLogger(__name__)

CACHE_ENV = "ZSBENCH_CACHE_DIR"


def cache_dir() -> Path:
    """Where the method descriptions are cached."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "zsbench"


def source_key() -> str:
    """A hash of the zsbench version and every ``.py`` file of zsbench and its built-in methods
    (their paths and bytes); 16 hex digits."""
    digest = hashlib.sha256(__version__.encode())
    roots = [Path(__file__).parent]
    spec = importlib.util.find_spec("zsbench.methods")  # finds the folder, imports nothing
    roots += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(f"\0{path.relative_to(root)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _describe(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    from zsbench.method import describe_method

    # one JSON round trip, so a description reads the same from the classes and from the cache
    return {name: json.loads(json.dumps(describe_method(name), default=str)) for name in names}


def _read(path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, described: dict[str, dict[str, Any]]) -> None:
    from zsbench import atomic

    try:
        atomic.write_text(path, json.dumps(described) + "\n")
        for old in path.parent.glob("methods-*.json"):  # descriptions of older sources
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, ZsbenchError) as err:  # a read-only home only costs speed
        logger.debug("method descriptions not cached at %s: %s", path, err)


def describe_all() -> dict[str, dict[str, Any]]:
    """``{name: describe_method(name)}`` (JSON values) of every registered method, by name."""
    if METHODS.discovered or METHODS.loaded_entries() or METHODS.plugin_names():
        return _describe(METHODS.names())  # the classes are (or must be) imported anyway
    path = cache_dir() / f"methods-{source_key()}.json"
    described = _read(path)
    if described is None:
        from zsbench.methods import FAILED_IMPORTS

        described = _describe(METHODS.names())
        if not FAILED_IMPORTS:  # never cache a partial list
            _write(path, described)
    return dict(sorted(described.items()))


def describe(name: str) -> dict[str, Any]:
    """The description of method ``name``; an unknown name lists the known ones."""
    described = describe_all()
    if name.lower() not in described:
        raise UnknownNameError("method", name, list(described))
    return described[name.lower()]


def is_method(name: str) -> bool:
    """Whether ``name`` is a registered method (built-in, plug-in or registered here)."""
    return name.lower() in describe_all()
