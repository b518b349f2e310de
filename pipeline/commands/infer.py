"""`python -m pipeline.infer [--cluster local|slurm|k8s] [--dry-run]
infer.input=FOLDER|s3://bucket/prefix [run_id=…] [overrides]`

Classify new, unlabelled photos with the voted members of a finished run: the run latest.json
names (under `store.root`), or `run_id=…`. Each photo under `infer.input` (searched recursively;
.jpg, .jpeg, .png) is read, fully decoded and checked as the prepare stage checks photos; a bad
one is reported in the batch's bad-inputs CSV and never stops the batch. The run's own settings
(input size, centre crops, test-time flip, members, vote method) come from its manifest and
vote.json, so the answers are those the run would give.

Written under `infer.output` (default `<store.root>/infer/<last part of infer.input>`):

    predictions/<batch>.parquet   the answers schema (pipeline/run/answers.py), split "new": the
                                  vote (kind=vote) and each member (kind=candidate); the
                                  folder reads as one dataset
    classes/<batch>.csv           image,class,mask,gender,age_group: the vote's answers
    bad_inputs/<batch>.csv        path,reason of each photo that could not be used
    seen.parquet                  content_sha256, run_id, image_id, batch of every photo
                                  classified so far

A photo whose content (sha256) the same run already classified there is not classified again
when the same input is processed again; a newer run classifies it anew. seen.parquet is written
last, so a batch stopped half-way is classified again in full next time, never lost. With
`--cluster slurm` the same runs as one Slurm job (resources `slurm.stages.infer`); with
`--cluster k8s` as one Kubernetes Job (`--dry-run` prints it for `kubectl apply -f -`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.orchestration.executors import EXECUTORS, executor


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.infer",
        description=__doc__,
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
