"""The vote stage: the top-k candidates voted into `submission.csv` and `vote.json`.

Candidates (pipeline.ml.ensemble) are ranked by val macro F1. `suite.vote.method` says how the
top-k members are combined per image: `hard_per_task`, a majority for mask, gender and age
separately; `hard` (the seed's), the class most members predict; each tie going to the
best-ranked member among the tied; `soft`, the class of highest mean probability over the
members' 18-class distributions. Every method and candidate is scored on val with a bootstrap
interval by person and the paired difference against the best member (vote.json). When the best
member beats the configured vote on val by more than `suite.vote.fallback_margin`, it is
submitted alone (one candidate dominates) and vote.json says so. Each candidate's val/eval (and
holdout, for the publish gate only: nothing here is chosen on it) answers go to
`predictions/candidates/<name>/`, the vote's to `predictions/vote/` (the answers
schema, pipeline/run/answers.py), each candidate's metrics to `candidates/<name>/metrics.json`.
The submission has exactly the rows and order of `eval/info.csv`, or the stage fails.
Then the run's report (pipeline.run.report) is written; the publish stage that follows
(pipeline.stages.publish) decides whether `<store.root>/latest.json` moves to this run.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.core.csv_cells import csv_bytes, formula_cells, neutralise_cell
from pipeline.core.errors import StageFailed, StoreKeyNotFound
from pipeline.domain.labels import NUM_CLASSES
from pipeline.domain.metrics import (
    Interval,
    Scores,
    bootstrap_by_person,
    classification_metrics,
    macro_f1,
)
from pipeline.ml.ensemble import VOTE_METHODS, Candidate, candidate_probs, candidate_specs, combine
from pipeline.run.answers import answers_table, write_answers
from pipeline.run.report import write_report
from pipeline.run.results import (
    INTERVAL_LEVEL,
    INTERVAL_RESAMPLES,
    CandidateScore,
    Fallback,
    MethodScore,
    VoteResult,
)
from pipeline.run.state import read_index, run_store
from pipeline.storage.run_layout import (
    BAD_INPUTS_KEY,
    PREPARE_STAGE,
    SUBMISSION_KEY,
    VOTE_KEY,
    answers_key,
    prediction_key,
    stage_key,
)
from pipeline.storage.store import Store, join_key

log = logging.getLogger(__name__)


def read_probs(run: Store, name: str, split: str, image_ids: pd.Series) -> np.ndarray:
    """A model's probabilities for a split, in the order of `image_ids`.

    Raises StageFailed naming the model when its predictions are missing or incomplete.
    """
    key = prediction_key(name, split)
    try:
        df = pd.read_parquet(io.BytesIO(run.read_bytes(key)), columns=["image_id", "probs"])
    except StoreKeyNotFound as e:
        raise StageFailed(
            f"model {name!r} has no {split} predictions ({run.uri_of(key)}): its train or predict "
            "job did not complete, so the vote cannot run"
        ) from e
    position = pd.Series(np.arange(len(df)), index=df["image_id"]).reindex(image_ids)
    if position.isna().any():
        raise StageFailed(
            f"{run.uri_of(key)} lacks {int(position.isna().sum())} of the run's {split} images"
        )
    if df.empty:  # a layout without eval photos (eval/info.csv lists none): nothing to answer
        return np.zeros((0, NUM_CLASSES))
    return np.stack(df["probs"].tolist())[position.to_numpy(dtype=np.int64)]


def candidate_distributions(
    run: Store,
    candidates: dict[str, Candidate],
    tasks: dict[str, str],
    split: str,
    image_ids: pd.Series,
) -> dict[str, np.ndarray]:
    """18-class distributions (images × 18) of every candidate for a split, each model's file
    read once; a candidate's answers are their argmax."""
    needed = dict.fromkeys(m for c in candidates.values() for m in c.models())
    probs = {m: read_probs(run, m, split, image_ids) for m in needed}
    return {name: candidate_probs(c, probs, tasks) for name, c in candidates.items()}


@dataclass(frozen=True)
class VoteSettings:
    """`suite.vote`, checked: how many candidates are voted, how, and when the best alone wins."""

    top_k: int
    method: str
    #: submit the best-ranked candidate alone when it beats the vote on val by more than this
    #: (macro F1); None: always submit the vote
    fallback_margin: float | None
    candidates: dict[str, Candidate]


def vote_settings(cfg: DictConfig) -> VoteSettings:
    """`suite.vote.top_k`, `.method`, `.fallback_margin` (their values checked by the schema at
    launch and job start) and the parsed candidates."""
    vote = cfg.suite.vote
    margin = vote.fallback_margin
    return VoteSettings(
        int(vote.top_k),
        str(vote.method),
        None if margin is None else float(margin),
        candidate_specs(cfg),
    )


