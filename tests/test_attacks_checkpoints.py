"""Issue 26, finding 2: checkpoints in a bucket others can write. torch.load's weights_only
unpickler is bypassable in the torch the V100 route and the image pin (2.7.1, GHSA-63cw-57p8-fm3p),
so a run writes no pickle (safetensors + JSON), reads none for its own files, records the SHA-256
of its checkpoints and checks it on every read; an older run's .pt still loads, with a warning."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from omegaconf import DictConfig

import pipeline.ml.checkpoints as ckpt
from pipeline.commands.pull import wanted
from pipeline.core.config import load_config
from pipeline.core.errors import StageFailed
from pipeline.ml.models import build_model
from pipeline.ml.predictor import predictor_answers, run_predictor
from pipeline.ml.training_state import TrainingState
from pipeline.orchestration.local import run_local
from pipeline.run.history import prune_checkpoints
from pipeline.run.state import read_index, run_store
from pipeline.stages import train as train_stage
from pipeline.stages.predict import predict_model
from pipeline.stages.prepare import prepare
from pipeline.stages.train import resume_state, train_model
from pipeline.storage.store import LocalStore, Store
from tests.conftest import TINY_OVERRIDES

MakeCfg = Callable[..., DictConfig]
REPO = Path(__file__).resolve().parents[1]
MODEL = "single"


class Payload:
    """Pickles to 'run this shell command' when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def malicious_pt(marker: Path) -> bytes:
    sink = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, sink)
    return sink.getvalue()


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way to unpickle (torch.load included) raises while the test runs."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    for owner, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                        (torch, "load"), (torch.serialization, "load")):  # fmt: skip
        monkeypatch.setattr(owner, name, refuse)


# ------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def finished(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """A finished single-model run in a local store (copy it before changing it)."""
    store = tmp_path_factory.mktemp("ckpt-store") / "store"
    cfg = load_config([f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES])
    run_local(cfg)
    return cfg


def copy_of(finished: DictConfig, tmp_path: Path) -> tuple[DictConfig, Store]:
    """The finished run's store copied under tmp_path: its config and run store."""
    store = tmp_path / "store"
    shutil.copytree(str(finished.store.root), store, symlinks=True)
    cfg = finished.copy()
    cfg.store.root = str(store)
    return cfg, run_store(cfg)


def pickle_streams(path: Path) -> Iterator[str]:
    """What in the file `path` is a pickle: a zip member (torch.save's data.pkl) or the file
    itself starting with the PROTO opcode of protocol 2 to 5."""
    blob = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".pkl") or is_pickle(archive.read(member)):
                    yield f"{path}:{member}"
    if is_pickle(blob):
        yield str(path)


