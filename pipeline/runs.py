"""Run identity and the run layout in the store.

    <store.root>/latest.json                  the last run whose vote succeeded (written last)
    <store.root>/runs/<run_id>/manifest.json  config, code version, creation time
    <store.root>/runs/<run_id>/stages/<stage>.json   written last by a stage that completed
    <store.root>/runs/<run_id>/jobs/<stage>.json     the job working on a stage that is not done:
                                                     running, requeued, failed (with the error)
                                                     or cancelled, its job id and log
    <store.root>/runs/<run_id>/scheduler.json        what a cluster launcher submitted (job ids,
                                                     logs), one entry per launch
    ... and the stage outputs documented in README ("Run layout").

A stage is done when its marker exists; running a done stage again is a no-op.

Command line (`python -m pipeline.runs COMMAND ...`, Hydra overrides such as store.root=... last):
    status RUN_ID    every stage's state, job id and the tail of its log (pipeline/status.py)
    cancel RUN_ID    cancel the run's jobs that are still queued or running
    list             every run with its state and scores, newest first (pipeline/history.py)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import pipeline
from pipeline.errors import ConfigError
from pipeline.store import Store, join_key, open_store

LATEST_KEY = "latest.json"


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


def stage_key(stage: str) -> str:
    """Key of a stage's completion marker inside the run."""
    return join_key("stages", f"{stage}.json")


def stage_done(run: Store, stage: str) -> bool:
    """True when `stage` completed for this run."""
    return run.exists(stage_key(stage))


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


def job_state_key(stage: str) -> str:
    """Key of the record of the job working on `stage` (state, job id, log, error)."""
    return join_key("jobs", f"{stage}.json")


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


def write_manifest(cfg: DictConfig) -> None:
    """Write the run's manifest (once: an existing manifest is kept)."""
    run = run_store(cfg)
    if run.exists("manifest.json"):
        return
    config = OmegaConf.to_container(cfg, resolve=True)
    manifest = {
        "run_id": cfg.run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        # written by the launcher (pipeline/fingerprint.py); None for a stage run by hand
        "data_fingerprint": run.read_json("fingerprint.json")
        if run.exists("fingerprint.json")
        else None,
    }
    run.write_json("manifest.json", manifest)


def finish_manifest(run: Store, state: str) -> dict[str, Any]:
    """Add the run's final state and every stage's timing to its manifest; returns it."""
    manifest = run.read_json("manifest.json") if run.exists("manifest.json") else {}
    stages = {}
    for key in run.list("stages"):
        record = run.read_json(key)
        stages[record.get("stage", key)] = {
            k: record.get(k) for k in ("state", "finished", "seconds", "host")
        }
    manifest.update(state=state, stages=stages)
    run.write_json("manifest.json", manifest)
    return manifest


def save_torch(store: Store, key: str, obj: Any) -> None:
    """torch.save tensors / state dicts to the store, atomically."""
    sink = io.BytesIO()
    torch.save(obj, sink)
    store.write_bytes(key, sink.getvalue())


def load_torch(store: Store, key: str) -> Any:
    """torch.load from the store with weights_only=True: nothing is unpickled."""
    return torch.load(io.BytesIO(store.read_bytes(key)), map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# command line: python -m pipeline.runs COMMAND [options] [hydra overrides]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.runs status|cancel RUN_ID [overrides]`; returns the exit status.

    Each subcommand is a parser plus a handler `(cfg, args) -> int` in pipeline/status.py; the
    config is composed from the overrides (store.root=... as for launch) with run_id set.
    """
    import argparse

    from pipeline import history, status
    from pipeline.cli import setup_logging
    from pipeline.config import load_config
    from pipeline.errors import PipelineError

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.runs", description="Look at and manage runs in the store."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name: str, help_text: str, handler: Any, *, run_id: bool = True) -> Any:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if run_id:
            sub.add_argument("run_id", metavar="RUN_ID")
        sub.set_defaults(handler=handler)
        return sub

    show = add_command("status", "every stage's state, job id and log tail", status.cmd_status)
    show.add_argument("--tail", type=int, default=5, help="log lines per job (default: 5)")
    add_command("cancel", "cancel the run's queued and running jobs", status.cmd_cancel)
    add_command(
        "list", "every run with its state and scores, newest first", history.cmd_list, run_id=False
    )

    for sub in commands.choices.values():
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store.root=s3://b/p")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.overrides)
        if getattr(args, "run_id", None):
            cfg.run_id = args.run_id
        return int(args.handler(cfg, args))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
