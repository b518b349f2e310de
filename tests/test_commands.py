"""What a newcomer meets first at the command line: inputs checked before a run is made, `latest`
wherever a run id is asked for, and commands that start without the heavy libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands.launch import main as launch_main
from pipeline.commands.runs import main as runs_main
from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


def test_a_data_root_that_does_not_exist_is_refused_before_a_run_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    missing = tmp_path / "no-such-data"
    assert launch_main([f"data.root={missing}", f"store.root={store}", *TINY_OVERRIDES]) == 1
    assert not (store / "runs").exists()  # no run, so `runs list` shows none
    err = capsys.readouterr().err
    assert f"data.root={missing}" in err and "train/train.csv not found" in err
    assert runs_main(["list", f"store.root={store}"]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_runs_status_takes_latest_as_pull_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    run_id = "20261206T020000Z-abc123"
    (store / "runs" / run_id).mkdir(parents=True)
    (store / "runs" / run_id / "manifest.json").write_text(json.dumps({"models": ["single"]}))
    (store / "latest.json").write_text(json.dumps({"run_id": run_id}))
    assert runs_main(["status", "latest", f"store.root={store}"]) == 0
    assert capsys.readouterr().out.startswith(f"run {run_id}: ")

    (store / "latest.json").unlink()
    assert runs_main(["status", "latest", f"store.root={store}"]) == 1
    assert "latest.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module", ["pipeline.commands.launch", "pipeline.commands.runs", "pipeline.commands.infer"]
)
def test_the_commands_start_without_torch(module: str) -> None:
    """--help, --show-config and runs list answer in about a second: the command modules import
    neither torch nor the other heavy libraries until a stage needs them."""
    heavy = ["torch", "torchvision", "sklearn", "PIL", "pandas", "kubernetes"]
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_show_config_checks_the_architecture_without_torch_once_its_names_are_cached(
    tmp_path: Path,
) -> None:
    """`--show-config` checks `model.arch` against torchvision's names: the first time on a
    machine by importing torchvision (and caching the names per torchvision version), then from
    the cache, without torch; a bad arch is still answered with the closest names."""
    code = (
        "import sys\nfrom pipeline.commands.launch import main\n"
        "code = main(['--show-config', *sys.argv[1:]])\n"
        "print('torch loaded:', 'torch' in sys.modules, 'exit:', code)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}

    def show_config(*overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *overrides], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    first = show_config()
    assert "torch loaded: True exit: 0" in first.stdout, first.stderr
    (cache,) = (tmp_path / "masksuite").glob("torchvision-*-classification-models.json")
    assert "resnet18" in json.loads(cache.read_text())
    warm = show_config()
    assert "torch loaded: False exit: 0" in warm.stdout, warm.stderr
    bad = show_config("model.arch=resnet99")
    assert "torch loaded: False exit: 1" in bad.stdout, bad.stderr
    assert "model.arch='resnet99': must be one of torchvision's classification models" in bad.stderr
    assert "closest: resnet50" in bad.stderr

    cache.write_text(json.dumps(["resnet18", "__import__('os')", 3]))  # not a list of names
    repaired = show_config()
    assert "torch loaded: True exit: 0" in repaired.stdout, repaired.stderr
    assert len(json.loads(cache.read_text())) > 50  # rewritten from torchvision itself


def test_a_machine_without_submitit_or_kubernetes_still_launches_locally(tmp_path: Path) -> None:
    """A GPU node or an image without a back-end's library (submitit, kubernetes) runs the local
    executor; asking for the missing back-end says which package it needs."""
    absent = tmp_path / "absent"
    for module in ("submitit", "kubernetes"):
        (absent / module).mkdir(parents=True)
        (absent / module / "__init__.py").write_text(  # what Python raises for a missing one
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')"
        )
    env = {**os.environ, "PYTHONPATH": f"{absent}{os.pathsep}{REPO}"}

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.launch", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip

    shown = launch("--show-config")
    assert shown.returncode == 0 and "train:" in shown.stdout, shown.stderr
    refused = launch("--cluster", "slurm", "--dry-run")
    assert refused.returncode == 1, refused.stderr
    assert "error: --cluster slurm needs the Python package submitit" in refused.stderr
    assert "Traceback" not in refused.stderr
    # the Kubernetes executor imports its client only to talk to a cluster: --dry-run needs none
    manifests = launch(
        "--cluster", "k8s", "--dry-run", "store.root=s3://runs/x", "data.root=s3://d/x"
    )
    assert manifests.returncode == 0 and "kind: Job" in manifests.stdout, manifests.stderr
