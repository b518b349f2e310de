"""Runs over time: the `latest` pointer, the list of runs, and checkpoint retention.

- `<store.root>/latest.json` names the published run (the champion). It is written (atomically)
  only by the publish stage of a run whose vote finished and whose gate passed
  (pipeline/stages/publish.py), and then only moves forward: a run that finishes after a newer one
  (run ids sort by start time) leaves the newer one in place; `runs promote` moves it by hand.
- `python -m pipeline.runs list` shows every run with its state and scores.
- After each successful vote, model checkpoints (`models/*/checkpoint.safetensors`, `last*`,
  `best-*` and the legacy `.pt` of older runs: run_layout.is_checkpoint_file; 180 MB per
  ResNet-18 model)
  of runs older than the newest `store.keep_checkpoints` runs are deleted; the latest run's
  never are. Predictions, submissions, metrics and reports are kept.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypedDict

from omegaconf import DictConfig

from pipeline.core.errors import ConfigError, StoreError
from pipeline.run.results import (
    GateRecord,
    Interval,
    VoteResult,
    difference_text,
    interval_text,
    read_vote,
)
from pipeline.run.state import finish_manifest, manifest_state, root_store, run_store
from pipeline.storage.run_layout import (
    FINGERPRINT_KEY,
    GATE_KEY,
    LATEST_KEY,
    REPORT_KEY,
    RUNS,
    SUBMISSION_KEY,
    SWEEP_KEY,
    VOTE_KEY,
    is_checkpoint_file,
    run_key,
)
from pipeline.storage.store import Store, join_key

log = logging.getLogger(__name__)


class LatestRecord(TypedDict):
    """What `move_latest` writes to latest.json (`read_latest` also reads older records)."""

    run_id: str
    finished: str
    members: list[str]
    method: str | None
    val_macro_f1: float | None
    eval_macro_f1: float | None
    files: dict[str, str]
    fingerprint: dict[str, Any] | None


def read_latest(root: Store) -> dict[str, Any] | None:
    """The content of latest.json, or None when no run has succeeded yet."""
    if not root.exists(LATEST_KEY):
        return None
    record = root.read_json(LATEST_KEY)
    if not isinstance(record, dict) or not record.get("run_id"):
        raise StoreError(f"{root.uri_of(LATEST_KEY)} does not name a run: {record!r}")
    return record


#: What latest.json's "files" names, by key in the run (docs/results.md); a key
#: ending in / is a folder: "predictions/" holds every answers file (one Parquet dataset,
#: pipeline/run/answers.py).
PUBLISHED_FILES = {
    "submission": "submission.csv",
    "vote": "vote.json",
    "vote_eval": "predictions/vote/eval.parquet",
    "vote_val": "predictions/vote/val.parquet",
    "predictions": "predictions/",
    "report": "report/index.html",
    "manifest": "manifest.json",
    "bad_inputs": "bad_inputs.csv",
}


def published_files(run: Store) -> dict[str, str]:
    """URIs (s3://… or absolute paths) of a finished run's outputs, by name; folders end in /."""
    return {
        name: run.uri_of(key.rstrip("/")) + ("/" if key.endswith("/") else "")
        for name, key in PUBLISHED_FILES.items()
    }


def move_latest(root: Store, run: Store, run_id: str, *, force: bool = False) -> bool:
    """Point latest.json at `run_id` (whose vote just succeeded) unless it or a newer run is
    already there (a rerun of a finished vote changes nothing); `force` (runs promote) moves it
    to any other run, older ones too. Returns whether it moved.

    The record holds the run id, the time, the vote's scores and the run's data fingerprint
    (used to skip a nightly run when nothing changed).
    """
    current = read_latest(root)
    if force and current is not None and str(current["run_id"]) == run_id:
        return False
    if not force and current is not None and str(current["run_id"]) >= run_id:
        if str(current["run_id"]) > run_id:
            log.info("latest.json stays at the newer run %s", current["run_id"])
        return False
    vote = read_vote(run)
    record: LatestRecord = {
        "run_id": run_id,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "members": vote.get("members", []),
        "method": vote.get("method"),
        "val_macro_f1": vote.get("ensemble", {}).get("val_macro_f1"),
        "eval_macro_f1": vote["eval"].get("macro_f1") if vote.get("eval") else None,
        "files": published_files(run),
        "fingerprint": run.read_json(FINGERPRINT_KEY) if run.exists(FINGERPRINT_KEY) else None,
    }
    root.write_json(LATEST_KEY, record)
    return True


def run_ids(root: Store) -> list[str]:
    """Every run in the store, oldest first (ids sort by start time).

    The store may be a bucket others write: a folder under runs/ whose name is not a safe key
    segment (`..`, `%2e%2e`, …) is skipped with a WARNING naming it, so one junk key cannot stop
    `runs list` or the nightly retention."""
    found = {key.split("/", 2)[1] for key in root.list(RUNS) if key.count("/") >= 2}
    return sorted(run_id for run_id in found if safe_run_id(root, run_id))


def safe_run_id(root: Store, run_id: str) -> bool:
    """Whether `run_id` (a folder listed under runs/) is one safe key segment; warns if not."""
    try:
        join_key(RUNS, run_id)
    except StoreError as e:
        where = f"{root.uri.rstrip('/')}/{RUNS}/{run_id}"
        log.warning("skipped %s: not a run folder (%s)", where, e)
        return False
    return True


def read_gate(run: Store) -> GateRecord | None:
    """The run's gate.json (the publish gate's decision), or None when its publish has not run
    or predates the gate."""
    if not run.exists(GATE_KEY):
        return None
    record: GateRecord = run.read_json(GATE_KEY)
    return record


#: The exit status of `launch` (and `--wait`) for a run the publish gate held.
EXIT_HELD = 3


def run_exit_status(run: Store) -> int:
    """0 for a finished run, EXIT_HELD when the publish gate held it (and nobody promoted it)."""
    return EXIT_HELD if gate_state(read_gate(run)) == "held" else 0


def held_unchanged(
    root: Store, fingerprint: dict[str, Any], latest: dict[str, Any] | None
) -> GateRecord | None:
    """The gate record of the newest run after latest.json's that the gate held, when it learnt
    from exactly these inputs and configuration: retraining would give the same run again, so a
    nightly launch skips it. None when there is no such run (or a newer run finished since)."""
    after = str(latest["run_id"]) if latest else ""
    for run_id in reversed(run_ids(root)):
        if run_id <= after:
            return None
        run = root.child(join_key(RUNS, run_id))
        gate = read_gate(run)
        if gate is None:
            continue  # still running, failed, or from before the gate
        if gate_state(gate) != "held" or not run.exists(FINGERPRINT_KEY):
            return None
        same = run.read_json(FINGERPRINT_KEY).get("sha256") == fingerprint["sha256"]
        return gate if same else None
    return None


#: A run's state in `runs list` and the store page.
RUN_STATES = ("published", "held", "succeeded", "failed", "incomplete")


def gate_state(gate: GateRecord | None) -> str | None:
    """published / held from a gate record (a held run promoted by hand is published); None when
    the record decides neither (no record, or superseded)."""
    if gate is None:
        return None
    if gate.get("promoted") or gate["decision"] == "published":
        return "published"
    return "held" if gate["decision"] == "held" else None


def gate_line(gate: GateRecord) -> str:
    """The gate's decision in one line, with the promotion when someone published it by hand."""
    promoted = gate.get("promoted")
    if not promoted:
        return gate["reason"]
    return (
        f"published by hand by {promoted['by']} at {promoted['at']} ({promoted['reason']}); "
        f"the gate said: {gate['reason']}"
    )


def run_summary(root: Store, run_id: str) -> dict[str, Any]:
    """One run at a glance: state (one of RUN_STATES), scores, members, size, gate record.

    published: latest.json was moved to it (by the gate or `runs promote`); held: the gate kept
    latest.json on the champion; succeeded: its vote finished but it was not published (a newer
    run was latest, its publish has not run, or it predates the gate); failed: a job recorded a
    failure; incomplete: still running, or stopped."""
    run = root.child(join_key(RUNS, run_id))
    sizes = run.sizes()
    stages = sorted(k[len("stages/") : -len(".json")] for k in sizes if k.startswith("stages/"))
    failed = []
    for key in sizes:
        if key.startswith("jobs/") and key.endswith(".json"):
            record = run.read_json(key)
            if isinstance(record, dict) and record.get("state") == "failed":
                failed.append(f"{record.get('stage')}: {record.get('error', '')}"[:200])
    gate = read_gate(run) if GATE_KEY in sizes else None
    state = "failed" if failed else ("succeeded" if "vote" in stages else "incomplete")
    if not failed and gate_state(gate):
        state = str(gate_state(gate))
    summary: dict[str, Any] = {
        "run_id": run_id,
        # a failure recorded once the vote is done is publish's (latest.json not moved)
        "state": state,
        "stages_done": stages,
        "failed": failed,
        "bytes": sum(sizes.values()),
        "checkpoints": sum(1 for k in sizes if is_checkpoint_file(k.rsplit("/", 1)[-1])),
    }
    if SWEEP_KEY in sizes:
        summary["sweep"] = run.read_json(SWEEP_KEY)
    if gate is not None:
        summary["gate"] = gate
        if "challenger" in gate:
            summary["holdout_macro_f1"] = gate["challenger"]["macro_f1"]
    if VOTE_KEY in sizes:
        vote = read_vote(run)
        summary["val_macro_f1"] = vote["ensemble"]["val_macro_f1"]
        summary["val_accuracy"] = vote["ensemble"]["val_accuracy"]
        summary["members"] = vote["members"]
        if "eval" in vote:
            summary["eval_macro_f1"] = vote["eval"]["macro_f1"]
    return summary


def run_summaries(root: Store) -> list[dict[str, Any]]:
    """`run_summary` of every run, oldest first; a run whose records cannot be read (junk in a
    shared bucket) is skipped with a WARNING naming it, so the other runs are still shown."""
    summaries = []
    for run_id in run_ids(root):
        try:
            summaries.append(run_summary(root, run_id))
        except StoreError as e:
            log.warning("skipped run %s: %s", run_id, e)
    return summaries


def prune_checkpoints(root: Store, keep: int) -> list[str]:
    """Delete model checkpoints of every run but the newest `keep` and the latest; returns the
    deleted keys. Runs newer than latest are never touched (still running, or failed: a resume
    needs them) unless the publish gate held them: nightly held runs would pile up otherwise, and
    the newest `keep` of them can still be promoted."""
    if keep < 1:
        raise ConfigError(f"store.keep_checkpoints must be at least 1, got {keep}")
    latest = read_latest(root)
    if latest is None:
        return []
    ids = run_ids(root)
    protected = set(ids[-keep:]) | {str(latest["run_id"])}
    deleted = []
    for run_id in ids:
        if run_id in protected:
            continue
        if run_id > str(latest["run_id"]) and manifest_state(root.child(run_key(run_id))) != "held":
            continue
        prefix = join_key(RUNS, run_id, "models")
        for key in root.list(prefix):
            if is_checkpoint_file(key.rsplit("/", 1)[-1]) and safe_key(root, key):
                root.delete(key)
                deleted.append(key)
    if deleted:
        log.info(
            "retention: deleted %d checkpoints of runs before the newest %d", len(deleted), keep
        )
    return deleted


def safe_key(root: Store, key: str) -> bool:
    """Whether a listed `key` is safe to act on (see join_key); warns naming it if not."""
    try:
        join_key(key)
    except StoreError as e:
        log.warning("skipped %s/%s: %s", root.uri.rstrip("/"), key, e)
        return False
    return True


def publish(cfg: DictConfig, run: Store, *, move: bool = True, held: bool = False) -> bool:
    """After the gate decided (pipeline.stages.publish): move latest.json forward when `move`,
    apply checkpoint retention, then record the run's final state in its manifest (`held` or
    `succeeded`). Returns whether latest.json moved (not when it already names this run or a
    newer one). Idempotent: a rerun of a publish that stopped part-way finishes it (retention
    too), a rerun of a finished one changes nothing."""
    root = root_store(cfg)
    moved = move and move_latest(root, run, str(cfg.run_id))
    prune_checkpoints(root, int(cfg.store.keep_checkpoints))
    finish_manifest(run, "held" if held else "succeeded")  # last: the run's final state
    return moved


def format_runs(summaries: list[dict[str, Any]], latest: str | None) -> list[str]:
    """The table `runs list` prints, newest first; runs of a sweep show its id and their point
    (the swept overrides) in a last column."""
    sweeps = any("sweep" in s for s in summaries)
    head = f"  {'run id':<26} {'state':<10} {'val F1':>7} {'hold F1':>7} {'eval F1':>7}  members"
    lines = [head + ("  | sweep: point" if sweeps else "")]
    for s in reversed(summaries):
        mark = "*" if s["run_id"] == latest else " "
        f1 = f"{s['val_macro_f1']:.4f}" if "val_macro_f1" in s else "-"
        hold = f"{s['holdout_macro_f1']:.4f}" if "holdout_macro_f1" in s else "-"
        ev = f"{s['eval_macro_f1']:.4f}" if "eval_macro_f1" in s else "-"
        members = ", ".join(s.get("members", [])) or "; ".join(s["failed"])[:80]
        line = f"{mark} {s['run_id']:<26} {s['state']:<10} {f1:>7} {hold:>7} {ev:>7}  {members}"
        if "sweep" in s:
            sweep = s["sweep"]
            line += f"  | {sweep.get('sweep_id')}: {' '.join(map(str, sweep.get('point', [])))}"
        lines.append(line)
        if s["state"] == "held" and "gate" in s:
            lines.append(f"    {s['gate']['reason']}")
    lines.append("(* = latest.json; hold F1: holdout macro F1, scored by the publish gate)")
    return lines


def interval_suffix(interval: Interval | None) -> str:
    """'  [low, high]  vs best +d [lo, hi]' for a summary line; empty without an interval."""
    if interval is None:
        return ""
    text = "  " + interval_text(interval).split(" ", 1)[1]
    diff = difference_text(interval)
    return text + (f"  vs best {diff}" if diff and interval["diff"] != 0.0 else "")


def summary_lines(cfg: DictConfig, result: VoteResult, seconds: float) -> list[str]:
    """What a user wants to see at the end of a run: where things are and the scores."""
    run = run_store(cfg)
    lines = [
        f"run {cfg.run_id} finished in {seconds:.0f} s",
        f"  submission: {run.uri_of(SUBMISSION_KEY)}",
        f"  scores:     {run.uri_of(VOTE_KEY)}",
        f"  report:     {run.uri_of(REPORT_KEY)}",
        "  val macro F1 / accuracy:",
    ]
    voted = result.get("voted", result["members"])
    for c in result["candidates"]:
        mark = "*" if c["name"] in voted else " "
        lines.append(
            f"   {mark} {c['name']:<20} {c['val_macro_f1']:.4f} / {c['val_accuracy']:.4f}"
            + interval_suffix(c.get("val_interval"))
        )
    for method, scored in result.get("methods", {}).items():
        label = f"vote {method}"
        lines.append(
            f"     {label:<20} {scored['val']['macro_f1']:.4f} / {scored['val_accuracy']:.4f}"
            + interval_suffix(scored["val"])
        )
    ens = result["ensemble"]
    lines.append(
        f"     {'submitted':<20} {ens['val_macro_f1']:.4f} / {ens['val_accuracy']:.4f}"
        f"   (voted candidates marked *)"
    )
    if "fallback" in result:
        lines.append(f"  submitted: {result['fallback']['reason']}")
    gate = read_gate(run)
    if gate is not None:
        lines.append(f"  publish:   {gate_line(gate)}")
        if gate_state(gate) == "held":
            lines.append(
                f"  held: latest.json was not moved; publish it by hand with python -m "
                f"pipeline.runs promote {cfg.run_id} --reason '...' store.root={cfg.store.root}"
            )
    if "eval" in result:
        ev = result["eval"]
        lines.append(
            f"  eval (ground truth present): macro F1 {ev['macro_f1']:.4f}, "
            f"accuracy {ev['accuracy']:.4f}"
        )
    return lines
