"""From a plain CSV of labelled photos to the folders of the competition layout (pure: no I/O).

The CSV has a header and one row per photo: `path,person,gender,age,mask` (an optional `race`
column too). `plan_layout` checks every row and every person and returns what to write: one
folder `<id>_<gender>_<race>_<age>` per person with its photos given the layout's names
(`mask1`..`mask5` for worn masks in the CSV's order, `incorrect_mask`, `normal`), plus every
problem found (all at once, one line each, naming the CSV line) and the warnings.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.core.errors import DataError
from pipeline.domain.dataset import MAX_AGE, MIN_AGE
from pipeline.domain.labels import GENDER_CODE, GENDER_NAMES, MASK_NAMES, PHOTO_MASK

CSV_COLUMNS = ("path", "person", "gender", "age", "mask")
EVAL_CSV_COLUMNS = ("path",)
#: The mask value of a row: the label names of pipeline/domain/labels.py, or a photo name of the
#: layout (mask1..mask5, incorrect_mask, normal) standing for its mask state.
MASK_VALUES = {name: code for code, name in enumerate(MASK_NAMES)} | PHOTO_MASK
#: The layout's photo names of each mask state, in the order photos are given them.
SLOTS = {0: ("mask1", "mask2", "mask3", "mask4", "mask5"), 1: ("incorrect_mask",), 2: ("normal",)}
DEFAULT_RACE = "Unknown"
RACE_PATTERN = re.compile(r"^[A-Za-z]+$")
#: The competition's person ids: 6 digits (000001). Any other id is given a new one.
ID_PATTERN = re.compile(r"^\d{6}$")
MAX_ID = 999_999


@dataclass(frozen=True)
class PhotoRow:
    """One checked row of the CSV: `line` is its line in the file (the header is line 1)."""

    line: int
    path: str
    person: str
    gender: int
    age: int
    mask: int
    race: str


@dataclass(frozen=True)
class PersonFolder:
    """One person of the layout: their id, labels and photos as (layout photo name, row)."""

    person: str
    person_id: str
    gender: int
    race: str
    age: int
    photos: tuple[tuple[str, PhotoRow], ...]

    @property
    def folder(self) -> str:
        """The folder name, e.g. `000001_female_Asian_45`."""
        return f"{self.person_id}_{GENDER_NAMES[self.gender]}_{self.race}_{self.age}"


@dataclass
class LayoutPlan:
    """What to write, and what stops it (`problems`) or is only worth saying (`warnings`)."""

    people: list[PersonFolder] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def csv_rows(
    text: str, where: str, required: Sequence[str]
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV's rows, cells stripped; DataError naming `where` when the header
    lacks a required column. A BOM is tolerated."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    header = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{where} lacks column(s) {missing}; found {header}, need {list(required)} "
            "(and a header line)"
        )
    reader.fieldnames = header
    for row in reader:
        yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


def parse_row(line: int, row: Mapping[str, str], default_race: str) -> tuple[PhotoRow | None, str]:
    """A checked PhotoRow, or None and why the row cannot be used."""
    if not row.get("path"):
        return None, "empty path"
    if not row.get("person"):
        return None, "empty person"
    gender = GENDER_CODE.get(row.get("gender", "").lower())
    if gender is None:
        return None, f"gender {row.get('gender')!r} is not one of {list(GENDER_CODE)}"
    age_text = row.get("age", "")
    if not age_text.isdigit() or not MIN_AGE <= int(age_text) <= MAX_AGE:
        return None, f"age {age_text!r} is not a whole number in {MIN_AGE}..{MAX_AGE}"
    mask = MASK_VALUES.get(row.get("mask", "").lower())
    if mask is None:
        return None, (
            f"mask {row.get('mask')!r} is not one of {list(MASK_NAMES)} "
            f"(or a photo name of the layout: {', '.join(PHOTO_MASK)})"
        )
    race = row.get("race") or default_race
    if not RACE_PATTERN.match(race):
        return None, f"race {race!r} must be letters only (it is part of the folder name)"
    return PhotoRow(line, row["path"], row["person"], gender, int(age_text), mask, race), ""


def _parsed(
    text: str, where: str, default_race: str, plan: LayoutPlan
) -> tuple[list[PhotoRow], dict[str, int]]:
    """The usable rows of the CSV; each unusable one, and a path named twice, is a problem."""
    rows: list[PhotoRow] = []
    first_line: dict[str, int] = {}
    for line, raw in csv_rows(text, where, CSV_COLUMNS):
        row, why = parse_row(line, raw, default_race)
        if row is None:
            plan.problems.append(f"{where} line {line}: {why}")
            continue
        if row.path in first_line:
            plan.problems.append(
                f"{where} line {line}: photo {row.path!r} is already on line {first_line[row.path]}"
            )
            continue
        first_line[row.path] = line
        rows.append(row)
    return rows, first_line


def lines_of(rows: Iterable[PhotoRow]) -> str:
    """`lines 2, 3, 9` of some rows."""
    numbers = [r.line for r in rows]
    return f"line{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def check_labels(person: str, rows: list[PhotoRow], where: str) -> str | None:
    """Why a person's rows disagree on gender, age or race, naming the lines; None when not."""
    labels: dict[tuple[int, int, str], list[PhotoRow]] = defaultdict(list)
    for row in rows:
        labels[(row.gender, row.age, row.race)].append(row)
    if len(labels) == 1:
        return None
    said = "; ".join(
        f"{lines_of(r)} say{'s' if len(r) == 1 else ''} {GENDER_NAMES[g]}, age {a}, race {race}"
        for (g, a, race), r in labels.items()
    )
    return f"{where} person {person!r} has different labels: {said}; one person has one label set"


