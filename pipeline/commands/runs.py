"""`python -m pipeline.runs COMMAND ...`: look at and manage the runs in the store.

    status RUN_ID    every stage's state, job id and the tail of its log
                     (pipeline/orchestration/status.py)
    cancel RUN_ID    cancel the run's jobs that are still queued or running
    list             every run with its state and scores, newest first (pipeline/run/history.py)

Hydra overrides such as store.root=... come last.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration import status
from pipeline.run import history

# --------------------------------------------------------------------------------------------
# command line: python -m pipeline.runs COMMAND [options] [hydra overrides]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.runs status|cancel RUN_ID [overrides]`; returns the exit status.

    Each subcommand is a parser plus a handler `(cfg, args) -> int` in
    pipeline/orchestration/status.py; the config is composed from the overrides (store.root=...
    as for launch) with run_id set.
    """
    import argparse

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
