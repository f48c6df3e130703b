"""Test-wide settings and fixtures.

The tests run tiny models whose operations are too small to gain from intra-op threads; on a
busy two-core machine, torch's threads contend with other processes and slow tiny-model steps
by an order of magnitude, so the suite runs torch single-threaded."""

from __future__ import annotations

import pytest
import torch

from tests.method_fixtures import tiny_backbone

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone():
    """The tiny random-weight backbone at 56 px (``tests.method_fixtures``), one per module."""
    return tiny_backbone()
