"""Scores of 18-class predictions: macro F1 (the competition metric), accuracy, per task."""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from pipeline.domain.labels import NUM_CLASSES


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
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> Scores:
    """Macro F1, accuracy and confusion matrix over `num_classes`; for the 18 classes also
    per-task (mask, gender, age) accuracy and macro F1."""
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
    tasks = {
        "mask": (lambda y: y // 6, 3),
        "gender": (lambda y: (y // 3) % 2, 2),
        "age": (lambda y: y % 3, 3),
    }
    per_task: dict[str, TaskScores] = {
        name: {
            "accuracy": float(np.mean(part(y_true) == part(y_pred))),
            "macro_f1": macro_f1(part(y_true), part(y_pred), n),
        }
        for name, (part, n) in tasks.items()
    }
    return {**result, "tasks": per_task}
