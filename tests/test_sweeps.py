"""Sweeps the way Hydra users expect: `python -m pipeline.launch -m key=a,b ...` launches one run
per point through the executor, each with its own run id and the sweep's id (recorded in its
manifest), never moving latest.json; `runs list` shows a sweep's runs with their scores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands.launch import main as launch_main
from pipeline.commands.runs import main as runs_main
from pipeline.commands.sweep import sweep_points
from pipeline.core.errors import ConfigError
from pipeline.storage.store import open_store
from tests.conftest import TINY_OVERRIDES
from tests.test_slurm import overrides as slurm_overrides
from tests.test_slurm import slurm_cluster  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parent.parent

#: What latest.json holds before the sweep: a published run the sweep must leave alone.
CHAMPION = b'{"run_id": "20260101T000000Z-champ0", "members": ["single"]}'


def test_a_sweep_expands_with_hydras_override_grammar() -> None:
    points = sweep_points(["train.lr=1e-3,3e-4", "suite=seed", "train.epochs=range(1,3)"])
    assert [p.swept for p in points] == [
        ("train.lr=0.001", "train.epochs=1"),
        ("train.lr=0.001", "train.epochs=2"),
        ("train.lr=0.0003", "train.epochs=1"),
        ("train.lr=0.0003", "train.epochs=2"),
    ]
    assert all("suite=seed" in p.overrides for p in points)
    assert [p.swept for p in sweep_points(["train.lr=choice(0.1,0.2)"])] == [
        ("train.lr=0.1",), ("train.lr=0.2",)
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="only lists of values"):
        sweep_points(["train.lr=interval(0,1)"])


def test_a_bad_value_in_any_point_stops_the_sweep_before_any_run(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    args = ["-m", f"data.root={tiny_dataset}", f"store.root={store}", "train.epochs=1,-1"]
    assert launch_main(args) == 1
    assert "train.epochs" in capsys.readouterr().err
    assert not (store / "runs").exists()


@pytest.mark.slow
def test_a_two_point_sweep_runs_here_one_after_another_and_leaves_latest_json_alone(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    args = ["-m", f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES]
    check_two_point_sweep(store, "local", args, capsys)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_point_sweep_runs_side_by_side_on_slurm_and_leaves_latest_json_alone(
    slurm_cluster: None,  # noqa: F811 (the fixture)
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    args = [
        "--cluster",
        "slurm",
        "--wait",
        "-m",
        *slurm_overrides(tiny_dataset, str(store), tmp_path),
    ]
    out = check_two_point_sweep(store, "slurm", args, capsys)
    # both runs were submitted before either was followed
    submitted = [m.start() for m in re.finditer(r"^run \S+ submitted to Slurm", out, re.M)]
    followed = out.index("finished in")
    assert len(submitted) == 2 and max(submitted) < followed


def check_two_point_sweep(
    store: Path, cluster: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> str:
    """Launch `args` with a two-point sweep of train.lr and check its runs; returns the output."""
    store.mkdir()
    (store / "latest.json").write_bytes(CHAMPION)
    assert launch_main([*args, "train.lr=1e-3,3e-4"]) == 0
    out = capsys.readouterr().out
    sweep_id = re.search(rf"^sweep (\S+): 2 run\(s\) on {cluster}$", out, re.MULTILINE).group(1)
    run_ids = re.search(r"^sweep \S+: runs (\S+), (\S+); compare them", out, re.M).groups()
    assert len(set(run_ids)) == 2

    assert (store / "latest.json").read_bytes() == CHAMPION  # never published
    root = open_store(str(store))
    for run_id, lr in zip(run_ids, ("0.001", "0.0003"), strict=True):
        manifest = root.read_json(f"runs/{run_id}/manifest.json")
        assert manifest["sweep"] == {"sweep_id": sweep_id, "point": [f"train.lr={lr}"]}
        assert manifest["config"]["train"]["lr"] == float(lr)
        assert manifest["state"] == "succeeded"
        assert root.read_json(f"runs/{run_id}/stages/publish.json")["latest_moved"] is False

    assert runs_main(["list", "--sweep", sweep_id, f"store.root={store}"]) == 0
    listed = capsys.readouterr().out.splitlines()
    rows = [line for line in listed if sweep_id in line]
    # both runs, each with its own point (side by side, both ids may name the same second, so
    # their order in the list is the ids' order, not the points')
    lr_of = dict(zip(run_ids, ("0.001", "0.0003"), strict=True))
    assert sorted(row.split()[0] for row in rows) == sorted(run_ids), rows
    for row in rows:
        lr = lr_of[row.split()[0]]
        assert re.search(r"succeeded\s+0\.\d{4}", row) and row.endswith(f"train.lr={lr}"), row
    assert runs_main(["list", "--sweep", "no-such-sweep", f"store.root={store}"]) == 0
    assert "no runs of sweep no-such-sweep" in capsys.readouterr().out
    return out


@pytest.mark.slow
def test_the_documented_sweep_runs_as_written(tmp_path: Path) -> None:
    """docs/runs.md's sweep block, from a fresh folder: two runs of one sweep, listed together."""
    doc = (REPO / "docs" / "runs.md").read_text()
    script = re.findall(r"```bash\n(.*?)```", doc.split("## Sweeps", 1)[1], re.S)[0]
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = re.search(r"sweep (\S+): runs (\S+), (\S+);", done.stdout)
    assert sweep, done.stdout[-3000:]
    listed = done.stdout.split(sweep.group(0), 1)[1]
    assert sweep.group(2).rstrip(",") in listed and sweep.group(3) in listed, listed
    assert not (tmp_path / "outputs" / "sweep-store" / "latest.json").exists()
