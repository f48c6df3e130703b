"""Sweeps: methods x protocols x seeds (x config grids) as idempotent cells.

A cell is one ``zsbench run`` (:class:`SweepCell`). Cells run as child processes (each its own
log file), several at a time on one machine (``workers``), spread over the ranks of a torchrun or
Slurm job (each rank takes every ``world_size``-th cell and pins its child to its own GPU), or as
a Slurm job array through ``submitit`` (optional). Every cell runs with ``--skip-existing``, so a
cell whose valid result with the same run identity exists costs a few seconds and writes
nothing; a state file in the log folder remembers finished cells, so a killed sweep restarted with
the same arguments launches only the cells that did not finish. A failed cell is reported with
its log path and does not stop the others.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsbench import atomic
from zsbench.distributed import WorldInfo, world_from_env
from zsbench.errors import ConfigError

logger = logging.getLogger(__name__)

#: (cells finished, cells running, cells failed, cells in all)
SweepProgress = Callable[[int, int, int, int], None]
STATE_FILE = "sweep_state.json"


@dataclass(frozen=True)
class SweepCell:
    """One ``zsbench run``: a method on a protocol with a seed and config values."""

    method: str
    protocol: str
    seed: int | None = None
    config: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """A readable, file-name-safe id, e.g. ``clip__none-to-mvtec__seed111__sigma=4``."""
        parts = [self.method, self.protocol.replace("->", "-to-")]
        if self.seed is not None:
            parts.append(f"seed{self.seed}")
        parts += [f"{k}={v}" for k, v in self.config]
        return re.sub(r"[^A-Za-z0-9_.,+=-]", "_", "__".join(parts))

    def arguments(self) -> list[str]:
        """The ``zsbench run`` arguments of this cell (before the sweep's common ones)."""
        args = ["run", "--method", self.method, "--protocol", self.protocol, "--skip-existing"]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        for key, value in self.config:
            args += ["--set", f"{key}={value}"]
        return args


def expand(methods: Sequence[str], protocols: Sequence[str], seeds: Sequence[int | None] = (),
           grid: Mapping[str, Sequence[Any]] | None = None) -> list[SweepCell]:
    """Every combination, in a stable order (methods outermost)."""
    if not methods or not protocols:
        raise ConfigError("a sweep needs at least one method and one protocol")
    grid = dict(grid or {})
    empty = [k for k, values in grid.items() if not values]
    if empty:
        raise ConfigError(f"grid option(s) {', '.join(empty)} have no values")
    combos = [tuple(zip(grid, values, strict=True))
              for values in itertools.product(*(grid[k] for k in grid))]
    cells = [SweepCell(m, p, s, tuple((k, str(v)) for k, v in combo))
             for m in methods for p in protocols for s in (list(seeds) or [None])
             for combo in combos]
    duplicates = len(cells) - len(set(cells))
    if duplicates:
        raise ConfigError(f"the sweep lists {duplicates} cell(s) twice: check the methods, "
                          f"protocols, seeds and grid for repeated values")
    return cells


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep from TOML (``.toml``) or YAML (``.yaml``/``.yml``, needs PyYAML): keys
    ``methods``, ``protocols``, ``seeds``, ``grid`` (option -> values) and ``run`` (common
    ``zsbench run`` options, e.g. ``{"data-dir": "data", "limit": 4}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    text = path.read_text("utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as err:
                raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), "
                                  f"or write the sweep as TOML") from err
            spec = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: a sweep file is .toml, .yaml or .yml")
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot parse: {err}") from err
    unknown = sorted(set(spec) - {"methods", "protocols", "seeds", "grid", "run"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; expected methods, "
                          f"protocols, seeds, grid, run")
    return spec


def run_options_arguments(options: Mapping[str, Any]) -> list[str]:
    """``{"data-dir": "data", "limit": 4, "skip-missing": True}`` -> ``zsbench run`` flags."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (False, None):
            args += [flag, str(value)]
    return args


@dataclass
class CellOutcome:
    cell: SweepCell
    status: str  # "done" (ran now), "skipped" (finished before), "failed"
    log: Path
    seconds: float = 0.0
    returncode: int | None = None


@dataclass
class SweepReport:
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _read_state(path: Path) -> dict[str, str]:
    """Cell key -> "done" from a state file (an unreadable one counts as empty)."""
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is not readable JSON: every cell is checked again", path)
        return {}
    return {str(k): str(v) for k, v in state.items()} if isinstance(state, dict) else {}


def cells_for_rank(cells: Sequence[SweepCell], world: WorldInfo) -> list[SweepCell]:
    """Every ``world_size``-th cell from ``rank``: the ranks share the cells exactly once."""
    return list(cells)[world.rank::world.world_size]


def _child_env(world: WorldInfo, device_per_rank: bool) -> dict[str, str]:
    """The environment of a cell: no torchrun/Slurm rank variables (a cell is one process);
    under a multi-rank sweep on GPUs, this rank's GPU only."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")}
    if device_per_rank and world.world_size > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(world.local_rank)
    return env


def _start_cell(cell: SweepCell, log_dir: Path, common: Sequence[str], env: dict[str, str]
                ) -> tuple[SweepCell, subprocess.Popen, Any, float]:
    """Start ``zsbench run`` of one cell, its output to ``<key>.log`` (the command first)."""
    log = open(log_dir / f"{cell.key}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed when it ends
    command = [sys.executable, "-m", "zsbench", *cell.arguments(), *common]
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               stdin=subprocess.DEVNULL)
    return cell, process, log, time.perf_counter()


def run_sweep(cells: Sequence[SweepCell], log_dir: str | Path, common: Sequence[str] = (), *,
              workers: int = 1, world: WorldInfo | None = None,
              progress: SweepProgress | None = None, poll_seconds: float = 0.2) -> SweepReport:
    """Run this rank's share of ``cells`` with up to ``workers`` at a time; ``common`` are
    ``zsbench run`` options shared by every cell (``--data-dir``, ``--output-dir``, ...)."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    world = world or world_from_env()
    log_dir = Path(log_dir)
    atomic.ensure_writable_dir(log_dir, "sweep log folder")
    log_dir.mkdir(parents=True, exist_ok=True)
    mine = cells_for_rank(cells, world)
    state_path = log_dir / (STATE_FILE if world.world_size == 1
                            else f"sweep_state.rank{world.rank}.json")
    state = _read_state(state_path)
    env = _child_env(world, device_per_rank=True)
    report = SweepReport()
    pending = []
    for cell in mine:
        if state.get(cell.key) == "done":
            report.outcomes.append(CellOutcome(cell, "skipped", log_dir / f"{cell.key}.log"))
        else:
            pending.append(cell)
    running: dict[str, tuple[SweepCell, subprocess.Popen, Any, float]] = {}
    total = len(mine)

    def tell() -> None:
        if progress:
            finished = sum(o.status != "failed" for o in report.outcomes)
            progress(finished, len(running), len(report.failed), total)

    tell()
    while pending or running:
        while pending and len(running) < workers:
            cell = pending.pop(0)
            running[cell.key] = _start_cell(cell, log_dir, common, env)
            tell()
        for key, (cell, process, log, started) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[key]
            status = "done" if code == 0 else "failed"
            if status == "done":
                state[key] = "done"
                atomic.write_text(state_path, json.dumps(state, indent=1, sort_keys=True))
            else:
                logger.warning("sweep cell %s failed (exit %d): see %s", key, code,
                               log_dir / f"{key}.log")
            report.outcomes.append(CellOutcome(cell, status, log_dir / f"{key}.log",
                                               time.perf_counter() - started, code))
            tell()
        if running:
            time.sleep(poll_seconds)
    return report


def submit_slurm_array(cells: Sequence[SweepCell], log_dir: str | Path,
                       common: Sequence[str] = (), *, partition: str | None = None,
                       gpus_per_task: int = 1, timeout_min: int = 240,
                       parallel: int | None = None, executor: Any = None) -> list[Any]:
    """Submit one Slurm array job of the cells through ``submitit`` (``pip install
    zsbench[slurm]``); returns the submitit jobs. ``executor`` replaces the Slurm executor
    (e.g. ``submitit.LocalExecutor`` for a dry run)."""
    try:
        import submitit
    except ImportError as err:
        raise ConfigError("Slurm job arrays need submitit: pip install 'zsbench[slurm]'") from err
    log_dir = Path(log_dir)
    atomic.ensure_writable_dir(log_dir, "sweep log folder")
    if executor is None:
        executor = submitit.AutoExecutor(folder=str(log_dir / "slurm"), cluster="slurm")
        params: dict[str, Any] = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_task,
                                  "tasks_per_node": 1}
        if partition:
            params["slurm_partition"] = partition
        if parallel:
            params["slurm_array_parallelism"] = parallel
        executor.update_parameters(**params)
    commands = [[sys.executable, "-m", "zsbench", *c.arguments(), *common] for c in cells]
    return executor.map_array(_run_command, commands)


def _run_command(command: list[str]) -> int:
    """A job array task: run one cell's command; raise (job failed) on a non-zero exit."""
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {completed.returncode}")
    return completed.returncode