def is_pickle(blob: bytes) -> bool:
    """Whether `blob` starts with pickle's PROTO opcode, protocol 2 to 5 (torch.save's data.pkl,
    pickle.dumps)."""
    return blob[:1] == b"\x80" and blob[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


@pytest.mark.slow
def test_a_run_writes_no_pickle(finished: DictConfig) -> None:
    """(a) Every file a run wrote (checkpoints, training state, answers, records) holds no
    pickle: nothing it would read back later can be a code-execution payload."""
    files = [p for p in Path(str(finished.store.root)).rglob("*") if p.is_file()]
    assert len(files) > 10
    assert [s for p in files for s in pickle_streams(p)] == []
    models = Path(str(finished.store.root)) / "runs" / str(finished.run_id) / "models" / MODEL
    names = sorted(p.name for p in models.iterdir())
    # the best-so-far weights were shipped as checkpoint.safetensors and deleted; one tensors file
    assert names[0::2] == ["checkpoint.safetensors", "last.json"] and len(names) == 4, names
    assert re.fullmatch(r"last-[0-9a-f]{16}\.safetensors", names[1]) and names[3] == "metrics.json"


@pytest.mark.slow
def test_the_train_records_name_the_sha256_of_the_checkpoint(finished: DictConfig) -> None:
    """Where the hashes live: the model's metrics.json (train's record, which predict and the
    gate check) names the checkpoint's SHA-256; last.json names its tensors file's and, in its
    state, the checkpoint's (which a resume checks)."""
    run = run_store(finished)
    key = f"models/{MODEL}/checkpoint.safetensors"
    digest = hashlib.sha256(run.read_bytes(key)).hexdigest()
    assert run.read_json(f"models/{MODEL}/metrics.json")["sha256"] == {key: digest}
    last = json.loads(run.read_bytes(f"models/{MODEL}/last.json"))
    assert last["state"]["checkpoint_sha256"] == digest
    ((tensors, recorded),) = last["sha256"].items()
    assert recorded == hashlib.sha256(run.read_bytes(tensors)).hexdigest()
    assert tensors == f"models/{MODEL}/last-{recorded[:16]}.safetensors"  # named by its content


@pytest.mark.slow
def test_predict_and_the_gate_load_a_new_run_without_unpickling(
    finished: DictConfig, tmp_path: Path, no_unpickling: None
) -> None:
    """(b) A malicious checkpoint.pt / last.pt dropped beside a new run's files is never read:
    predict, the publish gate's predictor and a resume read the safetensors files only."""
    cfg, run = copy_of(finished, tmp_path)
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "last.pt"):
        run.write_bytes(f"models/{MODEL}/{name}", malicious_pt(marker))
    assert predict_model(cfg, MODEL)["eval"] > 0
    index = read_index(run)
    rows = index[index["split"] == "eval"]
    predictor = run_predictor(str(cfg.run_id), run)
    _, answers, _ = predictor_answers(
        cfg,
        predictor,
        run,
        rows["image_id"].tolist(),
        dict(zip(rows["image_id"], rows["shard"], strict=True)),
    )
    assert len(answers) == len(rows)
    assert resume_state(run, MODEL) is not None
    assert not marker.exists()


def flip_last_byte(run: Store, key: str) -> None:
    """One byte of the tensor data changed: still a well-formed safetensors file."""
    blob = bytearray(run.read_bytes(key))
    blob[-1] ^= 0x01
    run.write_bytes(key, bytes(blob))


