"""Medical adapters on fixture trees in their download layouts and on the real Kvasir sample."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zsbench.adapters.br35h
import zsbench.adapters.brainmri
import zsbench.adapters.cvc_clinicdb
import zsbench.adapters.cvc_colondb
import zsbench.adapters.endo
import zsbench.adapters.isic
import zsbench.adapters.kvasir
import zsbench.adapters.lag
import zsbench.adapters.msd
import zsbench.adapters.tn3k  # noqa: F401  (importing registers the adapters)
from tests.raw_layouts import medical
from zsbench.adapter import DatasetAdapter, DatasetLayoutError, RawRecord
from zsbench.registry import ADAPTERS

MEDICAL_IDS = ["kvasir", "cvc_colondb", "cvc_clinicdb", "endo", "tn3k", "isic", "brainmri",
               "br35h", "lag", "msd"]


def shared_dir() -> Path:
    return Path(os.environ.get("ZSBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def records_of(name: str, raw_dir: Path, **options) -> list[RawRecord]:
    adapter: DatasetAdapter = ADAPTERS.get(name)(**options)
    return list(adapter.records(raw_dir))


def labels(records: list[RawRecord]) -> tuple[int, int]:
    anomalous = sum(r.label for r in records)
    return anomalous, len(records) - anomalous


def assert_paired_by_stem(records: list[RawRecord], suffix: str = "") -> None:
    for r in records:
        assert isinstance(r.image, Path) and isinstance(r.mask, Path)
        assert r.mask.stem == r.image.stem + suffix, (r.image, r.mask)


@pytest.mark.parametrize("name", MEDICAL_IDS)
def test_info_is_complete(name):
    cls = ADAPTERS.get(name)
    info = cls.info
    assert info.name == name and info.domain == "medical"
    assert len(info.categories) == 1 and set(info.prompt_names) == set(info.categories)
    assert info.title and info.license and info.citation and info.homepage.startswith("http")
    assert info.splits == ("test",)
    if not info.rehostable:
        assert "re-host" in info.description or "re-upload" in info.description


def test_lag_is_not_rehostable_and_msd_is():
    assert ADAPTERS.get("lag").info.rehostable is False
    assert ADAPTERS.get("msd").info.rehostable is True


def test_kvasir_pairs_by_stem_and_warns_about_unpaired(tmp_path, caplog):
    expected = medical.make_kvasir(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = records_of("kvasir", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert sorted(r.image.stem for r in records) == sorted(expected["ids"])
    assert_paired_by_stem(records)
    assert {r.category for r in records} == {"colon"}
    assert {r.defect_type for r in records} == {"polyp"}
    assert {r.extra["mask_threshold"] for r in records} == {127}  # JPEG noise is background
    assert all(r.split == "test" and r.source_path.startswith("Kvasir-SEG/images/")
               for r in records)
    for path in expected["skipped"] + expected["orphan_masks"]:
        assert path in caplog.text


def test_kvasir_strict_raises_on_unpaired(tmp_path):
    medical.make_kvasir(tmp_path)
    with pytest.raises(DatasetLayoutError, match="zzz_no_mask.jpg"):
        records_of("kvasir", tmp_path, strict=True)


def test_kvasir_missing_masks_folder_names_it(tmp_path):
    (tmp_path / "Kvasir-SEG" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        records_of("kvasir", tmp_path)
    message = str(err.value)
    assert "kvasir" in message and "'masks'" in message and "Kvasir-SEG" in message
    assert "images/" in message  # what was found


def test_wrong_folder_names_expected_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetLayoutError, match="'test-image'") as err:
        records_of("tn3k", tmp_path)
    assert "photos/" in str(err.value)


def test_archive_extracted_into_another_folder_name_is_found(tmp_path):
    medical.make_endo(tmp_path / "endo_download_v2")
    records = records_of("endo", tmp_path)
    assert labels(records) == (2, 0)
    assert all(r.source_path.startswith("endo_download_v2/images/") for r in records)


def test_folder_names_match_case_insensitively(tmp_path):
    medical.make_br35h(tmp_path)
    (tmp_path / "yes").rename(tmp_path / "Yes")
    (tmp_path / "no").rename(tmp_path / "NO")
    records = records_of("br35h", tmp_path)
    assert labels(records) == (3, 2)
    assert {r.source_path.split("/")[0] for r in records} == {"Yes", "NO"}


def test_two_candidate_subfolders_are_an_error(tmp_path):
    medical.make_endo(tmp_path / "copy_a")
    medical.make_endo(tmp_path / "copy_b")
    with pytest.raises(DatasetLayoutError, match="copy_a, copy_b"):
        records_of("endo", tmp_path)


def test_missing_raw_folder_is_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does_not_exist"):
        records_of("isic", tmp_path / "does_not_exist")


def test_cvc_colondb_numeric_names_and_rgba(tmp_path):
    expected = medical.make_cvc_colondb(tmp_path)
    records = records_of("cvc_colondb", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert_paired_by_stem(records)
    assert sorted(r.image.name for r in records) == ["1.png", "10.png", "2.png", "3.png"]


@pytest.mark.parametrize("layout", ["original", "kaggle", "pranet"])
def test_cvc_clinicdb_layouts(tmp_path, layout):
    expected = medical.make_cvc_clinicdb(tmp_path, layout)
    records = records_of("cvc_clinicdb", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)  # the Kaggle copy is not counted twice
    assert_paired_by_stem(records)
    suffixes = {r.image.suffix for r in records}
    assert suffixes == ({".tif"} if layout == "original" else {".png"})
    if layout == "original":
        assert {r.mask.parent.name for r in records} == {"Ground Truth"}


def test_endo_upper_case_extension(tmp_path):
    expected = medical.make_endo(tmp_path)
    records = records_of("endo", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert {r.image.suffix for r in records} == {".JPG"}
    assert_paired_by_stem(records)


def test_tn3k_reads_only_the_test_split(tmp_path):
    expected = medical.make_tn3k(tmp_path)
    records = records_of("tn3k", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert all(r.source_path.startswith("Thyroid Dataset/tn3k/test-image/") for r in records)
    assert {r.category for r in records} == {"thyroid"}


def test_isic_masks_have_segmentation_suffix(tmp_path, caplog):
    expected = medical.make_isic(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = records_of("isic", tmp_path)
    assert labels(records) == (expected["anomalous"], 0)
    assert sorted(r.image.stem for r in records) == expected["ids"]
    assert_paired_by_stem(records, suffix="_Segmentation")
    assert "ISIC_0000001_Segmentation.png" in caplog.text


def test_brainmri_reads_one_copy_with_odd_names(tmp_path):
    expected = medical.make_brainmri(tmp_path)
    records = records_of("brainmri", tmp_path)
    assert labels(records) == (expected["anomalous"], expected["normal"])
    assert all(r.source_path.startswith(expected["prefix"]) for r in records)
    assert len({r.source_path for r in records}) == len(records)
    names = {r.image.name for r in records}
    assert {"Y 3.jpeg", "Y2.JPG", "1 no.jpeg", "no 5.png"} <= names
    assert all(r.mask is None for r in records)
    assert {r.defect_type for r in records if r.label == 1} == {"tumor"}
    assert {r.defect_type for r in records if r.label == 0} == {"good"}


def test_brainmri_root_pair_alone_is_accepted(tmp_path):
    medical.make_brainmri(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "brain_tumor_dataset")
    records = records_of("brainmri", tmp_path)
    assert labels(records) == (4, 3)
    assert all(r.source_path.split("/")[0] in ("yes", "no") for r in records)


def test_brainmri_missing_no_folder_names_it(tmp_path):
    (tmp_path / "brain_tumor_dataset" / "yes").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="'no'"):
        records_of("brainmri", tmp_path)


def test_br35h_ignores_pred(tmp_path):
    expected = medical.make_br35h(tmp_path)
    records = records_of("br35h", tmp_path)
    assert labels(records) == (expected["anomalous"], expected["normal"])
    assert not any(r.source_path.startswith("pred/") for r in records)
    assert {r.category for r in records} == {"brain"}


def test_br35h_empty_class_folder_is_an_error(tmp_path):
    (tmp_path / "yes").mkdir()
    (tmp_path / "no").mkdir()
    write = medical.write_image
    write(tmp_path / "yes" / "y0.jpg", (8, 8))
    with pytest.raises(DatasetLayoutError, match="holds no images"):
        records_of("br35h", tmp_path)


@pytest.mark.parametrize("flat", [False, True])
def test_lag_layout_variants_skip_attention_maps(tmp_path, flat):
    expected = medical.make_lag(tmp_path, flat=flat)
    records = records_of("lag", tmp_path)
    assert labels(records) == (expected["anomalous"], expected["normal"])
    assert not any("attention_map" in r.source_path for r in records)
    glaucoma = [r for r in records if r.label == 1]
    assert all(r.source_path.startswith("LAG_database_part_1/suspicious_glaucoma/")
               for r in glaucoma)


def test_lag_wrong_layout_lists_accepted_variants(tmp_path):
    (tmp_path / "glaucoma_images").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        records_of("lag", tmp_path)
    message = str(err.value)
    assert "suspicious_glaucoma/image" in message and "non_glaucoma" in message


# ---- MSD Task06 Lung -------------------------------------------------------------------------

def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L"
        return np.asarray(img)


def test_msd_slices_by_protocol(tmp_path):
    pytest.importorskip("nibabel")
    expected = medical.make_msd(tmp_path)
    records = records_of("msd", tmp_path)
    assert labels(records) == (expected["anomalous"], expected["normal"])
    by_volume: dict[str, dict[int, RawRecord]] = {}
    for r in records:
        by_volume.setdefault(r.extra["volume"], {})[r.extra["z"]] = r
        volume, z = r.source_path.split("#z=")
        assert volume == f"Task06_Lung/imagesTr/{r.extra['volume']}.nii.gz"
        assert z == f"{r.extra['z']:03d}"
    for name, spec in medical.MSD_VOLUMES.items():
        slices = by_volume[name]
        assert sorted(z for z, r in slices.items() if r.label == 1) == spec["tumour_z"]
        assert sorted(z for z, r in slices.items() if r.label == 0) == spec["normal_z"]
    nx, ny = medical.MSD_XY
    x, y = medical.MSD_TUMOUR_VOXEL
    tumour = by_volume["lung_001"][12]
    image, mask = _decode(tumour.image), _decode(tumour.mask)
    assert image.shape == mask.shape == (ny, nx)
    row, col = ny - 1 - y, nx - 1 - x  # radiological view: anterior up, patient right on left
    assert np.argwhere(mask == 255).tolist() == [[row, col]]
    assert set(np.unique(mask)) == {0, 255}
    assert image[row, col] == 255  # 400 HU: top of the lung window
    normal = by_volume["lung_001"][0]
    assert normal.mask is None and normal.defect_type == "good"
    pixels = _decode(normal.image)
    expected_tissue = round((40 + 1000) * 255 / 1400)
    assert (pixels[:, : nx // 2] == expected_tissue).all()  # patient's right half: soft tissue
    assert (pixels[:, nx // 2:] == 0).all()  # -1000 HU air


def test_msd_options_change_the_normal_sample(tmp_path):
    pytest.importorskip("nibabel")
    medical.make_msd(tmp_path)
    records = records_of("msd", tmp_path / "Task06_Lung", normal_stride=1, normal_margin=0)
    depth = sum(v["depth"] for v in medical.MSD_VOLUMES.values())
    assert len(records) == depth  # every slice: tumour ones anomalous, the rest normal
    with pytest.raises(ValueError, match="normal_stride"):
        records_of("msd", tmp_path, normal_stride=0)


def test_msd_shape_mismatch_names_the_label_file(tmp_path):
    pytest.importorskip("nibabel")
    medical.write_nifti(tmp_path / "imagesTr" / "lung_004.nii.gz", np.zeros((4, 4, 3), np.int16))
    medical.write_nifti(tmp_path / "labelsTr" / "lung_004.nii.gz", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"labelsTr/lung_004\.nii\.gz"):
        records_of("msd", tmp_path)


def test_msd_without_nibabel_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr" / "lung_001.nii.gz").write_bytes(b"")
    (tmp_path / "labelsTr" / "lung_001.nii.gz").write_bytes(b"")
    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel":
            raise ImportError("No module named 'nibabel'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(ImportError, match=r'pip install "zsbench\[medical\]"'):
        records_of("msd", tmp_path)


def test_msd_missing_labels_folder_names_it(tmp_path):
    (tmp_path / "Task06_Lung" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="'labelsTr'"):
        records_of("msd", tmp_path)


# ---- real sample ------------------------------------------------------------------------------

def test_real_kvasir_sample():
    root = shared_dir() / "data" / "real" / "kvasir"
    if not (root / "Kvasir-SEG").is_dir():
        pytest.skip(f"real Kvasir-SEG sample not found under {root} (set ZSBENCH_SHARED)")
    records = records_of("kvasir", root)
    assert len(records) == 5
    assert all(r.label == 1 for r in records)
    assert_paired_by_stem(records)
    for r in records:
        assert r.source_path == f"Kvasir-SEG/images/{r.image.name}"
        assert r.mask.parent.name == "masks"
        with Image.open(r.image) as img, Image.open(r.mask) as mask:
            assert img.size == mask.size
            fg = np.asarray(mask.convert("L")) > 127
        assert 0 < fg.mean() < 1
