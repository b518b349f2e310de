"""The prepare stage: scan `data.root`, label, validate, split by person (the store's fixed
holdout, then val and train), pack shards, index.

Writes into the run (keys: pipeline/storage/run_layout.py): the index (one row per usable image),
bad_inputs.csv (path,reason for everything that cannot be used) and the image shards.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any, cast

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.core.errors import DataError, StageFailed, StoreKeyNotFound
from pipeline.domain.dataset import (
    EVAL_CSV,
    EVAL_IMAGES,
    EVAL_TRUTH,
    MAX_AGE,
    MIN_AGE,
    TRAIN_CSV,
    TRAIN_IMAGES,
    check_image_extension,
    junk_reason,
    parse_folder_name,
    parse_photo_name,
)
from pipeline.domain.labels import (
    GENDER_CODE,
    MASK_NAMES,
    NUM_CLASSES,
    AgeThresholds,
    decode,
    encode_array,
)
from pipeline.domain.split import holdout_by_person, split_by_person
from pipeline.ml.device import cpu_threads
from pipeline.ml.images import BadInputs, checked_images, image_limits, unsafe_key_reason
from pipeline.run.context import give_new_run
from pipeline.run.fingerprint import data_fingerprint
from pipeline.run.holdout import HoldoutRule, rule_id, store_salt
from pipeline.run.state import root_store, run_store, write_manifest
from pipeline.storage.run_layout import BAD_INPUTS_KEY, FINGERPRINT_KEY, INDEX_KEY
from pipeline.storage.shards import write_shards
from pipeline.storage.store import Store, open_store, read_uri

log = logging.getLogger(__name__)

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
    "source",
    "shard",
]


def read_csv(data: Store, key: str, required: Iterable[str]) -> pd.DataFrame:
    """Read a CSV of the layout (BOM and CRLF tolerated); DataError naming file and columns."""
    try:
        raw = data.read_bytes(key)
    except StoreKeyNotFound as e:
        raise DataError(
            f"{data.uri_of(key)} not found: data.root must hold the competition layout "
            f"({TRAIN_CSV}, {TRAIN_IMAGES}, {EVAL_CSV}, {EVAL_IMAGES}; see docs/data.md)"
        ) from e
    return parse_csv(raw, data.uri_of(key), required)


def parse_csv(raw: bytes, where: str, required: Iterable[str]) -> pd.DataFrame:
    """Parse CSV bytes as strings (BOM and CRLF tolerated); DataError naming `where`."""
    try:
        df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{where} is not a readable CSV: {e}") from e
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{where} lacks column(s) {missing}; found {list(df.columns)}, need {list(required)}"
        )
    return df


LABEL_FIX_FIELDS = ("gender", "age", "mask")


def parse_fix_value(field: str, value: str, where: str) -> int:
    """A label-fix cell as a code (gender 0/1, age in years, mask 0..2); DataError when invalid."""
    v = value.strip().lower()
    table = {"gender": GENDER_CODE, "mask": {name: i for i, name in enumerate(MASK_NAMES)}}
    if field in table:
        if v in table[field]:
            return table[field][v]
        if v.isdigit() and int(v) in table[field].values():
            return int(v)
        raise DataError(f"{where}: {field} {value!r} is not one of {list(table[field])}")
    if v.isdigit() and MIN_AGE <= int(v) <= MAX_AGE:
        return int(v)
    raise DataError(f"{where}: age {value!r} is not a whole number in {MIN_AGE}..{MAX_AGE}")


def relabel(df: pd.DataFrame, thresholds: AgeThresholds, rows: pd.Series | None = None) -> None:
    """Recompute `age_group` and the 18-class `label` of `rows` (default: all) from their mask,
    gender and age, in place: the one place where labels are derived."""
    if rows is None:
        df["age_group"] = thresholds.groups(df["age"].to_numpy())
        df["label"] = encode_array(df["mask"], df["gender"], df["age_group"])
        return
    df.loc[rows, "age_group"] = thresholds.groups(df.loc[rows, "age"].to_numpy())
    df.loc[rows, "label"] = encode_array(
        df.loc[rows, "mask"], df.loc[rows, "gender"], df.loc[rows, "age_group"]
    )


def apply_label_fix(
    train: pd.DataFrame, raw: bytes, uri: str, thresholds: AgeThresholds, bad: BadInputs
) -> int:
    """Correct gender / age / mask of training rows from a label-fix CSV, in place.

    The CSV has a `person_id` (or `id`) or an `image_id` column (`<folder>/<photo stem>`) and any
    of gender, age, mask; empty cells leave a label alone. Rows naming unknown ids go to
    bad_inputs.csv. Mask is per photo: a file that sets it by person_id is refused. Returns how
    many images had a label changed (a row restating a label changes nothing).
    """
    fix = parse_csv(raw, uri, [])
    if "id" in fix.columns and "person_id" not in fix.columns:
        fix = fix.rename(columns={"id": "person_id"})
    keys = [c for c in ("person_id", "image_id") if c in fix.columns]
    fields = [c for c in LABEL_FIX_FIELDS if c in fix.columns]
    if len(keys) != 1 or not fields:
        raise DataError(
            f"{uri} needs one id column (person_id or image_id) and at least one of "
            f"{list(LABEL_FIX_FIELDS)}; found {list(fix.columns)}"
        )
    key = keys[0]
    if key == "person_id" and "mask" in fields and fix["mask"].astype(str).str.strip().ne("").any():
        raise DataError(
            f"{uri} sets mask by person_id, which would give all of a person's photos the same "
            "mask state; mask is per photo: fix it by image_id (<folder>/<photo stem>) in a file "
            "of its own"
        )
    changed = pd.Series(False, index=train.index)
    for number, row in enumerate(fix.itertuples(index=False), start=2):
        where = f"{uri} line {number}"
        target = train[key] == getattr(row, key)
        if not target.any():
            bad.add(where, f"label fix names unknown {key} {getattr(row, key)!r}")
            continue
        for field in fields:
            cell = str(getattr(row, field))
            if cell.strip():
                value = parse_fix_value(field, cell, where)
                changed |= target & (train[field] != value)
                train.loc[target, field] = value
    relabel(train, thresholds)
    return int(changed.sum())


def scan_train(data: Store, thresholds: AgeThresholds, bad: BadInputs) -> tuple[pd.DataFrame, int]:
    """List the training photos, labelled from folder and file names; unusable ones go to `bad`.

    Returns the photos and how many files under train/images/ were candidates (junk excluded).
    """
    people = read_csv(data, TRAIN_CSV, TRAIN_CSV_COLUMNS)
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    folders: set[str] = set()
    candidates = 0
    for key, why in data.refused(TRAIN_IMAGES).items():  # links, FIFOs, …: never read
        if not junk_reason(PurePosixPath(key).name):
            candidates += 1
        bad.add(key, why)
    for key, size in data.sizes(TRAIN_IMAGES).items():
        parts = PurePosixPath(key).parts
        reason = junk_reason(parts[-1]) or unsafe_key_reason(key)
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
                size=size,
            )
        )
    for folder in people["path"]:
        if folder not in folders:
            bad.add(f"{TRAIN_IMAGES}{folder}", f"listed in {TRAIN_CSV} but there is no such folder")
    columns = ["image_id", "person_id", "path", "mask", "gender", "age", "size"]
    df = pd.DataFrame(rows, columns=columns)
    relabel(df, thresholds)
    return df, candidates


def scan_eval(data: Store, bad: BadInputs) -> tuple[pd.DataFrame, int]:
    """List the eval images in `eval/info.csv` order; labels from `eval/ground_truth.csv` if any.

    Returns the usable rows and the number of rows info.csv lists.
    """
    info = read_csv(data, EVAL_CSV, ["ImageID"])
    sizes = data.sizes(EVAL_IMAGES)
    present = {PurePosixPath(k).name: k for k in sizes}
    refused = data.refused(EVAL_IMAGES)
    for path, why in refused.items():  # links, FIFOs, names not in UTF-8, …: never read
        bad.add(path, why)
    refused_names = {PurePosixPath(k).name for k in refused}
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
            if image_id not in refused_names:  # else reported above, with why
                bad.add(f"{EVAL_IMAGES}{image_id}", f"listed in {EVAL_CSV} but missing")
            continue
        reason = unsafe_key_reason(key)
        if reason:
            bad.add(key, reason)
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
                size=sizes[key],
            )
        )
    for name, key in sorted(present.items()):
        if name not in listed:
            reason = junk_reason(name) or f"not listed in {EVAL_CSV}"
            bad.add(key, reason)
    columns = [c for c in INDEX_COLUMNS if c not in ("split", "source", "shard")] + ["size"]
    return pd.DataFrame(rows, columns=columns), len(info)


def assign_splits(
    train: pd.DataFrame, val_fraction: float, seed: int, salt: str = "", holdout_fraction: float = 0
) -> pd.Series:
    """'holdout', 'train' or 'val' per training row, by person: the holdout by the store's stable
    rule (`holdout_by_person`), then val among the others, stratified by gender × age group."""
    held = holdout_by_person(train["person_id"].to_numpy(), salt, holdout_fraction)
    rest = train[~held]
    strata = rest["gender"].to_numpy() * 3 + rest["age_group"].to_numpy()
    is_val = split_by_person(rest["person_id"].to_numpy(), strata, val_fraction, seed)
    sides = pd.Series("holdout", index=train.index)
    sides[~held] = np.where(is_val, "val", "train")
    return sides


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Run the prepare stage for `cfg.run_id` (a new run when null; `cfg.run_id` is then set).

    Returns the stage summary (images per split, bad inputs). Raises DataError for unusable data
    and StageFailed when more than `data.max_bad_fraction` of the training photos are unusable.
    """
    give_new_run(cfg)
    run = run_store(cfg)
    if not run.exists(FINGERPRINT_KEY):
        # A run made stage by stage (python -m jobs.prepare, ...) is fingerprinted like a launched
        # one, so the next identical launch says "skipped" instead of training again.
        run.write_json(FINGERPRINT_KEY, data_fingerprint(cfg))
    write_manifest(cfg)
    workers = int(cfg.store.workers)
    sources = [open_store(str(cfg.data.root), workers=workers, key="data.root")]
    sources += [
        open_store(str(u), workers=workers, key=f"data.extra_roots[{i}]")
        for i, u in enumerate(cfg.data.extra_roots)
    ]
    # Val and eval are scored on the competition's age groups (< 30, 30-59, >= 60) whatever
    # data.age_thresholds says: the thresholds shift the training targets only (below), so that
    # every choice made on val scores measures the competition's task.
    competition = AgeThresholds()
    thresholds = AgeThresholds(**cfg.data.age_thresholds)
    bad = BadInputs()

    train, train_files = scan_train(sources[0], competition, bad)
    if train.empty:
        raise DataError(f"no usable training photos under {sources[0].uri_of(TRAIN_IMAGES)}")
    train["source"] = 0
    for number, extra in enumerate(sources[1:], start=1):
        rows, files = scan_train(extra, competition, bad.scoped(f"{extra.uri}/"))
        for column in ("image_id", "person_id"):
            rows[column] = f"extra{number}/" + rows[column]
        rows["source"] = number
        train, train_files = pd.concat([train, rows], ignore_index=True), train_files + files
    fixed = 0
    if cfg.data.get("label_fix"):
        fix_uri = str(cfg.data.label_fix)
        try:
            raw = read_uri(fix_uri, workers=workers, key="data.label_fix")
        except StoreKeyNotFound as e:
            raise DataError(f"data.label_fix file {fix_uri} not found") from e
        fixed = apply_label_fix(train, raw, fix_uri, competition, bad)
    # Only data.root's people are split; extra sources train only.
    main = train["source"] == 0
    holdout_fraction = float(cfg.data.get("holdout_fraction") or 0.0)
    salt = store_salt(root_store(cfg)) if holdout_fraction > 0 else ""
    train["split"] = "train"
    train.loc[main, "split"] = assign_splits(
        train[main], float(cfg.data.val_fraction), int(cfg.seed), salt, holdout_fraction
    )
    # training targets only; val and holdout keep the competition's
    relabel(train, thresholds, rows=train["split"] == "train")
    train["order"] = -1
    evals, eval_listed = scan_eval(sources[0], bad)
    evals["split"], evals["source"] = "eval", 0
    candidates = pd.concat([train, evals], ignore_index=True)

    threads = cpu_threads(cfg)
    limits = image_limits(cfg)
    shard_of: dict[str, str] = {}
    for group, rows in candidates.groupby(["split", "source"], sort=False):
        # pandas-stubs type a group's key as Hashable: here the values of those two columns
        split, source = cast(tuple[str, int], group)
        image_of = dict(zip(rows["path"], rows["image_id"], strict=True))
        store = sources[source]
        scope = bad if source == 0 else bad.scoped(f"{store.uri}/")
        sizes = dict(zip(rows["path"], rows["size"].astype(int), strict=True))
        usable = checked_images(store, list(image_of), scope, threads, limits, sizes)
        items = ((image_of[p], blob) for p, blob in usable)
        tag = split if source == 0 else f"{split}-extra{source}"
        for image_id, key in write_shards(run, tag, items, int(cfg.data.shard_mb) << 20):
            shard_of[image_id] = key
    index = candidates[candidates["image_id"].isin(shard_of)].copy()
    index["shard"] = index["image_id"].map(shard_of)
    index = index[INDEX_COLUMNS].reset_index(drop=True)

    check_bad_share(train_files, index, bad, float(cfg.data.max_bad_fraction))
    run.write_bytes(BAD_INPUTS_KEY, bad.to_csv())
    check_eval_complete(run, index, eval_listed, bad, bool(cfg.data.get("allow_missing_eval")))
    sink = io.BytesIO()
    index.to_parquet(sink, index=False)
    run.write_bytes(INDEX_KEY, sink.getvalue())
    counts = {s: int((index["split"] == s).sum()) for s in ("train", "val", "holdout", "eval")}
    held = index[index["split"] == "holdout"]
    holdout: HoldoutRule = {
        "rule_id": rule_id(salt) if holdout_fraction > 0 else "",
        "fraction": holdout_fraction,
        "people": int(held["person_id"].nunique()),
        "photos": len(held),
    }
    summary = {
        "images": counts,
        "holdout": holdout,
        "bad_inputs": len(bad.rows),
        "eval_listed": eval_listed,
        "label_fixes": fixed,
        "data_root": sources[0].uri,
        "extra_roots": [x.uri for x in sources[1:]],
    }
    log.info("prepare done for run %s: %s, %d bad inputs", cfg.run_id, counts, len(bad.rows))
    return summary


