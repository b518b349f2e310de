"""Where each file of a run lives: the run's layout, written once. Every module that reads or
writes a run's file takes its key from here.

    <store.root>/latest.json              the published run (the champion): moved by publish
                                          only when the gate passes, or by `runs promote`
    <store.root>/holdout.json             the salt of the stable holdout rule (written once)
    <store.root>/report/index.html        the store page: every run, holdout F1 over time
    <store.root>/runs/<run_id>/
        manifest.json                     config, code version, creation time, final state
        fingerprint.json                  the data fingerprint of the run's inputs and config
        scheduler.json                    what cluster launchers submitted: job ids and logs
        stages/<stage>.json               a stage's done marker, written last by its frame
        jobs/<stage>.json                 the job working on a stage not yet done: running,
                                          requeued, failed (with the error) or cancelled
        index.parquet                     every usable image, its labels and split (prepare)
        bad_inputs.csv                    every unusable input and why (prepare)
        shards/<split>-NNNNN.parquet      the checked image bytes (prepare)
        models/<name>/checkpoint.safetensors  the best weights, a plain state dict (train, at
                                          its end)
        models/<name>/last.json           the training state after the last epoch: all but its
                                          tensors, with the sha256 of its tensors file and of
                                          the best weights (train, after every epoch)
        models/<name>/last-<hex>.safetensors  ... its tensors (named by their sha256)
        models/<name>/best-<hex>.safetensors  the best weights so far, while training runs
        models/<name>/metrics.json        history, validation scores and the sha256 of
                                          checkpoint.safetensors, checked on every read (train)
        models/<name>/{checkpoint,last}.pt  the same in the legacy torch.save format, in runs
                                          made before safetensors (read only, with a warning)
        predictions/models/<name>/{val,eval}.parquet       each model's answers (predict)
        predictions/candidates/<name>/{val,eval}.parquet   each candidate's answers (vote)
        predictions/vote/{val,eval}.parquet                the vote's answers (vote)
        vote.json                         candidates ranked, members, scores (vote)
        submission.csv                    ImageID,ans for the eval images (vote)
        report/index.html                 the run's report (vote; publish adds the comparison)
        gate.json                         champion against challenger on the holdout (publish)

A stage is done when its marker exists; the frame around every stage (pipeline/run/state.py
`run_stage`) skips a done stage, so running it again is a no-op.

Nothing a run writes is a pickle: checkpoints and training states are safetensors files (tensors)
and JSON (the rest), pipeline/ml/checkpoints.py.
"""

from __future__ import annotations

import re

from pipeline.storage.store import join_key

#: Names of the stages (their markers: stages/<name>.json); train and predict are per model.
PREPARE_STAGE = "prepare"
VOTE_STAGE = "vote"
#: Moves latest.json, prunes checkpoints, finishes the manifest; its marker ends a run.
PUBLISH_STAGE = "publish"
LATEST_KEY = "latest.json"
#: Folder of the store holding one folder per run.
RUNS = "runs"
MANIFEST_KEY = "manifest.json"
FINGERPRINT_KEY = "fingerprint.json"
SCHEDULER_KEY = "scheduler.json"
#: A run launched as a point of a sweep: {sweep_id, point: its swept overrides}.
SWEEP_KEY = "sweep.json"
INDEX_KEY = "index.parquet"
BAD_INPUTS_KEY = "bad_inputs.csv"
VOTE_KEY = "vote.json"
SUBMISSION_KEY = "submission.csv"
REPORT_KEY = "report/index.html"
#: The publish gate's record in a run (pipeline.run.results.GateRecord).
GATE_KEY = "gate.json"
#: The store's holdout rule (its salt), at the store root.
HOLDOUT_RULE_KEY = "holdout.json"
#: The store page (`python -m pipeline.report --store`), at the store root.
STORE_REPORT_KEY = "report/index.html"
#: Folder of a run holding every answer file (one dataset).
ANSWERS_DIR = "predictions"
ANSWER_KINDS = ("model", "candidate", "vote")


def run_key(run_id: str) -> str:
    """Key of a run's folder under the store root."""
    return join_key(RUNS, run_id)


def stage_key(stage: str) -> str:
    """Key of a stage's completion marker inside the run."""
    return join_key("stages", f"{stage}.json")


