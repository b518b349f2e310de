"""`python -m pipeline.infer`: new photos classified by a finished run, locally, on S3 and as the
command of the Kubernetes Job it renders; bad photos reported, photos seen before skipped.

The Kubernetes Job is rendered for real and its container command run here, on this machine
(no Kubernetes API server can run here: see tests/test_k8s.py for the fakes)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
import yaml
from omegaconf import DictConfig

from pipeline.commands.infer import main as infer_main
from pipeline.core.config import load_config
from pipeline.orchestration.local import run_local
from pipeline.run.answers import SCHEMA
from pipeline.run.history import published_files
from pipeline.run.state import root_store, run_store
from tests.conftest import TINY_OVERRIDES
from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedServer, upload_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """A finished single-model run in a local store."""
    store = tmp_path_factory.mktemp("infer-store") / "store"
    cfg = load_config([f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES])
    run_local(cfg)
    return cfg


def new_photos(tiny_dataset: Path, folder: Path) -> Path:
    """The eval photos as a folder of 'new' photos (in a subfolder: the search is recursive)."""
    shutil.copytree(tiny_dataset / "eval" / "images", folder / "day1")
    return folder


def batch_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "predictions").glob("*"))


@pytest.mark.slow
def test_new_photos_get_the_runs_answers_once(
    finished: DictConfig, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = new_photos(tiny_dataset, tmp_path / "new")
    (photos / "day1" / ".DS_Store").write_bytes(b"junk")  # skipped silently
    (photos / "day1" / "notes.txt").write_text("not a photo")
    (photos / "day1" / "empty.jpg").write_bytes(b"")
    good = next((photos / "day1").glob("*.jpg"))
    (photos / "day1" / "cut.jpg").write_bytes(good.read_bytes()[:300])
    out = tmp_path / "answers"
    args = [f"infer.input={photos}", f"infer.output={out}", f"store.root={finished.store.root}"]
    assert infer_main(args) == 0
    printed = capsys.readouterr().out
    submission = pd.read_csv(io.BytesIO(run_store(finished).read_bytes("submission.csv")))
    n = len(submission)
    assert f"infer: {n} photo(s) classified by run {finished.run_id}" in printed
    assert "3 bad" in printed

    (csv,) = (out / "classes").glob("*.csv")
    got = pd.read_csv(csv)
    assert list(got.columns) == ["image", "class", "mask", "gender", "age_group"]
    # the same photos, the same models: the answers the run gave in its submission
    expected = submission.assign(image="day1/" + submission["ImageID"]).set_index("image")["ans"]
    assert got.set_index("image")["class"].sort_index().equals(expected.sort_index())
    assert set(got["mask"]) <= {"wear", "incorrect", "not_worn"}
    table = pd.read_parquet(out / "predictions" / f"{csv.stem}.parquet")
    assert list(table.columns) == SCHEMA.names
    assert set(table["split"]) == {"new"} and set(table["run_id"]) == {finished.run_id}
    assert sorted(table["kind"].unique()) == ["candidate", "vote"]
    assert table.query("kind == 'vote'")["class"].tolist() == got["class"].tolist()
    assert table["label"].isna().all()
    bad = pd.read_csv(out / "bad_inputs" / csv.name)
    reasons = dict(zip(bad["path"], bad["reason"], strict=True))
    assert set(reasons) == {"day1/notes.txt", "day1/empty.jpg", "day1/cut.jpg"}
    assert "empty file" in reasons["day1/empty.jpg"] and "extension" in reasons["day1/notes.txt"]
    assert "not a readable image" in reasons["day1/cut.jpg"]

    # the same folder again: nothing classified twice
    before = batch_files(out)
    assert infer_main(args) == 0
    assert f"0 photo(s) classified by run {finished.run_id}, {n} already classified" in (
        capsys.readouterr().out
    )
    assert batch_files(out) == before
    # one new photo (new content) among them: only it is classified
    person = sorted(os.listdir(tiny_dataset / "train" / "images"))[0]
    shutil.copy(tiny_dataset / "train" / "images" / person / "mask1.jpg", photos / "fresh.jpg")
    assert infer_main(args) == 0
    assert "1 photo(s) classified" in capsys.readouterr().out
    seen = pd.read_parquet(out / "seen.parquet")
    assert len(seen) == n + 1 and seen["content_sha256"].is_unique


def test_infer_refuses_what_it_cannot_do(
    finished: DictConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"store.root={finished.store.root}"
    assert infer_main([store]) == 1
    assert "infer.input is not set" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert infer_main([store, f"infer.input={tmp_path / 'empty'}"]) == 1
    assert "no photos under infer.input=" in capsys.readouterr().err
    photos = f"infer.input={tmp_path / 'empty'}"
    assert infer_main([f"store.root={tmp_path / 'nostore'}", photos]) == 1
    err = capsys.readouterr().err
    assert "no finished run under store.root=" in err and "latest.json is missing" in err
    assert infer_main([store, photos, "run_id=20990101T000000Z-000000"]) == 1
    assert "has no finished vote" in capsys.readouterr().err
    assert infer_main(["--cluster", "k8s", "--dry-run", store, photos]) == 1
    assert "is a local folder: Kubernetes pods" in capsys.readouterr().err
    # a run whose checkpoints retention deleted (store.keep_checkpoints)
    pruned = tmp_path / "pruned"
    shutil.copytree(Path(str(finished.store.root)), pruned, symlinks=True)
    models = pruned / "runs" / str(finished.run_id) / "models"
    (models / "single" / "checkpoint.safetensors").unlink()
    assert infer_main([f"store.root={pruned}", photos]) == 1  # said before any photo is read
    err = capsys.readouterr().err
    assert "no longer has the checkpoints of single" in err and "keep_checkpoints" in err


@pytest.mark.slow
@pytest.mark.s3
def test_on_s3_read_as_a_dataset_and_run_as_the_rendered_kubernetes_job(
    finished: DictConfig, tiny_dataset: Path, tmp_path: Path, s3_root: str,
    seaweed: SeaweedServer, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # the finished run copied to S3 as it is (its latest.json and every file)
    store = f"{s3_root}/store"
    upload_tree(Path(str(finished.store.root)), store)
    bucket_prefix = store.removeprefix("s3://")
    photos = f"{s3_root}/incoming"
    upload_tree(new_photos(tiny_dataset, tmp_path / "new"), photos)

    # 1. the run's answers read as one dataset straight from S3 (pyarrow's own S3 client)
    fs = pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
                           endpoint_override=seaweed.endpoint, scheme="http")  # fmt: skip
    answers = f"{bucket_prefix}/runs/{finished.run_id}/predictions"
    table = ds.dataset(answers, filesystem=fs, format="parquet").to_table()
    frame = table.to_pandas()
    index = pd.read_parquet(io.BytesIO(run_store(finished).read_bytes("index.parquet")))
    images = {s: int((index["split"] == s).sum()) for s in ("val", "eval", "holdout")}
    # one model, one candidate, the vote: each answers every val, eval and holdout image once
    assert frame.groupby(["kind", "split"]).size().to_dict() == {
        (k, s): n for k in ("candidate", "model", "vote") for s, n in images.items()
    }
    assert set(frame["run_id"]) == {finished.run_id}
    assert pd.read_parquet(answers, filesystem=fs).shape == frame.shape
    latest = json.loads(root_store(finished).read_bytes("latest.json"))
    assert latest["files"]["predictions"].endswith(f"/runs/{finished.run_id}/predictions/")

    # 2. the infer Job as `--cluster k8s --dry-run` renders it, its command run here
    assert infer_main(["--cluster", "k8s", "--dry-run", f"store.root={store}",
                       f"infer.input={photos}", "train.num_threads=2"]) == 0  # fmt: skip
    (job,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert job["kind"] == "Job" and job["metadata"]["labels"]["masksuite/stage"] == "infer"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "jobs.infer"]
    assert f"run_id={finished.run_id}" in command  # the run chosen at launch, pinned
    env = {**os.environ, **seaweed.env()}
    for _ in range(2):  # twice: the second finds nothing new
        proc = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 photo(s) classified" in proc.stdout and "already classified" in proc.stdout
    result = ds.dataset(f"{bucket_prefix}/infer/incoming/predictions", filesystem=fs,
                        format="parquet").to_table().to_pandas()  # fmt: skip
    submission = pd.read_csv(io.BytesIO(run_store(finished).read_bytes("submission.csv")))
    voted = result.query("kind == 'vote'").set_index("image_id")["class"].sort_index()
    expected = submission.assign(image_id="day1/" + submission["ImageID"])
    assert voted.equals(expected.set_index("image_id")["ans"].sort_index().astype(voted.dtype))


def readme_examples() -> list[tuple[str, str]]:
    """The (language, code) blocks of docs/results.md ("Reading the results"), in order."""
    text = (ROOT / "docs" / "results.md").read_text()
    return [(lang, code) for lang, code in re.findall(r"```(\w+)\n(.*?)```", text, re.S)
            if lang in ("python", "bash")]  # fmt: skip


@pytest.mark.slow
@pytest.mark.s3
def test_readme_reading_examples_run_as_written(
    finished: DictConfig, tmp_path: Path, s3_root: str, seaweed: SeaweedServer
) -> None:
    # docs/results.md's setting: `make demo`'s store at outputs/store, and the same store on S3
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "store").symlink_to(Path(str(finished.store.root)))
    store = f"{s3_root}/store"
    s3_store = upload_tree(Path(str(finished.store.root)), store)
    # latest.json as a run on S3 writes it: its files' URIs on S3
    latest = json.loads(s3_store.read_bytes("latest.json"))
    latest["files"] = published_files(s3_store.child(f"runs/{finished.run_id}"))
    assert latest["files"]["predictions"].startswith("s3://")
    s3_store.write_json("latest.json", latest)
    env = {**os.environ, **seaweed.env(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    examples = readme_examples()
    assert [lang for lang, _ in examples] == ["python", "python", "bash", "python"]
    outputs = []
    for lang, code in examples:
        code = code.replace("my-bucket/masksuite", store.removeprefix("s3://"))
        argv = ["bash", "-euc", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, f"{code}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    pandas_out, s3_out, _, duck_out = outputs
    assert "vote       vote    eval" in pandas_out and "age_group  label" in pandas_out
    eval_images = len(pd.read_csv(io.BytesIO(run_store(finished).read_bytes("submission.csv"))))
    assert s3_out.strip() == f"{eval_images} eval answers of run {finished.run_id}"
    index = pd.read_parquet(io.BytesIO(run_store(finished).read_bytes("index.parquet")))
    scored = set(index.loc[index["label"] >= 0, "split"]) - {"train"}  # val, eval, the holdout
    # the vote on each scored split, with its accuracy
    assert duck_out.count("│ vote      │ vote    │") == len(scored) >= 2
