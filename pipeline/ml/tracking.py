"""Experiment tracking with Weights & Biases that never fails or stalls a job.

Each training job is one W&B run, grouped by the suite's run id. With no API key (and no
WANDB_MODE set) runs are recorded offline under `tracking.dir`, to `wandb sync` later.
If W&B cannot start (unreachable, misconfigured), the job logs a warning and goes on untracked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from pipeline.core.schema import TrackingMode, choices

log = logging.getLogger(__name__)

MODES = choices(TrackingMode)


def resolve_mode(mode: str) -> str:
    """`auto` → WANDB_MODE if set, else online with an API key, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A W&B run, or nothing: every method is safe to call when tracking is off or broken."""

    def __init__(self, cfg: DictConfig, name: str, config: dict[str, Any]) -> None:
        self.run: Any = None
        settings = cfg.get("tracking") or {}
        mode = resolve_mode(str(settings.get("mode", "auto")))
        if mode == "disabled":
            return
        try:
            import wandb

            os.makedirs(str(settings.get("dir", "outputs/wandb")), exist_ok=True)
            self.run = wandb.init(
                project=str(settings.get("project", "masksuite")),
                entity=settings.get("entity"),
                group=str(cfg.run_id),
                name=f"{cfg.run_id}-{name}",
                job_type="train",
                config=config,
                # wandb.init's annotation lists fewer modes than its Settings accept (dryrun,
                # run); WANDB_MODE is passed on as given, and one wandb refuses is caught below
                mode=cast(Any, mode),
                dir=str(settings.get("dir", "outputs/wandb")),
                reinit="finish_previous",
                settings=wandb.Settings(
                    init_timeout=float(settings.get("init_timeout", 30)),
                    silent=True,
                    console="off",
                    x_disable_stats=True,
                ),
            )
        except Exception as e:  # tracking must never stop training
            log.warning("W&B tracking off for %s: %s: %s", name, type(e).__name__, e)
            self.run = None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        """Log scalars for a step (epoch)."""
        self._safely(lambda: self.run.log(values, step=step))

    def summary(self, values: dict[str, Any], confusion: list[list[int]] | None = None) -> None:
        """Record final metrics and, if given, the confusion matrix as a table."""

        def write() -> None:
            import wandb

            self.run.summary.update(values)
            if confusion is not None:
                columns = [f"pred_{i}" for i in range(len(confusion))]
                rows: list[Iterable[Any]] = [[f"true_{i}", *row] for i, row in enumerate(confusion)]
                self.run.log({"confusion": wandb.Table(columns=["", *columns], data=rows)})

        self._safely(write)

    def finish(self) -> None:
        """Close the run (flushes offline files)."""
        self._safely(lambda: self.run.finish())
        self.run = None

    def _safely(self, action: Any) -> None:
        if self.run is None:
            return
        try:
            action()
        except Exception as e:  # tracking must never stop training
            log.warning("W&B call failed, tracking off: %s: %s", type(e).__name__, e)
            self.run = None


def tracked_config(cfg: DictConfig, spec: DictConfig) -> dict[str, Any]:
    """What a training job records: the run id, the model spec and the data/store roots."""
    return {
        "run_id": cfg.run_id,
        "model": OmegaConf.to_container(spec, resolve=True),
        "data_root": str(cfg.data.root),
        "store_root": str(cfg.store.root),
        "seed": int(cfg.seed),
    }
