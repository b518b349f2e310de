"""`python -m pipeline.runs COMMAND ...`: look at and manage the runs in the store.

    status RUN_ID    every stage's state, job id and the tail of its log (orchestration/status.py)
    cancel RUN_ID    cancel the run's jobs that are still queued or running
    list             every run with its state and scores, newest first (pipeline/run/history.py)
    promote RUN_ID --reason TEXT [--by NAME]
                     publish a held (or any finished) run by hand: latest.json moves to it, and
                     its gate.json records who and why (pipeline/stages/publish.py)

Hydra overrides such as store.root=... come last.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration import status
from pipeline.run import history
from pipeline.stages import publish


def cmd_promote(cfg: DictConfig, args: argparse.Namespace) -> int:
    """`python -m pipeline.runs promote RUN_ID --reason TEXT [--by NAME]`."""
    by = args.by or os.environ.get("USER") or getpass.getuser()
    gate = publish.promote(cfg, str(args.run_id), str(args.reason), by)
    promoted = gate["promoted"]
    print(
        f"run {args.run_id} published by hand by {promoted['by']}: latest.json now names it "
        f"(was {promoted['previous']}); reason recorded in its gate.json"
    )
    return 0


# --------------------------------------------------------------------------------------------
# command line: python -m pipeline.runs COMMAND [options] [hydra overrides]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.runs status|cancel RUN_ID [overrides]`; returns the exit status.

    Each subcommand is a parser plus a handler `(cfg, args) -> int` (orchestration/status.py,
    run/history.py); the config is composed from the overrides (store.root=... as for launch)
    with run_id set.
    """
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

    promote = add_command(
        "promote", "publish a held (or any finished) run by hand: latest.json moves to it",
        cmd_promote,
    )  # fmt: skip
    promote.add_argument("--reason", required=True, help="why it is published by hand (recorded)")
    promote.add_argument(
        "--by", default=None, help="who publishes it (recorded; default: the login name)"
    )

    for sub in commands.choices.values():
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store.root=s3://b/p")
    # overrides may also follow options (promote RUN --reason "..." store.root=...)
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    setup_logging()
    try:
        cfg = load_config(args.overrides, strict=True)
        if getattr(args, "run_id", None):
            cfg.run_id = args.run_id
        return int(args.handler(cfg, args))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