def assign_slots(
    person: str, rows: list[PhotoRow], where: str, strict: bool
) -> tuple[tuple[tuple[str, PhotoRow], ...], list[str], list[str]]:
    """The person's photos named by mask state (CSV order), the problems (more photos of a state
    than the layout has names for; with `strict`, fewer) and the warnings (fewer)."""
    photos: list[tuple[str, PhotoRow]] = []
    problems: list[str] = []
    short: list[str] = []
    for mask, names in SLOTS.items():
        of_state = [r for r in rows if r.mask == mask]
        if len(of_state) > len(names):
            problems.append(
                f"{where} person {person!r} has {len(of_state)} {MASK_NAMES[mask]} photos "
                f"({lines_of(of_state)}); the layout holds {len(names)} ({', '.join(names)}): "
                "drop the extra rows"
            )
        elif len(of_state) < len(names):
            short.append(f"{len(of_state)} of {len(names)} {MASK_NAMES[mask]}")
        photos += zip(names, of_state, strict=False)
    warnings = []
    if short:
        message = (
            f"{where} person {person!r} ({lines_of(rows)}) has {', '.join(short)} photos; "
            "the layout has 5 wear, 1 incorrect and 1 not_worn per person"
        )
        if strict:
            problems.append(f"{message} (--strict)")
        else:
            warnings.append(f"{message}: the folder is written with fewer")
    return tuple(photos), problems, warnings


def assign_ids(people: Iterable[str], taken: Iterable[str]) -> dict[str, str]:
    """A 6-digit id per person: their own when it is 6 digits, else the next number after the
    highest id taken or kept. DataError past 999999."""
    people = list(people)
    used = set(taken) | {p for p in people if ID_PATTERN.match(p)}
    next_id = max((int(i) for i in used if i.isdigit()), default=0) + 1
    ids = {}
    for person in people:
        if ID_PATTERN.match(person):
            ids[person] = person
            continue
        if next_id > MAX_ID:
            raise DataError(f"no 6-digit id left for person {person!r} (ids run to {MAX_ID})")
        ids[person] = f"{next_id:06d}"
        next_id += 1
    return ids


def plan_layout(
    text: str,
    where: str,
    *,
    taken_ids: Iterable[str] = (),
    known_people: Mapping[str, str] | None = None,
    strict: bool = False,
    default_race: str = DEFAULT_RACE,
) -> LayoutPlan:
    """Check a labelled CSV (`where` names it in messages) and plan its people's folders.

    `taken_ids`: ids already in the destination (an --append); a person whose own 6-digit id is
    among them, or whose CSV id is in `known_people` (CSV id → id of earlier ingests), is a
    problem: appending adds new people only. DataError for a header without the columns.
    """
    plan = LayoutPlan()
    rows, _ = _parsed(text, where, default_race, plan)
    if not rows and not plan.problems:
        plan.problems.append(f"{where}: no rows below the header")
    by_person: dict[str, list[PhotoRow]] = defaultdict(list)
    for row in rows:
        by_person[row.person].append(row)
    taken = set(taken_ids)
    known = dict(known_people or {})
    for person, person_rows in by_person.items():
        if person in known or person in taken:
            plan.problems.append(
                f"{where} person {person!r} ({lines_of(person_rows)}) is already in the layout "
                f"as id {known.get(person, person)}: --append adds new people only"
            )
    try:
        ids = assign_ids(by_person, taken)
    except DataError as e:
        plan.problems.append(f"{where}: {e}")
        return plan
    for person, person_rows in by_person.items():
        conflict = check_labels(person, person_rows, where)
        if conflict:
            plan.problems.append(conflict)
            continue
        photos, problems, warnings = assign_slots(person, person_rows, where, strict)
        plan.problems += problems
        plan.warnings += warnings
        first = person_rows[0]
        plan.people.append(
            PersonFolder(person, ids[person], first.gender, first.race, first.age, photos)
        )
    return plan


def eval_paths(text: str, where: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(line, path) of an eval CSV's rows (a `path` column) and the problems (empty paths, a
    path named twice). DataError for a header without `path`."""
    paths: list[tuple[int, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in csv_rows(text, where, EVAL_CSV_COLUMNS):
        path = row["path"]
        if not path:
            problems.append(f"{where} line {line}: empty path")
        elif path in seen:
            problems.append(f"{where} line {line}: photo {path!r} is already on line {seen[path]}")
        else:
            seen[path] = line
            paths.append((line, path))
    return paths, problems
