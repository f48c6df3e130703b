"""Second-wave adapters (BMAD's six sets, KSDD2, MVTec AD 2, MVTec LOCO, Real-IAD, a user's own
folder) on fixture trees in their download layouts, and the first-wave fixes (sdd's AdaCLIP
split, rsdds in TPS's layout, endo's image folder, dagm without Labels.txt)."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import zsbench.adapters  # noqa: F401  (registers every adapter)
from tests.raw_layouts import industrial, second_wave
from tests.raw_layouts._draw import write_image, write_mask
from zsbench.adapter import AdapterOptionError, DatasetLayoutError, RawRecord
from zsbench.protocols import real_datasets
from zsbench.registry import ADAPTERS

SECOND_WAVE = ("bmad_brats2021", "bmad_liver", "bmad_resc", "bmad_oct2017", "bmad_rsna",
               "bmad_camelyon16", "ksdd2", "mvtec_ad2", "mvtec_loco", "real_iad", "folder")


def records_of(name: str, raw: Path, **options) -> list[RawRecord]:
    return list(ADAPTERS.get(name)(**options).records(raw))


def by_split(recs: list[RawRecord]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in recs:
        block = out.setdefault(r.split, {"normal": 0, "anomalous": 0})
        block["anomalous" if r.label else "normal"] += 1
    return out


@pytest.mark.parametrize("name", SECOND_WAVE)
def test_info_is_complete(name):
    info = ADAPTERS.get(name).info
    assert info.name == name and info.license and info.title
    assert info.domain == ("medical" if name.startswith("bmad") else "industrial")
    assert set(info.prompt_names) == set(info.categories)
    if name != "folder":
        assert info.citation and info.homepage.startswith("https://")
    if "unverified" in info.license or name in ("folder", "real_iad"):
        assert info.rehostable is False


def test_data_list_shows_32_or_more_with_licence_and_domain():
    from zsbench.cli import app

    result = CliRunner().invoke(app, ["data", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) >= 32
    assert {r["name"] for r in rows} >= set(SECOND_WAVE)
    assert all(r["license"] and r["domain"] in ("industrial", "medical", "synthetic")
               for r in rows)


# -- BMAD -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "variant"), [("bmad_brats2021", "brain"),
                                               ("bmad_liver", "liver"), ("bmad_resc", "resc"),
                                               ("bmad_rsna", "chest")])
def test_bmad_layouts(tmp_path, caplog, name, variant):
    expected = second_wave.make_bmad(tmp_path, variant)
    with caplog.at_level(logging.WARNING):
        recs = records_of(name, tmp_path)  # the BMAD root: the set's archive folder is found
    assert by_split(recs) == expected["counts"]
    assert {r.category for r in recs} == set(ADAPTERS.get(name).info.categories)
    with_mask = {r.image.stem for r in recs if r.mask is not None}
    assert with_mask == expected["masked"]
    for r in recs:
        if r.mask is not None:
            assert r.mask.stem == r.image.stem and r.label == 1
        assert (r.defect_type == "good") == (r.label == 0)
        assert r.split in ("train", "valid", "test")
    if variant == "brain":
        assert "test/Ungood/label/orphan.png" in caplog.text  # stray mask named
        assert "test/Ungood/img/test_9.png" in caplog.text  # image without a mask named
        assert all(r.source_path.startswith(("train/", "valid/", "test/")) for r in recs)


def test_bmad_strict_and_wrong_folder(tmp_path):
    second_wave.make_bmad(tmp_path, "brain")
    with pytest.raises(DatasetLayoutError, match="strict=True"):
        records_of("bmad_brats2021", tmp_path, strict="true")
    empty = tmp_path / "nothing"
    (empty / "Brain_AD" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="'test'"):
        records_of("bmad_brats2021", empty)
    liver_only = tmp_path / "liver_only"
    second_wave.make_bmad(liver_only, "liver")
    with pytest.raises(DatasetLayoutError, match="bmad_brats2021"):
        records_of("bmad_brats2021", liver_only)


# -- KSDD2 ----------------------------------------------------------------------------------

def test_ksdd2_labels_from_gt(tmp_path, caplog):
    expected = second_wave.make_ksdd2(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = records_of("ksdd2", tmp_path)
    counts = by_split(recs)
    assert (counts["train"]["anomalous"], counts["train"]["normal"]) == expected["train"]
    assert (counts["test"]["anomalous"], counts["test"]["normal"]) == expected["test"]
    assert {r.image.stem for r in recs if r.label} == expected["defective"]
    assert all(r.mask.name == f"{r.image.stem}_GT.png" for r in recs if r.label)
    assert all(r.mask is None for r in recs if not r.label)
    assert "test/20002.png" in caplog.text
    with pytest.raises(DatasetLayoutError, match="'train'|'test'"):
        records_of("ksdd2", tmp_path / "KolektorSDD2" / "train")


# -- MVTec AD 2 -----------------------------------------------------------------------------

def test_mvtec_ad2_public_test_set(tmp_path, caplog):
    expected = second_wave.make_mvtec_ad2(tmp_path)
    recs = records_of("mvtec_ad2", tmp_path, categories="can,vial")
    per = expected["per_category"]
    for category in expected["categories"]:
        mine = [r for r in recs if r.category == category]
        assert sum(r.split == "train" for r in mine) == per["train"]
        assert sum(r.split == "validation" for r in mine) == per["validation"]
        assert sum(r.split == "test" for r in mine) == per["test"]
        assert sum(r.label for r in mine) == per["anomalous"]
    for r in recs:
        assert "test_private" not in r.source_path
        if r.label:
            assert r.mask.name == f"{r.image.stem}_mask.png" and r.defect_type == "bad"
    no_train = records_of("mvtec_ad2", tmp_path, categories="can", include_train="false")
    assert {r.split for r in no_train} == {"validation", "test"}
    with pytest.raises(DatasetLayoutError, match="fabric"):
        records_of("mvtec_ad2", tmp_path)  # all eight objects by default
    with pytest.raises(DatasetLayoutError, match="unknown categories"):
        records_of("mvtec_ad2", tmp_path, categories="bottle")


# -- MVTec LOCO -----------------------------------------------------------------------------

def test_mvtec_loco_types_kept_and_masks_merged(tmp_path, caplog):
    expected = second_wave.make_mvtec_loco(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = records_of("mvtec_loco", tmp_path, categories="juice_bottle")
    test = [r for r in recs if r.split == "test"]
    assert {r.defect_type for r in test} == {"good", "logical_anomalies", "structural_anomalies"}
    assert by_split(recs) == {"train": {"normal": 1, "anomalous": 0},
                              "validation": {"normal": 1, "anomalous": 0},
                              "test": {"normal": 1, "anomalous": 4}}
    merged = next(r for r in test if r.source_path == "juice_bottle/test/logical_anomalies/000.png")
    assert isinstance(merged.mask, bytes)
    union = np.asarray(Image.open(io.BytesIO(merged.mask))) == 255
    np.testing.assert_array_equal(union, expected["union"]["juice_bottle/logical_anomalies/000"])
    single = next(r for r in test if r.source_path.endswith("logical_anomalies/001.png"))
    assert single.mask.parent.name == "001"  # one region image: the file itself
    missing = next(r for r in test if r.source_path.endswith("structural_anomalies/001.png"))
    assert missing.mask is None and "structural_anomalies/001.png" in caplog.text


def test_mvtec_loco_zero_shot_excludes_logical(tmp_path):
    second_wave.make_mvtec_loco(tmp_path)
    recs = records_of("mvtec_loco", tmp_path, categories="juice_bottle", anomalies="structural")
    types = [r.defect_type for r in recs if r.split == "test"]
    assert sorted(types) == ["good", "structural_anomalies", "structural_anomalies"]
    logical = records_of("mvtec_loco", tmp_path, categories="juice_bottle", anomalies="logical")
    assert {r.defect_type for r in logical if r.label} == {"logical_anomalies"}
    with pytest.raises(AdapterOptionError, match="anomalies='none'"):
        records_of("mvtec_loco", tmp_path, categories="juice_bottle", anomalies="none")
    with pytest.raises(DatasetLayoutError, match="breakfast_box"):
        records_of("mvtec_loco", tmp_path)  # all five categories by default
    shutil.rmtree(tmp_path / "mvtec_loco_anomaly_detection" / "juice_bottle" / "test"
                  / "structural_anomalies")
    with pytest.raises(DatasetLayoutError, match="'structural_anomalies/'"):
        records_of("mvtec_loco", tmp_path, categories="juice_bottle")


# -- Real-IAD -------------------------------------------------------------------------------

@pytest.mark.parametrize("json_layout", ["nested", "flat"])
def test_real_iad_json_splits(tmp_path, json_layout):
    expected = second_wave.make_real_iad(tmp_path, json_layout)
    recs = records_of("real_iad", tmp_path)
    counts = by_split(recs)
    assert counts["train"]["normal"] == expected["train"] and counts["train"]["anomalous"] == 0
    assert sum(counts["test"].values()) == expected["test"]
    assert sum(r.label for r in recs) == expected["anomalous"]
    assert {r.extra["view"] for r in recs} == expected["views"]
    for r in recs:
        assert r.source_path.startswith(f"{r.category}/")
        if r.label:
            assert r.defect_type == "scratch" and r.mask.stem == r.image.stem
            assert r.mask.suffix == ".png"


def test_real_iad_folders_without_split_files_and_errors(tmp_path):
    second_wave.make_real_iad(tmp_path)
    recs = records_of("real_iad", tmp_path, json_set="none", categories="usb")
    assert {r.split for r in recs} == {"test"} and len(recs) == 4
    assert [r.defect_type for r in recs if r.label] == ["scratch"]
    assert all(r.image.suffix == ".jpg" for r in recs)
    with pytest.raises(DatasetLayoutError, match="realiad_jsons_sv/usb.json"):
        records_of("real_iad", tmp_path, json_set="realiad_jsons_sv", categories="usb")
    shutil.copytree(tmp_path / "Real-IAD" / "realiad_256", tmp_path / "Real-IAD" / "realiad_512")
    with pytest.raises(DatasetLayoutError, match="resolution=512"):
        records_of("real_iad", tmp_path)
    assert len(records_of("real_iad", tmp_path, resolution="256")) == 8
    with pytest.raises(DatasetLayoutError, match="realiad_1024"):
        records_of("real_iad", tmp_path / "Real-IAD" / "realiad_jsons")


# -- your own folder ------------------------------------------------------------------------

def test_folder_single_and_categories(tmp_path):
    one = second_wave.make_folder(tmp_path / "my_parts")
    recs = records_of("folder", tmp_path / "my_parts")
    assert {r.category for r in recs} == {"my_parts"}
    assert sum(1 - r.label for r in recs) == one["normal"]
    assert sum(r.label for r in recs) == one["anomalous"]
    assert {r.defect_type for r in recs if r.label} == {"scratch", "dent"}
    paired = [r for r in recs if r.mask is not None]
    assert len(paired) == one["with_mask"]
    assert all(r.mask.stem == r.image.stem and r.defect_type == "scratch" for r in paired)
    many = second_wave.make_folder(tmp_path / "lines", categories=("bolt", "nut_big"))
    recs = records_of("folder", tmp_path / "lines")
    assert sorted({r.category for r in recs}) == many["categories"]
    assert all(r.split == "test" for r in recs)
    (tmp_path / "bad" / "pictures").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="'good/'"):
        records_of("folder", tmp_path / "bad")
    assert "folder" not in real_datasets()  # never a target of 'all'


def test_folder_prepares_and_runs(tmp_path):
    """A user's folder prepares, and ``zsbench run`` evaluates it with the tiny backbone."""
    from zsbench.cli import app

    second_wave.make_folder(tmp_path / "raw" / "widgets")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "prepare", "folder", "--raw", str(tmp_path / "raw"),
                                 "--out", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["run", "-m", "clip", "-p", "none->folder", "--data-dir",
                                 str(tmp_path / "data"), "-o", str(tmp_path / "results"),
                                 "--backbone", "zsbench-tiny", "--pretrained", "none",
                                 "--image-size", "56", "--device", "cpu", "--resolution", "56"])
    assert result.exit_code == 0, result.output
    written = list((tmp_path / "results").rglob("*.json"))
    assert written
    doc = json.loads(written[0].read_text())
    assert doc["dataset"]["name"] == "folder"
    assert doc["counts"]["total"]["images"] == 6 and doc["counts"]["total"]["anomalous"] == 3


