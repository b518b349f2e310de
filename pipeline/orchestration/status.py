"""What a run is doing: every stage's state, job and log (`python -m pipeline.runs status|cancel`).

A stage's state comes from three places, most certain first:
1. its done marker `stages/<stage>.json` (run/state.py) — then it is done, whatever else says;
2. the scheduler's queue (e.g. Slurm's squeue) for the job a launcher submitted for it, as recorded
   in the run's `scheduler.json` — pending, running, or gone;
3. the record the job itself wrote in `jobs/<stage>.json` — running, requeued, failed with the
   error, cancelled.
A stage whose job left the queue without its marker failed (the record or the queue says why);
stages after a failed one are blocked. The run is done when the vote is, failed when something
failed and nothing is queued or running any more, running otherwise.

Each executor (pipeline/orchestration/executor.py) answers `runs status` and `runs cancel` with
these functions and its own view of the jobs: Slurm's queue (slurm.py), the run's Kubernetes Jobs
(k8s.py), none for a local run (local.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import model_specs
from pipeline.core.errors import ConfigError
from pipeline.core.stored_config import stored_config
from pipeline.orchestration import graph
from pipeline.run.state import (
    manifest_state,
    read_stage_state,
    record_stage_state,
    run_store,
    stage_done,
)
from pipeline.storage.run_layout import PUBLISH_STAGE, SCHEDULER_KEY, stage_key
from pipeline.storage.store import Store

#: Scheduler states of a job that is still queued or running.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED"}  # fmt: skip
#: A pending job whose dependency failed can never start (unless the cluster cancels it).
NEVER_STARTS = "DependencyNeverSatisfied"
_EPOCH = re.compile(r"epoch (\d+)/(\d+)")
#: A job id as launchers record it: a job, or one task of an array (submitit's `<array>_<task>`).
JOB_ID = re.compile(r"\d+(_\d+)?")
_WARNED: set[str] = set()
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueEntry:
    """A job as the scheduler sees it: state (e.g. RUNNING) and reason (e.g. Dependency)."""

    state: str
    reason: str = ""

    @property
    def active(self) -> bool:
        """Queued or running, and able to start (its dependencies may still succeed)."""
        return self.state in ACTIVE and self.reason != NEVER_STARTS


@dataclass
class StageStatus:
    """One stage of a run: state (done, running, pending, requeued, failed, cancelled, blocked,
    not submitted), the job handling it, its log and a one-line detail (the error for failed)."""

    stage: str
    state: str
    job_id: str | None = None
    log: str | None = None
    detail: str = ""


@dataclass
class RunStatus:
    """A run's stages in order and its overall state: done, running or failed."""

    run_id: str
    state: str
    stages: list[StageStatus] = field(default_factory=list)
    problem: str | None = None  # the first failure, "model x failed: <error>"
    active_jobs: list[str] = field(default_factory=list)  # ids still queued or running


# --------------------------------------------------------------------------------------------
# the plan of a run and what launchers submitted


def stage_plan(models: list[str]) -> list[tuple[str, list[str]]]:
    """Stages of a run in order, each with the stages it needs (the stage graph's)."""
    return [(stage.name, list(stage.needs)) for stage in graph.stage_graph(models)]


def read_submissions(run: Store) -> list[dict[str, Any]]:
    """What launchers submitted for this run, oldest first (empty for a run never submitted).
    A record that is not a mapping is skipped with a WARNING (see recorded_jobs)."""
    if not run.exists(SCHEDULER_KEY):
        return []
    data = run.read_json(SCHEDULER_KEY)
    submissions = data.get("submissions") if isinstance(data, dict) else None
    if not isinstance(submissions, list):
        warn_once(f"{run.uri_of(SCHEDULER_KEY)}: no list of submissions; ignored")
        return []
    kept = [s for s in submissions if isinstance(s, dict)]
    if len(kept) < len(submissions):
        warn_once(f"{run.uri_of(SCHEDULER_KEY)}: skipped launch records that are not mappings")
    return kept


