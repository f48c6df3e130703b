"""``zsbench data`` commands through Typer's CliRunner (push with a mocked HfApi: no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.raw_layouts import classification, industrial
from zsbench.cli import app
from zsbench.data import merge_root_card, read_card
from zsbench.dataset_card import parse_card

SHARED = Path(os.environ.get("ZSBENCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL_HEADCT = SHARED / "data" / "real" / "headct"

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def flat(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.mark.skipif(not REAL_HEADCT.is_dir(), reason=f"no real HeadCT sample at {REAL_HEADCT}")
def test_prepare_real_headct_then_info_json(tmp_path):
    result = invoke("data", "prepare", "headct", "--raw", REAL_HEADCT, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "prepared" in flat(result)
    result = invoke("data", "info", tmp_path / "headct", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info == {"dataset": "headct", "splits": {"test": {
        "n": 200, "anomalous": 100, "with_mask": 0,
        "categories": {"brain": {"n": 200, "anomalous": 100, "with_mask": 0}}}}}
    again = invoke("data", "prepare", "headct", "--raw", REAL_HEADCT, "--out", tmp_path)
    assert again.exit_code == 0 and "already prepared" in flat(again)


def test_prepare_with_options_info_table_and_skip(tmp_path):
    industrial.make_sdd(tmp_path / "raw")
    result = invoke("data", "prepare", "sdd", "--raw", tmp_path / "raw", "--out", tmp_path / "d",
                    "--option", "pieces=3")
    assert result.exit_code == 0, result.output
    info = json.loads(invoke("data", "info", "sdd", "--data-dir", tmp_path / "d",
                             "--json").output)
    # AdaCLIP's split of the pieces: 11 of the 15 normal pieces in train
    assert info["splits"]["test"]["n"] == 7 and info["splits"]["test"]["anomalous"] == 3
    assert info["splits"]["train"]["n"] == 11 and info["splits"]["train"]["anomalous"] == 0
    table = invoke("data", "info", "sdd", "--data-dir", tmp_path / "d")
    assert table.exit_code == 0 and "electrical_commutators" in flat(table)
    other = invoke("data", "prepare", "sdd", "--raw", tmp_path / "raw", "--out", tmp_path / "d")
    assert other.exit_code == 1 and "--overwrite" in flat(other)
    bad = invoke("data", "prepare", "sdd", "--raw", tmp_path / "raw", "--out", tmp_path / "d",
                 "--option", "pieces")
    assert bad.exit_code == 1 and "KEY=VALUE" in flat(bad)
    typo = invoke("data", "prepare", "sdd", "--raw", tmp_path / "raw", "--out", tmp_path / "e",
                  "--option", "piece=3")
    assert typo.exit_code == 1 and "unknown adapter option(s) ['piece']" in flat(typo)
    assert "takes: pieces" in flat(typo)


def test_prepare_wrong_raw_folder_names_expected_layout(tmp_path):
    classification.make_elpv(tmp_path / "elpv")
    result = invoke("data", "prepare", "headct", "--raw", tmp_path / "elpv", "--out", tmp_path)
    assert result.exit_code == 1
    assert "head_ct/NNN.png" in flat(result) and "labels.csv" in flat(result)
    missing = invoke("data", "prepare", "headct", "--raw", tmp_path / "nope", "--out", tmp_path)
    assert missing.exit_code == 1 and "nope" in flat(missing)
    unknown = invoke("data", "prepare", "mvtek", "--raw", tmp_path, "--out", tmp_path)
    assert unknown.exit_code == 1 and "Did you mean 'mvtec'" in flat(unknown)


def test_prepare_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("data", "prepare", "mvtec", "--raw", tmp_path / "empty", "--out", tmp_path)
    assert result.exit_code == 1
    assert "bottle/test" in flat(result) and "is empty" in flat(result)


def test_prepare_warns_about_mask_problems(tmp_path):
    industrial.make_mvtec(tmp_path / "raw")
    without, stray = industrial.break_mvtec_masks(tmp_path / "raw")
    result = invoke("data", "prepare", "mvtec", "--raw", tmp_path / "raw", "--out",
                    tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "without a mask" in flat(result) and without in flat(result)
    assert "masks without an image" in flat(result) and stray in flat(result)
    info = json.loads(invoke("data", "info", tmp_path / "d" / "mvtec", "--json").output)
    assert info["splits"]["test"]["anomalous"] - info["splits"]["test"]["with_mask"] == 1


def test_info_unknown_name_lists_data_dir(tmp_path):
    classification.make_headct(tmp_path / "raw")
    invoke("data", "prepare", "headct", "--raw", tmp_path / "raw", "--out", tmp_path / "d")
    result = invoke("data", "info", "mvtec", "--data-dir", tmp_path / "d")
    assert result.exit_code == 1 and "holds: headct" in flat(result)


class FakeHfApi:
    """Records the calls ``push`` makes; the repo has the README given at construction."""

    calls: list[tuple[str, dict]] = []
    readme: str | None = None

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))

    def upload_file(self, **kwargs):
        self.calls.append(("upload_file", kwargs))

    def hf_hub_download(self, repo_id, filename, **kwargs):
        if self.readme is None:
            raise FileNotFoundError(filename)
        path = Path(kwargs.get("cache_dir") or "/tmp") / f"zsbench-fake-{os.getpid()}.md"
        path.write_text(self.readme, encoding="utf-8")
        return str(path)


@pytest.fixture()
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    FakeHfApi.readme = None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_uploads_one_config_and_refuses_restricted_licences(tmp_path, fake_hub):
    classification.make_elpv(tmp_path / "elpv_raw")
    classification.make_headct(tmp_path / "headct_raw")
    for name in ("elpv", "headct"):
        assert invoke("data", "prepare", name, "--raw", tmp_path / f"{name}_raw", "--out",
                      tmp_path / "d").exit_code == 0
    refused = invoke("data", "push", "headct", "--repo", "org/zs", "--data-dir", tmp_path / "d")
    assert refused.exit_code == 1 and "re-hosting" in flat(refused)
    assert fake_hub.calls == []
    result = invoke("data", "push", "elpv", "--repo", "org/zs", "--data-dir", tmp_path / "d",
                    "--private")
    assert result.exit_code == 0, result.output
    names = [c[0] for c in fake_hub.calls]
    assert names == ["create_repo", "upload_folder", "upload_file"]
    created = fake_hub.calls[0][1]
    assert created["private"] is True and created["repo_type"] == "dataset"
    folder = fake_hub.calls[1][1]
    assert folder["path_in_repo"] == "elpv"
    assert folder["folder_path"] == str(tmp_path / "d" / "elpv")
    root = parse_card(fake_hub.calls[2][1]["path_or_fileobj"].decode())
    assert root["configs"] == [{"config_name": "elpv", "data_files": [
        {"split": "test", "path": "elpv/data/test-*.parquet"}], "default": True}]
    assert root["license"] == "cc-by-nc-sa-4.0"
    # a second dataset (with rights) joins the first as another config
    fake_hub.calls = []
    fake_hub.readme = root_text(root)
    result = invoke("data", "push", "headct", "--repo", "org/zs", "--data-dir", tmp_path / "d",
                    "--i-have-rights")
    assert result.exit_code == 0, result.output
    merged = parse_card(fake_hub.calls[-1][1]["path_or_fileobj"].decode())
    assert [c["config_name"] for c in merged["configs"]] == ["elpv", "headct"]
    assert merged["license"] == "other" and set(merged["zsbench"]["configs"]) == {"elpv", "headct"}
    assert "zsbench:begin elpv" in merged["body"] and "zsbench:begin headct" in merged["body"]


def root_text(header: dict) -> str:
    body = header.pop("body")
    import yaml

    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body


def test_merge_root_card_replaces_an_existing_config(tmp_path):
    classification.make_elpv(tmp_path / "raw")
    invoke("data", "prepare", "elpv", "--raw", tmp_path / "raw", "--out", tmp_path / "d")
    card = read_card(tmp_path / "d" / "elpv")
    body = card.pop("body")
    once = merge_root_card(None, "elpv", card, body)
    twice = merge_root_card(once, "elpv", card, body)
    parsed = parse_card(twice)
    assert len(parsed["configs"]) == 1 and parsed["body"].count("zsbench:begin elpv") == 1


def test_export_and_import_meta_commands(tmp_path):
    industrial.make_btad(tmp_path / "raw")
    assert invoke("data", "prepare", "btad", "--raw", tmp_path / "raw", "--out",
                  tmp_path / "d").exit_code == 0
    result = invoke("data", "export-meta", tmp_path / "d" / "btad", "--out", tmp_path / "m.json",
                    "--materialize", tmp_path / "files")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "m.json").read_text())
    assert set(meta) == {"train", "test"} and set(meta["test"]) == {"01", "02", "03"}
    entry = meta["test"]["01"][0]
    assert set(entry) == {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}
    assert all((tmp_path / "files" / e["img_path"]).is_file() for e in meta["test"]["03"])
    result = invoke("data", "import-meta", tmp_path / "m.json", "--root", tmp_path / "files",
                    "--name", "btad_again", "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    a = json.loads(invoke("data", "info", tmp_path / "d" / "btad", "--json").output)
    b = json.loads(invoke("data", "info", tmp_path / "d" / "btad_again", "--json").output)
    assert a["splits"] == b["splits"] and b["dataset"] == "btad_again"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"test": {"01": [{"img_path": "x.png"}]}}))
    bad = invoke("data", "import-meta", broken, "--root", tmp_path, "--name", "x", "--out",
                 tmp_path / "d")
    assert bad.exit_code == 1 and "broken.json" in flat(bad) and "test/01 entry 0" in flat(bad)