# -- first-wave fixes -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 150, 1001])
def test_adaclip_split_equals_sklearn(n):
    sklearn = pytest.importorskip("sklearn.model_selection")
    from zsbench.adapters.sdd import adaclip_normal_train

    items = list(range(n))
    if n < 2:  # sklearn refuses to split one sample; ours sends it to test
        assert adaclip_normal_train(n) == set()
        return
    train, _ = sklearn.train_test_split(items, test_size=0.25, random_state=42)
    assert adaclip_normal_train(n) == set(train)


def test_sdd_three_pieces_follow_adaclip_split(tmp_path):
    sklearn = pytest.importorskip("sklearn.model_selection")
    industrial.make_sdd(tmp_path)
    pieces = records_of("sdd", tmp_path, pieces="3")
    normals = [f"{r.source_path}#{r.extra['piece']}" for r in pieces if r.label == 0]
    assert len(normals) == 15  # 18 pieces, 3 with a defect
    train, test = sklearn.train_test_split(normals, test_size=0.25, random_state=42)
    got_train = {f"{r.source_path}#{r.extra['piece']}" for r in pieces if r.split == "train"}
    assert got_train == set(train) and len(train) == 15 - math.ceil(0.25 * 15)
    assert all(r.split == "test" for r in pieces if r.label == 1)
    assert {f"{r.source_path}#{r.extra['piece']}" for r in pieces
            if r.split == "test" and r.label == 0} == set(test)
    assert all(r.split == "test" for r in records_of("sdd", tmp_path))  # whole images


