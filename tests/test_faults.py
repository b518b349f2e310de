"""Fault injection (issue 8): the S3 server killed at chosen points, a training job killed with
SIGKILL mid-run, the scratch disk full, corrupt checkpoints. Nothing is lost and a rerun completes.

The S3 cases use a private SeaweedFS server (tests/seaweed.py) that the tests SIGKILL and restart on
the same data folder; the shared session server is never touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from pipeline.core.errors import StageFailed, StoreError
from pipeline.ml.checkpoints import load_checkpoint, load_state, save_state, save_weights
from pipeline.ml.training_state import TrainingState
from pipeline.orchestration.graph import run_job_stages
from pipeline.run.state import run_store
from pipeline.stages import train as train_stage
from pipeline.stages.predict import predict_model
from pipeline.stages.prepare import prepare
from pipeline.stages.train import resume_state, train_model
from pipeline.storage.shards import read_shard
from pipeline.storage.store import LocalStore, S3Store, Store, open_store
from tests.seaweed import SeaweedServer, start_seaweed

MakeCfg = Callable[..., DictConfig]
REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


def job(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m module args…` from the repository, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tiny_args(data: Path | str, store: Path | str, *more: str) -> list[str]:
    return [
        f"data.root={data}",
        f"store.root={store}",
        "train.image_size=[32,24]",
        "train.batch_size=32",
        "train.num_threads=1",
        "store.workers=4",
        "tracking.mode=disabled",
        *more,
    ]


# ------------------------------------------------------------------------------ S3 server


class KillableS3:
    """A private SeaweedFS server that a test may SIGKILL and restart on the same data folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: SeaweedServer | None = start_seaweed(workdir)
        self.endpoint = self.server.endpoint

    def kill(self) -> None:
        assert self.server is not None
        self.server.stop(grace=0)  # SIGKILL the whole process group
        self.server = None

    def up(self) -> SeaweedServer:
        """The running server, restarted (new ports, same data) if it was killed."""
        if self.server is None:
            self.server = start_seaweed(self.workdir)
            self.endpoint = self.server.endpoint
        return self.server

    def env(self, max_attempts: int = 3) -> dict[str, str]:
        s = self.server or self.up()
        return {
            **s.env(),
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_MAX_ATTEMPTS": str(max_attempts),
        }

    def use(self, monkeypatch: pytest.MonkeyPatch, max_attempts: int = 3) -> None:
        """Point this process's AWS_* environment at the server (as it is now)."""
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        for name, value in self.env(max_attempts).items():
            monkeypatch.setenv(name, value)

    def new_bucket(self) -> str:
        bucket = f"fault-{uuid.uuid4().hex[:12]}"
        self.up().client().create_bucket(Bucket=bucket)
        return bucket

    def wait_readable(self, uri: str, key: str, timeout: float = 60.0) -> Store:
        """After a restart the volume server takes a few seconds to re-register: wait for it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                store = open_store(uri)
                store.read_bytes(key)
                return store
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillableS3]:
    try:
        server = KillableS3(tmp_path_factory.mktemp("killable-seaweed"))
    except RuntimeError as e:
        pytest.fail(f"cannot start SeaweedFS: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.s3
def test_storage_down_at_start_is_one_clear_error_and_exit_1(
    s3: KillableS3, tiny_dataset: Path
) -> None:
    bucket = s3.new_bucket()
    env = s3.env(max_attempts=2)
    s3.kill()
    started = time.monotonic()
    proc = job("pipeline.launch", *tiny_args(tiny_dataset, f"s3://{bucket}/store"), env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach S3 endpoint {env['AWS_ENDPOINT_URL']}"), last
    assert "check AWS_ENDPOINT_URL" in last
    assert "finished" not in out
    assert time.monotonic() - started < 60  # fails fast, not after minutes of retries


@pytest.mark.s3
@pytest.mark.slow
def test_storage_lost_mid_prepare_fails_clearly_leaves_nothing_partial_and_a_rerun_completes(
    s3: KillableS3,
    tiny_dataset: Path,
    make_cfg: MakeCfg,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = s3.new_bucket()
    s3.use(monkeypatch, max_attempts=3)
    cfg = make_cfg(tiny_dataset, "run_id=lost", store=f"s3://{bucket}/store")

    # Kill the server just as prepare starts writing its second shard.
    written: list[str] = []
    original = S3Store.write_bytes

    def write_then_die(self: S3Store, key: str, data: bytes) -> None:
        if key.startswith("shards/"):
            written.append(key)
            if len(written) == 2:
                s3.kill()
        original(self, key, data)

    monkeypatch.setattr(S3Store, "write_bytes", write_then_die)
    caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")
    with pytest.raises(StoreError) as info:
        run_job_stages(cfg, "prepare")  # in the stage frame, as a job runs it
    message = str(info.value)
    assert f"cannot write s3://{bucket}/store/runs/lost/{written[1]}" in message
    assert "tried 3 times" in message and "check AWS_ENDPOINT_URL" in message
    retries = [r for r in caplog.records if "Retry needed" in r.getMessage()]
    assert len(retries) >= 2  # botocore retried with backoff before giving up
    monkeypatch.setattr(S3Store, "write_bytes", original)

    # Back up: what is visible is complete, the interrupted shard and the marker are absent.
    s3.up()
    s3.use(monkeypatch)
    run = s3.wait_readable(f"s3://{bucket}/store/runs/lost", "manifest.json")
    keys = run.list()
    assert written[1] not in keys
    assert "stages/prepare.json" not in keys and "index.parquet" not in keys
    assert written[0] in keys
    for key in keys:
        if key.startswith("shards/"):
            assert read_shard(run, key)  # every visible object is whole

    # A rerun of the same run completes and packs every image.
    (summary,) = run_job_stages(cfg, "prepare")
    index = pd.read_parquet(io.BytesIO(run.read_bytes("index.parquet")))
    listed = len(pd.read_csv(tiny_dataset / "eval" / "info.csv"))
    people = len(list((tiny_dataset / "train" / "images").iterdir()))
    assert len(index) == 7 * people + listed == sum(summary["images"].values())
    for shard, rows in index.groupby("shard"):
        assert set(rows["image_id"]) <= set(read_shard(run, shard))
    assert run.exists("stages/prepare.json")


@pytest.mark.s3
def test_storage_killed_during_a_multipart_upload_leaves_no_object(
    s3: KillableS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3.new_bucket()
    s3.use(monkeypatch, max_attempts=2)
    store = S3Store(f"s3://{bucket}/mp", workers=2, multipart_threshold=5 * MiB)
    store.write_bytes("marker", b"up")
    killed: list[str] = []

    def kill_at_part_two(request: object, **kwargs: object) -> None:
        if "partNumber=2" in str(getattr(request, "url", "")) and not killed:
            killed.append("yes")
            s3.kill()

    store.client.meta.events.register("before-send.s3.UploadPart", kill_at_part_two)
    blob = os.urandom(12 * MiB)  # three parts of 5, 5 and 2 MiB
    with pytest.raises(StoreError, match=rf"cannot write s3://{bucket}/mp/big\.bin"):
        store.write_bytes("big.bin", blob)
    assert killed

    s3.up()
    s3.use(monkeypatch)
    again = s3.wait_readable(f"s3://{bucket}/mp", "marker")
    assert not again.exists("big.bin")
    assert again.list() == ["marker"]
    again.write_bytes("big.bin", blob)  # the rerun completes
    assert again.read_bytes("big.bin") == blob


# ------------------------------------------------------------------------------ SIGKILL


@pytest.mark.slow
def test_training_killed_mid_run_resumes_from_its_last_epoch(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    cfg = make_cfg(tiny_dataset, "run_id=killed", "train.epochs=4", "train.num_threads=1")
    prepare(cfg)
    # held after saving epoch 1 (tests/hooks/sitecustomize.py), however fast this machine trains:
    # a job that finished more epochs, or all of them, before the kill would test nothing
    held = tmp_path / "held-after-epoch-1"
    hold = {
        "PYTHONPATH": f"{REPO / 'tests' / 'hooks'}{os.pathsep}{REPO}",
        "MASKSUITE_TEST_HOLD_AFTER_EPOCH": "1",
        "MASKSUITE_TEST_HOLD_FILE": str(held),
    }
    args = tiny_args(tiny_dataset, store, "run_id=killed", "train.epochs=4")
    proc = job("jobs.train", *args, env=hold)
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # epoch 1 saved, epoch 2 not begun
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    run = run_store(cfg)
    assert not run.exists("stages/train-single.json")
    saved = load_state(run, "models/single/last", dict)
    done = saved["epoch"]
    assert done == 1

    caplog.set_level(logging.INFO, logger="pipeline.stages.train")
    run_job_stages(cfg, "train")  # in the stage frame, as a job runs it
    history = run.read_json("models/single/metrics.json")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[:done] == saved["history"]  # the epochs before the kill were not retrained
    log = caplog.text
    assert f"resuming after epoch {done}" in log
    assert "epoch 1/4" not in log  # epoch 1 was not trained again
    assert run.exists("stages/train-single.json")


@pytest.mark.slow
def test_training_stopped_after_its_last_epoch_is_only_evaluated_again(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job stopped (a time limit, a preemption) after the last epoch's last.json but before the
    train marker: its next start trains no epoch again, evaluates, and ends with the same scores."""
    cfg = make_cfg(tiny_dataset, "run_id=atend", "train.epochs=2", "train.num_threads=1")
    prepare(cfg)
    run_job_stages(cfg, "train")
    run = run_store(cfg)
    first = run.read_json("models/single/metrics.json")
    folder = tmp_path / "store" / "runs" / "atend"
    (folder / "stages" / "train-single.json").unlink()  # stopped before the marker and metrics
    (folder / "models" / "single" / "metrics.json").unlink()
    assert load_state(run, "models/single/last", dict)["epoch"] == 2

    caplog.set_level(logging.INFO, logger="pipeline.stages.train")
    run_job_stages(cfg, "train")
    assert "resuming after epoch 2" in caplog.text
    assert not re.search(r"epoch \d/2:", caplog.text), caplog.text  # no epoch trained again
    again = run.read_json("models/single/metrics.json")
    assert again["history"] == first["history"]
    assert again["val"] == first["val"]  # the best checkpoint, evaluated again
    assert run.exists("stages/train-single.json")


