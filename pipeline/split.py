"""Split people into train and validation: no person on both sides, strata proportions kept."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.errors import ConfigError, DataError


def split_by_person(
    person_ids: np.ndarray, strata: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """Return a boolean array, True for rows that go to validation.

    Rows are images; all images of a person land on the same side. The split is the first fold of
    scikit-learn's StratifiedGroupKFold with round(1 / val_fraction) folds, so each side keeps the
    distribution of `strata` (e.g. gender × age group). Deterministic for a given seed.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction must be in (0, 0.5], got {val_fraction}")
    n_splits = max(2, round(1.0 / val_fraction))
    groups = np.asarray(person_ids)
    n_people = len(np.unique(groups))
    if n_people < n_splits:
        raise DataError(
            f"need at least {n_splits} people to hold out {val_fraction:.0%} for validation, "
            f"found {n_people}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Tiny datasets have strata with fewer people than folds; the split is still by person.
        warnings.simplefilter("ignore", UserWarning)
        _, val_rows = next(splitter.split(np.zeros(len(groups)), np.asarray(strata), groups))
    is_val = np.zeros(len(groups), dtype=bool)
    is_val[val_rows] = True
    return is_val
