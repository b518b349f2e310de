"""Security (issue 8): nothing read from the store is unpickled, keys built from data cannot leave
the run prefix, credentials never reach logs or any file a run writes."""

from __future__ import annotations

import ast
import io
import logging
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from pipeline.commands.launch import main as launch_main
from pipeline.core.errors import ConfigError, StageFailed, StoreError
from pipeline.ml.checkpoints import load_checkpoint
from pipeline.ml.models import read_weights
from pipeline.orchestration.local import run_local
from pipeline.run.state import run_store
from pipeline.stages.prepare import prepare
from pipeline.stages.train import resume_state
from pipeline.storage.run_layout import legacy_checkpoint_key, legacy_last_key, model_key
from pipeline.storage.shards import shard_key
from pipeline.storage.store import LocalStore, S3Store, open_store
from tests.seaweed import upload_tree

MakeCfg = Callable[..., DictConfig]
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ no unpickling


class Payload:
    """Pickles to 'run this shell command' when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(marker: Path) -> bytes:
    sink = io.BytesIO()
    torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 1, "evil": Payload(marker)}, sink)
    return sink.getvalue()


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Control: a plain unpickler does run it, so the tests below would notice if we did."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(malicious_checkpoint(marker)), weights_only=False)
    assert marker.exists()


def test_malicious_last_pt_is_refused_not_executed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    run = LocalStore(tmp_path / "run")
    run.write_bytes(legacy_last_key("m"), malicious_checkpoint(marker))  # an older run's format
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.train"):
        assert resume_state(run, "m") is None
    assert "is unusable (UnpicklingError" in caplog.text
    assert not marker.exists()


def test_malicious_checkpoint_pt_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = LocalStore(tmp_path / "run")
    run.write_bytes(legacy_checkpoint_key("m"), malicious_checkpoint(marker))
    with pytest.raises(StageFailed, match="UnpicklingError"):
        load_checkpoint(run, "m")
    assert not marker.exists()


def test_malicious_model_weights_are_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(malicious_checkpoint(marker))
    with pytest.raises(ConfigError, match="not a readable state dict"):
        read_weights(str(weights))
    assert not marker.exists()


UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("marshal", "loads"),
    ("shelve", "open"),
}
UNSAFE_MODULES = {"pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def test_no_code_path_unpickles() -> None:
    """Every torch.load passes weights_only=True; no pickle-based loader is used anywhere."""
    problems: list[str] = []
    files = sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "jobs").rglob("*.py")])
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = lambda node: f"{path.relative_to(REPO)}:{node.lineno}"  # noqa: B023, E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                module = getattr(node, "module", None) or ""
                if {module.split(".")[0], *(n.split(".")[0] for n in names)} & UNSAFE_MODULES:
                    problems.append(f"{where(node)} imports a pickle-based module")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else ""
            call = (owner_name, node.func.attr)
            if call in UNSAFE_CALLS:
                problems.append(f"{where(node)} calls {'.'.join(call)}")
            keywords = {k.arg: k.value for k in node.keywords}
            if call == ("torch", "load"):
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where(node)} torch.load without weights_only=True")
            if call[1] == "load" and owner_name in ("np", "numpy"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and not value.value):
                    problems.append(f"{where(node)} np.load with allow_pickle")
    assert problems == []


# ------------------------------------------------------------------------------ key escapes


@pytest.mark.parametrize(
    "bad", ["../outside", "a/../../b", "%2e%2e", "..%2fx", "/etc", "x\\..\\y", "a//b", "x\x00"]
)
def test_keys_built_from_names_cannot_escape(bad: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="invalid key"):
        model_key(bad, "last.pt")
    if "/" in bad:
        with pytest.raises(StoreError, match="invalid key"):
            shard_key(bad, 0)
    with pytest.raises(StoreError, match="invalid key"):
        LocalStore(tmp_path).write_bytes(f"runs/x/{bad}", b"data")
    assert list(tmp_path.iterdir()) == []


def test_run_id_cannot_escape_the_store(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "deep" / "store"
    code = launch_main([f"data.root={tiny_dataset}", f"store.root={store}", "run_id=../../escaped"])
    assert code == 1
    assert "invalid key" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


def test_eval_ids_naming_other_files_are_not_read(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    info_path = dataset_copy / "eval" / "info.csv"
    info = pd.read_csv(info_path, dtype=str, keep_default_na=False)
    escapes = ["../../train/train.csv", "/etc/passwd", "..%2f..%2ftrain%2ftrain.csv"]
    extra = pd.DataFrame({"ImageID": escapes, "ans": ""})
    pd.concat([info, extra], ignore_index=True).to_csv(info_path, index=False)
    cfg = make_cfg(dataset_copy, "data.allow_missing_eval=true")
    prepare(cfg)
    run = run_store(cfg)
    index = pd.read_parquet(io.BytesIO(run.read_bytes("index.parquet")))
    bad = pd.read_csv(io.BytesIO(run.read_bytes("bad_inputs.csv")))
    assert not set(index["image_id"]) & set(escapes)
    reasons = dict(zip(bad["path"], bad["reason"], strict=True))
    for image_id in escapes:
        assert reasons[f"eval/images/{image_id}"] == "listed in eval/info.csv but missing"


@pytest.mark.s3
def test_unsafe_object_keys_in_an_s3_data_root_are_reported_not_read(
    tiny_dataset: Path, make_cfg: MakeCfg, s3_root: str
) -> None:
    data = upload_tree(tiny_dataset, f"{s3_root}/data")
    # S3 keys are free text: an object whose name decodes to a path outside eval/images/
    unsafe = "..%2f..%2fsecret.jpg"
    assert isinstance(data, S3Store)
    data.client.put_object(Bucket=data.bucket, Key=f"root/data/eval/images/{unsafe}", Body=b"x")
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv", dtype=str, keep_default_na=False)
    listed = pd.concat([info, pd.DataFrame({"ImageID": [unsafe], "ans": [""]})])
    data.write_bytes("eval/info.csv", listed.to_csv(index=False).encode())
    cfg = make_cfg(f"{s3_root}/data", "data.allow_missing_eval=true", store=f"{s3_root}/store")
    summary = prepare(cfg)
    run = run_store(cfg)
    bad = pd.read_csv(io.BytesIO(run.read_bytes("bad_inputs.csv")))
    reasons = dict(zip(bad["path"], bad["reason"], strict=True))
    assert reasons[f"eval/images/{unsafe}"].startswith("unsafe object key, not read")
    assert summary["images"]["eval"] == len(info)


# ------------------------------------------------------------------------------ credentials


@pytest.mark.slow
@pytest.mark.s3
def test_credentials_never_reach_logs_or_any_written_file(
    tiny_dataset: Path,
    make_cfg: MakeCfg,
    s3_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secrets = {
        "AWS_SECRET_ACCESS_KEY": f"awsSecret{uuid.uuid4().hex}",
        "WANDB_API_KEY": f"{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}",  # 40 characters, as W&B's
        "AWS_SESSION_TOKEN": f"awsToken{uuid.uuid4().hex}",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key but no network: recorded offline
    # The jobs log at INFO (pipeline.core.logs.setup_logging); our own code is captured at DEBUG.
    # (botocore's DEBUG output prints request headers, the session token among them: never enable
    # DEBUG for botocore in production.)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pipeline")
    tracking = tmp_path / "wandb"
    cfg = make_cfg(
        tiny_dataset,
        "train.num_threads=1",
        "tracking.mode=auto",
        f"tracking.dir={tracking}",
        store=f"{s3_root}/store",
    )
    run_local(cfg)
    out, err = capfd.readouterr()

    store = open_store(s3_root)
    written = {key: store.read_bytes(key) for key in store.list()}
    assert {"store/latest.json", f"store/runs/{cfg.run_id}/manifest.json"} <= set(written)
    assert f"store/runs/{cfg.run_id}/vote.json" in written
    local = {p: p.read_bytes() for p in tracking.rglob("*") if p.is_file()}
    assert any(p.suffix == ".wandb" for p in local)  # W&B did record the run
    for name, value in secrets.items():
        needle = value.encode()
        assert value not in caplog.text, f"{name} in the log"
        assert value not in out and value not in err, f"{name} on stdout/stderr"
        leaks = [k for k, data in {**written, **local}.items() if needle in data]
        assert leaks == [], f"{name} written to {leaks}"