def test_a_job_preempted_after_early_stopping_ships_the_same_epoch_when_resumed(
    tiny_dataset: Path,
    make_cfg: MakeCfg,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 24: patience 1 and val F1 0.5, 0.4 stop training after epoch 2 and ship epoch 1. A
    job preempted after that last.json but before metrics.json must, when it resumes, train no
    epoch 3 (whose scripted F1 0.9 would otherwise replace the shipped checkpoint)."""
    scores = iter([0.5, 0.4, 0.9, 0.9, 0.9])
    monkeypatch.setattr(train_stage, "evaluate", lambda *args: (next(scores), 0.5))
    cfg = make_cfg(tiny_dataset, "run_id=stop", "train.epochs=4", "train.num_threads=1",
                   "train.early_stopping_patience=1")  # fmt: skip
    prepare(cfg)
    run_job_stages(cfg, "train")
    folder = tmp_path / "store" / "runs" / "stop" / "models" / "single"
    first = json.loads((folder / "metrics.json").read_text())
    assert (first["best_epoch"], first["epochs_trained"], first["stopped_early"]) == (1, 2, True)
    shipped = (folder / "checkpoint.safetensors").read_bytes()
    (tmp_path / "store" / "runs" / "stop" / "stages" / "train-single.json").unlink()
    (folder / "metrics.json").unlink()  # preempted between the stop and metrics.json

    caplog.set_level(logging.INFO, logger="pipeline.stages.train")
    run_job_stages(cfg, "train")
    assert "stopped early after epoch 2" in caplog.text
    assert not re.search(r"epoch \d/4:", caplog.text), caplog.text  # no epoch trained again
    again = json.loads((folder / "metrics.json").read_text())
    assert (again["best_epoch"], again["epochs_trained"], again["stopped_early"]) == (1, 2, True)
    assert again["val"] == first["val"] and again["history"] == first["history"]
    assert (folder / "checkpoint.safetensors").read_bytes() == shipped


# ------------------------------------------------------------------------------ disk full


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; test_local_store_disk_full covers ENOSPC")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_scratch_disk_full_is_a_clear_error_and_a_rerun_completes(
    tiny_dataset: Path, tmp_path: Path, make_cfg: MakeCfg
) -> None:
    # 64 KiB: the manifest fits, the first image shard does not
    with tmpfs(tmp_path / "scratch", "64k") as disk:
        store = disk / "store"
        args = tiny_args(tiny_dataset, store, "run_id=full")
        proc = job("jobs.prepare", *args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-2000:]
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot write {store}/runs/full/"), last
        assert "no space left on device" in last and "rerun with the same run_id" in last
        assert temp_leftovers(disk) == []  # no partial file left behind
        assert not (store / "runs" / "full" / "stages" / "prepare.json").exists()

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        (summary,) = run_job_stages(
            make_cfg(tiny_dataset, "run_id=full", store=str(store)), "prepare"
        )
        assert summary["images"]["eval"] == len(pd.read_csv(tiny_dataset / "eval" / "info.csv"))
        assert (store / "runs" / "full" / "stages" / "prepare.json").is_file()


def test_local_store_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected where the real disk fills up: while writing the bytes."""
    store = LocalStore(tmp_path / "store")
    store.write_bytes("kept", b"old")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.storage.store.os.fsync", full)
    with pytest.raises(StoreError, match=r"cannot write .*/store/new: no space left on device"):
        store.write_bytes("new", b"x" * 1000)
    with pytest.raises(StoreError, match="no space left on device"):
        store.write_bytes("kept", b"new")
    monkeypatch.setattr("pipeline.storage.store.os.fsync", real_fsync)
    assert store.list() == ["kept"] and store.read_bytes("kept") == b"old"
    assert temp_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ corrupt state


LAST_TENSORS = "<the tensors file last.json names>"


def write_state(run: Store, epoch: int = 1) -> dict:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "generator": torch.Generator().get_state(),
        "epoch": epoch,
        "history": [{"epoch": 1, "val_macro_f1": 0.1}],
    }
    state["checkpoint_sha256"] = save_weights(
        run, "models/m/checkpoint.safetensors", model.state_dict()
    )
    save_state(run, "models/m/last", state)
    return state


