"""`python -m pipeline.launch [--cluster local|slurm|k8s] [options] [hydra overrides]`: run a suite.

The stage graph (pipeline/orchestration/graph.py) is prepare → (train, predict) for each model of
the suite → vote. Where it runs:
- local: in this process, one stage after another (orchestration/local.py);
- slurm: submitted with submitit (orchestration/slurm.py); returns, or follows it with --wait;
- k8s:   as Kubernetes Jobs, with the official client (orchestration/k8s.py), followed;
         --dry-run prints a launcher Job that does this in the cluster (for kubectl apply -f -),
         --show-jobs the stage Jobs it would create.
Every stage is a no-op when already done, so `--resume RUN_ID` finishes a partial run.
A new run first compares the data fingerprint (pipeline/run/fingerprint.py) with the latest
successful run's: unchanged inputs and configuration mean the launch is skipped (`--force` runs
anyway). On Kubernetes, a run of the same inputs whose Jobs are still going is followed, not
started twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.orchestration.local import run_local
from pipeline.run.fingerprint import data_fingerprint
from pipeline.run.history import (
    EXIT_HELD,
    held_unchanged,
    read_latest,
    run_exit_status,
    summary_lines,
)
from pipeline.run.state import new_run_id, root_store, run_store
from pipeline.storage.run_layout import FINGERPRINT_KEY

CLUSTERS = ("local", "slurm", "k8s")


def recorded_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """Kubernetes: the run's data fingerprint (`runs/<run_id>/fingerprint.json`), which labels its
    Jobs. A run named on the command line without one (the launcher Job that `--dry-run` prints,
    `--resume` of a run made by hand) gets it now; latest.json keeps it too."""
    run = run_store(cfg)
    if run.exists(FINGERPRINT_KEY):
        return run.read_json(FINGERPRINT_KEY)
    fingerprint = data_fingerprint(cfg)
    run.write_json(FINGERPRINT_KEY, fingerprint)
    return fingerprint


def active_run(cfg: DictConfig, cluster: str, fingerprint: dict[str, Any]) -> str | None:
    """The id of a run of the same inputs that is still going on `cluster`, or None.

    Kubernetes: its Jobs (labelled with the fingerprint) are still going, e.g. after its launcher
    died in a node drain; this launch follows it. Slurm: its jobs (the run's scheduler.json) are
    queued or running; this launch submits nothing (and follows it with --wait)."""
    sha = str(fingerprint["sha256"])
    if cluster == "k8s":
        from pipeline.orchestration.k8s import active_run as active_k8s_run
        from pipeline.orchestration.k8s import kube_jobs_api

        run_id = active_k8s_run(kube_jobs_api(), str(cfg.k8s.namespace), sha)
        then = "following it instead of starting a second run"
    else:
        from pipeline.orchestration.slurm import active_run as active_slurm_run

        run_id = active_slurm_run(cfg, sha)
        then = (
            "not submitting a second run (--force does); follow it: python -m pipeline.runs "
            f"status {run_id} store.root={cfg.store.root}"
        )
    if run_id:
        print(
            f"run {run_id} of the same data and configuration (fingerprint {sha[:12]}) is still "
            f"going on the cluster: {then}"
        )
    return run_id


def unchanged_since(latest: dict[str, Any] | None, fingerprint: dict[str, Any]) -> bool:
    """Whether the latest successful run learnt from exactly these inputs and configuration."""
    if not latest:
        return False
    return bool((latest.get("fingerprint") or {}).get("sha256") == fingerprint["sha256"])


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run or submit the suite; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default="local",
        help="where the stages run (default: local, this machine)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="finish run RUN_ID: stages already done are not redone",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="slurm: follow the run to its end and exit non-zero if it failed",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="k8s: print a launcher Job (YAML) that runs this launch in the cluster, for "
        "`kubectl apply -f -`, instead of creating the run's Jobs from here",
    )
    parser.add_argument(
        "--show-jobs",
        action="store_true",
        help="k8s: print the run's stage Jobs (YAML) the launcher would create, and stop",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even when data and configuration are unchanged since the latest run",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved configuration a run would use (YAML), check it, and stop",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    setup_logging()
    started = time.time()
    try:
        render_only = args.dry_run or args.show_jobs
        if render_only and args.cluster != "k8s":
            raise ConfigError("--dry-run and --show-jobs apply to --cluster k8s only")
        if args.wait and args.cluster == "local":
            raise ConfigError("--wait applies to --cluster slurm (a local run always waits)")
        cfg = load_config(args.overrides)
        if args.show_config:
            sys.stdout.write(OmegaConf.to_yaml(cfg))
        # every problem at once, before a fingerprint, a run id, a run folder or a job exists
        check_config(cfg)
        if args.show_config:
            return 0
        if args.cluster == "k8s":
            from pipeline.orchestration.k8s import check_cluster_paths

            check_cluster_paths(cfg)  # before any data is read or any run is made
        if args.resume:
            cfg.run_id = args.resume
        fingerprint = None
        if not cfg.get("run_id"):
            # A new run (rendering manifests reads no data).
            fingerprint = None if render_only else data_fingerprint(cfg)
            latest = None if render_only else read_latest(root_store(cfg))
            if (
                fingerprint
                and latest is not None
                and not args.force
                and unchanged_since(latest, fingerprint)
            ):
                print(
                    f"skipped: data and configuration unchanged since run {latest['run_id']} "
                    f"(fingerprint {fingerprint['sha256'][:12]}, {fingerprint['files']} input "
                    "files); latest.json left as it is. Use --force to retrain anyway."
                )
                return 0
            held = (
                None
                if not fingerprint or args.force
                else held_unchanged(root_store(cfg), fingerprint, latest)
            )
            if held is not None:
                # Retraining unchanged inputs would give the same held run again, every night.
                print(
                    f"skipped: data and configuration unchanged since run {held['run_id']}, "
                    f"which the publish gate held ({held['reason']}). Promote it (python -m "
                    f"pipeline.runs promote {held['run_id']} --reason '...'), change the data "
                    "or configuration, or use --force to retrain anyway."
                )
                return EXIT_HELD
            # --force starts a new run even beside an active one of the same inputs.
            look = args.cluster != "local" and not args.force
            active = active_run(cfg, args.cluster, fingerprint) if look and fingerprint else None
            if active and args.cluster == "slurm":
                # Its jobs are queued or running: say so, and follow it only when asked to.
                cfg.run_id = active
                if not args.wait:
                    return 0
                from pipeline.orchestration.slurm import follow

                return follow(cfg, run_store(cfg))
            cfg.run_id = active or new_run_id()
            if fingerprint and not active:
                run_store(cfg).write_json(FINGERPRINT_KEY, fingerprint)
        if args.cluster == "slurm":
            from pipeline.orchestration.slurm import launch_slurm

            return launch_slurm(cfg, wait=args.wait)
        if args.cluster == "k8s":
            from pipeline.orchestration.k8s import launch_k8s, pass_through

            launch_args = [*pass_through(args.overrides), f"run_id={cfg.run_id}"]
            sha = None
            if not render_only:
                if fingerprint is None:  # a run named on the command line
                    fingerprint = recorded_fingerprint(cfg)
                sha = fingerprint["sha256"]
            return launch_k8s(
                cfg,
                dry_run=args.dry_run,
                show_jobs=args.show_jobs,
                overrides=args.overrides,
                launch_args=launch_args,
                fingerprint=sha,
            )
        result = run_local(cfg)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(cfg, result, time.time() - started)))
    return run_exit_status(run_store(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
