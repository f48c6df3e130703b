"""Build the static leaderboard site: ``index.html``, CSS/JS assets, the data as ``data.js``
(a global, so the page works from ``file://``) and ``data.json``, and the anomaly-map gallery.

The output folder is written atomically (built in a staging folder, then swapped in).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zsbench import atomic
from zsbench.atomic import ensure_writable_dir
from zsbench.errors import ConfigError
from zsbench.leaderboard.checks import SampleError, resolve_sample, smoke_reason
from zsbench.leaderboard.reported import load_reported
from zsbench.leaderboard.site_data import build_site_data, reproduced_row_id
from zsbench.results import empty_reason, load_results, non_finite_fields

logger = logging.getLogger(__name__)

ASSET_FILES = ("index.html", "style.css", "table.js", "charts.js", "app.js")
SITE_MARKER = ".zsbench-site"  # marks a folder this builder owns (safe to replace)
DATA_GLOBAL = "ZSBENCH_DATA"


class SiteBuildError(ConfigError):
    """The site cannot be built where asked; the message names the path."""


@dataclass
class SiteBuild:
    """What a build produced: the site folder, row counts and the files that were skipped."""

    out_dir: Path
    reported_rows: int
    reproduced_rows: int
    results_loaded: int
    gallery_images: int
    problems: list[str] = field(default_factory=list)


def default_results_dirs() -> list[Path]:
    """``leaderboard/results`` (the shipped copy when not run from a checkout) plus ``./results``
    when present."""
    local = Path("leaderboard/results")
    shipped = Path(str(resources.files("zsbench.leaderboard_data").joinpath("results")))
    dirs = [local if local.is_dir() else shipped]
    if Path("results").is_dir():
        dirs.append(Path("results"))
    return dirs


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SiteBuildError(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / SITE_MARKER).exists():
        raise SiteBuildError(f"--out {out_dir}: folder is not empty and was not built by "
                             f"zsbench (no {SITE_MARKER}); refusing to replace it")
    ensure_writable_dir(out_dir, "--out folder")


def _check_results_dirs(dirs: Sequence[Path]) -> None:
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise SiteBuildError(f"--results {', '.join(missing)}: no such file or folder")


def _publishable(results: Sequence[dict[str, Any]], problems: list[str]) -> list[dict[str, Any]]:
    """The results that may be shown; the others (smoke runs, NaN or infinite values, no image
    or no metric) are named in ``problems`` with the reason."""
    kept = []
    for result in results:
        where = result.get("_path")
        bad = next(non_finite_fields({k: v for k, v in result.items() if k != "_path"}), None)
        empty = empty_reason(result)
        if (smoke := smoke_reason(result)) is not None:
            reason = f"{where}: {smoke}"
        elif bad is not None:
            reason = f"{where}: field {bad}: not a finite number (NaN or infinity)"
        elif empty is not None:
            reason = f"{where}: field {empty[0]}: {empty[1]}"
        else:
            kept.append(result)
            continue
        logger.warning("skipping %s", reason)
        problems.append(reason)
    return kept


def _copy_gallery(results: Sequence[dict[str, Any]], site: Path,
                  problems: list[str]) -> list[dict[str, Any]]:
    """Copy each result's ``samples`` images into ``site/gallery/`` and describe them.

    Only files inside the result's own folder are copied (see :func:`checks.resolve_sample`);
    any other entry is refused and named in ``problems``."""
    gallery = []
    for index, result in enumerate(results):
        samples = result.get("samples") or []
        if not samples:
            continue
        result_file = Path(result["_path"])
        images = []
        for i, relative in enumerate(samples):
            try:
                source = resolve_sample(result_file, relative)
            except SampleError as err:
                problems.append(f"{result_file}: field samples/{i}: {err}")
                continue
            target = Path("gallery") / f"{index:04d}" / f"{i:03d}-{source.name}"
            (site / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, site / target)
            images.append({"src": target.as_posix(), "caption": Path(relative).stem})
        if images:
            gallery.append({
                "row_id": reproduced_row_id(result),
                "method": result["method"], "dataset": result["dataset"]["name"],
                "protocol": result["protocol"]["id"], "config_hash": result["config_hash"],
                "seed": result.get("seed"), "scale": result.get("samples_scale"),
                "images": images})
    return gallery


def _write_assets(site: Path) -> None:
    assets = resources.files("zsbench.leaderboard").joinpath("assets")
    for name in ASSET_FILES:
        (site / name).write_bytes(assets.joinpath(name).read_bytes())


def build(results_dirs: Iterable[str | Path] | None, out_dir: str | Path,
          reported_dir: str | Path | None = None) -> SiteBuild:
    """Build the site from result JSONs under ``results_dirs`` and the reported numbers.

    Bad result files are skipped and named in ``SiteBuild.problems`` (and in the page)."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if results_dirs is None:
        dirs = default_results_dirs()
    else:
        dirs = [Path(d) for d in results_dirs]
        _check_results_dirs(dirs)
    results, problems = load_results(dirs)
    results = _publishable(results, problems)
    reported = load_reported(reported_dir)
    with atomic.atomic_directory(out_dir) as site:
        sample_problems: list[str] = []
        gallery = _copy_gallery(results, site, sample_problems)
        for problem in sample_problems:
            logger.warning("%s", problem)
        problems += sample_problems
        data = build_site_data(results, reported, problems, gallery)
        text = json.dumps(data, indent=1, sort_keys=False, allow_nan=False)
        (site / "data.json").write_text(text + "\n", encoding="utf-8")
        (site / "data.js").write_text(f"window.{DATA_GLOBAL} = {text};\n", encoding="utf-8")
        _write_assets(site)
        (site / SITE_MARKER).write_text("built by zsbench leaderboard build\n", encoding="utf-8")
    rows = data["rows"]
    built = SiteBuild(
        out_dir=out_dir,
        reported_rows=sum(1 for r in rows if r["kind"] == "reported"),
        reproduced_rows=sum(1 for r in rows if r["kind"] == "reproduced"),
        results_loaded=len(results),
        gallery_images=sum(len(g["images"]) for g in gallery),
        problems=data["skipped"])
    logger.info("built %s: %d reported rows, %d reproduced rows, %d skipped", out_dir,
                built.reported_rows, built.reproduced_rows, len(built.problems))
    return built


def build_site(results_dirs: Iterable[str | Path] | None, out_dir: str | Path,
               reported_dir: str | Path | None = None) -> Path:
    """Build the site (see :func:`build`) and return the folder holding ``index.html``."""
    return build(results_dirs, out_dir, reported_dir).out_dir
