"""The train stage: one model of the suite on the run's training split, best checkpoint by val
macro F1, resumable from the last epoch's state.

Reads the images once per job into resident uint8 tensors at `train.image_size`; batches are
flipped and normalised on the training device. Writes into the run:
    models/<name>/checkpoint.pt   state dict of the best epoch (loaded with weights_only=True)
    models/<name>/last.pt         model, optimizer, epoch, history — a restarted job resumes from it
    models/<name>/metrics.json    best epoch's val metrics and the per-epoch history
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.config import model_specs, selected_models
from pipeline.device import autocast, setup_runtime
from pipeline.errors import DataError
from pipeline.images import load_images
from pipeline.metrics import classification_metrics, macro_f1
from pipeline.models import build_model, frozen_modules, model_from_checkpoint, task_target
from pipeline.predict import checkpoint_key, normalize, predict_probs
from pipeline.prepare import read_index
from pipeline.runs import (
    load_torch,
    mark_stage_done,
    read_json,
    run_store,
    save_torch,
    stage_done,
    write_json,
)
from pipeline.store import Store, join_key

log = logging.getLogger(__name__)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    hflip: bool,
    generator: torch.Generator,
) -> float:
    """One pass over the resident images in a random order; returns the mean training loss."""
    model.train()
    for module in frozen_modules(model):
        module.eval()  # frozen layers keep their batch-norm statistics too
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(images), generator=generator)
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        if len(rows) < 2:
            continue  # batch norm cannot train on a single image
        x = normalize(images[rows].to(device, non_blocking=True))
        y = targets[rows].to(device, non_blocking=True)
        if hflip:
            flip = torch.rand(len(x), device=device, generator=None) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        with autocast(device, precision):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(rows)
        seen += len(rows)
    return total / max(seen, 1)


def model_key(name: str, filename: str) -> str:
    """Key of a file of model `name` in the run."""
    return join_key("models", name, filename)


def train_model(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Train model `name` of the suite for `cfg.run_id`; returns its metrics. No-op when done."""
    started = time.time()
    run = run_store(cfg)
    stage = f"train-{name}"
    if stage_done(run, stage):
        log.info("%s already done: nothing to do", stage)
        return read_json(run, model_key(name, "metrics.json"))
    spec = model_specs(cfg)[name]
    target, num_classes = task_target(str(spec.task))
    torch.manual_seed(int(cfg.seed))
    rt = setup_runtime(cfg)
    device, precision = rt.device, rt.precision
    size = list(cfg.train.image_size)

    index = read_index(run)
    parts = {s: index[index["split"] == s] for s in ("train", "val")}
    for split, rows in parts.items():
        if len(rows) < 2:
            raise DataError(f"run {cfg.run_id} has {len(rows)} {split} images; need at least 2")
    t0 = time.time()
    images = {
        s: load_images(run, rows["image_id"].tolist(), rows["shard"].tolist(), size, rt.threads)
        for s, rows in parts.items()
    }
    log.info(
        "%s: decoded %d images at %s in %.1f s (%s, %s)",
        stage,
        sum(len(v) for v in images.values()),
        size,
        time.time() - t0,
        device,
        precision,
    )
    targets = torch.tensor(parts["train"][target].to_numpy(), dtype=torch.long)
    val_targets = parts["val"][target].to_numpy()

    model = build_model(spec, num_classes).to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params, lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay)
    )
    generator = torch.Generator().manual_seed(int(cfg.seed))
    state = resume_state(run, name)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        log.info("%s: resuming after epoch %d", stage, state["epoch"])
    history: list[dict[str, Any]] = state["history"] if state else []
    best_f1 = max((h["val_macro_f1"] for h in history), default=-1.0)
    patience = cfg.train.get("early_stopping_patience")

    for epoch in range(len(history) + 1, int(cfg.train.epochs) + 1):
        t0 = time.time()
        loss = train_one_epoch(
            model,
            optimizer,
            images["train"],
            targets,
            device=device,
            precision=precision,
            batch_size=int(cfg.train.batch_size),
            hflip=bool(cfg.train.hflip),
            generator=generator,
        )
        seconds = time.time() - t0
        probs = predict_probs(
            model,
            images["val"],
            device=device,
            precision=precision,
            batch_size=int(cfg.train.eval_batch_size),
            tta_flip=False,
        )
        preds = probs.argmax(axis=1)
        f1 = macro_f1(val_targets, preds, num_classes)
        history.append(
            {
                "epoch": epoch,
                "loss": round(loss, 5),
                "val_macro_f1": round(f1, 5),
                "val_accuracy": round(float(np.mean(preds == val_targets)), 5),
                "seconds": round(seconds, 2),
                "images_per_s": round(len(targets) / seconds, 1),
            }
        )
        log.info("%s epoch %d/%d: %s", stage, epoch, cfg.train.epochs, history[-1])
        if f1 > best_f1:
            best_f1 = f1
            save_torch(run, checkpoint_key(name), model.state_dict())
        save_torch(
            run,
            model_key(name, "last.pt"),
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "epoch": epoch,
                "history": history,
            },
        )
        best_epoch = max(history, key=lambda h: h["val_macro_f1"])["epoch"]
        if patience is not None and epoch - best_epoch >= int(patience):
            log.info("%s: no val improvement for %d epochs, stopping", stage, patience)
            break

    metrics = final_metrics(cfg, run, name, spec, num_classes, images["val"], val_targets, history)
    write_json(run, model_key(name, "metrics.json"), metrics)
    mark_stage_done(
        run, stage, {"model": name, "val_macro_f1": metrics["val"]["macro_f1"]}, started
    )
    return metrics


def final_metrics(
    cfg: DictConfig,
    run: Store,
    name: str,
    spec: DictConfig,
    num_classes: int,
    val_images: torch.Tensor,
    val_targets: np.ndarray,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Val metrics of the best checkpoint (as predict will use it) plus the training history."""
    rt = setup_runtime(cfg)
    device, precision = rt.device, rt.precision
    model = model_from_checkpoint(spec, num_classes, load_torch(run, checkpoint_key(name)))
    model.to(device, memory_format=torch.channels_last)
    probs = predict_probs(
        model,
        val_images,
        device=device,
        precision=precision,
        batch_size=int(cfg.train.eval_batch_size),
        tta_flip=bool(cfg.train.tta_flip),
    )
    best = max(history, key=lambda h: h["val_macro_f1"])
    return {
        "model": name,
        "arch": str(spec.arch),
        "task": str(spec.task),
        "image_size": list(cfg.train.image_size),
        "precision": precision,
        "device": str(device),
        "epochs_trained": len(history),
        "best_epoch": best["epoch"],
        "val": classification_metrics(val_targets, probs.argmax(axis=1)),
        "history": history,
    }


def resume_state(run: Store, name: str) -> dict[str, Any] | None:
    """The last epoch's training state of model `name`, or None to start from scratch."""
    key = model_key(name, "last.pt")
    return load_torch(run, key) if run.exists(key) else None


def train(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Run the train stage for the selected models (`model_name`, or the whole suite)."""
    return {name: train_model(cfg, name) for name in selected_models(cfg)}
