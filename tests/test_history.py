"""Runs over time: latest.json, nightly skipping, concurrent launches, pull, report, retention."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig
from PIL import Image

from pipeline.commands.launch import main as launch_main
from pipeline.commands.pull import main as pull_main
from pipeline.commands.pull import verify
from pipeline.commands.runs import main as runs_main
from pipeline.core.config import load_config
from pipeline.core.errors import StoreError
from pipeline.run.fingerprint import data_fingerprint
from pipeline.run.history import (
    move_latest,
    prune_checkpoints,
    publish,
    read_latest,
    run_ids,
    run_summary,
)
from pipeline.run.state import code_version
from pipeline.storage.store import LocalStore, open_store
from tests.conftest import TINY_OVERRIDES
from tests.seaweed import upload_tree

MakeCfg = Callable[..., DictConfig]
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(data: Path | str, store: Path | str, *extra: str) -> int:
    return launch_main(
        [*extra, f"data.root={data}", f"store.root={store}", *TINY_OVERRIDES, "train.num_threads=1"]
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> dict:
    """A store with one successful run, a skipped relaunch, a failed run and a forced run."""
    base = tmp_path_factory.mktemp("history")
    data, store = base / "data", base / "store"
    shutil.copytree(tiny_dataset, data)
    outputs = {}
    assert launch(data, store) == 0
    first = read_latest(LocalStore(store))
    outputs["first"] = first
    outputs["runs_after_first"] = run_ids(LocalStore(store))
    # A run whose training fails: no image is left after dropping every age.
    outputs["failed_rc"] = launch(data, store, "--force", "train.drop_ages=[0,200]")
    outputs["after_failure"] = read_latest(LocalStore(store))
    outputs["runs_after_failure"] = run_ids(LocalStore(store))
    return {"data": data, "store": store, **outputs}


@pytest.mark.slow
def test_latest_moves_only_when_a_run_succeeds(two_runs: dict) -> None:
    first, store = two_runs["first"], LocalStore(two_runs["store"])
    assert first["run_id"] == two_runs["runs_after_first"][0]
    assert first["members"] == ["single"] and 0 <= first["val_macro_f1"] <= 1
    assert first["fingerprint"]["files"] > 0
    assert two_runs["failed_rc"] == 1
    assert len(two_runs["runs_after_failure"]) == 2  # the failed run exists in the store ...
    assert two_runs["after_failure"] == first  # ... but latest.json did not move
    failed = run_summary(store, two_runs["runs_after_failure"][1])
    assert failed["state"] == "failed" and "vote" not in failed["stages_done"]
    assert failed["failed"][0].startswith("train-single: DataError")
    manifest = store.read_json(f"runs/{first['run_id']}/manifest.json")
    assert manifest["state"] == "succeeded"
    assert manifest["data_fingerprint"]["sha256"] == first["fingerprint"]["sha256"]
    assert {"prepare", "train-single", "predict-single", "vote"} <= set(manifest["stages"])
    assert all(s["seconds"] >= 0 for s in manifest["stages"].values())


@pytest.mark.slow
def test_unchanged_data_is_skipped_and_force_retrains(
    two_runs: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    data, store = two_runs["data"], two_runs["store"]
    before = run_ids(LocalStore(store))
    capsys.readouterr()
    assert launch(data, store) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and two_runs["first"]["run_id"] in out
    assert run_ids(LocalStore(store)) == before  # no new run
    assert read_latest(LocalStore(store)) == two_runs["first"]

    assert launch(data, store, "--force") == 0
    forced = read_latest(LocalStore(store))
    assert forced["run_id"] > two_runs["first"]["run_id"]
    assert forced["fingerprint"]["sha256"] == two_runs["first"]["fingerprint"]["sha256"]
    capsys.readouterr()
    assert runs_main(["list", f"store.root={store}"]) == 0
    listing = capsys.readouterr().out
    assert f"* {forced['run_id']}" in listing and "published" in listing
    assert f"{forced['val_macro_f1']:.4f}" in listing


def test_the_fingerprint_follows_data_labels_and_config(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    base = data_fingerprint(make_cfg(dataset_copy))
    assert base == data_fingerprint(make_cfg(dataset_copy))  # deterministic
    assert base == data_fingerprint(
        make_cfg(dataset_copy, "train.num_threads=1", "store.workers=2")
    )
    assert base["sha256"] != data_fingerprint(make_cfg(dataset_copy, "train.epochs=2"))["sha256"]
    photo = next((dataset_copy / "train" / "images").rglob("mask1.*"))
    with Image.open(photo) as im:
        im.rotate(1).save(photo, format=im.format)  # same name, new content
    changed = data_fingerprint(make_cfg(dataset_copy))
    assert changed["sha256"] != base["sha256"] and changed["config_sha256"] == base["config_sha256"]
    fix = dataset_copy.parent / "fix.csv"
    fix.write_text("person_id,age\n000001,33\n")
    with_fix = data_fingerprint(make_cfg(dataset_copy, f"data.label_fix={fix}"))
    fix.write_text("person_id,age\n000001,34\n")
    assert with_fix != data_fingerprint(make_cfg(dataset_copy, f"data.label_fix={fix}"))


def test_a_new_code_version_retrains_once(
    tiny_dataset: Path, make_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release (new package version or commit) changes the fingerprint: the nightly run after
    it retrains instead of being skipped until someone passes --force."""
    base = data_fingerprint(make_cfg(tiny_dataset))
    assert base["code_version"] == code_version()
    monkeypatch.setattr("pipeline.run.fingerprint.code_version", lambda: "0.2.0+gabcdef0")
    released = data_fingerprint(make_cfg(tiny_dataset))
    assert released["sha256"] != base["sha256"] and released["code_version"] == "0.2.0+gabcdef0"
    assert (released["data_sha256"], released["config_sha256"]) == (
        base["data_sha256"],
        base["config_sha256"],
    )


