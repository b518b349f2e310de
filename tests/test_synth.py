"""Tests of the synthetic data set generator (tiny sets, a few seconds in all)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.domain.labels import PHOTO_MASK, AgeThresholds, encode
from pipeline.tools import synth

PEOPLE, EVAL_PEOPLE, SEED, SIZE = 12, 6, 1, (64, 48)


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = synth.generate(
        out, people=PEOPLE, eval_people=EVAL_PEOPLE, seed=SEED, size=SIZE, workers=1
    )
    return out, summary


def test_train_layout(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    header, rows = _rows(out / "train" / "train.csv")
    assert header == ["id", "gender", "race", "age", "path"]
    assert len(rows) == PEOPLE
    folders = sorted(p.name for p in (out / "train" / "images").iterdir())
    assert folders == sorted(r[4] for r in rows)
    for pid, gender, race, age, path in rows:
        assert re.fullmatch(r"\d{6}", pid) and gender in ("male", "female") and race == "Asian"
        assert 18 <= int(age) <= 60
        assert path == f"{pid}_{gender}_{race}_{age}"
        files = list((out / "train" / "images" / path).iterdir())
        assert sorted(f.stem for f in files) == sorted(PHOTO_MASK)
        assert len({f.suffix for f in files}) == 1
        assert files[0].suffix in synth.EXTENSIONS
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)


def test_extensions_are_mixed(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    exts = {p.suffix for p in (out / "train" / "images").rglob("*.*")}
    exts |= {p.suffix for p in (out / "eval" / "images").iterdir()}
    assert exts == set(synth.EXTENSIONS)  # the fixture seed is chosen so that all three appear
    train, _ = synth.plan_dataset(300, 0, 0)
    assert {p.ext for p in train} == set(synth.EXTENSIONS)
    assert Counter(p.ext for p in train).most_common(1)[0][0] == ".jpg"


def test_eval_layout_and_ground_truth(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    header, info = _rows(out / "eval" / "info.csv")
    gt_header, truth = _rows(out / "eval" / "ground_truth.csv")
    assert header == gt_header == ["ImageID", "ans"]
    assert len(info) == len(truth) == EVAL_PEOPLE * 7
    assert all(ans == "" for _, ans in info)
    assert [r[0] for r in info] == [r[0] for r in truth]
    names = [r[0] for r in info]
    assert sorted(names) == sorted(p.name for p in (out / "eval" / "images").iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{40}\.(jpg|jpeg|png)", n) for n in names)
    assert names != sorted(names)  # shuffled, not in generation order

    train, evals = synth.plan_dataset(PEOPLE, EVAL_PEOPLE, SEED)
    assert not {p.pid for p in train} & {p.pid for p in evals}
    expected = {}
    for p in evals:
        for k, stem in enumerate(synth.STEMS):
            label = encode(PHOTO_MASK[stem], p.gender, AgeThresholds().group(p.age))
            expected[synth.eval_image_id(SEED, p.index * 7 + k, p.ext)] = label
    assert {name: int(ans) for name, ans in truth} == expected


def test_images_decode_at_size(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    paths = [*(out / "train" / "images").rglob("*.*"), *(out / "eval" / "images").iterdir()]
    assert len(paths) == (PEOPLE + EVAL_PEOPLE) * 7
    for path in paths:
        with Image.open(path) as img:
            assert img.format == ("PNG" if path.suffix == ".png" else "JPEG")
            assert img.mode == "RGB" and img.size == (SIZE[1], SIZE[0])
            img.load()


def test_summary(tiny: tuple[Path, dict]) -> None:
    out, summary = tiny
    assert summary["images"] == (PEOPLE + EVAL_PEOPLE) * 7
    assert sum(summary["train_classes"]) == PEOPLE * 7
    assert sum(summary["gender_age"].values()) == PEOPLE
    _, rows = _rows(out / "train" / "train.csv")
    assert summary["gender_age"]["female/<30"] == sum(
        1 for r in rows if r[1] == "female" and int(r[3]) < 30
    )


def test_no_temp_folders_left(tiny: tuple[Path, dict]) -> None:
    out, _ = tiny
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_deterministic_regardless_of_workers(tmp_path: Path) -> None:
    kw = {"people": 3, "eval_people": 2, "size": SIZE}
    synth.generate(tmp_path / "a", seed=7, workers=1, **kw)
    synth.generate(tmp_path / "b", seed=7, workers=2, **kw)
    synth.generate(tmp_path / "c", seed=8, workers=1, **kw)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() != c.keys() or a != c


def test_same_person_same_pixels_differ_between_photos() -> None:
    person = synth.Person(0, 0, "000001", 1, 45, ".jpg")
    first = synth.render_person(person, 0, SIZE)
    again = synth.render_person(person, 0, SIZE)
    assert [s for s, _ in first] == list(synth.STEMS)
    arrays = [np.asarray(img) for _, img in first]
    assert all(np.array_equal(x, np.asarray(y)) for x, (_, y) in zip(arrays, again, strict=True))
    assert not np.array_equal(arrays[0], arrays[1])


def test_plan_matches_real_proportions_at_2700() -> None:
    rng = np.random.default_rng(0)
    plan = synth.plan_people(2700, rng)
    groups = AgeThresholds()
    cells = Counter((p.gender, groups.group(p.age)) for p in plan)
    assert dict(cells) == synth.REAL_CELLS
    assert synth.cell_counts(2700) == synth.REAL_CELLS
    ages = Counter(p.age for p in plan)
    assert [ages[a] for a in range(55, 61)] == [100, 123, 106, 159, 85, 192]
    assert min(ages) == 18 and max(ages) == 60
    assert Counter(p.gender for p in plan) == {1: 1658, 0: 1042}


@pytest.mark.parametrize("n", [0, 1, 7, 12, 600, 1800])
def test_plan_sizes_and_ranges(n: int) -> None:
    plan = synth.plan_people(n, np.random.default_rng(1))
    assert len(plan) == n == sum(synth.cell_counts(n).values())
    groups = AgeThresholds()
    for p in plan:
        g = groups.group(p.age)
        assert (g == 0 and 18 <= p.age < 30) or (g == 1 and 30 <= p.age < 60) or p.age == 60
    if n == 1800:  # eval people: two thirds of the real cells
        assert synth.cell_counts(n) == {k: round(v * 2 / 3) for k, v in synth.REAL_CELLS.items()}


def test_largest_remainder_sums() -> None:
    assert synth.largest_remainder([1, 1, 1], 10) == [4, 3, 3]
    assert sum(synth.largest_remainder(list(synth.REAL_CELLS.values()), 999)) == 999
    with pytest.raises(DataError):
        synth.largest_remainder([0, 0], 3)


def test_cli_refuses_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = [str(out), "--people", "2", "--eval-people", "1", "--size", "32", "24", "--workers", "1"]
    assert synth.main(argv) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and str(out) in err
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    assert synth.main([*argv, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "train" / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synth, "_write_tables", boom)
    with pytest.raises(OSError, match="disk full"):
        synth.generate(tmp_path / "data", people=2, eval_people=1, size=(32, 24), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="size"):
        synth.generate(tmp_path / "x", people=1, eval_people=0, size=(8, 8), workers=1)
    with pytest.raises(DataError, match="people"):
        synth.generate(tmp_path / "x", people=-1, workers=1)
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        synth.generate(tmp_path / "f", people=1, eval_people=0, size=(32, 24), workers=1)