def test_resume_state_accepts_a_whole_state(tmp_path: Path) -> None:
    run = LocalStore(tmp_path)
    assert resume_state(run, "m") is None  # nothing saved yet: from scratch, silently
    state = write_state(run)
    resumed = resume_state(run, "m")
    assert resumed is not None and resumed.epoch == 1
    assert torch.equal(resumed.model["weight"], state["model"]["weight"])
    assert resumed.scheduler is None and resumed.scaler is None  # "scaler" absent: None


def full_state(epochs: int = 2) -> TrainingState:
    """A training state with every part: scheduler and fp16 loss scaler included."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    scheduler.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    history = [{"epoch": e, "loss": 1.0 / e, "val_macro_f1": 0.1 * e} for e in range(1, epochs + 1)]
    return TrainingState(
        epoch=epochs,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        generator=torch.Generator().manual_seed(3).get_state(),
        history=history,
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
    )


def test_training_state_round_trips_through_safetensors_and_json(tmp_path: Path) -> None:
    run = LocalStore(tmp_path)
    state = full_state()
    save_state(run, "models/m/last", state.to_dict())
    on_disk = json.loads((tmp_path / "models/m/last.json").read_text())["state"]
    assert list(on_disk) == [
        "model", "optimizer", "scheduler", "generator", "scaler", "epoch", "history",
        "checkpoint_sha256",
    ]  # fmt: skip
    back = load_state(run, "models/m/last", TrainingState.from_dict)
    assert (back.epoch, back.history) == (state.epoch, state.history)
    assert back.model.keys() == state.model.keys()
    assert all(torch.equal(back.model[k], v) for k, v in state.model.items())
    assert torch.equal(back.generator, state.generator)
    assert back.scheduler == state.scheduler and back.scaler == state.scaler
    assert back.optimizer["param_groups"] == state.optimizer["param_groups"]
    moments = [s.optimizer["state"][0]["exp_avg"] for s in (back, state)]
    assert torch.equal(*moments)


@pytest.mark.parametrize("missing", TrainingState.REQUIRED)
def test_a_last_pt_missing_a_part_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    run = LocalStore(tmp_path)
    write_state(run)
    state = full_state(epochs=1).to_dict()
    del state[missing]
    with pytest.raises(ValueError, match="not a training state with model, optimizer, generator"):
        TrainingState.from_dict(state)
    save_state(run, "models/m/last", state)
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert f"{tmp_path}/models/m/last.json is unusable (ValueError: not a training state" in (
        caplog.text
    )
    assert "training model m from scratch" in caplog.text


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"epoch": "2"}, "epoch is a str, not a whole number"),
        ({"epoch": True}, "epoch is a bool, not a whole number"),
        ({"model": [1, 2]}, "model is a list, not a state dict"),
        ({"generator": [0, 1]}, "generator is a list, not a tensor"),
        ({"history": [1, 2]}, "history is a list, not a list of dicts"),
        ({"scheduler": 5}, "scheduler is a int, not a state dict or None"),
        ({"epoch": 3}, "epoch 3 but history of epochs [1, 2]"),
        ({"history": [{"epoch": 1}, {"epoch": 2}]}, "an epoch of the history has no val_macro_f1"),
    ],
)
def test_a_last_pt_with_a_wrong_part_is_refused(change: dict, problem: str) -> None:
    state = {**full_state().to_dict(), **change}
    with pytest.raises(ValueError, match=re.escape(f"not a training state: {problem}")):
        TrainingState.from_dict(state)


@pytest.mark.parametrize(
    ("key", "damage"),
    [
        (LAST_TENSORS, lambda b: b[: len(b) // 2]),  # truncated
        (LAST_TENSORS, lambda b: b"\x00" * len(b)),  # zeroed
        ("models/m/last.json", lambda b: b"not a checkpoint"),
        ("models/m/last.json", lambda b: b[: len(b) // 2]),
        ("models/m/checkpoint.safetensors", lambda b: b[:100]),  # the best weights are gone bad
    ],
    ids=["truncated", "zeroed", "garbage", "truncated-json", "bad-best-checkpoint"],
)
def test_corrupt_training_state_means_training_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str, damage: Callable[[bytes], bytes]
) -> None:
    run = LocalStore(tmp_path)
    write_state(run)
    if key == LAST_TENSORS:  # the file last.json names (last-<16 hex>.safetensors)
        key = next(iter(json.loads(run.read_bytes("models/m/last.json"))["sha256"]))
    run.write_bytes(key, damage(run.read_bytes(key)))
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert f"{tmp_path}/{key} is unusable" in caplog.text
    assert "training model m from scratch" in caplog.text


def test_training_state_with_missing_parts_means_training_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = LocalStore(tmp_path)
    write_state(run)
    save_state(run, "models/m/last", {"epoch": 3})
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert "not a training state" in caplog.text


def test_storage_errors_while_resuming_are_not_mistaken_for_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = LocalStore(tmp_path)
    write_state(run)

    def down(self: LocalStore, key: str) -> bytes:
        raise StoreError(f"cannot read {key}: endpoint down")

    monkeypatch.setattr(LocalStore, "read_bytes", down)
    with pytest.raises(StoreError, match="endpoint down"):
        resume_state(run, "m")  # progress is kept for when the store is back


@pytest.mark.slow
@pytest.mark.v100
def test_corrupt_checkpoint_is_detected_at_predict_and_retrained(
    tiny_dataset: Path, make_cfg: MakeCfg, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tiny_dataset, "run_id=corrupt", "train.num_threads=1")
    prepare(cfg)
    run = run_store(cfg)
    run.write_bytes("models/single/checkpoint.safetensors", b"\x08\x00\x00 half a file")
    run.write_bytes("models/single/last.json", b"\x00 not a training state")
    with pytest.raises(StageFailed) as info:
        predict_model(cfg, "single")
    message = str(info.value)
    assert f"{run.uri_of('models/single/checkpoint.safetensors')} cannot be loaded" in message
    assert "Retrain model single" in message and "stages/train-single.json" in message
    with pytest.raises(StageFailed):
        load_checkpoint(run, "single")

    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        metrics = train_model(cfg, "single")
    assert "last.json is unusable" in caplog.text
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert predict_model(cfg, "single")["eval"] > 0


class Killed(BaseException):
    """The job dying (SIGKILL): nothing after it runs, not even `finally` cleanups."""


class DiesAtWrite(LocalStore):
    """A local store whose job dies before its `ops`-th write or delete (0: the first)."""

    def __init__(self, root: Path, ops: int) -> None:
        super().__init__(root)
        self.ops = ops

    def tick(self) -> None:
        if self.ops == 0:
            raise Killed
        self.ops -= 1

    def write_bytes(self, key: str, data: bytes) -> None:
        self.tick()
        super().write_bytes(key, data)

    def delete(self, key: str) -> None:
        self.tick()
        super().delete(key)


def tiny_trainer() -> train_stage.Trainer:
    """A Trainer of a Linear model, as `save` and `ship_best` use it (no device, no data)."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    return train_stage.Trainer(None, model, model, optimizer, None, scaler, generator)  # type: ignore[arg-type]


