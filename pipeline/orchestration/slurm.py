"""Run a suite on Slurm with submitit: `python -m pipeline.launch --cluster slurm [--wait]`.

Three kinds of jobs, resources from the `slurm` config group (pipeline/conf/slurm/):

    prepare ──afterok──▶ model array: one task per model (train, then predict) ──afterok──▶ vote

Preemption and time limits: every job is a submitit `Checkpointable`. Slurm sends USR2 to the
batch shell `slurm.signal_delay_s` before the time limit, which forwards it to the job step (a
preempting scheduler or an admin signals the step directly); the handler records the stage as
requeued and asks the batch shell, on the host, to requeue the job (slurm_requeue.py: no Slurm
client is needed inside a container). The job starts over and skips what is done — training
resumes from `models/<name>/last.json` (and its `last-<hex>.safetensors`), written to the store
after every epoch. Static AWS keys reach the jobs in a 0600 file, never in their environment
(slurm_credentials.py).
A stage that raises records why (`jobs/<stage>.json`) and fails its job; Slurm then cancels the
jobs that depended on it (`--kill-on-invalid-dep=yes`), so a failed model means no vote.

`--resume RUN_ID` submits only what is missing: done stages get no job at all. The launcher
records the job ids and logs in the run's `scheduler.json`, which `python -m pipeline.runs status`
and `cancel` read.
"""

from __future__ import annotations

import copy
import logging
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import submitit
from omegaconf import DictConfig
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.helpers import Checkpointable

from pipeline.core.config import plain_config
from pipeline.core.errors import ConfigError, PipelineError, StageFailed
from pipeline.core.logs import setup_logging
from pipeline.core.stored_config import stored_config
from pipeline.orchestration.checks import CONTAINER_RUNTIMES, check_config
from pipeline.orchestration.executor import LaunchRequest, pinned_infer_config
from pipeline.orchestration.graph import KINDS, Stage, job_groups, run_stages, suite_graph
from pipeline.orchestration.slurm_credentials import credentials_in_a_file
from pipeline.orchestration.slurm_requeue import (
    host_requeue_lines,
    requeue_requested,
    warning_signal_parameter,
)
from pipeline.orchestration.status import (
    QueueEntry,
    RunStatus,
    cancel_run,
    format_status,
    progress_line,
    read_submissions,
    record_submission,
    run_status,
    valid_job_id,
)
from pipeline.run.context import open_run
from pipeline.run.history import run_exit_status, run_ids, summary_lines
from pipeline.run.results import read_vote
from pipeline.run.state import one_line, record_stage_state, root_store, run_store, stage_done
from pipeline.storage.run_layout import FINGERPRINT_KEY
from pipeline.storage.store import Store

log = logging.getLogger(__name__)

#: How a job that asked its batch script for a requeue ends (as submitit's own requeue: -1).
REQUEUE_EXIT_STATUS = 255


# --------------------------------------------------------------------------------------------
# inside a job


