"""The predict stage: class probabilities for val and eval, written as Parquet per model.

predictions/models/<model>/{val,eval}.parquet: the answers schema (pipeline/answers.py) with
kind=model, task the model's and its probabilities.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.fx.experimental.optimization import fuse

from pipeline.answers import answers_key, answers_table, write_answers
from pipeline.config import model_specs, selected_models
from pipeline.device import Runtime, autocast, setup_runtime
from pipeline.errors import ConfigError, StageFailed, StoreError
from pipeline.models import model_from_checkpoint, task_target
from pipeline.prepare import read_index
from pipeline.resident import (
    ResidentImages,
    as_resident,
    image_bytes,
    load_resident,
    plan_placement,
)
from pipeline.runs import load_torch, mark_stage_done, run_store, stage_done
from pipeline.store import Store, join_key

log = logging.getLogger(__name__)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def crop_center(batch: torch.Tensor, fractions: Sequence[float] | None) -> torch.Tensor:
    """The centre [height, width] fractions of each image of an N×C×H×W batch (None: all)."""
    if fractions is None:
        return batch
    fh, fw = (float(f) for f in fractions)
    if not (0 < fh <= 1 and 0 < fw <= 1):
        raise ConfigError(f"train.center_crop must be two fractions in (0, 1], got {fractions}")
    h, w = batch.shape[-2:]
    ch, cw = max(1, round(h * fh)), max(1, round(w * fw))
    top, left = (h - ch) // 2, (w - cw) // 2
    return batch[..., top : top + ch, left : left + cw]


def to_unit(batch: torch.Tensor, fractions: Sequence[float] | None) -> torch.Tensor:
    """uint8 N×3×H×W → centre-cropped float in [0, 1] (on the batch's device)."""
    return crop_center(batch, fractions).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → ImageNet-normalised, channels_last."""
    x = (x - MEAN.to(x.device)) / STD.to(x.device)
    return x.contiguous(memory_format=torch.channels_last)


def input_shape(image_size: Sequence[int], center_crop: Sequence[float] | None) -> tuple[int, int]:
    """The (H, W) a model sees: `train.image_size` after the optional centre crop."""
    probe = torch.empty(1, 1, int(image_size[0]), int(image_size[1]))
    return tuple(crop_center(probe, center_crop).shape[-2:])


def probe_precision(
    model: nn.Module, shape: tuple[int, int], rt: Runtime, *, reps: int = 3, tolerance: float = 0.05
) -> Runtime:
    """Keep CPU bf16 only where it computes correctly for this input shape, else use fp32.

    oneDNN's CPU bf16 kernels (torch 2.14) return NaN or wrong values (10-20% off, or 1e36) for
    some small feature-map sizes, e.g. inputs of 38x25, 32x16 or 19x13, while 64x48 or 128x96
    agree with fp32 to <1%. A few forward passes against fp32 and one backward pass find out.
    """
    if rt.device.type != "cpu" or rt.precision != "bf16":
        return rt
    probe = copy.deepcopy(model).eval()  # must not touch the model's statistics or gradients
    generator = torch.Generator().manual_seed(0)
    sound = True
    for _ in range(reps):
        x = torch.randn(16, 3, *shape, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        with torch.no_grad():
            ref = probe(x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = probe(x).float()
        error = (low - ref).abs().max() / ref.abs().max().clamp_min(1e-6)
        sound = sound and bool(torch.isfinite(low).all()) and float(error) <= tolerance
    if sound:
        probe.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe(x).float().sum().backward()
        sound = all(
            bool(torch.isfinite(p.grad).all()) for p in probe.parameters() if p.grad is not None
        )
    if sound:
        return rt
    log.warning("bf16 is unreliable on this CPU for %s inputs: using fp32 instead", shape)
    return dataclasses.replace(rt, precision="fp32")


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each batch norm folded into the convolution before it
    (torch.fx): the same function, ~1.4x faster on a CPU. Models torch.fx cannot trace are
    returned unchanged, in eval mode."""
    model.eval()
    try:
        fused = fuse(copy.deepcopy(model))
    except Exception as e:  # fx tracing fails on data-dependent control flow
        log.info(
            "batch norm not folded (%s: %s); predicting with the model as is", type(e).__name__, e
        )
        return model
    return fused.to(memory_format=torch.channels_last).eval()


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor | ResidentImages,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    tta_flip: bool,
    center_crop: Sequence[float] | None = None,
) -> np.ndarray:
    """Softmax probabilities (N×C float32) of uint8 images; with `tta_flip` the mirror image is
    scored in the same forward pass and the two are averaged."""
    model.eval()
    out = []
    for batch in as_resident(images, device).slices(batch_size):
        x = normalize(to_unit(batch, center_crop))
        n = len(x)
        if tta_flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(device, precision):
            probs = model(x).float().softmax(dim=1)
        if tta_flip:
            probs = (probs[:n] + probs[n:]) / 2
        out.append(probs)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    # Checked and copied once at the end: a CUDA device never waits for the host between batches.
    probs = torch.cat(out)
    if not torch.isfinite(probs).all():
        raise StageFailed(
            f"non-finite predictions with precision {precision} for inputs of "
            f"{tuple(x.shape[-2:])}: set train.precision=fp32"
        )
    return probs.cpu().numpy()


