"""Real-IAD (Wang et al., CVPR 2024): 30 objects, 5 camera views, about 150,000 images.

Layout of the download (one archive per resolution, plus the split files)::

    realiad_1024/<cat>/OK/S0001/<cat>_0001_OK_C1_<time>.jpg          (also realiad_512, _256, _raw)
    realiad_1024/<cat>/NG/<code>/S0003/<cat>_0003_NG_<code>_C1_<time>.jpg
    realiad_1024/<cat>/NG/<code>/S0003/<cat>_0003_NG_<code>_C1_<time>.png    (mask, same stem)
    realiad_jsons/realiad_jsons/<cat>.json       (also realiad_jsons_sv/, realiad_jsons_fuiad_*/)

A split file holds ``{"meta": ..., "train": [...], "test": [...]}``, each entry with
``category``, ``anomaly_class`` (``OK`` or a defect code), ``image_path`` and ``mask_path``
(relative to the resolution folder; a path relative to the category folder is accepted too).
The splits are the split file's (option ``json_set``, default ``realiad_jsons``, the multi-view
setting; ``realiad_jsons_sv`` is the single-view one); ``json_set=none`` reads the folders
instead and puts every image in "test". Option ``resolution`` picks the folder when several are
present (``1024``, ``512``, ``256`` or ``raw``). Masks pair with images by stem (``x.png`` or
``x_mask.png``). Defect codes become names (the dataset page's table): AK pit, BX deformation,
CH abrasion, HS scratch, PS damage, QS missing parts, YW foreign objects, ZW contamination; the
camera view (C1..C5) is ``extra["view"]``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import name_files, parse_categories
from zsbench.raw_files import describe_folder, list_images, relative_posix
from zsbench.registry import register_adapter

logger = logging.getLogger(__name__)

REAL_IAD_CATEGORIES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint",
    "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator",
    "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy",
    "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads",
    "woodstick", "zipper")
DEFECT_NAMES = {"AK": "pit", "BX": "deformation", "CH": "abrasion", "HS": "scratch",
                "PS": "damage", "QS": "missing_parts", "YW": "foreign_objects",
                "ZW": "contamination"}
RESOLUTIONS = ("1024", "512", "256", "raw")
VIEW = re.compile(r"_(C\d)(?:_|$)")
MASK_SUFFIXES = frozenset({".png"})  # masks are PNG, images JPEG


def defect_name(code: str) -> str:
    return DEFECT_NAMES.get(code.upper(), code.lower())


def view_of(stem: str) -> str | None:
    match = VIEW.search(stem)
    return match.group(1) if match else None


@register_adapter("real_iad")
class RealIADAdapter(DatasetAdapter):
    """Real-IAD: multi-view industrial anomaly detection at scale."""

    options_accepted: ClassVar[tuple[str, ...]] = ("categories", "resolution", "json_set")
    option_types: ClassVar[dict[str, type]] = {"resolution": str, "json_set": str}
    info = DatasetInfo(
        name="real_iad",
        title="Real-IAD",
        domain="industrial",
        categories=REAL_IAD_CATEGORIES,
        prompt_names={c: c.replace("_", " ") for c in REAL_IAD_CATEGORIES},
        license="CC BY-NC-SA 4.0 (on request; unverified)",
        rehostable=False,
        citation=("Wang, Wu, Zhang, Chen, Gao, Li, Wang, Wang, Liu. Real-IAD: A Real-World "
                  "Multi-View Dataset for Benchmarking Versatile Industrial Anomaly Detection. "
                  "CVPR 2024."),
        homepage="https://realiad4ad.github.io/Real-IAD/",
        has_masks=True,
        has_normals=True,
        order=150,
        splits=("train", "test"),
        description=("30 objects seen from 5 cameras; splits from the realiad_jsons files. "
                     "Not re-hosted (obtained on request); build it locally."),
    )

    def resolution_root(self, raw_dir: Path) -> Path:
        """The ``realiad_<resolution>`` folder (``raw_dir`` itself if it holds categories)."""
        if not raw_dir.is_dir():
            raise DatasetLayoutError(f"real_iad: the raw folder {raw_dir} does not exist.")
        wanted = str(self.options.get("resolution", "") or "").strip()
        if wanted and wanted not in RESOLUTIONS:
            raise DatasetLayoutError(f"real_iad: option resolution={wanted!r} must be one of "
                                     f"{', '.join(RESOLUTIONS)}")
        bases = [raw_dir, *sorted(p for p in raw_dir.iterdir() if p.is_dir())]
        for base in bases:
            present = [r for r in RESOLUTIONS if (base / f"realiad_{r}").is_dir()]
            if not present:
                continue
            if wanted:
                if wanted not in present:
                    raise DatasetLayoutError(f"real_iad: no folder realiad_{wanted}/ under "
                                             f"{base}; present: {', '.join(present)}")
                return base / f"realiad_{wanted}"
            if len(present) > 1:
                raise DatasetLayoutError(f"real_iad: several resolutions under {base} "
                                         f"({', '.join(present)}); choose one with --option "
                                         f"resolution={present[0]}")
            return base / f"realiad_{present[0]}"
        if any((raw_dir / c / "OK").is_dir() for c in REAL_IAD_CATEGORIES):
            return raw_dir
        raise DatasetLayoutError(f"real_iad: expected a folder 'realiad_1024/' (or _512, _256, "
                                 f"_raw) holding '<category>/OK/' and '<category>/NG/' under "
                                 f"{raw_dir}. Found: {describe_folder(raw_dir)}")

    def split_file(self, res_root: Path, category: str, json_set: str) -> Path:
        """The split file ``<json_set>/<category>.json`` near the resolution folder."""
        candidates = []
        for base in (res_root.parent, res_root.parent.parent, res_root):
            candidates += [base / "realiad_jsons" / json_set / f"{category}.json",
                           base / json_set / f"{category}.json"]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise DatasetLayoutError(f"real_iad: no split file {json_set}/{category}.json (looked "
                                 f"for {candidates[0]} and next to {res_root}); extract "
                                 f"realiad_jsons.zip there, or read the folders with --option "
                                 f"json_set=none (every image in 'test')")

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        res_root = self.resolution_root(raw_dir)
        wanted = parse_categories(self.options.get("categories"))
        categories = wanted or [c for c in REAL_IAD_CATEGORIES if (res_root / c).is_dir()]
        unknown = [c for c in categories if c not in REAL_IAD_CATEGORIES]
        missing = [c for c in categories if not (res_root / c).is_dir()]
        if unknown or missing or not categories:
            raise DatasetLayoutError(f"real_iad: categories {unknown + missing or '(none)'} not "
                                     f"found under {res_root}; known: "
                                     f"{', '.join(REAL_IAD_CATEGORIES)}. "
                                     f"Found: {describe_folder(res_root)}")
        json_set = str(self.options.get("json_set", "realiad_jsons") or "none").strip()
        for category in categories:
            if json_set.lower() == "none":
                yield from self.folder_records(res_root, category)
            else:
                yield from self.json_records(res_root, category,
                                             self.split_file(res_root, category, json_set))

    def _resolve(self, res_root: Path, category: str, relative: str, split_file: Path) -> Path:
        for candidate in (res_root / relative, res_root / category / relative):
            if candidate.is_file():
                return candidate
        raise DatasetLayoutError(f"real_iad: {split_file} lists {relative!r}, which is neither "
                                 f"under {res_root} nor under {res_root / category}")

    def json_records(self, res_root: Path, category: str, split_file: Path
                     ) -> Iterator[RawRecord]:
        try:
            meta = json.loads(split_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DatasetLayoutError(f"real_iad: cannot read the split file {split_file}: "
                                     f"{err}") from err
        if not isinstance(meta, dict) or not any(k in meta for k in ("train", "test")):
            raise DatasetLayoutError(f"real_iad: {split_file} has no 'train' or 'test' list")
        for split in ("train", "test"):
            for number, entry in enumerate(meta.get(split) or []):
                yield self.entry_record(res_root, category, split_file, split, number, entry)

    def entry_record(self, res_root: Path, category: str, split_file: Path, split: str,
                     number: int, entry: Any) -> RawRecord:
        try:
            code = str(entry["anomaly_class"])
            image_rel = str(entry["image_path"])
        except (KeyError, TypeError) as err:
            raise DatasetLayoutError(f"real_iad: {split_file} {split}[{number}] lacks "
                                     f"'anomaly_class' or 'image_path': {entry!r}") from err
        image = self._resolve(res_root, category, image_rel, split_file)
        anomalous = code.upper() != "OK"
        mask = None
        if anomalous and entry.get("mask_path"):
            mask = self._resolve(res_root, category, str(entry["mask_path"]), split_file)
        return RawRecord(category=category, label=int(anomalous), split=split,
                         source_path=relative_posix(image, res_root), image=image, mask=mask,
                         defect_type=defect_name(code) if anomalous else "good",
                         extra={"view": view_of(image.stem), "defect_code": code})

    def folder_records(self, res_root: Path, category: str) -> Iterator[RawRecord]:
        """Every image of ``<cat>/OK`` (normal) and ``<cat>/NG/<code>`` (anomalous), test."""
        base = res_root / category
        ok = base / "OK"
        for image in list_images(ok, recursive=True) if ok.is_dir() else []:
            yield RawRecord(category=category, label=0, split="test",
                            source_path=relative_posix(image, res_root), image=image,
                            extra={"view": view_of(image.stem)})
        ng = base / "NG"
        for code_dir in sorted(p for p in ng.iterdir() if p.is_dir()) if ng.is_dir() else []:
            files = list_images(code_dir, recursive=True)
            masks = {(p.parent, p.stem.removesuffix("_mask")): p for p in files
                     if p.suffix.lower() in MASK_SUFFIXES}
            images = [p for p in files if p.suffix.lower() not in MASK_SUFFIXES]
            without = [p for p in images if (p.parent, p.stem) not in masks]
            if without:
                logger.warning("real_iad: %d anomalous images without a mask (kept, has_mask "
                               "False): %s", len(without), name_files(without, res_root))
            for image in images:
                yield RawRecord(category=category, label=1, split="test",
                                source_path=relative_posix(image, res_root), image=image,
                                mask=masks.get((image.parent, image.stem)),
                                defect_type=defect_name(code_dir.name),
                                extra={"view": view_of(image.stem), "defect_code": code_dir.name})