def record_submission(run: Store, submission: dict[str, Any]) -> None:
    """Append one launch to scheduler.json: {cluster, submitted, models, jobs: {stage: {job_id,
    log}}}. Only the launcher of a run writes it, so read-modify-write is safe."""
    submissions = [*read_submissions(run), submission]
    run.write_json(SCHEDULER_KEY, {"submissions": submissions})


def valid_job_id(value: object) -> bool:
    """Whether `value` is a Slurm job id as launchers record it: `123` or `123_4` (array task)."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def log_folder(cfg: DictConfig) -> Path | None:
    """The folder job logs must lie under to be read (`slurm.folder`, resolved), or None."""
    folder = OmegaConf.select(cfg, "slurm.folder")
    if not folder or "://" in str(folder):
        return None
    return Path(str(folder)).expanduser().resolve()


def readable_log(log: object, folder: Path | None, job_id: str) -> str | None:
    """`log` when it may be read: a path that resolves (links followed) under `folder`
    (slurm.folder), or, wherever it lies (a launch with another slurm.folder), a regular file
    named as submitit names job `job_id`'s logs (`<job_id>[_<task>]_log.{err,out}`) and not a
    link. Anything else (e.g. /etc/hostname) is None: never read."""
    if not isinstance(log, str) or not log:
        return None
    path = Path(log).expanduser()
    if folder is not None and path.resolve().is_relative_to(folder):
        return log
    named = re.fullmatch(rf"{re.escape(job_id)}(_\d+)?_log\.(err|out)", path.name)
    return log if named and path.is_file() and not path.is_symlink() else None


def warn_once(message: str) -> None:
    """Log a WARNING once per process (`--wait` reads scheduler.json at every poll)."""
    if message not in _WARNED:
        _WARNED.add(message)
        _log.warning("%s", message)


def recorded_jobs(
    run: Store, submissions: list[dict[str, Any]], folder: Path | None
) -> dict[str, dict[str, Any]]:
    """{stage: {job_id, log}} of the launches in scheduler.json, a later launch's job replacing
    an earlier one's. scheduler.json lives in a store others may write: an entry whose job id is
    not a Slurm job id is skipped, and a log that is neither under `folder` (slurm.folder) nor
    named as that job's log (see readable_log) is never read; both with a WARNING naming the file
    and the value."""
    where = run.uri_of(SCHEDULER_KEY)
    jobs: dict[str, dict[str, Any]] = {}
    for submission in submissions:
        entries = submission.get("jobs")
        if not isinstance(entries, dict):
            warn_once(f"{where}: skipped a launch record without a jobs mapping")
            continue
        for stage, job in entries.items():
            job_id = job.get("job_id") if isinstance(job, dict) else None
            if not valid_job_id(job_id):
                warn_once(f"{where}: skipped the job of stage {stage!r}: job id {job_id!r} is "
                          "not a Slurm job id (digits, or <array>_<task>)")  # fmt: skip
                continue
            log_path = job.get("log")
            readable = readable_log(log_path, folder, str(job_id))
            if log_path and readable is None:
                warn_once(
                    f"{where}: not reading the log {log_path!r} of job {job_id}: it is neither "
                    f"under slurm.folder={folder} nor that job's Slurm log"
                )
            jobs[str(stage)] = {"job_id": job_id, "log": readable}
    return jobs


def run_models(run: Store, submissions: list[dict[str, Any]]) -> list[str]:
    """The run's model names: from the latest launch, else from the manifest's config."""
    if submissions:
        return list(submissions[-1]["models"])
    if run.exists("manifest.json"):
        manifest = run.read_json("manifest.json")
        if "models" in manifest:  # in the suite's order
            return list(manifest["models"])
        where = run.uri_of("manifest.json")  # an older run's; stored data, never interpolated
        return list(model_specs(stored_config(manifest.get("config"), where)))
    raise ConfigError(
        f"run {run.uri} has neither a manifest nor a launch record: check the run id and store.root"
    )


# --------------------------------------------------------------------------------------------
# state of each stage


def log_tail(path: str | None, lines: int) -> list[str]:
    """The last `lines` lines of a log file, or a line saying why it cannot be read here."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(f.tell() - 64 * 1024, 0))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return [f"(log not readable from here: {e})"]
    return text.splitlines()[-lines:] if lines > 0 else []


