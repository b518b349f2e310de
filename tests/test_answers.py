"""The answers schema (pipeline/run/answers.py): every Parquet answer file reads as one dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.run.answers import SCHEMA, answers_table, write_answers
from pipeline.storage.run_layout import answers_key
from pipeline.storage.store import open_store

IDS = ["a.jpg", "b.jpg", "c.jpg"]


def probs_for(width: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((len(IDS), width))
    return p / p.sum(axis=1, keepdims=True)


def table(kind: str, name: str, task: str, **kw) -> pa.Table:
    width = {"all": 18, "mask": 3, "gender": 2, "age": 3}[task]
    return answers_table(run_id="r1", split="val", image_ids=IDS, kind=kind, name=name, task=task,
                         probs=kw.pop("probs", probs_for(width)), **kw)  # fmt: skip


def test_an_18_class_answer_is_split_into_its_parts() -> None:
    probs = np.zeros((3, 18))
    probs[[0, 1, 2], [0, 17, 10]] = 1.0  # 10 = incorrect mask, male, >= 60
    t = table("model", "single", "all", probs=probs, labels=[10, -1, 3]).to_pandas()
    assert t["class"].tolist() == [0, 17, 10]
    assert t["mask"].tolist() == [0, 2, 1] and t["gender"].tolist() == [0, 1, 1]
    assert t["age_group"].tolist() == [0, 2, 1]
    assert t["label"].isna().tolist() == [False, True, False]
    assert t["run_id"].unique().tolist() == ["r1"] and t["split"].unique().tolist() == ["val"]


ONE_TASK = [("mask", "mask"), ("gender", "gender"), ("age", "age_group")]


@pytest.mark.parametrize(("task", "column"), ONE_TASK)
def test_a_one_task_model_fills_only_its_column(task: str, column: str) -> None:
    t = table("model", task, task).to_pandas()
    for other in ("class", "mask", "gender", "age_group"):
        assert t[other].notna().all() == (other == column), other
    assert {len(p) for p in t["probs"]} == {probs_for(3 if task != "gender" else 2).shape[1]}


def test_the_answer_given_wins_over_the_argmax() -> None:
    # a hard vote: shares 0.5 / 0.5 between classes 3 and 5, the tie rule chose 5
    shares = np.zeros((3, 18))
    shares[:, 3] = shares[:, 5] = 0.5
    t = table("vote", "vote", "all", probs=shares, answers=np.array([5, 5, 3])).to_pandas()
    assert t["class"].tolist() == [5, 5, 3]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="kind 'modle' is not one of"):
        table("modle", "x", "all")
    with pytest.raises(ValueError, match="task 'sex' is not one of"):
        answers_table(run_id="r", split="val", image_ids=IDS, kind="model", name="x",
                      task="sex", probs=probs_for(2))  # fmt: skip
    with pytest.raises(ValueError, match="3 images but answers of shape"):
        table("vote", "vote", "all", answers=np.array([1, 2]))


def test_files_of_every_task_read_as_one_dataset(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "run"))
    files = {
        ("model", "single", "all"): table("model", "single", "all"),
        ("model", "mask", "mask"): table("model", "mask", "mask"),
        ("model", "gender", "gender"): table("model", "gender", "gender"),
        ("model", "age", "age"): table("model", "age", "age"),
        ("candidate", "per_task", "all"): table("candidate", "per_task", "all"),
        ("vote", "vote", "all"): table("vote", "vote", "all"),
    }
    for (kind, name, _), t in files.items():
        write_answers(store, answers_key(kind, name, "val"), t)
    assert answers_key("vote", "vote", "eval") == "predictions/vote/eval.parquet"
    assert answers_key("model", "age", "val") == "predictions/models/age/val.parquet"

    whole = ds.dataset(tmp_path / "run" / "predictions", format="parquet").to_table()
    assert whole.schema.remove_metadata().equals(SCHEMA.remove_metadata())
    assert whole.num_rows == len(files) * len(IDS)
    frame = pd.read_parquet(tmp_path / "run" / "predictions")
    assert len(frame) == whole.num_rows
    widths = frame.assign(n=frame["probs"].map(len)).groupby("task")["n"].unique()
    assert {k: list(v) for k, v in widths.items()} == {
        "all": [18], "mask": [3], "gender": [2], "age": [3],
    }  # fmt: skip
    # the form the files had before: fixed-size lists of 18 and 3 do not make one dataset
    for width, name in ((18, "x18"), (3, "x3")):
        fixed = pa.table({"probs": pa.FixedSizeListArray.from_arrays(
            pa.array(np.zeros(3 * width, np.float32)), width)})  # fmt: skip
        (tmp_path / "old").mkdir(exist_ok=True)
        pq.write_table(fixed, tmp_path / "old" / f"{name}.parquet")
    with pytest.raises(pa.ArrowTypeError, match="Size of FixedSizeList is not the same"):
        ds.dataset(tmp_path / "old", format="parquet").to_table()
