"""The publish stage: the gate between a finished run and latest.json (docs/runs.md).

Before latest.json moves, this run (the challenger) and the run latest.json names (the champion,
its voted members re-run on today's holdout photos with its own settings) are scored on this
run's holdout: the people the store's stable rule holds out of every run
(pipeline.domain.split `holdout_by_person`), on which nothing was trained, selected or voted.
Macro F1 of both, with a bootstrap by person, paired (the same resampled people for both):

    held       the whole 95 % interval of challenger minus champion lies below -publish.tolerance:
               the holdout shows the challenger worse by more than the tolerance. latest.json
               stays on the champion, the manifest's state is `held`, `launch` exits 3;
               `python -m pipeline.runs promote RUN --reason ...` publishes it by hand.
    published  otherwise; also, without comparing, a store's first run, a champion whose holdout
               does not contain today's (trained before the rule, another salt, a smaller
               fraction: it may have trained on these people), a run without holdout photos, and
               every run when data.holdout_fraction=0 (the gate is off).
    superseded latest.json already names this run or a newer one: nothing to decide.

The decision and the comparison (holdout scores, per-class F1 deltas, churn of the eval answers,
people and photos added and removed, class counts) go to the run's gate.json
(pipeline.run.results.GateRecord), written once: a rerun of the stage keeps the decision and
finishes what a stopped one left (latest.json, retention, report, manifest). Then the run's
report is written again with the comparison, the store page is refreshed and `notify.url` hears
of it.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from sklearn.metrics import f1_score

from pipeline.core.errors import ConfigError, PipelineError, StoreKeyNotFound
from pipeline.domain.labels import NUM_CLASSES, AgeThresholds, class_name, encode_array
from pipeline.domain.metrics import Interval, bootstrap_by_person
from pipeline.ml.predictor import predictor_answers, run_predictor
from pipeline.run.history import move_latest, publish, read_gate, read_latest
from pipeline.run.holdout import HoldoutRule, contains
from pipeline.run.notify import notify
from pipeline.run.report import write_report
from pipeline.run.results import (
    INTERVAL_LEVEL,
    INTERVAL_RESAMPLES,
    ChangedAnswer,
    Churn,
    ClassCounts,
    ClassDelta,
    DataChanges,
    GateRecord,
    interval_text,
    read_vote,
)
from pipeline.run.state import finish_manifest, read_index, root_store, run_store, stage_done
from pipeline.run.store_page import write_store_page
from pipeline.storage.run_layout import (
    GATE_KEY,
    PREPARE_STAGE,
    RUNS,
    VOTE_STAGE,
    answers_key,
    stage_key,
)
from pipeline.storage.store import Store, join_key

log = logging.getLogger(__name__)

#: Changed eval answers listed in gate.json and the report (all are counted).
CHURN_SHOWN = 200
#: Added and removed person ids listed (all are counted).
CHANGES_SHOWN = 50


def tolerance(cfg: DictConfig) -> float:
    """`publish.tolerance`, checked: a macro F1 margin in (-1, 1)."""
    value = cfg.get("publish", {}).get("tolerance", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1 < value < 1:
        raise ConfigError(
            f"publish.tolerance must be a macro F1 margin in (-1, 1) (0.0: hold a run the holdout "
            f"shows worse; negative: demand a win), got {value!r}"
        )
    return float(value)


def prepare_holdout(run: Store) -> dict[str, Any] | None:
    """The holdout rule a run recorded in its prepare marker (None for runs from before it)."""
    try:
        marker = run.read_json(stage_key(PREPARE_STAGE))
    except StoreKeyNotFound:
        return None
    holdout = marker.get("holdout") if isinstance(marker, dict) else None
    return holdout if isinstance(holdout, dict) else None


def read_answer_column(run: Store, key: str) -> pd.Series:
    """An answers file's 18-class answers by image id."""
    frame = pd.read_parquet(io.BytesIO(run.read_bytes(key)), columns=["image_id", "class"])
    return pd.Series(frame["class"].to_numpy(dtype=np.int64), index=frame["image_id"].to_numpy())


