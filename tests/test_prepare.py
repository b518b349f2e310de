"""The prepare stage on a generated dataset, clean and damaged."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import DictConfig

from pipeline.core.errors import DataError, StageFailed
from pipeline.domain.dataset import parse_folder_name
from pipeline.domain.labels import encode
from pipeline.orchestration.graph import job_stages
from pipeline.run.state import run_stage, run_store
from pipeline.stages.prepare import prepare
from pipeline.storage.shards import read_shard

MakeCfg = Callable[..., DictConfig]


def read_outputs(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    run = run_store(cfg)
    index = pd.read_parquet(io.BytesIO(run.read_bytes("index.parquet")))
    bad = pd.read_csv(io.BytesIO(run.read_bytes("bad_inputs.csv")))
    return index, bad


def person_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train" / "images").iterdir() if p.is_dir())


def test_clean_dataset_is_indexed_split_by_person_and_packed(
    tiny_dataset: Path, make_cfg: MakeCfg
) -> None:
    cfg = make_cfg(tiny_dataset)
    summary = prepare(cfg)
    index, bad = read_outputs(cfg)
    assert bad.empty and list(bad.columns) == ["path", "reason"]
    n_people = len(person_folders(tiny_dataset))
    info = pd.read_csv(tiny_dataset / "eval" / "info.csv")
    labelled = sum(summary["images"][s] for s in ("train", "val", "holdout"))
    assert labelled == 7 * n_people
    assert summary["images"]["eval"] == len(info)

    train = index[index["split"] != "eval"]
    assert not set(train.loc[train.split == "train", "person_id"]) & set(
        train.loc[train.split == "val", "person_id"]
    )
    val_people = train.loc[train.split == "val", "person_id"].nunique()
    assert 0.1 <= val_people / n_people <= 0.35
    for row in train.itertuples():
        person = parse_folder_name(row.path.split("/")[2])
        assert row.path.startswith("train/images/") and (tiny_dataset / row.path).is_file()
        assert row.label == encode(row.mask, person.gender, row.age_group)
        assert row.age == person.age
    # eval rows keep info.csv's order and carry the generated ground truth
    evals = index[index["split"] == "eval"].sort_values("order")
    assert evals["image_id"].tolist() == info["ImageID"].tolist()
    truth = pd.read_csv(tiny_dataset / "eval" / "ground_truth.csv")
    assert evals["label"].tolist() == truth["ans"].tolist()
    # every indexed image is in its shard, byte for byte
    run = run_store(cfg)
    for shard, rows in index.groupby("shard"):
        blobs = read_shard(run, shard)
        for row in rows.itertuples():
            assert blobs[row.image_id] == (tiny_dataset / row.path).read_bytes()


def test_prepare_twice_is_a_no_op(tiny_dataset: Path, make_cfg: MakeCfg) -> None:
    """The stage frame skips a done stage: the second run returns the marker, untouched."""
    cfg = make_cfg(tiny_dataset, "run_id=r1")
    (stage,) = job_stages(cfg, "prepare")
    run = run_store(cfg)
    run_stage(run, stage.name, lambda: stage.run(cfg))
    marker = run.read_bytes("stages/prepare.json")

    def again() -> dict:
        raise AssertionError("a done stage ran again")

    assert run_stage(run, stage.name, again)["images"]
    assert run.read_bytes("stages/prepare.json") == marker


def test_missing_train_csv_names_the_file(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    (dataset_copy / "train" / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train/train\.csv not found"):
        prepare(make_cfg(dataset_copy))


def test_train_csv_without_required_columns(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    (dataset_copy / "train" / "train.csv").write_text("id,sex\n1,female\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['gender', 'age', 'path'\]"):
        prepare(make_cfg(dataset_copy))


def test_bad_files_are_reported_and_the_rest_is_used(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folders = person_folders(dataset_copy)
    # a folder whose name does not parse
    broken = folders[0].rename(folders[0].parent / "not-a-person")
    # a truncated JPEG and a text file with an image name in another person's folder
    jpg = next(p for f in folders[1:] for p in sorted(f.iterdir()) if p.suffix == ".jpg")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    text = next(p for p in sorted(folders[2].iterdir()) if p.stem == "mask2")
    text.write_text("this is not an image")
    # macOS sidecar and junk
    (folders[3] / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07")
    (dataset_copy / "train" / "images" / ".DS_Store").write_bytes(b"junk")

    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2")
    summary = prepare(cfg)
    index, bad = read_outputs(cfg)
    reasons = dict(zip(bad["path"], bad["reason"], strict=True))
    rel = lambda p: p.relative_to(dataset_copy).as_posix()  # noqa: E731
    for photo in sorted(broken.iterdir()):
        assert "does not parse" in reasons[rel(photo)]
    assert "not a readable image" in reasons[rel(jpg)]
    assert "not a readable image" in reasons[rel(text)]
    assert "sidecar" in reasons[rel(folders[3] / "._mask1.jpg")]
    assert "junk" in reasons["train/images/.DS_Store"]
    assert "no such folder" in reasons[f"train/images/{folders[0].name}"]
    # nothing bad is indexed; everything else is
    assert not set(index["path"]) & set(reasons)
    usable = 7 * len(folders) - 7 - 2
    assert sum(summary["images"][s] for s in ("train", "val", "holdout")) == usable


def test_too_many_bad_photos_fail_with_a_summary(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    for folder in person_folders(dataset_copy)[:3]:
        for photo in folder.iterdir():
            photo.write_bytes(b"")
    with pytest.raises(StageFailed, match=r"21 of \d+ training photos are unusable"):
        prepare(make_cfg(dataset_copy, "data.max_bad_fraction=0.05"))


def test_label_fix_corrects_people_and_images_and_reports_unknown_ids(
    dataset_copy: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    folders = person_folders(dataset_copy)
    person = parse_folder_name(folders[0].name)
    other = folders[1].name
    fix = tmp_path / "fix.csv"
    new_gender = "male" if person.gender == 1 else "female"
    fix.write_text(  # BOM and CRLF as spreadsheet exports write them
        "\ufeffperson_id,gender,age\r\n"
        + f"{person.person_id},{new_gender},61\r\n"
        + "999999,male,20\r\n"
    )
    image_fix = tmp_path / "image_fix.csv"
    image_fix.write_text(f"image_id,mask\n{other}/mask1,not_worn\n")
    cfg = make_cfg(dataset_copy, f"data.label_fix={fix}")
    summary = prepare(cfg)
    index, bad = read_outputs(cfg)
    rows = index[index["person_id"] == person.person_id]
    assert len(rows) == 7 and summary["label_fixes"] == 7
    assert (rows["gender"] == 1 - person.gender).all() and (rows["age"] == 61).all()
    assert (rows["age_group"] == 2).all()
    assert (rows["label"] == rows["mask"] * 6 + rows["gender"] * 3 + 2).all()
    assert bad["reason"].str.contains("unknown person_id '999999'").any()

    cfg = make_cfg(dataset_copy, f"data.label_fix={image_fix}", "run_id=images")
    prepare(cfg)
    index, _ = read_outputs(cfg)
    fixed = index.set_index("image_id").loc[f"{other}/mask1"]
    assert fixed["mask"] == 2 and fixed["label"] // 6 == 2


def test_label_fix_with_bad_values_or_columns(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    person = parse_folder_name(person_folders(tiny_dataset)[0].name)
    fix = tmp_path / "fix.csv"
    fix.write_text(f"person_id,gender\n{person.person_id},robot\n")
    with pytest.raises(DataError, match=r"fix.csv line 2: gender 'robot' is not one of"):
        prepare(make_cfg(tiny_dataset, f"data.label_fix={fix}"))
    fix.write_text("name,gender\nx,male\n")
    with pytest.raises(DataError, match="needs one id column"):
        prepare(make_cfg(tiny_dataset, f"data.label_fix={fix}", "run_id=r2"))
    with pytest.raises(DataError, match="not found"):
        prepare(make_cfg(tiny_dataset, f"data.label_fix={tmp_path / 'nope.csv'}", "run_id=r3"))


def test_extra_sources_train_only(tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    shutil.copytree(tiny_dataset / "train", extra / "train")
    cfg = make_cfg(tiny_dataset, f"data.extra_roots=[{extra}]")
    summary = prepare(cfg)
    index, _ = read_outputs(cfg)
    from_extra = index[index["source"] == 1]
    assert len(from_extra) == 7 * len(person_folders(tiny_dataset))
    assert (from_extra["split"] == "train").all()
    assert from_extra["image_id"].str.startswith("extra1/").all()
    assert from_extra["person_id"].str.startswith("extra1/").all()
    assert summary["extra_roots"] == [str(extra)]
    # images are packed from the extra root, byte for byte
    run = run_store(cfg)
    row = from_extra.iloc[0]
    assert read_shard(run, row["shard"])[row["image_id"]] == (extra / row["path"]).read_bytes()
