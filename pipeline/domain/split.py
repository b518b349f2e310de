"""Split people into holdout, train and validation: no person on two sides.

The holdout (`holdout_by_person`) is drawn by a stable rule, a salted hash of the person id, so
it never moves when people are added; validation (`split_by_person`) is drawn among the rest with
a seed, stratified exactly.
"""

from __future__ import annotations

import hashlib
from typing import cast

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError, DataError


def split_by_person(
    person_ids: np.ndarray, strata: np.ndarray, val_fraction: float, seed: int
) -> np.ndarray:
    """Return a boolean array, True for rows that go to validation.

    Rows are images; all images of a person land on the same side (a person's stratum is that of
    their first row). round(val_fraction x people) people go to validation, apportioned to the
    strata (e.g. gender x age group) by largest remainder, so each side keeps the strata's
    proportions and the share of people in val is val_fraction to within half a person. Which
    people: a seeded shuffle within each stratum (deterministic for a given seed).
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction must be in (0, 0.5], got {val_fraction}")
    rows = pd.DataFrame({"person": np.asarray(person_ids), "stratum": np.asarray(strata)})
    people = rows.drop_duplicates("person")
    n_people = len(people)
    wanted = round(val_fraction * n_people)
    if wanted < 1 or n_people - wanted < 1:
        raise DataError(
            f"need enough people to hold out {val_fraction:.0%} for validation and keep some "
            f"for training, found {n_people}"
        )
    sizes = people.groupby("stratum", sort=True).size()
    exact = sizes * (wanted / n_people)
    # numpy's stubs type a ufunc of a Series as an ndarray; pandas returns a Series (same index)
    quota = cast(pd.Series, np.floor(exact)).astype(int)
    remainder = (exact - quota).sort_values(ascending=False, kind="stable")
    quota[remainder.index[: wanted - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for stratum, group in people.groupby("stratum", sort=True):
        order = rng.permutation(group["person"].to_numpy())
        chosen.append(order[: quota[stratum]])
    return rows["person"].isin(np.concatenate(chosen)).to_numpy()


def person_draws(person_ids: np.ndarray, salt: str) -> np.ndarray:
    """A number in [0, 1) per person id, fixed by the id and `salt` alone: the first 8 bytes of
    sha256(salt, id). A person's draw never depends on who else is in the data."""
    prefix = salt.encode() + b"\0"
    return np.array(
        [
            int.from_bytes(hashlib.sha256(prefix + str(p).encode()).digest()[:8], "big") / 2.0**64
            for p in np.asarray(person_ids)
        ],
        dtype=np.float64,
    )


def holdout_by_person(person_ids: np.ndarray, salt: str, fraction: float) -> np.ndarray:
    """A boolean array, True for rows whose person is in the holdout: their draw
    (`person_draws`) is below `fraction`.

    The rule is stable: adding or removing people moves nobody else, a person's side is the same
    every night, and new people join the holdout in proportion (each with probability
    `fraction`). Strata (gender × age group) keep their proportions in expectation, not exactly:
    an exact quota per stratum would move people whenever the data changes. A smaller fraction
    with the same salt gives a subset of the larger one's holdout.
    """
    if not 0.0 <= fraction < 0.5:
        raise ConfigError(f"data.holdout_fraction must be in [0, 0.5), got {fraction}")
    if fraction == 0.0:
        return np.zeros(len(np.asarray(person_ids)), dtype=bool)
    ids = pd.Series(np.asarray(person_ids))
    people = ids.drop_duplicates()
    draws = pd.Series(person_draws(people.to_numpy(), salt), index=people.to_numpy())
    return (ids.map(draws) < fraction).to_numpy()
