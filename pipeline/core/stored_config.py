"""Configurations read back as data: a run's manifest, a job's pickled config.

What the suite stores is its *resolved* configuration (pipeline.core.config.plain_config), so a
stored value is never an OmegaConf interpolation. But a store is a bucket others may write: a
manifest whose `model.arch` is `${oc.env:AWS_SECRET_ACCESS_KEY}` would, read with a plain
`OmegaConf.create`, resolve to the secret the first time it is used (and an error message would
print it). `stored_config` takes every string literally: `${` is escaped before the DictConfig is
made (OmegaConf's `\\${`, backslashes before it doubled), so no resolver ever runs, and the
result is checked to read back exactly as stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.core.errors import ConfigError

#: `${` with the backslashes right before it (OmegaConf reads `\${` as a literal `${`, and `\\`
#: right before `${` as one literal backslash).
_INTERPOLATION_START = re.compile(r"(\\*)\$\{")


def literal_string(value: str) -> str:
    """`value` escaped so that OmegaConf reads it back exactly, never as an interpolation."""
    return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", value)


def _escaped(value: Any) -> Any:
    """A plain container with every string escaped (see literal_string); keys are kept."""
    if isinstance(value, str):
        return literal_string(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def _text(value: Any) -> str:
    """`value` as canonical JSON, to compare containers (NaN equal to NaN)."""
    return json.dumps(value, sort_keys=True, default=repr)


def stored_config(data: Any, source: str) -> DictConfig:
    """The stored configuration `data` (a JSON mapping) as a mutable DictConfig whose strings
    are all literal. ConfigError naming `source` when it is not a mapping or cannot be read."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the stored config is not a mapping ({type(data).__name__})")
    try:
        cfg = OmegaConf.create(_escaped(data))
        # never false: escaped strings resolve to themselves, nothing else is an interpolation
        exact = _text(OmegaConf.to_container(cfg, resolve=True)) == _text(data)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: the stored config cannot be read: {e}") from e
    if not exact:  # refuse rather than guess
        raise ConfigError(f"{source}: the stored config does not read back as stored: refused")
    OmegaConf.set_struct(cfg, True)
    return cfg
