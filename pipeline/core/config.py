"""Compose the suite's Hydra configuration from the packaged `pipeline/conf` and overrides."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any, cast

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import ConfigError
from pipeline.core.schema import RUN_WIDE_TRAIN_KEYS, problems_error, schema_problems

CONFIG_MODULE = "pipeline.conf"


def config_groups() -> set[str]:
    """The config groups (`data`, `suite`, ...): the folders of the packaged config."""
    return {p.name for p in files(CONFIG_MODULE).iterdir() if p.is_dir() and p.name[0] != "_"}


def _set_or_add(overrides: Sequence[str]) -> list[str]:
    """`key=value` overrides as `++key=value` (set, or add when the key does not exist), so that a
    misspelt key is composed and then reported by the schema with the key it was meant to be, in
    the same list as every other problem, rather than by Hydra alone with advice to add it."""
    groups = config_groups()
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    out = []
    for text, override in zip(overrides, parsed, strict=True):
        plain = not (override.is_add() or override.is_force_add() or override.is_delete())
        is_group = override.key_or_group in groups or override.package is not None
        out.append(f"++{text}" if plain and not is_group else text)
    return out


def load_config(overrides: Sequence[str] = (), *, strict: bool = False) -> DictConfig:
    """Compose `config.yaml` with Hydra overrides (`key=value`, `group=option`, `+key=value`).

    Returns a resolved DictConfig in struct mode (setting a key it lacks raises). A command that
    runs stages checks it whole with `pipeline.orchestration.checks.check_config`; one that only
    reads the store passes `strict=True` to have it checked against the schema here (a misspelt
    key is never ignored). Raises ConfigError naming the bad override or listing the problems.
    """
    composed = list(overrides)
    try:
        composed = _set_or_add(overrides)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name="config", overrides=composed)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: train=null
        said = str(e)
        for given, used in zip(overrides, composed, strict=True):
            said = said.replace(used, given)  # name the override as the user wrote it
        raise ConfigError(f"invalid configuration override in {list(overrides)}: {said}") from e
    OmegaConf.set_struct(cfg, True)
    if strict:
        problems = schema_problems(plain_config(cfg))
        if problems:
            raise problems_error(problems)
    return cfg


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` resolved into plain dicts and lists (what jobs carry and fingerprints hash)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(config, dict):  # never: a DictConfig converts to a dict
        raise TypeError(f"expected a mapping, got {type(config).__name__}")
    # omegaconf types a container's keys as its DictKeyType (str, bytes, int, Enum, float,
    # bool); the configuration's own keys are names
    return cast(dict[str, Any], config)


def raw_config(cfg: DictConfig) -> dict[str, Any]:
    """`cfg` as plain dicts and lists, interpolations and escapes left as they are."""
    config = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(config, dict):  # never: a DictConfig converts to a dict
        raise TypeError(f"expected a mapping, got {type(config).__name__}")
    return cast(dict[str, Any], config)


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
        # unresolved: a stored config's strings are escaped to stay literal (stored_config.py);
        # resolving here would turn a stored "${oc.env:...}" back into an interpolation
        base = {**raw_config(cfg.model), "train": raw_config(cfg.train)}
        # omegaconf types a merge as ListConfig | DictConfig; one into a DictConfig is a DictConfig
        spec = cast(DictConfig, OmegaConf.merge(base, entry, {"train": train_overrides}))
        OmegaConf.set_struct(spec, True)
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
