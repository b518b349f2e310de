"""Compose the suite's Hydra configuration from the packaged `pipeline/conf` and overrides."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError

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


def model_specs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Return the suite's models by name, each the `model` group merged with its suite entry."""
    models = cfg.suite.get("models") or {}
    if not models:
        raise ConfigError("the suite lists no models: add entries under suite.models")
    return {name: OmegaConf.merge(cfg.model, entry or {}) for name, entry in models.items()}


def selected_models(cfg: DictConfig) -> list[str]:
    """Names of the models a train/predict job handles: `model_name`, or all of the suite's."""
    names = list(model_specs(cfg))
    if cfg.get("model_name") is None:
        return names
    if cfg.model_name not in names:
        raise ConfigError(f"model_name={cfg.model_name!r} is not in the suite; valid: {names}")
    return [cfg.model_name]
