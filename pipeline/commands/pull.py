"""`python -m pipeline.pull [--run latest|RUN_ID] [--to DIR] [--what WHAT] [overrides]`

Download a run's results from the store (local folder or S3; `store.root=...` as for launch),
verify every file's size against the store, and print what was pulled: run id, date, members and
val macro F1. WHAT is one of:
    submission    submission.csv and vote.json
    predictions   predictions/ (every answers file) and candidates/<name>/metrics.json
    report        report/index.html (self-contained: open it in a browser)
    all           everything of the run but the packed images (shards/) and model checkpoints
                  (models/<name>/checkpoint.safetensors, last*, best-*, legacy .pt)
Files land in DIR/<same key as in the run> (default DIR: pulled/<run_id>); each file is written
atomically, so an interrupted pull never leaves a complete-looking partial file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError, PipelineError, StageFailed, StoreError
from pipeline.core.logs import setup_logging
from pipeline.run.history import read_latest
from pipeline.run.results import read_vote
from pipeline.run.state import root_store
from pipeline.storage.run_layout import RUNS, is_checkpoint_file
from pipeline.storage.store import Store, join_key

WHAT = ("submission", "predictions", "report", "all")
log = logging.getLogger(__name__)


def wanted(key: str, what: str) -> bool:
    """Whether a key of the run belongs to the `what` selection."""
    if what == "submission":
        return key in ("submission.csv", "vote.json")
    if what == "predictions":
        return key.startswith(("predictions/", "candidates/"))
    if what == "report":
        return key.startswith("report/")
    return not key.startswith("shards/") and not is_checkpoint_file(key.rsplit("/", 1)[-1])


def resolve_run(root: Store, run: str) -> str:
    """`latest` → the run latest.json names; a run id must exist in the store."""
    if run == "latest":
        latest = read_latest(root)
        if latest is None:
            raise StageFailed(f"no successful run yet: {root.uri_of('latest.json')} is missing")
        return str(latest["run_id"])
    if not root.exists(join_key(RUNS, run, "manifest.json")):
        raise ConfigError(f"run {run!r} not found under {root.uri_of(RUNS)}")
    return run


def pull(root: Store, run_id: str, to: Path, what: str) -> list[tuple[str, int]]:
    """Download the selected files of a run into `to`; returns (key, size) of each, verified."""
    if what not in WHAT:
        raise ConfigError(f"--what {what!r} is not one of {WHAT}")
    run = root.child(join_key(RUNS, run_id))
    files = {k: size for k, size in run.sizes().items() if wanted(k, what)}
    if not files:
        raise StageFailed(f"run {run_id} has no {what} files under {run.uri}: did its vote run?")
    pulled = {}
    for key, size in files.items():
        dest = destination(to, key)
        if dest is None:
            log.warning("skipped %s/%s: not a safe key, or it would land outside %s",
                        run.uri.rstrip("/"), key, to)  # fmt: skip
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        run.read_file(key, dest)
        verify(dest, size, run.uri_of(key))
        pulled[key] = size
    return sorted(pulled.items())


def destination(to: Path, key: str) -> Path | None:
    """Where `key` lands under `to`, or None when it must not be pulled: the run's keys come
    from a listing others may write (S3 allows `report/../../x`), so a key must be safe
    (join_key: no `..`, no absolute path, …) and land, links resolved, inside `to`."""
    try:
        join_key(key)
    except StoreError:
        return None
    dest = to / key
    return dest if dest.resolve().is_relative_to(to.resolve()) else None


def verify(path: Path, size: int, source: str) -> None:
    """The downloaded file must have the size the store lists; a mismatch removes it."""
    got = path.stat().st_size
    if got != size:
        path.unlink(missing_ok=True)
        raise StoreError(f"{path} has {got} bytes but {source} has {size}: removed, pull again")


def summary(root: Store, run_id: str, files: list[tuple[str, int]], to: Path) -> list[str]:
    """What a user wants to know after a pull."""
    run = root.child(join_key(RUNS, run_id))
    manifest: dict[str, Any] = run.read_json("manifest.json") if run.exists("manifest.json") else {}
    lines = [
        f"pulled run {run_id} (created {manifest.get('created', '?')}, "
        f"code {manifest.get('code_version', '?')})",
        f"  {len(files)} files, {sum(s for _, s in files):,} bytes, sizes verified → {to}",
    ]
    if run.exists("vote.json"):
        vote = read_vote(run)
        lines.append(f"  members: {', '.join(vote['members'])}")
        lines.append(
            f"  val macro F1 {vote['ensemble']['val_macro_f1']:.4f}, "
            f"accuracy {vote['ensemble']['val_accuracy']:.4f}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.pull",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", default="latest", help="latest (default) or a run id")
    parser.add_argument("--to", type=Path, default=None, help="folder (default pulled/<run_id>)")
    parser.add_argument("--what", choices=WHAT, default="submission")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store.root=s3://b/p")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.overrides, strict=True)
        root = root_store(cfg)
        run_id = resolve_run(root, args.run)
        to = args.to or Path("pulled") / run_id
        files = pull(root, run_id, to, args.what)
        print("\n".join(summary(root, run_id, files, to)))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
