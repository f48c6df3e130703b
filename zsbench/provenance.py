"""Where a result came from: versions, git commit, hardware, file hashes."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import zsbench


def update_with_file(digest: Any, path: str | os.PathLike[str], chunk: int = 1 << 22) -> None:
    """Feed a file's bytes to a ``hashlib`` digest, read in chunks (4 MiB by default)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes: the one file hash of zsbench (weights, checkpoints,
    shards)."""
    h = hashlib.sha256()
    update_with_file(h, path, chunk)
    return h.hexdigest()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256_file(path: str | os.PathLike[str]) -> str:
    """:func:`sha256_file`, remembered per (real path, size, mtime) for this process: large
    weight files are hashed once however often a run identity names them."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(real)
    return _SHA_CACHE[key]


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the zsbench source tree, when it is a git checkout."""
    root = Path(zsbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def hardware(device: str | None = None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device or "cpu"), "cpu": platform.processor() or
                            platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def software() -> dict[str, str]:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("open_clip", "datasets", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            continue
    return versions


def provenance(device: str | None = None) -> dict[str, Any]:
    return {
        "zsbench_version": zsbench.__version__,
        "git_commit": git_commit(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(device),
        "software": software(),
    }