def job_state_key(stage: str) -> str:
    """Key of the record of the job working on `stage` (state, job id, log, error)."""
    return join_key("jobs", f"{stage}.json")


#: A model's best weights: a state dict as one safetensors file.
CHECKPOINT_FILE = "checkpoint.safetensors"
#: A model's training state after its last epoch: LAST_STATE + ".json" (the rest, naming its
#: tensors file) and LAST_STATE + "-<16 hex>.safetensors" (its tensors; pipeline/ml/checkpoints.py
#: `save_state`). While a model trains, its best weights so far are BEST + "-<16 hex>.safetensors".
#: The hex digits begin the file's SHA-256: a new file never replaces the one the JSON names, so a
#: job killed between two writes (SIGKILL after a preemption's grace time) leaves a pair that
#: still matches.
LAST_STATE = "last"
BEST = "best"
#: What runs made before safetensors wrote instead (torch.save, pickle-based): read only.
LEGACY_CHECKPOINT_FILE = "checkpoint.pt"
LEGACY_LAST_FILE = "last.pt"
#: The checkpoint files of a model with fixed names (with `ADDRESSED_FILE`'s, what retention
#: deletes and pull leaves in the store: `is_checkpoint_file`).
CHECKPOINT_FILES = (
    CHECKPOINT_FILE,
    f"{LAST_STATE}.json",
    LEGACY_CHECKPOINT_FILE,
    LEGACY_LAST_FILE,
)
#: A content-addressed tensors file: `last-<16 hex>.safetensors` or `best-<16 hex>.safetensors`.
ADDRESSED_FILE = re.compile(rf"(?:{LAST_STATE}|{BEST})-[0-9a-f]{{16}}\.safetensors")
#: A model's record written by train (validation scores, history, the checkpoint's sha256).
METRICS_FILE = "metrics.json"


def model_key(name: str, filename: str) -> str:
    """Key of a file of model `name` in the run (checkpoint.safetensors, metrics.json, ...)."""
    return join_key("models", name, filename)


def checkpoint_key(name: str) -> str:
    """Key of a model's best checkpoint (a state dict, safetensors) in the run."""
    return model_key(name, CHECKPOINT_FILE)


def last_state_key(name: str) -> str:
    """Key stem of a model's training state: + ".json" and + "-<16 hex>.safetensors" are its
    files."""
    return model_key(name, LAST_STATE)


def best_stem(name: str) -> str:
    """Key stem of a model's best weights while it trains: + "-<16 hex>.safetensors"."""
    return model_key(name, BEST)


def addressed_key(stem: str, sha256: str) -> str:
    """Key of the content-addressed tensors file of `stem` whose SHA-256 is `sha256`."""
    return f"{stem}-{sha256[:16]}.safetensors"


def is_checkpoint_file(filename: str) -> bool:
    """Whether `filename` (a key's last part) is one of a model's checkpoint files."""
    return filename in CHECKPOINT_FILES or ADDRESSED_FILE.fullmatch(filename) is not None


def legacy_checkpoint_key(name: str) -> str:
    """Key of a model's best checkpoint in a run made before safetensors (torch.save)."""
    return model_key(name, LEGACY_CHECKPOINT_FILE)


def legacy_last_key(name: str) -> str:
    """Key of a model's training state in a run made before safetensors (torch.save)."""
    return model_key(name, LEGACY_LAST_FILE)


def answers_key(kind: str, name: str, split: str) -> str:
    """Key of an answers file in a run: predictions/{models,candidates}/<name>/<split>.parquet,
    predictions/vote/<split>.parquet."""
    if kind == "vote":
        return join_key(ANSWERS_DIR, "vote", f"{split}.parquet")
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {ANSWER_KINDS}")
    return join_key(ANSWERS_DIR, f"{kind}s", name, f"{split}.parquet")


def prediction_key(name: str, split: str) -> str:
    """Key of a model's predictions for a split in the run."""
    return answers_key("model", name, split)


def train_stage(model: str) -> str:
    """Name of the stage that trains `model`."""
    return f"train-{model}"


def predict_stage(model: str) -> str:
    """Name of the stage that predicts with `model`."""
    return f"predict-{model}"