class StageJob(Checkpointable):
    """One Slurm job of a run: `prepare`, `model` (train then predict one model) or `vote`.

    Holds the resolved config as plain data; each stage it runs is skipped when done, so a
    requeued job carries on where it stopped. submitit calls `checkpoint` on the warning signal.
    """

    def __init__(self, config: dict[str, Any], kind: str, model: str | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown job kind {kind!r}; valid: {list(KINDS)}")
        self.config = config
        self.kind = kind
        self.model = model
        self.current: str | None = None  # the stage in progress, for checkpoint()
        self.requeuing = False  # set by checkpoint(): what is raised from now on is the requeue

    def stages(self, cfg: DictConfig) -> list[Stage]:
        """The stages this job runs, in order: its group of the stage graph."""
        return job_groups(suite_graph(cfg), self.kind)[self.model]

    def __call__(self) -> str:
        setup_logging()
        self.requeuing = False  # the pickled copy a requeued job starts from was taken after it
        cfg = job_config(self.config)

        def starting(stage: Stage) -> None:
            self.current = stage.name

        # A failure is recorded for status and fails the job, but not the requeue itself: Slurm
        # kills the job step while submitit's `scontrol requeue` runs in the signal handler,
        # which then raises through the stage; the job is queued again and its record must keep
        # saying "requeued".
        run_stages(cfg, self.stages(cfg), where=job_where(), on_start=starting,
                   record_failure=lambda: not self.requeuing)  # fmt: skip
        self.current = None
        # Every stage is done: a warning signal from now on (the time limit reached while the
        # job exits) must not requeue it, nor end it as failed and cancel the jobs after it.
        signal.signal(warning_signal(), signal.SIG_IGN)
        return f"{self.kind} done: run_id={cfg.run_id}"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called on Slurm's warning signal: record the stage as requeued and have this job
        requeued (by its batch script on the host, see exit_for_host_requeue).

        The training state is already in the store (last.json after every epoch), so nothing else
        needs saving; the requeued job skips done stages and resumes training from last.json.
        """
        if self.current is not None:
            reason = "preempted or reached its time limit; requeued"
            try:  # only for status: never let it stop the requeue
                run = run_store(job_config(self.config))
                record_stage_state(run, self.current, "requeued", reason=reason, **job_where())
            except PipelineError as e:
                log.warning("could not record the requeue of %s: %s", self.current, e)
        self.requeuing = True
        exit_for_host_requeue(f"{self.kind} job")
        return super().checkpoint(*args, **kwargs)


def exit_for_host_requeue(what: str) -> None:
    """In a job whose batch script requeues it from the host (slurm_requeue.py): ask it to,
    and end this process, so that submitit never runs its own `scontrol requeue` (which a
    container image lacks). Elsewhere (a job submitted by other means) return: submitit
    requeues it as before."""
    if requeue_requested(f"{what}: preempted or reached its time limit"):
        log.warning("%s: asked the batch script to requeue this job; exiting", what)
        raise SystemExit(REQUEUE_EXIT_STATUS)


def warning_signal() -> signal.Signals:
    """The signal submitit asks Slurm to send before the time limit (USR2, or
    $SUBMITIT_PREEMPT_SIGNAL) and handles by calling `checkpoint`."""
    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]


class InferJob(Checkpointable):
    """A `python -m pipeline.infer --cluster slurm` batch as one Slurm job. Requeued on the
    warning signal like the stages; a requeued batch classifies what it has not recorded yet."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> str:
        setup_logging()
        from pipeline.stages.infer import format_summary, infer

        summary = format_summary(infer(job_config(self.config)))
        signal.signal(warning_signal(), signal.SIG_IGN)  # done: as StageJob, never requeued now
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called on Slurm's warning signal: have this job requeued (see StageJob.checkpoint)."""
        exit_for_host_requeue("infer job")
        return super().checkpoint(*args, **kwargs)


def submit_infer(cfg: DictConfig) -> str:
    """Submit one infer job (resources `slurm.stages.infer`); returns what to tell the user."""
    cfg = copy.deepcopy(cfg)
    cfg.store.root = absolute_local(str(cfg.store.root))
    for key in ("input", "output"):
        if cfg.infer.get(key):
            cfg.infer[key] = absolute_local(str(cfg.infer[key]))
    scfg = cfg.slurm
    folder = Path(absolute_local(str(scfg.folder))) / "infer"
    executor = slurm_executor(scfg, folder)
    job = submit(executor, scfg, "infer", [InferJob(plain_config(cfg))], None)[0]
    return f"infer job {job.job_id} submitted for run {cfg.run_id} (log: {job.paths.stderr})"


def slurm_executor(scfg: DictConfig, folder: Path) -> submitit.SlurmExecutor:
    """submitit's executor for jobs whose files go to `folder`; ConfigError without Slurm."""
    try:
        return submitit.SlurmExecutor(
            folder=folder, max_num_timeout=int(scfg.max_requeues), python=python_command(scfg)
        )
    except RuntimeError as e:  # no srun on this machine
        raise ConfigError(
            f"Slurm is not available here ({e}); on this machine, `make slurm-up` starts a "
            "one-node cluster"
        ) from e


def job_config(config: dict[str, Any]) -> DictConfig:
    """The run's config inside a job (`train.num_threads` unset = the job's CPUs, see
    pipeline.ml.device.available_cpus)."""
    cfg = stored_config(config, "the job's config")  # resolved at launch: taken literally
    check_config(cfg)  # as at launch: a job can be started (or its config edited) by hand
    return cfg


def job_where() -> dict[str, str]:
    """Job id and log of the running submitit job (empty outside one)."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return {}
    return {"job_id": env.job_id, "log": str(env.paths.stderr)}


# --------------------------------------------------------------------------------------------
# submission


def sbatch_parameters(scfg: DictConfig, kind: str, folder: Path) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one kind of job, whose files go to `folder`, from
    the `slurm` config group."""
    stage = scfg.stages[kind]
    usr_sig = submitit.JobEnvironment.USR_SIG
    extra = {
        "requeue": True,
        # the warning signal to the batch shell, which requeues from the host (slurm_requeue.py)
        "signal": warning_signal_parameter(usr_sig, int(scfg.signal_delay_s)),
        **dict(scfg.extra),
        **dict(stage.get("extra") or {}),
    }
    params: dict[str, Any] = {
        "job_name": f"masksuite-{kind}",
        "cpus_per_task": int(stage.cpus),
        "mem": f"{int(float(stage.mem_gb) * 1024)}MB",
        "time": int(stage.time_min),
        "signal_delay_s": int(scfg.signal_delay_s),
        "stderr_to_stdout": False,
        "additional_parameters": extra,
        # submitit writes --wckey=submitit unless told otherwise; None leaves --wckey out.
        "wckey": str(scfg.wckey) if scfg.get("wckey") else None,
    }
    gpus = int(stage.gpus or 0)
    if kind == "model" and gpus > 1:
        raise ConfigError(
            f"slurm.stages.model.gpus={gpus}: training is single-device, so a model job uses one "
            "GPU; set slurm.stages.model.gpus=1 (more models train side by side as array tasks)"
        )
    if gpus > 0:
        params["gpus_per_node"] = gpus
    for key in ("partition", "constraint"):
        value = stage.get(key) or scfg.get(key)
        if value:
            params[key] = str(value)
    for key in ("account", "qos"):
        if scfg.get(key):
            params[key] = str(scfg[key])
    # Slurm 22.05 to 23.02: srun does not inherit --cpus-per-task from the allocation, so the job
    # step (submitit runs the stage with srun) would get one CPU. Pass it on explicitly.
    params["setup"] = [
        'export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"',
        *host_requeue_lines(folder, usr_sig, int(scfg.max_requeues)),
        *(str(line) for line in scfg.setup or []),
    ]
    container = scfg.container
    if container.runtime == "pyxis":
        params["srun_args"] = [f"--container-image={container.image}", *map(str, container.args)]
    return params


def python_command(scfg: DictConfig) -> str | None:
    """The command jobs run Python with: None (this interpreter), or inside the container."""
    container = scfg.container
    if container.runtime not in CONTAINER_RUNTIMES:
        raise ConfigError(
            f"slurm.container.runtime={container.runtime!r}; valid: {list(CONTAINER_RUNTIMES)}"
        )
    if container.runtime != "none" and not container.image:
        raise ConfigError(
            f"slurm.container.runtime={container.runtime} needs slurm.container.image"
        )
    if container.runtime == "pyxis":
        return str(container.python)
    if container.runtime == "apptainer":
        args = " ".join(shlex.quote(str(a)) for a in container.args)
        return f"apptainer exec --nv {args} {shlex.quote(str(container.image))} {container.python}"
    return None


def absolute_local(path: str) -> str:
    """`path` made absolute when it is a local folder (jobs may start elsewhere)."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def submit(
    executor: submitit.SlurmExecutor,
    scfg: DictConfig,
    kind: str,
    jobs: Sequence[StageJob | InferJob],
    after: str | None,
) -> list[submitit.Job[Any]]:
    """Submit `jobs` of one kind (several: one array) to start after job `after` succeeded."""
    params = sbatch_parameters(scfg, kind, Path(executor.folder))
    if after:
        params["dependency"] = f"afterok:{after}"
        params["additional_parameters"] = {
            **params["additional_parameters"],
            "kill-on-invalid-dep": "yes",
        }
    if len(jobs) > 1:
        params["array_parallelism"] = int(scfg.array_parallelism)
    executor.update_parameters(**params)
    try:
        with credentials_in_a_file(Path(executor.folder)):  # no AWS keys in the jobs' environment
            if len(jobs) == 1:
                return [executor.submit(jobs[0])]
            return executor.submit_array(jobs)
    except (FailedJobError, FailedSubmissionError, OSError) as e:
        raise StageFailed(f"sbatch refused the {kind} job: {one_line(e)}") from e


def launch_slurm(cfg: DictConfig, *, wait: bool) -> int:
    """Submit what run `cfg.run_id` still needs to Slurm and print the run id and job ids.

    With `wait`, follow the run to its end (see `follow`) and return 0 only if the vote
    succeeded; without, return 0 once submitted. Raises ConfigError for a bad `slurm` config or
    when Slurm is not reachable, StageFailed when sbatch refuses a job.
    """
    cfg = copy.deepcopy(cfg)
    cfg.store.root = absolute_local(str(cfg.store.root))
    scfg = cfg.slurm
    graph = suite_graph(cfg)  # fail on a bad suite before submitting anything
    run = run_store(cfg)
    folder = Path(absolute_local(str(scfg.folder))) / str(cfg.run_id)
    executor = slurm_executor(scfg, folder)
    still_active = run_status(cfg, queue_states).active_jobs if read_submissions(run) else []
    if still_active:
        raise ConfigError(
            f"run {cfg.run_id} still has jobs queued or running ({' '.join(still_active)}): "
            f"wait for them, or `python -m pipeline.runs cancel {cfg.run_id}` first"
        )
    config = plain_config(cfg)
    submitted: dict[str, dict[str, str]] = {}

    try:
        after = None
        for kind in KINDS:  # one job per group of the graph; a kind's jobs wait for the last kind's
            todo = {model: stages for model, stages in job_groups(graph, kind).items()
                    if not all(stage_done(run, s.name) for s in stages)}  # fmt: skip
            if not todo:
                continue
            tasks = [StageJob(config, kind, model) for model in todo]
            jobs = submit(executor, scfg, kind, tasks, after)
            for stages, job in zip(todo.values(), jobs, strict=True):
                for s in stages:
                    submitted[s.name] = {"job_id": job.job_id, "log": str(job.paths.stderr)}
            after = jobs[0].job_id.split("_")[0]  # afterok on an array: every task succeeded
    except StageFailed as e:  # leave nothing half-submitted behind
        orphans = sorted({j["job_id"] for j in submitted.values()})
        if orphans:
            cancel_jobs(orphans)
            raise StageFailed(f"{e} (cancelled the jobs already submitted: {orphans})") from e
        raise

    if submitted:
        record_submission(
            run,
            {
                "cluster": "slurm",
                "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
                "folder": str(folder),
                "models": [s.model for s in graph if s.step == "train"],
                "jobs": submitted,
            },
        )
        print(f"run {cfg.run_id} submitted to Slurm (job files and logs: {folder})")
        for stage, where in submitted.items():
            print(f"  {stage:<24} job {where['job_id']}")
        print(
            f"  follow it: python -m pipeline.runs status {cfg.run_id} store.root={cfg.store.root}"
        )
    else:
        print(f"run {cfg.run_id}: every stage is already done, nothing submitted")
    sys.stdout.flush()
    return follow(cfg, run) if wait else 0


def active_run(cfg: DictConfig, sha256: str, *, newest: int = 20) -> str | None:
    """The id of a run in the store with this data fingerprint whose Slurm jobs are still queued
    or running (read from its scheduler.json and the queue), or None. Looks at the `newest` runs."""

    root = root_store(cfg)
    for run_id in reversed(run_ids(root)[-newest:]):
        run = root.child(f"runs/{run_id}")
        if not run.exists(FINGERPRINT_KEY) or not read_submissions(run):
            continue
        if run.read_json(FINGERPRINT_KEY).get("sha256") != sha256:
            continue
        if run_status(open_run(cfg, run_id).config, queue_states).active_jobs:
            return run_id
    return None


# --------------------------------------------------------------------------------------------
# following a run


def follow(cfg: DictConfig, run: Store) -> int:
    """Show the run's progress until it is done (return 0, or 3 when the publish gate held it)
    or failed (return 1).

    On a terminal the progress line is rewritten in place, elsewhere a line is printed whenever
    it changes. Jobs that can never start because a dependency failed are cancelled.
    """

    started = time.time()
    live = sys.stdout.isatty()
    last = ""
    while True:
        status = run_status(cfg, queue_states)
        line = progress_line(status)
        if line != last:
            stamp = f"[{time.time() - started:5.0f} s] {line}"
            print(f"\r\033[K{stamp}" if live else stamp, end="" if live else "\n", flush=True)
            last = line
        if status.state != "running":
            break
        time.sleep(float(cfg.slurm.poll_seconds))
    if live:
        print()
    if status.state == "done":
        print("\n".join(summary_lines(cfg, read_vote(run), time.time() - started)))
        return run_exit_status(run)
    stuck = [s.job_id for s in status.stages if s.state in ("blocked", "pending") and s.job_id]
    if stuck:
        cancel_jobs(sorted(set(stuck)))
    print(format_status(status, tail=10), file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------
# Slurm's queue


def queue_states(job_ids: list[str]) -> dict[str, QueueEntry]:
    """Slurm's view of `job_ids` (array tasks as `<array>_<task>`) from squeue.

    Jobs Slurm has forgotten (finished longer ago than MinJobAge) are absent. Raises
    ConfigError when squeue cannot be run.
    """
    if not job_ids:
        return {}
    wanted = sorted({j.split("_")[0] for j in checked_job_ids(job_ids)})
    try:
        result = subprocess.run(
            [
                "squeue",
                "--noheader",
                "--array",
                "--states=all",
                "--format=%i|%T|%r",
                f"--jobs={','.join(wanted)}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"cannot ask Slurm about jobs {wanted}: {e}") from e
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}  # all of them are finished and forgotten
        raise ConfigError(f"squeue failed: {result.stderr.strip()}")
    entries = {}
    for line in result.stdout.splitlines():
        job_id, state, reason = [*line.split("|"), "", ""][:3]
        entries[job_id.strip()] = QueueEntry(state.strip(), reason.strip())
    return entries


def checked_job_ids(job_ids: list[str]) -> list[str]:
    """`job_ids` when every one is a Slurm job id (`123`, `123_4`); ConfigError naming the first
    that is not (they come from scheduler.json, in a store others may write)."""
    for job_id in job_ids:
        if not valid_job_id(job_id):
            raise ConfigError(f"not a Slurm job id: {job_id!r} (digits, or <array>_<task>)")
    return list(job_ids)


def cancel_jobs(job_ids: list[str]) -> None:
    """scancel `job_ids`; raises ConfigError when Slurm refuses."""
    if not job_ids:
        return
    command = ["scancel", "--", *checked_job_ids(job_ids)]  # after `--`: never an option
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ConfigError(f"scancel {' '.join(job_ids)} failed: {result.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# the Executor (pipeline/orchestration/executor.py)


class SlurmBackend:
    """The Executor of a Slurm cluster: a launch submits the run's jobs and returns (or follows
    them with --wait); status and cancel ask squeue and scancel about the jobs in scheduler.json."""

    name: ClassVar[str] = "slurm"
    blocks: ClassVar[bool] = False
    side_by_side: ClassVar[bool] = True
    on_active: ClassVar[str] = (
        "not submitting a second run (--force does); follow it: python -m pipeline.runs "
        "status {run_id} store.root={store}"
    )

    def check(self, cfg: DictConfig, request: LaunchRequest) -> None:
        """Refuse the Kubernetes-only options."""
        if request.render_only:
            raise ConfigError("--dry-run and --show-jobs apply to --cluster k8s only")

    def launch(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Submit what the run still needs (see launch_slurm)."""
        return launch_slurm(cfg, wait=request.wait)

    def active_run(self, cfg: DictConfig, sha256: str) -> str | None:
        """A run of these inputs whose jobs are queued or running (see active_run)."""
        return active_run(cfg, sha256)

    def follow(self, cfg: DictConfig, request: LaunchRequest) -> int:
        """Follow the run to its end with --wait; without, leave it (0)."""
        return follow(cfg, run_store(cfg)) if request.wait else 0

    def status(self, cfg: DictConfig) -> RunStatus:
        """The stages as markers, job records and squeue show them."""
        return run_status(cfg, queue_states)

    def cancel(self, cfg: DictConfig) -> list[str]:
        """scancel the run's jobs still queued or running."""
        return cancel_run(cfg, run_status(cfg, queue_states), cancel_jobs)

    def infer(self, cfg: DictConfig, overrides: Sequence[str], *, dry_run: bool) -> int:
        """Submit one infer job for the run chosen now."""
        if dry_run:
            raise ConfigError("--dry-run applies to --cluster k8s only")
        print(submit_infer(pinned_infer_config(cfg, dry_run=False)))
        return 0
