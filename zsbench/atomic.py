"""Atomic writes: a crash never leaves a half-written result, checkpoint or dataset behind."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zsbench.errors import ZsbenchError

logger = logging.getLogger(__name__)

# A staging folder ``.<name>.<host>-<pid>.<random>.tmp`` is stale, and removed by the next
# atomic_directory(<name>), when its process (on this host) is no longer running, or when nothing
# in it changed for this long (staging folders of other hosts, or of older zsbench versions that
# did not record the process).
STALE_STAGING_AGE_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40].strip("-") or "host"


class NotWritableError(ZsbenchError, PermissionError):
    """An output folder that cannot be created or written to; the message names it."""


def current_umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status",
                                                        encoding="ascii") as handle:
        for line in handle:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable folder.

    Raises :class:`NotWritableError` naming ``what`` and the folder (a read-only folder, a file
    in the way). Returns ``path`` as a :class:`Path`; nothing is created."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent  # the nearest existing folder: where mkdir would write
    if not existing.is_dir():
        raise NotWritableError(f"cannot write the {what} {path}: {existing} is a file, "
                               "not a folder")
    try:  # a real write: permission bits do not tell (root, read-only mounts, sysfs)
        handle, probe = tempfile.mkstemp(prefix=".zsbench-write-probe.", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        inside = "" if existing == path else f" (its parent {existing} is not writable)"
        raise NotWritableError(f"cannot write the {what} {path}{inside}: "
                               f"{err.strerror or err}; choose another folder or fix its "
                               "permissions") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same folder, so the final ``os.replace`` is atomic. The file
    gets the mode a plain ``open()`` would give (``0o666`` less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``path`` as a whole.

    The folder gets ``0o777`` less the umask (not mkdtemp's 0700). Stale staging folders of
    ``path`` left by a killed process are removed first (see :func:`remove_stale_staging`)."""
    path = Path(path)
    ensure_writable_dir(path.parent, "output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.",
                                    suffix=".tmp", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~current_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def _last_change(folder: Path) -> float:
    """The newest modification time of ``folder``, its entries and theirs (shards grow there)."""
    newest = folder.stat().st_mtime
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            newest = max(newest, child.stat().st_mtime)
            if child.is_dir():
                for grandchild in child.iterdir():
                    newest = max(newest, grandchild.stat().st_mtime)
    return newest


def remove_stale_staging(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders ``.<name>.*.tmp`` of ``path`` that a killed process left.

    One is stale when the process recorded in its name ran on this host and no longer runs, or
    when nothing in it changed for :data:`STALE_STAGING_AGE_S` (other hosts, older names); a
    running prepare's folder is never touched. Logs a warning per folder; returns them."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(?P<host>[A-Za-z0-9-]+?)-"
                         rf"(?P<pid>\d+)\.)?[a-z0-9_]+\.tmp$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = pattern.match(candidate.name)
        if match is None or not candidate.is_dir() or candidate.is_symlink():
            continue
        pid = match["pid"]
        try:
            if pid is not None and match["host"] == _HOST and not _pid_running(int(pid)):
                reason = f"process {pid} that wrote it is no longer running"
            elif time.time() - _last_change(candidate) > STALE_STAGING_AGE_S:
                reason = f"unchanged for over {STALE_STAGING_AGE_S // 3600} hours"
            else:
                continue
            shutil.rmtree(candidate)
        except FileNotFoundError:  # its process finished (or another cleaner came first)
            continue
        except OSError as err:
            logger.warning("could not remove the stale staging folder %s: %s", candidate, err)
            continue
        logger.warning("removed the stale staging folder %s (%s)", candidate, reason)
        removed.append(candidate)
    return removed
