"""The state of one model's training between epochs: what `models/<name>/last.*` holds.

On disk it is a plain dict of tensors, lists, numbers and strings (`TrainingState.to_dict`), saved
as safetensors plus JSON (pipeline/ml/checkpoints.py `save_state`; runs made before that hold it
in a legacy torch.save `last.pt`); `TrainingState.from_dict` checks a loaded dict and raises
ValueError ("not a training state ...") for anything a restarted job could not go on from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass
class TrainingState:
    """A model's training after `epoch`: everything a restarted job needs to go on exactly."""

    #: the last finished epoch (1-based); `history` holds epochs 1..epoch
    epoch: int
    #: the model's state dict after that epoch
    model: dict[str, Any]
    #: the optimizer's state dict (Adam moments, step counts, parameter groups)
    optimizer: dict[str, Any]
    #: state of the torch.Generator drawing batch orders and augmentations (a uint8 tensor)
    generator: torch.Tensor
    #: one record per epoch: epoch, loss, val_macro_f1, val_accuracy, seconds, images_per_s
    history: list[dict[str, Any]]
    #: the learning-rate scheduler's state dict; None with train.scheduler=none
    scheduler: dict[str, Any] | None = None
    #: the fp16 loss scaler's state dict; None unless training in fp16
    scaler: dict[str, Any] | None = None
    #: SHA-256 of the best checkpoint file (checkpoint.safetensors) when this state was saved,
    #: checked when a restarted job reads it; None only in a legacy last.pt
    checkpoint_sha256: str | None = None

    #: keys a saved state must have (scheduler and scaler may be absent or None)
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "optimizer", "generator", "epoch", "history")

    def to_dict(self) -> dict[str, Any]:
        """The state as last.* stores it: a dict of state dicts, a tensor, numbers, lists and
        the best checkpoint's SHA-256."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "generator": self.generator,
            "scaler": self.scaler,
            "epoch": self.epoch,
            "history": self.history,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    @classmethod
    def from_dict(cls, state: Any) -> TrainingState:
        """A loaded last.* as a TrainingState; ValueError saying what is wrong when it is not one.

        Keys other than the fields are ignored; scheduler, scaler and checkpoint_sha256 may be
        absent (None).
        """
        if not isinstance(state, dict) or not set(cls.REQUIRED) <= set(state):
            raise ValueError(f"not a training state with {', '.join(cls.REQUIRED)}")
        problems = [
            f"{key} is a {type(state.get(key)).__name__}, not {kind}"
            for key, kind, ok in (
                ("epoch", "a whole number", _is_int(state["epoch"])),
                ("model", "a state dict", isinstance(state["model"], dict)),
                ("optimizer", "a state dict", isinstance(state["optimizer"], dict)),
                ("generator", "a tensor", isinstance(state["generator"], torch.Tensor)),
                ("history", "a list of dicts", _is_records(state["history"])),
                ("scheduler", "a state dict or None", _is_optional_dict(state.get("scheduler"))),
                ("scaler", "a state dict or None", _is_optional_dict(state.get("scaler"))),
                (
                    "checkpoint_sha256",
                    "64 hex digits or None",
                    _is_optional_sha256(state.get("checkpoint_sha256")),
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"not a training state: {'; '.join(problems)}")
        epochs = [h.get("epoch") for h in state["history"]]
        if epochs != list(range(1, state["epoch"] + 1)):
            raise ValueError(
                f"not a training state: epoch {state['epoch']} but history of epochs {epochs}"
            )
        if not all("val_macro_f1" in h for h in state["history"]):
            raise ValueError("not a training state: an epoch of the history has no val_macro_f1")
        return cls(
            epoch=state["epoch"],
            model=state["model"],
            optimizer=state["optimizer"],
            generator=state["generator"],
            history=state["history"],
            scheduler=state.get("scheduler"),
            scaler=state.get("scaler"),
            checkpoint_sha256=state.get("checkpoint_sha256"),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(h, dict) for h in value)


def _is_optional_dict(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _is_optional_sha256(value: Any) -> bool:
    return value is None or (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
