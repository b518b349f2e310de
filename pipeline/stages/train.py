"""The train stage: one model of the suite on the run's training split, best checkpoint by val
macro F1, resumable from the last epoch's state.

Reads the images once per job into resident uint8 tensors at `train.image_size`; batches are
cropped, augmented and normalised on the training device. Writes, after every epoch, last.json
and its tensors file (a TrainingState: a restarted job resumes from it) and the best weights so
far; at the end checkpoint.safetensors (the best epoch) and metrics.json with its SHA-256 (keys:
pipeline/storage/run_layout.py; format: pipeline/ml/checkpoints.py; nothing is pickled).

`train_model` reads as named steps, in the spirit of torchvision's classification reference:
read_recipe (options, checked before any data) → setup (seed, device) → load_data → build (model,
optimizer, precision, scheduler) → resume (last.*) → per epoch fit_one_epoch, evaluate, save →
final_metrics (the best checkpoint, as predict will use it).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.core.config import model_specs
from pipeline.core.errors import DataError, StageFailed, StoreKeyNotFound
from pipeline.core.schema import drop_bands
from pipeline.core.signals import deferred_signals
from pipeline.domain.metrics import classification_metrics, macro_f1
from pipeline.ml.augment import BatchAugment
from pipeline.ml.checkpoints import (
    UnusableCheckpoint,
    check_sha256,
    drop_addressed,
    guarded,
    load_checkpoint,
    load_legacy,
    load_state,
    read_tensors,
    retrain_on_failure,
    save_addressed,
    save_state,
    state_dict_of,
)
from pipeline.ml.device import Runtime, autocast, require_compiler, setup_runtime
from pipeline.ml.images import image_limits
from pipeline.ml.inference import (
    for_inference,
    input_shape,
    normalize,
    predict_for_spec,
    probe_precision,
    to_unit,
)
from pipeline.ml.losses import build_loss
from pipeline.ml.models import (
    build_model,
    frozen_modules,
    mask_group_codes,
    model_from_checkpoint,
    on_device,
    task_target,
)
from pipeline.ml.resident import (
    ResidentImages,
    as_resident,
    image_bytes,
    load_resident,
    plan_placement,
)
from pipeline.ml.tracking import Tracker, tracked_config
from pipeline.ml.training_state import TrainingState
from pipeline.run.state import read_index, run_store
from pipeline.storage.run_layout import (
    METRICS_FILE,
    addressed_key,
    best_stem,
    checkpoint_key,
    last_state_key,
    legacy_checkpoint_key,
    legacy_last_key,
    model_key,
    train_stage,
)
from pipeline.storage.store import Store

log = logging.getLogger(__name__)


T = TypeVar("T")
Images = torch.Tensor | ResidentImages
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def select_rows(index: pd.DataFrame, spec: DictConfig) -> dict[str, pd.DataFrame]:
    """The model's training and validation rows.

    `mask_groups` restricts both sides to those mask groups (conditional models); `drop_ages`
    removes inclusive age bands from training only, so validation still measures them.
    """
    parts = {s: index[index["split"] == s] for s in ("train", "val")}
    codes = mask_group_codes(spec.get("mask_groups"))
    if codes is not None:
        parts = {s: rows[rows["mask"].isin(codes)] for s, rows in parts.items()}
    for low, high in drop_bands(spec.train.get("drop_ages")):
        train = parts["train"]
        parts["train"] = train[~train["age"].between(low, high)]
    return parts


def model_seed(seed: int, name: str) -> int:
    """The seed of model `name`: derived from the run's seed and the name, so that the models of
    a suite see different batch orders and augmentations, and a rerun the same ones."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def batch_order(
    targets: torch.Tensor, num_classes: int, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """Indices of one epoch: a permutation, or class-balanced draws with replacement."""
    if not balanced:
        return torch.randperm(len(targets), generator=generator)
    counts = torch.bincount(targets, minlength=num_classes).clamp(min=1).float()
    weights = 1.0 / counts[targets]
    return torch.multinomial(weights, len(targets), replacement=True, generator=generator)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Images,
    targets: torch.Tensor,
    *,
    rt: Runtime,
    train_cfg: DictConfig,
    num_classes: int,
    augment: BatchAugment,
    loss_fn: LossFn,
    generator: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
    task: str | None = None,
) -> float:
    """One pass over the resident images; returns the mean training loss.

    The loss is summed on the device and read once at the end of the epoch, so a CUDA step never
    waits for the host; a non-finite loss stops the stage before anything of this epoch is saved.
    """
    source = as_resident(images, rt.device)
    model.train()
    # frozen layers keep their batch-norm statistics too; a compiled model's modules are those
    # of the model it wraps (`_orig_mod`), it has none of its own
    for module in frozen_modules(getattr(model, "_orig_mod", model)):
        module.eval()
    if scaler is None:
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    order = batch_order(targets, num_classes, bool(train_cfg.balanced_sampling), generator)
    batch_size = int(train_cfg.batch_size)
    total, seen = torch.zeros((), device=rt.device), 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        if len(rows) < 2:
            continue  # batch norm cannot train on a single image
        x = to_unit(source.batch(rows), train_cfg.center_crop)
        y = targets[rows].to(rt.device, non_blocking=True)
        x, soft = augment(x, y, num_classes, generator, task)
        with autocast(rt.device, rt.precision):
            logits = model(normalize(x))
        loss = loss_fn(logits.float(), soft)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(rows)
        seen += len(rows)
    mean = float(total) / max(seen, 1)
    if not math.isfinite(mean):
        raise StageFailed(
            f"training loss became {mean} (precision {rt.precision}): "
            "try train.precision=fp32 or a lower train.lr"
        )
    return mean


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule named by `train.scheduler` (one of the schema's
    Scheduler names); None for none."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(epochs // 3, 1), gamma=0.1)
    return None


