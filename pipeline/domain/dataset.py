"""The competition's data layout: parse folder and photo names into labels.

train/train.csv                           id,gender,race,age,path (one row per person)
train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<jpg|jpeg|png>
eval/info.csv                             ImageID,ans (ans empty)
eval/images/<ImageID>
eval/ground_truth.csv                     ImageID,ans (optional; the generated data has it)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from pipeline.core.errors import DataError
from pipeline.domain.labels import GENDER_CODE, PHOTO_MASK

TRAIN_CSV = "train/train.csv"
TRAIN_IMAGES = "train/images/"
EVAL_CSV = "eval/info.csv"
EVAL_IMAGES = "eval/images/"
EVAL_TRUTH = "eval/ground_truth.csv"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
FOLDER_PATTERN = re.compile(
    r"^(?P<id>\d+)_(?P<gender>male|female)_(?P<race>[A-Za-z]+)_(?P<age>\d{1,3})$", re.IGNORECASE
)
MIN_AGE, MAX_AGE = 1, 120


@dataclass(frozen=True)
class Person:
    """What a training folder name says about its person."""

    person_id: str
    gender: int
    race: str
    age: int


def parse_folder_name(name: str) -> Person:
    """Parse `<id>_<gender>_<race>_<age>`, e.g. `000001_female_Asian_45`.

    Raises DataError saying what is wrong when the name does not parse.
    """
    m = FOLDER_PATTERN.match(name)
    if m is None:
        raise DataError(
            f"folder name {name!r} does not parse as <id>_<male|female>_<race>_<age>, "
            "e.g. 000001_female_Asian_45"
        )
    age = int(m["age"])
    if not MIN_AGE <= age <= MAX_AGE:
        raise DataError(f"folder name {name!r} has age {age}, outside {MIN_AGE}..{MAX_AGE}")
    return Person(m["id"], GENDER_CODE[m["gender"].lower()], m["race"], age)


def junk_reason(filename: str) -> str | None:
    """Why a file is never an image (macOS sidecar, OS junk), or None for a candidate image."""
    if filename.startswith("._"):
        return "macOS resource-fork sidecar (._*), not an image"
    if filename.lower() in JUNK_NAMES:
        return "operating-system junk file, not an image"
    return None


def check_image_extension(filename: str) -> str:
    """Return the lower-case extension of an image file name; DataError when not an image one."""
    ext = PurePosixPath(filename).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(
            f"file {filename!r} has extension {ext or '(none)'!r}; "
            f"images must be one of {', '.join(IMAGE_EXTENSIONS)}"
        )
    return ext


def parse_photo_name(filename: str) -> int:
    """Return the mask code (0 wear, 1 incorrect, 2 not worn) of a training photo file name.

    Raises DataError for sidecars, junk, unknown photo names and non-image extensions.
    """
    reason = junk_reason(filename)
    if reason:
        raise DataError(f"{filename!r}: {reason}")
    check_image_extension(filename)
    stem = PurePosixPath(filename).stem.lower()
    if stem not in PHOTO_MASK:
        raise DataError(
            f"photo name {filename!r} is not one of {', '.join(PHOTO_MASK)} (+ image extension)"
        )
    return PHOTO_MASK[stem]