def per_class(truth: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> list[ClassDelta]:
    """F1 of each class present in the truth or either answer, challenger against champion."""
    labels = list(range(NUM_CLASSES))
    ours = f1_score(truth, challenger, labels=labels, average=None, zero_division=0)
    theirs = f1_score(truth, champion, labels=labels, average=None, zero_division=0)
    support = np.bincount(truth, minlength=NUM_CLASSES)
    present = set(truth.tolist()) | set(challenger.tolist()) | set(champion.tolist())
    return [
        {
            "name": class_name(c),
            "challenger": float(ours[c]),
            "champion": float(theirs[c]),
            "delta": float(ours[c] - theirs[c]),
            "support": int(support[c]),
        }
        for c in sorted(present)
    ]


def churn(challenger: Store, champion: Store) -> Churn | None:
    """How many eval answers changed from the champion's submission to the challenger's (the
    photos both answered), with the first CHURN_SHOWN of them in eval order."""
    key = answers_key("vote", "vote", "eval")
    try:
        ours, theirs = read_answer_column(challenger, key), read_answer_column(champion, key)
    except StoreKeyNotFound:
        return None
    common = ours.index.intersection(theirs.index, sort=False)
    ours, theirs = ours[common], theirs[common]
    changed = ours.to_numpy() != theirs.to_numpy()
    ids, new, old = common[changed], ours[changed], theirs[changed]
    shown: list[ChangedAnswer] = [
        {"image_id": str(i), "champion": class_name(int(b)), "challenger": class_name(int(a))}
        for i, a, b in zip(ids[:CHURN_SHOWN], new[:CHURN_SHOWN], old[:CHURN_SHOWN], strict=True)
    ]
    return {
        "compared": len(common),
        "changed": int(changed.sum()),
        "share": float(changed.mean()) if len(common) else 0.0,
        "shown": shown,
    }


def labelled(index: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows of an index (train, val, holdout; extra sources too)."""
    return index[index["split"] != "eval"]


def data_changes(challenger: pd.DataFrame, champion: pd.DataFrame) -> DataChanges:
    """People and photos added and removed since the champion's data."""
    ours, theirs = labelled(challenger), labelled(champion)
    people_ours, people_theirs = set(ours["person_id"]), set(theirs["person_id"])
    photos_ours, photos_theirs = set(ours["image_id"]), set(theirs["image_id"])
    added, removed = sorted(people_ours - people_theirs), sorted(people_theirs - people_ours)
    return {
        "people_added": len(added),
        "people_removed": len(removed),
        "photos_added": len(photos_ours - photos_theirs),
        "photos_removed": len(photos_theirs - photos_ours),
        "people_added_shown": added[:CHANGES_SHOWN],
        "people_removed_shown": removed[:CHANGES_SHOWN],
    }


def class_counts(challenger: pd.DataFrame, champion: pd.DataFrame) -> ClassCounts:
    """Labelled photos per class (the competition's age groups) in both runs' data."""

    def counts(index: pd.DataFrame) -> list[int]:
        rows = labelled(index)
        labels = encode_array(
            rows["mask"], rows["gender"], AgeThresholds().groups(rows["age"].to_numpy())
        )
        return np.bincount(labels.astype(np.int64), minlength=NUM_CLASSES).tolist()

    return {
        "classes": [class_name(c) for c in range(NUM_CLASSES)],
        "champion": counts(champion),
        "challenger": counts(challenger),
    }


def score_pair(
    cfg: DictConfig, run: Store, champion_id: str, champion: Store, holdout: pd.DataFrame
) -> tuple[dict[str, Interval], np.ndarray, np.ndarray]:
    """Holdout macro F1 of the challenger (its vote's holdout answers) and of the champion (its
    members re-run on the same photos), with intervals by person, paired; and both answers."""
    ids = holdout["image_id"].tolist()
    ours = read_answer_column(run, answers_key("vote", "vote", "holdout")).reindex(ids)
    if ours.isna().any():
        raise PipelineError(
            f"{run.uri_of(answers_key('vote', 'vote', 'holdout'))} lacks "
            f"{int(ours.isna().sum())} of the run's holdout photos: run the vote again"
        )
    predictor = run_predictor(champion_id, champion)
    shard_of = dict(zip(holdout["image_id"], holdout["shard"], strict=True))
    _, theirs, _ = predictor_answers(cfg, predictor, run, ids, shard_of)
    truth = holdout["label"].to_numpy(dtype=np.int64)
    challenger = ours.to_numpy(dtype=np.int64)
    scores = bootstrap_by_person(
        truth,
        {"challenger": challenger, "champion": theirs},
        holdout["person_id"].to_numpy(),
        reference="champion",
        resamples=INTERVAL_RESAMPLES,
        level=INTERVAL_LEVEL,
        seed=int(cfg.seed),
    )
    return scores, challenger, np.asarray(theirs, dtype=np.int64)


def decide(cfg: DictConfig, root: Store, run: Store) -> GateRecord:
    """The gate's record for this run (see the module doc); scores the champion when it can."""
    run_id = str(cfg.run_id)
    tol = tolerance(cfg)
    latest = read_latest(root)
    rule = prepare_holdout(run) or {}
    today: HoldoutRule = {
        "rule_id": str(rule.get("rule_id", "")),
        "fraction": float(rule.get("fraction", 0.0)),
        "people": int(rule.get("people", 0)),
        "photos": int(rule.get("photos", 0)),
    }
    record: GateRecord = {
        "run_id": run_id,
        "decision": "published",
        "compared": False,
        "reason": "",
        "champion": str(latest["run_id"]) if latest else None,
        "tolerance": tol,
        "decided": datetime.now(UTC).isoformat(timespec="seconds"),
        "holdout": {
            "fraction": today["fraction"],
            "people": today["people"],
            "photos": today["photos"],
        },
    }
    if latest is not None and str(latest["run_id"]) >= run_id:
        record["decision"] = "superseded"
        record["reason"] = f"not published: latest.json already names run {latest['run_id']}"
        return record
    if latest is None:
        record["reason"] = "published: the store's first run (no champion to compare with)"
        return record
    champion_id = str(latest["run_id"])
    if today["fraction"] == 0.0:
        record["reason"] = "published: the gate is off (data.holdout_fraction=0)"
        return record
    if today["photos"] == 0:
        record["reason"] = (
            f"published without comparing: this run has no holdout people (data.holdout_fraction="
            f"{today['fraction']:g} of too few people)"
        )
        return record
    champion = root.child(join_key(RUNS, champion_id))
    why_not = contains(prepare_holdout(champion), today)
    if why_not:
        record["reason"] = (
            f"published without comparing: champion {champion_id} is not compared, {why_not}; "
            "the next runs are compared against this one"
        )
        return record
    index = read_index(run)
    holdout = index[index["split"] == "holdout"]
    try:
        scores, ours, theirs = score_pair(cfg, run, champion_id, champion, holdout)
    except PipelineError as e:
        record["decision"] = "held"
        record["reason"] = (
            f"held: champion {champion_id} could not be scored on the holdout ({e}); "
            f"latest.json stays on it; publish this run by hand with `python -m pipeline.runs "
            f"promote {run_id} --reason ...`"
        )
        return record
    ch, cp = scores["challenger"], scores["champion"]
    held = ch["diff_high"] < -tol
    text = (
        f"holdout macro F1 {interval_text(ch)} against champion {champion_id} "
        f"{interval_text(cp)}, difference {ch['diff']:+.4f} "
        f"[{ch['diff_low']:+.3f}, {ch['diff_high']:+.3f}] ({today['people']} people, "
        f"{today['photos']} photos)"
    )
    bound = f"{0.0 - tol:+.3f} (publish.tolerance={tol:g})"
    if held:
        reason = (
            f"held: {text}: the interval lies wholly below {bound}; latest.json stays on "
            f"{champion_id}"
        )
    else:
        reason = f"published: {text}: the interval reaches {bound}"
    champion_index = read_index(champion)
    record["decision"] = "held" if held else "published"
    record["compared"] = True
    record["reason"] = reason
    record["challenger"] = ch
    record["champion_score"] = {"macro_f1": cp["macro_f1"], "low": cp["low"], "high": cp["high"]}
    record["per_class"] = per_class(holdout["label"].to_numpy(dtype=np.int64), ours, theirs)
    record["data_changes"] = data_changes(index, champion_index)
    record["class_counts"] = class_counts(index, champion_index)
    changed = churn(run, champion)
    if changed is not None:
        record["churn"] = changed
    return record


def publish_run(cfg: DictConfig) -> dict[str, Any]:
    """The publish stage for `cfg.run_id` (after its vote): decide (once, gate.json), rewrite the
    report with the comparison, then move latest.json when published, prune checkpoints and
    finish the manifest (`succeeded` or `held`; pipeline.run.history `publish`), refresh the
    store page, notify. Returns the stage's marker."""
    root, run = root_store(cfg), run_store(cfg)
    if cfg.get("sweep_id"):
        # A sweep's run is compared with its sweep's others (runs list --sweep), not published:
        # latest.json stays (runs promote publishes one by hand); retention, the manifest's state.
        publish(cfg, run, move=False)
        reason = f"a run of sweep {cfg.sweep_id}: not published (runs promote publishes it)"
        log.info("run %s: %s", cfg.run_id, reason)
        return {"latest_moved": False, "decision": "sweep", "reason": reason}
    gate = read_gate(run)
    if gate is None:
        gate = decide(cfg, root, run)
        run.write_json(GATE_KEY, gate)
    write_report(cfg, run, read_vote(run))
    held = gate["decision"] == "held" and not gate.get("promoted")
    moved = publish(cfg, run, move=gate["decision"] == "published", held=held)
    (log.warning if held else log.info)("run %s %s", cfg.run_id, gate["reason"])
    try:
        write_store_page(root)
    except PipelineError as e:  # the page is derived; the run stands without it
        log.warning("could not refresh the store page: %s", e)
    if gate["decision"] != "superseded":
        fields: dict[str, Any] = {"reason": gate["reason"], "champion": gate["champion"]}
        if "challenger" in gate:
            fields["holdout_macro_f1"] = gate["challenger"]["macro_f1"]
        notify(cfg, gate["decision"], str(cfg.run_id), f"masksuite run {cfg.run_id} "
               f"{gate['reason']}", **fields)  # fmt: skip
    return {"latest_moved": moved, "decision": gate["decision"], "reason": gate["reason"]}


def promote(cfg: DictConfig, run_id: str, reason: str, by: str) -> GateRecord:
    """`python -m pipeline.runs promote`: publish finished run `run_id` by hand (a held run, or
    any other, older ones too: a rollback), whatever the gate said. Records who and why in its
    gate.json, then moves latest.json, finishes the manifest, refreshes the store page, notifies.
    ConfigError when the run has no finished vote or its members' checkpoints are gone."""
    if not reason.strip():
        raise ConfigError("runs promote needs --reason: say why this run is published by hand")
    root = root_store(cfg)
    run = root.child(join_key(RUNS, run_id))
    if not stage_done(run, VOTE_STAGE):
        raise ConfigError(
            f"run {run_id} under store.root={root.uri} has no finished vote: only a finished run "
            "can be published (python -m pipeline.runs list shows them)"
        )
    run_predictor(run_id, run)  # its members must still answer (infer, the next gate)
    latest = read_latest(root)
    previous = str(latest["run_id"]) if latest else None
    gate = read_gate(run) or GateRecord(
        run_id=run_id,
        decision="published",
        compared=False,
        reason="published by hand (runs promote); the gate did not decide on this run",
        champion=previous,
        tolerance=tolerance(cfg),
        decided=datetime.now(UTC).isoformat(timespec="seconds"),
        holdout={"fraction": 0.0, "people": 0, "photos": 0},
    )
    gate["promoted"] = {
        "by": by,
        "reason": reason.strip(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "previous": previous,
    }
    run.write_json(GATE_KEY, gate)  # first: latest.json never names a run without its record
    move_latest(root, run, run_id, force=True)
    finish_manifest(run, "succeeded")
    log.info("run %s promoted to latest.json by %s (was %s): %s", run_id, by, previous, reason)
    try:
        write_store_page(root)
    except PipelineError as e:
        log.warning("could not refresh the store page: %s", e)
    notify(cfg, "published", run_id, f"masksuite run {run_id} published by hand by {by} "
           f"(latest.json was {previous}): {reason.strip()}", champion=previous)  # fmt: skip
    return gate