@pytest.mark.slow
def test_a_checkpoint_changed_after_training_is_refused_at_predict_and_the_gate(
    finished: DictConfig, tmp_path: Path
) -> None:
    """(c) One byte of a new run's checkpoint changed in the bucket: predict and the publish
    gate's predictor refuse it, naming the file and the record, and say how to retrain."""
    cfg, run = copy_of(finished, tmp_path)
    key = f"models/{MODEL}/checkpoint.safetensors"
    flip_last_byte(run, key)
    for load in (
        lambda: predict_model(cfg, MODEL),
        lambda: ckpt.load_checkpoint(run_predictor(str(cfg.run_id), run).run, MODEL),
    ):
        with pytest.raises(StageFailed) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{run.uri_of(key)} cannot be loaded (StateFileError: sha256 ")
        assert f"recorded in {run.uri_of(f'models/{MODEL}/metrics.json')}" in message
        assert "the file was changed after training" in message
        assert f"Retrain model {MODEL}" in message and f"stages/train-{MODEL}.json" in message


@pytest.mark.slow
def test_an_old_runs_checkpoint_pt_still_predicts_with_a_warning(
    finished: DictConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(e) A run made before safetensors (only checkpoint.pt, no sha256 recorded) still
    predicts and still answers as a champion, with a WARNING naming the legacy file."""
    cfg, run = copy_of(finished, tmp_path)
    state = ckpt.load_checkpoint(run, MODEL)
    for name in ("checkpoint.safetensors", "last.safetensors", "last.json"):
        run.delete(f"models/{MODEL}/{name}")
    metrics = run.read_json(f"models/{MODEL}/metrics.json")
    del metrics["sha256"]
    run.write_json(f"models/{MODEL}/metrics.json", metrics)
    sink = io.BytesIO()
    torch.save(state, sink)  # the old way
    run.write_bytes(f"models/{MODEL}/checkpoint.pt", sink.getvalue())

    with caplog.at_level(logging.WARNING, logger="pipeline.ml.checkpoints"):
        assert predict_model(cfg, MODEL)["eval"] > 0
        predictor = run_predictor(str(cfg.run_id), run)
        index = read_index(run)
        rows = index[index["split"] == "eval"]
        ids = rows["image_id"].tolist()
        _, answers, _ = predictor_answers(
            cfg, predictor, run, ids, dict(zip(rows["image_id"], rows["shard"], strict=True))
        )
    assert len(answers) == len(ids)
    legacy = run.uri_of(f"models/{MODEL}/checkpoint.pt")
    assert f"{legacy} is in the legacy pickle-based format (torch.save)" in caplog.text
    assert "GHSA-63cw-57p8-fm3p" in caplog.text


class Preempted(Exception):
    """The job stopped right after an epoch's last.* was written."""


def timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


@pytest.mark.slow
def test_training_resumed_from_last_safetensors_continues_exactly(
    tiny_dataset: Path, make_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(f) Three epochs in one job, and three epochs in a job stopped after epoch 1 then
    restarted: the same losses, scores and best weights (model, Adam moments and step counts,
    cosine schedule and batch-order generator all restored exactly from last.*)."""
    overrides = ("train.epochs=3", "train.num_threads=1")
    whole, split = (make_cfg(tiny_dataset, f"run_id={r}", *overrides) for r in ("whole", "split"))
    prepare(whole)
    prepare(split)
    first = train_model(whole, MODEL)
    save = train_stage.save

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        save(*args, **kwargs)
        raise Preempted

    monkeypatch.setattr(train_stage, "save", save_then_stop)
    with pytest.raises(Preempted):
        train_model(split, MODEL)
    monkeypatch.setattr(train_stage, "save", save)
    assert ckpt.load_state(run_store(split), f"models/{MODEL}/last", dict)["epoch"] == 1
    resumed = train_model(split, MODEL)
    assert timeless(resumed["history"]) == timeless(first["history"])
    assert resumed["val"] == first["val"]
    ours, theirs = (ckpt.load_checkpoint(run_store(c), MODEL) for c in (split, whole))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ------------------------------------------------------------------------------ files alone


def small_state(run: Store, name: str = "m") -> dict[str, Any]:
    """A trained Linear's training state written the way train writes it (and metrics.json)."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    scheduler.step()
    key = f"models/{name}/checkpoint.safetensors"
    digest = ckpt.save_weights(run, key, model.state_dict())
    state = TrainingState(
        epoch=1, model=model.state_dict(), optimizer=opt.state_dict(),
        generator=torch.Generator().manual_seed(1).get_state(),
        history=[{"epoch": 1, "loss": 0.5, "val_macro_f1": float("nan")}],
        scheduler=scheduler.state_dict(),
        scaler=torch.amp.GradScaler("cpu", init_scale=float("inf")).state_dict(),
        checkpoint_sha256=digest,
    ).to_dict()  # fmt: skip
    ckpt.save_state(run, f"models/{name}/last", state)
    run.write_json(f"models/{name}/metrics.json", {"sha256": {key: digest}})
    return state


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types (tensors by dtype, shape and content; nan equals nan)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


def sorted_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict in key order (a safetensors file lists its tensors sorted)."""
    return dict(sorted(state.items()))


def test_a_training_state_round_trips_exactly_without_unpickling(
    tmp_path: Path, no_unpickling: None
) -> None:
    """(b) last.safetensors + last.json: int-keyed optimizer state, step tensors, the Adam
    betas tuple, inf and nan, scheduler, scaler and generator come back exactly, unpickled."""
    run = LocalStore(tmp_path)
    state = small_state(run)
    back = ckpt.load_state(run, "models/m/last", lambda value: value)
    assert same(back, state)
    resumed = resume_state(run, "m")
    assert resumed is not None and resumed.checkpoint_sha256 == state["checkpoint_sha256"]
    assert same(sorted_dict(ckpt.load_checkpoint(run, "m")), sorted_dict(state["model"]))


def test_a_channels_last_adam_state_steps_exactly_after_a_round_trip(tmp_path: Path) -> None:
    """The moments of channels_last weights keep their strides: fused Adam's next step is the
    same as without saving (with contiguous moments it is not)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(conv.parameters(), fused=True)
    images = torch.randn(2, 3, 8, 8)
    conv(images).sum().backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    ckpt.save_state(LocalStore(tmp_path), "s", saved)

    def next_weights(state: dict[str, Any]) -> torch.Tensor:
        model = copy.deepcopy(conv)
        optimizer = torch.optim.Adam(model.parameters(), fused=True)
        optimizer.load_state_dict(copy.deepcopy(state))
        optimizer.zero_grad()
        model(images).sum().backward()
        optimizer.step()
        return model.weight.detach()

    back = ckpt.load_state(LocalStore(tmp_path), "s", lambda value: value)
    assert back["state"][0]["exp_avg"].stride() == saved["state"][0]["exp_avg"].stride()
    assert torch.equal(next_weights(back), next_weights(saved))


def test_a_poisoned_pt_beside_new_files_is_never_read(tmp_path: Path, no_unpickling: None) -> None:
    """(b) checkpoint.pt / last.pt planted in a run that has the new files: ignored."""
    run = LocalStore(tmp_path)
    state = small_state(run)
    marker = tmp_path / "pwned"
    run.write_bytes("models/m/checkpoint.pt", malicious_pt(marker))
    run.write_bytes("models/m/last.pt", malicious_pt(marker))
    assert same(sorted_dict(ckpt.load_checkpoint(run, "m")), sorted_dict(state["model"]))
    assert resume_state(run, "m") is not None
    assert not marker.exists()


def last_tensors(run: Store, name: str = "m") -> str:
    """The key of the tensors file model `name`'s last.json names."""
    record = json.loads(run.read_bytes(f"models/{name}/last.json"))
    return str(next(iter(record["sha256"])))


@pytest.mark.parametrize("file", ["checkpoint", "last"])
def test_a_tampered_safetensors_is_refused_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_unpickling: None, file: str
) -> None:
    """(c) One byte changed (the file still parses): the SHA-256 check refuses it. A resume
    warns naming the file and trains from scratch."""
    run = LocalStore(tmp_path)
    small_state(run)
    key = "models/m/checkpoint.safetensors" if file == "checkpoint" else last_tensors(run)
    flip_last_byte(run, key)
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert f"{tmp_path}/{key} is unusable (StateFileError: sha256 " in caplog.text
    assert f"recorded in {tmp_path}/models/m/last.json: the file was changed" in caplog.text
    assert "training model m from scratch" in caplog.text


def test_a_pickle_renamed_to_safetensors_is_refused_unread(
    tmp_path: Path, no_unpickling: None
) -> None:
    """(b, c) A torch.save payload written as checkpoint.safetensors: refused by its SHA-256."""
    run = LocalStore(tmp_path)
    small_state(run)
    marker = tmp_path / "pwned"
    run.write_bytes("models/m/checkpoint.safetensors", malicious_pt(marker))
    with pytest.raises(StageFailed, match=r"checkpoint.safetensors cannot be loaded .*sha256"):
        ckpt.load_checkpoint(run, "m")
    assert not marker.exists()


def test_a_checkpoint_without_a_recorded_sha256_is_refused(tmp_path: Path) -> None:
    """A checkpoint.safetensors whose record (metrics.json) names no SHA-256: refused."""
    run = LocalStore(tmp_path)
    small_state(run)
    run.write_json("models/m/metrics.json", {"val": {}})
    with pytest.raises(StageFailed, match=r"metrics.json records no sha256 of it"):
        ckpt.load_checkpoint(run, "m")
    run.delete("models/m/metrics.json")
    with pytest.raises(StageFailed, match=r"no sha256 of it is recorded: .*json is missing"):
        ckpt.load_checkpoint(run, "m")


def skeleton(run: Store) -> dict[str, Any]:
    return dict(json.loads(run.read_bytes("models/m/last.json")))


def digests(record: dict[str, Any]) -> list[str]:
    """The SHA-256 values a state's JSON record names."""
    return list(record["sha256"].values())


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "unknown tensor": (
        lambda r: r["state"]["model"].update(weight={"__tensor__": "../etc/passwd"}),
        "state.model.weight names tensor '../etc/passwd', which is not in the file",
    ),
    "tensor name of a wrong type": (
        lambda r: r["state"]["model"].update(weight={"__tensor__": 3}),
        "state.model.weight names tensor 3, which is not in the file",
    ),
    "tensor dims not an order": (
        lambda r: r["state"]["model"].update(weight={"__tensor__": ["model/weight", [0, 0]]}),
        "state.model.weight: [0, 0] is not an order of the 2 dimensions",
    ),
    "unknown float": (
        lambda r: r["state"].update(epoch={"__float__": "1e999"}),
        "state.epoch: '1e999' is not one of ['inf', '-inf', 'nan']",
    ),
    "items not pairs": (
        lambda r: r["state"]["optimizer"].update(state={"__items__": [[0]]}),
        "state.optimizer.state: item 0 is not a [key, value] pair",
    ),
    "a list as a key": (
        lambda r: r["state"]["optimizer"].update(state={"__items__": [[[0], 1]]}),
        "key 0 ([0]) is not a new number, string or None",
    ),
    "marker mixed with keys": (
        lambda r: r["state"].update(epoch={"__tuple__": [], "x": 1}),
        "state.epoch mixes a marker",
    ),
    "wrong format": (lambda r: r.update(format="torch"), "format 'torch', not 'pipeline.state/1'"),
    "no sha256": (lambda r: r.pop("sha256"), "its sha256 must name one tensors file"),
    "sha256 not hex": (
        lambda r: r.update(sha256={"models/m/last-xxxxxxxxxxxxxxxx.safetensors": "x" * 64}),
        "its sha256 must name one tensors file, models/m/last-<16 hex>.safetensors",
    ),
    "a tensors file elsewhere": (
        lambda r: r.update(sha256={f"../../x-{d[:16]}.safetensors": d for d in digests(r)}),
        "its sha256 must name one tensors file, models/m/last-<16 hex>.safetensors",
    ),
    "a tensors file of another digest": (
        lambda r: r.update(sha256={f"models/m/last-{'0' * 16}.safetensors": d for d in digests(r)}),
        "the hex digits beginning its SHA-256",
    ),
    "two tensors files": (
        lambda r: r["sha256"].update({"models/m/checkpoint.safetensors": "0" * 64}),
        "its sha256 must name one tensors file",
    ),
    "a tensor never named": (
        lambda r: r["state"].update(generator=[1]),
        ".safetensors holds tensors it never names: ['generator']",
    ),
    "a string epoch": (
        lambda r: r["state"].update(epoch="1"),
        "not a training state: epoch is a str, not a whole number",
    ),
    "checkpoint sha256 not hex": (
        lambda r: r["state"].update(checkpoint_sha256="'; rm -rf /"),
        "checkpoint_sha256 is a str, not 64 hex digits or None",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_skeleton_is_refused_with_a_clear_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_unpickling: None, case: str
) -> None:
    """(d) last.json edited in the bucket (names, types, markers, format): refused, the
    warning names last.json and says what is wrong; training restarts from scratch."""
    run = LocalStore(tmp_path)
    small_state(run)
    record = skeleton(run)
    change, problem = MALFORMED[case]
    change(record)
    run.write_bytes("models/m/last.json", json.dumps(record).encode())
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert f"{tmp_path}/models/m/last.json is unusable (" in caplog.text
    assert problem in caplog.text
    assert "training model m from scratch" in caplog.text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"format": NaN}', "NaN is not JSON"),
        (b'{"format": "pipeline.state/1", "format": "x"}', "an object has a key twice"),
        (b"\xff\xfe", "UnicodeDecodeError"),
        (b"[1, 2]", "not a saved state: format 'list'"),
    ],
)
def test_a_last_json_that_is_not_strict_json_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: bytes, problem: str
) -> None:
    run = LocalStore(tmp_path)
    small_state(run)
    run.write_bytes("models/m/last.json", text)
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert f"{tmp_path}/models/m/last.json is unusable (" in caplog.text and problem in caplog.text


