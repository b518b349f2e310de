"""The vote's result: the content of `runs/<run_id>/vote.json`, as typed records.

The vote stage (pipeline.stages.vote) writes it; the end-of-run summary and latest.json
(pipeline.run.history), the report (pipeline.run.report), the results table
(pipeline.commands.results), `pull` and infer (the members and the method) read it. The file is
plain JSON written with sorted keys (Store.write_json); these records only type it:

    run_id      the run
    method      how the members are combined per image (suite.vote.method):
                hard | hard_per_task | soft
    top_k       how many of the best candidates are voted (suite.vote.top_k)
    voted       the top-k candidates, best first
    members     what the submission combines: `voted`, or the best candidate alone when the
                fallback rule applied (infer uses these, with `method`)
    submitted   vote | best_member
    fallback    the rule for when one candidate dominates, whether it applied, and why (Fallback)
    candidates  every candidate with its scores, best first (CandidateScore)
    methods     every vote method's val score (with interval) on the `voted` members, and its eval
                macro F1 where eval has ground truth: what the others would have given
    interval    how the intervals were made (by person, level, resamples, reference)
    ensemble    the submission's val scores (EnsembleScores)
    eval        the submission's scores on eval, only when the eval set has ground truth (Scores)

Intervals (pipeline.domain.metrics.Interval): val macro F1 with a bootstrap interval by person, and
the paired difference against the best-ranked candidate with its interval. vote.json files from
before issue 24 lack voted, submitted, fallback, methods, interval and the intervals.

Scores and TaskScores are what pipeline.domain.metrics.classification_metrics returns.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from pipeline.domain.metrics import Interval, Scores, TaskScores
from pipeline.storage.run_layout import VOTE_KEY
from pipeline.storage.store import Store

__all__ = [
    "INTERVAL_LEVEL",
    "INTERVAL_RESAMPLES",
    "CandidateScore",
    "EnsembleScores",
    "Fallback",
    "Interval",
    "IntervalInfo",
    "MethodScore",
    "Scores",
    "TaskScores",
    "VoteResult",
    "difference_text",
    "interval_text",
    "read_vote",
]


#: The intervals of vote.json: 95 % percentile intervals from 1,000 resamples of the val people.
INTERVAL_LEVEL = 0.95
INTERVAL_RESAMPLES = 1000


class CandidateScore(TypedDict):
    """One candidate of vote.json's `candidates`, ranked by val macro F1, then accuracy, then
    name."""

    name: str
    val_macro_f1: float
    val_accuracy: float
    val_tasks: dict[str, TaskScores]
    #: val macro F1's interval by person, and the paired difference against the best candidate
    val_interval: NotRequired[Interval]
    #: only when the eval set has ground truth (for the record: nothing is chosen on them)
    eval_macro_f1: NotRequired[float]
    eval_accuracy: NotRequired[float]


class EnsembleScores(TypedDict):
    """vote.json's `ensemble`: the vote's val scores, the headline two beside all of them."""

    val_macro_f1: float
    val_accuracy: float
    val: Scores
    #: the submission's val macro F1 with its interval and difference against the best member
    val_interval: NotRequired[Interval]


class MethodScore(TypedDict):
    """One vote method of vote.json's `methods`, on the voted members."""

    val: Interval
    val_accuracy: float
    eval_macro_f1: NotRequired[float]
    eval_accuracy: NotRequired[float]


class Fallback(TypedDict):
    """vote.json's `fallback`: when the best candidate is submitted alone instead of the vote."""

    rule: str
    applied: bool
    reason: str


class IntervalInfo(TypedDict):
    """vote.json's `interval`: how the intervals were made."""

    by: str
    level: float
    resamples: int
    persons: int
    reference: str


class VoteResult(TypedDict):
    """The content of vote.json."""

    run_id: str
    #: always written; read with .get(…, "hard") so that a vote.json from before
    #: suite.vote.method (always a hard vote) still reads
    method: NotRequired[str]
    top_k: int
    voted: NotRequired[list[str]]
    members: list[str]
    submitted: NotRequired[str]
    fallback: NotRequired[Fallback]
    candidates: list[CandidateScore]
    methods: NotRequired[dict[str, MethodScore]]
    interval: NotRequired[IntervalInfo]
    ensemble: EnsembleScores
    eval: NotRequired[Scores]


