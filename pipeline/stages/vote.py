"""The vote stage: the top-k candidates voted into `submission.csv` and `vote.json`.

Candidates (pipeline.ml.ensemble) are ranked by val macro F1. `suite.vote.method` says how the
chosen members are combined per image: `hard` (the seed's), the class most members predict, a
tie going to the class of the best-ranked member among the tied ones; `soft`, the class of
highest mean probability over the members' 18-class distributions. Each candidate's val/eval
answers go to `predictions/candidates/<name>/`, the vote's to `predictions/vote/` (the answers
schema, pipeline/run/answers.py), each candidate's metrics to `candidates/<name>/metrics.json`.
The submission has exactly the rows and order of `eval/info.csv`, or the stage fails.
Then the run's report (pipeline.run.report) is written, and after everything else
`<store.root>/latest.json` is moved to this run (pipeline.run.history: only forward, never to a
failed run) and old checkpoints are pruned (both by the stage graph's follow-up of the vote).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.core.errors import ConfigError, StageFailed, StoreKeyNotFound
from pipeline.domain.metrics import Scores, classification_metrics
from pipeline.ml.ensemble import VOTE_METHODS, Candidate, candidate_probs, candidate_specs, combine
from pipeline.run.answers import answers_table, write_answers
from pipeline.run.report import write_report
from pipeline.run.results import CandidateScore, VoteResult
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


def vote_settings(cfg: DictConfig) -> tuple[int, str, dict[str, Candidate]]:
    """`suite.vote.top_k`, `suite.vote.method` and the parsed candidates, checked: ConfigError
    saying what is valid. Launch calls it before any work, the vote stage again."""
    top_k = int(cfg.suite.vote.top_k)
    if top_k < 1:
        raise ConfigError(f"suite.vote.top_k must be at least 1, got {top_k}")
    method = str(cfg.suite.vote.get("method", "hard"))
    if method not in VOTE_METHODS:
        raise ConfigError(f"suite.vote.method must be one of {list(VOTE_METHODS)}, got {method!r}")
    return top_k, method, candidate_specs(cfg)


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
    """Run the vote stage for `cfg.run_id`; returns the content of vote.json."""
    run = run_store(cfg)
    top_k, method, candidates = vote_settings(cfg)
    tasks = {n: str(s.task) for n, s in model_specs(cfg).items()}

    index = read_index(run)
    val_rows = index[index["split"] == "val"]
    eval_rows = eval_rows_in_order(run, index)
    ids = {"val": val_rows["image_id"], "eval": eval_rows["image_id"]}
    dists = {s: candidate_distributions(run, candidates, tasks, s, ids[s]) for s in ids}
    answers = {s: {n: d.argmax(axis=1) for n, d in dists[s].items()} for s in ids}
    val_truth = val_rows["label"].to_numpy()
    ranking = rank_candidates(answers["val"], val_truth)
    members = [c["name"] for c in ranking[:top_k]]
    labels = {"val": val_truth, "eval": eval_rows["label"].to_numpy()}
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

    ensemble: dict[str, np.ndarray] = {}
    shares: dict[str, np.ndarray] = {}
    for s in ids:
        shares[s], ensemble[s] = combine(method, [dists[s][m] for m in members])
        table = answers_table(
            run_id=str(cfg.run_id), split=s, image_ids=ids[s].tolist(), kind="vote", name="vote",
            task="all", probs=shares[s], answers=ensemble[s], labels=labels[s],
        )  # fmt: skip
        write_answers(run, answers_key("vote", "vote", s), table)
    val_metrics = classification_metrics(val_truth, ensemble["val"])
    result: VoteResult = {
        "run_id": cfg.run_id,
        "top_k": top_k,
        "method": method,
        "members": members,
        "candidates": ranking,
        "ensemble": {
            "val_macro_f1": val_metrics["macro_f1"],
            "val_accuracy": val_metrics["accuracy"],
            "val": val_metrics,
        },
    }
    eval_truth = eval_rows["label"].to_numpy()
    if len(eval_truth) and (eval_truth >= 0).all():
        # held-out scores, for the record only: nothing is chosen on them
        result["eval"] = classification_metrics(eval_truth, ensemble["eval"])
        for c in ranking:
            m = classification_metrics(eval_truth, answers["eval"][c["name"]])
            c["eval_macro_f1"], c["eval_accuracy"] = m["macro_f1"], m["accuracy"]
    submission = pd.DataFrame({"ImageID": ids["eval"].to_numpy(), "ans": ensemble["eval"]})
    run.write_bytes(SUBMISSION_KEY, submission.to_csv(index=False).encode())
    run.write_json(VOTE_KEY, result)
    write_report(cfg, run, result)
    log.info("vote done for run %s: members %s", cfg.run_id, members)
    return result


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
