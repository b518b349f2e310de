"""Labels of the task: mask × gender × age group ↔ the 18 competition classes.

class = mask * 6 + gender * 3 + age_group, with
  mask:   0 wear (mask1..mask5), 1 incorrect (incorrect_mask), 2 not worn (normal)
  gender: 0 male, 1 female
  age:    0 young (< 30), 1 middle (30..59), 2 old (>= 60) — thresholds are configurable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from pipeline.core.errors import DataError

NUM_CLASSES = 18
MASK_NAMES = ("wear", "incorrect", "not_worn")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")

#: photo file stem → mask code, as in the competition layout.
PHOTO_MASK = {
    "mask1": 0,
    "mask2": 0,
    "mask3": 0,
    "mask4": 0,
    "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
GENDER_CODE = {"male": 0, "female": 1}
DEFAULT_AGE_THRESHOLDS = (30, 60)


@dataclass(frozen=True)
class AgeThresholds:
    """Age-group boundaries: group 0 is age < young_below, group 2 is age >= old_from."""

    young_below: int = DEFAULT_AGE_THRESHOLDS[0]
    old_from: int = DEFAULT_AGE_THRESHOLDS[1]

    def __post_init__(self) -> None:
        if not 0 < self.young_below < self.old_from:
            raise DataError(
                f"age thresholds must satisfy 0 < young_below < old_from, "
                f"got young_below={self.young_below}, old_from={self.old_from}"
            )

    def group(self, age: int) -> int:
        """Return the age group (0, 1, 2) of an age in years."""
        if age < self.young_below:
            return 0
        if age < self.old_from:
            return 1
        return 2

    def groups(self, ages: Sequence[int] | np.ndarray) -> np.ndarray:
        """Vectorised `group` over an array of ages."""
        a = np.asarray(ages)
        return (a >= self.young_below).astype(np.int64) + (a >= self.old_from).astype(np.int64)


def encode(mask: int, gender: int, age_group: int) -> int:
    """Return the 18-class label of (mask, gender, age group); ValueError when out of range."""
    if mask not in (0, 1, 2) or gender not in (0, 1) or age_group not in (0, 1, 2):
        raise ValueError(
            f"mask must be 0..2, gender 0..1, age group 0..2; got {mask}, {gender}, {age_group}"
        )
    return mask * 6 + gender * 3 + age_group


def encode_array(mask: ArrayLike, gender: ArrayLike, age_group: ArrayLike) -> np.ndarray:
    """Vectorised `encode` (no range check: inputs come from validated columns)."""
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age_group)


def decode(label: int) -> tuple[int, int, int]:
    """Return (mask, gender, age group) of an 18-class label; ValueError when out of range."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class label must be 0..{NUM_CLASSES - 1}, got {label}")
    return label // 6, (label // 3) % 2, label % 3


def decode_array(labels: ArrayLike) -> dict[str, np.ndarray]:
    """Vectorised `decode` (no range check): each task's part of 18-class labels, by task name
    (mask, gender, age), in the order of `TASK_SIZES`."""
    y = np.asarray(labels)
    return {"mask": y // 6, "gender": (y // 3) % 2, "age": y % 3}


#: Each task's number of classes, in the order of the class code (mask, gender, age).
TASK_SIZES = {"mask": len(MASK_NAMES), "gender": len(GENDER_NAMES), "age": len(AGE_NAMES)}


def class_name(label: int) -> str:
    """Human-readable name of a class, e.g. `wear/female/30-59`."""
    m, g, a = decode(label)
    return f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{AGE_NAMES[a]}"
