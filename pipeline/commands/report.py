"""`python -m pipeline.report`: (re)write a report.

    python -m pipeline.report RUN_ID [overrides]    a finished run's report
                                                    (runs/<RUN_ID>/report/index.html)
    python -m pipeline.report --store [overrides]   the store page: every run, holdout macro F1
                                                    over time (<store.root>/report/index.html)

Overrides are Hydra's (`store.root=...`). Prints the page's URI; a PipelineError prints one
`error: ...` line and exits 1; a missing RUN_ID (or --store) prints the usage and exits 2;
-h / --help prints this.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.run.context import open_run
from pipeline.run.report import write_report
from pipeline.run.results import read_vote
from pipeline.run.state import root_store
from pipeline.run.store_page import write_store_page

USAGE = "usage: python -m pipeline.report (RUN_ID | --store) [hydra overrides]"
STORE_FLAG = "--store"


def write_page(target: str, overrides: Sequence[str]) -> str:
    """Write the run report of run `target`, or the store page when `target` is --store;
    returns the page's URI."""
    cfg = load_config(overrides, strict=True)
    if target == STORE_FLAG:
        return write_store_page(root_store(cfg))
    run = open_run(cfg, target)
    return write_report(run.config, run.store, read_vote(run.store))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.report (RUN_ID | --store) [overrides]`: (re)write a finished run's
    report, or the store page."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if not args or "=" in args[0] or (args[0].startswith("-") and args[0] != STORE_FLAG):
        print(USAGE, file=sys.stderr)
        return 2
    setup_logging()
    try:
        print(write_page(args[0], args[1:]))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
