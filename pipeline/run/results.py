"""The vote's result: the content of `runs/<run_id>/vote.json`, as typed records.

The vote stage (pipeline.stages.vote) writes it; the end-of-run summary and latest.json
(pipeline.run.history), the report (pipeline.run.report), the results table
(pipeline.commands.results), `pull` and infer (the members and the method) read it. The file is
plain JSON written with sorted keys (Store.write_json); these records only type it:

    run_id      the run
    method      how the members were combined per image (suite.vote.method): hard | soft
    top_k       how many of the best candidates were voted (suite.vote.top_k)
    members     the voted candidates, best first
    candidates  every candidate with its scores, best first (CandidateScore)
    ensemble    the vote's val scores (EnsembleScores)
    eval        the vote's scores on eval, only when the eval set has ground truth (Scores)

Scores and TaskScores are what pipeline.domain.metrics.classification_metrics returns.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from pipeline.domain.metrics import Scores, TaskScores
from pipeline.storage.run_layout import VOTE_KEY
from pipeline.storage.store import Store

__all__ = [
    "CandidateScore",
    "EnsembleScores",
    "Scores",
    "TaskScores",
    "VoteResult",
    "read_vote",
]


class CandidateScore(TypedDict):
    """One candidate of vote.json's `candidates`, ranked by val macro F1, then accuracy, then
    name."""

    name: str
    val_macro_f1: float
    val_accuracy: float
    val_tasks: dict[str, TaskScores]
    #: only when the eval set has ground truth (for the record: nothing is chosen on them)
    eval_macro_f1: NotRequired[float]
    eval_accuracy: NotRequired[float]


class EnsembleScores(TypedDict):
    """vote.json's `ensemble`: the vote's val scores, the headline two beside all of them."""

    val_macro_f1: float
    val_accuracy: float
    val: Scores


class VoteResult(TypedDict):
    """The content of vote.json."""

    run_id: str
    #: always written; read with .get(…, "hard") so that a vote.json from before
    #: suite.vote.method (always a hard vote) still reads
    method: NotRequired[str]
    top_k: int
    members: list[str]
    candidates: list[CandidateScore]
    ensemble: EnsembleScores
    eval: NotRequired[Scores]


def read_vote(run: Store) -> VoteResult:
    """vote.json of `run` as written (StoreKeyNotFound when its vote has not finished)."""
    result: VoteResult = run.read_json(VOTE_KEY)
    return result
