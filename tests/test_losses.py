"""Losses on logits and soft targets: agreement with torch, focal and F1 behaviour, weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.ml.augment import one_hot
from pipeline.ml.losses import LOSS_NAMES, build_loss, cross_entropy, focal_loss, soft_f1_loss

C = 6


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, C, generator=g) * 2, torch.randint(0, C, (12,), generator=g)


def test_ce_equals_torch_for_hard_targets(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    loss = build_loss({"ce": 1.0}, num_classes=C)
    expected = F.cross_entropy(logits, labels)
    assert torch.allclose(loss(logits, one_hot(labels, C)), expected, atol=1e-6)
    assert torch.allclose(loss(logits, labels), expected, atol=1e-6)


def test_ce_label_smoothing_matches_torch(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    loss = build_loss({"ce": 1.0}, num_classes=C, label_smoothing=0.1)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(loss(logits, one_hot(labels, C)), expected, atol=1e-6)
    assert not torch.allclose(expected, F.cross_entropy(logits, labels), atol=1e-3)


def test_ce_on_soft_targets_matches_torch(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, _ = data
    soft = torch.softmax(torch.randn(12, C, generator=torch.Generator().manual_seed(1)), 1)
    assert torch.allclose(cross_entropy(logits, soft), F.cross_entropy(logits, soft), atol=1e-6)


def test_focal_gamma0_equals_ce(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    soft = one_hot(labels, C)
    assert torch.allclose(focal_loss(logits, soft, gamma=0.0), cross_entropy(logits, soft))
    focal0 = build_loss({"focal": 1.0}, num_classes=C, focal_gamma=0.0, label_smoothing=0.1)
    ce = build_loss({"ce": 1.0}, num_classes=C, label_smoothing=0.1)
    assert torch.allclose(focal0(logits, soft), ce(logits, soft))


def test_focal_down_weights_confident_correct_examples() -> None:
    confident = torch.tensor([[4.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.2, 0.0, 0.0]])
    target = torch.tensor([0])
    ratio_confident = focal_loss(confident, target, 2.0) / cross_entropy(confident, target)
    ratio_unsure = focal_loss(unsure, target, 2.0) / cross_entropy(unsure, target)
    p_true = torch.softmax(confident, 1)[0, 0]
    assert torch.allclose(ratio_confident, (1 - p_true) ** 2)  # one-hot: ce scaled by (1-p)^2
    assert ratio_confident < 0.01
    assert ratio_confident < ratio_unsure < 1.0


def test_focal_gradient_finite_when_probability_rounds_to_one() -> None:
    logits = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([0]), gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


def test_f1_loss_perfect_wrong_and_gradient() -> None:
    labels = torch.tensor([0, 1, 2, 3, 0, 1])  # classes 4 and 5 absent from the batch
    perfect = one_hot(labels, C) * 30.0
    wrong = one_hot((labels + 1) % C, C) * 30.0
    uniform = torch.zeros(6, C, requires_grad=True)
    assert soft_f1_loss(perfect, labels) < 1e-4
    assert soft_f1_loss(wrong, labels) > 0.99
    loss = soft_f1_loss(uniform, labels)
    assert 0.5 < loss < 1.0
    loss.backward()
    assert uniform.grad is not None and uniform.grad.abs().sum() > 0
    # Following the gradient raises the probability of the true classes.
    assert torch.all(uniform.grad[torch.arange(6), labels] < 0)


def test_weighted_sum_equals_sum_of_parts(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    loss = build_loss({"ce": 0.5, "focal": 0.25, "f1": 2.0}, num_classes=C, label_smoothing=0.05)
    parts = loss.parts(logits, labels)
    assert set(parts) == {"ce", "focal", "f1"}
    assert torch.allclose(parts["ce"], cross_entropy(logits, labels, 0.05))
    assert torch.allclose(parts["focal"], focal_loss(logits, labels, 2.0, 0.05))
    assert torch.allclose(parts["f1"], soft_f1_loss(logits, labels))
    expected = 0.5 * parts["ce"] + 0.25 * parts["focal"] + 2.0 * parts["f1"]
    total = loss(logits, labels)
    assert total.ndim == 0 and torch.allclose(total, expected)


def test_zero_weight_is_skipped(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    loss = build_loss({"ce": 1.0, "f1": 0.0}, num_classes=C)
    assert set(loss.parts(logits, labels)) == {"ce"}
    assert torch.allclose(loss(logits, labels), cross_entropy(logits, labels))


def test_bf16_logits(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    logits, labels = data
    loss = build_loss({"ce": 1.0, "focal": 1.0, "f1": 1.0}, num_classes=C)
    low = logits.bfloat16().requires_grad_()
    total = loss(low, labels)
    assert total.dtype == torch.float32
    assert torch.allclose(total, loss(low.detach().float(), labels))
    total.backward()
    assert low.grad is not None and low.grad.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("weights", "kwargs", "match"),
    [
        ({"dice": 1.0}, {}, "dice.*valid names.*'ce', 'focal', 'f1'"),
        ({"ce": -1.0}, {}, "'ce'.*>= 0"),
        ({"ce": 0.0, "f1": 0}, {}, "all zero"),
        ({}, {}, "all zero"),
        ({"ce": 1.0}, {"label_smoothing": 1.0}, r"label_smoothing.*\[0, 1\)"),
        ({"focal": 1.0}, {"focal_gamma": -2.0}, "focal_gamma"),
    ],
)
def test_invalid_settings(weights: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss(weights, num_classes=C, **kwargs)


def test_loss_names() -> None:
    assert LOSS_NAMES == ("ce", "focal", "f1")
