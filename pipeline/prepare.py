"""The prepare stage: scan `data.root`, label, validate, split by person, pack shards, index.

Writes into the run: `index.parquet` (one row per usable image), `bad_inputs.csv` (path,reason for
everything that cannot be used), `shards/<split>-NNNNN.parquet`, then the stage marker.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.device import cpu_threads
from pipeline.errors import DataError, StageFailed, StoreKeyNotFound
from pipeline.images import check_image
from pipeline.labels import NUM_CLASSES, AgeThresholds, decode, encode_array
from pipeline.layout import (
    EVAL_CSV,
    EVAL_IMAGES,
    EVAL_TRUTH,
    TRAIN_CSV,
    TRAIN_IMAGES,
    check_image_extension,
    junk_reason,
    parse_folder_name,
    parse_photo_name,
)
from pipeline.runs import (
    mark_stage_done,
    new_run_id,
    read_json,
    run_store,
    stage_done,
    stage_key,
    write_manifest,
)
from pipeline.shards import write_shards
from pipeline.split import split_by_person
from pipeline.store import Store, open_store

log = logging.getLogger(__name__)

STAGE = "prepare"
INDEX_KEY = "index.parquet"
BAD_INPUTS_KEY = "bad_inputs.csv"
TRAIN_CSV_COLUMNS = ("id", "gender", "age", "path")
INDEX_COLUMNS = [
    "image_id",
    "person_id",
    "path",
    "split",
    "mask",
    "gender",
    "age",
    "age_group",
    "label",
    "order",
    "shard",
]


class BadInputs:
    """Collects (path, reason) for every input that cannot be used."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        log.warning("bad input %s: %s", path, reason)
        self.rows.append((path, reason))

    def to_csv(self) -> bytes:
        return pd.DataFrame(self.rows, columns=["path", "reason"]).to_csv(index=False).encode()


def read_csv(data: Store, key: str, required: Iterable[str]) -> pd.DataFrame:
    """Read a CSV of the layout (BOM and CRLF tolerated); DataError naming file and columns."""
    try:
        raw = data.read_bytes(key)
    except StoreKeyNotFound as e:
        raise DataError(
            f"{data.uri_of(key)} not found: data.root must hold the competition layout "
            f"({TRAIN_CSV}, {TRAIN_IMAGES}, {EVAL_CSV}, {EVAL_IMAGES}; see README 'Data layout')"
        ) from e
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{data.uri_of(key)} is not a readable CSV: {e}") from e
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{data.uri_of(key)} lacks column(s) {missing}; found {list(df.columns)}, "
            f"need {list(required)}"
        )
    return df


def scan_train(data: Store, thresholds: AgeThresholds, bad: BadInputs) -> tuple[pd.DataFrame, int]:
    """List the training photos, labelled from folder and file names; unusable ones go to `bad`.

    Returns the photos and how many files under train/images/ were candidates (junk excluded).
    """
    people = read_csv(data, TRAIN_CSV, TRAIN_CSV_COLUMNS)
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    folders: set[str] = set()
    candidates = 0
    for key in data.list(TRAIN_IMAGES):
        parts = PurePosixPath(key).parts
        reason = junk_reason(parts[-1])
        if reason:
            bad.add(key, reason)
            continue
        candidates += 1
        if len(parts) != 4:
            bad.add(key, "not inside a person folder train/images/<id>_<gender>_<race>_<age>/")
            continue
        folder, filename = parts[2], parts[3]
        folders.add(folder)
        try:
            person = parse_folder_name(folder)
            mask = parse_photo_name(filename)
        except DataError as e:
            bad.add(key, str(e))
            continue
        image_id = f"{folder}/{PurePosixPath(filename).stem.lower()}"
        if image_id in seen_ids:
            bad.add(key, f"second file for photo {image_id} (another extension); the first is used")
            continue
        seen_ids.add(image_id)
        rows.append(
            dict(
                image_id=image_id,
                person_id=person.person_id,
                path=key,
                mask=mask,
                gender=person.gender,
                age=person.age,
            )
        )
    for folder in people["path"]:
        if folder not in folders:
            bad.add(f"{TRAIN_IMAGES}{folder}", f"listed in {TRAIN_CSV} but there is no such folder")
    df = pd.DataFrame(rows, columns=["image_id", "person_id", "path", "mask", "gender", "age"])
    df["age_group"] = thresholds.groups(df["age"].to_numpy())
    df["label"] = encode_array(df["mask"], df["gender"], df["age_group"])
    return df, candidates


def scan_eval(data: Store, bad: BadInputs) -> tuple[pd.DataFrame, int]:
    """List the eval images in `eval/info.csv` order; labels from `eval/ground_truth.csv` if any.

    Returns the usable rows and the number of rows info.csv lists.
    """
    info = read_csv(data, EVAL_CSV, ["ImageID"])
    present = {PurePosixPath(k).name: k for k in data.list(EVAL_IMAGES)}
    truth: dict[str, int] = {}
    if data.exists(EVAL_TRUTH):
        gt = read_csv(data, EVAL_TRUTH, ["ImageID", "ans"])
        answers = pd.to_numeric(gt["ans"], errors="coerce")
        if answers.isna().any() or not answers.between(0, NUM_CLASSES - 1).all():
            raise DataError(f"{data.uri_of(EVAL_TRUTH)}: ans must be a class 0..{NUM_CLASSES - 1}")
        truth = dict(zip(gt["ImageID"], answers.astype(int), strict=True))
    rows: list[dict[str, Any]] = []
    listed = set()
    for order, image_id in enumerate(info["ImageID"]):
        listed.add(image_id)
        key = present.get(image_id)
        if key is None:
            bad.add(f"{EVAL_IMAGES}{image_id}", f"listed in {EVAL_CSV} but missing")
            continue
        try:
            check_image_extension(image_id)
        except DataError as e:
            bad.add(key, str(e))
            continue
        label = truth.get(image_id, -1)
        mask, gender, age_group = decode(label) if label >= 0 else (-1, -1, -1)
        rows.append(
            dict(
                image_id=image_id,
                person_id="",
                path=key,
                mask=mask,
                gender=gender,
                age=-1,
                age_group=age_group,
                label=label,
                order=order,
            )
        )
    for name, key in sorted(present.items()):
        if name not in listed:
            reason = junk_reason(name) or f"not listed in {EVAL_CSV}"
            bad.add(key, reason)
    columns = [c for c in INDEX_COLUMNS if c not in ("split", "shard")]
    return pd.DataFrame(rows, columns=columns), len(info)


