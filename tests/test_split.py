import numpy as np
import pytest

from pipeline.core.errors import ConfigError, DataError
from pipeline.domain.split import split_by_person


def people_rows(n_people: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """7 image rows per person, each person in one of 6 strata with uneven sizes."""
    rng = np.random.default_rng(seed)
    person_strata = rng.choice(6, size=n_people, p=[0.2, 0.15, 0.03, 0.27, 0.3, 0.05])
    return np.repeat(np.arange(n_people), 7), np.repeat(person_strata, 7)


def test_no_person_on_both_sides_and_proportions_kept() -> None:
    persons, strata = people_rows(1000)
    is_val = split_by_person(persons, strata, 0.2, seed=42)
    val_people, train_people = set(persons[is_val]), set(persons[~is_val])
    assert not val_people & train_people
    assert abs(len(val_people) / 1000 - 0.2) < 0.02
    for s in range(6):
        in_stratum = strata == s
        share = is_val[in_stratum].mean()
        assert abs(share - 0.2) < 0.05, (s, share)


def test_split_is_deterministic_per_seed() -> None:
    persons, strata = people_rows(300)
    a = split_by_person(persons, strata, 0.2, seed=1)
    assert (a == split_by_person(persons, strata, 0.2, seed=1)).all()
    assert (a != split_by_person(persons, strata, 0.2, seed=2)).any()


@pytest.mark.parametrize("fraction", [0.0, 0.7, -0.1])
def test_invalid_fraction(fraction: float) -> None:
    persons, strata = people_rows(50)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_by_person(persons, strata, fraction, seed=0)


def test_too_few_people() -> None:
    with pytest.raises(DataError, match=r"hold out 20% for validation .* found 2"):
        split_by_person(np.array([1, 1, 2, 2]), np.array([0, 0, 1, 1]), 0.2, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.33, 0.4, 0.45, 0.5])
def test_the_share_of_people_in_val_is_the_fraction_asked_for(fraction: float) -> None:
    """Within one percentage point for any fraction in (0, 0.5] (k-fold splits gave 1/round(1/f):
    0.4 -> 50 %, 0.15 -> 14 %), each stratum still near the fraction."""
    persons, strata = people_rows(1000, seed=3)
    is_val = split_by_person(persons, strata, fraction, seed=0)
    assert abs(len(set(persons[is_val])) / 1000 - fraction) < 0.01
    assert not set(persons[is_val]) & set(persons[~is_val])
    for s in range(6):
        people = len(set(persons[strata == s]))
        assert abs(is_val[strata == s].mean() - fraction) <= 1 / people, (s, fraction)
