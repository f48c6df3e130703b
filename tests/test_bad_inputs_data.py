"""Bad data inputs (issue 16, data half): each case ends in one clear message naming the file,
record or option at fault, exit code 1, no traceback, and nothing written."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.raw_layouts import classification, medical
from zsbench.cli import app
from zsbench.errors import ConfigError, DataError, ZsbenchError

datasets.disable_progress_bars()
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def flat(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def assert_clean_failure(result) -> str:
    """Exit code 1 through the CLI's error path (SystemExit, no traceback); returns the text."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = flat(result)
    assert "Traceback" not in text and "Error:" in text
    return text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared HeadCT (10 tiny PNGs, one shard); tests corrupt copies of it."""
    from zsbench.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    classification.make_headct(root / "raw")
    return prepare("headct", root / "raw", root / "data", workers=1)


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data" / prepared.name
    shutil.copytree(prepared, target)
    return target


def shard_of(folder: Path) -> Path:
    (shard,) = sorted((folder / "data").glob("*.parquet"))
    return shard


def replace_image_bytes(shard: Path, row: int, new: bytes) -> dict:
    """Rewrite ``shard`` with the image bytes of ``row`` replaced; returns that row."""
    from zsbench.prepare import rows_to_table
    from zsbench.schema import arrow_schema

    rows = pq.read_table(shard).to_pylist()
    rows[row]["image"]["bytes"] = new
    pq.write_table(rows_to_table(rows, arrow_schema()), shard)
    return rows[row]


def flip_bytes(data: bytes, at: float = 0.5, n: int = 16) -> bytes:
    out = bytearray(data)
    start = int(len(out) * at)
    for k in range(start, start + n):
        out[k] ^= 0xFF
    return bytes(out)


# --- 1. truncated images fail at preparation ---------------------------------------------------

@pytest.mark.parametrize(("name", "make", "fraction"), [
    ("headct", classification.make_headct, 0.6),  # PNG cut at 60 %
    ("kvasir", medical.make_kvasir, 0.5),  # JPEG cut at 50 %
])
def test_truncated_image_fails_at_prepare_naming_dataset_category_and_file(
        tmp_path, name, make, fraction):
    make(tmp_path / "raw")
    victim = sorted(p for p in (tmp_path / "raw").rglob("*")
                    if p.suffix in (".png", ".jpg") and "mask" not in p.parent.name)[1]
    data = victim.read_bytes()
    victim.write_bytes(data[:int(len(data) * fraction)])
    result = invoke("data", "prepare", name, "--raw", tmp_path / "raw", "--out", tmp_path / "d")
    text = assert_clean_failure(result)
    assert str(victim) in text and f"{name}:" in text and "category" in text
    assert "truncated" in text and "BytesIO" not in text
    assert leftovers(tmp_path / "d") == []  # no dataset, no staging folder


def test_encode_image_decodes_kept_formats_in_full():
    import io

    from PIL import Image

    from zsbench.prepare import encode_image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buffer, format="PNG")
    whole = buffer.getvalue()
    assert encode_image(whole) == (whole, 30, 20)
    with pytest.raises(OSError, match="truncated"):
        encode_image(whole[:int(len(whole) * 0.6)])


# --- 2. corrupt shards and records at load and run time ----------------------------------------

def test_data_info_on_a_truncated_shard_names_the_shard(prepared, tmp_path):
    folder = copy_of(prepared, tmp_path)
    shard = shard_of(folder)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    text = assert_clean_failure(invoke("data", "info", folder))
    assert str(shard) in text and "not a readable Parquet shard" in text
    assert "--overwrite" in text


def test_load_of_a_truncated_shard_raises_a_data_error_naming_it(prepared, tmp_path):
    from zsbench.data import ShardError, load

    folder = copy_of(prepared, tmp_path)
    shard = shard_of(folder)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=shard.name) as caught:
        load(folder, cache_dir=str(tmp_path / "cache"))
    assert isinstance(caught.value, DataError) and str(shard) in str(caught.value)


@pytest.mark.parametrize("corrupt", ["garbage", "bit-flipped"])
def test_corrupt_image_bytes_in_a_row_name_the_record(prepared, tmp_path, corrupt):
    from zsbench.data import load
    from zsbench.preprocess import AnomalyImageDataset

    folder = copy_of(prepared, tmp_path)
    shard = shard_of(folder)
    original = pq.read_table(shard).to_pylist()[3]["image"]["bytes"]
    new = b"this is not an image" * 4 if corrupt == "garbage" else flip_bytes(original)
    row = replace_image_bytes(shard, 3, new)
    records = load(folder, decode=False, cache_dir=str(tmp_path / "cache"))
    dataset = AnomalyImageDataset(records, 32, (0.5,) * 3, (0.25,) * 3)
    assert dataset[2]["image"].shape == (3, 32, 32)  # the other records still decode
    with pytest.raises(DataError) as caught:
        dataset[3]
    message = str(caught.value)
    assert "record 3 of headct" in message and repr(row["category"]) in message
    assert repr(row["source_path"]) in message and "BytesIO" not in message
    assert "cannot decode its image" in message


def test_run_on_corrupt_data_names_the_shard_or_the_record(tmp_path):
    from zsbench.method import AnomalyMethod, MethodInfo, Prediction
    from zsbench.prepare import prepare
    from zsbench.registry import METHODS
    from zsbench.synthetic import write_synthetic_dataset

    class MeanColour(AnomalyMethod):
        info = MethodInfo(name="test_bad_data_mean", title="mean colour (test)", paper="test",
                          trainable=False)

        def _predict(self, images, class_names):
            maps = (images - images.mean(dim=(2, 3), keepdim=True)).norm(dim=1)
            return Prediction(maps.flatten(1).amax(1), maps)

    write_synthetic_dataset(tmp_path / "raw", "synthetic_b", size=32, n_train=1, n_normal=2,
                            n_anomalous=2)
    folder = prepare("synthetic_b", tmp_path / "raw", tmp_path / "data", workers=1)
    (shard,) = sorted((folder / "data").glob("test-*.parquet"))
    row = replace_image_bytes(shard, 1, b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    args = ["run", "-m", "test_bad_data_mean", "-p", "none->synthetic_b", "--data-dir",
            tmp_path / "data", "--output-dir", tmp_path / "out", "--resolution", "32",
            "--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "56",
            "--device", "cpu"]
    METHODS.register("test_bad_data_mean", MeanColour)
    try:
        text = assert_clean_failure(invoke(*args))
        assert "synthetic_b" in text and row["source_path"] in text
        assert repr(row["category"]) in text and "BytesIO" not in text
        assert not list((tmp_path / "out").rglob("*.json"))
        shard.write_bytes(shard.read_bytes()[:-64])
        text = assert_clean_failure(invoke(*args))
        assert str(shard) in text and "not a readable Parquet shard" in text
        assert not list((tmp_path / "out").rglob("*.json"))
    finally:
        METHODS.unregister("test_bad_data_mean")


# --- 3. outputs follow the umask ---------------------------------------------------------------

@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [
    (0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_prepared_folders_follow_the_umask(tmp_path, umask, file_mode,
                                                              dir_mode):
    from zsbench.atomic import write_text
    from zsbench.prepare import prepare

    classification.make_headct(tmp_path / "raw")
    old = os.umask(umask)
    try:
        result_json = write_text(tmp_path / "results" / "headct.json", "{}")
        folder = prepare("headct", tmp_path / "raw", tmp_path / "d", workers=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(result_json.stat().st_mode) == file_mode
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
    assert stat.S_IMODE((folder / "data").stat().st_mode) == dir_mode
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) == 2  # the card and one shard
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {file_mode}


# --- 4. stale staging folders of a killed prepare are removed -----------------------------------

def test_a_killed_prepare_leaves_staging_that_the_next_run_removes(tmp_path):
    out = tmp_path / "d"
    code = ("import os, sys\n"
            "from zsbench.atomic import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as staging:\n"
            "    (staging / 'data').mkdir()\n"
            "    (staging / 'data' / 'part.parquet').write_bytes(b'x' * 1000)\n"
            "    os.kill(os.getpid(), 9)\n")
    killed = subprocess.run([sys.executable, "-c", code, str(out / "headct")], check=False)
    assert killed.returncode == -9
    (left,) = out.glob(".headct.*.tmp")
    # a staging folder of a process that still runs (this one) and an old-style young one stay
    from zsbench.atomic import _HOST

    running = out / f".headct.{_HOST}-{os.getpid()}.abcd1234.tmp"
    young = out / ".headct.zz99yy88.tmp"
    running.mkdir()
    young.mkdir()
    other = out / ".mvtec.nohost-1.abcd1234.tmp"  # another dataset's: not ours to judge
    other.mkdir()
    classification.make_headct(tmp_path / "raw")
    result = invoke("data", "prepare", "headct", "--raw", tmp_path / "raw", "--out", out)
    assert result.exit_code == 0, result.output
    assert not left.exists()
    assert running.is_dir() and young.is_dir() and other.is_dir()
    logged = "".join(result.output.split())  # the log line may be wrapped inside the path
    assert "removedthestalestagingfolder" in logged and left.name in logged
    assert "nolongerrunning" in logged


def test_remove_stale_staging_by_age(tmp_path):
    from zsbench.atomic import STALE_STAGING_AGE_S, remove_stale_staging

    old = tmp_path / ".mvtec.abcd1234.tmp"
    (old / "data").mkdir(parents=True)
    fresh = tmp_path / ".mvtec.efgh5678.tmp"
    fresh.mkdir()
    past = os.path.getmtime(old) - STALE_STAGING_AGE_S - 60
    for path in (old / "data", old):
        os.utime(path, (past, past))
    assert remove_stale_staging(tmp_path / "mvtec") == [old]
    assert not old.exists() and fresh.is_dir()


# --- 5. read-only output folders fail before the work starts -----------------------------------

def test_prepare_into_a_read_only_folder_fails_before_listing(tmp_path, monkeypatch,
                                                              read_only):
    from zsbench.registry import ADAPTERS

    classification.make_headct(tmp_path / "raw")
    out = tmp_path / "ro"
    out.mkdir()
    read_only(out)
    listed = []
    adapter = ADAPTERS.get("headct")
    monkeypatch.setattr(adapter, "records", lambda self, raw: listed.append(raw) or iter(()))
    try:
        text = assert_clean_failure(invoke("data", "prepare", "headct", "--raw",
                                           tmp_path / "raw", "--out", out / "sub"))
    finally:
        out.chmod(0o755)
    assert "cannot write the output folder of headct" in text and str(out) in text
    assert listed == [] and leftovers(out) == []


def test_ensure_writable_dir(tmp_path, read_only):
    from zsbench.atomic import NotWritableError, ensure_writable_dir

    assert ensure_writable_dir(tmp_path / "new" / "deeper", "site") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checks, creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritableError, match="is a file, not a folder") as caught:
        ensure_writable_dir(tmp_path / "file" / "out", "results folder")
    assert "results folder" in str(caught.value) and isinstance(caught.value, ZsbenchError)
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    try:
        with pytest.raises(PermissionError, match=f"leaderboard site {ro}"):
            ensure_writable_dir(ro, "leaderboard site")
    finally:
        ro.chmod(0o755)


# --- 6. typo'd local paths, push offline, the CLI names its flag --------------------------------

@pytest.mark.parametrize("typo", ["./dat/headct", "data/headctt", "data/headct/extra/x"])
def test_data_info_on_a_typod_local_path_says_not_found(prepared, tmp_path, monkeypatch, typo):
    copy_of(prepared, tmp_path)
    monkeypatch.chdir(tmp_path)
    text = assert_clean_failure(invoke("data", "info", typo))
    assert f"not found: {typo}" in text and "Hub" not in text


def test_local_path_shapes():
    from zsbench.data import looks_like_local_path

    assert looks_like_local_path("./x") and looks_like_local_path("/abs/x")
    assert looks_like_local_path("~/x") and looks_like_local_path("a/b/c")
    assert not looks_like_local_path("org-that-is-not-here/zsbench:mvtec")
    assert not looks_like_local_path("mvtec")


class OfflineApi:
    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub.errors import OfflineModeIsEnabled

        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: "
                                   "offline mode is enabled.")


def test_push_offline_is_a_clear_message(prepared, tmp_path, monkeypatch):
    import huggingface_hub

    copy_of(prepared, tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    text = assert_clean_failure(invoke("data", "push", "headct", "--repo", "org/zs",
                                       "--data-dir", tmp_path / "data", "--i-have-rights"))
    assert "could not push headct to the Hub dataset repo org/zs" in text
    assert "offline mode is enabled" in text


def test_push_refusal_names_the_cli_flag_on_the_cli_and_the_argument_in_python(prepared,
                                                                                tmp_path):
    from zsbench.data import RehostingNotAllowed, push

    copy_of(prepared, tmp_path)
    text = assert_clean_failure(invoke("data", "push", "headct", "--repo", "org/zs",
                                       "--data-dir", tmp_path / "data"))
    assert "pass --i-have-rights" in text and "i_have_rights" not in text
    with pytest.raises(RehostingNotAllowed, match="pass i_have_rights=True") as caught:
        push("headct", "org/zs", data_dir=tmp_path / "data", api=object())
    assert caught.value.dataset == "headct" and "--i-have-rights" not in str(caught.value)


# --- 7. adapter options are converted by their declared types ----------------------------------

def test_cli_option_strings_are_converted_by_the_declared_types(tmp_path):
    medical.make_kvasir(tmp_path / "raw")  # has an image without a mask: strict mode raises
    lenient = invoke("data", "prepare", "kvasir", "--raw", tmp_path / "raw", "--out",
                     tmp_path / "a", "--option", "strict=false")
    assert lenient.exit_code == 0, lenient.output
    strict = invoke("data", "prepare", "kvasir", "--raw", tmp_path / "raw", "--out",
                    tmp_path / "b", "--option", "strict=yes")
    assert "strict=True" in assert_clean_failure(strict)
    bad = invoke("data", "prepare", "kvasir", "--raw", tmp_path / "raw", "--out",
                 tmp_path / "c", "--option", "strict=maybe")
    assert "kvasir: option strict='maybe' must be true or false" in assert_clean_failure(bad)
    assert leftovers(tmp_path / "b") == [] and leftovers(tmp_path / "c") == []


def test_msd_integer_options_from_strings_and_bad_values_named(tmp_path):
    from zsbench.adapter import AdapterOptionError
    from zsbench.registry import ADAPTERS

    msd = ADAPTERS.get("msd")
    adapter = msd(normal_stride="1", normal_margin=" 0", strict="false")
    assert adapter.options == {"normal_stride": 1, "normal_margin": 0, "strict": False}
    with pytest.raises(AdapterOptionError, match=r"msd: option normal_stride='1\.5' must be an "
                                                 "integer") as caught:
        msd(normal_stride="1.5")
    assert isinstance(caught.value, ConfigError)
    (tmp_path / "raw").mkdir()
    bad = invoke("data", "prepare", "msd", "--raw", tmp_path / "raw", "--out", tmp_path / "d",
                 "--option", "normal_stride=ten")
    assert "option normal_stride='ten' must be an integer" in assert_clean_failure(bad)
    typo = invoke("data", "prepare", "msd", "--raw", tmp_path / "raw", "--out", tmp_path / "d",
                  "--option", "normal_strid=2")
    assert "unknown adapter option(s) ['normal_strid']" in assert_clean_failure(typo)
    assert leftovers(tmp_path / "d") == []


def test_parse_option_kinds():
    from zsbench.adapter import AdapterOptionError, parse_option

    assert parse_option("Off", bool, "x", "d") is False and parse_option(1, bool, "x", "d") is True
    assert parse_option("2.5", float, "t", "d") == 2.5 and parse_option(3, float, "t", "d") == 3
    for value, kind in (("nan", float), (True, int), ("", int), ("2", bool)):
        with pytest.raises(AdapterOptionError, match="option"):
            parse_option(value, kind, "o", "d")


def test_schema_validator_names_unreadable_bytes_without_a_python_repr():
    from zsbench.schema import SchemaError, validate_record

    record = {"image": {"bytes": b"not an image at all", "path": "x/a.png"}, "mask": None,
              "label": 0, "dataset": "toy", "category": "cat", "prompt_name": "cat",
              "defect_type": "good", "split": "test", "sample_id": "abc",
              "source_path": "x/a.png", "has_mask": False, "width": 8, "height": 6}
    with pytest.raises(SchemaError, match="the image bytes cannot be read") as caught:
        validate_record(record)
    assert "BytesIO" not in str(caught.value) and " at 0x" not in str(caught.value)
