"""Backbones by name, classifier heads sized for the task, frozen layers, weights from a URI."""

from __future__ import annotations

import logging
from typing import cast

import torch
import torchvision
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.core.errors import ConfigError, StoreKeyNotFound
from pipeline.domain.labels import MASK_NAMES, NUM_CLASSES
from pipeline.ml.arch_names import classification_archs
from pipeline.ml.checkpoints import load_bytes, looks_like_safetensors, parse_weights
from pipeline.storage.store import read_uri

#: task → (index column holding the target, number of classes).
TASKS: dict[str, tuple[str, int]] = {
    "all": ("label", NUM_CLASSES),
    "mask": ("mask", 3),
    "gender": ("gender", 2),
    "age": ("age_group", 3),
}

log = logging.getLogger(__name__)

#: How to turn a torch .pth state dict into safetensors once (docs/robustness.md, "Checkpoints").
CONVERT_WEIGHTS = (
    'python -c "import sys, torch, safetensors.torch as st; st.save_file({k: v.contiguous() '
    'for k, v in torch.load(sys.argv[1], weights_only=True).items()}, sys.argv[2])" '
    "resnet18.pth resnet18.safetensors"
)


def task_target(task: str) -> tuple[str, int]:
    """The index column and class count of a task; ConfigError listing the valid tasks."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {sorted(TASKS)}")
    return TASKS[task]


def mask_group_codes(groups: list[str] | None) -> list[int] | None:
    """Mask codes of `model.mask_groups` names (None: every group); ConfigError if unknown."""
    if groups is None:
        return None
    unknown = [g for g in groups if g not in MASK_NAMES]
    if unknown or not groups:
        raise ConfigError(f"mask_groups {list(groups)} must be a non-empty subset of {MASK_NAMES}")
    return [MASK_NAMES.index(g) for g in groups]


def read_weights(uri: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a local path or s3:// URI: a safetensors file (nothing unpickled),
    or a torch .pth file read with weights_only and a warning recommending its conversion."""
    try:
        blob = read_uri(uri)
    except StoreKeyNotFound as e:
        raise ConfigError(
            f"model weights {uri} not found: set model.weights to a torchvision state dict "
            "(path or s3:// URI), or null for random initialisation"
        ) from e
    if looks_like_safetensors(blob):
        try:
            return parse_weights(blob)
        except ValueError as e:
            raise ConfigError(f"model weights {uri} are not a readable state dict: {e}") from e
    log.warning(
        "model weights %s are a pickle-based torch file: reading them with "
        "torch.load(weights_only=True), which torch <= 2.9.1 does not make safe "
        "(GHSA-63cw-57p8-fm3p). Convert them to safetensors once and set model.weights to the "
        "new file: %s",
        uri,
        CONVERT_WEIGHTS,
    )
    try:
        state = load_bytes(blob)
    except Exception as e:  # torch raises several types for a bad file
        raise ConfigError(f"model weights {uri} are not a readable state dict: {e}") from e
    if not isinstance(state, dict):
        raise ConfigError(f"model weights {uri} hold a {type(state).__name__}, not a state dict")
    return state


def build_model(spec: DictConfig, num_classes: int) -> nn.Module:
    """Build `spec.arch` with a `num_classes` head, load `spec.weights` (all but the head), freeze
    `spec.freeze` and, when weights were loaded, `spec.freeze_if_pretrained`.

    Raises ConfigError for unknown architectures, unknown frozen modules and unusable weights.
    """
    archs = classification_archs()
    if spec.arch not in archs:
        raise ConfigError(
            f"model.arch={spec.arch!r} is not a torchvision classifier; valid: {archs}"
        )
    model = torchvision.models.get_model(spec.arch, weights=None, num_classes=num_classes)
    frozen = list(spec.get("freeze") or [])
    if spec.get("weights"):
        load_backbone(model, read_weights(str(spec.weights)), str(spec.weights))
        frozen += [n for n in spec.get("freeze_if_pretrained") or [] if n not in frozen]
    for name in frozen:
        module = getattr(model, name, None)
        if not isinstance(module, nn.Module):
            valid = [n for n, _ in model.named_children()]
            raise ConfigError(f"cannot freeze {name!r}: {spec.arch} has modules {valid}")
        module.requires_grad_(False)
    return model


def model_from_checkpoint(
    spec: DictConfig, num_classes: int, state: dict[str, torch.Tensor]
) -> nn.Module:
    """Build `spec.arch` and load a checkpoint's full state dict (pretrained weights not read)."""
    model = build_model(cast(DictConfig, OmegaConf.merge(spec, {"weights": None})), num_classes)
    model.load_state_dict(state)
    return model


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` moved to `device` with its 4-d weights in channels_last memory format (in place)."""
    return model.to(device).to(memory_format=torch.channels_last)


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], uri: str) -> None:
    """Copy every weight whose name and shape match; only the classifier head may differ."""
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"weights {uri} do not fit this architecture: unknown keys {unknown[:5]}")
    usable = {k: v for k, v in state.items() if v.shape == own[k].shape}
    missing = set(own) - set(usable)
    head = {k for k in missing if k.split(".")[0] in {"fc", "classifier", "head", "heads"}}
    if missing - head:
        raise ConfigError(f"weights {uri} lack or mis-shape {sorted(missing - head)[:5]}")
    model.load_state_dict(usable, strict=False)


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Top-level modules whose parameters are all frozen (kept in eval mode while training)."""
    return [
        m
        for m in model.children()
        if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
    ]
