"""Surface-inspection adapters (SD-saliency-900, RSDDs, AITEX) on fixture trees, and one
end-to-end preparation of a fixture dataset."""

from __future__ import annotations

import importlib.util
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zsbench.adapters.aitex
import zsbench.adapters.rsdds
import zsbench.adapters.sd_saliency_900  # noqa: F401  (importing registers the adapters)
from tests.raw_layouts import surface
from zsbench.adapter import DatasetLayoutError, RawRecord
from zsbench.registry import ADAPTERS

SURFACE_IDS = ["sd_saliency_900", "rsdds", "aitex"]


def records_of(name: str, raw_dir: Path, **options) -> list[RawRecord]:
    return list(ADAPTERS.get(name)(**options).records(raw_dir))


def labels(records: list[RawRecord]) -> tuple[int, int]:
    anomalous = sum(r.label for r in records)
    return anomalous, len(records) - anomalous


@pytest.mark.parametrize("name", SURFACE_IDS)
def test_info_is_complete(name):
    info = ADAPTERS.get(name).info
    assert info.name == name and info.domain == "industrial"
    assert len(info.categories) == 1 and set(info.prompt_names) == set(info.categories)
    assert info.title and info.license and info.citation and info.homepage.startswith("http")
    assert info.has_masks
    assert info.has_normals == (name == "aitex")
    assert info.rehostable is False and "re-host" in info.description


def test_sd_saliency_900_defect_types_from_prefix(tmp_path, caplog):
    expected = surface.make_sd_saliency_900(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = records_of("sd_saliency_900", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert {r.image.stem: r.defect_type for r in records} == expected["defect_types"]
    for r in records:
        assert r.mask.stem == r.image.stem and r.image.suffix == ".bmp"
        assert r.source_path == f"SD-saliency-900/Source Images/{r.image.name}"
    assert {r.category for r in records} == {"iron"}
    assert "Ground truth/In_0.png" in caplog.text


def test_sd_saliency_900_wrong_folder(tmp_path):
    (tmp_path / "SD-saliency-900" / "Source Images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="'Ground truth'"):
        records_of("sd_saliency_900", tmp_path)


@pytest.mark.parametrize("folder", ["images", "Rail surface images"])
def test_rsdds_both_parts(tmp_path, folder):
    expected = surface.make_rsdds(tmp_path, image_folder_type2=folder)
    records = records_of("rsdds", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    per_type: dict[str, int] = {}
    for r in records:
        per_type[r.extra["rail_type"]] = per_type.get(r.extra["rail_type"], 0) + 1
        assert r.mask.stem == r.image.stem and r.mask.parent.name == "GroundTruth"
        assert r.image.parent.parent.name.startswith(r.extra["rail_type"] + " ")
    assert per_type == expected["per_type"]
    assert {r.category for r in records} == {"rail"}


def test_rsdds_missing_type_ii_names_it(tmp_path):
    surface.make_rsdds(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "Type-II RSDDs dataset")
    with pytest.raises(DatasetLayoutError, match="Type-II RSDDs dataset"):
        records_of("rsdds", tmp_path)


def test_aitex_records(tmp_path, caplog):
    expected = surface.make_aitex(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = records_of("aitex", tmp_path)
    assert labels(records) == (expected["anomalous"], expected["normal"])
    defects = {r.image.stem: r for r in records if r.label == 1}
    assert {stem: r.defect_type for stem, r in defects.items()} == expected["defect_types"]
    assert defects["0094_027_05"].extra["fabric"] == "05"
    for path in expected["skipped"] + expected["orphan_masks"]:
        assert path in caplog.text

    single = defects["0001_002_00"]
    assert isinstance(single.mask, Path) and single.mask.name == "0001_002_00_mask.png"
    merged = defects[expected["merged_stem"]]
    assert isinstance(merged.mask, bytes)
    with Image.open(io.BytesIO(merged.mask)) as img:
        assert img.format == "PNG" and img.mode == "L"
        array = np.asarray(img)
    assert set(np.unique(array)) == {0, 255}
    np.testing.assert_array_equal(array == 255, expected["merged_mask"])

    normals = [r for r in records if r.label == 0]
    per_roll: dict[str, int] = {}
    for r in normals:
        assert r.mask is None and r.defect_type == "good"
        assert r.source_path.startswith(f"NODefect_images/{r.extra['roll']}/")
        per_roll[r.extra["roll"]] = per_roll.get(r.extra["roll"], 0) + 1
    assert per_roll == expected["rolls"]
    assert {r.category for r in records} == {"fabric"}


def test_aitex_missing_nodefect_folder_names_it(tmp_path):
    surface.make_aitex(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "NODefect_images")
    with pytest.raises(DatasetLayoutError, match="'NODefect_images'"):
        records_of("aitex", tmp_path)


def test_aitex_masks_of_different_sizes_are_an_error(tmp_path):
    surface.make_aitex(tmp_path)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(
        tmp_path / "Mask_images" / "0094_027_05_mask3.png")
    with pytest.raises(DatasetLayoutError, match="0094_027_05_mask3.png"):
        records_of("aitex", tmp_path)


def test_prepare_aitex_end_to_end(tmp_path):
    if importlib.util.find_spec("zsbench.prepare") is None:
        pytest.skip("zsbench.prepare does not exist yet (written by another developer)")
    from zsbench import prepare as prepare_module

    if not hasattr(prepare_module, "prepare"):
        pytest.skip("zsbench.prepare has no prepare() yet")
    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    expected = surface.make_aitex(raw)
    out = tmp_path / "prepared"
    prepare_module.prepare("aitex", raw, out)
    shards = sorted(out.rglob("*.parquet"))
    assert shards, f"no Parquet shards written under {out}"
    table = pq.read_table(shards[0].parent)
    assert table.num_rows == expected["anomalous"] + expected["normal"]
    assert sum(table.column("label").to_pylist()) == expected["anomalous"]
    assert set(table.column("category").to_pylist()) == {"fabric"}
