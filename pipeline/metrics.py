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


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Macro F1, accuracy, per-task (mask, gender, age) accuracy and F1, 18×18 confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
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
    return {
        "macro_f1": macro_f1(y_true, y_pred),
        "accuracy": float(np.mean(y_true == y_pred)),
        "n": len(y_true),
        "tasks": per_task,
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(NUM_CLASSES))).tolist(),
    }
