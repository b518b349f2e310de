"""Compose the suite's Hydra configuration from the packaged `pipeline/conf` and overrides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import ConfigError

CONFIG_MODULE = "pipeline.conf"


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `config.yaml` with Hydra overrides (`key=value`, `group=option`, `+key=value`).

    Returns a resolved, mutable DictConfig. Raises ConfigError naming the bad override.
    """
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"invalid configuration override in {list(overrides)}: {e}") from e
    OmegaConf.set_struct(cfg, False)
    return cfg


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` resolved into plain dicts and lists (what jobs carry and fingerprints hash)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(config, dict):  # never: a DictConfig converts to a dict
        raise TypeError(f"expected a mapping, got {type(config).__name__}")
    # omegaconf types a container's keys as its DictKeyType (str, bytes, int, Enum, float,
    # bool); the configuration's own keys are names
    return cast(dict[str, Any], config)


#: Train keys that apply to every model of a run (set them with train.<key>=... only).
RUN_WIDE_TRAIN_KEYS = ("epochs", "image_size", "device", "precision", "num_threads")


def model_specs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Return the suite's models by name, each the `model` group merged with its suite entry.

    An entry may override any key of the model group and, under `train:`, any key of the train
    group except the run-wide ones (epochs, image_size, ...). The result's `train` is the merged
    training config of that model. Raises ConfigError for unknown keys.
    """
    models = cfg.suite.get("models") or {}
    if not models:
        raise ConfigError("the suite lists no models: add entries under suite.models")
    specs: dict[str, DictConfig] = {}
    for name, value in models.items():
        entry = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(
                f"suite model {name!r} must map model keys (and train) to values, got {entry!r}"
            )
        train_overrides = entry.pop("train", None) or {}
        unknown = sorted(set(entry) - set(cfg.model))
        if unknown:
            raise ConfigError(
                f"suite model {name!r} has unknown key(s) {unknown}; valid: "
                f"{sorted(cfg.model)} and train"
            )
        bad = sorted(set(train_overrides) - (set(cfg.train) - set(RUN_WIDE_TRAIN_KEYS)))
        if bad:
            raise ConfigError(
                f"suite model {name!r} cannot set train key(s) {bad}: "
                f"{list(RUN_WIDE_TRAIN_KEYS)} apply to the whole run (train.<key>=...), "
                f"other valid keys: {sorted(set(cfg.train) - set(RUN_WIDE_TRAIN_KEYS))}"
            )
        # omegaconf types a merge as ListConfig | DictConfig; one into a DictConfig is a DictConfig
        spec = cast(DictConfig, OmegaConf.merge(cfg.model, entry))
        spec.train = OmegaConf.merge(cfg.train, train_overrides)
        specs[str(name)] = spec
    return specs


def selected_models(cfg: DictConfig) -> list[str]:
    """Names of the models a train/predict job handles: `model_name`, or all of the suite's."""
    names = list(model_specs(cfg))
    if cfg.get("model_name") is None:
        return names
    if cfg.model_name not in names:
        raise ConfigError(f"model_name={cfg.model_name!r} is not in the suite; valid: {names}")
    return [cfg.model_name]
