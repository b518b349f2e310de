"""Scores of 18-class predictions: macro F1 (the competition metric), accuracy, per task."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from pipeline.labels import NUM_CLASSES


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Macro F1 over all `num_classes` classes (classes absent from both count as 0)."""
    return float(
        f1_score(y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0)
    )


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """Macro F1, accuracy and confusion matrix over `num_classes`; for the 18 classes also
    per-task (mask, gender, age) accuracy and macro F1."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(num_classes))
    result: dict[str, Any] = {
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
    per_task = {
        name: {
            "accuracy": float(np.mean(part(y_true) == part(y_pred))),
            "macro_f1": macro_f1(part(y_true), part(y_pred), n),
        }
        for name, (part, n) in tasks.items()
    }
    return {**result, "tasks": per_task}
