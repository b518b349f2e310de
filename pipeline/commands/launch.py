"""`python -m pipeline.launch [--cluster local|slurm|k8s] [-m] [options] [hydra overrides]`: run a
suite, or with -m (--multirun) one run per point of a sweep (`-m train.lr=1e-3,3e-4`).

The stage graph (pipeline/orchestration/graph.py) is prepare → (train, predict) for each model of
the suite → vote → publish. Where it runs is the executor's business (the registry in
pipeline/orchestration/executors.py):
- local: in this process, one stage after another (orchestration/local.py);
- slurm: submitted with submitit (orchestration/slurm.py); returns, or follows it with --wait;
- k8s:   as Kubernetes Jobs, with the official client (orchestration/k8s.py), followed;
         --dry-run prints a launcher Job that does this in the cluster (for kubectl apply -f -),
         --show-jobs the stage Jobs it would create.
Every stage is a no-op when already done, so `--resume RUN_ID` finishes a partial run.
A new run first checks that data.root holds its tables, then compares the data fingerprint
(pipeline/run/fingerprint.py) with the latest successful run's: unchanged inputs and
configuration mean the launch is skipped (`--force` runs anyway). A run of the same inputs still
going on the cluster is joined, not started twice.
A sweep's runs share a sweep id (`runs list --sweep ID` shows them together); they run one after
another here, side by side on Slurm and Kubernetes, are never skipped, and never move latest.json
(`runs promote` publishes one by hand).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from pipeline.commands.sweep import SweepPoint, sweep_points
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.logs import setup_logging
from pipeline.orchestration.checks import check_config
from pipeline.orchestration.executor import Executor, LaunchRequest
from pipeline.orchestration.executors import EXECUTORS, executor
from pipeline.run.context import RunContext, open_run
from pipeline.run.fingerprint import check_inputs, data_fingerprint
from pipeline.run.history import EXIT_HELD, held_unchanged, read_latest
from pipeline.run.state import new_run_id, root_store
from pipeline.storage.run_layout import FINGERPRINT_KEY, SWEEP_KEY


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m pipeline.launch`."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cluster",
        choices=list(EXECUTORS),
        default="local",
        help="where the stages run (default: local, this machine)",
    )
    p.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="a sweep: one run per point of the overrides' lists (a,b) or range(start,stop)",
    )
    p.add_argument(
        "--resume", metavar="RUN_ID", help="finish run RUN_ID: stages already done are not redone"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="slurm: follow the run to its end and exit non-zero if it failed",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="k8s: print a launcher Job (YAML) that runs this launch in the cluster, for "
        "`kubectl apply -f -`, instead of creating the run's Jobs from here",
    )
    p.add_argument(
        "--show-jobs",
        action="store_true",
        help="k8s: print the run's stage Jobs (YAML) the launcher would create, and stop",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when data and configuration are unchanged since the latest run",
    )
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved configuration a run would use (YAML), check it, and stop",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.epochs=3")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, check every run's configuration, then run or submit the suite
    (each point of a sweep); returns the exit status."""
    args = parser().parse_args(argv)
    setup_logging()
    try:
        backend = executor(args.cluster)
        request = LaunchRequest(tuple(args.overrides), args.wait, args.dry_run, args.show_jobs)
        if args.multirun and args.resume:
            raise ConfigError("--resume finishes one run; it does not go with -m (a sweep)")
        sweep_id = new_run_id() if args.multirun else None
        points = (
            sweep_points(args.overrides) if args.multirun else [SweepPoint(request.overrides, ())]
        )
        configs = [load_config(point_overrides(p, sweep_id)) for p in points]
        for cfg in configs:  # every problem of every run, before a run id, folder or job exists
            if args.show_config:
                sys.stdout.write(OmegaConf.to_yaml(cfg))
            check_config(cfg)
        if args.show_config:
            return 0
        for cfg in configs:
            backend.check(cfg, request)
        if sweep_id is not None:
            return launch_sweep(backend, request, sweep_id, points, configs)
        return launch_run(backend, configs[0], request, resume=args.resume, force=args.force).status
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def point_overrides(point: SweepPoint, sweep_id: str | None) -> list[str]:
    """A run's Hydra overrides: the point's, and the sweep's id when it is one of a sweep."""
    return [*point.overrides, *([f"sweep_id={sweep_id}"] if sweep_id else [])]


@dataclass(frozen=True)
class Launched:
    """What a launch did: its exit status and the run it launched or joined (None if skipped)."""

    status: int
    run: RunContext | None = None


