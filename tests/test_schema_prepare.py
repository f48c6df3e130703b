"""Unified schema, validator, prepare (encoding, shards, card, idempotence, atomicity), load."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.raw_layouts import classification, industrial
from zsbench.data import (
    DataSourceError,
    dataset_fingerprint,
    dataset_info,
    load,
    read_card,
    resolve_source,
)
from zsbench.meta_json import export_meta, import_meta, read_meta
from zsbench.prepare import (
    PrepareError,
    is_prepared,
    mask_png,
    normalise_mask,
    prepare,
)
from zsbench.schema import (
    COLUMNS,
    SchemaError,
    arrow_schema,
    features,
    make_sample_id,
    validate_prepared,
    validate_record,
)

datasets.disable_progress_bars()


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def good_record(**changes) -> dict:
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 255
    record = {
        "image": {"bytes": png(np.full((6, 8, 3), 90, np.uint8)), "path": "x/a.png"},
        "mask": {"bytes": png(mask), "path": "x/a_mask.png"},
        "label": 1, "dataset": "toy", "category": "cat", "prompt_name": "cat",
        "defect_type": "scratch", "split": "test", "sample_id": "abc", "source_path": "x/a.png",
        "has_mask": True, "width": 8, "height": 6,
    }
    record.update(changes)
    return record


def test_features_match_the_unified_record():
    feats = features()
    assert tuple(feats) == COLUMNS
    assert isinstance(feats["image"], datasets.Image) and isinstance(feats["mask"], datasets.Image)
    assert feats["label"].names == ["normal", "anomaly"]
    assert feats["width"].dtype == "int32" and feats["has_mask"].dtype == "bool"
    meta = json.loads(arrow_schema().metadata[b"huggingface"])
    assert meta["info"]["features"]["label"]["names"] == ["normal", "anomaly"]


@pytest.mark.parametrize("changes, message", [
    ({"label": 2}, "label must be 0"),
    ({"label": 0, "defect_type": "scratch", "mask": None, "has_mask": False}, "defect_type 'good'"),
    ({"defect_type": "good"}, "cannot have defect_type 'good'"),
    ({"has_mask": False}, "has_mask=False"),
    ({"width": 9}, "9x6 != image size 8x6"),
    ({"mask": {"bytes": png(np.zeros((5, 8), np.uint8)), "path": None}}, "mask size 8x5"),
    ({"split": "Test set"}, "split 'Test set'"),
    ({"category": ""}, "'category' must be a non-empty string"),
    ({"label": 0, "defect_type": "good"}, "normal images carry no mask"),
])
def test_validator_rejects_broken_records(changes, message):
    validate_record(good_record())
    with pytest.raises(SchemaError, match=message):
        validate_record(good_record(**changes))


def test_validator_checks_mask_values_when_asked():
    grey = np.zeros((6, 8), np.uint8)
    grey[0, 0] = 128
    record = good_record(mask={"bytes": png(grey), "path": None})
    validate_record(record)
    with pytest.raises(SchemaError, match="0/255"):
        validate_record(record, check_pixels=True)


def test_sample_id_is_stable_and_separates_pieces():
    a = make_sample_id("sdd", "kos01/Part0.jpg")
    assert a == make_sample_id("sdd", "kos01/Part0.jpg") and len(a) == 16
    ids = {a, make_sample_id("sdd", "kos01/Part0.jpg", 0),
           make_sample_id("sdd", "kos01/Part0.jpg", 1), make_sample_id("mvtec", "kos01/Part0.jpg")}
    assert len(ids) == 4


def test_mask_normalisation_rules(tmp_path):
    ids = np.zeros((4, 4), np.uint8)
    ids[0, 0], ids[1, 1] = 1, 3  # VisA defect ids
    Image.fromarray(ids).save(tmp_path / "ids.png")
    assert normalise_mask(tmp_path / "ids.png").sum() == 2
    noisy = np.zeros((16, 16, 3), np.uint8)
    noisy[:8] = 250
    Image.fromarray(noisy).save(tmp_path / "m.jpg", quality=60)
    mask = normalise_mask(tmp_path / "m.jpg")  # JPEG: > 127
    assert mask[:6].all() and not mask[10:].any()
    encoded = Image.open(io.BytesIO(mask_png(mask)))
    assert encoded.mode == "L" and set(np.unique(np.asarray(encoded))) == {0, 255}


def test_round_trip_keeps_bytes_and_pairs_masks(tmp_path):
    counts = industrial.make_btad(tmp_path / "raw")
    out = prepare("btad", tmp_path / "raw", tmp_path / "out")
    assert validate_prepared(out, check_pixels=True) == counts["train"] + counts["test"]
    ds = load(out, split="test", decode=False)
    root = tmp_path / "raw" / "BTech_Dataset_transformed"
    assert len(ds) == counts["test"]
    for row in ds:
        original = root / row["source_path"]
        if original.suffix == ".png":
            assert row["image"]["bytes"] == original.read_bytes()
        else:  # BMP re-encoded to PNG without loss
            assert row["image"]["bytes"][:4] == b"\x89PNG"
            stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
            assert np.array_equal(stored, np.asarray(Image.open(original)))
        if row["label"] == 1:
            seed = counts["mask_seeds"][row["source_path"]]
            expected = industrial.mask_array(industrial.SIZE, seed=seed)
            got = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"])))
            assert np.array_equal(got, expected)
        else:
            assert row["mask"] is None and not row["has_mask"]


def test_load_decodes_filters_and_streams(tmp_path):
    industrial.make_btad(tmp_path / "raw")
    out = prepare("btad", tmp_path / "raw", tmp_path / "out")
    ds = load(out, categories=["02"])
    assert set(ds["category"]) == {"02"} and len(ds) == 3
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (32, 24)
    raw = ds.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"][:4] == b"\x89PNG"
    assert len(load(out, split="train")) == 6
    stream = load(out, streaming=True, categories=["01", "03"], decode=False)
    rows = list(stream)
    assert {r["category"] for r in rows} == {"01", "03"} and len(rows) == 6
    with pytest.raises(DataSourceError, match="unknown categories \\['9'\\]"):
        load(out, categories=["9"])
    with pytest.raises(DataSourceError, match="no 'val' split; available splits: test, train"):
        load(out, split="val")


def test_prepare_is_idempotent_and_refuses_other_inputs(tmp_path):
    classification.make_headct(tmp_path / "raw")
    out = prepare("headct", tmp_path / "raw", tmp_path / "out")
    shard = next((out / "data").glob("*.parquet"))
    stamp = shard.stat().st_mtime_ns
    assert is_prepared("headct", tmp_path / "raw", tmp_path / "out")
    assert prepare("headct", tmp_path / "raw", tmp_path / "out") == out
    assert shard.stat().st_mtime_ns == stamp  # skipped, not rewritten
    classification.make_headct(tmp_path / "raw", n=12)  # the download changed
    assert not is_prepared("headct", tmp_path / "raw", tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare("headct", tmp_path / "raw", tmp_path / "out")
    prepare("headct", tmp_path / "raw", tmp_path / "out", overwrite=True)
    assert dataset_info(out)["splits"]["test"]["n"] == 12


def test_failed_prepare_leaves_nothing_behind(tmp_path):
    classification.make_headct(tmp_path / "raw")
    (tmp_path / "raw" / "head_ct" / "003.png").write_bytes(b"not an image")
    with pytest.raises(PrepareError, match="003.png"):
        prepare("headct", tmp_path / "raw", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no half-written folder, no staging


def test_shards_card_fingerprint_and_progress(tmp_path):
    classification.make_elpv(tmp_path / "raw")
    seen = []
    out = prepare("elpv", tmp_path / "raw", tmp_path / "out", max_shard_bytes=1500,
                  progress=lambda done, total: seen.append((done, total)))
    shards = sorted(p.name for p in (out / "data").glob("*.parquet"))
    assert len(shards) > 1 and shards[0] == f"test-00000-of-{len(shards):05d}.parquet"
    assert seen[-1] == (6, 6) and len(seen) == 6
    assert len(load(out)) == 6
    assert pq.ParquetFile(out / "data" / shards[0]).schema_arrow.metadata[b"huggingface"]
    card = read_card(out)
    assert card["license"] == "cc-by-nc-sa-4.0"
    assert card["configs"][0]["data_files"] == [{"split": "test", "path": "data/test-*.parquet"}]
    assert card["zsbench"]["counts"]["test"]["anomalous"] == 3
    assert "## Citation" in card["body"] and "Deitsch" in card["body"]
    first = dataset_fingerprint(out)
    assert first.startswith("sha256:") and first == dataset_fingerprint(out)
    (out / "data" / shards[0]).write_bytes(b"changed")
    assert dataset_fingerprint(out) != first


def test_resolve_source(tmp_path):
    classification.make_headct(tmp_path / "raw")
    prepare("headct", tmp_path / "raw", tmp_path / "data")
    assert resolve_source("headct", tmp_path / "data") == str(tmp_path / "data" / "headct")
    assert resolve_source(tmp_path / "data" / "headct") == str(tmp_path / "data" / "headct")
    assert resolve_source("my-org/zsbench:mvtec", tmp_path / "data") == "my-org/zsbench:mvtec"
    with pytest.raises(DataSourceError, match="holds: headct"):
        resolve_source("mvtec", tmp_path / "data")


def test_meta_json_export_and_import_round_trip(tmp_path):
    counts = industrial.make_mvtec(tmp_path / "raw")
    out = prepare("mvtec", tmp_path / "raw", tmp_path / "out", adapter_options={
        "categories": "bottle,cable"})
    meta_file = export_meta(out, tmp_path / "meta.json")
    meta = read_meta(meta_file)
    entry = next(e for e in meta["test"]["bottle"] if e["img_path"].endswith("/a_b.png"))
    assert entry == {"img_path": "bottle/test/crack/a_b.png",
                     "mask_path": "bottle/ground_truth/crack/a_b_mask.png",
                     "cls_name": "bottle", "specie_name": "crack", "anomaly": 1}
    assert len(meta["train"]["cable"]) == 1
    back = import_meta(meta_file, tmp_path / "raw", "mvtec_copy", tmp_path / "out")
    assert dataset_info(back)["splits"] == dataset_info(out)["splits"]
    original = {r["source_path"]: r for r in load(out, decode=False)}
    for row in load(back, decode=False):
        assert row["image"]["bytes"] == original[row["source_path"]]["image"]["bytes"]
        assert (row["mask"] or {}).get("bytes") == (original[row["source_path"]]["mask"]
                                                    or {}).get("bytes")
    assert counts["mask_seeds"]


def test_meta_json_materialize_writes_pieces(tmp_path):
    industrial.make_sdd(tmp_path / "raw")
    out = prepare("sdd", tmp_path / "raw", tmp_path / "out", adapter_options={"pieces": "3"})
    with pytest.raises(ValueError, match="materialize"):
        export_meta(out, tmp_path / "meta.json")
    meta = read_meta(export_meta(out, tmp_path / "meta.json", tmp_path / "files"))
    # pieces=3 follows AdaCLIP's split: 11 normal pieces in train, 4 normal + 3 defective in test
    entries = meta["test"]["electrical_commutators"] + meta["train"]["electrical_commutators"]
    assert len(meta["test"]["electrical_commutators"]) == 7
    assert len(entries) == 18 and len({e["img_path"] for e in entries}) == 18
    for e in entries:
        image = Image.open(tmp_path / "files" / e["img_path"])
        assert image.size == (30, 30)
        if e["anomaly"]:
            mask = np.asarray(Image.open(tmp_path / "files" / e["mask_path"]))
            assert mask.shape == (30, 30) and mask.max() == 255
