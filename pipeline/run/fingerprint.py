"""The data fingerprint: does tonight's run have anything new to learn from?

The fingerprint hashes what determines a run's models:
- every input object under `train/` and `eval/` of `data.root` and of each `data.extra_roots`
  entry: its key, size and content identifier (the S3 ETag from the listing, no download; the
  SHA-256 of each file for a local folder);
- the label-fix file (its bytes);
- the resolved configuration, minus what does not change the models: the run id, the model a job
  handles, tracking, where the store is, the cluster settings and thread counts;
- the code version (package version plus git commit, `pipeline.run.state.code_version`), so that
  a new release retrains once instead of being skipped until someone passes `--force`.

A launch whose fingerprint equals the one of the run `latest.json` names is skipped (`--force`
runs anyway). The launcher stores it as `runs/<run_id>/fingerprint.json`; the vote copies it into
`latest.json`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from pipeline.core.config import plain_config
from pipeline.core.errors import DataError, StoreKeyNotFound
from pipeline.domain.dataset import EVAL_CSV, EVAL_IMAGES, TRAIN_CSV, TRAIN_IMAGES
from pipeline.run.state import code_version, run_store
from pipeline.storage.run_layout import FINGERPRINT_KEY
from pipeline.storage.store import open_store, read_uri

#: Top-level config keys that never change what a run learns.
IGNORED_KEYS = ("run_id", "model_name", "tracking", "store", "slurm", "k8s", "publish", "notify")
#: train.* keys that change speed or placement, not the models (not `compile`: a compiled step
#: once trained frozen batch norms differently, so it is kept as part of what a run learns).
IGNORED_TRAIN_KEYS = ("num_threads", "gpu_memory_budget")
INPUT_PREFIXES = ("train", "eval")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The part of the resolved configuration that determines the models."""
    config = plain_config(cfg)
    for key in IGNORED_KEYS:
        config.pop(key, None)
    for key in IGNORED_TRAIN_KEYS:
        config.get("train", {}).pop(key, None)
    return config


def input_files(cfg: DictConfig) -> dict[str, tuple[int, str]]:
    """Every input object's full URI → (size, content id)."""
    files: dict[str, tuple[int, str]] = {}
    roots = [("data.root", str(cfg.data.root))]
    roots += [
        (f"data.extra_roots[{i}]", str(r)) for i, r in enumerate(cfg.data.get("extra_roots") or [])
    ]
    for key, root in roots:
        store = open_store(root, workers=int(cfg.store.workers), key=key)
        for prefix in INPUT_PREFIXES:
            sizes = store.sizes(prefix)
            for key, checksum in store.checksums(prefix).items():
                files[store.uri_of(key)] = (sizes.get(key, -1), checksum)
    if cfg.data.get("label_fix"):
        uri = str(cfg.data.label_fix)
        try:
            data = read_uri(uri, key="data.label_fix")
        except StoreKeyNotFound as e:  # as prepare says it
            raise DataError(f"data.label_fix file {uri} not found") from e
        files[uri] = (len(data), f"sha256:{hashlib.sha256(data).hexdigest()}")
    return files


def data_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The fingerprint of this configuration's inputs: `sha256` decides, the rest informs."""
    files = input_files(cfg)
    config_sha = _sha256(model_config(cfg))
    data_sha = _sha256(files)
    code = code_version()
    return {
        "sha256": _sha256({"data": data_sha, "config": config_sha, "code": code}),
        "data_sha256": data_sha,
        "config_sha256": config_sha,
        "code_version": code,
        "files": len(files),
        "bytes": sum(size for size, _ in files.values()),
    }


def recorded_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The run's data fingerprint (`runs/<run_id>/fingerprint.json`), which labels its Kubernetes
    Jobs. A run named on the command line without one (the launcher Job that `--dry-run` prints,
    `--resume` of a run made by hand) gets it now; latest.json keeps it too."""
    run = run_store(cfg)
    if run.exists(FINGERPRINT_KEY):
        return run.read_json(FINGERPRINT_KEY)
    fingerprint = data_fingerprint(cfg)
    run.write_json(FINGERPRINT_KEY, fingerprint)
    return fingerprint


def check_inputs(cfg: DictConfig) -> None:
    """Refuse, before a run is made, inputs that prepare would refuse first thing: `data.root`
    without its training or eval table, an `data.extra_roots` entry without its training table.
    DataError naming the key, the missing file and the layout expected."""
    roots: list[tuple[str, str, tuple[str, ...]]] = [
        ("data.root", str(cfg.data.root), (TRAIN_CSV, EVAL_CSV))
    ]
    roots += [
        (f"data.extra_roots[{i}]", str(r), (TRAIN_CSV,))
        for i, r in enumerate(cfg.data.get("extra_roots") or [])
    ]
    for key, root, needed in roots:
        store = open_store(root, workers=int(cfg.store.workers), key=key)
        for name in needed:
            if not store.exists(name):
                raise DataError(
                    f"{key}={root}: {store.uri_of(name)} not found: {key} must hold the "
                    f"competition layout ({TRAIN_CSV}, {TRAIN_IMAGES}, {EVAL_CSV}, {EVAL_IMAGES}; "
                    "see README 'Data layout'); no run was made"
                )
