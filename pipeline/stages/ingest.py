"""`python -m pipeline.ingest LABELS.csv DEST`: bring labelled photos into the competition layout.

LABELS.csv holds one row per photo, `path,person,gender,age,mask` (+ an optional `race`), the
plan is made by pipeline/domain/ingest_plan.py; this module reads the photos and writes DEST (a
folder or s3://bucket/prefix) through the store:

    train/images/<id>_<gender>_<race>_<age>/<mask1..5|incorrect_mask|normal>.<jpg|jpeg|png>
    train/ingest_ids.csv   person,id,folder: the CSV's person → the layout's 6-digit id
    train/train.csv        id,gender,race,age,path (written last)
    eval/images/<ImageID>, eval/info.csv (ImageID,ans), eval/ingest_ids.csv (path,ImageID)
                           from --eval EVAL.csv (a `path` column); else an empty info.csv

Every row and every photo is checked before anything is written (JPEG or PNG by its magic
bytes, fully decoded, within the default data.max_file_bytes and data.max_pixels); the problems
are all reported at once. Photos are then copied byte for byte (read again, and refused when they
changed since the check). train/train.csv is written last and atomically: a layout without it
is refused by prepare, so an interrupted ingest never looks complete (a failed one removes what
it wrote).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from pipeline.core.csv_cells import FORMULA_STARTS, csv_bytes
from pipeline.core.errors import DataError, PipelineError, StoreKeyNotFound
from pipeline.domain.dataset import (
    EVAL_CSV,
    EVAL_IMAGES,
    TRAIN_CSV,
    TRAIN_IMAGES,
    parse_folder_name,
)
from pipeline.domain.ingest_plan import (
    DEFAULT_RACE,
    PersonFolder,
    csv_rows,
    eval_paths,
    plan_layout,
)
from pipeline.domain.labels import GENDER_NAMES
from pipeline.ml.images import ImageLimits, check_image, photo_format
from pipeline.storage.store import Store, join_key, open_store, read_uri

log = logging.getLogger(__name__)

ID_MAP = "train/ingest_ids.csv"
EVAL_ID_MAP = "eval/ingest_ids.csv"
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")


@dataclass(frozen=True)
class Checked:
    """A photo that passed the checks: its SHA-256 and the extension its format gets."""

    digest: str
    ext: str


@dataclass
class Existing:
    """What an --append destination already holds."""

    train_header: list[str] = field(default_factory=lambda: list(TRAIN_COLUMNS))
    train_rows: list[dict[str, str]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    people: dict[str, str] = field(default_factory=dict)
    id_map: list[dict[str, str]] = field(default_factory=list)
    eval_ids: list[str] = field(default_factory=list)
    eval_map: list[dict[str, str]] = field(default_factory=list)
    has_layout: bool = False


class PhotoSources:
    """Reads the photos a CSV names: an s3:// URI, an absolute path, or a path relative to the
    CSV's folder (a key under its prefix when the CSV is on S3). A local photo must be a regular
    file (a link, FIFO or device is refused) within the size limit."""

    def __init__(self, csv_uri: str, workers: int, limits: ImageLimits) -> None:
        self.folder = csv_folder(csv_uri)
        self.workers = workers
        self.limits = limits
        self.stores: dict[str, Store] = {}

    def _store(self, uri: str) -> Store:
        if uri not in self.stores:
            self.stores[uri] = open_store(uri, workers=self.workers)
        return self.stores[uri]

    def locate(self, path: str) -> tuple[Store, str]:
        """The store and key of a photo path of the CSV; StoreError for an unsafe key."""
        if path.startswith("s3://"):
            bucket, _, key = path[len("s3://") :].partition("/")
            return self._store(f"s3://{bucket}"), join_key(key)
        if self.folder.startswith("s3://") and not os.path.isabs(path):
            return self._store(self.folder), join_key(path)
        full = Path(os.path.normpath(Path(self.folder) / os.path.expanduser(path)))
        return self._store(str(full.parent)), full.name

    def uri_of(self, path: str) -> str:
        """The full URI of a photo path, for messages (the path itself when it is unsafe)."""
        try:
            store, key = self.locate(path)
        except PipelineError:
            return path
        return store.uri_of(key)

    def read(self, path: str) -> bytes:
        """The photo's bytes; StoreError (missing, refused, over the size cap) naming it."""
        store, key = self.locate(path)
        return store.read_capped(key, self.limits.max_file_bytes)


def csv_folder(uri: str) -> str:
    """The folder of a CSV named by a path or an s3:// URI (absolute, for a local one)."""
    if uri.startswith("s3://"):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).expanduser().resolve().parent)


def layout_ext(fmt: str, path: str) -> str:
    """The extension a photo of format `fmt` gets: its own when it names that format."""
    own = PurePosixPath(path).suffix.lower()
    if fmt == "JPEG":
        return own if own in (".jpg", ".jpeg") else ".jpg"
    return ".png"


