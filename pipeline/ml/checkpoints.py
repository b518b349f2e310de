"""Checkpoints in the store: save and load tensors safely (weights_only: nothing is unpickled)."""

from __future__ import annotations

import io
from typing import Any

import torch

from pipeline.core.errors import StageFailed, StoreError
from pipeline.storage.run_layout import checkpoint_key
from pipeline.storage.store import Store, join_key


def save_torch(store: Store, key: str, obj: Any) -> None:
    """torch.save tensors / state dicts to the store, atomically."""
    sink = io.BytesIO()
    torch.save(obj, sink)
    store.write_bytes(key, sink.getvalue())


def load_torch(store: Store, key: str) -> Any:
    """torch.load from the store with weights_only=True: nothing is unpickled."""
    return torch.load(io.BytesIO(store.read_bytes(key)), map_location="cpu", weights_only=True)


def load_checkpoint(run: Store, name: str) -> dict[str, torch.Tensor]:
    """Model `name`'s best state dict (weights_only: nothing is unpickled).

    Raises StageFailed saying how to retrain when the file is corrupt or holds anything but
    tensors; storage errors (StoreError) pass through unchanged.
    """
    key = checkpoint_key(name)
    try:
        return load_torch(run, key)
    except StoreError:
        raise
    except Exception as e:  # torch.load raises many types for corrupt or unsafe files
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise StageFailed(
            f"{run.uri_of(key)} cannot be loaded ({type(e).__name__}: {reason}); it is corrupt "
            f"or not a plain state dict. Retrain model {name}: delete "
            f"{run.uri_of(join_key('stages', f'train-{name}.json'))} and rerun this run_id "
            "(the train stage then detects the bad checkpoint and trains from scratch)"
        ) from e
