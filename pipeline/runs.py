"""Run identity and the run layout in the store.

    <store.root>/latest.json                  the last run whose vote succeeded (written last)
    <store.root>/runs/<run_id>/manifest.json  config, code version, creation time
    <store.root>/runs/<run_id>/stages/<stage>.json   written last by a stage that completed
    ... and the stage outputs documented in README ("Run layout").

A stage is done when its marker exists; running a done stage again is a no-op.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import time
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
    """The package version plus the git commit when running from a checkout."""
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
    return open_store(str(cfg.store.root), workers=int(cfg.store.workers))


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
    }
    run.write_json("manifest.json", manifest)


def save_torch(store: Store, key: str, obj: Any) -> None:
    """torch.save tensors / state dicts to the store, atomically."""
    sink = io.BytesIO()
    torch.save(obj, sink)
    store.write_bytes(key, sink.getvalue())


def load_torch(store: Store, key: str) -> Any:
    """torch.load from the store with weights_only=True: nothing is unpickled."""
    return torch.load(io.BytesIO(store.read_bytes(key)), map_location="cpu", weights_only=True)
