"""Test-wide settings and fixtures.

The tests run tiny models whose operations are too small to gain from intra-op threads; on a
busy two-core machine, torch's threads contend with other processes and slow tiny-model steps
by an order of magnitude, so the suite runs torch single-threaded."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.method_fixtures import tiny_backbone

torch.set_num_threads(1)
# evaluations in tests load in the main process (forking loader workers per run costs more
# than it saves on tiny data); tests of the workers ask for them explicitly
os.environ.setdefault("ZSBENCH_NUM_WORKERS", "0")


@pytest.fixture(scope="module")
def backbone():
    """The tiny random-weight backbone at 56 px (``tests.method_fixtures``), one per module."""
    return tiny_backbone()


@pytest.fixture
def read_only(monkeypatch) -> Callable[[Path], None]:
    """``read_only(folder)`` makes ``folder`` unwritable for zsbench's write checks, for root
    too (root ignores mode bits): creating a file in it raises PermissionError."""
    real_mkstemp = tempfile.mkstemp

    def make(folder: Path) -> None:
        folder.chmod(0o555)

        def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
            if dir is not None and Path(dir) == folder:
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr("zsbench.atomic.tempfile.mkstemp", mkstemp)

    return make


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A data folder with synthetic_b (3 categories x 6 test images, 64 px) and synthetic_a
    (3 x 4) prepared, shared by the runner tests."""
    from zsbench.prepare import prepare
    from zsbench.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "raw_b", "synthetic_b", size=64, n_train=1, n_normal=3,
                            n_anomalous=3)
    prepare("synthetic_b", root / "raw_b", root / "data")
    write_synthetic_dataset(root / "raw_a", "synthetic_a", size=64, n_train=1, n_normal=2,
                            n_anomalous=2)
    prepare("synthetic_a", root / "raw_a", root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def colour_deviation():
    """The test-only ``ColourDeviation`` detector registered as ``test_colour_deviation``."""
    from tests.method_fixtures import ColourDeviation
    from zsbench.registry import METHODS

    METHODS.register("test_colour_deviation", ColourDeviation)
    yield ColourDeviation
    METHODS.unregister("test_colour_deviation")
