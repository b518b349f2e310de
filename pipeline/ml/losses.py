"""Training losses on logits (N×C) and soft targets (N×C rows summing to 1, or class indices N).

`build_loss({"ce": 0.5, "f1": 0.5}, num_classes=18)` returns one callable giving the weighted sum.
Every loss computes in float32 whatever the logits' dtype (bf16/fp16 under autocast) and
reduces to a scalar: the mean over the batch, or for the F1 loss a statistic of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.core.errors import ConfigError
from pipeline.ml.augment import soft_targets

#: Added to the soft-F1 denominator so that empty sums do not divide by zero.
F1_EPSILON = 1e-7
#: Smallest 1 - p in the focal factor: keeps its gradient finite when p rounds to 1 (gamma < 1).
_FOCAL_FLOOR = 1e-12


def _prepare(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 logits and float32 soft targets of the same shape."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be N×C, got shape {tuple(logits.shape)}")
    soft = soft_targets(targets, logits.shape[1])
    if soft.shape != logits.shape:
        raise ValueError(f"targets {tuple(soft.shape)} do not match logits {tuple(logits.shape)}")
    return logits.float(), soft.to(logits.device)


def _smooth(soft: Tensor, label_smoothing: float) -> Tensor:
    """Mix targets with the uniform distribution, as torch's cross_entropy(label_smoothing=...)."""
    if label_smoothing == 0.0:
        return soft
    return soft * (1.0 - label_smoothing) + label_smoothing / soft.shape[1]


def cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy -sum(t * log p) on soft targets, mean over the batch; equals torch's
    F.cross_entropy (with the same label_smoothing) for class-index targets.
    """
    logits, soft = _prepare(logits, targets)
    soft = _smooth(soft, label_smoothing)
    return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def focal_loss(
    logits: Tensor, targets: Tensor, gamma: float = 2.0, label_smoothing: float = 0.0
) -> Tensor:
    """Multi-class focal loss -sum(t * (1 - p)^gamma * log p), mean over the batch (Lin et al.
    2017): confident correct examples weigh less. gamma = 0 is the cross-entropy.
    """
    logits, soft = _prepare(logits, targets)
    soft = _smooth(soft, label_smoothing)
    log_p = F.log_softmax(logits, dim=1)
    # 1 - p as -expm1(log p): accurate when p is close to 1.
    focus = (-torch.expm1(log_p)).clamp_min(_FOCAL_FLOOR).pow(gamma)
    return -(soft * focus * log_p).sum(dim=1).mean()


def soft_f1_loss(logits: Tensor, targets: Tensor, epsilon: float = F1_EPSILON) -> Tensor:
    """1 - macro soft F1 over the batch: per class, F1 = 2 TP / (2 TP + FP + FN + eps) with TP, FP
    and FN summed from softmax probabilities and soft targets; differentiable.

    The mean weighs each class by its target mass in the batch, capped at 1 (one image's worth).
    An absent class has TP = 0, so its F1 is 0 whatever the model does (no gradient) and would only
    add a constant that keeps a perfect batch from scoring 0; likewise a class that only has a
    sliver of mass from label mixing cannot reach a high F1 and counts in proportion. False
    positives on absent classes still cost, through the lower recall of the true classes.
    """
    logits, soft = _prepare(logits, targets)
    probs = F.softmax(logits, dim=1)
    tp = (probs * soft).sum(dim=0)
    fp = (probs * (1.0 - soft)).sum(dim=0)
    fn = ((1.0 - probs) * soft).sum(dim=0)
    f1 = 2.0 * tp / (2.0 * tp + fp + fn + epsilon)
    # A weighted sum (no boolean indexing) keeps shapes static: no host sync on the GPU.
    support = soft.sum(dim=0).clamp_max(1.0)
    mean_f1 = (f1 * support).sum() / support.sum().clamp_min(epsilon)
    return 1.0 - mean_f1


LossFn = Callable[[Tensor, Tensor], Tensor]


def _loss_builders(label_smoothing: float, focal_gamma: float) -> dict[str, LossFn]:
    """Loss name → callable(logits, targets), with the shared settings bound."""
    return {
        "ce": lambda z, t: cross_entropy(z, t, label_smoothing),
        "focal": lambda z, t: focal_loss(z, t, focal_gamma, label_smoothing),
        "f1": lambda z, t: soft_f1_loss(z, t),
    }


LOSS_NAMES = tuple(_loss_builders(0.0, 0.0))


class WeightedLoss:
    """A weighted sum of named losses; call it on (logits, targets) for the scalar total."""

    def __init__(self, terms: Mapping[str, tuple[float, LossFn]], num_classes: int) -> None:
        self.terms = dict(terms)
        self.num_classes = num_classes

    def parts(self, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """Each term's unweighted value (scalars), by name: what to log."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be N×{self.num_classes}, got shape {tuple(logits.shape)}"
            )
        return {name: fn(logits, targets) for name, (_, fn) in self.terms.items()}

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        parts = self.parts(logits, targets)
        return sum(
            (self.terms[name][0] * value for name, value in parts.items()),
            start=torch.zeros((), device=logits.device),
        )

    def __repr__(self) -> str:
        weights = {name: weight for name, (weight, _) in self.terms.items()}
        return f"WeightedLoss({weights}, num_classes={self.num_classes})"


def build_loss(
    weights: Mapping[str, float],
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
) -> WeightedLoss:
    """The weighted sum of the named losses as one callable (logits N×C, targets) → scalar.

    weights: loss name → weight >= 0, names among `LOSS_NAMES` ("ce", "focal", "f1"); zero weights
    are skipped. label_smoothing in [0, 1) softens the targets of "ce" and "focal" (not "f1");
    focal_gamma >= 0. Raises ConfigError on unknown names, negative or all-zero weights, or bad
    settings.
    """
    unknown = sorted(str(name) for name in weights if name not in LOSS_NAMES)
    if unknown:
        raise ConfigError(f"unknown losses {unknown}; valid names: {list(LOSS_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    label_smoothing = _setting("label_smoothing", label_smoothing, 0.0, 1.0)
    focal_gamma = _setting("focal_gamma", focal_gamma, 0.0, math.inf)
    checked = {
        str(name): _setting(f"loss weight {name!r}", w, 0.0, math.inf)
        for name, w in weights.items()
    }
    builders = _loss_builders(label_smoothing, focal_gamma)
    terms = {name: (w, builders[name]) for name, w in checked.items() if w > 0.0}
    if not terms:
        raise ConfigError(
            f"loss weights {dict(weights)} are all zero or empty; give at least one of "
            f"{list(LOSS_NAMES)} a positive weight"
        )
    return WeightedLoss(terms, num_classes)


def _setting(name: str, value: Any, low: float, high: float) -> float:
    """A finite float in [low, high) (high = inf: no upper bound), else ConfigError."""
    valid = f"[{low:g}, {high:g})" if math.isfinite(high) else f">= {low:g}"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number {valid}, got {value!r}")
    if not (low <= value < high):
        raise ConfigError(f"{name} must be {valid}, got {value!r}")
    return float(value)
