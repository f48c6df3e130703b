"""Test-wide settings.

The tests run tiny models whose operations are too small to gain from intra-op threads; on a
busy two-core machine, torch's threads contend with other processes and slow tiny-model steps
by an order of magnitude, so the suite runs torch single-threaded."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