@dataclass
class Recipe:
    """How model `name` trains: its spec's task, augmentation, loss and patience, and its seed."""

    name: str
    spec: DictConfig
    target: str  # the index column it predicts
    num_classes: int
    augment: BatchAugment
    loss_fn: LossFn
    patience: int | None
    seed: int


@dataclass
class Data:
    """The model's decoded training and validation images and their targets."""

    train: Images
    targets: torch.Tensor
    val: Images
    val_targets: np.ndarray


@dataclass
class Trainer:
    """The model and what trains it: made by `build`, restored by `resume`, saved by `save`."""

    rt: Runtime  # device and precision (after the bf16 probe)
    model: nn.Module
    step_model: nn.Module  # `model`, or torch.compile's wrapper sharing its parameters
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # batch orders and augmentations
    #: SHA-256 of the best checkpoint written so far (set by `resume` and `save`)
    checkpoint_sha256: str | None = None

    def state(self, history: list[dict[str, Any]]) -> TrainingState:
        """The training state after the last epoch of `history`, as last.* keeps it."""
        return TrainingState(
            epoch=history[-1]["epoch"],
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            generator=self.generator.get_state(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            history=history,
            checkpoint_sha256=self.checkpoint_sha256,
        )


def train_model(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Train model `name` of the suite for `cfg.run_id`; returns its metrics (run it through the
    stage frame, pipeline.run.state.run_stage, which skips it when done and marks it done)."""
    run = run_store(cfg)
    stage = train_stage(name)
    recipe = read_recipe(cfg, name)
    rt = setup(cfg, recipe)
    data = load_data(cfg, run, recipe, rt)
    trainer = build(cfg, recipe, rt)
    history = resume(trainer, resume_state(run, name), stage)
    best_f1 = max((h["val_macro_f1"] for h in history), default=-1.0)
    epochs = int(cfg.train.epochs)
    tracker = Tracker(cfg, name, tracked_config(cfg, recipe.spec))
    try:
        # a job restarted after early stopping (the history says so) trains no further: it
        # ships the epoch the uninterrupted job would have shipped
        stopped = stopped_early(history, recipe.patience)
        if stopped:
            log.info("%s: stopped early after epoch %d before the restart", stage, len(history))
        for epoch in range(len(history) + 1, epochs + 1):
            if stopped:
                break
            loss, seconds = fit_one_epoch(trainer, data, recipe)
            f1, accuracy = evaluate(trainer.model, data, trainer.rt, recipe)
            history.append(epoch_record(epoch, loss, f1, accuracy, seconds, len(data.targets)))
            log.info("%s epoch %d/%d: %s", stage, epoch, epochs, history[-1])
            tracker.log({k: v for k, v in history[-1].items() if k != "epoch"}, step=epoch)
            save(run, name, trainer, history, best=f1 > best_f1)
            best_f1 = max(best_f1, f1)
            stopped = stopped_early(history, recipe.patience)
            if stopped:
                log.info("%s: no val improvement for %d epochs, stopping", stage, recipe.patience)
        metrics = final_metrics(cfg, run, recipe, trainer, data, history)
        metrics["stopped_early"] = stopped
        val = metrics["val"]
        tracker.summary(
            {"val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"]},
            confusion=val["confusion"],
        )
    finally:
        tracker.finish()
    run.write_json(model_key(name, METRICS_FILE), metrics)
    return metrics


def read_recipe(cfg: DictConfig, name: str) -> Recipe:
    """Reads model `name`'s spec and `cfg.seed` (values checked at job start, check_config)."""
    spec = model_specs(cfg)[name]
    tcfg = spec.train
    target, num_classes = task_target(str(spec.task))
    crop = tcfg.get("center_crop")
    augment = BatchAugment.from_config(tcfg.augment, float(crop[0]) if crop else 1.0)
    loss_fn = build_loss(
        dict(tcfg.loss),
        num_classes=num_classes,
        label_smoothing=float(tcfg.label_smoothing),
        focal_gamma=float(tcfg.focal_gamma),
    )
    patience = tcfg.get("early_stopping_patience")
    seed = model_seed(int(cfg.seed), name)
    return Recipe(name, spec, target, num_classes, augment, loss_fn, patience, seed)


def setup(cfg: DictConfig, recipe: Recipe) -> Runtime:
    """Seeds torch's global RNG (weight init); picks device, precision and threads (cfg.train)."""
    torch.manual_seed(recipe.seed)
    rt = setup_runtime(cfg)
    if recipe.spec.train.get("compile"):
        require_compiler(rt.device)  # before any data is decoded or any step is taken
    return rt


def load_data(cfg: DictConfig, run: Store, recipe: Recipe, rt: Runtime) -> Data:
    """Reads the run's index and decodes the model's train/val images at train.image_size, into
    resident uint8 tensors on the device or in pinned host memory (train.gpu_memory_budget)."""
    size = list(cfg.train.image_size)
    parts = training_rows(cfg, run, recipe)
    t0 = time.time()
    placement = plan_placement(
        image_bytes(sum(len(rows) for rows in parts.values()), size),
        rt.device,
        float(recipe.spec.train.gpu_memory_budget),
    )
    images = {
        s: load_resident(
            run,
            rows["image_id"].tolist(),
            rows["shard"].tolist(),
            size,
            device=rt.device,
            threads=rt.threads,
            placement=placement,
            max_pixels=image_limits(cfg).max_pixels,
        )
        for s, rows in parts.items()
    }
    log.info(
        "%s: decoded %d images at %s in %.1f s (%s, %s, images in %s memory)",
        train_stage(recipe.name),
        sum(len(v) for v in images.values()),
        size,
        time.time() - t0,
        rt.device,
        rt.precision,
        placement,
    )
    return Data(
        train=images["train"],
        targets=torch.tensor(parts["train"][recipe.target].to_numpy(), dtype=torch.long),
        val=images["val"],
        val_targets=parts["val"][recipe.target].to_numpy(),
    )


def training_rows(cfg: DictConfig, run: Store, recipe: Recipe) -> dict[str, pd.DataFrame]:
    """Reads the run's index; the model's train and val rows, DataError when either has < 2."""
    parts = select_rows(read_index(run), recipe.spec)
    for split, rows in parts.items():
        if len(rows) < 2:
            raise DataError(
                f"model {recipe.name!r} has {len(rows)} {split} images in run {cfg.run_id} "
                "(after mask_groups / drop_ages); need at least 2"
            )
    return parts


def build(cfg: DictConfig, recipe: Recipe, rt: Runtime) -> Trainer:
    """Builds the model (spec.arch, weights, freeze) on the device, Adam, the precision it trains
    in (train.precision=auto probes CPU bf16), the scheduler, generator and fp16 loss scaler."""
    tcfg = recipe.spec.train
    model = on_device(build_model(recipe.spec, recipe.num_classes), rt.device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(tcfg.lr),
        weight_decay=float(tcfg.weight_decay),
        fused=True,  # one kernel for all parameters instead of a dozen per tensor
    )
    if cfg.train.precision == "auto":
        rt = probe_precision(model, input_shape(list(cfg.train.image_size), tcfg.center_crop), rt)
    scheduler = make_scheduler(optimizer, str(tcfg.scheduler), int(cfg.train.epochs))
    # torch.compile: faster steps after 20-70 s of compiling; the checkpoints keep plain keys
    # because they are saved from `model`, which shares its parameters with `step_model`.
    step_model = cast(nn.Module, torch.compile(model)) if tcfg.get("compile") else model
    # fp16 (GPUs without bf16): the loss scale found in one epoch carries over to the next, and
    # across a resume (it is saved in last.*).
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    generator = torch.Generator().manual_seed(recipe.seed)
    return Trainer(rt, model, step_model, optimizer, scheduler, scaler, generator)


def resume(trainer: Trainer, state: TrainingState | None, stage: str) -> list[dict[str, Any]]:
    """Loads a last.* state into `trainer` (model, optimizer, scheduler, generator, fp16 scaler,
    the best checkpoint's SHA-256); returns the history of the epochs done ([] when there is none:
    training from scratch)."""
    if state is None:
        return []
    trainer.checkpoint_sha256 = state.checkpoint_sha256
    trainer.model.load_state_dict(state.model)
    trainer.optimizer.load_state_dict(state.optimizer)
    if trainer.scheduler is not None and state.scheduler:
        trainer.scheduler.load_state_dict(state.scheduler)
    trainer.generator.set_state(state.generator)
    if state.scaler and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state.scaler)
    log.info("%s: resuming after epoch %d", stage, state.epoch)
    return state.history


def fit_one_epoch(trainer: Trainer, data: Data, recipe: Recipe) -> tuple[float, float]:
    """Trains `trainer` one epoch on data.train, then steps the learning-rate schedule; returns
    the mean training loss and the seconds the epoch's steps took."""
    t0 = time.time()
    loss = train_one_epoch(
        trainer.step_model,
        trainer.optimizer,
        data.train,
        data.targets,
        rt=trainer.rt,
        train_cfg=recipe.spec.train,
        num_classes=recipe.num_classes,
        augment=recipe.augment,
        loss_fn=recipe.loss_fn,
        generator=trainer.generator,
        scaler=trainer.scaler,
        task=str(recipe.spec.task),
    )
    seconds = time.time() - t0
    if trainer.scheduler is not None:
        trainer.scheduler.step()
    return loss, seconds


def evaluate(model: nn.Module, data: Data, rt: Runtime, recipe: Recipe) -> tuple[float, float]:
    """Val macro F1 and accuracy of `model` on data.val, predicted as the predict stage does."""
    # the best epoch is chosen with the predictor that is shipped: batch norms folded
    # (for_inference, a copy), test-time flip and centre crop as predict uses them, so
    # history[best] is the reported val score to the last answer (an unfolded model's float
    # rounding flipped near-tied answers of a weak model: a different score on a small val set)
    shipped = for_inference(getattr(model, "_orig_mod", model))  # a compiled model: its module
    preds = predict_for_spec(shipped, data.val, rt, recipe.spec).argmax(axis=1)
    accuracy = float(np.mean(preds == data.val_targets))
    return macro_f1(data.val_targets, preds, recipe.num_classes), accuracy


def epoch_record(
    epoch: int, loss: float, f1: float, accuracy: float, seconds: float, images: int
) -> dict[str, Any]:
    """One epoch's entry of the history (metrics.json and last.*), rounded for reading."""
    return {
        "epoch": epoch,
        "loss": round(loss, 5),
        "val_macro_f1": round(f1, 5),
        "val_accuracy": round(accuracy, 5),
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
    }


def stopped_early(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Whether early stopping ends training after the last epoch of `history`: no val improvement
    for `patience` epochs. Read from the history that last.* records, so a job preempted between
    the stop and metrics.json decides the same when it resumes."""
    return patience is not None and bool(history) and epochs_since_best(history) >= patience


def epochs_since_best(history: list[dict[str, Any]]) -> int:
    """Epochs since the first epoch of `history` with the best val macro F1 (0: the last one)."""
    best_epoch: int = max(history, key=lambda h: h["val_macro_f1"])["epoch"]
    return int(history[-1]["epoch"]) - best_epoch


def save(
    run: Store, name: str, trainer: Trainer, history: list[dict[str, Any]], *, best: bool
) -> None:
    """Writes the model's weights as best-<hex>.safetensors when this epoch is the `best` so far,
    then the TrainingState after it (last-<hex>.safetensors, then last.json naming both files'
    SHA-256), then deletes the files last.json no longer names. No file last.json names is ever
    replaced, so a job killed at any point leaves a state that matches (a SIGKILL after a
    preemption's grace time); the scheduler's signals are held until all are written
    (pipeline/core/signals.py), so a handler that requeues the job finds them written."""
    with deferred_signals():
        if best:
            trainer.checkpoint_sha256 = save_addressed(
                run, best_stem(name), trainer.model.state_dict()
            )
        save_state(run, last_state_key(name), trainer.state(history).to_dict())
        kept = {trainer.checkpoint_sha256} if trainer.checkpoint_sha256 else set()
        drop_addressed(run, best_stem(name), kept)


def ship_best(run: Store, name: str, sha256: str, record: str) -> None:
    """Writes the best epoch's weights (best-<hex>.safetensors, checked against the SHA-256
    `record` records) as checkpoint.safetensors, which predict and the publish gate read, then
    deletes the best-* files. A job restarted after that finds the same bytes in
    checkpoint.safetensors (`checked_best`)."""
    best = addressed_key(best_stem(name), sha256)
    if run.exists(best):
        blob = run.read_bytes(best)
        retrain_on_failure(
            run, name, lambda: guarded(run.uri_of(best), lambda: check_sha256(blob, sha256, record))
        )
        run.write_bytes(checkpoint_key(name), blob)
    drop_addressed(run, best_stem(name), set())


def final_metrics(
    cfg: DictConfig,
    run: Store,
    recipe: Recipe,
    trainer: Trainer,
    data: Data,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Reads the best checkpoint, checked against the SHA-256 the training state records; its
    val metrics (as predict will use it), the training history and that SHA-256 (which predict
    and the publish gate check): the content of metrics.json."""
    spec, num_classes, rt = recipe.spec, recipe.num_classes, trainer.rt
    key, sha256 = checkpoint_key(recipe.name), trainer.checkpoint_sha256
    if sha256 is None:
        raise StageFailed(f"model {recipe.name} has no best checkpoint: no epoch was trained")
    record = run.uri_of(f"{last_state_key(recipe.name)}.json")
    ship_best(run, recipe.name, sha256, record)
    state = load_checkpoint(run, recipe.name, sha256, record)
    model = on_device(model_from_checkpoint(spec, num_classes, state), rt.device)
    probs = predict_for_spec(for_inference(model), data.val, rt, spec)
    best = max(history, key=lambda h: h["val_macro_f1"])
    return {
        "model": recipe.name,
        "arch": str(spec.arch),
        "task": str(spec.task),
        "mask_groups": list(spec.mask_groups) if spec.get("mask_groups") else None,
        "image_size": list(cfg.train.image_size),
        "precision": rt.precision,
        "device": str(rt.device),
        "epochs_trained": len(history),
        "best_epoch": best["epoch"],
        "val": classification_metrics(data.val_targets, probs.argmax(axis=1), num_classes),
        "history": history,
        "sha256": {key: sha256},
    }


def resume_state(run: Store, name: str) -> TrainingState | None:
    """The last epoch's training state of model `name`, or None to start from scratch.

    When last.json, its tensors file or the best weights cannot be used (corrupt,
    truncated, missing parts, a SHA-256 other than the one recorded, anything but tensors and
    plain data), a warning names the file and training restarts from scratch, rewriting them. A
    run made before safetensors resumes from its legacy last.pt and checkpoint.pt (read with
    weights_only, with a warning), the checkpoint rewritten as safetensors. Storage errors
    propagate: an unreachable store is not a reason to throw progress away.
    """
    stem = last_state_key(name)
    if not run.exists(f"{stem}.json"):
        return resume_legacy(run, name) if run.exists(legacy_last_key(name)) else None
    state = usable(run, name, lambda: load_state(run, stem, saved_state))
    if state is None or state.checkpoint_sha256 is None:
        return None
    sha256, record = state.checkpoint_sha256, run.uri_of(f"{stem}.json")
    if usable(run, name, lambda: checked_best(run, name, sha256, record)) is None:
        return None
    return state


def saved_state(value: Any) -> TrainingState:
    """A loaded last.* as a TrainingState naming its best checkpoint's SHA-256; ValueError
    otherwise."""
    state = TrainingState.from_dict(value)
    if state.checkpoint_sha256 is None:
        raise ValueError("not a training state: it names no checkpoint_sha256")
    return state


def checked_best(run: Store, name: str, sha256: str, record: str) -> dict[str, torch.Tensor]:
    """The best weights' state dict when their SHA-256 is `sha256` (which `record` records):
    best-<hex>.safetensors while the model trains, checkpoint.safetensors once training shipped
    it (`ship_best`); UnusableCheckpoint naming the file otherwise."""
    best = addressed_key(best_stem(name), sha256)
    key = best if run.exists(best) else checkpoint_key(name)
    return read_tensors(run, key, sha256, record)


def resume_legacy(run: Store, name: str) -> TrainingState | None:
    """The training state of a run made before safetensors (last.pt, checkpoint.pt), its best
    checkpoint rewritten as best-<hex>.safetensors; None (with a warning) when unusable."""
    last, key = legacy_last_key(name), legacy_checkpoint_key(name)
    state = usable(run, name, lambda: load_legacy(run, last, TrainingState.from_dict))
    if state is None:
        return None
    best = usable(run, name, lambda: load_legacy(run, key, state_dict_of))
    if best is None:
        return None
    state.checkpoint_sha256 = save_addressed(run, best_stem(name), best)
    return state


def usable(run: Store, name: str, load: Callable[[], T]) -> T | None:
    """`load()`, or None with a warning naming the file when it is missing or cannot be used."""
    try:
        return load()
    except StoreKeyNotFound as e:
        log.warning("%s: training model %s from scratch", e, name)
    except UnusableCheckpoint as e:
        log.warning("%s is unusable (%s): training model %s from scratch", e.uri, e.reason, name)
    return None