def predict_for_spec(
    model: nn.Module, images: torch.Tensor | ResidentImages, rt: Runtime, spec: DictConfig
) -> np.ndarray:
    """`predict_probs` with a model's own settings: batch size, test-time flip, centre crop."""
    return predict_probs(
        model,
        images,
        device=rt.device,
        precision=rt.precision,
        batch_size=int(spec.train.eval_batch_size),
        tta_flip=bool(spec.train.tta_flip),
        center_crop=spec.train.center_crop,
    )


def checkpoint_key(name: str) -> str:
    """Key of a model's best checkpoint (a state dict) in the run."""
    return join_key("models", name, "checkpoint.pt")


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


def prediction_key(name: str, split: str) -> str:
    """Key of a model's predictions for a split in the run."""
    return answers_key("model", name, split)


def write_predictions(
    run: Store,
    run_id: str,
    name: str,
    task: str,
    split: str,
    image_ids: list[str],
    probs: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Write one model's predictions for a split (the answers schema), atomically."""
    table = answers_table(
        run_id=run_id, split=split, image_ids=image_ids, kind="model", name=name, task=task,
        probs=probs, labels=labels,
    )  # fmt: skip
    write_answers(run, prediction_key(name, split), table)


def predict_model(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Predict val and eval with model `name`'s best checkpoint; a no-op when already done."""
    started = time.time()
    run = run_store(cfg)
    stage = f"predict-{name}"
    if stage_done(run, stage):
        log.info("%s already done: nothing to do", stage)
        return {}
    spec = model_specs(cfg)[name]
    _, num_classes = task_target(str(spec.task))
    rt = setup_runtime(cfg)
    model = model_from_checkpoint(spec, num_classes, load_checkpoint(run, name))
    model.to(rt.device, memory_format=torch.channels_last).eval()
    if cfg.train.precision == "auto":
        shape = input_shape(cfg.train.image_size, spec.train.center_crop)
        rt = probe_precision(model, shape, rt)
    model = for_inference(model)

    index = read_index(run)
    counts = {}
    for split in ("val", "eval"):
        rows = index[index["split"] == split]
        ids = rows["image_id"].tolist()
        size = cfg.train.image_size
        images = load_resident(
            run,
            ids,
            rows["shard"].tolist(),
            size,
            device=rt.device,
            threads=rt.threads,
            placement=plan_placement(
                image_bytes(len(ids), size), rt.device, float(spec.train.gpu_memory_budget)
            ),
        )
        t0 = time.time()
        probs = predict_for_spec(model, images, rt, spec)
        log.info(
            "%s %s: %d images, %.0f images/s",
            stage,
            split,
            len(ids),
            len(ids) / max(time.time() - t0, 1e-9),
        )
        if len(ids) == 0:
            probs = np.zeros((0, num_classes), dtype=np.float32)
        write_predictions(
            run, str(cfg.run_id), name, str(spec.task), split, ids, probs, rows["label"].to_numpy()
        )
        counts[split] = len(ids)
    mark_stage_done(run, stage, {"model": name, "images": counts}, started)
    return counts


def predict(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Run the predict stage for the selected models (`model_name`, or the whole suite)."""
    return {name: predict_model(cfg, name) for name in selected_models(cfg)}
