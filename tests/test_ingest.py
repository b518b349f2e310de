"""`python -m pipeline.ingest`: a labelled CSV into the competition layout, read back by the
project's own dataset reader (prepare's scan), trained on, and its bad inputs refused at once."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.commands.ingest import main as ingest_main
from pipeline.commands.launch import main as launch_main
from pipeline.core.errors import StoreError
from pipeline.domain.dataset import parse_folder_name
from pipeline.domain.labels import AgeThresholds
from pipeline.ml.images import BadInputs
from pipeline.stages.prepare import scan_eval, scan_train
from pipeline.storage.store import LocalStore, Store, open_store
from tests.conftest import TINY_OVERRIDES
from tests.seaweed import upload_tree

ROOT = Path(__file__).resolve().parents[1]
MASK_OF = {"incorrect_mask": "incorrect", "normal": "not_worn"}
HEADER = ["path", "person", "gender", "age", "mask"]


def people_of(layout: Path) -> list[Path]:
    """The person folders of a generated layout, sorted."""
    return sorted((layout / "train" / "images").iterdir())


def label_rows(folders: Sequence[Path], base: Path, person: Callable[[str], str]) -> list[list]:
    """One CSV row per photo of `folders`, paths relative to `base`, person ids from `person`."""
    rows = []
    for folder in folders:
        pid, gender, _, age = folder.name.split("_")
        for photo in sorted(folder.iterdir()):
            mask = MASK_OF.get(photo.stem, "wear")
            rows.append([os.path.relpath(photo, base), person(pid), gender, age, mask])
    return rows


def write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_back(store: Store) -> tuple[pd.DataFrame, pd.DataFrame, BadInputs]:
    """The layout as prepare reads it: training photos, eval photos, bad inputs."""
    bad = BadInputs()
    train, _ = scan_train(store, AgeThresholds(), bad)
    evals, _ = scan_eval(store, bad)
    return train, evals, bad


def id_map(store: Store) -> dict[str, str]:
    table = pd.read_csv(io.BytesIO(store.read_bytes("train/ingest_ids.csv")), dtype=str)
    return dict(zip(table["person"], table["id"], strict=True))


def assert_same_people(store: Store, source: Path, folders: Sequence[Path], ids: dict) -> None:
    """Every photo of `folders` is in the layout under its person's new id, with the same
    gender, age and mask, byte for byte; nothing else is."""
    train, _, bad = read_back(store)
    assert bad.rows == []
    expected = {}
    for folder in folders:
        person = parse_folder_name(folder.name)
        for photo in folder.iterdir():
            expected[(ids[person.person_id], photo.stem)] = (person, photo)
    assert len(train) == len(expected)
    for row in train.itertuples():
        person, photo = expected[(row.person_id, row.image_id.split("/")[1])]
        assert (row.gender, row.age) == (person.gender, person.age)
        assert store.read_bytes(row.path) == photo.read_bytes()
        assert row.path.endswith(photo.suffix)
    train_csv = pd.read_csv(io.BytesIO(store.read_bytes("train/train.csv")), dtype=str)
    assert list(train_csv.columns) == ["id", "gender", "race", "age", "path"]
    assert sorted(train_csv["id"]) == sorted(train["person_id"].unique())


def test_a_local_csv_round_trips_through_the_dataset_reader(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = people_of(tiny_dataset)[:6]
    labels = write_csv(tmp_path / "labels.csv", label_rows(folders, tmp_path, lambda p: f"p{p}"))
    eval_photos = sorted((tiny_dataset / "eval" / "images").iterdir())[:5]
    twin = tmp_path / "twin.jpg"  # the same photo under another name: one eval image
    twin.write_bytes(eval_photos[0].read_bytes())
    evals = write_csv(tmp_path / "eval.csv", [[str(p)] for p in [*eval_photos, twin]], ["path"])
    out = tmp_path / "layout"
    assert ingest_main([str(labels), str(out), "--eval", str(evals)]) == 0
    printed = capsys.readouterr().out
    assert f"ingested 6 people (42 photos, 5 eval photos) into {out}" in printed
    assert "6 people got a new 6-digit id" in printed
    store = LocalStore(out)
    ids = id_map(store)
    assert sorted(ids.values()) == [f"{i:06d}" for i in range(1, 7)]
    assert_same_people(store, tiny_dataset, folders, {k[1:]: v for k, v in ids.items()})
    _, read_evals, _ = read_back(store)
    assert len(read_evals) == 5
    assert sorted(store.read_bytes(p) for p in read_evals["path"]) == sorted(
        p.read_bytes() for p in eval_photos
    )
    eval_map = pd.read_csv(out / "eval" / "ingest_ids.csv")
    assert sorted(eval_map["path"]) == sorted(str(p) for p in [*eval_photos, twin])
    assert eval_map["ImageID"].nunique() == 5


def test_six_digit_ids_are_kept_and_a_photo_is_named_by_its_format(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    folders = people_of(tiny_dataset)[:2]
    rows = label_rows(folders, tmp_path, lambda p: p)  # the generator's own 6-digit ids
    sink = io.BytesIO()
    Image.new("RGB", (48, 64), (200, 150, 120)).save(sink, "PNG")
    png = sink.getvalue()
    (tmp_path / "photo.jpg").write_bytes(png)  # a PNG called .jpg
    rows.append(["photo.jpg", "bob", "female", "33", "not_worn"])
    out = tmp_path / "layout"
    assert ingest_main([write_csv(tmp_path / "l.csv", rows).as_posix(), str(out)]) == 0
    kept = [parse_folder_name(f.name).person_id for f in folders]
    ids = id_map(LocalStore(out))
    assert {p: ids[p] for p in kept} == {p: p for p in kept}
    bob = f"{max(int(p) for p in kept) + 1:06d}"
    assert ids["bob"] == bob
    bobs = out / "train" / "images" / f"{bob}_female_Unknown_33"
    assert (bobs / "normal.png").read_bytes() == png
    train, _, bad = read_back(LocalStore(out))
    assert bad.rows == [] and len(train) == 15


@pytest.mark.s3
def test_an_s3_csv_round_trips_into_an_s3_layout(
    tiny_dataset: Path, tmp_path: Path, s3_root: str
) -> None:
    folders = people_of(tiny_dataset)[:3]
    rows = label_rows(folders, tiny_dataset, lambda p: f"person-{p}")  # keys under the CSV's prefix
    write_csv(tmp_path / "labels.csv", rows)
    upload_tree(tiny_dataset / "train", f"{s3_root}/incoming/train")
    incoming = open_store(f"{s3_root}/incoming")
    incoming.write_bytes("labels.csv", (tmp_path / "labels.csv").read_bytes())
    assert ingest_main([f"{s3_root}/incoming/labels.csv", f"{s3_root}/layout"]) == 0
    store = open_store(f"{s3_root}/layout")
    ids = {k.removeprefix("person-"): v for k, v in id_map(store).items()}
    assert_same_people(store, tiny_dataset, folders, ids)
    assert store.read_text("eval/info.csv").strip() == "ImageID,ans"


def test_the_ingested_layout_trains_and_new_people_are_appended(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folders = people_of(tiny_dataset)
    first, second = folders[:18], folders[18:]
    out = tmp_path / "layout"
    csv1 = write_csv(tmp_path / "a.csv", label_rows(first, tmp_path, lambda p: f"p{p}"))
    assert ingest_main([str(csv1), str(out)]) == 0
    store = f"store.root={tmp_path / 'store'}"
    assert launch_main(["--cluster", "local", f"data.root={out}", store, *TINY_OVERRIDES]) == 0
    printed = capsys.readouterr().out
    submission = re.search(r"submission: (\S+)", printed)
    assert submission, printed
    # no eval photo was ingested: the run trains, scores val and votes an empty submission
    assert Path(submission[1]).read_text() == "ImageID,ans\n"

    csv2 = write_csv(tmp_path / "b.csv", label_rows(second, tmp_path, lambda p: f"p{p}"))
    assert ingest_main([str(csv2), str(out)]) == 1  # a layout is there: --append says so
    assert "pass --append" in capsys.readouterr().err
    assert ingest_main([str(csv2), str(out), "--append"]) == 0
    assert "appended 6 people (42 photos" in capsys.readouterr().out
    ids = id_map(LocalStore(out))
    assert sorted(ids.values()) == [f"{i:06d}" for i in range(1, 25)]
    assert_same_people(LocalStore(out), tiny_dataset, folders, {k[1:]: v for k, v in ids.items()})
    # the same people again: refused, naming them; the layout is unchanged
    before = (out / "train" / "train.csv").read_bytes()
    assert ingest_main([str(csv2), str(out), "--append"]) == 1
    err = capsys.readouterr().err
    assert f"person 'p{second[0].name[:6]}' (lines 2, 3, 4" in err and "--append adds new" in err
    assert (out / "train" / "train.csv").read_bytes() == before


def test_every_bad_row_is_reported_at_once_and_nothing_is_written(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = people_of(tiny_dataset)[:2]
    rows = label_rows([a, b], tmp_path, lambda p: f"p{p}")  # lines 2..8 a, 9..15 b
    (tmp_path / "notes.jpg").write_bytes(b"%!PS-Adobe-3.0 not a photo")
    rows += [
        ["", "x1", "male", "30", "wear"],  # 16 empty path
        [rows[0][0], "x2", "male", "30", "wear"],  # 17 the same photo again
        ["missing.jpg", "x3", "male", "30", "wear"],  # 18
        ["notes.jpg", "x4", "male", "30", "wear"],  # 19 PostScript called .jpg
        [rows[1][0], "x5", "other", "30", "wear"],  # 20
        [rows[1][0], "x6", "male", "thirty", "wear"],  # 21
        [rows[1][0], "x7", "male", "30", "mask_on"],  # 22
    ]
    rows[8][3] = str(int(rows[8][3]) + 1)  # line 10: person b one year older
    extra = tmp_path / "extra.png"
    extra.write_bytes(next(a.glob("mask1.*")).read_bytes())
    rows.append(["extra.png", rows[1][1], rows[1][2], rows[1][3], "wear"])  # 23: a's sixth wear
    labels = write_csv(tmp_path / "labels.csv", rows)
    out = tmp_path / "layout"
    assert ingest_main([str(labels), str(out)]) == 1
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith(str(labels))]
    assert err.startswith(f"error: {len(problems)} problem(s); nothing was written to {out}")
    said = "\n".join(problems)
    for line, reason in [
        (16, "empty path"),
        (17, "is already on line 2"),
        (18, "missing.jpg does not exist"),
        (19, "not a readable image (not a JPEG or PNG: a PostScript/EPS file"),
        (20, "gender 'other' is not one of ['male', 'female']"),
        (21, "age 'thirty' is not a whole number"),
        (22, "mask 'mask_on' is not one of ['wear', 'incorrect', 'not_worn']"),
    ]:
        assert re.search(rf"line {line}: .*{re.escape(reason)}", said), (line, said)
    assert re.search(r"person 'p\d+' has different labels: lines 9, 11, .* say", said)
    assert "line 10 says" in said
    assert re.search(r"person 'p\d+' has 6 wear photos \(lines .*, 23\); the layout holds 5", said)
    assert len(problems) == 9
    assert not out.exists()
    no_mask = write_csv(tmp_path / "no_mask.csv", [r[:4] for r in rows], HEADER[:4])
    assert ingest_main([str(no_mask), str(out)]) == 1
    assert f"error: {no_mask} lacks column(s) ['mask']" in capsys.readouterr().err


def test_missing_photos_warn_and_strict_refuses(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (a,) = people_of(tiny_dataset)[:1]
    rows = [r for r in label_rows([a], tmp_path, lambda p: "ann") if r[4] != "not_worn"][:-2]
    labels = write_csv(tmp_path / "labels.csv", rows)  # incorrect + 3 wear
    assert ingest_main([str(labels), str(tmp_path / "strict"), "--strict"]) == 1
    assert "person 'ann' (lines 2, 3, 4, 5) has 3 of 5 wear, 0 of 1 not_worn" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "strict").exists()
    out = tmp_path / "layout"
    assert ingest_main([str(labels), str(out)]) == 0
    assert "warning: " in capsys.readouterr().out
    train, _, bad = read_back(LocalStore(out))
    assert bad.rows == [] and len(train) == 4


def test_a_failed_copy_leaves_no_layout_and_leftovers_are_refused(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = people_of(tiny_dataset)[:2]
    labels = write_csv(tmp_path / "labels.csv", label_rows(folders, tmp_path, str))
    out = tmp_path / "layout"
    real_write = LocalStore.write_bytes
    calls = []

    def failing_write(self: LocalStore, key: str, data: bytes) -> None:
        calls.append(key)
        if len(calls) == 10:
            raise StoreError(f"cannot write {key}: disk full")
        real_write(self, key, data)

    monkeypatch.setattr(LocalStore, "write_bytes", failing_write)
    assert ingest_main([str(labels), str(out)]) == 1
    monkeypatch.undo()
    assert LocalStore(out).list() == []  # what was copied is removed again
    (out / "train" / "images" / "000001_male_Asian_20").mkdir(parents=True)
    (out / "train" / "images" / "000001_male_Asian_20" / "mask1.jpg").write_bytes(b"x")
    assert ingest_main([str(labels), str(out)]) == 1  # leftovers of a killed ingest


def test_help_names_the_columns_and_the_layout() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.ingest", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for word in ("usage: python -m pipeline.ingest LABELS.csv DEST", "path,person,gender,age,mask",
                 "--append", "--eval", "--strict", "train/train.csv"):  # fmt: skip
        assert word in done.stdout, word


@pytest.mark.slow
def test_the_documented_commands_run_as_written(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "ingest.md"
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S)
    script = "\n".join(blocks).replace("source .venv/bin/activate", "")
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingested 24 people (168 photos" in done.stdout
    assert "submission: " in done.stdout
