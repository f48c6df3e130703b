"""Published ("reported") numbers: convert the shared reference CSVs into one tidy, versioned
``reported.csv`` and read it back.

The tidy file has one value per line: ``source_id, source, table, method, dataset, domain,
level, metric, value, trained_on, protocol, category``. ``dataset`` is the zsbench id, ``metric``
the zsbench metric name, ``value`` the percentage exactly as printed in the source, ``category``
empty for dataset-level rows. The PRO columns of the AnomalyCLIP, FAPrompt and TPS tables were
computed with the cflow-ad 200-threshold routine, so they are stored as ``aupro_legacy``.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zsbench import atomic
from zsbench.errors import DataError
from zsbench.leaderboard.catalog import METRIC_IDS, dataset_by_id, dataset_entries, dataset_id

logger = logging.getLogger(__name__)

REPORTED_FILE = "reported.csv"
COLUMNS = ("source_id", "source", "table", "method", "dataset", "domain", "level", "metric",
           "value", "trained_on", "protocol", "category")


@dataclass(frozen=True)
class Source:
    """One publication (or released artefact) that reported numbers come from."""

    id: str
    label: str  # short text shown on the site
    citation: str  # full reference for the README
    reference_file: str  # file in the shared reference folder


SOURCES: dict[str, Source] = {s.id: s for s in (
    Source("faprompt_tables", "FAPrompt paper (arXiv:2410.10289)",
           "J. Zhu, Y.-S. Ong, C. Shen, G. Pang. Fine-grained Abnormality Prompt Learning for "
           "Zero-shot Anomaly Detection (FAPrompt). ICCV 2025; arXiv:2410.10289; code "
           "https://github.com/mala-lab/FAPrompt. Table 1 (image level) and Table 2 (pixel "
           "level).", "faprompt_paper_tables.csv"),
    Source("anomalyclip_paper", "AnomalyCLIP paper (ICLR 2024)",
           "Q. Zhou, G. Pang, Y. Tian, S. He, J. Chen. AnomalyCLIP: Object-agnostic Prompt "
           "Learning for Zero-shot Anomaly Detection. ICLR 2024; arXiv:2310.18961; tables "
           "reproduced in the README of https://github.com/zqhang/AnomalyCLIP.",
           "reported_other.csv"),
    Source("tps_readme", "TPS README (majitao-xd/TPS)",
           "TPS: results figure in the README of https://github.com/majitao-xd/TPS.",
           "reported_other.csv"),
    Source("anomalyclip_logs", "AnomalyCLIP released logs",
           "Per-class results logged with AnomalyCLIP's released checkpoints "
           "(results/*/zero_shot/log.txt in https://github.com/zqhang/AnomalyCLIP).",
           "anomalyclip_released_logs.csv"),
)}

#: hand-curated published numbers of the second-wave methods (zsbench's own file, shipped in
#: ``zsbench.leaderboard_data``); each row names one of these sources
CURATED_FILE = "curated/second_wave_papers.csv"
CURATED_SOURCES: dict[str, Source] = {s.id: s for s in (
    Source("musc_readme", "MuSc README (xrli-U/MuSc)",
           "X. Li, Z. Huang, F. Xue, Y. Zhou. MuSc: Zero-Shot Industrial Anomaly Classification "
           "and Segmentation with Mutual Scoring of the Unlabeled Images. ICLR 2024; "
           "arXiv:2401.16753; 0-shot rows of the comparison table in the README of "
           "https://github.com/xrli-U/MuSc.", CURATED_FILE),
    Source("adaclip_paper", "AdaCLIP paper (ECCV 2024)",
           "Y. Cao, J. Zhang, L. Frittoli, Y. Cheng, W. Shen, G. Boracchi. AdaCLIP: Adapting "
           "CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection. ECCV 2024; "
           "arXiv:2407.15795; code https://github.com/caoyunkang/AdaCLIP.", CURATED_FILE),
    Source("adaptclip_readme", "AdaptCLIP README (gaobb/AdaptCLIP)",
           "B.-B. Gao, Y. Zhou, J. Yan, et al. AdaptCLIP: Adapting CLIP for Universal Visual "
           "Anomaly Detection. AAAI 2026; arXiv:2505.09926; zero-shot row (TA+VA) of the "
           "ablation table in the README of https://github.com/gaobb/AdaptCLIP.", CURATED_FILE),
    Source("vcpclip_paper", "VCP-CLIP paper (ECCV 2024)",
           "Z. Qu, X. Tao, M. Prasad, F. Shen, Z. Zhang, X. Gong, G. Ding. VCP-CLIP: A visual "
           "context prompting model for zero-shot anomaly segmentation. ECCV 2024; "
           "arXiv:2407.12276; code https://github.com/xiaozhen228/VCP-CLIP.", CURATED_FILE),
    Source("bayespfl_paper", "Bayes-PFL paper (CVPR 2025)",
           "Z. Qu, X. Tao, X. Gong, S. Qu, Q. Chen, Z. Zhang, X. Wang, G. Ding. Bayesian Prompt "
           "Flow Learning for Zero-Shot Anomaly Detection. CVPR 2025; arXiv:2503.10080; code "
           "https://github.com/xiaozhen228/Bayes-PFL.", CURATED_FILE),
    Source("aaclip_log", "AA-CLIP released log (Mwxinnn/AA-CLIP)",
           "W. Ma, X. Zhang, Q. Yao, F. Tang, C. Wu, Y. Li, R. Yan, Z. Jiang, S. K. Zhou. "
           "AA-CLIP: Enhancing Zero-shot Anomaly Detection via Anomaly-Aware CLIP. CVPR 2025; "
           "arXiv:2503.06661; values of the released evaluation log results/test.log (the "
           "VisA-trained model) in https://github.com/Mwxinnn/AA-CLIP.", CURATED_FILE),
)}
SOURCES.update(CURATED_SOURCES)

# The original files name sources in free text; map them to the ids above.
_OTHER_SOURCE_IDS = {
    "TPS README results figure (majitao-xd/TPS)": ("tps_readme", "README results figure"),
    "AnomalyCLIP paper, ICLR 2024 (README tables)": ("anomalyclip_paper", "README tables"),
}
_METRIC_BY_LEVEL = {("image", "auroc"): "image_auroc", ("image", "ap"): "image_ap",
                    ("pixel", "auroc"): "pixel_auroc", ("pixel", "aupro"): "aupro_legacy"}
_LOG_COLUMNS = {"pixel_auroc": ("pixel", "pixel_auroc"),
                "pixel_aupro_legacy": ("pixel", "aupro_legacy"),
                "image_auroc": ("image", "image_auroc"), "image_ap": ("image", "image_ap")}


@dataclass(frozen=True)
class ReportedValue:
    """One published number (percent), with where it came from."""

    source_id: str
    source: str
    table: str
    method: str
    dataset: str
    domain: str
    level: str
    metric: str
    value_text: str  # exactly as printed in the source
    trained_on: str
    protocol: str
    category: str = ""

    @property
    def value(self) -> float:
        return float(self.value_text)

    def as_row(self) -> dict[str, str]:
        row = {c: getattr(self, c) for c in COLUMNS if c != "value"}
        row["value"] = self.value_text
        return row


class ReportedDataError(DataError):
    """A reference or reported CSV that cannot be read; the message names file, line and field."""


def paper_protocol(dataset: str) -> tuple[str, str]:
    """(trained_on, protocol id) of the field's paper protocol for a target dataset:
    trained on MVTec AD, except MVTec AD itself, trained on VisA."""
    trained_on = "visa" if dataset == "mvtec" else "mvtec"
    return trained_on, f"{trained_on}->{dataset}"


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise ReportedDataError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ReportedDataError(f"{path}: missing column(s) {', '.join(missing)}; "
                                    f"found {reader.fieldnames}")
        return [(i, row) for i, row in enumerate(reader, start=2)]


def _check_number(text: str, where: str) -> str:
    try:
        number = float(text)
    except ValueError:
        raise ReportedDataError(f"{where}: field value: {text!r} is not a number") from None
    if not 0.0 <= number <= 100.0:
        raise ReportedDataError(f"{where}: field value: {text!r} is not a percentage in [0, 100]")
    return text


def _dataset(name: str, where: str) -> str:
    try:
        return dataset_id(name, where)
    except ValueError as err:
        raise ReportedDataError(str(err)) from None


def _faprompt_rows(path: Path) -> list[ReportedValue]:
    source = SOURCES["faprompt_tables"]
    values = []
    for line, row in _read_csv(path, ("dataset", "domain", "method", "level", "metric", "value")):
        where = f"{path}:{line}"
        dataset = _dataset(row["dataset"], where)
        if row["domain"] != dataset_by_id()[dataset].domain:
            raise ReportedDataError(f"{where}: field domain: {row['domain']!r} disagrees with "
                                    f"{dataset_by_id()[dataset].domain!r} for {dataset}")
        metric = _METRIC_BY_LEVEL.get((row["level"], row["metric"]))
        if metric is None:
            raise ReportedDataError(f"{where}: fields level/metric: unknown pair "
                                    f"{row['level']!r}/{row['metric']!r}")
        trained_on, protocol = paper_protocol(dataset)
        table = "Table 1" if row["level"] == "image" else "Table 2"
        values.append(ReportedValue(source.id, source.label, table, row["method"], dataset,
                                    row["domain"], row["level"], metric,
                                    _check_number(row["value"], where), trained_on, protocol))
    return values


def _other_rows(path: Path) -> list[ReportedValue]:
    values = []
    for line, row in _read_csv(path, ("source", "method", "dataset", "level", "metric", "value")):
        where = f"{path}:{line}"
        if row["source"] not in _OTHER_SOURCE_IDS:
            raise ReportedDataError(f"{where}: field source: unknown source {row['source']!r}")
        source_id, table = _OTHER_SOURCE_IDS[row["source"]]
        dataset = _dataset(row["dataset"], where)
        metric = _METRIC_BY_LEVEL.get((row["level"], row["metric"]))
        if metric is None:
            raise ReportedDataError(f"{where}: fields level/metric: unknown pair "
                                    f"{row['level']!r}/{row['metric']!r}")
        trained_on, protocol = paper_protocol(dataset)
        values.append(ReportedValue(source_id, SOURCES[source_id].label, table, row["method"],
                                    dataset, dataset_by_id()[dataset].domain, row["level"], metric,
                                    _check_number(row["value"], where), trained_on, protocol))
    return values


def _log_rows(path: Path) -> list[ReportedValue]:
    source = SOURCES["anomalyclip_logs"]
    values = []
    for line, row in _read_csv(path, ("dataset", "trained_on", "category", *_LOG_COLUMNS)):
        where = f"{path}:{line}"
        dataset = _dataset(row["dataset"], where)
        trained_on = _dataset(row["trained_on"], where)
        if not row["category"]:
            raise ReportedDataError(f"{where}: field category is empty")
        for column, (level, metric) in _LOG_COLUMNS.items():
            values.append(ReportedValue(
                source.id, source.label, "zero_shot/log.txt", "AnomalyCLIP", dataset,
                dataset_by_id()[dataset].domain, level, metric,
                _check_number(row[column], f"{where} ({column})"), trained_on,
                f"{trained_on}->{dataset}", row["category"]))
    return values


def _curated_rows(path: Path) -> list[ReportedValue]:
    """zsbench's curated CSV: ``source_id, table, method, dataset, metric, value, trained_on``
    (dataset and metric as zsbench ids; ``trained_on`` empty for training-free methods,
    ``a+b`` for several auxiliary sets; the protocol is ``trained_on->dataset`` or
    ``zero-shot``)."""
    values = []
    for line, row in _read_csv(path, ("source_id", "table", "method", "dataset", "metric",
                                      "value", "trained_on")):
        where = f"{path}:{line}"
        source = CURATED_SOURCES.get(row["source_id"])
        if source is None:
            raise ReportedDataError(f"{where}: field source_id: unknown source "
                                    f"{row['source_id']!r}; known: {', '.join(CURATED_SOURCES)}")
        if row["dataset"] not in dataset_by_id():
            raise ReportedDataError(f"{where}: field dataset: unknown id {row['dataset']!r}")
        if row["metric"] not in METRIC_IDS:
            raise ReportedDataError(f"{where}: field metric: {row['metric']!r} is not one of "
                                    f"{', '.join(METRIC_IDS)}")
        trained_on = row["trained_on"]
        for name in filter(None, trained_on.split("+")):
            if name not in dataset_by_id():
                raise ReportedDataError(f"{where}: field trained_on: unknown id {name!r}")
        values.append(ReportedValue(
            source.id, source.label, row["table"], row["method"], row["dataset"],
            dataset_by_id()[row["dataset"]].domain,
            "image" if row["metric"].startswith("image") else "pixel", row["metric"],
            _check_number(row["value"], where), trained_on,
            f"{trained_on}->{row['dataset']}" if trained_on else "zero-shot"))
    return values


def curated_file() -> Path:
    """The curated CSV shipped in ``zsbench.leaderboard_data``."""
    return Path(str(resources.files("zsbench.leaderboard_data").joinpath(CURATED_FILE)))


def read_reference(shared_reference_dir: str | Path) -> list[ReportedValue]:
    """Parse the three shared reference CSVs (FAPrompt tables, other papers, AnomalyCLIP logs)
    and zsbench's curated second-wave CSV (:data:`CURATED_FILE`)."""
    ref = Path(shared_reference_dir)
    return [*_faprompt_rows(ref / "faprompt_paper_tables.csv"),
            *_other_rows(ref / "reported_other.csv"),
            *_log_rows(ref / "anomalyclip_released_logs.csv"),
            *_curated_rows(curated_file())]