def one_step(trainer: train_stage.Trainer) -> None:
    trainer.model(torch.ones(4, 3)).sum().backward()
    trainer.optimizer.step()


@pytest.mark.parametrize("best", [True, False], ids=["new-best", "no-better"])
def test_a_job_killed_between_any_two_writes_of_a_save_resumes_from_a_matching_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, best: bool
) -> None:
    """Slurm's SIGKILL (after a requeue's or preemption's grace time) can land between any two
    writes of an epoch's save, and between those that ship the best weights at the end. Killed
    before each write and delete in turn, the store always holds a training state whose files
    match: the epoch before or the epoch after, with its best weights, never "from scratch"."""
    name, record = "m", f"{tmp_path}/models/m/last.json"
    history = [
        {"epoch": 1, "val_macro_f1": 0.5},
        {"epoch": 2, "val_macro_f1": 0.6 if best else 0.4},
    ]
    ops, outcomes = 0, set()
    while True:
        root = tmp_path / f"kill-{ops}"
        trainer = tiny_trainer()
        one_step(trainer)
        train_stage.save(LocalStore(root), name, trainer, history[:1], best=True)
        one_step(trainer)
        dying = DiesAtWrite(root, ops)
        try:
            train_stage.save(dying, name, trainer, history, best=best)
            sha256 = trainer.checkpoint_sha256
            assert sha256 is not None
            train_stage.ship_best(dying, name, sha256, record)
        except Killed:
            pass
        else:
            break  # no write left to die before
        finally:
            ops += 1
        with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
            state = resume_state(LocalStore(root), name)
        assert state is not None, f"killed before write {ops - 1}: {caplog.text}"
        assert "from scratch" not in caplog.text
        outcomes.add(state.epoch)
    # every write and delete was a place to die; both sides of the save were seen
    assert ops >= 5 and outcomes == {1, 2}, (ops, outcomes)
    run = LocalStore(root)
    names = sorted(key.rpartition("/")[2] for key in run.list("models/m"))
    # nothing superseded is left behind: the shipped weights, the state and its one tensors file
    assert names[0::2] == ["checkpoint.safetensors", "last.json"] and len(names) == 3, names
    assert re.fullmatch(r"last-[0-9a-f]{16}\.safetensors", names[1]), names
