"""The progress callback shared by the evaluator, the trainer and the runner."""

from __future__ import annotations

from collections.abc import Callable

#: progress callback: (description, completed, total)
ProgressCallback = Callable[[str, int, int], None]
