"""Method presets: named sets of config values that reproduce an upstream code's settings."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from zsbench.cli import app
from zsbench.method import describe_method, make_config, preset_values
from zsbench.registry import METHODS

runner = CliRunner()

ALL_PRESETS = [(name, preset) for name in METHODS.names()
               for preset in sorted(METHODS.get(name).presets)]


def test_the_upstream_methods_have_presets() -> None:
    names = {name for name, _ in ALL_PRESETS}
    assert {"anomalyclip", "faprompt", "tps", "april_gan", "cocoop"} <= names
    assert set(METHODS.get("anomalyclip").presets) == {"upstream", "upstream-original"}


@pytest.mark.parametrize(("name", "preset"), ALL_PRESETS)
def test_every_preset_builds_and_differs_from_the_defaults(name: str, preset: str) -> None:
    cls = METHODS.get(name)
    values = preset_values(name, preset)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    assert values and set(values) <= fields, sorted(set(values) - fields)
    config = make_config(name, preset=preset)
    defaults = make_config(name)
    for key, value in values.items():
        assert getattr(config, key) == value, key
    changed = [f for f in fields if getattr(config, f) != getattr(defaults, f)]
    assert changed, f"preset {name}/{preset} equals the default config"


def test_overrides_win_over_the_preset() -> None:
    config = make_config("anomalyclip", {"lam": "2", "feature_layers": "12,24"},
                         preset="upstream")
    assert config.lam == 2.0 and config.feature_layers == (12, 24)
    assert config.deep_prompt_fp16_cast and not config.alias_layers_to_last


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="upstream, upstream-original"):
        make_config("anomalyclip", preset="head")


def test_describe_method_and_cli_show_presets() -> None:
    described = describe_method("anomalyclip")
    assert described["presets"]["upstream"]["lam"] == 4.0
    result = runner.invoke(app, ["methods", "info", "anomalyclip"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "presets" in result.output
    for text in ("upstream-original", "lam", "alias_layers_to_last", "feature_layers"):
        assert text in result.output
    data = json.loads(runner.invoke(app, ["methods", "info", "anomalyclip", "--json"]).output)
    assert data["presets"]["upstream-original"]["alias_layers_to_last"] is True
    rows = json.loads(runner.invoke(app, ["methods", "list", "--json"]).output)
    by_name = {row["name"]: row for row in rows}
    assert by_name["anomalyclip"]["presets"] == ["upstream", "upstream-original"]
    assert by_name["clip"]["presets"] == []
