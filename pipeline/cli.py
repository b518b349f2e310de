"""What every command-line entry point shares: logging, config from argv, clean failures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from pipeline.config import load_config
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped log lines on stderr (idempotent)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def run_job(stage: Callable[[DictConfig], Any], argv: Sequence[str] | None = None) -> int:
    """Compose the config from Hydra overrides in `argv`, run one stage function, return an exit
    status: 0 on success, 1 with a one-line error for input, config or environment problems."""
    setup_logging()
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(overrides)
        stage(cfg)
        print(f"{stage.__name__} done: run_id={cfg.run_id}")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