def _csv_text(values: list[ReportedValue]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in values:
        writer.writerow(v.as_row())
    return buffer.getvalue()


def _readme_text(values: list[ReportedValue]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v.source_id] = counts.get(v.source_id, 0) + 1
    lines = [
        "# Reported numbers",
        "",
        "Published results that seed the leaderboard as *reported* rows. Generated by",
        "`zsbench.leaderboard.reported.convert(shared_reference_dir, out_dir)` from the project's",
        "reference CSVs; do not edit by hand.",
        "",
        f"`{REPORTED_FILE}` holds one value per line, in percent, exactly as printed in the",
        "source:",
        "",
        "| column | meaning |",
        "|---|---|",
        "| source_id, source, table | where the number was published |",
        "| method | method name as the source spells it |",
        "| dataset, domain | zsbench dataset id (mapping below) and its domain |",
        "| level, metric | image or pixel; zsbench metric name |",
        "| value | percentage as printed |",
        "| trained_on, protocol | auxiliary training data and the protocol id (`A->B`) |",
        "| category | class name for per-class values, empty for dataset means |",
        "",
        "Metric names: image AUROC -> `image_auroc`, image AP -> `image_ap`, pixel AUROC ->",
        "`pixel_auroc`, PRO/AUPRO -> `aupro_legacy`: these sources computed PRO with the cflow-ad",
        "200-threshold routine (see METRICS.md), which is not the exact MVTec AUPRO.",
        "",
        "Protocol: the field's paper protocol (auxiliary training on MVTec AD, evaluation on every",
        "other dataset; MVTec AD itself evaluated after training on VisA), as the FAPrompt tables",
        "state; assumed for the AnomalyCLIP paper and TPS figures, which use the same setting.",
        "Training-free methods (CLIP, CLIP-AC, WinCLIP, AnoVL) use no auxiliary data; their rows",
        "keep the table's protocol. The released AnomalyCLIP logs name their training set per",
        "line.",
        "",
        f"The second-wave methods' values come from zsbench's curated `{CURATED_FILE}`",
        "(one row per value with its source and table; its training data as the source states",
        "it; training-free methods under the `zero-shot` protocol).",
        "",
        "## Sources",
        "",
        "| source_id | values | reference |",
        "|---|---|---|",
    ]
    for source in SOURCES.values():
        lines.append(f"| `{source.id}` | {counts.get(source.id, 0)} | {source.citation} |")
    lines += ["", "## Dataset names", "", "| name in the papers | zsbench id | domain |",
              "|---|---|---|"]
    used = {v.dataset for v in values}
    lines += [f"| {d.paper_name} | `{d.id}` | {d.domain} |" for d in dataset_entries()
              if d.id in used]
    return "\n".join(lines) + "\n"


def convert(shared_reference_dir: str | Path, out_dir: str | Path) -> Path:
    """Regenerate ``<out_dir>/reported.csv`` and its README from the shared reference CSVs.

    Returns the path of the CSV. Writes are atomic."""
    values = read_reference(shared_reference_dir)
    out_dir = Path(out_dir)
    csv_path = atomic.write_text(out_dir / REPORTED_FILE, _csv_text(values))
    atomic.write_text(out_dir / "README.md", _readme_text(values))
    logger.info("wrote %d reported values to %s", len(values), csv_path)
    return csv_path


def default_reported_dir() -> Path:
    """The ``reported/`` folder shipped in package ``zsbench.leaderboard_data``."""
    return Path(str(resources.files("zsbench.leaderboard_data").joinpath("reported")))


def load_reported(reported_dir: str | Path | None = None) -> list[ReportedValue]:
    """Read ``reported.csv`` (default: the shipped copy); errors name the file, line and field."""
    path = Path(reported_dir or default_reported_dir()) / REPORTED_FILE
    values = []
    for line, row in _read_csv(path, COLUMNS):
        where = f"{path}:{line}"
        if row["dataset"] not in dataset_by_id():
            raise ReportedDataError(f"{where}: field dataset: unknown id {row['dataset']!r}")
        for column in ("source_id", "method", "metric"):
            if not row[column]:
                raise ReportedDataError(f"{where}: field {column} is empty")
        values.append(ReportedValue(
            source_id=row["source_id"], source=row["source"], table=row["table"],
            method=row["method"], dataset=row["dataset"], domain=row["domain"],
            level=row["level"], metric=row["metric"],
            value_text=_check_number(row["value"], where), trained_on=row["trained_on"],
            protocol=row["protocol"], category=row["category"]))
    return values