def check_eval_complete(
    run: Store, index: pd.DataFrame, listed: int, bad: BadInputs, allowed: bool
) -> None:
    """Stop the run here when some eval images of info.csv cannot be used: no submission could be
    made, so no model should train for hours first (unless `data.allow_missing_eval`)."""
    usable = int((index["split"] == "eval").sum())
    if usable == listed:
        return
    missing = [
        p
        for p, why in bad.rows
        if p.startswith(EVAL_IMAGES) and f"not listed in {EVAL_CSV}" not in why
    ]
    shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
    message = (
        f"{listed - usable} of the {listed} eval images listed in {EVAL_CSV} are missing or "
        f"unreadable ({shown}; all reasons in {run.uri_of(BAD_INPUTS_KEY)}): this run could not "
        "make a submission"
    )
    if not allowed:
        raise DataError(
            f"{message}. Add the images or remove their rows from {EVAL_CSV}, or set "
            "data.allow_missing_eval=true to train anyway"
        )
    log.warning("%s; training anyway (data.allow_missing_eval=true)", message)


def check_bad_share(wanted: int, index: pd.DataFrame, bad: BadInputs, max_fraction: float) -> None:
    """Raise StageFailed, with a summary of reasons, when too many training photos are unusable.

    `wanted` counts the candidate files under train/images/ (sidecars and OS junk excluded).
    """
    used = int(index["split"].isin(["train", "val", "holdout"]).sum())
    if used == 0 or (wanted - used) / wanted > max_fraction:
        reasons = Counter(reason[:70] for _, reason in bad.rows).most_common(5)
        raise StageFailed(
            f"{wanted - used} of {wanted} training photos are unusable "
            f"(more than data.max_bad_fraction={max_fraction}); most common reasons: {reasons}"
        )