def test_s3_fingerprint_uses_etags(tiny_dataset: Path, s3_root: str, make_cfg: MakeCfg) -> None:
    data = upload_tree(tiny_dataset, f"{s3_root}/fp-data")
    base = data_fingerprint(make_cfg(f"{s3_root}/fp-data"))
    assert base["files"] == len([p for p in tiny_dataset.rglob("*") if p.is_file()])
    assert all(v.startswith("etag:") for v in data.checksums("train").values())
    data.write_bytes("eval/info.csv", b"ImageID,ans\n")
    assert data_fingerprint(make_cfg(f"{s3_root}/fp-data"))["sha256"] != base["sha256"]


@pytest.mark.slow
def test_concurrent_launches_do_not_corrupt_each_other(tiny_dataset: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = [f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pipeline.launch", *args, "train.num_threads=1"]
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    ids = run_ids(LocalStore(store))
    assert len(ids) == 2
    # the newer run is published; the older one too when it finished first, otherwise its
    # publish found latest.json on the newer run (superseded: succeeded, not published)
    states = [run_summary(LocalStore(store), run_id)["state"] for run_id in ids]
    assert states[1] == "published" and states[0] in ("published", "succeeded"), states
    latest = json.loads((store / "latest.json").read_text())
    assert latest["run_id"] == max(ids)  # the newer run, whichever finished last


def test_latest_never_moves_backwards(tmp_path: Path) -> None:
    root = LocalStore(tmp_path)
    for run_id in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"):
        root.write_json(f"runs/{run_id}/vote.json", {"members": ["m"], "ensemble": {}})
    newer, older = (root.child(f"runs/{r}") for r in reversed(run_ids(root)))
    assert move_latest(root, newer, "20260102T000000Z-bbbbbb")
    assert not move_latest(root, older, "20260101T000000Z-aaaaaa")
    assert not move_latest(root, newer, "20260102T000000Z-bbbbbb")  # a rerun: nothing to do
    assert read_latest(root)["run_id"] == "20260102T000000Z-bbbbbb"
    root.write_text("latest.json", '{"nothing": 1}')
    with pytest.raises(StoreError, match="does not name a run"):
        read_latest(root)


def make_run(root: LocalStore, run_id: str) -> None:
    for name in ("a", "b"):
        for file in ("checkpoint.pt", "last.pt", "metrics.json"):
            root.write_bytes(f"runs/{run_id}/models/{name}/{file}", b"x")
    root.write_bytes(f"runs/{run_id}/submission.csv", b"ImageID,ans\n")


def test_retention_keeps_the_newest_runs_and_always_the_latest(tmp_path: Path) -> None:
    root = LocalStore(tmp_path)
    ids = [f"2026010{d}T000000Z-abcdef" for d in range(1, 7)]
    for run_id in ids:
        make_run(root, run_id)
    root.write_json("latest.json", {"run_id": ids[1]})  # runs 3-6 failed or are still running
    deleted = prune_checkpoints(root, keep=2)
    assert sorted({k.split("/")[1] for k in deleted}) == [ids[0]]  # only the one before latest
    root.write_json("latest.json", {"run_id": ids[5]})
    prune_checkpoints(root, keep=2)
    for run_id in ids:
        kept = root.exists(f"runs/{run_id}/models/a/checkpoint.pt")
        assert kept == (run_id in ids[4:]), run_id
        assert root.exists(f"runs/{run_id}/models/a/metrics.json")  # scores are never pruned
        assert root.exists(f"runs/{run_id}/submission.csv")
    root.write_json("latest.json", {"run_id": ids[2]})
    make_run(root, ids[2])
    prune_checkpoints(root, keep=1)
    assert root.exists(f"runs/{ids[2]}/models/b/last.pt")  # the latest run's are never deleted


def test_a_publish_stopped_before_retention_applies_it_when_rerun(tmp_path: Path) -> None:
    """The publish stage moved latest.json, then its job was stopped before retention: the rerun
    (latest.json already names the run, so it does not move) still deletes the old checkpoints."""
    root = LocalStore(tmp_path)
    ids = [f"2026010{d}T000000Z-abcdef" for d in range(1, 4)]
    for run_id in ids:
        make_run(root, run_id)
    run = root.child(f"runs/{ids[2]}")
    run.write_json("vote.json", {"members": ["a"]})
    root.write_json("latest.json", {"run_id": ids[2]})
    cfg = load_config([f"store.root={tmp_path}", f"run_id={ids[2]}", "store.keep_checkpoints=1"])
    assert publish(cfg, run) is False  # latest.json stays as it is
    assert [r for r in ids if root.exists(f"runs/{r}/models/a/checkpoint.pt")] == [ids[2]]
    assert run.read_json("manifest.json")["state"] == "succeeded"


@pytest.mark.slow
@pytest.mark.s3
def test_pull_fetches_exactly_what_was_written(
    tiny_dataset: Path, s3_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    local_store = tmp_path / "store"
    assert launch(tiny_dataset, local_store) == 0
    s3_store = f"{s3_root}/pull-store"
    source = LocalStore(local_store)
    open_store(s3_store).write_many((k, source.read_bytes(k)) for k in source.list())
    run_id = read_latest(source)["run_id"]
    run = source.child(f"runs/{run_id}")
    for store in (str(local_store), s3_store):
        for what, expect in (
            ("submission", {"submission.csv", "vote.json"}),
            ("report", {"report/index.html"}),
        ):
            to = tmp_path / "pulled" / what / str(abs(hash(store)))
            capsys.readouterr()
            assert pull_main(["--what", what, "--to", str(to), f"store.root={store}"]) == 0
            got = {p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file()}
            assert got == expect
            for key in got:
                assert (to / key).read_bytes() == run.read_bytes(key)
            out = capsys.readouterr().out
            assert run_id in out and "val macro F1" in out
        to = tmp_path / "pulled" / "all" / str(abs(hash(store)))
        assert (
            pull_main(["--run", run_id, "--what", "all", "--to", str(to), f"store.root={store}"])
            == 0
        )
        got = {p.relative_to(to).as_posix() for p in to.rglob("*") if p.is_file()}
        assert "predictions/models/single/eval.parquet" in got and "manifest.json" in got
        assert "models/single/metrics.json" in got  # but no checkpoint file, no image
        assert not any(k.endswith((".pt", ".safetensors", "last.json")) for k in got)
        assert not any(k.startswith("shards/") for k in got)
    assert pull_main(["--run", "20990101T000000Z-000000", f"store.root={local_store}"]) == 1
    # without --to: pulled/<run id>/ under the current folder, as docs/runs.md says
    monkeypatch.chdir(tmp_path / "pulled")
    assert pull_main([f"store.root={local_store}"]) == 0
    assert (tmp_path / "pulled" / "pulled" / run_id / "submission.csv").is_file()


def test_a_size_mismatch_is_refused_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_bytes(b"short")
    with pytest.raises(StoreError, match=r"has 5 bytes but .* has 9"):
        verify(path, 9, "s3://b/runs/x/submission.csv")
    assert not path.exists()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(two_runs: dict, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, (
        "Debian's chromium is needed: `make test` installs it (apt-get install chromium)"
    )
    first = two_runs["first"]
    report = two_runs["store"] / "runs" / first["run_id"] / "report" / "index.html"
    profile = tmp_path / "profile"
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*base, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert f'<span id="run-id">{first["run_id"]}</span>' in dom  # parsed by the browser
    assert f"{first['val_macro_f1']:.4f}" in dom
    assert dom.count("<img") >= 4 and "Training curves" in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as im:
        colours = im.convert("L").getextrema()
    assert colours[0] < 100 < colours[1]  # text and plots were drawn, not a blank page
