"""The one Parquet schema of every answer the suite writes (docs/results.md).

A run's models' predictions, its candidates' answers and the vote, and what `pipeline.stages.infer`
classifies, all share `SCHEMA`, so any set of these files reads as one dataset
(`pyarrow.dataset.dataset(<run>/predictions/)`, `pandas.read_parquet`, DuckDB's `read_parquet`).
One row is one image answered by one model, candidate or vote:

    run_id     string   the run whose models answered
    split      string   val | eval | holdout (the run's own splits) | new (pipeline.stages.infer)
    image_id   string   the image (eval: the competition's ImageID; new: its key under the input)
    kind       string   model | candidate | vote
    name       string   the model's or candidate's name; "vote" for the vote
    task       string   what `probs` is over: all (18 classes) | mask (3) | gender (2) | age (3)
    class      int16    the 18-class answer; null for a model of one task
    mask       int16    0 wear, 1 incorrect, 2 not worn; null when the answer has no mask part
    gender     int16    0 male, 1 female; null likewise
    age_group  int16    0 < 30, 1 30-59, 2 >= 60; null likewise
    probs      list<float32>  probabilities over `task`'s classes in class-number order
                              (class = mask * 6 + gender * 3 + age_group for `all`)
    label      int16    the true 18-class label; null where unknown (eval without answers, new)

Why `probs` is a variable-length list and not a fixed-size one: models of different tasks have
18, 3 or 2 probabilities, and fixed-size lists of different sizes cannot be one dataset (pyarrow
refuses to unify them); padding to 18 would invent probabilities for classes a model never
predicts. `task` says what the list holds. For the vote, `probs` is the mean of its members'
18-class distributions (soft vote) or the share of members that voted for each class (hard vote);
`class` is always the answer given, so a hard vote's tie rule shows in `class`, not in `probs`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.store import Store

SCHEMA_ID = "masksuite.answers/1"
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("split", pa.string()),
        ("image_id", pa.string()),
        ("kind", pa.string()),
        ("name", pa.string()),
        ("task", pa.string()),
        ("class", pa.int16()),
        ("mask", pa.int16()),
        ("gender", pa.int16()),
        ("age_group", pa.int16()),
        ("probs", pa.list_(pa.float32())),
        ("label", pa.int16()),
    ],
    metadata={"schema": SCHEMA_ID},
)
KINDS = ("model", "candidate", "vote")
#: Classes of each task's probabilities.
TASK_CLASSES = {"all": 18, "mask": 3, "gender": 2, "age": 3}


def _nullable(values: np.ndarray, present: np.ndarray | bool) -> pa.Array:
    """int16 array, null where not `present`."""
    values = np.asarray(values, dtype=np.int16)
    mask = ~np.broadcast_to(np.asarray(present, dtype=bool), values.shape)
    return pa.array(values, type=pa.int16(), mask=mask)


def answers_table(
    *,
    run_id: str,
    split: str,
    image_ids: Sequence[str],
    kind: str,
    name: str,
    task: str,
    probs: np.ndarray,
    answers: np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
) -> pa.Table:
    """Rows of `SCHEMA` for one model, candidate or vote on one split.

    `probs` is images × TASK_CLASSES[task]; `answers` the answer per image (default: the argmax of
    `probs`), within the task's classes; `labels` the true 18-class labels, negative = unknown.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    if task not in TASK_CLASSES:
        raise ValueError(f"task {task!r} is not one of {sorted(TASK_CLASSES)}")
    n = len(image_ids)
    width = TASK_CLASSES[task]
    probs = np.asarray(probs, dtype=np.float32).reshape(n, width)
    answer = probs.argmax(axis=1) if answers is None else np.asarray(answers)
    if answer.shape != (n,):
        raise ValueError(f"{n} images but answers of shape {answer.shape}")
    zeros = np.zeros(n, dtype=np.int16)
    parts = {"class": zeros, "mask": zeros, "gender": zeros, "age_group": zeros}
    if task == "all":
        parts = {
            "class": answer,
            "mask": answer // 6,
            "gender": (answer // 3) % 2,
            "age_group": answer % 3,
        }
        present = dict.fromkeys(parts, True)
    else:
        column = {"mask": "mask", "gender": "gender", "age": "age_group"}[task]
        parts[column] = answer
        present = {c: c == column for c in parts}
    label = np.full(n, -1) if labels is None else np.asarray(labels, dtype=np.int64)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width)
    columns = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "split": pa.array([split] * n, pa.string()),
        "image_id": pa.array(list(image_ids), pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "name": pa.array([name] * n, pa.string()),
        "task": pa.array([task] * n, pa.string()),
        **{c: _nullable(parts[c], present[c]) for c in parts},
        "probs": pa.ListArray.from_arrays(offsets, pa.array(probs.ravel(), pa.float32())),
        "label": _nullable(label, label >= 0),
    }
    return pa.table(columns, schema=SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    """`table` as Parquet bytes, checked against SCHEMA."""
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"not the answers schema: {table.schema}")
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_answers(store: Store, key: str, table: pa.Table) -> None:
    """Write one answers file (atomically: Store.write_bytes)."""
    store.write_bytes(key, parquet_bytes(table))


def read_answers(store: Store, key: str) -> pa.Table:
    """Read one answers file."""
    return pq.read_table(io.BytesIO(store.read_bytes(key)), schema=SCHEMA)
