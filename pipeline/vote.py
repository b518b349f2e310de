"""The vote stage: hard majority of the top-k candidates into `submission.csv` and `vote.json`.

Candidates are ranked by val macro F1; the ensemble's answer for an image is the class most of the
chosen members predict, a tie going to the class of the best-ranked member among the tied ones.
The submission has exactly the rows and order of `eval/info.csv`, or the stage fails.
After everything is written, `<store.root>/latest.json` is moved to this run.
"""

from __future__ import annotations

import io
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.config import model_specs
from pipeline.errors import ConfigError, StageFailed, StoreKeyNotFound
from pipeline.labels import NUM_CLASSES
from pipeline.metrics import classification_metrics
from pipeline.predict import prediction_key
from pipeline.prepare import BAD_INPUTS_KEY, read_index
from pipeline.prepare import STAGE as PREPARE_STAGE
from pipeline.runs import (
    LATEST_KEY,
    mark_stage_done,
    read_json,
    root_store,
    run_store,
    stage_done,
    stage_key,
    write_json,
)
from pipeline.store import Store

log = logging.getLogger(__name__)

STAGE = "vote"
SUBMISSION_KEY = "submission.csv"
VOTE_KEY = "vote.json"


def hard_vote(ranked_preds: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Majority class per column of `ranked_preds` (members × images, best-ranked member first).

    Ties go to the tied class predicted by the best-ranked member.
    """
    preds = np.asarray(ranked_preds, dtype=np.int64)
    if preds.ndim != 2 or preds.shape[0] == 0:
        raise ValueError(
            f"need a members × images array with at least one member, got {preds.shape}"
        )
    n = preds.shape[1]
    counts = np.zeros((n, num_classes), dtype=np.int64)
    cols = np.arange(n)
    for row in preds:
        np.add.at(counts, (cols, row), 1)
    top = counts.max(axis=1)
    result = np.full(n, -1, dtype=np.int64)
    for row in preds:  # best-ranked first: the first member voting for a top class decides
        open_ = (result < 0) & (counts[cols, row] == top)
        result[open_] = row[open_]
    return result


def read_predictions(run: Store, name: str, split: str) -> pd.DataFrame:
    """A model's predictions for a split; StageFailed naming the model when missing."""
    key = prediction_key(name, split)
    try:
        return pd.read_parquet(
            io.BytesIO(run.read_bytes(key)), columns=["image_id", "pred", "label"]
        )
    except StoreKeyNotFound as e:
        raise StageFailed(
            f"model {name!r} has no {split} predictions ({run.uri_of(key)}): its train or predict "
            "job did not complete, so the vote cannot run"
        ) from e


def rank_candidates(
    val: dict[str, pd.DataFrame],
) -> list[dict[str, Any]]:
    """Score each candidate on val and sort best first (macro F1, then accuracy, then name)."""
    scored = []
    for name, df in val.items():
        m = classification_metrics(df["label"].to_numpy(), df["pred"].to_numpy())
        scored.append({"name": name, "val_macro_f1": m["macro_f1"], "val_accuracy": m["accuracy"]})
    return sorted(scored, key=lambda c: (-c["val_macro_f1"], -c["val_accuracy"], c["name"]))


def aligned(frames: list[pd.DataFrame], image_ids: pd.Series, what: str) -> np.ndarray:
    """Stack members' predictions in the order of `image_ids`; StageFailed if any is missing."""
    out = []
    for df in frames:
        pred = df.set_index("image_id")["pred"].reindex(image_ids)
        if pred.isna().any():
            raise StageFailed(f"{what}: predictions missing for {int(pred.isna().sum())} images")
        out.append(pred.to_numpy())
    return np.stack(out)


def vote(cfg: DictConfig) -> dict[str, Any]:
    """Run the vote stage for `cfg.run_id`; returns the content of vote.json."""
    started = time.time()
    run = run_store(cfg)
    if stage_done(run, STAGE):
        log.info("vote already done for run %s: nothing to do", cfg.run_id)
        return read_json(run, VOTE_KEY)
    top_k = int(cfg.suite.vote.top_k)
    if top_k < 1:
        raise ConfigError(f"suite.vote.top_k must be at least 1, got {top_k}")
    names = list(model_specs(cfg))
    val = {name: read_predictions(run, name, "val") for name in names}
    ranking = rank_candidates(val)
    members = [c["name"] for c in ranking[:top_k]]

    index = read_index(run)
    val_rows = index[index["split"] == "val"]
    ensemble_val = hard_vote(aligned([val[m] for m in members], val_rows["image_id"], "val"))
    val_metrics = classification_metrics(val_rows["label"].to_numpy(), ensemble_val)

    submission = eval_submission(run, index, members)
    result: dict[str, Any] = {
        "run_id": cfg.run_id,
        "top_k": top_k,
        "members": members,
        "candidates": ranking,
        "ensemble": {
            "val_macro_f1": val_metrics["macro_f1"],
            "val_accuracy": val_metrics["accuracy"],
            "val": val_metrics,
        },
    }
    truth = submission["truth"]
    if (truth >= 0).all() and len(truth):
        result["eval"] = classification_metrics(truth.to_numpy(), submission["ans"].to_numpy())
    run.write_bytes(SUBMISSION_KEY, submission[["ImageID", "ans"]].to_csv(index=False).encode())
    write_json(run, VOTE_KEY, result)
    mark_stage_done(run, STAGE, {"members": members}, started)
    write_json(
        root_store(cfg),
        LATEST_KEY,
        {"run_id": cfg.run_id, "finished": datetime.now(UTC).isoformat(timespec="seconds")},
    )
    log.info("vote done for run %s: members %s", cfg.run_id, members)
    return result


def eval_submission(run: Store, index: pd.DataFrame, members: list[str]) -> pd.DataFrame:
    """The voted answer for every row of eval/info.csv, in its order (ImageID, ans, truth).

    Raises StageFailed when some rows of info.csv have no usable image: never a short submission.
    """
    listed = int(read_json(run, stage_key(PREPARE_STAGE))["eval_listed"])
    rows = index[index["split"] == "eval"].sort_values("order")
    if len(rows) != listed:
        raise StageFailed(
            f"the submission would lack {listed - len(rows)} of {listed} rows of eval/info.csv: "
            f"those images are missing or unusable, see {run.uri_of(BAD_INPUTS_KEY)}"
        )
    ids = rows["image_id"].reset_index(drop=True)
    answers = hard_vote(aligned([read_predictions(run, m, "eval") for m in members], ids, "eval"))
    return pd.DataFrame({"ImageID": ids, "ans": answers, "truth": rows["label"].to_numpy()})
