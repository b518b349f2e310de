"""`python -m pipeline.infer [--cluster local|slurm|k8s] [--dry-run] [overrides]`: classify new
photos with a finished run (the work itself: pipeline/stages/infer.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.orchestration.executors import EXECUTORS, executor
from pipeline.stages import infer as stage


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.infer",
        description=stage.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", choices=list(EXECUTORS), default="local",
                   help="here (default), as a Slurm job or as a Kubernetes Job")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="--cluster k8s: print the Job instead of creating it")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. infer.input=s3://b/new")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Classify new photos where `--cluster` says (the executor's `infer`); the exit status."""
    setup_logging()
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.overrides)
        check_config(cfg)
        overrides = [o for o in args.overrides if not o.startswith("run_id=")]
        return executor(args.cluster).infer(cfg, overrides, dry_run=args.dry_run)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
