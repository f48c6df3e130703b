"""Registries: decorator registration, entry-point plug-ins, unknown-name errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from zsbench.registry import METHODS, Registry, UnknownNameError


def test_decorator_registration_and_lookup_is_case_insensitive():
    reg: Registry[type] = Registry("widget", None, None)

    @reg.register("Spanner")
    class Spanner:
        pass

    assert reg.get("spanner") is Spanner
    assert "SPANNER" in reg
    assert reg.names() == ["spanner"]
    assert reg.entry("spanner").source == "built-in"


def test_double_registration_of_a_different_object_is_an_error():
    reg: Registry[object] = Registry("widget", None, None)
    reg.register("a", object())
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", object())


def test_unknown_name_lists_known_names_and_suggests_a_close_match():
    reg: Registry[int] = Registry("method", None, None)
    reg.register("anomalyclip", 1)
    reg.register("winclip", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("anomaly_clip")
    message = str(info.value)
    assert "Unknown method 'anomaly_clip'" in message
    assert "Did you mean 'anomalyclip'?" in message
    assert "anomalyclip, winclip" in message


def _write_plugin(root: Path, group: str, name: str, module: str, body: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:Plugin\n")


def test_entry_point_plugin_is_discovered_and_listed(tmp_path, monkeypatch):
    _write_plugin(tmp_path, "zsbench.methods", "my_method", "zsbench_test_plugin", """
        from zsbench.method import AnomalyMethod, MethodInfo

        class Plugin(AnomalyMethod):
            info = MethodInfo(name="my_method", title="My method", paper="me 2026",
                              trainable=False)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        METHODS.discover(force=True)
        assert "my_method" in METHODS.names()
        entry = METHODS.entry("my_method")
        assert entry.source == "plugin:zsbench_test_plugin"
        assert entry.obj.info.title == "My method"

        from typer.testing import CliRunner

        from zsbench.cli import app

        result = CliRunner().invoke(app, ["methods", "list", "--json"])
        assert result.exit_code == 0, result.output
        assert '"name": "my_method"' in result.output
        assert "plugin:zsbench_test_plugin" in result.output
    finally:
        METHODS.unregister("my_method")
        sys.modules.pop("zsbench_test_plugin", None)


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    reg: Registry[object] = Registry("dataset", None, "zsbench.test_broken")
    _write_plugin(tmp_path, "zsbench.test_broken", "broken", "zsbench_broken_plugin",
                  "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reg.names() == []
    assert "missing dependency xyz" in caplog.text