def training_progress(path: str | None) -> str:
    """`epoch k/E` of the last epoch a training log reports, or ''."""
    found = _EPOCH.findall("\n".join(log_tail(path, 40)))
    return f"epoch {found[-1][0]}/{found[-1][1]}" if found else ""


def stage_status(
    run: Store,
    stage: str,
    job: dict[str, Any] | None,
    queue: dict[str, QueueEntry],
    failed_needs: list[str],
) -> StageStatus:
    """The state of one stage from its marker, its job's queue entry and its job record."""
    job_id = job["job_id"] if job else None
    log = job.get("log") if job else None
    if stage_done(run, stage):
        marker = run.read_json(stage_key(stage))
        detail = f"{marker.get('seconds', 0):.0f} s on {marker.get('host', '?')}"
        if "val_macro_f1" in marker:
            detail += f", val macro F1 {marker['val_macro_f1']:.4f}"
        return StageStatus(stage, "done", job_id, log, detail)
    if stage == PUBLISH_STAGE and manifest_state(run) == "succeeded":
        # a run published by a version before publish was a stage has no marker; that version
        # recorded `succeeded` in the manifest right before moving latest.json
        return StageStatus(stage, "done", job_id, log, "recorded in manifest.json")
    record = read_stage_state(run, stage)
    if record and job_id and record.get("job_id") not in (None, job_id):
        record = None  # written by the job of an earlier launch
    entry = queue.get(job_id) if job_id else None
    if entry is not None and entry.active:
        if entry.state == "RUNNING" and record and record["state"] == "running":
            progress = training_progress(log) if stage.startswith("train-") else ""
            return StageStatus(stage, "running", job_id, log, progress)
        if record and record["state"] == "requeued":
            reason = record.get("reason", "preempted or timed out")
            return StageStatus(stage, "requeued", job_id, log, f"{reason} ({entry.state.lower()})")
        waiting = entry.reason if entry.state == "PENDING" else f"job {entry.state.lower()}"
        if failed_needs:
            waiting = f"{failed_needs[0]} failed"
        return StageStatus(stage, "pending", job_id, log, waiting)
    if record and record["state"] in ("failed", "cancelled"):
        return StageStatus(stage, record["state"], job_id, log, record.get("error", ""))
    if failed_needs:
        return StageStatus(stage, "blocked", job_id, log, f"{failed_needs[0]} failed")
    if job_id is None:
        return StageStatus(stage, "not submitted", None, None, "")
    if entry is not None and entry.state == "CANCELLED":
        return StageStatus(stage, "cancelled", job_id, log, "job cancelled")
    if entry is not None and entry.state not in ("COMPLETED",):
        return StageStatus(stage, "failed", job_id, log, f"job {entry.state} ({entry.reason})")
    ended = "job ended without finishing this stage; see its log"
    return StageStatus(stage, "failed", job_id, log, ended)


