"""The errors zsbench reports to a user as one message (no traceback).

Every error caused by what the user gave (an option, a config value, a data file, a result
JSON, a missing weights file) derives from :class:`ZsbenchError`; the CLI prints those as
``Error: ...`` and exits 1. Any other exception is a bug and keeps its traceback. The subclasses
also derive from the built-in class that code caught before (``ValueError`` ...), so existing
``except ValueError`` handlers keep working.
"""

from __future__ import annotations


class ZsbenchError(Exception):
    """Base of every user-facing error: the message says what to change.

    Raised with ``cli="..."`` when the command line should word it differently (naming options
    such as ``--pretrained PATH`` instead of Python arguments); :attr:`cli_message` is what the
    CLI prints."""

    def __init__(self, *args: object, cli: str | None = None) -> None:
        super().__init__(*args)
        self.cli = cli

    @property
    def cli_message(self) -> str:
        return self.cli if self.cli is not None else str(self)


class ConfigError(ZsbenchError, ValueError):
    """A bad option or config value (CLI option, ``--set KEY=VALUE``, preset, protocol id)."""


class DataError(ZsbenchError, ValueError):
    """A bad data file: a raw download, a prepared shard, a meta.json, a result JSON."""


class CheckpointError(ZsbenchError, ValueError):
    """A checkpoint that cannot be read or does not fit the method."""


class ResourceUnavailableError(ZsbenchError, RuntimeError):
    """Something the run needs is not available here (weights offline, a device)."""