def test_rsdds_tps_layout(tmp_path, caplog):
    base = tmp_path / "rsdds"
    for i in (1, 2, 3):
        write_image(base / "2D_Image" / "INPUT_IMG" / f"rail_{i}.jpg", (40, 8), "L", seed=i)
    for i in (2, 3, 4):  # rail_1 has no mask: pairing by sorted index would shift every pair
        write_mask(base / "Ground Truth" / f"rail_{i}.png", (40, 8), seed=i)
    with caplog.at_level(logging.WARNING):
        recs = records_of("rsdds", tmp_path)
    assert [r.image.stem for r in recs] == ["rail_2", "rail_3"]
    assert all(r.mask.stem == r.image.stem and r.label == 1 for r in recs)
    assert "rail_1.jpg" in caplog.text and "rail_4.png" in caplog.text
    with pytest.raises(DatasetLayoutError, match="INPUT_IMG|Type-I"):
        records_of("rsdds", tmp_path / "rsdds" / "2D_Image")


def test_endo_image_folder_of_another_name(tmp_path):
    for stem in ("a1", "b2"):
        write_image(tmp_path / "Endo" / "frames" / f"{stem}.jpg", (12, 12), seed=1)
        write_mask(tmp_path / "Endo" / "masks" / f"{stem}.png", (12, 12), seed=2)
    recs = records_of("endo", tmp_path)
    assert sorted(r.image.stem for r in recs) == ["a1", "b2"]
    assert all(r.image.parent.name == "frames" and r.mask.stem == r.image.stem for r in recs)
    (tmp_path / "Endo" / "images").mkdir()
    write_image(tmp_path / "Endo" / "images" / "a1.jpg", (12, 12), seed=3)
    assert [r.image.parent.name for r in records_of("endo", tmp_path)] == ["images"]


