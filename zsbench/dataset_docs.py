"""The dataset tables of README.md and docs/datasets.md, generated from the adapters' DatasetInfo.

Each file holds the table between the markers :data:`START` and :data:`END`; everything else in
the file is hand-written. Rewrite the tables after adding or changing an adapter with::

    python -m zsbench.dataset_docs          # rewrites README.md and docs/datasets.md
    python -m zsbench.dataset_docs --check  # exit status 1 and the stale files when outdated

``tests/test_dataset_docs.py`` fails when a committed table differs from the adapters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zsbench import atomic
from zsbench.adapter import DatasetAdapter, DatasetInfo, accepted_options, display_key

START = "<!-- datasets:start -->"
END = "<!-- datasets:end -->"
COMMAND = "python -m zsbench.dataset_docs"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES: tuple[Path, ...] = (REPO_ROOT / "README.md", REPO_ROOT / "docs" / "datasets.md")

HEADER = ("| id | dataset | domain | categories | masks | normals in test | licence "
          "| may be re-hosted | options |\n|---|---|---|---|---|---|---|---|---|")


def builtin_adapters() -> list[type[DatasetAdapter]]:
    """The registered built-in adapters (plug-ins excluded), in display order."""
    from zsbench.registry import ADAPTERS

    adapters = [e.obj for e in ADAPTERS.entries() if e.source == "built-in"]
    return sorted(adapters, key=lambda a: display_key(a.info.domain, a.info.order, a.info.name))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _options(adapter: type[DatasetAdapter]) -> str:
    names = accepted_options(adapter)
    text = ", ".join(f"`{n}`" for n in names) if names else "–"
    extra = adapter.info.install_extra
    return text + (f"; needs `pip install zsbench[{extra}]`" if extra else "")


def table_row(adapter: type[DatasetAdapter]) -> str:
    """One adapter's row of the dataset table."""
    info: DatasetInfo = adapter.info
    title = _cell(info.display_title)
    dataset = f"[{title}]({info.homepage})" if info.homepage else title
    categories = str(len(info.categories)) if info.categories else "from the folders"
    cells = [f"`{info.name}`", dataset, info.domain, categories, _yes(info.has_masks),
             _yes(info.has_normals), _cell(info.license), _yes(info.rehostable),
             _options(adapter)]
    return "| " + " | ".join(cells) + " |"


def markdown_table(adapters: Sequence[type[DatasetAdapter]] | None = None) -> str:
    """The dataset table (markdown) of ``adapters`` (default: every built-in adapter)."""
    rows = [table_row(a) for a in (builtin_adapters() if adapters is None else adapters)]
    return "\n".join([HEADER, *rows])


def with_table(text: str, table: str, where: str | Path) -> str:
    """``text`` with the region between the markers replaced by ``table``.

    Raises ``ValueError`` naming ``where`` when the markers are missing or out of order."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{where}: needs exactly one {START} line followed by one {END} line "
                         "around the generated dataset table")
    return text[:start] + f"{START}\n{table}\n" + text[end:]


def stale_files(paths: Sequence[str | Path] = DEFAULT_FILES,
                table: str | None = None) -> list[Path]:
    """The files whose generated table differs from ``table`` (default :func:`markdown_table`)."""
    table = markdown_table() if table is None else table
    stale = []
    for path in map(Path, paths):
        text = path.read_text(encoding="utf-8")
        if with_table(text, table, path) != text:
            stale.append(path)
    return stale


def write_tables(paths: Sequence[str | Path] = DEFAULT_FILES) -> list[Path]:
    """Rewrite the generated table of each file (atomically); returns the files changed."""
    table = markdown_table()
    changed = []
    for path in stale_files(paths, table):
        text = path.read_text(encoding="utf-8")
        atomic.write_text(path, with_table(text, table, path))
        changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Regenerate the dataset tables "
                                     "of README.md and docs/datasets.md from the adapters.")
    parser.add_argument("files", nargs="*", type=Path, help="files to update (default: "
                        "README.md and docs/datasets.md of the repository)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a table is outdated")
    args = parser.parse_args(argv)
    files = args.files or list(DEFAULT_FILES)
    try:
        if args.check:
            stale = stale_files(files)
            for path in stale:
                print(f"{path}: dataset table is outdated; run {COMMAND}", file=sys.stderr)
            return 1 if stale else 0
        for path in write_tables(files):
            print(f"updated {path}")
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
