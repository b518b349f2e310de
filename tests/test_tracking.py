"""W&B tracking never fails or stalls a job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.ml.tracking import Tracker, resolve_mode


def test_mode_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"


def test_unreachable_server_leaves_the_job_untracked_but_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    cfg = OmegaConf.create(
        {"run_id": "r", "tracking": {"mode": "online", "dir": str(tmp_path), "init_timeout": 3}}
    )
    started = time.time()
    tracker = Tracker(cfg, "m", {"x": 1})
    tracker.log({"loss": 1.0}, step=1)
    tracker.summary({"f1": 0.5}, confusion=[[1]])
    tracker.finish()
    assert tracker.run is None
    assert time.time() - started < 60  # bounded by init_timeout, not W&B's default minutes
