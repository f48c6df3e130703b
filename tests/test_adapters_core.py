"""The nine core adapters on small trees in their original layouts (tests/raw_layouts)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.raw_layouts import classification, industrial
from zsbench.adapter import DatasetAdapter, DatasetLayoutError, RawRecord
from zsbench.registry import ADAPTERS

CORE = ("mvtec", "mpdd", "dtd_synthetic", "btad", "visa", "dagm", "sdd", "elpv", "headct")


def records(name: str, raw: Path, **options) -> list[RawRecord]:
    return list(ADAPTERS.get(name)(**options).records(raw))


def summary(recs: list[RawRecord]) -> dict:
    return {"train": sum(r.split == "train" for r in recs),
            "test": sum(r.split == "test" for r in recs),
            "anomalous": sum(r.label == 1 for r in recs),
            "with_mask": sum(r.mask is not None for r in recs)}


def mask_of(record: RawRecord) -> np.ndarray:
    return np.asarray(Image.open(record.mask).convert("L")) != 0


def test_every_core_adapter_is_registered_with_full_info():
    import zsbench.adapters as package

    assert not set(CORE) & set(package.FAILED_IMPORTS), package.FAILED_IMPORTS
    for name in CORE:
        cls = ADAPTERS.get(name)
        assert issubclass(cls, DatasetAdapter)
        info = cls.info
        assert info.name == name and info.categories and info.license and info.citation
        assert set(info.categories) <= set(info.prompt_names)
        assert info.domain in ("industrial", "medical")


def test_mvtec_counts_and_pairs_masks_by_stem(tmp_path):
    counts = industrial.make_mvtec(tmp_path)
    recs = records("mvtec", tmp_path)
    assert summary(recs) == {k: counts[k] for k in ("train", "test", "anomalous", "with_mask")}
    assert sorted({r.category for r in recs}) == sorted(industrial.MVTEC_CATEGORIES)
    by_source = {r.source_path: r for r in recs}
    # a.png / a_b.png: their masks sort the other way round; pairing must follow the stem
    for source, seed in counts["mask_seeds"].items():
        expected = industrial.mask_array(industrial.SIZE, seed=seed) != 0
        assert np.array_equal(mask_of(by_source[source]), expected), source
    assert by_source["bottle/test/crack/crack 1.png"].defect_type == "crack"
    normal = by_source["bottle/test/good/000.png"]
    assert normal.label == 0 and normal.mask is None and normal.defect_type == "good"
    assert by_source["bottle/train/good/000.png"].split == "train"


def test_mvtec_subset_train_option_and_missing_categories(tmp_path):
    industrial.make_mvtec_layout(tmp_path, categories=("bottle", "wood"))
    with pytest.raises(DatasetLayoutError, match=r"categories \[.*'cable'.*\].*categories=a,b"):
        records("mvtec", tmp_path)
    recs = records("mvtec", tmp_path, categories="bottle,wood", include_train="false")
    assert {r.category for r in recs} == {"bottle", "wood"}
    assert all(r.split == "test" for r in recs)
    with pytest.raises(DatasetLayoutError, match="unknown categories \\['glass'\\]"):
        records("mvtec", tmp_path, categories="glass")


def test_mvtec_wrong_folder_names_what_was_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"mvtec: expected the folder 'bottle/test'.*"
                                                 r"Found: .*photos/"):
        records("mvtec", tmp_path)


def test_mvtec_warns_about_missing_and_stray_masks(tmp_path, caplog):
    industrial.make_mvtec(tmp_path)
    without, stray = industrial.break_mvtec_masks(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = records("mvtec", tmp_path)
    text = caplog.text
    assert "anomalous images without a mask" in text and without in text
    assert "masks without an image" in text and stray in text
    broken = next(r for r in recs if r.source_path == without)
    assert broken.label == 1 and broken.mask is None


def test_mvtec_layout_finds_a_wrapper_folder(tmp_path):
    industrial.make_mvtec(tmp_path / "mvtec_anomaly_detection")
    recs = records("mvtec", tmp_path)
    assert recs[0].source_path.startswith("bottle/")


@pytest.mark.parametrize("name, categories", [
    ("mpdd", ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
              "tubes")),
    ("dtd_synthetic", ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114",
                       "Perforated_037", "Stratified_154", "Woven_001", "Woven_068", "Woven_104",
                       "Woven_125", "Woven_127")),
])
def test_mvtec_layout_subclasses(tmp_path, name, categories):
    counts = industrial.make_mvtec_layout(tmp_path, categories=categories, defect="hole")
    recs = records(name, tmp_path)
    assert summary(recs)["with_mask"] == counts["with_mask"]
    assert sorted({r.category for r in recs}) == sorted(categories)
    assert {r.defect_type for r in recs if r.label} == {"hole"}


def test_discovering_categories_from_folders(tmp_path):
    from zsbench.adapter import DatasetInfo
    from zsbench.adapters.mvtec import MVTecLayoutAdapter

    class Discovered(MVTecLayoutAdapter):
        discover_categories = True
        info = DatasetInfo(name="disc", title="disc", domain="synthetic", categories=(),
                           prompt_names={}, license="CC0", rehostable=True, citation="-",
                           homepage="-", has_masks=True, has_normals=True)

    industrial.make_mvtec_layout(tmp_path / "wrap", categories=("zeta", "alpha"))
    recs = list(Discovered().records(tmp_path))
    assert sorted({r.category for r in recs}) == ["alpha", "zeta"]
    assert summary(recs)["with_mask"] == 5


def test_btad_ok_ko_layout_with_bmp_and_png(tmp_path):
    counts = industrial.make_btad(tmp_path)
    recs = records("btad", tmp_path)
    assert summary(recs) == {k: counts[k] for k in ("train", "test", "anomalous", "with_mask")}
    by_source = {r.source_path: r for r in recs}
    for source, seed in counts["mask_seeds"].items():
        assert np.array_equal(mask_of(by_source[source]),
                              industrial.mask_array(industrial.SIZE, seed=seed) != 0)
    assert {Path(r.mask).suffix for r in recs if r.mask} == {".png", ".bmp"}
    assert {r.defect_type for r in recs if r.label} == {"ko"}


def test_visa_split_csv_and_id_masks(tmp_path, caplog):
    counts = industrial.make_visa(tmp_path)
    recs = records("visa", tmp_path)
    assert summary(recs) == {k: counts[k] for k in ("train", "test", "anomalous", "with_mask")}
    by_source = {r.source_path: r for r in recs}
    for source, seed in counts["mask_seeds"].items():
        assert np.array_equal(mask_of(by_source[source]),
                              industrial.mask_array(industrial.SIZE, seed=seed) != 0)
    assert by_source["candle/Data/Images/Anomaly/000.JPG"].defect_type == "scratch"
    assert by_source["pcb1/Data/Images/Anomaly/000.JPG"].defect_type == "anomaly"
    (tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png").rename(
        tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "extra.png")
    with caplog.at_level(logging.WARNING):
        records("visa", tmp_path)
    assert "pcb1/Data/Images/Anomaly/001.JPG" in caplog.text
    assert "pcb1/Data/Masks/Anomaly/extra.png" in caplog.text


def test_visa_errors_name_the_split_file_and_missing_images(tmp_path):
    industrial.make_visa(tmp_path)
    (tmp_path / "candle" / "Data" / "Images" / "Normal" / "0000.JPG").unlink()
    with pytest.raises(DatasetLayoutError, match="candle/Data/Images/Normal/0000.JPG"):
        records("visa", tmp_path)
    (tmp_path / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetLayoutError, match="split_csv/1cls.csv"):
        records("visa", tmp_path)


def test_dagm_labels_txt_crlf_and_split_folders(tmp_path, caplog):
    counts = industrial.make_dagm(tmp_path)
    recs = records("dagm", tmp_path, categories="Class1,Class2")
    assert summary(recs) == {k: counts[k] for k in ("train", "test", "anomalous", "with_mask")}
    by_source = {r.source_path: r for r in recs}
    for source, seed in counts["mask_seeds"].items():
        assert np.array_equal(mask_of(by_source[source]),
                              industrial.mask_array(industrial.SIZE, seed=seed) != 0)
    assert by_source["Class1/Train/0001.PNG"].label == 0
    label_dir = tmp_path / "DAGM_KaggleUpload" / "Class2" / "Test" / "Label"
    (label_dir / "0002_label.PNG").rename(label_dir / "0009_label.PNG")
    with caplog.at_level(logging.WARNING):
        records("dagm", tmp_path, categories="Class2")
    assert "Class2/Test/0002.PNG" in caplog.text
    assert "Class2/Test/Label/0009_label.PNG" in caplog.text
    with pytest.raises(DatasetLayoutError, match="Class3"):
        records("dagm", tmp_path)  # all ten classes by default


def test_sdd_whole_images_and_three_pieces(tmp_path):
    counts = industrial.make_sdd(tmp_path)
    recs = records("sdd", tmp_path)
    assert summary(recs) == {"train": 0, "test": 6, "anomalous": 2, "with_mask": 2}
    pieces = records("sdd", tmp_path, pieces="3")
    assert len(pieces) == 18
    anomalous = {(r.source_path, r.extra["piece"]) for r in pieces if r.label == 1}
    # rows 70..79 of 90 -> last third only; rows 25..34 cross the first/second boundary (30)
    assert anomalous == {("kos01/Part1.jpg", 2), ("kos02/Part0.jpg", 0), ("kos02/Part0.jpg", 1)}
    assert all(r.extra["crop"][3] - r.extra["crop"][1] == 30 for r in pieces)
    assert set(counts["defect_rows"]) == {s for s, _ in anomalous}
    with pytest.raises(ValueError, match="pieces='2'"):
        records("sdd", tmp_path, pieces="2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="kosNN"):
        records("sdd", empty)


def test_elpv_labels_threshold_and_package_layout(tmp_path):
    counts = classification.make_elpv(tmp_path / "flat")
    recs = records("elpv", tmp_path / "flat")
    assert summary(recs) == {"train": 0, "test": 6, "anomalous": counts["anomalous"],
                             "with_mask": 0}
    assert {r.defect_type for r in recs} == {"good", "defect_p33", "defect_p67", "defect_p100"}
    strict = records("elpv", tmp_path / "flat", threshold="0.5")
    assert sum(r.label for r in strict) == 2
    classification.make_elpv(tmp_path / "pkg", package_layout=True)
    typed = records("elpv", tmp_path / "pkg", by_type="true")
    assert sum(r.category == "mono" for r in typed) == counts["mono"]
    with pytest.raises(DatasetLayoutError, match="labels.csv"):
        records("elpv", tmp_path / "pkg" / "elpv_dataset" / "data" / "images")


@pytest.mark.parametrize("inside", [False, True])
def test_headct_labels_beside_or_inside(tmp_path, inside):
    counts = classification.make_headct(tmp_path, labels_inside=inside)
    recs = records("headct", tmp_path)
    assert summary(recs) == {"train": 0, "test": counts["test"],
                             "anomalous": counts["anomalous"], "with_mask": 0}
    assert recs[0].source_path == "head_ct/000.png" and recs[0].defect_type == "hemorrhage"
    assert {r.defect_type for r in recs if r.label == 0} == {"good"}


def test_headct_wrong_folder_and_missing_image(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected 'head_ct/NNN.png' and 'labels.csv'"):
        records("headct", tmp_path)
    classification.make_headct(tmp_path)
    (tmp_path / "head_ct" / "004.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"\[4\]"):
        records("headct", tmp_path)
