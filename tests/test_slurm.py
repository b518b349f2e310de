"""The suite on a real one-node Slurm (slurm/local, `make slurm-up`) through submitit, and
`python -m pipeline.runs status|cancel`.

The `slurm_cluster` fixture starts the local cluster when none answers (root; installs slurm-wlm
and munge with apt-get when missing) and fails, never skips, when it cannot. The store is a real
SeaweedFS S3 server (tests/seaweed.py) or a local folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.commands.cli import run_job
from pipeline.commands.launch import main as launch_main
from pipeline.commands.runs import main as runs_main
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, DataError
from pipeline.orchestration.slurm import follow
from pipeline.run.state import run_store, stage_done, write_manifest
from pipeline.storage.store import Store, open_store
from tests.conftest import TINY_OVERRIDES
from tests.seaweed import SeaweedServer

REPO = Path(__file__).resolve().parents[1]
READY = ("idle", "mixed", "allocated", "completing")
LOCAL_MARK = "# masksuite local one-node Slurm"


def cluster_ready() -> bool:
    """True when sinfo answers and the node accepts jobs."""
    if shutil.which("sinfo") is None:
        return False
    try:
        result = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = [s.rstrip("*~#") for s in result.stdout.split()]
    return result.returncode == 0 and any(s in READY for s in states)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    """A Slurm cluster that accepts jobs: the one running here, or slurm/local/up.sh's (run again
    when it is ours: it does nothing unless its configuration changed)."""
    conf = Path("/etc/slurm/slurm.conf")
    ours = conf.exists() and conf.read_text().startswith(LOCAL_MARK)
    if ours or not cluster_ready():
        try:
            result = subprocess.run(
                ["bash", str(REPO / "slurm" / "local" / "up.sh")],
                capture_output=True,
                text=True,
                timeout=900,
            )
            output = (result.stdout + result.stderr)[-3000:]
        except (OSError, subprocess.TimeoutExpired) as e:
            output = str(e)
        if not cluster_ready():
            pytest.fail(
                "cannot start the local Slurm cluster (slurm/local/up.sh, `make slurm-up`; needs "
                f"root and apt-get, or a running Slurm):\n{output}",
                pytrace=False,
            )
    yield


def overrides(data: Path, store: str, tmp_path: Path, *extra: str) -> list[str]:
    """The tiny test config for the local cluster: one CPU per job, one training thread, on the
    CPU (the local model jobs get a GPU that only counts: `train.device=auto` would refuse it)."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("train.num_threads=")]
    return [
        "slurm=local",
        f"data.root={data}",
        f"store.root={store}",
        f"slurm.folder={tmp_path / 'slurm'}",
        "slurm.poll_seconds=1",
        "train.num_threads=1",
        "train.device=cpu",
        *tiny,
        *extra,
    ]


HOOKS = Path(__file__).parent / "hooks"