def check_photo(sources: PhotoSources, path: str) -> Checked | str:
    """The photo's digest and layout extension once it is read and fully decoded, or why not."""
    name = sources.uri_of(path)
    try:
        data = sources.read(path)
        check_image(data, name, sources.limits.max_pixels)
    except PipelineError as e:
        return str(e)
    return Checked(hashlib.sha256(data).hexdigest(), layout_ext(photo_format(data, name), path))


def check_photos(
    sources: PhotoSources, items: Sequence[tuple[int, str]], where: str
) -> tuple[dict[str, Checked], list[str]]:
    """Check every (line, path) in parallel: the usable photos by path, the problems by line."""
    with ThreadPoolExecutor(max_workers=max(1, sources.workers)) as pool:
        results = list(pool.map(lambda item: check_photo(sources, item[1]), items))
    checked: dict[str, Checked] = {}
    problems: list[str] = []
    for (line, path), result in zip(items, results, strict=True):
        if isinstance(result, Checked):
            checked[path] = result
        else:
            problems.append(f"{where} line {line}: {result}")
    return checked, problems


def unneutralised(value: str) -> str:
    """A cell read back from a CSV the suite wrote (`csv_bytes`): without the quote that kept
    a formula-like text from being a formula."""
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def read_csv_text(store: Store, key: str) -> str:
    """A CSV of the destination as text; DataError naming it when it is not UTF-8."""
    try:
        return store.read_bytes(key).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{store.uri_of(key)} is not UTF-8 text: {e}") from e


def read_existing(dest: Store, append: bool) -> Existing:
    """What `dest` holds; DataError when it holds a layout and `append` is off, or files of a
    layout without train/train.csv (an interrupted ingest)."""
    found = Existing()
    if not dest.exists(TRAIN_CSV):
        leftovers = dest.list("train") + dest.list("eval")
        if leftovers:
            raise DataError(
                f"{dest.uri} holds {len(leftovers)} file(s) under train/ or eval/ (e.g. "
                f"{leftovers[0]}) but no {TRAIN_CSV}: an interrupted ingest or another data set. "
                "Remove them, or ingest into an empty destination"
            )
        return found
    if not append:
        raise DataError(
            f"{dest.uri} already holds a layout ({dest.uri_of(TRAIN_CSV)}): pass --append to "
            "add new people to it, or give an empty destination"
        )
    found.has_layout = True
    found.train_rows = read_table(dest, TRAIN_CSV, ("id", "path"))
    found.train_header = list(found.train_rows[0]) if found.train_rows else list(TRAIN_COLUMNS)
    found.ids = {row["id"] for row in found.train_rows}
    for key in dest.list(TRAIN_IMAGES):
        parts = PurePosixPath(key).parts
        if len(parts) == 4:
            with contextlib.suppress(DataError):  # a bad name is prepare's to report
                found.ids.add(parse_folder_name(parts[2]).person_id)
    found.id_map = read_table(dest, ID_MAP, ("person", "id"))
    for row in found.id_map:
        row["person"] = unneutralised(row["person"])
        found.people[row["person"]] = row["id"]
    found.eval_ids = [row["ImageID"] for row in read_table(dest, EVAL_CSV, ("ImageID",))]
    found.eval_map = read_table(dest, EVAL_ID_MAP, ("path", "ImageID"))
    return found


