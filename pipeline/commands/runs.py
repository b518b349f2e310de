"""`python -m pipeline.runs COMMAND ...`: look at and manage the runs in the store.

    status RUN_ID    every stage's state, job id and the tail of its log, as the executor that
                     launched the run sees its jobs (orchestration/status.py; RUN_ID may be latest)
    cancel RUN_ID    cancel the run's jobs that are still queued or running (Slurm: scancel;
                     Kubernetes: its Jobs deleted, pods first)
    list [--sweep ID]
                     every run with its state and scores, newest first (pipeline/run/history.py);
                     a sweep's runs show its id and their swept values
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
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.executors import run_executor
from pipeline.orchestration.status import format_status
from pipeline.run.context import open_run
from pipeline.run.history import (
    EXIT_HELD,
    format_runs,
    gate_line,
    gate_state,
    read_gate,
    read_latest,
    run_summaries,
)
from pipeline.run.state import root_store, run_store

#: What `RUN_ID` may also be: the run latest.json names (as for `pull --run latest`).
LATEST = "latest"


def resolved_run_id(cfg: DictConfig, run_id: str) -> str:
    """`run_id`, or for `latest` the run latest.json names; ConfigError when there is none."""
    if run_id != LATEST:
        return run_id
    latest = read_latest(root_store(cfg))
    if latest is None:
        raise ConfigError(
            f"no published run under store.root={cfg.store.root}: latest.json is missing; "
            "name a run (python -m pipeline.runs list shows them)"
        )
    return str(latest["run_id"])


def cmd_status(cfg: DictConfig, args: argparse.Namespace) -> int:
    """`runs status RUN_ID`: the run's stages as its executor sees them and the publish gate's
    decision; exit 0 when done or running, 1 when it failed, 3 when the gate held it."""
    status = run_executor(run_store(cfg)).status(cfg)
    print(format_status(status, tail=args.tail))
    gate = read_gate(run_store(cfg))
    if gate is not None:
        print(f"  publish: {gate_line(gate)}")
    if status.state == "failed":
        return 1
    return EXIT_HELD if gate_state(gate) == "held" else 0


def cmd_cancel(cfg: DictConfig, args: argparse.Namespace) -> int:
    """`runs cancel RUN_ID`: cancel what is still queued or running and say what."""
    cancelled = run_executor(run_store(cfg)).cancel(cfg)
    if cancelled:
        print(f"run {cfg.run_id}: cancelled job(s) {' '.join(cancelled)}")
    else:
        print(f"run {cfg.run_id}: nothing queued or running to cancel")
    return 0


def cmd_list(cfg: DictConfig, args: argparse.Namespace) -> int:
    """`runs list [--sweep ID]`: every run (of the sweep) with its state and scores, newest
    first."""
    root = root_store(cfg)
    latest = read_latest(root)
    summaries = run_summaries(root)
    if args.sweep:
        summaries = [s for s in summaries if (s.get("sweep") or {}).get("sweep_id") == args.sweep]
    if not summaries:
        print(
            f"no runs{f' of sweep {args.sweep}' if args.sweep else ''} under {root.uri_of('runs')}"
        )
        return 0
    print("\n".join(format_runs(summaries, latest["run_id"] if latest else None)))
    return 0


def cmd_promote(cfg: DictConfig, args: argparse.Namespace) -> int:
    """`python -m pipeline.runs promote RUN_ID --reason TEXT [--by NAME]`."""
    from pipeline.stages import publish  # here: the gate's modules import torch

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

    Each subcommand is a parser plus a handler `(cfg, args) -> int` above; the config is composed
    from the overrides (store.root=... as for launch) with run_id set (`latest` resolved).
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

    show = add_command("status", "every stage's state, job id and log tail", cmd_status)
    show.add_argument("--tail", type=int, default=5, help="log lines per job (default: 5)")
    add_command("cancel", "cancel the run's queued and running jobs", cmd_cancel)
    listing = add_command(
        "list", "every run with its state and scores, newest first", cmd_list, run_id=False
    )
    listing.add_argument("--sweep", metavar="ID", help="only the runs of sweep ID")

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
            cfg = open_run(cfg, resolved_run_id(cfg, args.run_id)).config
        return int(args.handler(cfg, args))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