def test_dagm_labels_from_masks_without_labels_txt(tmp_path, caplog):
    industrial.make_dagm(tmp_path)
    with_txt = records_of("dagm", tmp_path, categories="Class1,Class2")
    for labels in tmp_path.rglob("Labels.txt"):
        labels.unlink()
    without = records_of("dagm", tmp_path, categories="Class1,Class2")
    key = lambda r: r.source_path  # noqa: E731
    assert sorted((r.source_path, r.label, r.split, r.mask.name if r.mask else None)
                  for r in without) == sorted(
        (r.source_path, r.label, r.split, r.mask.name if r.mask else None) for r in with_txt)
    assert sum(r.label for r in without) == 8 and len(sorted(without, key=key)) == 16


# -- pinned revisions, source checksum, verify --------------------------------------------------

def test_hub_source_pinned_to_a_revision(monkeypatch):
    import datasets

    from zsbench import data

    assert data.parse_pinned_source("org/zs:mvtec@3f2a9c1") == ("org/zs", "mvtec", "3f2a9c1")
    assert data.parse_pinned_source("org/zs@v1.0") == ("org/zs", None, "v1.0")
    assert data.parse_hub_source("org/zs:visa@abc") == ("org/zs", "visa")
    assert data.resolve_source("org/zs:mvtec@3f2a9c1") == "org/zs:mvtec@3f2a9c1"
    seen = {}

    def fake_load(repo, config, **kwargs):
        seen.update(repo=repo, config=config, revision=kwargs["revision"])
        return "dataset"

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert data.load("org/zs:mvtec@3f2a9c1") == "dataset"
    assert seen == {"repo": "org/zs", "config": "mvtec", "revision": "3f2a9c1"}
    data.load("org/zs:mvtec", revision="feed")
    assert seen["revision"] == "feed"
    with pytest.raises(data.DataSourceError, match="pinned to '3f2a9c1'"):
        data.load("org/zs:mvtec@3f2a9c1", revision="other")

    class Api:
        def dataset_info(self, repo, revision=None):
            seen["info"] = (repo, revision)
            return type("Info", (), {"sha": "3f2a9c1d" * 5})()

    assert data.dataset_fingerprint("org/zs:mvtec@3f2a9c1", api=Api()) == f"org/zs@{'3f2a9c1d' * 5}"
    assert seen["info"] == ("org/zs", "3f2a9c1")


