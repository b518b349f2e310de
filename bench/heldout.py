"""`python -m bench.heldout --run DATA_ROOT STORE_ROOT SEED [--run ...] [--out FILE]`

The vote's held-out check (docs/models.md "Results table"): for each store's latest run, trained
on a generated dataset (`python -m pipeline.synth`) whose eval set has ground truth, the eval
macro F1 of what was submitted, of every vote method of the voted members and of the best member,
each with a 95 % bootstrap interval **by person** and the difference against the best member,
paired. The generator knows which eval photos belong to whom (`synth.plan_dataset`), so the
interval resamples people, as on val. With several datasets (generator seeds) a last table gives
the mean difference over them, its interval from resampling each dataset's people independently.

Nothing here chooses anything: val chose the members, the method and the fallback; eval only
reports. Read from the run's Parquet answers (pipeline/run/answers.py) and vote.json.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import load_config
from pipeline.domain.metrics import bootstrap_scores
from pipeline.ml.ensemble import VOTE_METHODS, combine
from pipeline.run.results import INTERVAL_LEVEL, INTERVAL_RESAMPLES, read_vote
from pipeline.run.state import root_store
from pipeline.storage.run_layout import LATEST_KEY, answers_key
from pipeline.storage.store import Store, join_key
from pipeline.tools import synth

SUBMITTED = "submitted (default)"


@dataclass
class HeldOut:
    """One run's eval scores: point values and bootstrap samples by person, per predictor."""

    label: str
    best: str
    submitted: str
    points: dict[str, float]
    samples: dict[str, np.ndarray]


def eval_persons(data_root: Path, seed: int, image_ids: Sequence[str]) -> np.ndarray:
    """The generated person index of each eval photo, from the plan of generator seed `seed`."""
    people = len(pd.read_csv(data_root / "train" / "train.csv"))
    eval_people = len(pd.read_csv(data_root / "eval" / "info.csv")) // len(synth.STEMS)
    _, evals = synth.plan_dataset(people, eval_people, seed)
    owner = {
        synth.eval_image_id(seed, p.index * len(synth.STEMS) + k, p.ext): p.index
        for p in evals
        for k in range(len(synth.STEMS))
    }
    missing = [i for i in image_ids if i not in owner]
    if missing:
        raise SystemExit(
            f"error: {len(missing)} eval photos of {data_root} are not the generator's "
            f"(first {missing[0]!r}): is {seed} its generator seed?"
        )
    return np.array([owner[i] for i in image_ids])


def answers(run: Store, kind: str, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(io.BytesIO(run.read_bytes(answers_key(kind, name, "eval"))))
    return frame.set_index("image_id")


def held_out(data_root: Path, store_root: str, seed: int) -> HeldOut:
    """Eval scores of the latest run of `store_root`, trained on `data_root`."""
    store = root_store(load_config([f"store.root={store_root}"]))
    run_id = str(store.read_json(LATEST_KEY)["run_id"])
    run = store.child(join_key("runs", run_id))
    vote = read_vote(run)
    truth = pd.read_csv(data_root / "eval" / "ground_truth.csv").set_index("ImageID")["ans"]
    ids = truth.index.tolist()
    voted = vote.get("voted", vote["members"])
    dists = {c: np.stack(answers(run, "candidate", c).loc[ids, "probs"].to_numpy()) for c in voted}
    predictions = {c: dists[c].argmax(axis=1) for c in voted[:1]}
    for method in VOTE_METHODS:
        predictions[f"vote {method}"] = combine(method, [dists[c] for c in voted])[1]
    predictions[SUBMITTED] = answers(run, "vote", "vote").loc[ids, "class"].to_numpy()
    points, samples = bootstrap_scores(
        truth.to_numpy(),
        predictions,
        eval_persons(data_root, seed, ids),
        resamples=INTERVAL_RESAMPLES,
    )
    how = vote.get("method", "hard")
    submitted = (
        f"the {how} vote of {', '.join(vote['members'])}"
        if vote.get("submitted", "vote") == "vote"
        else f"{vote['members'][0]} alone (the fallback rule)"
    )
    return HeldOut(f"{data_root.name} (run {run_id})", voted[0], submitted, points, samples)


def interval(samples: np.ndarray) -> str:
    tail = (1.0 - INTERVAL_LEVEL) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return f"[{low:+.3f}, {high:+.3f}]"


def table(result: HeldOut) -> list[str]:
    lines = [
        f"Held-out eval of {result.label}; submitted: {result.submitted}.",
        "",
        "| predictor | eval macro F1 [95 % CI] | minus best member [95 % CI] |",
        "|---|---:|---:|",
    ]
    ref = result.samples[result.best]
    for name, point in result.points.items():
        shown = f"best member ({name})" if name == result.best else name
        f1 = f"{point:.4f} {interval(result.samples[name]).replace('+', '')}"
        diff = "—"
        if name != result.best:
            delta = point - result.points[result.best]
            diff = f"{delta:+.4f} {interval(result.samples[name] - ref)}"
        lines.append(f"| {shown} | {f1} | {diff} |")
    return lines


def mean_table(results: Sequence[HeldOut]) -> list[str]:
    """The mean over datasets of each predictor's difference against its run's best member."""
    lines = [
        f"Mean over {len(results)} datasets of the difference against each run's best member "
        "(each dataset's people resampled independently):",
        "",
        "| predictor | mean eval macro F1 | mean minus best member [95 % CI] |",
        "|---|---:|---:|",
    ]
    names = [n for n in results[0].points if all(n in r.points for r in results)]
    for name in names:
        if name == results[0].best:
            continue
        f1 = np.mean([r.points[name] for r in results])
        deltas = [r.points[name] - r.points[r.best] for r in results]
        samples = np.mean([r.samples[name] - r.samples[r.best] for r in results], axis=0)
        lines.append(f"| {name} | {f1:.4f} | {np.mean(deltas):+.4f} {interval(samples)} |")
    best = np.mean([r.points[r.best] for r in results])
    lines.append(f"| best member | {best:.4f} | — |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.heldout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        nargs=3,
        action="append",
        required=True,
        metavar=("DATA_ROOT", "STORE_ROOT", "SEED"),
        help="a generated dataset, the store its run went to, and its generator seed",
    )
    parser.add_argument("--out", type=Path, help="write the tables to this file too")
    args = parser.parse_args(argv)
    results = []
    for data_root, store_root, seed in args.run:
        if not seed.isdigit():
            parser.error(f"--run {data_root} {store_root} {seed}: SEED must be a whole number")
        results.append(held_out(Path(data_root), store_root, int(seed)))
    lines: list[str] = []
    for result in results:
        lines += [*table(result), ""]
    if len(results) > 1:
        lines += mean_table(results)
    text = "\n".join(lines).rstrip() + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
