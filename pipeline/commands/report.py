"""`python -m pipeline.report RUN_ID [overrides]`: (re)write a finished run's report."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.run.report import write_report
from pipeline.run.results import read_vote
from pipeline.run.state import run_store


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.report RUN_ID [overrides]`: (re)write a finished run's report."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or "=" in args[0]:
        print("usage: python -m pipeline.report RUN_ID [hydra overrides]", file=sys.stderr)
        return 2
    setup_logging()
    try:
        cfg = load_config(args[1:])
        cfg.run_id = args[0]
        run = run_store(cfg)
        print(write_report(cfg, run, read_vote(run)))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