def launch_run(
    backend: Executor,
    cfg: DictConfig,
    request: LaunchRequest,
    *,
    resume: str | None = None,
    force: bool = False,
    swept: Sequence[str] = (),
) -> Launched:
    """Launch one run with `backend`: `resume` (or `run_id=`) names it; else a new one, unless
    the inputs are unchanged since the latest run (skipped) or a run of them is still going (its
    executor joins it). The run's context is made here, once, and its configuration passed on."""
    if resume or cfg.get("run_id") or request.render_only:  # a given run; or manifests only
        run = open_run(cfg, resume)
        if not request.render_only:
            record_sweep(run, swept)  # e.g. the launcher Job of a sweep's `--dry-run`
        return Launched(backend.launch(run.config, request), run)
    check_inputs(cfg)  # before a run is made
    fingerprint = data_fingerprint(cfg)
    request = replace(request, fingerprint=str(fingerprint["sha256"]))
    if not force:
        skipped = unchanged_launch(cfg, fingerprint)
        if skipped is not None:
            return Launched(skipped)
        active = backend.active_run(cfg, str(fingerprint["sha256"]))
        if active:
            then = backend.on_active.format(run_id=active, store=cfg.store.root)
            print(
                f"run {active} of the same data and configuration (fingerprint "
                f"{fingerprint['sha256'][:12]}) is still going on the cluster: {then}"
            )
            run = open_run(cfg, active)
            return Launched(backend.follow(run.config, request), run)
    run = open_run(cfg)  # a new run
    run.store.write_json(FINGERPRINT_KEY, fingerprint)
    record_sweep(run, swept)
    return Launched(backend.launch(run.config, request), run)


def record_sweep(run: RunContext, swept: Sequence[str]) -> None:
    """A run of a sweep (`sweep_id` set) records it in sweep.json, which its manifest copies and
    `runs list` reads: {sweep_id, point: the swept overrides}. Written once."""
    sweep_id = run.config.get("sweep_id")
    if sweep_id and not run.store.exists(SWEEP_KEY):
        run.store.write_json(SWEEP_KEY, {"sweep_id": str(sweep_id), "point": list(swept)})


def unchanged_launch(cfg: DictConfig, fingerprint: dict[str, object]) -> int | None:
    """The exit status of a launch skipped because its inputs and configuration are those of the
    latest run (0) or of a run the publish gate held since (EXIT_HELD), after saying so; None
    when the launch goes on."""
    root = root_store(cfg)
    latest = read_latest(root)
    if (
        latest is not None
        and (latest.get("fingerprint") or {}).get("sha256") == fingerprint["sha256"]
    ):
        print(
            f"skipped: data and configuration unchanged since run {latest['run_id']} "
            f"(fingerprint {str(fingerprint['sha256'])[:12]}, {fingerprint['files']} input "
            "files); latest.json left as it is. Use --force to retrain anyway."
        )
        return 0
    held = held_unchanged(root, fingerprint, latest)
    if held is not None:
        # Retraining unchanged inputs would give the same held run again, every night.
        print(
            f"skipped: data and configuration unchanged since run {held['run_id']}, "
            f"which the publish gate held ({held['reason']}). Promote it (python -m "
            f"pipeline.runs promote {held['run_id']} --reason '...'), change the data "
            "or configuration, or use --force to retrain anyway."
        )
        return EXIT_HELD
    return None


def launch_sweep(
    backend: Executor,
    request: LaunchRequest,
    sweep_id: str,
    points: Sequence[SweepPoint],
    configs: Sequence[DictConfig],
) -> int:
    """One run per point, each a new run (never skipped as unchanged): one after another, or side
    by side from threads where a launch follows its run to the end on a cluster. With --wait, a
    Slurm sweep is submitted whole, then followed. Returns the worst exit status."""
    print(f"sweep {sweep_id}: {len(points)} run(s) on {backend.name}")

    def one(point: SweepPoint, cfg: DictConfig) -> Launched:
        run_request = replace(request, overrides=tuple(point_overrides(point, sweep_id)))
        if not backend.blocks:
            run_request = replace(run_request, wait=False)  # all submitted before any is followed
        try:
            return launch_run(backend, cfg, run_request, force=True, swept=point.swept)
        except PipelineError as e:  # the other points go on
            print(f"error: sweep point {' '.join(point.swept)}: {e}", file=sys.stderr)
            return Launched(1)

    pairs = list(zip(points, configs, strict=True))
    if backend.blocks and backend.side_by_side:
        with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            launched = list(pool.map(lambda pair: one(*pair), pairs))
    else:
        launched = [one(point, cfg) for point, cfg in pairs]
    statuses = [item.status for item in launched]
    runs = [item.run for item in launched if item.run is not None]
    if request.wait and not backend.blocks:
        statuses += [backend.follow(run.config, request) for run in runs]
    print(
        f"sweep {sweep_id}: runs {', '.join(run.run_id for run in runs)}; compare them: "
        f"python -m pipeline.runs list --sweep {sweep_id} store.root={configs[0].store.root}"
    )
    return max(statuses)


if __name__ == "__main__":
    raise SystemExit(main())
