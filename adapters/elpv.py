"""ELPV: electroluminescence images of solar cells (Buerhop-Lutz, Deitsch et al.).

Layout: ``labels.csv`` (whitespace separated: image path, defect probability in
{0, 1/3, 2/3, 1}, cell type mono/poly) and ``images/cellNNNN.png`` (300x300 greyscale).
``--raw`` may point at that folder, at a folder holding it as ``data/`` (the ``elpv_dataset``
package of ``pip install elpv-dataset``), or at the package's parent (``site-packages``).

A cell is anomalous iff its defect probability is > 0 (the experts' "possibly defective" 1/3
counts as anomalous); the option ``threshold`` changes that (anomalous iff probability >
threshold). The defect type records the probability (``defect_p33``, ``defect_p67``,
``defect_p100``). The category is ``solar_cell`` for every cell, or the cell type
(``mono``/``poly``) with the option ``by_type=true``. No masks; everything is "test".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from zsbench.adapter import DatasetAdapter, DatasetInfo, DatasetLayoutError, RawRecord
from zsbench.adapters.mvtec import parse_bool
from zsbench.raw_files import describe_folder
from zsbench.registry import register_adapter

CATEGORY = "solar_cell"


@dataclass(frozen=True)
class ELPVLabel:
    """One row of ``labels.csv``."""

    image: str
    probability: float
    cell_type: str


def parse_labels(path: Path) -> list[ELPVLabel]:
    """Read ELPV's whitespace-separated ``labels.csv``; bad rows raise naming the line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 3:
                raise ValueError
            probability = float(fields[1])
        except ValueError:
            raise DatasetLayoutError(f"elpv: {path} line {number}: expected 'images/cellNNNN.png "
                                     f"<probability> <mono|poly>', got {line!r}") from None
        if not 0.0 <= probability <= 1.0:
            raise DatasetLayoutError(f"elpv: {path} line {number}: probability {probability} "
                                     "is outside [0, 1]")
        rows.append(ELPVLabel(fields[0], probability, fields[2]))
    return rows


def find_labels_csv(raw_dir: Path) -> Path:
    """``labels.csv`` in ``raw_dir``, ``raw_dir/data`` or ``raw_dir/elpv_dataset/data``."""
    for candidate in ("labels.csv", "data/labels.csv", "elpv_dataset/data/labels.csv"):
        if (raw_dir / candidate).is_file():
            return raw_dir / candidate
    raise DatasetLayoutError(f"elpv: expected 'labels.csv' and 'images/' under {raw_dir} (or "
                             f"under its 'data/' or 'elpv_dataset/data/'). "
                             f"Found: {describe_folder(raw_dir)}")


@register_adapter("elpv")
class ELPVAdapter(DatasetAdapter):
    """ELPV (2,624 cells); options ``threshold`` (default 0) and ``by_type`` (default false)."""

    options_accepted: ClassVar[tuple[str, ...]] = ("threshold", "by_type")
    info = DatasetInfo(
        name="elpv",
        title="ELPV",
        domain="industrial",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "solar cell", "mono": "solar cell", "poly": "solar cell"},
        license="CC BY-NC-SA 4.0",
        rehostable=True,
        citation=("Deitsch, Christlein, Berger, Buerhop-Lutz, Maier, Gallwitz, Riess. Automatic "
                  "classification of defective photovoltaic module cells in electroluminescence "
                  "images. Solar Energy 185, 2019. Buerhop-Lutz et al. A Benchmark for Visual "
                  "Identification of Defective Solar Cells in Electroluminescence Imagery. "
                  "EU PVSEC 2018."),
        homepage="https://github.com/zae-bayern/elpv-dataset",
        has_masks=False,
        has_normals=True,
        order=90,
        description="Solar-cell EL images; anomalous iff the defect probability is > 0.",
    )

    def records(self, raw_dir: Path) -> Iterator[RawRecord]:
        raw_dir = Path(raw_dir)
        labels_csv = find_labels_csv(raw_dir)
        root = labels_csv.parent
        try:
            threshold = float(self.options.get("threshold", 0.0))
        except ValueError:
            raise ValueError(f"elpv: option threshold={self.options['threshold']!r} must be a "
                             "number in [0, 1)") from None
        by_type = parse_bool(self.options.get("by_type", False), "by_type", "elpv")
        rows = parse_labels(labels_csv)
        missing = [r.image for r in rows if not (root / r.image).is_file()]
        if missing:
            raise DatasetLayoutError(f"elpv: {len(missing)} images listed in {labels_csv} do "
                                     f"not exist under {root}, e.g. {missing[:5]}")
        for row in rows:
            anomalous = row.probability > threshold
            yield RawRecord(category=row.cell_type if by_type else CATEGORY,
                            label=int(anomalous), split="test", source_path=row.image,
                            image=root / row.image,
                            defect_type=(f"defect_p{round(row.probability * 100)}" if anomalous
                                         else "good"),
                            extra={"cell_type": row.cell_type, "probability": row.probability})