def rank_candidates(val_answers: dict[str, np.ndarray], truth: np.ndarray) -> list[CandidateScore]:
    """Score each candidate on val and sort best first (macro F1, then accuracy, then name)."""
    scored: list[CandidateScore] = []
    for name, pred in val_answers.items():
        m = classification_metrics(truth, pred)
        scored.append(
            {
                "name": name,
                "val_macro_f1": m["macro_f1"],
                "val_accuracy": m["accuracy"],
                "val_tasks": m["tasks"],
            }
        )
    return sorted(scored, key=lambda c: (-c["val_macro_f1"], -c["val_accuracy"], c["name"]))


def write_candidate_outputs(
    run: Store,
    run_id: str,
    name: str,
    split_ids: dict[str, pd.Series],
    dists: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    metrics: Scores,
) -> None:
    """predictions/candidates/<name>/{val,eval}.parquet (the answers schema: the candidate's
    18-class distribution and its argmax, the answer) and candidates/<name>/metrics.json."""
    for split, ids in split_ids.items():
        table = answers_table(
            run_id=run_id, split=split, image_ids=ids.tolist(), kind="candidate", name=name,
            task="all", probs=dists[split], labels=labels[split],
        )  # fmt: skip
        write_answers(run, answers_key("candidate", name, split), table)
    run.write_json(join_key("candidates", name, "metrics.json"), metrics)


def vote(cfg: DictConfig) -> VoteResult:
    """Run the vote stage for `cfg.run_id`; returns the content of vote.json.

    Every candidate and every vote method (of the top-k members) is scored on val with a
    person-level bootstrap interval and its paired difference against the best member; the
    configured method is submitted, or the best member alone when the fallback rule says so.
    """
    run = run_store(cfg)
    settings = vote_settings(cfg)
    candidates = settings.candidates
    tasks = {n: str(s.task) for n, s in model_specs(cfg).items()}

    index = read_index(run)
    val_rows = index[index["split"] == "val"]
    eval_rows = eval_rows_in_order(run, index)
    ids = {"val": val_rows["image_id"], "eval": eval_rows["image_id"]}
    holdout_rows = index[index["split"] == "holdout"]
    if len(holdout_rows):
        # answered for the publish gate only: nothing below is chosen on the holdout
        ids["holdout"] = holdout_rows["image_id"]
    dists = {s: candidate_distributions(run, candidates, tasks, s, ids[s]) for s in ids}
    answers = {s: {n: d.argmax(axis=1) for n, d in dists[s].items()} for s in ids}
    val_truth = val_rows["label"].to_numpy()
    ranking = rank_candidates(answers["val"], val_truth)
    voted = [c["name"] for c in ranking[: settings.top_k]]
    best = voted[0]
    labels = {"val": val_truth, "eval": eval_rows["label"].to_numpy()}
    if "holdout" in ids:
        labels["holdout"] = holdout_rows["label"].to_numpy()
    for name in candidates:
        write_candidate_outputs(
            run,
            str(cfg.run_id),
            name,
            ids,
            {s: dists[s][name] for s in ids},
            labels,
            classification_metrics(val_truth, answers["val"][name]),
        )

    # every method on the same members, so a user sees what the others would have given
    combined = {(m, s): combine(m, [dists[s][c] for c in voted]) for m in VOTE_METHODS for s in ids}
    val_persons = val_rows["person_id"].to_numpy()
    intervals = bootstrap_by_person(
        val_truth,
        {**answers["val"], **{vote_name(m): combined[m, "val"][1] for m in VOTE_METHODS}},
        val_persons,
        reference=best,
        resamples=INTERVAL_RESAMPLES,
        level=INTERVAL_LEVEL,
        seed=int(cfg.seed),
    )
    for c in ranking:
        c["val_interval"] = intervals[c["name"]]
    chosen = intervals[vote_name(settings.method)]
    fallback = fallback_decision(settings, best, chosen, len(voted))
    members = [best] if fallback["applied"] else voted
    submitted = {  # (probabilities, answers) of what is submitted, per split
        s: combine(settings.method, [dists[s][best]])
        if fallback["applied"]
        else combined[settings.method, s]
        for s in ids
    }
    for s, (probs, split_answers) in submitted.items():
        table = answers_table(
            run_id=str(cfg.run_id), split=s, image_ids=ids[s].tolist(), kind="vote", name="vote",
            task="all", probs=probs, answers=split_answers, labels=labels[s],
        )  # fmt: skip
        write_answers(run, answers_key("vote", "vote", s), table)
    val_metrics = classification_metrics(val_truth, submitted["val"][1])
    eval_truth = eval_rows["label"].to_numpy()
    has_eval_truth = bool(len(eval_truth)) and bool((eval_truth >= 0).all())
    methods: dict[str, MethodScore] = {}
    for m in VOTE_METHODS:
        method_answers = {s: combined[m, s][1] for s in ids}
        methods[m] = {
            "val": intervals[vote_name(m)],
            "val_accuracy": float(np.mean(method_answers["val"] == val_truth)),
        }
        if has_eval_truth:
            methods[m]["eval_macro_f1"] = macro_f1(eval_truth, method_answers["eval"])
            methods[m]["eval_accuracy"] = float(np.mean(method_answers["eval"] == eval_truth))
    result: VoteResult = {
        "run_id": cfg.run_id,
        "top_k": settings.top_k,
        "method": settings.method,
        "voted": voted,
        "members": members,
        "submitted": "best_member" if fallback["applied"] else "vote",
        "fallback": fallback,
        "candidates": ranking,
        "methods": methods,
        "interval": {
            "by": "person",
            "level": INTERVAL_LEVEL,
            "resamples": INTERVAL_RESAMPLES,
            "persons": len(set(val_persons.tolist())),
            "reference": best,
        },
        "ensemble": {
            "val_macro_f1": val_metrics["macro_f1"],
            "val_accuracy": val_metrics["accuracy"],
            "val": val_metrics,
            "val_interval": intervals[best] if fallback["applied"] else chosen,
        },
    }
    if has_eval_truth:
        # held-out scores, for the record only: nothing is chosen on them
        result["eval"] = classification_metrics(eval_truth, submitted["eval"][1])
        for c in ranking:
            held_out = classification_metrics(eval_truth, answers["eval"][c["name"]])
            c["eval_macro_f1"], c["eval_accuracy"] = held_out["macro_f1"], held_out["accuracy"]
    submission = pd.DataFrame({"ImageID": ids["eval"].to_numpy(), "ans": submitted["eval"][1]})
    run.write_bytes(SUBMISSION_KEY, submission_csv(submission, run.uri_of(SUBMISSION_KEY)))
    run.write_json(VOTE_KEY, result)
    write_report(cfg, run, result)
    what = f"vote of {', '.join(members)}" if len(members) > 1 else f"answers of {best} alone"
    ci = result["ensemble"]["val_interval"]
    log.info(
        "vote done for run %s: %s %s, val macro F1 %.4f [%.4f, %.4f]; %s",
        cfg.run_id, settings.method, what, ci["macro_f1"], ci["low"], ci["high"],
        fallback["reason"],
    )  # fmt: skip
    return result