def run_status(
    cfg: DictConfig,
    queue_states: Callable[[list[str]], dict[str, QueueEntry]] | None = None,
    jobs: dict[str, dict[str, Any]] | None = None,
) -> RunStatus:
    """The state of every stage of run `cfg.run_id` and of the run (see the module docstring).

    `jobs` ({stage: {job_id, log}}) defaults to what launchers recorded in scheduler.json;
    `queue_states` maps job ids to the scheduler's entries (None: no scheduler to ask, as for a
    local run). Raises ConfigError when the run does not exist in the store.
    """
    run = run_store(cfg)
    submissions = read_submissions(run)
    if jobs is None:
        jobs = recorded_jobs(run, submissions, log_folder(cfg))
    queue: dict[str, QueueEntry] = {}
    if queue_states is not None and jobs:
        queue = queue_states(sorted({j["job_id"] for j in jobs.values()}))
    stages: list[StageStatus] = []
    cause: dict[str, str] = {}  # stage → the failed stage that keeps it from running
    for stage, needs in stage_plan(run_models(run, submissions)):
        blockers = [cause[n] for n in needs if n in cause]
        status = stage_status(run, stage, jobs.get(stage), queue, blockers)
        if status.state in ("failed", "cancelled"):
            cause[stage] = stage
        elif blockers and status.state != "done":
            cause[stage] = blockers[0]
        stages.append(status)
    unfinished = {s.job_id for s in stages if s.job_id and s.state != "done"}
    active = sorted(j for j in unfinished if j in queue and queue[j].active)
    state = overall_state(stages, active)
    return RunStatus(str(cfg.run_id), state, stages, first_problem(stages), active)


def run_cluster(run: Store) -> str:
    """Where the run was launched, as its latest launch record says (`local` without one)."""
    submissions = read_submissions(run)
    return str(submissions[-1].get("cluster", "local")) if submissions else "local"


def overall_state(stages: list[StageStatus], active_jobs: list[str]) -> str:
    """done when the vote is; failed when something failed and no job is queued or running."""
    if stages[-1].state == "done":
        return "done"
    if active_jobs:
        return "running"
    if any(s.state in ("failed", "cancelled", "blocked") for s in stages):
        return "failed"
    return "running" if any(s.job_id for s in stages) else "not submitted"


def first_problem(stages: list[StageStatus]) -> str | None:
    """'model x failed: <error>' (or 'prepare failed: …') for the first failed stage."""
    for s in stages:
        if s.state in ("failed", "cancelled"):
            what = f"model {s.stage.split('-', 1)[1]}" if "-" in s.stage else s.stage
            return f"{what} {s.state} in {s.stage} (job {s.job_id}): {s.detail}"
    return None


# --------------------------------------------------------------------------------------------
# display


def progress_line(status: RunStatus) -> str:
    """One line for --wait: each stage's state, e.g. 'prepare done | train-a running epoch 2/5'."""
    parts = []
    for s in status.stages:
        extra = f" {s.detail}" if s.state in ("running", "requeued") and s.detail else ""
        parts.append(f"{s.stage} {s.state}{extra}")
    return " | ".join(parts)


def format_status(status: RunStatus, *, tail: int = 5) -> str:
    """A table of the run's stages, the failure if any, and the tail of each job's log."""
    width = max(len(s.stage) for s in status.stages)
    lines = [f"run {status.run_id}: {status.state}"]
    if status.problem:
        lines.append(f"  {status.problem}")
    lines.append(f"  {'stage':<{width}}  {'state':<13} {'job':<12} detail")
    for s in status.stages:
        lines.append(f"  {s.stage:<{width}}  {s.state:<13} {s.job_id or '-':<12} {s.detail}")
    shown: set[str] = set()
    for s in status.stages:
        if tail <= 0 or not s.log or s.log in shown:
            continue
        shown.add(s.log)
        lines.append(f"--- job {s.job_id}: {s.log} (last {tail} lines)")
        lines += [f"    {line}" for line in log_tail(s.log, tail)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# cancelling


def cancel_run(
    cfg: DictConfig, status: RunStatus, cancel_jobs: Callable[[list[str]], None]
) -> list[str]:
    """Cancel the run's jobs that `status` shows queued or running with `cancel_jobs` (the
    executor's); returns their ids. Their stages are recorded as cancelled (done stages stay
    done: `--resume` finishes the run later)."""
    active = status.active_jobs
    if not active:
        return []
    cancel_jobs(active)
    run = run_store(cfg)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for s in status.stages:
        if s.job_id in active and s.state != "done":
            record_stage_state(
                run, s.stage, "cancelled", job_id=s.job_id, log=s.log, error=f"cancelled {now}"
            )
    return active
