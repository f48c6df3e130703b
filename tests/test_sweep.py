"""``zsbench sweep``: cells, files, local workers, failures and resuming after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsbench.errors import ConfigError
from zsbench.sweep import SweepCell, expand, read_sweep_file, run_sweep
from zsbench.synthetic import write_synthetic_dataset

TINY_ARGS = ["--backbone", "zsbench-tiny", "--pretrained", "none", "--image-size", "56",
             "--resolution", "64", "--limit", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from zsbench.prepare import prepare

    root = tmp_path_factory.mktemp("sweep")
    write_synthetic_dataset(root / "raw", "synthetic_b", size=64, n_train=1, n_normal=2,
                            n_anomalous=2)
    prepare("synthetic_b", root / "raw", root / "data")
    return root / "data"


def test_expand_is_the_product_in_a_stable_order():
    cells = expand(["clip", "winclip"], ["none->mvtec"], [1, 2], {"sigma": [2, 4]})
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert cells[0] == SweepCell("clip", "none->mvtec", 1, (("sigma", "2"),))
    assert cells[0].key == "clip__none-to-mvtec__seed1__sigma=2"
    assert cells[0].arguments() == ["run", "--method", "clip", "--protocol", "none->mvtec",
                                    "--skip-existing", "--seed", "1", "--set", "sigma=2"]
    assert [c.seed for c in expand(["clip"], ["paper"])] == [None]
    with pytest.raises(ConfigError, match="twice"):
        expand(["clip", "clip"], ["paper"])
    with pytest.raises(ConfigError, match="sigma have no values"):
        expand(["clip"], ["paper"], grid={"sigma": []})
    with pytest.raises(ConfigError, match="at least one method"):
        expand([], ["paper"])


def test_sweep_file_toml(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('methods = ["clip"]\nprotocols = ["none->mvtec"]\nseeds = [1, 2]\n'
                    '[grid]\nsigma = [2, 4]\n[run]\ndata-dir = "data"\nlimit = 3\n')
    spec = read_sweep_file(path)
    assert spec["seeds"] == [1, 2] and spec["run"] == {"data-dir": "data", "limit": 3}
    (tmp_path / "bad.toml").write_text('method = ["clip"]\n')
    with pytest.raises(ConfigError, match="unknown key.*method"):
        read_sweep_file(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="not found"):
        read_sweep_file(tmp_path / "none.toml")


def test_a_failed_cell_is_reported_with_its_log_and_the_others_run(data_dir, tmp_path):
    cells = [SweepCell("clip", "none->synthetic_b"),
             SweepCell("clip", "none->synthetic_b", config=(("no_such_option", "1"),))]
    common = ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "res"), *TINY_ARGS]
    report = run_sweep(cells, tmp_path / "logs", common, workers=2)
    status = {o.cell.key: o.status for o in report.outcomes}
    assert status == {"clip__none-to-synthetic_b": "done",
                      "clip__none-to-synthetic_b__no_such_option=1": "failed"}
    failed = report.failed[0]
    assert failed.returncode != 0 and "no_such_option" in failed.log.read_text()
    assert len(list((tmp_path / "res").rglob("synthetic_b.json"))) == 1


def _results(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("synthetic_b.json")}


def test_sweep_of_two_methods_and_two_seeds_resumes_after_sigkill(data_dir, tmp_path):
    out, logs = tmp_path / "res", tmp_path / "logs"
    command = [sys.executable, "-m", "zsbench", "sweep", "-m", "clip", "-m", "clip_ac", "-p",
               "none->synthetic_b", "--seeds", "1,2", "--workers", "2", "--log-dir", str(logs),
               "--", "--data-dir", str(data_dir), "--output-dir", str(out), *TINY_ARGS]
    sweep = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(_results(out)) < 1 and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its running cells
    sweep.wait()
    before = _results(out)
    state = logs / "sweep_state.json"
    done_before = set(json.loads(state.read_text())) if state.exists() else set()
    assert 1 <= len(before) <= 4 and len(done_before) <= len(before)

    cells = expand(["clip", "clip_ac"], ["none->synthetic_b"], [1, 2])
    report = run_sweep(cells, logs, command[command.index("--") + 1:], workers=2)
    after = _results(out)
    assert len(after) == 4  # every cell once: 2 methods x 2 seeds
    assert all(after[p] == mtime for p, mtime in before.items())  # nothing rewritten
    status = {o.cell.key: o.status for o in report.outcomes}
    assert {k for k, v in status.items() if v == "skipped"} == done_before  # not relaunched
    assert sorted(status) == sorted(c.key for c in cells) and not report.failed
    assert set(json.loads(state.read_text())) == set(status)


def test_ranks_share_the_cells_exactly_once():
    from zsbench.distributed import WorldInfo
    from zsbench.sweep import cells_for_rank

    cells = expand(["clip", "winclip", "anovl"], ["none->mvtec"], [1, 2, 3])
    shares = [cells_for_rank(cells, WorldInfo(r, 4)) for r in range(4)]
    assert sorted((c for s in shares for c in s), key=cells.index) == cells
    assert [len(s) for s in shares] == [3, 2, 2, 2]


def test_slurm_array_through_submitit(tmp_path):
    submitit = pytest.importorskip("submitit")
    from zsbench.sweep import submit_slurm_array

    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=5)
    cells = [SweepCell("clip", "none->nothing_prepared")]  # fails fast: the dataset is unknown
    jobs = submit_slurm_array(cells, tmp_path, ["--data-dir", str(tmp_path)], executor=executor)
    assert len(jobs) == 1
    with pytest.raises(submitit.core.utils.FailedJobError, match="exited with 1"):
        jobs[0].result()
