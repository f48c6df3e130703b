"""Synthetic demo datasets (:mod:`zsbench.synthetic`) in the MVTec AD layout.

``zsbench demo`` writes them with :func:`zsbench.synthetic.write_synthetic_dataset` and prepares
them through this adapter, so the demo exercises the same path as a real download.
"""

from __future__ import annotations

from zsbench.adapter import DatasetInfo
from zsbench.adapters.mvtec import MVTecLayoutAdapter
from zsbench.registry import register_adapter
from zsbench.synthetic import SPECS

_CITATION = "zsbench synthetic data (generated; no publication)"


def _info(name: str, description: str) -> DatasetInfo:
    spec = SPECS[name]
    return DatasetInfo(
        name=name, title=name.replace("_", " ").title(), domain="synthetic",
        categories=spec.categories, prompt_names={c: "object" for c in spec.categories},
        license="CC0-1.0", rehostable=True, citation=_CITATION,
        homepage="https://github.com/zsbench/zsbench", has_masks=True, has_normals=True,
        splits=("train", "test"), description=description,
        order=10 * (1 + sorted(SPECS).index(name)))


@register_adapter("synthetic_a")
class SyntheticA(MVTecLayoutAdapter):
    info = _info("synthetic_a", "Striped, granular and disc-object surfaces with elliptic blobs "
                                "and scratches painted in a contrasting colour.")


@register_adapter("synthetic_b")
class SyntheticB(MVTecLayoutAdapter):
    info = _info("synthetic_b", "Checkerboard, fibre and tablet surfaces with polygons and "
                                "cracks painted in a contrasting colour.")
