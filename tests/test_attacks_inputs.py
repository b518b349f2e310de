"""Issue 26, photos and input files: what someone who can put files where a nightly job reads
(data.root, infer.input, the run's shards in a bucket) tried, and what happens now.

- a PostScript "photo" named .jpg never reaches Ghostscript (a fake `gs` on PATH proves it);
  GIF, BMP, TIFF and WebP named .jpg are refused: only JPEG and PNG, by their magic bytes;
- decompression bombs are refused from the header (data.max_pixels), before any decoding, in
  prepare, train/predict (shards) and infer; files over data.max_file_bytes are not read;
- symbolic links, FIFOs and links to devices in a local folder are bad inputs, never followed or
  opened, also not by the launch's fingerprint (the FIFO and /dev/zero tests hang on the old code:
  pytest-timeout ends the session after 60 s, by its thread method, since a reader stuck in a
  worker thread would keep the signal method's test from ever unwinding);
- a file name that is not UTF-8 is a bad input with the bytes escaped, not a traceback.

What already held is checked at the end (196 Mpx, a huge PNG chunk, path traversal in
train.csv); a truncated JPEG is in tests/test_prepare.py
(test_bad_files_are_reported_and_the_rest_is_used).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from PIL import EpsImagePlugin, Image

from pipeline.core.errors import ConfigError, DataError, StoreError
from pipeline.ml.images import BadInputs, check_image, checked_images, load_images
from pipeline.run.fingerprint import data_fingerprint
from pipeline.storage.shards import write_shards
from pipeline.storage.store import LocalStore
from tests.test_inputs import run_prepare

MakeCfg = Callable[..., DictConfig]

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
    b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
)
#: Marks the content of a private file outside data.root (in a JPEG comment, so it is a photo).
SECRET = b"PRIVATE-OUTSIDE-DATA-ROOT-5f1c"


# ------------------------------------------------------------------------------ helpers


def person_folder(root: Path, number: int = 0) -> Path:
    return sorted(p for p in (root / "train" / "images").iterdir() if p.is_dir())[number]


def photo(folder: Path, stem: str) -> Path:
    return next(p for p in folder.iterdir() if p.stem == stem)


def eval_image(root: Path, number: int = 0) -> Path:
    ids = pd.read_csv(root / "eval" / "info.csv", dtype=str)["ImageID"].tolist()
    return root / "eval" / "images" / ids[number]


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def encode(fmt: str, size: tuple[int, int] = (12, 16), **params: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width × height black pixels: tiny on disk, huge decoded."""
    row = b"\x00" + bytes((width + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", body)
        + png_chunk(b"IEND", b"")
    )


def replace(path: Path, data: bytes) -> Path:
    """Replace a photo by `data`, under the same name."""
    path.unlink()
    path.write_bytes(data)
    return path


def link(path: Path, target: str | Path) -> Path:
    """Replace a photo by a symbolic link to `target`, under the same name."""
    path.unlink()
    path.symlink_to(target)
    return path


@pytest.fixture
def fake_gs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `gs` first on PATH that leaves a marker file when run; returns the marker's path."""
    marker = tmp_path / "ghostscript-ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # PIL caches where gs is
    return marker


@pytest.fixture
def fifos() -> Iterator[list[Path]]:
    """FIFOs a test makes (append to the list); afterwards each is opened for writing once, so
    a reader the old code left blocked on it gets end-of-file instead of hanging the session."""
    made: list[Path] = []
    yield made
    for fifo in made:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader: nothing to release
            continue
        os.close(fd)


def make_fifo(path: Path, made: list[Path]) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    made.append(path)
    return path


def infer_inputs(folder: Path, cfg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """What `python -m pipeline.infer` makes of `folder` as infer.input, through the stage's own
    listing and checks: (usable photo keys, {bad path: reason})."""
    from pipeline.ml.images import image_limits
    from pipeline.stages.infer import list_photos, new_photos

    src, bad = LocalStore(folder), BadInputs()
    photos = list_photos(src, bad)
    counts: dict = {"already_seen": 0, "hashes": {}}
    usable = [key for key, _ in new_photos(src, photos, bad, set(), 2, counts, image_limits(cfg))]
    return usable, dict(bad.rows)


def store_bytes(cfg: DictConfig) -> bytes:
    """Every byte the run wrote into its store (shards, index, bad_inputs.csv, …)."""
    root = Path(str(cfg.store.root))
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# ------------------------------------------------------------------------------ formats


def test_a_postscript_photo_never_reaches_ghostscript(
    dataset_copy: Path, make_cfg: MakeCfg, fake_gs: Path, tmp_path: Path
) -> None:
    train = replace(photo(person_folder(dataset_copy), "mask1"), EPS)
    evals = replace(eval_image(dataset_copy), EPS)
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    _, index, bad = run_prepare(cfg)
    for path in (train, evals):
        assert "not a JPEG or PNG" in bad[rel(dataset_copy, path)]
        assert "PostScript" in bad[rel(dataset_copy, path)]
        assert rel(dataset_copy, path) not in set(index["path"])
    # the same photo as a new one to classify
    new = tmp_path / "new"
    new.mkdir()
    (new / "photo.jpg").write_bytes(EPS)
    (new / "ok.jpg").write_bytes(encode("JPEG"))
    usable, reasons = infer_inputs(new, cfg)
    assert usable == ["ok.jpg"]
    assert "PostScript" in reasons["photo.jpg"]
    with pytest.raises(DataError, match="not a JPEG or PNG"):
        check_image(EPS, "photo.jpg")
    assert not fake_gs.exists()  # Ghostscript never ran


@pytest.mark.parametrize(
    ("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("WEBP", "WebP")]
)
def test_other_formats_named_jpg_are_refused_by_their_bytes(fmt: str, name: str) -> None:
    with pytest.raises(DataError) as raised:
        check_image(encode(fmt), "p001/mask1.jpg")
    reason = str(raised.value)
    assert "not a JPEG or PNG" in reason and f"a {name} file" in reason
    assert reason.isprintable()  # the first bytes are shown escaped


def test_other_formats_in_train_and_eval_are_bad_inputs(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    folder = person_folder(dataset_copy)
    paths = [replace(photo(folder, f"mask{i}"), encode(f)) for i, f in enumerate(["GIF", "BMP"], 1)]
    paths.append(replace(photo(person_folder(dataset_copy, 1), "mask1"), encode("TIFF")))
    paths.append(replace(eval_image(dataset_copy), encode("WEBP")))
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    _, index, bad = run_prepare(cfg)
    for path in paths:
        assert "not a JPEG or PNG" in bad[rel(dataset_copy, path)]
    assert not {rel(dataset_copy, p) for p in paths} & set(index["path"])


def test_a_shard_replaced_with_postscript_is_refused_naming_the_image(
    tmp_path: Path, fake_gs: Path
) -> None:
    run = LocalStore(tmp_path / "run")
    shards = dict(write_shards(run, "train", iter([("p1/mask1", EPS)]), 1 << 20))
    with pytest.raises(DataError, match=r"p1/mask1.*not a JPEG or PNG"):
        load_images(run, ["p1/mask1"], [shards["p1/mask1"]], (32, 24), 1)
    assert not fake_gs.exists()


# ------------------------------------------------------------------------------ pixel budget


def test_decompression_bombs_are_refused_from_their_header(
    dataset_copy: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    bomb = png_bomb(5000, 5000)  # 25 Mpx in a few KB: over the default 16.8 Mpx budget
    assert len(bomb) < 20_000
    train = replace(photo(person_folder(dataset_copy), "mask1"), bomb)
    evals = replace(eval_image(dataset_copy), bomb)
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    _, index, bad = run_prepare(cfg)
    for path in (train, evals):
        reason = bad[rel(dataset_copy, path)]
        assert "5000 × 5000 pixels is over data.max_pixels=16777216" in reason
        assert rel(dataset_copy, path) not in set(index["path"])
    new = tmp_path / "new"
    new.mkdir()
    (new / "bomb.png").write_bytes(bomb)
    usable, reasons = infer_inputs(new, cfg)
    assert usable == [] and "over data.max_pixels" in reasons["bomb.png"]


def test_the_budget_is_checked_before_anything_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.ml import images

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was called")

    monkeypatch.setattr(images.Image, "open", no_decoding)
    monkeypatch.setattr(images, "decode_image", no_decoding)
    jpeg = encode("JPEG", (100, 80))
    for data in (jpeg, png_bomb(300, 300)):
        with pytest.raises(DataError, match=r"pixels is over data\.max_pixels=5000"):
            check_image(data, "x.jpg", max_pixels=5000)
        with pytest.raises(DataError, match=r"pixels is over data\.max_pixels=5000"):
            images.decode_resized(data, (32, 24), name="x.jpg", max_pixels=5000)
    with pytest.raises(DataError, match=r"100 × 80 pixels"):
        check_image(jpeg, "x.jpg", max_pixels=5000)


def test_a_bomb_in_a_replaced_shard_is_refused_by_train_and_predict(tmp_path: Path) -> None:
    from pipeline.ml.resident import decode_batch, load_resident

    run = LocalStore(tmp_path / "run")
    shards = dict(write_shards(run, "train", iter([("p1/mask1", png_bomb(5000, 5000))]), 1 << 20))
    with pytest.raises(DataError, match=r"p1/mask1.*5000 × 5000 pixels is over"):
        load_images(run, ["p1/mask1"], [shards["p1/mask1"]], (32, 24), 1)
    with pytest.raises(DataError, match=r"p1/mask1.*over data.max_pixels=1000"):
        load_resident(run, ["p1/mask1"], [shards["p1/mask1"]], (32, 24),
                      device=torch.device("cpu"), threads=1, placement="host",
                      max_pixels=1000)  # fmt: skip
    # the CUDA path's batch decoder (nvJPEG for plain JPEGs) refuses the same way; CPU runs it too
    blobs = [encode("JPEG"), png_bomb(5000, 5000), encode("JPEG", (300, 300))]
    with pytest.raises(DataError, match=r"p2/mask1.*5000 × 5000 pixels is over"):
        decode_batch(blobs, (32, 24), torch.device("cpu"), names=["p1/mask1", "p2/mask1", "p3"])
    with pytest.raises(DataError, match=r"p3.*300 × 300 pixels is over data\.max_pixels=10000"):
        decode_batch(blobs[::2], (32, 24), torch.device("cpu"), names=["p1", "p3"],
                     max_pixels=10_000)  # fmt: skip


def test_a_file_over_the_size_cap_is_not_read(
    dataset_copy: Path, make_cfg: MakeCfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    big = photo(person_folder(dataset_copy), "mask1")
    big.write_bytes(big.read_bytes() + bytes(60_000))  # a JPEG with 60 KB of trailing bytes
    read: list[str] = []
    original = LocalStore._read

    def recording(self: LocalStore, key: str, max_bytes: int | None) -> bytes:
        read.append(key)
        return original(self, key, max_bytes)

    monkeypatch.setattr(LocalStore, "_read", recording)
    cfg = make_cfg(dataset_copy, "data.max_file_bytes=50000", "data.max_bad_fraction=0.2")
    _, index, bad = run_prepare(cfg)
    key = rel(dataset_copy, big)
    assert bad[key].startswith(f"{big.stat().st_size} bytes is over data.max_file_bytes=50000")
    assert key not in read and key not in set(index["path"])
    # infer checks the listing the same way
    new = tmp_path / "new"
    new.mkdir()
    (new / "big.jpg").write_bytes(big.read_bytes())
    usable, reasons = infer_inputs(new, cfg)
    assert usable == [] and "over data.max_file_bytes=50000" in reasons["big.jpg"]


def test_a_read_stops_at_the_cap_even_if_the_file_grew(tmp_path: Path) -> None:
    from pipeline.ml.images import ImageLimits
    from pipeline.storage.store import StoreRefused

    (tmp_path / "grown.jpg").write_bytes(encode("JPEG") + bytes(10_000))
    store = LocalStore(tmp_path)
    with pytest.raises(StoreRefused) as raised:
        store.read_capped("grown.jpg", 1000)
    assert raised.value.too_large
    bad = BadInputs()
    limits = ImageLimits(max_file_bytes=1000)
    assert list(checked_images(store, ["grown.jpg"], bad, 1, limits, sizes={})) == []  # unlisted
    assert "not read in full" in dict(bad.rows)["grown.jpg"]


@pytest.mark.parametrize("value", ["0", "-5", "'many'", "1e12"])
@pytest.mark.parametrize("key", ["data.max_pixels", "data.max_file_bytes"])
def test_the_limits_are_checked_as_configuration(key: str, value: str, tmp_path: Path) -> None:
    from pipeline.core.config import load_config
    from pipeline.orchestration.checks import check_config

    cfg = load_config([f"data.root={tmp_path}", f"store.root={tmp_path}", f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"{key}=.*must be a whole number"):
        check_config(cfg)


# ------------------------------------------------------------------------------ links, FIFOs


def test_a_link_to_a_private_file_outside_is_not_packed(
    dataset_copy: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    private = tmp_path / "private" / "secret.jpg"
    private.parent.mkdir()
    private.write_bytes(encode("JPEG", comment=SECRET))  # a valid photo: the old code packed it
    train = link(photo(person_folder(dataset_copy), "mask1"), private)
    evals = link(eval_image(dataset_copy), private)
    # a linked folder is not walked either
    folder = person_folder(dataset_copy, 1)
    (dataset_copy / "train" / "images" / f"{folder.name}-copy").symlink_to(folder)
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    _, index, bad = run_prepare(cfg)
    for path in (train, evals):
        assert "symbolic link" in bad[rel(dataset_copy, path)]
    assert "symbolic link" in bad[f"train/images/{folder.name}-copy"]
    assert not any("-copy" in p for p in index["path"])
    assert SECRET not in store_bytes(cfg)
    new = tmp_path / "new"
    new.mkdir()
    (new / "photo.jpg").symlink_to(private)
    usable, reasons = infer_inputs(new, cfg)
    assert usable == [] and "symbolic link" in reasons["photo.jpg"]


@pytest.mark.timeout(60, method="thread")
def test_a_fifo_and_a_link_to_dev_zero_do_not_hang_prepare(
    dataset_copy: Path, make_cfg: MakeCfg, fifos: list[Path]
) -> None:
    zero = link(photo(person_folder(dataset_copy), "mask1"), "/dev/zero")
    fifo = make_fifo(photo(person_folder(dataset_copy, 1), "mask1"), fifos)
    eval_fifo = make_fifo(eval_image(dataset_copy, 0), fifos)
    eval_zero = link(eval_image(dataset_copy, 1), "/dev/zero")
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    summary, index, bad = run_prepare(cfg)  # fingerprint first, then the photos
    assert "symbolic link" in bad[rel(dataset_copy, zero)]
    assert "symbolic link" in bad[rel(dataset_copy, eval_zero)]
    assert "named pipe (FIFO)" in bad[rel(dataset_copy, fifo)]
    assert "named pipe (FIFO)" in bad[rel(dataset_copy, eval_fifo)]
    assert summary["images"]["train"] > 0
    paths = {rel(dataset_copy, p) for p in (zero, fifo, eval_fifo, eval_zero)}
    assert not paths & set(index["path"])


@pytest.mark.timeout(60, method="thread")
def test_the_fingerprint_never_opens_links_or_fifos(
    dataset_copy: Path, make_cfg: MakeCfg, fifos: list[Path]
) -> None:
    cfg = make_cfg(dataset_copy)
    before = data_fingerprint(cfg)
    link(photo(person_folder(dataset_copy), "mask1"), "/dev/zero")
    make_fifo(eval_image(dataset_copy), fifos)
    after = data_fingerprint(cfg)
    assert after["files"] == before["files"] - 2  # neither is an input file


@pytest.mark.timeout(60, method="thread")
def test_links_and_fifos_in_infer_input_are_bad_inputs(
    tmp_path: Path, make_cfg: MakeCfg, fifos: list[Path]
) -> None:
    new = tmp_path / "new"
    (new / "day1").mkdir(parents=True)
    (new / "day1" / "ok.jpg").write_bytes(encode("JPEG"))
    (new / "day1" / "zero.jpg").symlink_to("/dev/zero")
    make_fifo(new / "day1" / "pipe.jpg", fifos)
    (new / "linked").symlink_to(new / "day1")  # a linked folder is not walked
    usable, reasons = infer_inputs(new, make_cfg(tmp_path))
    assert usable == ["day1/ok.jpg"]
    assert "symbolic link" in reasons["day1/zero.jpg"]
    assert "named pipe (FIFO)" in reasons["day1/pipe.jpg"]
    assert "symbolic link" in reasons["linked"]


def test_reads_never_follow_a_link_below_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "file.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (root / "dir").symlink_to(tmp_path / "outside")
    store = LocalStore(root)
    for key in ("a/file.txt", "dir/secret.txt"):
        with pytest.raises(StoreError, match="symbolic link"):
            store.read_bytes(key)
    assert store.sizes() == {} and store.checksums() == {}
    assert set(store.refused()) == {"a/file.txt", "dir"}
    # the root itself may be a link (e.g. data/generated -> the real folder)
    (tmp_path / "root-link").symlink_to(root)
    (root / "a" / "real.txt").write_bytes(b"ok")
    assert LocalStore(tmp_path / "root-link").read_bytes("a/real.txt") == b"ok"


# ------------------------------------------------------------------------------ file names


def test_a_file_name_that_is_not_utf8_is_a_bad_input(
    dataset_copy: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    folder = person_folder(dataset_copy)
    jpeg = photo(folder, "mask1").read_bytes()
    evals = os.fsencode(dataset_copy / "eval" / "images")
    for where, name in ((os.fsencode(folder), b"mask1\xff.jpg"), (evals, b"new\xfe.jpg")):
        with open(os.path.join(where, name), "wb") as f:
            f.write(jpeg)
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2")
    summary, _, bad = run_prepare(cfg)
    train_key = f"train/images/{folder.name}/mask1\\xff.jpg"
    assert "not valid UTF-8" in bad[train_key]
    assert "not valid UTF-8" in bad["eval/images/new\\xfe.jpg"]
    assert summary["images"]["train"] > 0 and all(p.isprintable() for p in bad)
    new = tmp_path / "new"
    new.mkdir()
    with open(os.path.join(os.fsencode(new), b"photo\xff.jpg"), "wb") as f:
        f.write(jpeg)
    usable, reasons = infer_inputs(new, cfg)
    assert usable == [] and "not valid UTF-8" in reasons["photo\\xff.jpg"]


# ------------------------------------------------------------------------------ what held


def test_a_196_megapixel_header_is_refused() -> None:
    header = struct.pack(">IIBBBBB", 14_000, 14_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    with pytest.raises(DataError, match="pixels"):  # PIL's own limit refused it before, too
        check_image(png, "big.png")


def test_a_huge_png_chunk_is_refused_without_reading_it() -> None:
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    huge = struct.pack(">I", 0x7FFF_FFF0) + b"tEXt" + b"x" * 64  # claims 2 GB, holds 64 bytes
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + huge
    with pytest.raises(DataError, match="not a readable image"):
        check_image(png, "chunk.png")


def test_path_traversal_in_train_csv_reads_nothing(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    csv = dataset_copy / "train" / "train.csv"
    people = pd.read_csv(csv, dtype=str, keep_default_na=False)
    escapes = ["../../eval", "../../../etc", "/etc"]
    extra = pd.DataFrame({"id": "999999", "gender": "male", "race": "Asian", "age": "30",
                          "path": escapes})  # fmt: skip
    pd.concat([people, extra], ignore_index=True).to_csv(csv, index=False)
    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    for escape in escapes:
        assert bad[f"train/images/{escape}"].endswith("but there is no such folder")
    assert index["path"].str.startswith(("train/images/", "eval/images/")).all()
    assert not index["path"].str.contains("..", regex=False).any()


# ------------------------------------------------------------------------------ infer, end to end


@pytest.fixture(scope="module")
def finished(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> DictConfig:
    """A finished single-model run in a local store."""
    from pipeline.core.config import load_config
    from pipeline.orchestration.local import run_local
    from tests.conftest import TINY_OVERRIDES

    store = tmp_path_factory.mktemp("attacks-infer") / "store"
    cfg = load_config([f"data.root={tiny_dataset}", f"store.root={store}", *TINY_OVERRIDES])
    run_local(cfg)
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")
def test_infer_reports_every_attack_and_classifies_the_rest(
    finished: DictConfig, tmp_path: Path, fake_gs: Path, fifos: list[Path]
) -> None:
    from pipeline.commands.infer import main as infer_main

    new = tmp_path / "new"
    new.mkdir()
    good = next((Path(str(finished.data.root)) / "eval" / "images").glob("*.jpg")).read_bytes()
    (new / "good.jpg").write_bytes(good)
    (new / "photo.jpg").write_bytes(EPS)
    (new / "bomb.png").write_bytes(png_bomb(5000, 5000))
    (new / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "private.jpg").write_bytes(encode("JPEG", comment=SECRET))
    (new / "private.jpg").symlink_to(tmp_path / "private.jpg")
    make_fifo(new / "pipe.jpg", fifos)
    with open(os.path.join(os.fsencode(new), b"name\xff.jpg"), "wb") as f:
        f.write(good)
    out = tmp_path / "answers"
    args = [f"infer.input={new}", f"infer.output={out}", f"store.root={finished.store.root}"]
    assert infer_main(args) == 0
    (csv,) = (out / "bad_inputs").glob("*.csv")
    bad = pd.read_csv(csv, keep_default_na=False)
    reasons = dict(zip(bad["path"], bad["reason"], strict=True))
    assert "PostScript" in reasons["photo.jpg"]
    assert "5000 × 5000 pixels is over data.max_pixels" in reasons["bomb.png"]
    for name in ("zero.jpg", "private.jpg"):
        assert "symbolic link" in reasons[name]
    assert "named pipe (FIFO)" in reasons["pipe.jpg"]
    assert "not valid UTF-8" in reasons["name\\xff.jpg"]
    (classes,) = (out / "classes").glob("*.csv")
    assert pd.read_csv(classes)["image"].tolist() == ["good.jpg"]
    assert not fake_gs.exists()
    assert SECRET not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
