"""Sweeps the way Hydra users expect: `python -m pipeline.launch -m train.lr=1e-3,3e-4 ...` is one
run per point of the product of the swept values, expanded by Hydra's own override parser (choice
`a,b`, `range(1,4)`, `choice(...)`), each run with its own run id and the sweep's id."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import HydraException

from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: all its overrides, and those of the swept keys (what tells it apart)."""

    overrides: tuple[str, ...]
    swept: tuple[str, ...]


def sweep_points(overrides: Sequence[str]) -> list[SweepPoint]:
    """The points of a multirun, in Hydra's order (the last swept key varies fastest). Overrides
    that sweep nothing are in every point as written. ConfigError for what cannot be expanded
    here (a glob over a config group's options) or cannot be parsed."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"cannot parse the sweep {list(overrides)}: {e}") from e
    axes: list[list[tuple[str, bool]]] = []
    for override in parsed:
        if not override.is_sweep_override():
            axes.append([(str(override.input_line), False)])
            continue
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP or not override.is_discrete_sweep():
            raise ConfigError(f"{override.input_line}: only lists of values (a,b,c), choice(...) "
                              "and range(start,stop) can be swept here")  # fmt: skip
        key = override.get_key_element()
        axes.append([(f"{key}={value}", True) for value in override.sweep_string_iterator()])
    return [
        SweepPoint(tuple(o for o, _ in point), tuple(o for o, swept in point if swept))
        for point in itertools.product(*axes)
    ]