def checked_images(
    data: Store, paths: list[str], bad: BadInputs, threads: int
) -> Iterator[tuple[str, bytes]]:
    """Read images in parallel and fully decode each; yield (path, bytes) of the usable ones.

    At most a few images per thread are in flight, so memory stays bounded.
    """
    window: deque[tuple[str, bytes, Future[tuple[int, int]]]] = deque()

    def drain_one() -> Iterator[tuple[str, bytes]]:
        path, blob, future = window.popleft()
        try:
            future.result()
        except DataError as e:
            bad.add(path, str(e).removeprefix(f"{path}: "))
            return
        yield path, blob

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, blob in data.read_many(paths):
            window.append((path, blob, pool.submit(check_image, blob, path)))
            if len(window) >= 4 * threads:
                yield from drain_one()
        while window:
            yield from drain_one()


def assign_splits(train: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """'train' or 'val' per training row, by person, stratified by gender × age group."""
    strata = train["gender"].to_numpy() * 3 + train["age_group"].to_numpy()
    is_val = split_by_person(train["person_id"].to_numpy(), strata, val_fraction, seed)
    return pd.Series(np.where(is_val, "val", "train"), index=train.index)


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Run the prepare stage for `cfg.run_id` (a new run when null; `cfg.run_id` is then set).

    Returns the stage summary (images per split, bad inputs). Raises DataError for unusable data
    and StageFailed when more than `data.max_bad_fraction` of the training photos are unusable.
    """
    started = time.time()
    if not cfg.get("run_id"):
        cfg.run_id = new_run_id()
    run = run_store(cfg)
    if stage_done(run, STAGE):
        log.info("prepare already done for run %s: nothing to do", cfg.run_id)
        return read_json(run, stage_key(STAGE))
    write_manifest(cfg)
    data = open_store(str(cfg.data.root), workers=int(cfg.store.workers))
    thresholds = AgeThresholds(**cfg.data.age_thresholds)
    bad = BadInputs()

    train, train_files = scan_train(data, thresholds, bad)
    if train.empty:
        raise DataError(f"no usable training photos under {data.uri_of(TRAIN_IMAGES)}")
    train["split"] = assign_splits(train, float(cfg.data.val_fraction), int(cfg.seed))
    train["order"] = -1
    evals, eval_listed = scan_eval(data, bad)
    evals["split"] = "eval"
    candidates = pd.concat([train, evals], ignore_index=True)

    threads = cpu_threads(cfg)
    by_path = candidates.set_index("path")
    shard_of: dict[str, str] = {}
    for split in ("train", "val", "eval"):
        paths = candidates.loc[candidates["split"] == split, "path"].tolist()
        usable = checked_images(data, paths, bad, threads)
        items = ((by_path.at[p, "image_id"], blob) for p, blob in usable)
        for image_id, key in write_shards(run, split, items, int(cfg.data.shard_mb) << 20):
            shard_of[image_id] = key
    index = candidates[candidates["image_id"].isin(shard_of)].copy()
    index["shard"] = index["image_id"].map(shard_of)
    index = index[INDEX_COLUMNS].reset_index(drop=True)

    check_bad_share(train_files, index, bad, float(cfg.data.max_bad_fraction))
    run.write_bytes(BAD_INPUTS_KEY, bad.to_csv())
    sink = io.BytesIO()
    index.to_parquet(sink, index=False)
    run.write_bytes(INDEX_KEY, sink.getvalue())
    counts = {s: int((index["split"] == s).sum()) for s in ("train", "val", "eval")}
    summary = {
        "images": counts,
        "bad_inputs": len(bad.rows),
        "eval_listed": eval_listed,
        "data_root": data.uri,
    }
    mark_stage_done(run, STAGE, summary, started)
    log.info("prepare done for run %s: %s, %d bad inputs", cfg.run_id, counts, len(bad.rows))
    return summary


def check_bad_share(wanted: int, index: pd.DataFrame, bad: BadInputs, max_fraction: float) -> None:
    """Raise StageFailed, with a summary of reasons, when too many training photos are unusable.

    `wanted` counts the candidate files under train/images/ (sidecars and OS junk excluded).
    """
    used = int(index["split"].isin(["train", "val"]).sum())
    if used == 0 or (wanted - used) / wanted > max_fraction:
        reasons = Counter(reason[:70] for _, reason in bad.rows).most_common(5)
        raise StageFailed(
            f"{wanted - used} of {wanted} training photos are unusable "
            f"(more than data.max_bad_fraction={max_fraction}); most common reasons: {reasons}"
        )


def read_index(run: Store) -> pd.DataFrame:
    """The run's index; StageFailed when prepare has not completed for this run."""
    try:
        return pd.read_parquet(io.BytesIO(run.read_bytes(INDEX_KEY)))
    except StoreKeyNotFound as e:
        raise StageFailed(f"{run.uri_of(INDEX_KEY)} is missing: run the prepare stage first") from e
