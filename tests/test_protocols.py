"""Protocol ids: parsing, 'all' expansion, the paper protocol, errors."""

from __future__ import annotations

import pytest

from zsbench.protocols import ProtocolError, parse_protocol, real_datasets, resolve_protocol


def test_parse_train_and_targets():
    p = parse_protocol("mvtec + visa -> btad, mpdd")
    assert p.id == "mvtec+visa->btad,mpdd"
    assert p.train == ("mvtec", "visa")
    assert p.runs() == [(("mvtec", "visa"), "btad"), (("mvtec", "visa"), "mpdd")]


def test_none_trains_on_nothing_and_all_expands_to_real_datasets():
    p = parse_protocol("none->all")
    assert p.train == ()
    targets = p.target_datasets()
    assert targets == real_datasets()
    assert "synthetic_a" not in targets and "mvtec" in targets and "kvasir" in targets


def test_all_excludes_the_training_dataset():
    targets = parse_protocol("mvtec->all").target_datasets()
    assert "mvtec" not in targets and "visa" in targets


def test_paper_protocol_trains_mvtec_on_visa_and_the_rest_on_mvtec():
    runs = dict((target, train) for train, target in resolve_protocol("paper").runs())
    assert runs["mvtec"] == ("visa",)
    assert runs["visa"] == ("mvtec",) and runs["kvasir"] == ("mvtec",)
    assert len(runs) == len(real_datasets())


def test_runs_are_grouped_by_training_set():
    trains = [t for t, _ in resolve_protocol("paper").runs()]
    # each training set appears in one contiguous block, so it is trained once
    blocks = [t for i, t in enumerate(trains) if i == 0 or trains[i - 1] != t]
    assert len(blocks) == len(set(trains))


@pytest.mark.parametrize("bad, message", [
    ("mvtec", "malformed protocol id"),
    ("mvtec->", "malformed protocol id"),
    ("->all", "malformed protocol id"),
    ("mvtek->all", "Did you mean 'mvtec'"),
    ("mvtec->visa,nope", "Unknown dataset 'nope'"),
    ("mvtec->mvtec", "not zero-shot"),
    ("none+visa->all", "'none' cannot be combined"),
    ("all->mvtec", "only allowed as a target"),
])
def test_bad_ids_give_clear_errors(bad, message):
    with pytest.raises(ProtocolError, match=message):
        resolve_protocol(bad)


def test_with_options_overrides_settings():
    p = resolve_protocol("synthetic").with_options(resolution=64, seed=None)
    assert p.resolution == 64 and p.seed == 111