def hold_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, epoch: int) -> Path:
    """Makes the jobs launched next hold, on their first attempt, after saving `epoch`
    (tests/hooks/sitecustomize.py); returns the file a held job writes. A test then stops the
    job there, however fast this machine trains."""
    held = tmp_path / f"held-after-epoch-{epoch}"
    path = os.pathsep.join(p for p in (str(HOOKS), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("MASKSUITE_TEST_HOLD_AFTER_EPOCH", str(epoch))
    monkeypatch.setenv("MASKSUITE_TEST_HOLD_FILE", str(held))
    return held


def wait_for(path: Path, log: Path, seconds: float = 300) -> None:
    """Waits until a held job wrote `path` (its log `log` is shown when it never does)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        text = log.read_text() if log.exists() else "(no log yet)"
        assert time.monotonic() < deadline, (
            f"the job was not held in time; its log:\n{text[-3000:]}"
        )
        time.sleep(0.2)


def launch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `python -m pipeline.launch --cluster slurm ARGS` in this process."""
    code = launch_main(["--cluster", "slurm", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def submitted_jobs(out: str) -> dict[str, str]:
    """stage → job id from the launcher's output."""
    return dict(re.findall(r"^\s+(\S+)\s+job (\S+)$", out, flags=re.MULTILINE))


def run_id_of(out: str) -> str:
    return re.search(r"^run (\S+) submitted to Slurm", out, flags=re.MULTILINE).group(1)


def markers(run: Store) -> dict[str, bytes]:
    return {key: run.read_bytes(key) for key in run.list("stages")}


def check_submission(run: Store, data: Path) -> None:
    submission = pd.read_csv(io.BytesIO(run.read_bytes("submission.csv")))
    info = pd.read_csv(data / "eval" / "info.csv")
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    assert submission["ans"].between(0, 17).all()


def status(capsys: pytest.CaptureFixture[str], run_id: str, store: str) -> tuple[int, str]:
    code = runs_main(["status", run_id, f"store.root={store}", "--tail", "3"])
    return code, capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.slurm
def test_whole_suite_on_slurm_with_the_store_on_s3_survives_preemption(
    slurm_cluster: None,
    tiny_dataset: Path,
    s3_root: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    epochs = 5
    held = hold_training(monkeypatch, tmp_path, epoch=2)
    args = overrides(tiny_dataset, s3_root, tmp_path, f"train.epochs={epochs}")
    code, out, err = launch(capsys, *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)
    assert set(jobs) == {"prepare", "train-single", "predict-single", "vote", "publish"}
    job = jobs["train-single"]
    assert job == jobs["predict-single"]  # one job trains, then predicts
    log = tmp_path / "slurm" / run_id / f"{job}_0_log.err"

    # Preempt the training job after its second epoch (held there, saved), the way a scheduler
    # warns a job before preempting it or at its time limit (SIGTERM, then USR2: what
    # submitit's test helper sends).
    wait_for(held, log)
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    cfg = load_config([*args, f"run_id={run_id}"])
    run = run_store(cfg)
    assert follow(cfg, run) == 0, capsys.readouterr()
    progress = capsys.readouterr().out
    assert "train-single requeued" in progress and f"run {run_id} finished" in progress
    restarts = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, check=True
    ).stdout
    assert "Restarts=1" in restarts, restarts

    # The first attempt trained and saved epochs 1..2 (held there); the requeued attempt resumed
    # after epoch 2 and trained only 3..E.
    text = log.read_text()
    first = text.split("masksuite: requeueing job", 1)[0]
    resumed = text.split("resuming after epoch ", 1)
    assert len(resumed) == 2, f"the requeued job did not resume from its checkpoint:\n{text}"
    k = int(resumed[1].split()[0])
    before = [int(e) for e in re.findall(rf"train-single epoch (\d+)/{epochs}", first)]
    after = [int(e) for e in re.findall(rf"train-single epoch (\d+)/{epochs}", resumed[1])]
    assert before == [1, 2] and k == 2, (before, k, text[-3000:])
    assert after == list(range(k + 1, epochs + 1)), (after, k)
    metrics = run.read_json("models/single/metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))

    store = open_store(s3_root)
    assert json.loads(store.read_bytes("latest.json"))["run_id"] == run_id
    check_submission(run, tiny_dataset)
    assert set(markers(run)) == {f"stages/{s}.json" for s in jobs}

    code, shown = status(capsys, run_id, s3_root)
    assert code == 0 and f"run {run_id}: done" in shown
    for stage, job_id in jobs.items():
        assert re.search(rf"{stage}\s+done\s+{job_id}\b", shown), shown
    assert "Job completed successfully" in shown  # the tail of the jobs' logs

    # A finished run resumed submits nothing.
    code, out, err = launch(capsys, "--resume", run_id, *args)
    assert code == 0 and "nothing submitted" in out, out + err


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_model_blocks_the_vote_then_resume_redoes_only_what_is_missing(
    slurm_cluster: None,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = str(tmp_path / "store")  # a shared path works as well as S3
    # a failure only the job can find (the launch checks every value of the configuration):
    # weights that are no state dict
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a state dict")
    broken = ["+suite.models.broken.task=all", f"+suite.models.broken.weights={weights}"]
    code, out, err = launch(capsys, "--wait", *overrides(tiny_dataset, store, tmp_path, *broken))
    assert code == 1, out + err
    run_id = run_id_of(out)
    assert "model broken failed in train-broken" in err and "broken.pt" in err, err

    run = open_store(store).child(f"runs/{run_id}")
    assert not run.exists("submission.csv") and not open_store(store).exists("latest.json")
    code, shown = status(capsys, run_id, store)
    assert code == 1 and f"run {run_id}: failed" in shown
    failed = r"train-broken\s+failed\s+\S+\s+ConfigError: model weights \S+broken.pt"
    assert re.search(failed, shown), shown
    assert re.search(r"vote\s+(blocked|cancelled)", shown), shown
    assert re.search(r"predict-single\s+done", shown), shown
    done_before = markers(run)
    assert set(done_before) == {f"stages/{s}.json" for s in ("prepare", "train-single",
                                                              "predict-single")}  # fmt: skip

    # Fixed, the run is resumed: only the broken model and the vote are submitted and run.
    fixed = ["+suite.models.broken.task=all", "+suite.models.broken.weights=null"]
    args = overrides(tiny_dataset, store, tmp_path, *fixed)
    code, out, err = launch(capsys, "--resume", run_id, "--wait", *args)
    assert code == 0, out + err
    assert set(submitted_jobs(out)) == {"train-broken", "predict-broken", "vote", "publish"}
    after = markers(run)
    assert {k: after[k] for k in done_before} == done_before  # nothing complete was redone
    check_submission(run, tiny_dataset)
    assert json.loads(open_store(store).read_bytes("latest.json"))["run_id"] == run_id


@pytest.mark.slow
@pytest.mark.slurm
def test_cancel_stops_every_queued_job_of_the_run(
    slurm_cluster: None, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every job is still queued when cancelled, however fast this machine: held with --begin
    (without it, prepare could finish before the cancel and show "done")."""
    store = str(tmp_path / "store")
    args = overrides(tiny_dataset, store, tmp_path, "++slurm.extra={begin: now+3600}")
    code, out, err = launch(capsys, *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)

    assert runs_main(["cancel", run_id, f"store.root={store}"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: cancelled job(s)" in out
    assert set(out.split("job(s)")[1].split()) == set(jobs.values())
    # cancelled jobs leave the queue through COMPLETING, which status counts as still running:
    # wait for Slurm to finish them (a state to reach, not a time to guess)
    from pipeline.orchestration.slurm import queue_states

    deadline = time.monotonic() + 120
    while active := [j for j, e in queue_states(sorted(set(jobs.values()))).items() if e.active]:
        assert time.monotonic() < deadline, f"cancelled jobs still in the queue: {active}"
        time.sleep(0.5)

    code, shown = status(capsys, run_id, store)
    assert code == 1 and f"run {run_id}: failed" in shown
    assert re.search(r"prepare\s+cancelled", shown) and re.search(r"vote\s+cancelled", shown)
    assert runs_main(["cancel", run_id, f"store.root={store}"]) == 0
    assert "nothing queued or running" in capsys.readouterr().out


def test_a_failed_stage_job_records_why_for_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "store")
    args = [f"store.root={store}", "run_id=20260101T000000Z-000000", "model_name=single"]
    write_manifest(load_config(args))

    def train_model(cfg: object, name: str) -> None:
        raise DataError("shard train-00003 is truncated")

    monkeypatch.setattr("pipeline.orchestration.graph.train_model", train_model)
    assert run_job("train", args) == 1
    assert capsys.readouterr().err.strip() == "error: shard train-00003 is truncated"
    code, shown = status(capsys, "20260101T000000Z-000000", store)
    assert code == 1 and "run 20260101T000000Z-000000: failed" in shown
    assert "model single failed in train-single" in shown
    assert re.search(r"train-single\s+failed\s+-\s+DataError: shard train-00003", shown), shown
    assert re.search(r"vote\s+blocked\s+-\s+train-single failed", shown), shown


def test_a_requeue_that_raises_through_the_stage_is_not_recorded_as_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm kills the job step while submitit's `scontrol requeue` runs in the signal handler
    (seen on the local cluster: CalledProcessError, died with SIGTERM); the exception goes up
    through the stage, and the stage must stay "requeued" for status, not "failed"."""
    from omegaconf import OmegaConf

    import pipeline.orchestration.graph
    from pipeline.orchestration.slurm import StageJob
    from pipeline.run.state import read_stage_state

    store = str(tmp_path / "store")
    args = [f"store.root={store}", "run_id=20260101T000000Z-000000", "tracking.mode=disabled"]
    cfg = load_config(args)
    write_manifest(cfg)
    job = StageJob(OmegaConf.to_container(cfg, resolve=True), "model", "single")

    def killed_while_requeuing(cfg: object, name: str) -> None:
        job.checkpoint()  # what submitit's USR2 handler calls, then `scontrol requeue`
        raise subprocess.CalledProcessError(-15, ["scontrol", "requeue", "183"])

    monkeypatch.setattr(pipeline.orchestration.graph, "train_model", killed_while_requeuing)
    with pytest.raises(subprocess.CalledProcessError):
        job()
    run = run_store(cfg)
    assert read_stage_state(run, "train-single")["state"] == "requeued"

    def broken(cfg: object, name: str) -> None:
        raise DataError("shard train-00003 is truncated")

    monkeypatch.setattr(pipeline.orchestration.graph, "train_model", broken)
    with pytest.raises(DataError):
        job()  # the requeued job starts afresh: a real failure is recorded as one
    record = read_stage_state(run, "train-single")
    assert record["state"] == "failed" and "train-00003" in record["error"], record


def test_a_warning_signal_after_the_jobs_last_stage_neither_requeues_nor_fails_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm's warning signal can come while a job whose stages are all done is exiting (a time
    limit close to the work's length). Handled, it would requeue the finished job or end it as
    failed, and Slurm would cancel the jobs that wait for it; once the work is done it is ignored.
    The handler submitit installs in a job is stood in for by one that counts its calls."""
    from omegaconf import OmegaConf

    import pipeline.orchestration.graph
    from pipeline.orchestration.slurm import StageJob, warning_signal

    cfg = load_config([f"store.root={tmp_path / 'store'}", "run_id=20260101T000000Z-000000"])
    write_manifest(cfg)
    handled: list[int] = []

    def prepare(cfg: object) -> dict[str, Any]:
        os.kill(os.getpid(), warning_signal())  # during the work: submitit's handler runs
        return {"images": {}}

    monkeypatch.setattr(pipeline.orchestration.graph, "prepare", prepare)
    previous = signal.signal(warning_signal(), lambda signum, frame: handled.append(signum))
    try:
        assert StageJob(OmegaConf.to_container(cfg, resolve=True), "prepare")().startswith(
            "prepare done"
        )
        assert handled == [warning_signal()]
        os.kill(os.getpid(), warning_signal())  # the job is exiting: ignored
        time.sleep(0.1)
        assert handled == [warning_signal()]
    finally:
        signal.signal(warning_signal(), previous)
    assert stage_done(run_store(cfg), "prepare")


def test_the_wckey_is_configurable_or_left_out(tmp_path: Path) -> None:
    """submitit writes `--wckey=submitit` by default; sites that account by wckey choose their
    own, others get none. Checked in the sbatch script submitit itself writes."""
    from submitit.slurm.slurm import _make_sbatch_string

    from pipeline.orchestration.slurm import sbatch_parameters

    def script(*overrides: str) -> str:
        scfg = load_config(list(overrides)).slurm
        return _make_sbatch_string(command="true", folder=tmp_path,
                                   **sbatch_parameters(scfg, "model", tmp_path))  # fmt: skip

    assert "--wckey" not in script()
    assert "#SBATCH --wckey=vision-nightly" in script("slurm.wckey=vision-nightly")


@pytest.mark.slurm
def test_a_second_launch_while_a_run_of_the_same_inputs_is_queued_submits_nothing(
    slurm_cluster: None, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tonight's launch finds last night's run (same fingerprint) still queued: it says so and
    submits nothing; --force submits a second run anyway. The jobs are held with --begin."""
    store = str(tmp_path / "store")
    args = overrides(tiny_dataset, store, tmp_path, "++slurm.extra={begin: now+3600}")
    code, out, err = launch(capsys, *args)
    assert code == 0, out + err
    first = run_id_of(out)
    runs = [first]
    try:
        code, out, err = launch(capsys, *args)
        assert code == 0, out + err
        assert f"run {first} of the same data and configuration" in out, out
        assert "not submitting a second run" in out and "submitted to Slurm" not in out, out
        assert sorted(p.name for p in (tmp_path / "store" / "runs").iterdir()) == [first]

        code, out, err = launch(capsys, "--force", *args)
        assert code == 0, out + err
        runs.append(run_id_of(out))
        assert runs[1] != first
    finally:
        for run_id in runs:
            runs_main(["cancel", run_id, f"store.root={store}"])
        capsys.readouterr()


@pytest.mark.slurm
@pytest.mark.s3
def test_the_nightly_chain_reads_its_credentials_from_its_env_file_and_never_requeues(
    slurm_cluster: None,
    tiny_dataset: Path,
    s3_root: str,
    seaweed: SeaweedServer,
    tmp_path: Path,
) -> None:
    """slurm/nightly.sbatch started from a shell without any AWS variable: the S3 keys and the
    overrides come from the env file; tomorrow's job is queued (no requeue, singleton, begin)."""
    launch_overrides = overrides(tiny_dataset, s3_root, tmp_path)
    env_file = tmp_path / "nightly.env"
    lines = [f"MASKSUITE_DIR={REPO}", f"PYTHON={sys.executable}", "NIGHTLY_AT=now+3600",
             f"MASKSUITE_OVERRIDES='{' '.join(launch_overrides)}'",
             *(f"{k}={v}" for k, v in seaweed.env().items())]  # fmt: skip
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    assert not any(k.startswith("AWS_") for k in clean)
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--export=NONE,MASKSUITE_ENV_FILE={env_file}",
         f"--output={tmp_path}/nightly-%j.log", str(REPO / "slurm" / "nightly.sbatch")],
        env=clean, capture_output=True, text=True, check=True,
    )  # fmt: skip
    tonight = submitted.stdout.strip().split(";")[0]
    store = open_store(s3_root)
    try:
        log = tmp_path / f"nightly-{tonight}.log"
        deadline = time.monotonic() + 180
        while "submitted to Slurm" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(1)
        runs = {k.split("/")[1] for k in store.list("runs")}
        assert len(runs) == 1 and store.exists(f"runs/{runs.pop()}/scheduler.json")

        squeue = ["squeue", "--noheader", "--name=masksuite-nightly", "-o", "%i"]
        queue = subprocess.run(squeue, capture_output=True, text=True, check=True).stdout.split()
        tomorrow = [j for j in queue if j != tonight]
        assert len(tomorrow) == 1, queue
        shown = subprocess.run(["scontrol", "show", "job", tomorrow[0]], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
        assert "Requeue=0" in shown, shown
        # a singleton: shown as its Dependency only while tonight's job still runs (Slurm clears
        # a satisfied dependency), so read it from the job's own script, whenever tonight ended
        script = subprocess.run(["scontrol", "write", "batch_script", tomorrow[0], "-"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "#SBATCH --dependency=singleton" in script, script[:2000]
        assert "Dependency=singleton" in shown or "Dependency=(null)" in shown, shown
        assert "JobState=PENDING" in shown and "StartTime=" in shown
        # its log goes to outputs/slurm/ (git-ignored), not loose into the repository root
        assert f"StdOut={REPO}/outputs/slurm/nightly-{tomorrow[0]}.log" in shown, shown
    finally:
        subprocess.run(["scancel", "--name=masksuite-nightly"], check=False)
        for run_id in {k.split("/")[1] for k in store.list("runs")}:
            runs_main(["cancel", run_id, f"store.root={s3_root}"])


@pytest.mark.slurm
def test_a_jobs_step_gets_every_cpu_the_job_asked_for(slurm_cluster: None, tmp_path: Path) -> None:
    """Slurm 22.05 to 23.02's srun is documented not to inherit --cpus-per-task: without
    SRUN_CPUS_PER_TASK the step submitit runs the stage in would be bound to one CPU, and 8
    training threads would share one core. The local cluster binds tasks to CPUs
    (task/affinity); its Debian 22.05.8 gives the step every CPU even without the variable, so
    this checks the outcome users need, not the bug itself."""
    import submitit

    from pipeline.orchestration.slurm import sbatch_parameters

    cpus = len(os.sched_getaffinity(0))
    assert cpus >= 2, "this check needs a machine with at least 2 CPUs"
    scfg = load_config(["slurm=local", f"slurm.stages.model.cpus={cpus}"]).slurm
    executor = submitit.SlurmExecutor(folder=tmp_path / "affinity")
    executor.update_parameters(**sbatch_parameters(scfg, "model", tmp_path / "affinity"))
    job = executor.submit(os.sched_getaffinity, 0)
    assert len(job.result()) == cpus


def job_fields(job: str) -> dict[str, str]:
    """`scontrol show job` as field → value (a finished job stays visible for MinJobAge)."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", shown))


@pytest.mark.slow
@pytest.mark.slurm
def test_the_readme_default_slurm_config_runs_with_a_gpu_per_model_job(
    slurm_cluster: None, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/slurm.md's example as written (the default slurm group: 8 CPUs, 32 GB and one GPU per
    model job; partition gpu, an account), on the local cluster whose 2 GPUs only count."""
    store = str(tmp_path / "store")
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("train.num_threads=")]
    args = [f"data.root={tiny_dataset}", f"store.root={store}", "slurm.partition=gpu",
            "slurm.stages.model.gpus=1", "slurm.account=vision", "train.device=cpu",
            f"slurm.folder={tmp_path / 'slurm'}", "slurm.poll_seconds=1", *tiny]  # fmt: skip
    code, out, err = launch(capsys, "--wait", *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)
    check_submission(open_store(store).child(f"runs/{run_id}"), tiny_dataset)

    model = job_fields(jobs["train-single"])
    assert model["Partition"] == "gpu" and model["Account"] == "vision", model
    assert model["NumCPUs"] == "8" and model["TresPerNode"] == "gres:gpu:1", model
    prepare = job_fields(jobs["prepare"])
    assert prepare["NumCPUs"] == "4" and "TresPerNode" not in prepare, prepare


def test_a_model_job_gets_one_gpu_at_most(tmp_path: Path) -> None:
    from pipeline.orchestration.slurm import sbatch_parameters

    scfg = load_config(["slurm.stages.model.gpus=1"]).slurm
    assert sbatch_parameters(scfg, "model", tmp_path)["gpus_per_node"] == 1
    scfg = load_config(["slurm.stages.model.gpus=2"]).slurm
    with pytest.raises(ConfigError, match=r"slurm.stages.model.gpus=2: training is single-device"):
        sbatch_parameters(scfg, "model", tmp_path)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_that_slurm_requeues_resumes_training_where_it_stopped(
    slurm_cluster: None,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PreemptMode=REQUEUE (or an admin's `scontrol requeue`): Slurm kills the job (SIGTERM,
    which submitit ignores, then SIGKILL) and queues it again with no warning signal; the new
    start skips done stages and resumes from last.json. (A SIGKILL in the middle of a save:
    tests/test_faults.py `test_a_job_killed_between_any_two_writes_...`.)"""
    epochs = 6
    held = hold_training(monkeypatch, tmp_path, epoch=2)
    store = str(tmp_path / "store")
    args = overrides(tiny_dataset, store, tmp_path, f"train.epochs={epochs}")
    code, out, err = launch(capsys, *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)
    job = jobs["train-single"]
    log = tmp_path / "slurm" / run_id / f"{job}_0_log.err"
    wait_for(held, log)  # epoch 2 saved, the job held: it cannot finish before the requeue
    subprocess.run(["scontrol", "requeue", job], check=True)

    cfg = load_config([*args, f"run_id={run_id}"])
    run = run_store(cfg)
    assert follow(cfg, run) == 0, capsys.readouterr()
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert "Restarts=1" in shown, shown
    text = log.read_text()
    resumed = re.findall(r"resuming after epoch (\d+)", text)
    assert resumed == ["2"], text[-3000:]
    assert "from scratch" not in text, text[-3000:]
    metrics = run.read_json("models/single/metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    check_submission(run, tiny_dataset)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_that_reaches_its_time_limit_requeues_itself_and_resumes(
    slurm_cluster: None,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real time limit: the model job may run 2 minutes and its first attempt is held after
    epoch 2 (so it needs longer, however fast this machine trains). Slurm's warning signal
    (USR2, 45 s before the limit, or up to a minute earlier: Slurm checks limits periodically)
    makes the job requeue itself; every start resumes from last.json, until the training is
    done within the requeues allowed."""
    epochs = 6
    hold_training(monkeypatch, tmp_path, epoch=2)
    store = str(tmp_path / "store")
    args = overrides(tiny_dataset, store, tmp_path, f"train.epochs={epochs}",
                     "slurm.stages.model.time_min=2", "slurm.signal_delay_s=45",
                     "slurm.max_requeues=12")  # fmt: skip
    code, out, err = launch(capsys, "--wait", *args)
    assert code == 0, out + err
    run_id, jobs = run_id_of(out), submitted_jobs(out)
    job = jobs["train-single"]
    fields = job_fields(job)
    assert fields["TimeLimit"] == "00:02:00", fields
    restarts = int(fields["Restarts"])
    log = (tmp_path / "slurm" / run_id / f"{job}_0_log.err").read_text()
    assert restarts >= 1 and log.count("Job has timed out") == restarts, log[-3000:]
    resumed = [int(e) for e in re.findall(r"resuming after epoch (\d+)", log)]
    assert len(resumed) == restarts and resumed == sorted(resumed), resumed
    # held after epoch 2 on its first attempt; a later limit reached after the last epoch's
    # last.json but before the marker resumes "after epoch <epochs>": only the final evaluation
    assert resumed[0] == 2 and resumed[-1] <= epochs, resumed
    run = open_store(store).child(f"runs/{run_id}")
    metrics = run.read_json("models/single/metrics.json")
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    check_submission(run, tiny_dataset)


@pytest.mark.slow
@pytest.mark.slurm
def test_new_photos_are_classified_by_a_slurm_job(
    slurm_cluster: None, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import submitit

    from pipeline.commands.infer import main as infer_main
    from pipeline.orchestration.local import run_local

    store = str(tmp_path / "store")
    cfg = load_config([f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES])
    run_local(cfg)
    photos = tmp_path / "new"
    shutil.copytree(tiny_dataset / "eval" / "images", photos)
    folder = tmp_path / "slurm"
    args = ["--cluster", "slurm", "slurm=local", f"slurm.folder={folder}", f"store.root={store}",
            f"infer.input={photos}", "train.num_threads=1"]  # fmt: skip
    assert infer_main(args) == 0
    out = capsys.readouterr().out
    job_id = re.search(rf"infer job (\S+) submitted for run {cfg.run_id}", out).group(1)
    summary = submitit.SlurmJob(folder=folder / "infer", job_id=job_id).result()
    eval_images = len(list(photos.glob("*.jpg")))
    assert summary.startswith(f"infer: {eval_images} photo(s) classified by run {cfg.run_id}")
    (csv,) = (Path(store) / "infer" / "new" / "classes").glob("*.csv")
    answers = pd.read_csv(csv).set_index("image")["class"].sort_index()
    submission = pd.read_csv(io.BytesIO(run_store(cfg).read_bytes("submission.csv")))
    assert answers.equals(submission.set_index("ImageID")["ans"].sort_index())
