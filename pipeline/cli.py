"""What every command-line entry point shares: logging, config from argv, clean failures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from pipeline.checks import check_config
from pipeline.config import load_config
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


#: Libraries whose DEBUG lines carry request headers (credentials, session tokens).
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr (idempotent). The S3 and HTTP libraries never log below
    INFO, even when `level` is DEBUG: their debug output includes signed request headers."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    credentials = logging.getLogger("botocore.credentials")
    if not any(isinstance(f, OnceFilter) for f in credentials.filters):
        credentials.addFilter(OnceFilter())  # every S3 client says where its keys came from


class OnceFilter(logging.Filter):
    """Let each distinct message through once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def run_job(stage: Callable[[DictConfig], Any], argv: Sequence[str] | None = None) -> int:
    """Compose the config from Hydra overrides in `argv`, run one stage function, return an exit
    status: 0 on success, 1 with a one-line error for input, config or environment problems."""
    setup_logging()
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(overrides)
        check_config(cfg)  # a job can be started by hand: the launcher's check again
    except PipelineError as e:  # nothing has run: no run folder is touched
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        stage(cfg)
        print(f"{stage.__name__} done: run_id={cfg.run_id}")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        record_failure(cfg, stage.__name__, e)
        return 1
    return 0


def record_failure(cfg: DictConfig, job: str, error: Exception) -> None:
    """Record a failed stage in the run (jobs/<stage>.json) so `pipeline.runs status` can say
    why. The stage is `job`, or `job-<model_name>` for a train/predict job of one model. Best
    effort: a store that cannot be written only adds a warning to the original error."""
    from pipeline.runs import mark_stage_failed, run_store, stage_done

    if not cfg.get("run_id"):
        return
    model = cfg.get("model_name")
    stage = job
    try:
        if model and job == "train_and_predict":  # a Kubernetes model pod: first stage not done
            job = "predict" if stage_done(run_store(cfg), f"train-{model}") else "train"
        stage = f"{job}-{model}" if model and job in ("train", "predict") else job
        mark_stage_failed(run_store(cfg), stage, f"{type(error).__name__}: {error}")
    except PipelineError as e:
        log.warning("could not record the failure of %s in the run: %s", stage, e)
