"""Slurm jobs that run in a container whose image has no Slurm client (pyxis/enroot, Apptainer
sites): requeued from the batch script on the host (pipeline/orchestration/slurm_requeue.py).

What is faked: Apptainer. `slurm.container.runtime=apptainer` runs the jobs through
tests/hooks/bin/apptainer, which runs `podman run` of the suite's image (MASKSUITE_IMAGE, as the
pod tests; never rebuilt here) with the job folder, the data and this checkout bound at the same
paths (this checkout's code first on PYTHONPATH, so the code under test runs in the image's
Python). Slurm, the signal and the requeue are real (the local cluster).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.orchestration.slurm import follow, sbatch_parameters
from pipeline.run.state import run_store
from tests.kubelet import IMAGE, podman_env
from tests.test_slurm import (
    HOOKS,
    REPO,
    check_submission,
    hold_training,
    job_fields,
    launch,
    overrides,
    run_id_of,
    slurm_cluster,  # noqa: F401 (a fixture)
    submitted_jobs,
    wait_for,
)


def test_the_time_limit_signal_goes_to_the_batch_shell_which_requeues_from_the_host(
    tmp_path: Path,
) -> None:
    """The batch script, not the job inside the container, calls `scontrol requeue`."""
    from submitit.slurm.slurm import _make_sbatch_string

    for runtime in ("none", "pyxis", "apptainer"):
        scfg = load_config([f"slurm.container.runtime={runtime}", "slurm.container.image=img",
                            "slurm.signal_delay_s=90", "slurm.max_requeues=2"]).slurm  # fmt: skip
        params = sbatch_parameters(scfg, "model", tmp_path)
        script = _make_sbatch_string(command="python x", folder=tmp_path, **params)
        assert "#SBATCH --signal=B:USR2@90" in script, script
        assert "trap masksuite_forward USR2" in script
        assert 'command scontrol requeue "$SLURM_JOB_ID"' in script
        assert f"export MASKSUITE_REQUEUE_FILE={tmp_path}/requeue-" in script
        assert '"${SLURM_RESTART_COUNT:-0}" -ge 2' in script
        assert ("--container-image=img" in script) == (runtime == "pyxis"), script


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.image
def test_a_job_in_a_container_without_slurm_is_requeued_from_the_host_and_resumes(
    slurm_cluster: None,  # noqa: F811 (the fixture imported above)
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model job runs in the image (no scontrol, no munge there) and is held after epoch 2;
    USR2 is sent to its batch shell, as `--signal=B:USR2@<delay>` does before the time limit.
    The batch shell forwards it to the job, which records "requeued" and asks for the requeue;
    the batch shell requeues it from the host and the new start resumes after epoch 2."""
    no_slurm = subprocess.run(
        ["podman", "run", "--rm", "--pull=never", IMAGE, "sh", "-c", "command -v scontrol"],
        env=podman_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert no_slurm.returncode != 0 and not no_slurm.stdout, (no_slurm.stdout, no_slurm.stderr)

    epochs = 5
    held = hold_training(monkeypatch, tmp_path, epoch=2)
    monkeypatch.setenv("PATH", f"{HOOKS / 'bin'}{os.pathsep}{os.environ['PATH']}")
    binds = ",".join(f"--bind,{p}" for p in (REPO, tmp_path, tiny_dataset))
    store = str(tmp_path / "store")
    args = overrides(tiny_dataset, store, tmp_path, f"train.epochs={epochs}",
                     "slurm.container.runtime=apptainer", f"slurm.container.image={IMAGE}",
                     f"slurm.container.args=[{binds}]")  # fmt: skip
    code, out, err = launch(capsys, *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)
    job = jobs["train-single"]
    log = tmp_path / "slurm" / run_id / f"{job}_0_log.err"
    wait_for(held, log)
    where = json.loads(held.read_text())
    assert where["container"] and where["scontrol"] is None, where  # held in the image
    subprocess.run(["scancel", "--batch", "--signal=USR2", job], check=True)

    cfg = load_config([*args, f"run_id={run_id}"])
    run = run_store(cfg)
    assert follow(cfg, run) == 0, capsys.readouterr()
    progress = capsys.readouterr().out
    assert "train-single requeued" in progress, progress
    assert job_fields(job)["Restarts"] == "1"
    text = log.read_text()
    assert f"masksuite: requeueing job {job} from its batch script" in text, text[-3000:]
    assert "scontrol" not in text.split("masksuite: requeueing job", 1)[0], text[-3000:]
    assert re.findall(r"resuming after epoch (\d+)", text) == ["2"], text[-3000:]
    metrics = run.read_json("models/single/metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    check_submission(run, tiny_dataset)
