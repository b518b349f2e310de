"""Checkpoints: save and load tensors safely (weights_only: nothing is unpickled).

The one module that calls torch.load: every checkpoint, training state and pretrained weight file
is untrusted input and is read through `load_bytes` (or `load_torch` / `load_checked` from a
store), never unpickled.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from pipeline.core.errors import StageFailed, StoreError
from pipeline.storage.run_layout import checkpoint_key
from pipeline.storage.store import Store, join_key

T = TypeVar("T")


class UnusableCheckpoint(Exception):
    """A file that torch.load (weights_only) or the check of its content refused.

    `uri` names the file and `reason` says why in one line ("UnpicklingError: ..."); the original
    error is the `__cause__`.
    """

    def __init__(self, uri: str, error: Exception) -> None:
        self.uri = uri
        self.reason = f"{type(error).__name__}: {first_line(error)}"
        super().__init__(f"{uri} is unusable ({self.reason})")


def first_line(error: Exception) -> str:
    """The first line of an error's message, at most 200 characters (torch's can be pages)."""
    return (str(error).strip().splitlines() or [""])[0][:200]


def save_torch(store: Store, key: str, obj: Any) -> None:
    """torch.save tensors / state dicts to the store, atomically."""
    sink = io.BytesIO()
    torch.save(obj, sink)
    store.write_bytes(key, sink.getvalue())


def load_bytes(blob: bytes) -> Any:
    """torch.load of a file's bytes with weights_only=True, onto the CPU: nothing is unpickled.

    Raises whatever torch raises for a corrupt or unsafe file (UnpicklingError, RuntimeError, ...).
    """
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def load_torch(store: Store, key: str) -> Any:
    """torch.load from the store with weights_only=True: nothing is unpickled."""
    return load_bytes(store.read_bytes(key))


def load_checked(store: Store, key: str, check: Callable[[Any], T]) -> T:
    """`key` loaded with weights_only and passed through `check`, which returns it as a T.

    Storage errors (StoreError, StoreKeyNotFound) pass through unchanged; anything else that the
    load or the check raises becomes UnusableCheckpoint naming the file.
    """
    try:
        return check(load_torch(store, key))
    except StoreError:
        raise
    except Exception as e:  # torch.load raises many types for corrupt or unsafe files
        raise UnusableCheckpoint(store.uri_of(key), e) from e


def load_checkpoint(run: Store, name: str) -> dict[str, torch.Tensor]:
    """Model `name`'s best state dict (weights_only: nothing is unpickled).

    Raises StageFailed saying how to retrain when the file is corrupt or holds anything but
    tensors; storage errors (StoreError) pass through unchanged.
    """
    key = checkpoint_key(name)
    try:
        state: dict[str, torch.Tensor] = load_checked(run, key, lambda state: state)
    except UnusableCheckpoint as e:
        raise StageFailed(
            f"{e.uri} cannot be loaded ({e.reason}); it is corrupt "
            f"or not a plain state dict. Retrain model {name}: delete "
            f"{run.uri_of(join_key('stages', f'train-{name}.json'))} and rerun this run_id "
            "(the train stage then detects the bad checkpoint and trains from scratch)"
        ) from e.__cause__
    return state
