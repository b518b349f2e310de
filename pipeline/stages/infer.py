"""The infer stage: classify new, unlabelled photos with the voted members of a finished run
(`python -m pipeline.infer`; what it writes and when: pipeline/commands/infer.py).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig

from pipeline.core.csv_cells import csv_bytes
from pipeline.core.errors import ConfigError, DataError
from pipeline.domain.dataset import check_image_extension, junk_reason
from pipeline.domain.labels import AGE_NAMES, GENDER_NAMES, MASK_NAMES
from pipeline.ml.device import cpu_threads
from pipeline.ml.images import (
    BadInputs,
    ImageLimits,
    checked_images,
    image_limits,
    unsafe_key_reason,
)
from pipeline.ml.predictor import predictor_answers, run_predictor
from pipeline.run.answers import answers_table, parquet_bytes
from pipeline.run.history import read_latest
from pipeline.run.state import stage_done
from pipeline.storage.run_layout import RUNS, VOTE_STAGE, stage_key
from pipeline.storage.shards import write_shards
from pipeline.storage.store import Store, join_key, open_store

log = logging.getLogger(__name__)

SEEN_KEY = "seen.parquet"
SEEN_COLUMNS = ["content_sha256", "run_id", "image_id", "batch"]
CSV_COLUMNS = ["image", "class", "mask", "gender", "age_group"]
#: Log a progress line every this many photos read.
PROGRESS_EVERY = 500


def output_uri(cfg: DictConfig) -> str:
    """`infer.output`, or `<store.root>/infer/<last part of infer.input>`."""
    if cfg.infer.get("output"):
        return str(cfg.infer.output)
    name = PurePosixPath(str(cfg.infer.input).rstrip("/")).name or "input"
    return f"{str(cfg.store.root).rstrip('/')}/infer/{name}"


def resolve_run(cfg: DictConfig) -> tuple[str, Store]:
    """The run to classify with (run_id, or latest.json's) and its store; ConfigError when there
    is none or its vote has not finished."""
    root = open_store(str(cfg.store.root), workers=int(cfg.store.workers), key="store.root")
    run_id = cfg.get("run_id")
    if not run_id:
        latest = read_latest(root)
        if latest is None:
            raise ConfigError(
                f"no finished run under store.root={root.uri}: {root.uri_of('latest.json')} is "
                "missing. Train one first (python -m pipeline.launch) or pass run_id=…"
            )
        run_id = str(latest["run_id"])
    run = root.child(join_key(RUNS, str(run_id)))
    if not stage_done(run, VOTE_STAGE):
        raise ConfigError(
            f"run {run_id} under store.root={root.uri} has no finished vote "
            f"({run.uri_of(stage_key(VOTE_STAGE))} is missing): classify with a run that "
            "succeeded (python -m pipeline.runs list shows them)"
        )
    return str(run_id), run


def read_seen(out: Store) -> pd.DataFrame:
    if not out.exists(SEEN_KEY):
        return pd.DataFrame({c: pd.Series(dtype="string") for c in SEEN_COLUMNS})
    return pd.read_parquet(io.BytesIO(out.read_bytes(SEEN_KEY)))


def list_photos(src: Store, bad: BadInputs) -> dict[str, int]:
    """The candidate photos under the input (key → size in bytes); others reported (junk files
    are skipped silently, as prepare does for the eval folder; links, FIFOs, devices and names
    not in UTF-8 are never read)."""
    for key, why in src.refused("").items():
        if not junk_reason(PurePosixPath(key).name):
            bad.add(key, why)
    photos = {}
    for key, size in src.sizes("").items():
        name = PurePosixPath(key).name
        if junk_reason(name):
            continue
        reason = unsafe_key_reason(key)
        if reason is None:
            try:
                check_image_extension(name)
            except DataError as e:
                reason = str(e)
        if reason:
            bad.add(key, reason)
        else:
            photos[key] = size
    return photos


def new_photos(
    src: Store,
    photos: dict[str, int],
    bad: BadInputs,
    seen: set[str],
    threads: int,
    counts: dict[str, int],
    limits: ImageLimits,
) -> Iterator[tuple[str, bytes]]:
    """The usable photos (key → listed size) not classified before by this run, with a progress
    line now and then; prepare's rules decide what is usable (`checked_images`, `limits`)."""
    keys = list(photos)
    usable = checked_images(src, keys, bad, threads, limits, photos)
    for done, (key, blob) in enumerate(usable, start=1):
        digest = hashlib.sha256(blob).hexdigest()
        if done % PROGRESS_EVERY == 0:
            log.info("infer: read %d of %d photos", done, len(keys))
        if digest in seen:
            counts["already_seen"] += 1
            continue
        counts["hashes"][key] = digest  # type: ignore[index]
        yield key, blob


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Classify the photos under `cfg.infer.input`; returns a summary (see module doc)."""
    if not cfg.infer.get("input"):
        raise ConfigError("infer.input is not set: give a folder or s3://bucket/prefix of photos")
    started = time.time()
    run_id, run = resolve_run(cfg)
    predictor = run_predictor(run_id, run)
    run_cfg, members, method = predictor.config, predictor.members, predictor.method
    workers = int(cfg.store.workers)
    src = open_store(str(cfg.infer.input), workers=workers, key="infer.input")
    out = open_store(output_uri(cfg), workers=workers, key="infer.output")
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{run_id}"
    bad = BadInputs()
    keys = list_photos(src, bad)
    if not keys and not bad.rows:
        raise DataError(f"no photos under infer.input={src.uri} (looked for .jpg, .jpeg, .png)")
    seen_rows = read_seen(out)
    seen = set(seen_rows.loc[seen_rows["run_id"] == run_id, "content_sha256"])
    counts: dict[str, Any] = {"already_seen": 0, "hashes": {}}
    threads = cpu_threads(cfg)
    log.info("infer: %d photos under %s, run %s (members %s, %s vote)", len(keys), src.uri,
             run_id, ", ".join(members), method)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="masksuite-infer-") as tmp:
        packed = open_store(tmp)
        items = new_photos(src, keys, bad, seen, threads, counts, image_limits(cfg))
        shard_of = dict(write_shards(packed, "new", items, int(run_cfg.data.shard_mb) << 20))
        ids = list(shard_of)
        summary = {
            "run_id": run_id,
            "input": src.uri,
            "output": out.uri,
            "photos": len(keys),
            "classified": len(ids),
            "already_seen": counts["already_seen"],
            "bad_inputs": len(bad.rows),
            "batch": batch if ids or bad.rows else None,
        }
        if not ids:
            if bad.rows:
                out.write_bytes(join_key("bad_inputs", f"{batch}.csv"), bad.to_csv())
            log.info("infer: nothing new to classify under %s (%d already classified by run %s, "
                     "%d bad)", src.uri, counts["already_seen"], run_id, len(bad.rows))  # fmt: skip
            return summary
        probs, answers, dists = predictor_answers(cfg, predictor, packed, ids, shard_of)
    common: dict[str, Any] = {"run_id": run_id, "split": "new", "image_ids": ids, "task": "all"}
    tables = [answers_table(**common, kind="vote", name="vote", probs=probs, answers=answers)]
    tables += [answers_table(**common, kind="candidate", name=m, probs=dists[m]) for m in members]
    table = pa.concat_tables(tables)
    out.write_bytes(join_key("predictions", f"{batch}.parquet"), parquet_bytes(table))
    csv = pd.DataFrame(
        {
            "image": ids,
            "class": answers,
            "mask": [MASK_NAMES[a // 6] for a in answers],
            "gender": [GENDER_NAMES[(a // 3) % 2] for a in answers],
            "age_group": [AGE_NAMES[a % 3] for a in answers],
        },
        columns=CSV_COLUMNS,
    )
    out.write_bytes(join_key("classes", f"{batch}.csv"), csv_bytes(csv))  # no formula cells
    out.write_bytes(join_key("bad_inputs", f"{batch}.csv"), bad.to_csv())
    hashes = [counts["hashes"][i] for i in ids]
    new_seen = pd.DataFrame(
        {"content_sha256": hashes, "run_id": run_id, "image_id": ids, "batch": batch}
    )
    merged = pd.concat([seen_rows.astype(str), new_seen], ignore_index=True)
    sink = io.BytesIO()
    merged.to_parquet(sink, index=False)
    out.write_bytes(SEEN_KEY, sink.getvalue())  # last: only now are these photos "seen"
    where = out.uri_of(join_key("classes", f"{batch}.csv"))
    log.info("infer: %d photos classified in %.0f s by run %s into %s", len(ids),
             time.time() - started, run_id, where)  # fmt: skip
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"infer: {summary['classified']} photo(s) classified by run {summary['run_id']}, "
        f"{summary['already_seen']} already classified, {summary['bad_inputs']} bad "
        f"(of {summary['photos']} under {summary['input']})",
    ]
    out, batch = summary["output"], summary["batch"]
    if summary["classified"]:
        lines.append(f"  answers:    {out}/classes/{batch}.csv")
        lines.append(f"  Parquet:    {out}/predictions/{batch}.parquet")
    if summary["bad_inputs"]:
        lines.append(f"  bad inputs: {out}/bad_inputs/{batch}.csv")
    return "\n".join(lines)