def interval_text(interval: Interval) -> str:
    """'0.6123 [0.590, 0.634]': a val macro F1 and its interval by person."""
    return f"{interval['macro_f1']:.4f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def difference_text(interval: Interval) -> str | None:
    """'+0.0123 [-0.004, +0.029]': the paired difference against the best member and its
    interval; None when the interval has none."""
    if "diff" not in interval:
        return None
    return f"{interval['diff']:+.4f} [{interval['diff_low']:+.3f}, {interval['diff_high']:+.3f}]"


def read_vote(run: Store) -> VoteResult:
    """vote.json of `run` as written (StoreKeyNotFound when its vote has not finished)."""
    result: VoteResult = run.read_json(VOTE_KEY)
    return result


# --------------------------------------------------------------------------------------------
# the publish gate's record: runs/<run_id>/gate.json (pipeline.stages.publish writes it)

#: The gate's decisions: the run became latest.json; it was held (latest.json stayed on the
#: champion); or it was not a candidate (latest.json already named this run or a newer one).
GATE_DECISIONS = ("published", "held", "superseded")


class ClassDelta(TypedDict):
    """One class's F1 on the holdout, challenger against champion."""

    #: the class's name, e.g. "wear/female/30-59" (pipeline.domain.labels.class_name)
    name: str
    challenger: float
    champion: float
    delta: float
    #: holdout photos of this class
    support: int


class ChangedAnswer(TypedDict):
    """One eval photo whose answer differs between champion and challenger."""

    image_id: str
    champion: str
    challenger: str


class Churn(TypedDict):
    """How many eval answers changed between champion and challenger."""

    #: eval photos both runs answered
    compared: int
    changed: int
    share: float
    #: the first CHURN_SHOWN changed photos, in eval order
    shown: list[ChangedAnswer]


class DataChanges(TypedDict):
    """What changed in the labelled data (train, val and holdout people) since the champion's."""

    people_added: int
    people_removed: int
    photos_added: int
    photos_removed: int
    #: up to CHANGES_SHOWN person ids each, sorted
    people_added_shown: list[str]
    people_removed_shown: list[str]


class ClassCounts(TypedDict):
    """Labelled photos (train + val + holdout) per class, champion's data and challenger's."""

    classes: list[str]
    champion: list[int]
    challenger: list[int]


class HoldoutInfo(TypedDict):
    """The holdout the gate scored on (this run's)."""

    fraction: float
    people: int
    photos: int


class Promotion(TypedDict):
    """Who moved latest.json to a run by hand (`python -m pipeline.runs promote`), and why."""

    by: str
    reason: str
    at: str
    #: the run latest.json named before
    previous: str | None


class GateRecord(TypedDict):
    """The content of gate.json: the publish gate's decision for a run.

    `challenger` and `champion_score` are holdout macro F1s with their interval by person;
    `challenger` also holds the paired difference challenger minus champion (diff, diff_low,
    diff_high) when both were scored. The comparison fields are present only when `compared`.
    """

    run_id: str
    #: one of GATE_DECISIONS
    decision: str
    #: whether champion and challenger were scored on the same holdout
    compared: bool
    #: one line: the decision and why, with both scores and the interval when compared
    reason: str
    #: the run latest.json named when the gate ran (None for a store's first run)
    champion: str | None
    #: publish.tolerance
    tolerance: float
    #: UTC, ISO 8601
    decided: str
    holdout: HoldoutInfo
    challenger: NotRequired[Interval]
    champion_score: NotRequired[Interval]
    per_class: NotRequired[list[ClassDelta]]
    churn: NotRequired[Churn]
    data_changes: NotRequired[DataChanges]
    class_counts: NotRequired[ClassCounts]
    promoted: NotRequired[Promotion]
