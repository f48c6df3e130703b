"""The CLI: help texts, version, list commands with --json."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from zsbench import __version__
from zsbench.cli import app

runner = CliRunner()
GROUPS = ["methods", "data", "protocols", "results", "leaderboard"]
COMMANDS = ["run", "train", "evaluate", "demo", "import-checkpoint"]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"zsbench {__version__}"


@pytest.mark.parametrize("args", [[], *([g] for g in GROUPS), *([c] for c in COMMANDS)])
def test_every_group_and_command_has_help(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "--help" in result.output


def test_run_help_describes_its_options():
    out = runner.invoke(app, ["run", "--help"]).output
    for option in ("--method", "--protocol", "--data-dir", "--skip-existing", "--limit",
                   "--save-maps", "--device", "--batch-size"):
        assert option in out


@pytest.mark.parametrize("group", ["methods", "data", "protocols"])
def test_list_commands_emit_json(group):
    result = runner.invoke(app, [group, "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list) and rows
    assert all("name" in r or "id" in r for r in rows)


def test_data_list_contains_every_dataset_of_the_design():
    rows = json.loads(runner.invoke(app, ["data", "list", "--json"]).output)
    names = {r["name"] for r in rows}
    expected = {"mvtec", "visa", "mpdd", "btad", "sdd", "sd_saliency_900", "rsdds", "dagm",
                "dtd_synthetic", "aitex", "elpv", "headct", "brainmri", "br35h", "isic",
                "kvasir", "cvc_colondb", "cvc_clinicdb", "endo", "tn3k", "lag", "msd"}
    assert expected <= names


def test_unknown_method_info_fails_with_suggestion():
    result = runner.invoke(app, ["methods", "info", "winclipp"])
    assert result.exit_code == 1
    assert "Did you mean 'winclip'" in result.output


def test_protocol_show_resolves_targets():
    result = runner.invoke(app, ["protocols", "show", "visa->mvtec,btad", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["runs"] == [{"train": ["visa"], "target": "mvtec"},
                            {"train": ["visa"], "target": "btad"}]


def test_malformed_protocol_is_a_clear_error():
    result = runner.invoke(app, ["protocols", "show", "mvtec=>all"])
    assert result.exit_code == 1
    assert "malformed protocol id 'mvtec=>all'" in result.output
