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
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.orchestration.slurm import follow, sbatch_parameters
from pipeline.orchestration.slurm_requeue import REQUEUE_FILE_VAR
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


def batch_script(tmp_path: Path, step: str, max_requeues: int = 2) -> Path:
    """A batch script with the requeue lines sbatch_parameters writes, then `srun bash STEP`
    (submitit's command line), with stand-ins for srun (runs its command) and scontrol (writes
    its arguments to tmp_path/scontrol.calls) first on PATH."""
    from pipeline.orchestration.slurm_requeue import host_requeue_lines

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.calls\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "step.sh").write_text(step)
    lines = host_requeue_lines(tmp_path, "USR2", max_requeues)
    script = tmp_path / "batch.sh"
    script.write_text("\n".join(["#!/bin/bash", *lines, f"srun bash {tmp_path}/step.sh", ""]))
    return script


def run_batch(tmp_path: Path, script: Path, restarts: int, *, signal_it: bool) -> tuple[int, str]:
    """Run `script` as Slurm would (job 42, restarted `restarts` times); with `signal_it`, send
    USR2 to the batch shell once the step has started (it touches tmp_path/started)."""
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": str(restarts)}  # fmt: skip
    proc = subprocess.Popen(["bash", str(script)], env=env, stderr=subprocess.PIPE, text=True)
    if signal_it:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():  # a barrier: the step is running
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


#: A job step as submitit's handler behaves with the requeue file set: on USR2 it asks for the
#: requeue and exits (255, submitit's status); without a signal it ends with status 3.
STEP = f"""trap 'echo asked > "${REQUEUE_FILE_VAR}"; exit 255' USR2
touch "$(dirname "$0")/started"
[ -n "$SIGNAL_EXPECTED" ] || exit 3
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize(("restarts", "requeued"), [(0, True), (1, True), (2, False)])
def test_the_batch_shell_forwards_the_signal_and_requeues_while_requeues_are_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restarts: int, requeued: bool
) -> None:
    """The shell part of slurm_requeue.py with stand-ins for srun and scontrol (the real ones:
    the slow tests above and in tests/test_slurm.py)."""
    monkeypatch.setenv("SIGNAL_EXPECTED", "1")
    script = batch_script(tmp_path, STEP, max_requeues=2)
    code, err = run_batch(tmp_path, script, restarts, signal_it=True)
    calls = tmp_path / "scontrol.calls"
    if requeued:
        assert code == 0 and calls.read_text() == "requeue 42\n", (code, err)
        assert "masksuite: requeueing job 42 from its batch script" in err
    else:
        assert code == 1 and not calls.exists(), (code, err)
        assert "job 42 not requeued: requeued 2 time(s) already (slurm.max_requeues=2)" in err


def test_a_step_that_ends_by_itself_is_not_requeued_and_keeps_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGNAL_EXPECTED", raising=False)
    (tmp_path / "requeue-42").write_text("a request left by an earlier start\n")
    code, err = run_batch(tmp_path, batch_script(tmp_path, STEP), 0, signal_it=False)
    assert code == 3 and not (tmp_path / "scontrol.calls").exists(), (code, err)


def test_a_stage_job_asks_its_batch_script_for_the_requeue_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """StageJob.checkpoint (submitit's USR2 handler calls it) in a job of such a batch script:
    the stage stays "requeued", the request file is written, and the process ends before
    submitit could run `scontrol requeue` itself."""
    from omegaconf import OmegaConf

    import pipeline.orchestration.graph
    from pipeline.orchestration.slurm import REQUEUE_EXIT_STATUS, StageJob
    from pipeline.run.state import read_stage_state, write_manifest

    request = tmp_path / "requeue-7"
    monkeypatch.setenv(REQUEUE_FILE_VAR, str(request))
    args = [f"store.root={tmp_path / 'store'}", "run_id=20260101T000000Z-000000",
            "tracking.mode=disabled"]  # fmt: skip
    cfg = load_config(args)
    write_manifest(cfg)
    job = StageJob(OmegaConf.to_container(cfg, resolve=True), "model", "single")

    def signalled(cfg: object, name: str) -> None:
        job.checkpoint()  # what submitit's handler calls first

    monkeypatch.setattr(pipeline.orchestration.graph, "train_model", signalled)
    with pytest.raises(SystemExit) as exited:
        job()
    assert exited.value.code == REQUEUE_EXIT_STATUS
    assert "preempted or reached its time limit" in request.read_text()
    assert read_stage_state(run_store(cfg), "train-single")["state"] == "requeued"
