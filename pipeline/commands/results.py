"""`python -m pipeline.results [--run latest|RUN_ID] [--out FILE] [store.root=...]`

A Markdown table of a finished run: val macro F1 and accuracy of every model (in its own task's
classes), every candidate (18 classes) and every vote method of the voted members, the candidates'
and methods' val macro F1 with a 95 % bootstrap interval by person and the paired difference
against the best member; for candidates and votes also the eval (held-out) scores when the eval
set has ground truth (the generated data has). A line says what was submitted and why.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from pipeline.core.config import load_config
from pipeline.core.errors import PipelineError, StoreKeyNotFound
from pipeline.core.logs import setup_logging
from pipeline.run.results import Interval, difference_text, interval_text, read_vote
from pipeline.run.state import root_store
from pipeline.storage.run_layout import LATEST_KEY
from pipeline.storage.store import Store, join_key


class RowScores(TypedDict):
    """The two scores a row shows (a model's or the vote's Scores have them among others)."""

    macro_f1: float
    accuracy: float


HEADER = [
    "| kind | name | task | val macro F1 [95 % CI] | minus best member [95 % CI] | val accuracy "
    "| eval macro F1 | eval accuracy |",
    "|---|---|---|---:|---:|---:|---:|---:|",
]


def results_table(run: Store) -> str:
    """Markdown table of a run whose vote finished (StoreKeyNotFound when it did not): every
    model, candidate and vote method, with val intervals by person where vote.json has them."""
    vote = read_vote(run)
    lines = [f"Run `{vote['run_id']}`.", "", *HEADER]
    models = sorted({k.split("/")[1] for k in run.list("models") if k.endswith("metrics.json")})
    for name in models:
        m = run.read_json(join_key("models", name, "metrics.json"))
        task = m["task"] + (f" ({'+'.join(m['mask_groups'])})" if m.get("mask_groups") else "")
        lines.append(row("model", name, task, m["val"]))
    voted = vote.get("voted", vote["members"])
    for c in vote["candidates"]:
        member = " (voted)" if c["name"] in voted else ""
        scores: RowScores = {"macro_f1": c["val_macro_f1"], "accuracy": c["val_accuracy"]}
        held_out: RowScores | None = (
            {"macro_f1": c["eval_macro_f1"], "accuracy": c["eval_accuracy"]}
            if "eval_macro_f1" in c
            else None
        )
        lines.append(
            row("candidate", c["name"] + member, "18 classes", scores, held_out,
                c.get("val_interval"))
        )  # fmt: skip
    method = vote.get("method", "hard")
    submitted_vote = vote.get("submitted", "vote") == "vote"
    for name, scored in vote.get("methods", {}).items():
        mark = " (submitted)" if name == method and submitted_vote else ""
        val: RowScores = {"macro_f1": scored["val"]["macro_f1"], "accuracy": scored["val_accuracy"]}
        ev: RowScores | None = (
            {"macro_f1": scored["eval_macro_f1"], "accuracy": scored["eval_accuracy"]}
            if "eval_macro_f1" in scored
            else None
        )
        label = f"top-{len(voted)} {name} vote{mark}"
        lines.append(row("vote", label, "18 classes", val, ev, scored["val"]))
    ens = vote["ensemble"]
    if "methods" not in vote:  # a vote.json from before every method was scored
        lines.append(
            row(
                "vote",
                f"top-{vote['top_k']} {method} vote",
                "18 classes",
                {"macro_f1": ens["val_macro_f1"], "accuracy": ens["val_accuracy"]},
                vote.get("eval"),
            )
        )
    if not submitted_vote:
        lines.append(
            row("submitted", f"{vote['members'][0]} alone", "18 classes",
                {"macro_f1": ens["val_macro_f1"], "accuracy": ens["val_accuracy"]},
                vote.get("eval"), ens.get("val_interval"))
        )  # fmt: skip
    lines.append("")
    if "fallback" in vote:
        lines.append(f"Submitted: {vote['fallback']['reason']}. Rule: {vote['fallback']['rule']}.")
    if "interval" in vote:
        info = vote["interval"]
        lines.append(
            f"Intervals: {info['level']:.0%} percentile bootstrap of the {info['persons']} val "
            f"people ({info['resamples']} resamples, each person's photos together); differences "
            f"paired against the best member, {info['reference']}."
        )
    if "eval" in vote:
        ev_scores = vote["eval"]
        lines += [
            "",
            f"Eval (generated ground truth) of the submission: macro F1 "
            f"**{ev_scores['macro_f1']:.4f}**, accuracy **{ev_scores['accuracy']:.4f}**.",
        ]
    return "\n".join(lines) + "\n"


def row(
    kind: str,
    name: str,
    task: str,
    scores: RowScores,
    held_out: RowScores | None = None,
    interval: Interval | None = None,
) -> str:
    """One table row: val scores (with the interval and the paired difference against the best
    member when given), and eval scores where the eval set has ground truth."""
    f1, diff = f"{scores['macro_f1']:.4f}", "—"
    if interval is not None:
        f1, diff = interval_text(interval), difference_text(interval) or "—"
    cells = [f1, diff, f"{scores['accuracy']:.4f}"]
    if held_out is None:
        cells += ["—", "—"]
    else:
        cells += [f"{held_out['macro_f1']:.4f}", f"{held_out['accuracy']:.4f}"]
    return f"| {kind} | {name} | {task} | {' | '.join(cells)} |"


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write) the results table of a run."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", default="latest", help="run id, or latest (default)")
    parser.add_argument("--out", type=Path, help="write the table to this file too")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store.root=...")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        store = root_store(load_config(args.overrides, strict=True))
        run_id = store.read_json(LATEST_KEY)["run_id"] if args.run == "latest" else args.run
        table = results_table(store.child(join_key("runs", run_id)))
    except StoreKeyNotFound as e:
        print(f"error: {e} (has that run's vote finished?)", file=sys.stderr)
        return 1
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
