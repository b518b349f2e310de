"""The predict stage: class probabilities for val, eval and the holdout, as Parquet per model.

predictions/models/<model>/{val,eval,holdout}.parquet (holdout only when the run has one): the
answers schema (pipeline/run/answers.py) with kind=model, task the model's and its probabilities.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.ml.checkpoints import load_checkpoint
from pipeline.ml.device import setup_runtime
from pipeline.ml.images import image_limits
from pipeline.ml.inference import for_inference, input_shape, predict_for_spec, probe_precision
from pipeline.ml.models import model_from_checkpoint, task_target
from pipeline.ml.resident import (
    image_bytes,
    load_resident,
    plan_placement,
)
from pipeline.run.answers import answers_table, write_answers
from pipeline.run.state import read_index, run_store
from pipeline.storage.run_layout import predict_stage, prediction_key
from pipeline.storage.store import Store

log = logging.getLogger(__name__)


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
    """Predict val, eval and the holdout (when the run has one) with model `name`'s best
    checkpoint; returns the images per split. The holdout's answers are only read by the publish
    gate: nothing in the run is chosen on them."""
    run = run_store(cfg)
    stage = predict_stage(name)
    spec = model_specs(cfg)[name]
    _, num_classes = task_target(str(spec.task))
    rt = setup_runtime(cfg)
    model = model_from_checkpoint(spec, num_classes, load_checkpoint(run, name))
    model.to(rt.device).to(memory_format=torch.channels_last).eval()
    if cfg.train.precision == "auto":
        shape = input_shape(cfg.train.image_size, spec.train.center_crop)
        rt = probe_precision(model, shape, rt)
    model = for_inference(model)

    index = read_index(run)
    counts = {}
    for split in ("val", "eval", "holdout"):
        rows = index[index["split"] == split]
        if split == "holdout" and rows.empty:
            continue
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
            max_pixels=image_limits(cfg).max_pixels,
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
    return counts