def test_prepare_records_checksums_and_verify_detects_changes(tmp_path):
    from zsbench.cli import app
    from zsbench.dataset_card import read_card_file
    from zsbench.prepare import prepare, source_checksum

    raw = tmp_path / "raw" / "widgets"
    second_wave.make_folder(raw)
    target = prepare("folder", raw.parent, tmp_path / "data", workers=1)
    block = read_card_file(target / "README.md")["zsbench"]
    assert block["source_sha256"] == source_checksum(raw.parent)
    shards = sorted(p.relative_to(target).as_posix() for p in (target / "data").glob("*.parquet"))
    assert sorted(block["shard_sha256"]) == shards
    # a re-download that differs in one byte, with new times on every file
    copy = tmp_path / "redownload"
    shutil.copytree(raw.parent, copy)
    assert source_checksum(copy) == source_checksum(raw.parent)  # times do not count
    image = copy / "widgets" / "good" / "ok_0.png"
    image.write_bytes(image.read_bytes() + b"\0")
    assert source_checksum(copy) != source_checksum(raw.parent)
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "verify", str(target), "--raw", str(raw.parent)])
    assert ok.exit_code == 0 and "the raw source matches" in ok.output, ok.output
    bad = runner.invoke(app, ["data", "verify", str(target), "--raw", str(copy)])
    assert bad.exit_code == 1 and "differs from the one it was built from" in bad.output
    logger = logging.getLogger("zsbench.prepare")
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    seen: list[str] = []
    logger.addHandler(handler)
    try:
        prepare("folder", copy, tmp_path / "data", overwrite=True, workers=1)
    finally:
        logger.removeHandler(handler)
    assert any("differ from those" in message for message in seen), seen

    shard = target / shards[0]
    shard.write_bytes(shard.read_bytes() + b"x")
    broken = runner.invoke(app, ["data", "verify", str(target)])
    assert broken.exit_code == 1 and f"shard {shards[0]} differs" in " ".join(broken.output.split())
    missing = runner.invoke(app, ["data", "verify", str(tmp_path)])
    assert missing.exit_code == 1 and "README.md" in missing.output
