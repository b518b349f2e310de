"""Scores of 18-class predictions: macro F1 (the competition metric), accuracy, per task."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np

from pipeline.domain.labels import NUM_CLASSES, TASK_SIZES, decode_array


class TaskScores(TypedDict):
    """One task's (mask, gender or age) scores of 18-class predictions."""

    accuracy: float
    macro_f1: float


class Scores(TypedDict):
    """What `classification_metrics` returns (and metrics.json files hold under `val`)."""

    macro_f1: float
    accuracy: float
    n: int
    #: num_classes × num_classes, rows the truth, columns the prediction
    confusion: list[list[int]]
    #: by task (mask, gender, age): only for the 18 classes
    tasks: NotRequired[dict[str, TaskScores]]


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """The competition's macro F1: scikit-learn's `f1_score(average="macro")`, the mean F1 over
    the classes present in the truth or the predictions. A class absent from both is not a class
    of this split and does not count; averaging over all `num_classes` would score it 0 and, on
    a split that lacks a class, rank a candidate that errs into that class above a better one.
    `num_classes` only checks the labels' range. 0.0 for empty inputs."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return 0.0
    for name, y in (("truth", y_true), ("predictions", y_pred)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} hold labels outside 0..{num_classes - 1}")
    from sklearn.metrics import f1_score  # here: importing scikit-learn takes seconds

    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> Scores:
    """Macro F1, accuracy and confusion matrix over `num_classes`; for the 18 classes also
    per-task (mask, gender, age) accuracy and macro F1."""
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    result: Scores = {
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "n": len(y_true),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if num_classes != NUM_CLASSES:
        return result
    truth, pred = decode_array(y_true), decode_array(y_pred)
    per_task: dict[str, TaskScores] = {
        name: {
            "accuracy": float(np.mean(truth[name] == pred[name])),
            "macro_f1": macro_f1(truth[name], pred[name], n),
        }
        for name, n in TASK_SIZES.items()
    }
    return {**result, "tasks": per_task}


class Interval(TypedDict):
    """A macro F1 on a split with its person-level bootstrap interval, and (when a reference
    predictor is given) its paired difference against the reference with that interval."""

    macro_f1: float
    low: float
    high: float
    diff: NotRequired[float]
    diff_low: NotRequired[float]
    diff_high: NotRequired[float]


def _macro_f1_of_confusions(conf: np.ndarray) -> np.ndarray:
    """Macro F1 of each confusion matrix in `conf` (... × C × C, rows the truth), over the
    classes present in the truth or the predictions, as `macro_f1`."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1).astype(np.float64)
    truth, pred = conf.sum(axis=-1), conf.sum(axis=-2)
    present = (truth + pred) > 0
    denominator = truth + pred  # 2 TP + FP + FN
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    count = present.sum(axis=-1)
    return np.divide((f1 * present).sum(axis=-1), count, out=np.zeros(count.shape), where=count > 0)


def bootstrap_scores(
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    persons: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Macro F1 of each predictor on the split, and on `resamples` bootstrap resamples **by
    person** (each draws the split's people with replacement and keeps all of their photos; every
    predictor is scored on the same resamples, so differences are paired). Deterministic for a
    `seed`. Raises ValueError for misaligned, empty or out-of-range inputs."""
    truth = np.asarray(truth, dtype=np.int64)
    people, person_index = np.unique(np.asarray(persons), return_inverse=True)
    if len(truth) == 0 or len(person_index) != len(truth):
        raise ValueError(f"need aligned, non-empty truth ({len(truth)}) and persons")
    rng = np.random.default_rng(seed)
    n_people = len(people)
    weights = np.stack(
        [np.bincount(rng.integers(0, n_people, n_people), minlength=n_people)
         for _ in range(resamples)]
    ).astype(np.float64)  # resamples × people: how often each person is drawn  # fmt: skip
    cells = num_classes * num_classes
    points: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.int64)
        if len(pred) != len(truth):
            raise ValueError(f"{name}: {len(pred)} predictions for {len(truth)} labels")
        if pred.min() < 0 or pred.max() >= num_classes:
            raise ValueError(f"{name}: predictions hold labels outside 0..{num_classes - 1}")
        per_person = np.bincount(
            person_index * cells + truth * num_classes + pred, minlength=n_people * cells
        ).reshape(n_people, cells)
        whole = per_person.sum(axis=0).reshape(num_classes, num_classes)
        points[name] = float(_macro_f1_of_confusions(whole))
        boot[name] = _macro_f1_of_confusions(
            (weights @ per_person).reshape(-1, num_classes, num_classes)
        )
    return points, boot


def bootstrap_by_person(
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    persons: np.ndarray,
    *,
    reference: str | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
) -> dict[str, Interval]:
    """Macro F1 of each predictor with a percentile interval from a bootstrap **by person**
    (`bootstrap_scores`): the interval reflects how much the score would move with other people
    (a person's 7 photos are not independent). `diff` is the predictor's macro F1 minus
    `reference`'s, its interval paired (the same resamples). Deterministic for a `seed`.

    truth, each prediction and persons are aligned arrays of one split (labels 0..num_classes-1;
    persons any sortable ids). Raises ValueError for misaligned or empty inputs.
    """
    if reference is not None and reference not in predictions:
        raise ValueError(f"reference {reference!r} is not among the predictions")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    points, boot = bootstrap_scores(
        truth, predictions, persons, resamples=resamples, seed=seed, num_classes=num_classes
    )
    tail = (1.0 - level) / 2.0
    out: dict[str, Interval] = {}
    for name, scores in boot.items():
        low, high = np.quantile(scores, [tail, 1.0 - tail])
        out[name] = {"macro_f1": points[name], "low": float(low), "high": float(high)}
        if reference is not None:
            low, high = np.quantile(scores - boot[reference], [tail, 1.0 - tail])
            out[name]["diff"] = points[name] - points[reference]
            out[name]["diff_low"], out[name]["diff_high"] = float(low), float(high)
    return out
