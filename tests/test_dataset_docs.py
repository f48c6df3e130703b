"""The dataset tables of README.md and docs/datasets.md and the leaderboard catalog are derived
from the adapters' DatasetInfo: adding an adapter is enough to list it everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from zsbench import dataset_docs
from zsbench.adapter import DatasetAdapter, DatasetInfo
from zsbench.leaderboard import catalog
from zsbench.registry import ADAPTERS

REPO = Path(__file__).resolve().parents[1]


def table_ids(table: str) -> list[str]:
    """The dataset ids of a generated table, in row order."""
    return [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]


def test_committed_tables_are_current() -> None:
    files = [REPO / "README.md", REPO / "docs" / "datasets.md"]
    stale = dataset_docs.stale_files(files)
    assert stale == [], (f"dataset tables outdated in {[str(p) for p in stale]}: run "
                         f"`{dataset_docs.COMMAND}` after changing an adapter's DatasetInfo")


def test_table_lists_every_builtin_adapter_in_display_order() -> None:
    builtin = sorted(e.name for e in ADAPTERS.entries() if e.source == "built-in")
    ids = table_ids(dataset_docs.markdown_table())
    assert sorted(ids) == builtin and len(ids) >= 35  # no fixed count: adding one is one file
    for name in ("bmad_brats2021", "bmad_camelyon16", "ksdd2", "mvtec_ad2", "mvtec_loco",
                 "real_iad", "folder", "synthetic_a"):
        assert name in ids
    # industrial, then medical, then synthetic; by DatasetInfo.order inside a domain
    assert ids[:5] == ["mvtec", "visa", "mpdd", "btad", "sdd"]
    assert ids.index("real_iad") < ids.index("headct") < ids.index("bmad_rsna")
    assert ids[-2:] == ["synthetic_a", "synthetic_b"]


def test_a_row_shows_the_adapter_facts() -> None:
    rows = {}
    for line in dataset_docs.markdown_table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells
    assert rows["msd"][1:] == [
        "[MSD (lung)](http://medicaldecathlon.com/)", "medical", "1", "yes", "yes",
        "CC BY-SA 4.0", "yes",
        "`normal_stride`, `normal_margin`, `strict`; needs `pip install zsbench[medical]`"]
    assert rows["folder"][1:4] == ["Your own images (folder)", "industrial", "from the folders"]
    assert rows["folder"][8] == "–"
    assert rows["sdd"][1] == "[KolektorSDD](https://www.vicos.si/resources/kolektorsdd/)"


@pytest.fixture()
def new_dataset() -> Iterator[type[DatasetAdapter]]:
    """A dataset added the documented way: one adapter class with its DatasetInfo."""

    class NewAdapter(DatasetAdapter):
        option_types = {"strict": bool}
        info = DatasetInfo(
            name="zz_new", title="New Medical Set (long title)", short_title="NewMed",
            paper_name="New-Med", order=15, domain="medical", categories=("organ",),
            prompt_names={"organ": "organ"}, license="CC BY 4.0", rehostable=True,
            citation="Someone, 2030", homepage="https://example.org/newmed", has_masks=True,
            has_normals=False)

    ADAPTERS.register("zz_new", NewAdapter)
    try:
        yield NewAdapter
    finally:
        ADAPTERS.unregister("zz_new")


def test_a_new_adapter_is_listed_everywhere(new_dataset: type[DatasetAdapter],
                                            tmp_path: Path) -> None:
    ids = table_ids(dataset_docs.markdown_table())
    assert ids.index("headct") < ids.index("zz_new") < ids.index("brainmri")  # order=15
    assert ("| `zz_new` | [NewMed](https://example.org/newmed) | medical | 1 | yes | no | "
            "CC BY 4.0 | yes | `strict` |") in dataset_docs.markdown_table()
    # the leaderboard catalog: column position, title, domain and the published name
    columns = [d.id for d in catalog.dataset_entries()]
    assert columns.index("headct") < columns.index("zz_new") < columns.index("brainmri")
    assert catalog.dataset_title("zz_new") == "NewMed"
    assert catalog.dataset_domain("zz_new") == "medical"
    assert catalog.dataset_id("New-Med") == "zz_new"
    # the committed tables are now outdated; the command names them and then rewrites them
    copy = tmp_path / "datasets.md"
    copy.write_text((REPO / "docs" / "datasets.md").read_text())
    assert dataset_docs.stale_files([copy]) == [copy]
    assert dataset_docs.main(["--check", str(copy)]) == 1
    assert dataset_docs.main([str(copy)]) == 0
    assert dataset_docs.stale_files([copy]) == []
    text = copy.read_text()
    assert "[NewMed](https://example.org/newmed)" in text
    assert text.split(dataset_docs.START)[0] == \
        (REPO / "docs" / "datasets.md").read_text().split(dataset_docs.START)[0]


def test_removed_adapter_leaves_the_catalog(new_dataset: type[DatasetAdapter]) -> None:
    assert "zz_new" in catalog.dataset_by_id()
    ADAPTERS.unregister("zz_new")
    assert "zz_new" not in catalog.dataset_by_id()
    assert catalog.dataset_title("zz_new") == "zz_new"


def test_catalog_keeps_published_only_datasets_and_skips_demo_sets() -> None:
    ids = [d.id for d in catalog.dataset_entries()]
    assert "covid19" in ids and catalog.dataset_id("COVID-19") == "covid19"
    assert not {"synthetic_a", "synthetic_b", "folder"} & set(ids)
    assert catalog.DATASET_ID_BY_PAPER_NAME["MVTecAD"] == "mvtec"
    assert catalog.DATASET_BY_ID["msd"].title == "MSD (lung)"


def test_missing_markers_are_an_error_naming_the_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    page = tmp_path / "page.md"
    page.write_text("# no table here\n")
    with pytest.raises(ValueError, match=r"page\.md: needs exactly one <!-- datasets:start -->"):
        dataset_docs.stale_files([page])
    assert dataset_docs.main([str(page)]) == 2
    assert "page.md" in capsys.readouterr().err
    assert page.read_text() == "# no table here\n"


def test_leaderboard_names_are_unique() -> None:
    entries = catalog.dataset_entries()
    for field in ("id", "paper_name", "title"):
        names = [getattr(e, field) for e in entries]
        assert len(set(names)) == len(names), field
    # every dataset name of the shipped published numbers maps to a catalog entry
    from zsbench.leaderboard.reported import load_reported

    assert {v.dataset for v in load_reported()} <= set(catalog.dataset_by_id())
