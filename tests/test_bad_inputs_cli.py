"""Issue 16, CLI half: bad options and bad inputs give one clear message naming the option, file
or value (no traceback, no output written); internal bugs keep their traceback; first-use polish
(narrow tables, flag help, ``results validate``, ``protocols show``, quiet dataset loads)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import zsbench.cli.console as cli_console
from tests.result_factory import make_result, write_result_file
from zsbench.cli import app
from zsbench.errors import ConfigError, DataError, ZsbenchError
from zsbench.synthetic import write_synthetic_dataset

runner = CliRunner()


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from zsbench.prepare import prepare

    root = tmp_path_factory.mktemp("bad_inputs_cli")
    write_synthetic_dataset(root / "raw", "synthetic_b", size=32, n_train=1, n_normal=2,
                            n_anomalous=2)
    prepare("synthetic_b", root / "raw", root / "data")
    return root / "data"


# -- 1. error classes: user errors are one line, bugs keep their traceback ----------------------

@pytest.mark.parametrize("cls", ["zsbench.registry.UnknownNameError",
                                 "zsbench.protocols.ProtocolError",
                                 "zsbench.adapter.DatasetLayoutError",
                                 "zsbench.backbone.WeightsUnavailableError",
                                 "zsbench.results.ResultValidationError",
                                 "zsbench.data.DataSourceError",
                                 "zsbench.prepare.PrepareError",
                                 "zsbench.schema.SchemaError",
                                 "zsbench.leaderboard.build.SiteBuildError",
                                 "zsbench.leaderboard.reported.ReportedDataError"])
def test_user_facing_error_classes_derive_from_zsbench_error(cls):
    import importlib

    module, name = cls.rsplit(".", 1)
    assert issubclass(getattr(importlib.import_module(module), name), ZsbenchError)


def test_config_and_data_errors_stay_value_errors():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


@pytest.mark.parametrize("bug", [ValueError("internal bug"), KeyError("internal_key")])
def test_internal_bug_is_not_turned_into_a_user_error(bug, monkeypatch, tmp_path):
    import zsbench.runner

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(zsbench.runner, "run", broken)
    result = runner.invoke(app, ["run", "-m", "winclip", "-p", "synthetic", "--device", "cpu",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.exception is bug  # propagates: typer prints its traceback
    assert "Error:" not in result.output


def test_zsbench_error_is_one_message_with_exit_code_1(monkeypatch, tmp_path):
    import zsbench.runner

    def refuse(*args, **kwargs):
        raise ConfigError("option 'sigma' must be positive, got -1", cli="--set sigma=-1: "
                          "must be positive")

    monkeypatch.setattr(zsbench.runner, "run", refuse)
    result = runner.invoke(app, ["run", "-m", "winclip", "-p", "synthetic", "--device", "cpu",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Error: --set sigma=-1: must be positive" in _text(result)  # the CLI wording
    assert "Traceback" not in result.output


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file or directory", "/x/data"),
                                   PermissionError(13, "Permission denied", "/x/results")])
def test_os_error_about_a_user_path_is_one_message(error, monkeypatch, tmp_path):
    import zsbench.runner

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(zsbench.runner, "run", refuse)
    result = runner.invoke(app, ["run", "-m", "winclip", "-p", "synthetic", "--device", "cpu",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Error: {error.strerror}: {error.filename}" in _text(result)


def test_every_command_reports_user_errors_through_the_one_handler():
    def commands(typer_app):
        yield from typer_app.registered_commands
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance)

    callbacks = list(commands(app))
    assert len(callbacks) >= 20
    unwrapped = [c.callback.__name__ for c in callbacks
                 if getattr(c.callback, "__wrapped__", None) is None]
    assert unwrapped == []


# -- 2. options are validated up front, naming the option --------------------------------------

RUN = ["run", "-m", "winclip", "-p", "synthetic"]


@pytest.mark.parametrize(("args", "option", "detail"), [
    (["--device", "tpu"], "--device", "'tpu' is not a device"),
    (["--device", "cuda"], "--device", "'cuda' is not available on this machine"),
    (["--resolution", "0"], "--resolution", ">= 1"),
    (["--limit", "-1"], "--limit", ">= 1"),
    (["--limit", "0"], "--limit", ">= 1"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--num-workers", "-1"], "--num-workers", ">= 0"),
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--lr", "0"], "--lr", "not > 0"),
    (["--set", "image_size=abc"], "--set",
     "image_size=abc: config field 'image_size' expects an integer, got 'abc'"),
    (["--set", "no_such_option=1"], "--set", "has no config option 'no_such_option'"),
    (["--set", "image_size"], "--set", "expected KEY=VALUE, got 'image_size'"),
])
def test_bad_run_option_is_refused_before_any_work(args, option, detail, monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    result = runner.invoke(app, [*RUN, "-o", str(out), *args])
    text = _text(result)
    assert result.exit_code == 2, text
    assert f"Invalid value for '{option}'" in text
    assert detail in text.replace("greater than or equal to", ">=")
    assert "Traceback" not in result.output
    assert not out.exists()


def test_device_message_names_the_available_devices(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, [*RUN, "-o", str(tmp_path / "o"), "--device", "cuda:1"])
    assert result.exit_code == 2
    assert "available: cpu" in _text(result)


@pytest.mark.parametrize("args", [["train", "-m", "coop", "--epochs", "0"],
                                  ["train", "-m", "coop", "--device", "tpu"],
                                  ["evaluate", "-c", "x.pt", "-p", "synthetic", "--limit", "0"],
                                  ["demo", "--epochs", "0"],
                                  ["leaderboard", "serve", "--port", "99999"],
                                  ["leaderboard", "serve", "--port", "0"]])
def test_other_commands_validate_ranges(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{args[-2]}'" in _text(result)
    assert not any(tmp_path.iterdir())  # no demo folder, no checkpoints


def test_known_device_is_accepted():
    assert cli_console.check_device("cpu") == "cpu"
    assert cli_console.check_device(" CPU ") == "cpu"
    assert cli_console.check_device(None) is None


# -- 3. first use --------------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["methods", "data"])
def test_list_tables_show_every_name_in_full_at_80_columns(group, monkeypatch):
    names = [r["name"] for r in json.loads(runner.invoke(app, [group, "list", "--json"]).output)]
    monkeypatch.setattr(cli_console.console, "width", 80)
    result = runner.invoke(app, [group, "list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    shown = {m.group(1) for line in lines if (m := re.match(r"^│ (\S+)\s+│", line))}
    assert set(names) <= shown  # every name whole, on one line
    assert "…" not in result.output
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) <= 3 * len(names)  # titles wrap into a few lines at most, not 15


def test_wide_terminal_shows_every_column(monkeypatch):
    monkeypatch.setattr(cli_console.console, "width", 400)
    result = runner.invoke(app, ["methods", "list"])
    header = next(line for line in result.output.splitlines() if "name" in line)
    for column in ("title", "kind", "backbone", "paper", "source"):
        assert column in header


@pytest.mark.parametrize("args", [["run"], ["train"], ["evaluate"], ["demo"], ["data", "prepare"],
                                  ["data", "push"], ["methods", "list"], ["submit"], []])
def test_help_shows_no_value_after_flags(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    assert re.search(r"--help\s+Show this message", result.output)


def test_run_help_shows_flags_bare_and_values_typed():
    out = runner.invoke(app, ["run", "--help"]).output
    assert re.search(r"--skip-existing\s+Skip targets", out)
    assert re.search(r"--limit <int", out)
    assert "--set KEY=VALUE" in out


def test_results_validate_names_each_bad_file(tmp_path):
    good = write_result_file(tmp_path / "res", make_result("winclip", "mvtec"))
    bad = write_result_file(tmp_path / "res", make_result("winclip", "visa"))
    data = json.loads(bad.read_text())
    data["metrics"]["mean"]["image_auroc"] = 95.0  # a percentage, not a fraction
    bad.write_text(json.dumps(data))
    broken = tmp_path / "res" / "broken.json"
    broken.write_text("{not json")

    ok = runner.invoke(app, ["results", "validate", str(good)])
    assert ok.exit_code == 0 and "1 result file(s) valid" in _text(ok)

    result = runner.invoke(app, ["results", "validate", str(tmp_path / "res")])
    text = _text(result)
    assert result.exit_code == 1
    assert f"{bad}: field metrics/mean/image_auroc" in text
    assert f"{broken}: not valid JSON" in text
    assert result.output.count("✗") == 2  # the valid file is not listed
    assert "2 of 3 file(s) invalid" in text


def test_results_validate_missing_path_is_named(tmp_path):
    result = runner.invoke(app, ["results", "validate", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert f"not found: {tmp_path / 'missing'}" in _text(result)


def test_short_o_means_output_dir_only(tmp_path):
    prepare_help = runner.invoke(app, ["data", "prepare", "--help"]).output
    assert "--option KEY=VALUE" in prepare_help and "-o," not in prepare_help
    assert re.search(r"-o, --output-dir", runner.invoke(app, ["run", "--help"]).output)
    result = runner.invoke(app, ["data", "prepare", "mvtec", "--raw", str(tmp_path),
                                 "--out", str(tmp_path / "out"), "-o", "pieces=3"])
    assert result.exit_code == 2
    assert "No such option: -o" in result.output
    assert not (tmp_path / "out").exists()


def test_protocols_show_prints_a_description_and_a_table_of_runs():
    result = runner.invoke(app, ["protocols", "show", "visa->mvtec,btad"])
    assert result.exit_code == 0
    text = _text(result)
    assert "visa->mvtec,btad: Train on visa (test split); evaluate on mvtec, btad." in text
    assert "2 runs" in text
    rows = [" ".join(line.replace("│", " ").split()) for line in result.output.splitlines()]
    assert "visa -> mvtec" in rows and "visa -> btad" in rows
    assert "{'train'" not in result.output and "[{" not in result.output


def test_parsed_protocol_all_targets_is_described():
    from zsbench.protocols import parse_protocol

    assert parse_protocol("mvtec->all").description == (
        "Train on mvtec (test split); evaluate on every other real dataset.")
    assert parse_protocol("none->all").description == (
        "No training (training-free evaluation); evaluate on every real dataset.")


@pytest.mark.parametrize("typo", ["mvtéc->all", "mvtech->all"])
def test_protocol_typos_get_the_same_suggestion(typo):
    result = runner.invoke(app, ["protocols", "show", typo])
    text = _text(result)
    assert result.exit_code == 1
    assert f"Unknown dataset '{typo.split('->')[0]}'. Did you mean 'mvtec'?" in text
    assert "malformed" not in text


def test_dataset_loads_print_no_progress_bars(data_dir, capfd):
    import datasets

    from zsbench.data import load

    was_disabled = datasets.are_progress_bars_disabled()  # other test modules disable them
    datasets.enable_progress_bars()
    try:
        ds = load(data_dir / "synthetic_b", split="test", categories=None)
        cats = sorted(set(ds["category"]))
        load(data_dir / "synthetic_b", split="test", categories=cats[:1])
        err = capfd.readouterr().err
        assert len(ds) == 4 * len(cats)  # 2 normal + 2 anomalous per category
        assert "Generating test split" not in err and "Filter" not in err
        assert not datasets.are_progress_bars_disabled()  # the user's setting is restored
    finally:
        if was_disabled:
            datasets.disable_progress_bars()


def test_missing_weights_cli_message_names_the_option(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "-m", "clip", "-p", "none->synthetic_b", "--device",
                                 "cpu", "--data-dir", str(data_dir), "-o", str(out)])
    text = _text(result)
    assert result.exit_code == 1
    assert "--pretrained /path/to/file" in text
    assert "load_backbone" not in text and "pretrained=" not in text
    assert not out.exists() or not list(out.rglob("*.json"))


SUBPROCESS_CHECK = """
import json, sys
from typer.testing import CliRunner
from zsbench.cli import app
runner = CliRunner()
print(json.dumps({
    "list": runner.invoke(app, ["methods", "list", "--json"]).output,
    "info": runner.invoke(app, ["methods", "info", "winclip", "--json"]).output,
    "submit": runner.invoke(app, ["submit", "--check", sys.argv[1]]).output,
    "torch": "torch" in sys.modules,
}))
"""


def test_listing_and_checking_do_not_import_torch_with_a_warm_cache(tmp_path, monkeypatch):
    import subprocess
    import sys

    from zsbench import method_catalog
    from zsbench.registry import METHODS

    if METHODS.plugin_names():
        pytest.skip("plug-in methods are always described from their classes")
    monkeypatch.setenv("ZSBENCH_CACHE_DIR", str(tmp_path / "cache"))
    builtins = [e.name for e in METHODS.entries() if e.source == "built-in"]
    live = method_catalog._describe(builtins)
    method_catalog._write(method_catalog.cache_dir() / f"methods-{method_catalog.source_key()}"
                                                       ".json", live)
    result = write_result_file(tmp_path / "res", make_result("winclip", "mvtec"))
    done = subprocess.run([sys.executable, "-c", SUBPROCESS_CHECK, str(result)],
                          capture_output=True, text=True, timeout=600, check=True)
    out = json.loads(done.stdout)
    assert out["torch"] is False
    assert [m["name"] for m in json.loads(out["list"])] == sorted(builtins)
    assert json.loads(out["info"]) == live["winclip"]
    assert "missing categories of mvtec" in out["submit"]  # the checks ran ...
    assert "unknown method" not in out["submit"]  # ... and found winclip registered


def test_method_descriptions_from_the_cache_equal_the_classes(tmp_path, monkeypatch):
    from zsbench.method import describe_method
    from zsbench.method_catalog import describe, describe_all

    monkeypatch.setenv("ZSBENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert describe("WinCLIP") == json.loads(json.dumps(describe_method("winclip"), default=str))
    assert "winclip" in describe_all()
    with pytest.raises(ZsbenchError, match="Did you mean 'winclip'"):
        describe("winclipp")