def read_table(dest: Store, key: str, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV of the destination (none when it is absent)."""
    if not dest.exists(key):
        return []
    return [row for _, row in csv_rows(read_csv_text(dest, key), dest.uri_of(key), required)]


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
    """Rows as CSV bytes with these columns (missing cells empty)."""
    return csv_bytes(pd.DataFrame(list(rows), columns=list(columns)).fillna(""))


class Writer:
    """Writes keys into the destination and removes them again when the ingest fails."""

    def __init__(self, dest: Store) -> None:
        self.dest = dest
        self.written: list[str] = []
        self.restore: dict[str, bytes | None] = {}

    def write(self, key: str, data: bytes) -> None:
        """Write `key`; an existing key's content is kept to be put back on failure."""
        if key not in self.restore and key not in self.written:
            self.restore[key] = self.dest.read_bytes(key) if self.dest.exists(key) else None
        self.dest.write_bytes(key, data)
        self.written.append(key)

    def copy(self, sources: PhotoSources, items: Sequence[tuple[str, str, Checked]]) -> None:
        """Copy (photo path, destination key, its check) byte for byte, in parallel; DataError
        when a photo changed since it was checked."""

        def one(item: tuple[str, str, Checked]) -> None:
            path, key, checked = item
            data = sources.read(path)
            if hashlib.sha256(data).hexdigest() != checked.digest:
                raise DataError(f"{sources.uri_of(path)} changed while it was ingested: run again")
            self.dest.write_bytes(key, data)

        self.written += [key for _, key, _ in items]  # removed on failure, written or not
        with ThreadPoolExecutor(max_workers=max(1, sources.workers)) as pool:
            for _ in pool.map(one, items):
                pass

    def undo(self) -> None:
        """Remove what this ingest wrote and put back what it replaced (best effort)."""
        for key in reversed(self.written):
            try:
                old = self.restore.get(key)
                if old is None:
                    self.dest.delete(key)
                else:
                    self.dest.write_bytes(key, old)
            except PipelineError as e:
                log.warning("could not undo %s: %s", self.dest.uri_of(key), e)


def read_labels(uri: str) -> str:
    """A CSV named by a path or s3:// URI, as text; DataError naming it when missing or not
    UTF-8."""
    try:
        return read_uri(uri, key="the CSV").decode("utf-8")
    except StoreKeyNotFound as e:
        raise DataError(f"{uri} not found") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{uri} is not UTF-8 text: {e}") from e


def write_eval(
    writer: Writer, existing: Existing, sources: PhotoSources | None,
    evals: Sequence[tuple[int, str]], checked: dict[str, Checked],
) -> int:  # fmt: skip
    """Copy the eval photos, named by content (`<sha256[:20]><ext>`: the same photo twice is one
    image), then write eval/ingest_ids.csv and eval/info.csv (ImageID, empty ans); a new layout
    without eval photos gets an info.csv that lists none. Returns how many photos were added."""
    if sources is None and existing.has_layout:
        return 0  # appending people only: eval/ stays as it is
    listed = list(existing.eval_ids)
    known = set(listed)
    mapping: list[dict[str, str]] = []
    items: list[tuple[str, str, Checked]] = []
    for _, path in evals:
        image_id = f"{checked[path].digest[:20]}{checked[path].ext}"
        mapping.append({"path": path, "ImageID": image_id})
        if image_id not in known:
            known.add(image_id)
            listed.append(image_id)
            items.append((path, join_key(EVAL_IMAGES.rstrip("/"), image_id), checked[path]))
    if sources is not None:
        writer.copy(sources, items)
        writer.write(EVAL_ID_MAP, table(existing.eval_map + mapping, ("path", "ImageID")))
    writer.write(EVAL_CSV, table(({"ImageID": i, "ans": ""} for i in listed), ("ImageID", "ans")))
    return len(items)


def train_row(person: PersonFolder) -> dict[str, str]:
    """A person's row of train/train.csv."""
    return {
        "id": person.person_id,
        "gender": GENDER_NAMES[person.gender],
        "race": person.race,
        "age": str(person.age),
        "path": person.folder,
    }


def ingest(
    labels: str,
    dest_uri: str,
    *,
    append: bool = False,
    eval_csv: str | None = None,
    strict: bool = False,
    race: str = DEFAULT_RACE,
    workers: int = 8,
    limits: ImageLimits | None = None,
) -> dict[str, Any]:
    """Convert the labelled CSV `labels` (a path or s3:// URI) into the competition layout at
    `dest_uri`; with `append`, add its people to the layout there. Returns a summary: people,
    photos, eval photos, how many people got a new id, the warnings, the destination's URI.

    Raises DataError listing every problem of the CSV and its photos (one per line) before
    anything is written; StoreError when the destination cannot be written (what was written
    is removed, what was replaced put back).
    """
    limits = limits or ImageLimits()
    dest = open_store(dest_uri, workers=workers, key="destination")
    existing = read_existing(dest, append)
    plan = plan_layout(
        read_labels(labels),
        labels,
        taken_ids=existing.ids,
        known_people=existing.people,
        strict=strict,
        default_race=race,
    )
    sources = PhotoSources(labels, workers, limits)
    photos = [(row.line, row.path) for person in plan.people for _, row in person.photos]
    checked, problems = check_photos(sources, photos, labels)
    plan.problems += problems
    eval_sources: PhotoSources | None = None
    evals: list[tuple[int, str]] = []
    eval_checked: dict[str, Checked] = {}
    if eval_csv:
        eval_sources = PhotoSources(eval_csv, workers, limits)
        evals, eval_problems = eval_paths(read_labels(eval_csv), eval_csv)
        eval_checked, bad_evals = check_photos(eval_sources, evals, eval_csv)
        plan.problems += eval_problems + bad_evals
    if plan.problems:
        raise DataError(
            f"{len(plan.problems)} problem(s); nothing was written to {dest.uri}:\n"
            + "\n".join(plan.problems)
        )
    copies = [
        (
            row.path,
            join_key(TRAIN_IMAGES.rstrip("/"), p.folder, name + checked[row.path].ext),
            checked[row.path],
        )
        for p in plan.people
        for name, row in p.photos
    ]
    mapping = [{"person": p.person, "id": p.person_id, "folder": p.folder} for p in plan.people]
    writer = Writer(dest)
    try:
        log.info("copying %d photos of %d people to %s", len(copies), len(plan.people), dest.uri)
        writer.copy(sources, copies)
        added_eval = write_eval(writer, existing, eval_sources, evals, eval_checked)
        writer.write(ID_MAP, table(existing.id_map + mapping, ("person", "id", "folder")))
        rows = existing.train_rows + [train_row(p) for p in plan.people]
        writer.write(TRAIN_CSV, table(rows, existing.train_header))  # last: the layout is whole
    except BaseException:
        writer.undo()
        raise
    return {
        "people": len(plan.people),
        "photos": len(copies),
        "eval_photos": added_eval,
        "new_ids": sum(p.person != p.person_id for p in plan.people),
        "warnings": plan.warnings,
        "destination": dest.uri,
        "appended": existing.has_layout,
    }
