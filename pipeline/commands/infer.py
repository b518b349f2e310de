"""`python -m pipeline.infer [--cluster local|slurm|k8s] [--dry-run] [overrides]`: classify new
photos with a finished run (the work itself: pipeline/stages/infer.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.stages import infer as stage
from pipeline.stages.infer import format_summary, infer, resolve_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.infer",
        description=stage.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", choices=("local", "slurm", "k8s"), default="local",
                   help="here (default), as a Slurm job or as a Kubernetes Job")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="--cluster k8s: print the Job instead of creating it")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. infer.input=s3://b/new")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.overrides)
        check_config(cfg)
        if args.cluster == "local":
            summary = infer(cfg)
            print(format_summary(summary))
            return 0
        if not cfg.infer.get("input"):
            raise ConfigError("infer.input is not set: give a folder or s3://bucket/prefix")
        if not (args.dry_run and cfg.get("run_id")):  # a dry run of a given run reads nothing
            cfg.run_id, _ = resolve_run(cfg)  # pinned: the job uses the run chosen now
        overrides = [o for o in args.overrides if not o.startswith("run_id=")]
        if args.cluster == "k8s":
            from pipeline.orchestration.k8s import launch_infer_k8s

            return launch_infer_k8s(cfg, overrides, dry_run=args.dry_run)
        from pipeline.orchestration.slurm import submit_infer

        print(submit_infer(cfg))
        return 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