def submission_csv(submission: pd.DataFrame, where: str) -> bytes:
    """submission.csv's bytes. An ImageID that a spreadsheet would read as a formula (it starts
    with = + - @, a tab or CR; real ids are hex hashes and never do) is written with a leading
    `'` (see pipeline.core.csv_cells) and named in a WARNING: it no longer matches info.csv."""
    for image_id in formula_cells(submission["ImageID"]):
        log.warning(
            "eval ImageID %r starts like a spreadsheet formula: written to %s as %r, which no "
            "longer matches eval/info.csv (rename the eval file)",
            image_id, where, neutralise_cell(image_id),
        )  # fmt: skip
    return csv_bytes(submission)


def vote_name(method: str) -> str:
    """The key of a vote method among the bootstrap's predictors (never a candidate's name)."""
    return f"vote:{method}"


def fallback_decision(
    settings: VoteSettings, best: str, vote_interval: Interval, members: int
) -> Fallback:
    """Whether the best-ranked candidate is submitted alone instead of the vote: when it beats
    the vote on val by more than `suite.vote.fallback_margin` (the paired difference by person).
    A vote that loses to its best member on val is one whose weaker members drag it down: one
    candidate dominates. The reason gives the vote's difference from the best member on val and
    its interval."""
    diff = vote_interval["diff"]
    span = f"{diff:+.4f} [{vote_interval['diff_low']:+.4f}, {vote_interval['diff_high']:+.4f}]"
    rule = (
        "always vote (suite.vote.fallback_margin=null)"
        if settings.fallback_margin is None
        else f"submit the best member alone when the vote trails it on val by more than "
        f"{settings.fallback_margin:g} macro F1"
    )
    if members < 2:
        return {"rule": rule, "applied": False, "reason": f"one member ({best}): nothing to vote"}
    applied = settings.fallback_margin is not None and -diff > settings.fallback_margin
    verdict = (
        f"{best} submitted alone: it leads the {settings.method} vote of {members}"
        if applied
        else f"the {settings.method} vote of {members} submitted"
    )
    return {
        "rule": rule,
        "applied": applied,
        "reason": f"{verdict} (vote minus {best} on val: {span} macro F1)",
    }


def eval_rows_in_order(run: Store, index: pd.DataFrame) -> pd.DataFrame:
    """The eval rows in the order of eval/info.csv.

    Raises StageFailed when some rows of info.csv have no usable image: never a short submission.
    """
    listed = int(run.read_json(stage_key(PREPARE_STAGE))["eval_listed"])
    rows = index[index["split"] == "eval"].sort_values("order")
    if len(rows) != listed:
        raise StageFailed(
            f"the submission would lack {listed - len(rows)} of {listed} rows of eval/info.csv: "
            f"those images are missing or unusable, see {run.uri_of(BAD_INPUTS_KEY)}"
        )
    return rows.reset_index(drop=True)
