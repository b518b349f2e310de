import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.domain.labels import (
    NUM_CLASSES,
    AgeThresholds,
    class_name,
    decode,
    encode,
    encode_array,
)


def test_class_arithmetic_matches_competition_table() -> None:
    assert encode(0, 0, 0) == 0  # wear, male, <30
    assert encode(1, 1, 1) == 10  # incorrect, female, 30-59
    assert encode(2, 1, 2) == 17  # not worn, female, >=60
    assert class_name(10) == "incorrect/female/30-59"


def test_encode_decode_round_trip_covers_all_classes() -> None:
    labels = {encode(m, g, a) for m in range(3) for g in range(2) for a in range(3)}
    assert labels == set(range(NUM_CLASSES))
    for label in range(NUM_CLASSES):
        assert encode(*decode(label)) == label
    m, g, a = np.array([0, 2]), np.array([1, 0]), np.array([2, 1])
    assert encode_array(m, g, a).tolist() == [5, 13]


@pytest.mark.parametrize("bad", [(3, 0, 0), (0, 2, 0), (0, 0, 3), (-1, 0, 0)])
def test_encode_rejects_out_of_range(bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="mask must be"):
        encode(*bad)


def test_decode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"0\.\.17"):
        decode(18)


def test_default_age_groups_at_boundaries() -> None:
    t = AgeThresholds()
    assert [t.group(a) for a in (18, 29, 30, 59, 60, 75)] == [0, 0, 1, 1, 2, 2]
    assert t.groups([29, 30, 59, 60]).tolist() == [0, 1, 1, 2]


def test_old_at_58_is_one_override() -> None:
    t = AgeThresholds(young_below=30, old_from=58)
    assert [t.group(a) for a in (57, 58, 59)] == [1, 2, 2]


def test_invalid_thresholds_are_rejected() -> None:
    with pytest.raises(DataError, match="young_below < old_from"):
        AgeThresholds(young_below=60, old_from=30)
