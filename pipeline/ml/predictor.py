"""A finished run as a predictor: its voted members, combined by its vote method, with the run's
own settings (manifest and vote.json), answering photos packed in shards. Used by infer (new
photos) and by the publish gate (the champion re-run on today's holdout)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.core.errors import ConfigError
from pipeline.core.stored_config import stored_config
from pipeline.ml.checkpoints import has_checkpoint, load_checkpoint
from pipeline.ml.device import setup_runtime
from pipeline.ml.ensemble import Candidate, candidate_probs, candidate_specs, combine
from pipeline.ml.images import image_limits
from pipeline.ml.inference import for_inference, input_shape, predict_for_spec, probe_precision
from pipeline.ml.models import model_from_checkpoint, task_target
from pipeline.ml.resident import image_bytes, load_resident, plan_placement
from pipeline.storage.run_layout import MANIFEST_KEY, VOTE_KEY
from pipeline.storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPredictor:
    """What a finished run submits: its voted members combined by its vote method, with the
    run's own settings (from its manifest and vote.json)."""

    run_id: str
    run: Store
    config: DictConfig
    members: list[str]
    method: str
    candidates: dict[str, Candidate]
    #: the models the members need, each predicted once
    models: list[str]


def run_predictor(run_id: str, run: Store) -> RunPredictor:
    """The predictor of finished run `run_id`; ConfigError when its members' checkpoints are
    gone (retention), before any photo is read."""
    manifest = run.read_json(MANIFEST_KEY)
    config = manifest.get("config") if isinstance(manifest, dict) else None
    run_cfg = stored_config(config, run.uri_of(MANIFEST_KEY))  # data: never interpolated
    result = run.read_json(VOTE_KEY)
    members, method = list(result["members"]), str(result.get("method") or "hard")
    candidates = candidate_specs(run_cfg)
    needed = list(dict.fromkeys(m for c in members for m in candidates[c].models()))
    pruned = [m for m in needed if not has_checkpoint(run, m)]
    if pruned:
        raise ConfigError(
            f"run {run_id} no longer has the checkpoints of {', '.join(pruned)} (older runs' "
            "checkpoints are deleted beyond store.keep_checkpoints): classify with a newer run, "
            "or leave run_id unset for the latest"
        )
    return RunPredictor(run_id, run, run_cfg, members, method, candidates, needed)


def predictor_answers(
    cfg: DictConfig,
    predictor: RunPredictor,
    packed: Store,
    ids: list[str],
    shard_of: dict[str, str],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The run's answers for the photos `ids` (packed in shards of `packed`): the combined
    18-class probabilities, the answers, and each member's distribution."""
    model_probs = model_probabilities(
        cfg, predictor.config, predictor.run, predictor.models, packed, ids, shard_of
    )
    tasks = {n: str(s.task) for n, s in model_specs(predictor.config).items()}
    dists = {
        c: candidate_probs(predictor.candidates[c], model_probs, tasks) for c in predictor.members
    }
    probs, answers = combine(predictor.method, [dists[m] for m in predictor.members])
    return probs, answers, dists


def model_probabilities(
    cfg: DictConfig,
    run_cfg: DictConfig,
    run: Store,
    needed: list[str],
    packed: Store,
    ids: list[str],
    shard_of: dict[str, str],
) -> dict[str, np.ndarray]:
    """Each model in `needed` predicting the new photos once (images × its task's classes), with
    the run's own settings; the photos are decoded once for all of them."""
    specs = model_specs(run_cfg)
    rt = setup_runtime(cfg)
    size = list(run_cfg.train.image_size)
    images = load_resident(
        packed, ids, [shard_of[i] for i in ids], size, device=rt.device, threads=rt.threads,
        placement=plan_placement(image_bytes(len(ids), size), rt.device,
                                 float(cfg.train.gpu_memory_budget)),
        max_pixels=image_limits(cfg).max_pixels,  # infer.py checked the photos with cfg's
    )  # fmt: skip
    probs: dict[str, np.ndarray] = {}
    for number, name in enumerate(needed, start=1):
        spec = specs[name]
        _, num_classes = task_target(str(spec.task))
        model = model_from_checkpoint(spec, num_classes, load_checkpoint(run, name))
        model.to(rt.device).to(memory_format=torch.channels_last).eval()
        model_rt = rt
        if cfg.train.precision == "auto":
            model_rt = probe_precision(model, input_shape(size, spec.train.center_crop), rt)
        t0 = time.time()
        probs[name] = predict_for_spec(for_inference(model), images, model_rt, spec)
        log.info("infer: model %d of %d (%s): %d photos, %.0f photos/s", number, len(needed),
                 name, len(ids), len(ids) / max(time.time() - t0, 1e-9))  # fmt: skip
    return probs
