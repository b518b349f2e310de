"""A run's identity and state: its id and store, the stage markers and job records, the manifest,
and the frame every stage runs in (`run_stage`). Where each file lives: storage/run_layout.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

import pipeline
from pipeline.core.config import model_specs, plain_config
from pipeline.core.errors import ConfigError, PipelineError, StageFailed, StoreKeyNotFound
from pipeline.storage.run_layout import (
    INDEX_KEY,
    MANIFEST_KEY,
    SWEEP_KEY,
    job_state_key,
    stage_key,
)
from pipeline.storage.store import Store, join_key, open_store

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by creation time: `YYYYmmddTHHMMSSZ-<6 hex>`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def code_version() -> str:
    """`MASKSUITE_CODE_VERSION` when set (the image records the commit it was built from), else
    the package version plus the git commit when running from a checkout."""
    if os.environ.get("MASKSUITE_CODE_VERSION"):
        return os.environ["MASKSUITE_CODE_VERSION"]
    version = pipeline.__version__
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(pipeline.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{version}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return version


def require_run_id(cfg: DictConfig) -> str:
    """The configured run id; raises ConfigError when a stage that needs one has none."""
    if not cfg.get("run_id"):
        raise ConfigError(
            "run_id is required for this stage: pass run_id=<id> (printed by prepare or launch)"
        )
    return str(cfg.run_id)


def root_store(cfg: DictConfig) -> Store:
    """The store every run of this configuration writes under."""
    return open_store(str(cfg.store.root), workers=int(cfg.store.workers), key="store.root")


def run_store(cfg: DictConfig) -> Store:
    """The store rooted at `runs/<run_id>/` of the configured run."""
    return root_store(cfg).child(join_key("runs", require_run_id(cfg)))


def stage_done(run: Store, stage: str) -> bool:
    """True when `stage` completed for this run."""
    return run.exists(stage_key(stage))


def manifest_state(run: Store) -> str | None:
    """The final state the run's manifest records (`succeeded`), or None while it has none."""
    if not run.exists(MANIFEST_KEY):
        return None
    state = run.read_json(MANIFEST_KEY).get("state")
    return str(state) if state is not None else None


def mark_stage_done(run: Store, stage: str, info: dict[str, Any], started: float) -> None:
    """Write the stage's completion marker (call it after every output is written)."""
    record = {
        "stage": stage,
        "state": "done",
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
        "host": os.uname().nodename,
        **info,
    }
    run.write_json(stage_key(stage), record)


def record_stage_state(run: Store, stage: str, state: str, **info: Any) -> None:
    """Record what the job working on `stage` is doing: running, requeued, failed or cancelled.

    `info` adds fields such as job_id, log or error. The stage's done marker (mark_stage_done)
    stays the only proof of completion: this record is for `status`.
    """
    record = {
        "stage": stage,
        "state": state,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": os.uname().nodename,
        **info,
    }
    run.write_json(job_state_key(stage), record)


def mark_stage_failed(run: Store, stage: str, error: str, **info: Any) -> None:
    """Record that `stage` failed with `error` (one line), so status can say which and why."""
    record_stage_state(run, stage, "failed", error=error, **info)


def read_stage_state(run: Store, stage: str) -> dict[str, Any] | None:
    """The job record of `stage` (see record_stage_state), or None when there is none."""
    key = job_state_key(stage)
    return run.read_json(key) if run.exists(key) else None


#: What the manifest records for a set `notify.url`: a webhook URL is a credential.
NOTIFY_URL_SET = "<set>"


def without_notify_url(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a plain copy, changed in place) with `notify.url` replaced by NOTIFY_URL_SET when
    set: the manifest records that a webhook was configured, never its (secret) URL."""
    notify = config.get("notify")
    if isinstance(notify, dict) and notify.get("url"):
        notify["url"] = NOTIFY_URL_SET
    return config


def write_manifest(cfg: DictConfig) -> None:
    """Write the run's manifest (once: an existing manifest is kept). The config it records is
    the resolved one, less credentials (see without_notify_url)."""
    run = run_store(cfg)
    if run.exists(MANIFEST_KEY):
        return
    config = without_notify_url(plain_config(cfg))
    manifest = {
        "run_id": cfg.run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "config": config,
        # the suite's models in the suite's order (the JSON of `config` has its keys sorted)
        "models": list(model_specs(cfg)),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        # written by the launcher (pipeline/run/fingerprint.py); None for a stage run by hand
        "data_fingerprint": run.read_json("fingerprint.json")
        if run.exists("fingerprint.json")
        else None,
        # a point of a sweep: {sweep_id, point} as its launcher wrote it (sweep.json); else None
        "sweep": run.read_json(SWEEP_KEY) if run.exists(SWEEP_KEY) else None,
    }
    run.write_json(MANIFEST_KEY, manifest)


def finish_manifest(run: Store, state: str) -> dict[str, Any]:
    """Add the run's final state and every stage's timing to its manifest; returns it."""
    manifest = run.read_json(MANIFEST_KEY) if run.exists(MANIFEST_KEY) else {}
    stages = {}
    for key in run.list("stages"):
        record = run.read_json(key)
        stages[record.get("stage", key)] = {
            k: record.get(k) for k in ("state", "finished", "seconds", "host")
        }
    manifest.update(state=state, stages=stages)
    run.write_json(MANIFEST_KEY, manifest)
    return manifest


def read_index(run: Store) -> pd.DataFrame:
    """The run's index; StageFailed when prepare has not completed for this run."""
    import pandas as pd  # here: only the stages read the index, and pandas takes a second

    try:
        return pd.read_parquet(io.BytesIO(run.read_bytes(INDEX_KEY)))
    except StoreKeyNotFound as e:
        raise StageFailed(f"{run.uri_of(INDEX_KEY)} is missing: run the prepare stage first") from e


def one_line(e: BaseException) -> str:
    """`Type: message` on one line, as status shows a failure."""
    text = " ".join(str(e).split()) or repr(e)
    return f"{type(e).__name__}: {text}"


def run_stage(
    run: Store,
    stage: str,
    work: Callable[[], dict[str, Any]],
    *,
    where: dict[str, str] | None = None,
    record_failure: Callable[[], bool] = lambda: True,
) -> dict[str, Any]:
    """The frame around every stage, whichever executor runs it (local, Slurm, Kubernetes, a job
    started by hand): a done stage is skipped (its marker is returned); otherwise the job record
    says `running`, `work()` runs, and its result becomes the done marker, written last. A failure
    is recorded in jobs/<stage>.json with the error (when `record_failure()` says so: a Slurm job
    being requeued does not fail) and raised again. `where` (job id, log) goes into the records.
    """
    if stage_done(run, stage):
        log.info("%s already done: nothing to do", stage)
        return dict(run.read_json(stage_key(stage)))
    where = where or {}
    started = time.time()
    record_stage_state(run, stage, "running", **where)
    try:
        info = work()
    except BaseException as e:
        if isinstance(e, Exception) and record_failure():
            try:
                mark_stage_failed(run, stage, one_line(e), **where)
            except PipelineError as store_error:  # the original error matters more
                log.warning("could not record the failure of %s: %s", stage, store_error)
        raise
    mark_stage_done(run, stage, info, started)
    return info