def test_anything_but_plain_data_and_tensors_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"model/layer is a Linear: only tensors, dicts"):
        ckpt.save_state(LocalStore(tmp_path), "s", {"model": {"layer": torch.nn.Linear(2, 2)}})


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path: Path) -> None:
    """safetensors refuses shared storage: tied or strided tensors are saved as copies."""
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"a": base, "tied": base, "t": base.t(), "row": base[1]}
    run = LocalStore(tmp_path)
    digest = ckpt.save_weights(run, "w.safetensors", tensors)
    back = ckpt.read_tensors(run, "w.safetensors", digest, "test")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


# ------------------------------------------------------------------------------ weights, retention


def test_pretrained_safetensors_weights_load_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """model.weights: a .pth is read the legacy way with a warning giving a one-line conversion;
    that command's .safetensors then loads with nothing unpickled."""
    source = torchvision.models.resnet18(num_classes=1000)
    (tmp_path / "resnet18.pth").write_bytes(b"")
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    spec = {"arch": "resnet18", "task": "all", "freeze": [], "freeze_if_pretrained": []}
    with caplog.at_level(logging.WARNING, logger="pipeline.ml.models"):
        build_model(DictConfig({**spec, "weights": str(tmp_path / "resnet18.pth")}), 18)
    assert "are a pickle-based torch file" in caplog.text and "GHSA-63cw-57p8-fm3p" in caplog.text
    command = caplog.text.split("set model.weights to the new file: ", 1)[1].splitlines()[0]
    argv = shlex.split(command)
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    caplog.clear()
    weights = str(tmp_path / "resnet18.safetensors")
    with caplog.at_level(logging.WARNING, logger="pipeline.ml.models"):
        model = build_model(DictConfig({**spec, "weights": weights}), 18)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert "pickle-based" not in caplog.text


def test_retention_and_pull_know_the_new_checkpoint_files(tmp_path: Path) -> None:
    """Retention deletes the new files (and the legacy ones) of old runs; pull leaves them."""
    root = LocalStore(tmp_path)
    ids = [f"2026010{d}T000000Z-abcdef" for d in (1, 2)]
    names = ["checkpoint.safetensors", "last.json", "checkpoint.pt", "last.pt",
             "last-0123456789abcdef.safetensors", "best-0123456789abcdef.safetensors"]  # fmt: skip
    for run_id in ids:
        for name in [*names, "metrics.json"]:
            root.write_bytes(f"runs/{run_id}/models/a/{name}", b"x")
    root.write_json("latest.json", {"run_id": ids[1]})
    deleted = prune_checkpoints(root, keep=1)
    assert sorted(deleted) == sorted(f"runs/{ids[0]}/models/a/{n}" for n in names)
    assert root.list(f"runs/{ids[0]}") == [f"runs/{ids[0]}/models/a/metrics.json"]
    assert [n for n in names if wanted(f"models/a/{n}", "all")] == []
    assert wanted("models/a/metrics.json", "all")
