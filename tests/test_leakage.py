"""The leakage ledger flags results that are not zero-shot."""

from __future__ import annotations

import pytest

from zsbench.leakage import DataUse, leakage_ledger, normalise_name

MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
         "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
        "pcb2", "pcb3", "pcb4", "pipe_fryum")


def test_mvtec_to_mvtec_is_flagged():
    report = leakage_ledger("mvtec", MVTEC, [DataUse("mvtec", MVTEC)])
    assert report.zero_shot is False
    assert report.to_dict()["label"] == "not zero-shot"
    assert report.flags[0]["kind"] == "same_dataset"


def test_visa_to_mvtec_is_zero_shot():
    report = leakage_ledger("mvtec", MVTEC, [DataUse("visa", VISA)])
    assert report.zero_shot is True
    assert report.flags == []
    assert report.to_dict()["auxiliary"][0]["dataset"] == "visa"


def test_shared_categories_across_datasets_and_checkpoint_selection():
    report = leakage_ledger("mvtec_ad2", ["can", "fabric", "Metal-Nut"],
                            [DataUse("visa", VISA)],
                            checkpoint_selection=[DataUse("mvtec", None, split="test")],
                            known_categories={"mvtec": MVTEC})
    assert report.zero_shot is False
    (flag,) = report.flags
    assert flag == {"kind": "shared_category", "role": "checkpoint_selection",
                    "dataset": "mvtec", "split": "test", "categories": ["Metal-Nut"]}
    assert report.to_dict()["checkpoint_selection"][0]["role"] == "checkpoint_selection"


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="role must be one of"):
        DataUse("visa", role="tuning")
    with pytest.raises(ValueError, match="non-empty strings"):
        normalise_name("  ")
    with pytest.raises(ValueError, match="needs 'dataset'"):
        DataUse.from_dict({"name": "visa"})
    assert DataUse.from_dict({"dataset": "visa", "categories": ["pcb1"]}).categories == ("pcb1",)
