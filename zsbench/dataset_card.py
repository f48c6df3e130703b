"""The ``README.md`` dataset card of a prepared dataset: YAML header for the Hub + readable body.

The YAML header carries the Hub keys (``pretty_name``, ``license``, ``task_categories``,
``tags``, ``configs`` with the data files per split) and a ``zsbench`` block that tools read
back: dataset id, adapter and options, zsbench version, inputs key, licence text, re-hosting
permission, homepage, citation and the counts per split and category.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from zsbench import __version__
from zsbench.adapter import DatasetInfo

HF_LICENSES = {  # licence text prefix -> Hub licence id
    "CC BY-NC-SA 4.0": "cc-by-nc-sa-4.0",
    "CC BY-NC 4.0": "cc-by-nc-4.0",
    "CC BY-SA 4.0": "cc-by-sa-4.0",
    "CC BY 4.0": "cc-by-4.0",
    "CC0": "cc0-1.0",
    "MIT": "mit",
    "Apache-2.0": "apache-2.0",
}


def hf_license_id(license_text: str) -> str:
    """The Hub licence id for an adapter's licence text ("other" when unknown)."""
    for prefix, hub_id in HF_LICENSES.items():
        if license_text.strip().startswith(prefix):
            return hub_id
    return "other"


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def split_globs(shards: dict[str, list[str]], prefix: str = "") -> list[dict[str, str]]:
    """``configs[].data_files`` entries: one glob per split (``data/test-*.parquet``)."""
    return [{"split": split, "path": f"{prefix}data/{split}-*.parquet"} for split in sorted(shards)]


def card_header(info: DatasetInfo, counts: dict[str, Any], shards: dict[str, list[str]], *,
                adapter_name: str, adapter_options: dict[str, Any], inputs_key: str,
                adapter_class: str = "") -> dict[str, Any]:
    """The YAML header as a dict."""
    total = sum(split["n"] for split in counts.values())
    header: dict[str, Any] = {
        "pretty_name": f"{info.title} (zsbench)",
        "license": hf_license_id(info.license),
        "task_categories": ["image-classification"] + (
            ["image-segmentation"] if info.has_masks else []),
        "tags": ["anomaly-detection", "zero-shot-anomaly-detection", "zsbench", info.domain],
        "size_categories": [size_category(total)],
        "configs": [{"config_name": info.name, "default": True,
                     "data_files": split_globs(shards)}],
        "zsbench": {
            "dataset": info.name,
            "title": info.title,
            "domain": info.domain,
            "adapter": adapter_name,
            "adapter_class": adapter_class,
            "adapter_options": {k: str(v) for k, v in sorted(adapter_options.items())},
            "version": __version__,
            "inputs_key": inputs_key,
            "license": info.license,
            "rehostable": info.rehostable,
            "homepage": info.homepage,
            "citation": info.citation,
            "categories": list(info.categories),
            "prompt_names": dict(info.prompt_names),
            "shards": shards,
            "counts": counts,
        },
    }
    if header["license"] == "other":  # the Hub wants a name for "other", right after it
        name = re.sub(r"[^a-z0-9]+", "-", info.license.lower()).strip("-")[:60]
        items = list(header.items())
        items.insert(2, ("license_name", name))
        header = dict(items)
    return header


def _counts_table(counts: dict[str, Any]) -> str:
    lines = ["| split | category | images | anomalous | with mask |", "|---|---|---|---|---|"]
    for split, block in counts.items():
        for category, c in block["categories"].items():
            lines.append(f"| {split} | {category} | {c['n']} | {c['anomalous']} | "
                         f"{c['with_mask']} |")
        lines.append(f"| {split} | **all** | **{block['n']}** | **{block['anomalous']}** | "
                     f"**{block['with_mask']}** |")
    return "\n".join(lines)


def render_card(info: DatasetInfo, counts: dict[str, Any], shards: dict[str, list[str]], *,
                adapter_name: str, adapter_options: dict[str, Any] | None = None,
                inputs_key: str = "", adapter_class: str = "") -> str:
    """The full ``README.md`` text: YAML header, description, counts, source, licence,
    citation and provenance."""
    options = dict(adapter_options or {})
    header = card_header(info, counts, shards, adapter_name=adapter_name,
                         adapter_options=options, inputs_key=inputs_key,
                         adapter_class=adapter_class)
    option_text = " ".join(f"--option {k}={v}" for k, v in sorted(options.items()))
    rehost = ("may be re-hosted under its licence" if info.rehostable else
              "may NOT be re-hosted: build it locally from your own download")
    body = f"""# {info.title} (zsbench unified format)

{info.description or info.title}

One row per image with the columns `image`, `mask` (PNG, mode L, 0/255; empty for normal
images), `label` (0 normal, 1 anomaly), `dataset`, `category`, `prompt_name`, `defect_type`
("good" for normal images), `split`, `sample_id`, `source_path` (path inside the original
download), `has_mask`, `width`, `height`.

## Counts

{_counts_table(counts)}

## Source and licence

- Homepage: {info.homepage}
- Licence: {info.license} ({rehost})
- Masks: {"yes" if info.has_masks else "no"}; normal images in the test split:
  {"yes" if info.has_normals else "no"}

## Citation

{info.citation}

## Provenance

Built by zsbench {__version__} with the adapter `{adapter_name}`
(`{adapter_class or adapter_name}`). Rebuild with:

    zsbench data prepare {adapter_name} --raw <download> --out <dir> {option_text}
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def parse_card(text: str, where: str = "README.md") -> dict[str, Any]:
    """The YAML header of a card as a dict, plus ``"body"`` (the Markdown after it)."""
    match = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n?(.*)$", text, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"{where}: no YAML header (a card starts with '---')")
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: the YAML header cannot be parsed: {err}") from err
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the YAML header is not a mapping")
    header["body"] = match.group(2)
    return header


def read_card_file(path: str | Path) -> dict[str, Any]:
    """:func:`parse_card` of a card file."""
    path = Path(path)
    return parse_card(path.read_text(encoding="utf-8"), str(path))
