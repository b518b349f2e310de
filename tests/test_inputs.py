"""The real archive's quirks (issue 8, FACTS.md "Known dirt"), one test per case.

Each case is built from the generated tiny dataset plus PIL edits. Every quirk is either used
correctly (indexed with the right labels, decoded the right way up, in RGB, at the training size)
or reported in `bad_inputs.csv` with its path and reason; sidecars and junk are never images.
Cases already covered in test_prepare.py: missing train.csv, missing columns, folder names that do
not parse, truncated JPEG, text file named .jpg, `._*` sidecars and `.DS_Store` in train/images,
train.csv rows without a folder, the bad-share threshold, label fixes naming an unknown person.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.domain.dataset import parse_folder_name
from pipeline.domain.labels import PHOTO_MASK
from pipeline.ml.images import check_image, decode_resized, load_images
from pipeline.run.state import run_store
from pipeline.stages.prepare import prepare

MakeCfg = Callable[..., DictConfig]


# ------------------------------------------------------------------------------------ helpers


def run_prepare(cfg: DictConfig) -> tuple[dict, pd.DataFrame, dict[str, str]]:
    """prepare, then (summary, index, {bad path: reason})."""
    summary = prepare(cfg)
    run = run_store(cfg)
    index = pd.read_parquet(io.BytesIO(run.read_bytes("index.parquet")))
    bad = pd.read_csv(io.BytesIO(run.read_bytes("bad_inputs.csv")), keep_default_na=False)
    return summary, index, dict(zip(bad["path"], bad["reason"], strict=True))


def person_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train" / "images").iterdir() if p.is_dir())


def photo(folder: Path, stem: str) -> Path:
    return next(p for p in folder.iterdir() if p.stem == stem)


def eval_ids(root: Path) -> list[str]:
    return pd.read_csv(root / "eval" / "info.csv", dtype=str)["ImageID"].tolist()


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def two_tone(width: int = 48, height: int = 64) -> Image.Image:
    """An upright test card: red top half, blue bottom half, a green stripe on the left."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[: height // 2] = (255, 0, 0)
    a[height // 2 :] = (0, 0, 255)
    a[:, : width // 6] = (0, 255, 0)
    return Image.fromarray(a)


def train_count(index: pd.DataFrame) -> int:
    return int(index["split"].isin(["train", "val", "holdout"]).sum())


def replace_photo(folder: Path, stem: str, data: bytes, ext: str) -> Path:
    """Replace photo `stem` of a person by `data` saved under extension `ext`."""
    old = photo(folder, stem)
    old.unlink()
    new = folder / f"{stem}{ext}"
    new.write_bytes(data)
    return new


def indexed_blob(cfg: DictConfig, index: pd.DataFrame, image_id: str) -> bytes:
    from pipeline.storage.shards import read_shard

    row = index.set_index("image_id").loc[image_id]
    return read_shard(run_store(cfg), row["shard"])[image_id]


# ------------------------------------------------------------------------------ junk files


def test_thumbs_db_and_desktop_ini_are_junk_never_images(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    folder = person_folders(dataset_copy)[0]
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 OLE junk")
    (dataset_copy / "train" / "images" / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    (dataset_copy / "eval" / "images" / "Thumbs.db").write_bytes(b"junk")
    summary, index, bad = run_prepare(make_cfg(dataset_copy, "data.max_bad_fraction=0"))
    rel = f"train/images/{folder.name}/Thumbs.db"
    assert "junk" in bad[rel] and "not an image" in bad[rel]
    assert "junk" in bad["train/images/desktop.ini"]
    assert "junk" in bad["eval/images/Thumbs.db"]
    assert not set(index["path"]) & set(bad)
    # junk is not a training photo: a zero tolerance for bad photos still passes
    assert train_count(index) == 7 * len(person_folders(dataset_copy))
    assert summary["images"]["eval"] == len(eval_ids(dataset_copy))


def test_sidecars_and_junk_in_eval_images_are_never_images(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    images = dataset_copy / "eval" / "images"
    first = eval_ids(dataset_copy)[0]
    (images / f"._{first}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _, index, bad = run_prepare(make_cfg(dataset_copy))
    assert "sidecar" in bad[f"eval/images/._{first}"]
    assert "junk" in bad["eval/images/.DS_Store"]
    evals = index[index["split"] == "eval"]
    assert evals["image_id"].tolist() == eval_ids(dataset_copy)  # the real image is still used


# ------------------------------------------------------------------------------ file formats


def test_uppercase_and_mixed_extensions_are_used(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folder = person_folders(dataset_copy)[0]
    for stem, ext in (("mask1", ".JPG"), ("normal", ".JPEG"), ("incorrect_mask", ".PNG")):
        old = photo(folder, stem)
        data = old.read_bytes()
        kind = Image.open(io.BytesIO(data)).format
        fmt = "PNG" if ext == ".PNG" else "JPEG"
        if kind != fmt:
            data = encode(Image.open(io.BytesIO(data)).convert("RGB"), fmt)
        old.unlink()
        (folder / f"{stem.upper() if stem == 'mask1' else stem}{ext}").write_bytes(data)
    first = eval_ids(dataset_copy)[0]
    upper = Path(first).stem + Path(first).suffix.upper()
    (dataset_copy / "eval" / "images" / first).rename(dataset_copy / "eval" / "images" / upper)
    info = pd.read_csv(dataset_copy / "eval" / "info.csv", dtype=str, keep_default_na=False)
    info.loc[0, "ImageID"] = upper
    info.to_csv(dataset_copy / "eval" / "info.csv", index=False)
    truth = pd.read_csv(dataset_copy / "eval" / "ground_truth.csv", dtype=str)
    truth.loc[truth["ImageID"] == first, "ImageID"] = upper
    truth.to_csv(dataset_copy / "eval" / "ground_truth.csv", index=False)

    _, index, bad = run_prepare(make_cfg(dataset_copy))
    assert bad == {}
    rows = index.set_index("image_id")
    for stem in ("mask1", "normal", "incorrect_mask"):
        row = rows.loc[f"{folder.name}/{stem}"]
        assert row["mask"] == PHOTO_MASK[stem]
        assert Path(row["path"]).suffix in (".JPG", ".JPEG", ".PNG")
    evals = index[index["split"] == "eval"].sort_values("order")
    assert evals["image_id"].iloc[0] == upper and evals["label"].iloc[0] >= 0


def test_same_photo_in_two_formats_uses_one_and_reports_the_other(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    folder = person_folders(dataset_copy)[0]
    jpg = photo(folder, "mask2")
    png = folder / "mask2.png" if jpg.suffix != ".png" else folder / "mask2.jpg"
    png.write_bytes(
        encode(Image.open(jpg).convert("RGB"), "PNG" if png.suffix == ".png" else "JPEG")
    )
    _, index, bad = run_prepare(make_cfg(dataset_copy))
    reported = [p for p in bad if p.startswith(f"train/images/{folder.name}/mask2")]
    assert len(reported) == 1 and "second file for photo" in bad[reported[0]]
    assert (index["image_id"] == f"{folder.name}/mask2").sum() == 1


def test_png_with_alpha_is_used_as_rgb(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folder = person_folders(dataset_copy)[0]
    rgb = Image.open(photo(folder, "mask3")).convert("RGB")
    rgba = rgb.copy()
    alpha = Image.new("L", rgb.size, 255)
    alpha.paste(0, (0, 0, rgb.size[0] // 2, rgb.size[1] // 4))  # a transparent corner
    rgba.putalpha(alpha)
    data = encode(rgba, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    replace_photo(folder, "mask3", data, ".png")

    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    assert bad == {}
    blob = indexed_blob(cfg, index, f"{folder.name}/mask3")
    h, w = rgb.size[1], rgb.size[0]
    decoded = decode_resized(blob, (h, w))
    assert decoded.shape == (3, h, w) and decoded.dtype == torch.uint8
    # the colour channels are the photo's own; the alpha channel is dropped, not mixed in
    expected = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    assert torch.equal(decoded, expected)


def test_grayscale_jpeg_is_used_as_three_equal_channels(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    folder = person_folders(dataset_copy)[0]
    gray = Image.open(photo(folder, "mask4")).convert("L")
    data = encode(gray, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "L"
    replace_photo(folder, "mask4", data, ".jpg")

    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    assert bad == {}
    decoded = decode_resized(indexed_blob(cfg, index, f"{folder.name}/mask4"), (32, 24))
    assert decoded.shape == (3, 32, 24)
    assert torch.equal(decoded[0], decoded[1]) and torch.equal(decoded[1], decoded[2])
    assert decoded.float().std() > 5  # a real picture, not a blank


def test_cmyk_jpeg_is_used_with_the_right_colours(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folder = person_folders(dataset_copy)[0]
    card = two_tone(*Image.open(photo(folder, "mask5")).size)
    data = encode(card.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    replace_photo(folder, "mask5", data, ".jpg")

    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    assert bad == {}
    h, w = card.size[1], card.size[0]
    decoded = decode_resized(indexed_blob(cfg, index, f"{folder.name}/mask5"), (h, w)).float()
    top, bottom = decoded[:, h // 4, w // 2], decoded[:, 3 * h // 4, w // 2]
    assert top[0] > 200 and top[1] < 60 and top[2] < 60  # red, not its CMYK inverse (cyan)
    assert bottom[2] > 200 and bottom[0] < 60 and bottom[1] < 60  # blue


def test_exif_rotated_photo_is_decoded_upright(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folder = person_folders(dataset_copy)[0]
    upright = two_tone(48, 64)
    # a camera stores the pixels rotated and says so in EXIF: Orientation 6 = rotate 90° CW
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (64, 48)  # landscape as stored
    replace_photo(folder, "normal", data, ".jpg")

    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    assert bad == {}
    decoded = decode_resized(indexed_blob(cfg, index, f"{folder.name}/normal"), (64, 48)).float()
    assert decoded[0, 8, 30] > 200 and decoded[2, 8, 30] < 60  # red on top
    assert decoded[2, 56, 30] > 200 and decoded[0, 56, 30] < 60  # blue at the bottom
    assert decoded[1, 32, 2] > 200  # the green stripe on the left


def test_photos_of_the_wrong_size_are_resized(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folders = person_folders(dataset_copy)
    small = Image.open(photo(folders[0], "mask1")).convert("RGB").resize((9, 7))
    large = Image.open(photo(folders[1], "mask1")).convert("RGB").resize((300, 120))
    replace_photo(folders[0], "mask1", encode(small, "JPEG"), ".jpg")
    replace_photo(folders[1], "mask1", encode(large, "PNG"), ".png")

    cfg = make_cfg(dataset_copy)
    _, index, bad = run_prepare(cfg)
    assert bad == {}
    ids = [f"{folders[0].name}/mask1", f"{folders[1].name}/mask1"]
    rows = index.set_index("image_id").loc[ids]
    images = load_images(run_store(cfg), ids, rows["shard"].tolist(), (32, 24), threads=1)
    assert images.shape == (2, 3, 32, 24)
    assert images.float().std() > 5


def test_zero_byte_files_are_reported(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    folder = person_folders(dataset_copy)[0]
    empty = photo(folder, "mask1")
    empty.write_bytes(b"")
    first = eval_ids(dataset_copy)[0]
    (dataset_copy / "eval" / "images" / first).write_bytes(b"")
    cfg = make_cfg(dataset_copy, "data.max_bad_fraction=0.2", "data.allow_missing_eval=true")
    _, index, bad = run_prepare(cfg)
    assert bad[empty.relative_to(dataset_copy).as_posix()] == "empty file (0 bytes)"
    assert bad[f"eval/images/{first}"] == "empty file (0 bytes)"
    assert f"{folder.name}/mask1" not in set(index["image_id"])
    assert first not in set(index["image_id"])
    with pytest.raises(DataError, match="empty file"):
        check_image(b"", "x.jpg")


def test_an_unreadable_image_is_named_in_its_reason() -> None:
    # a PNG signature and IHDR with a wrong checksum: past the magic-byte check, PIL refuses it
    ihdr = b"IHDR" + (4).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    broken = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + b"\0\0\0\0"
    with pytest.raises(DataError) as raised:
        check_image(broken, "p001/mask1.jpg")
    reason = str(raised.value)
    assert "BytesIO" not in reason and "0x" not in reason
    assert reason.count("p001/mask1.jpg") == 2  # the prefix, and where PIL named its buffer


# ------------------------------------------------------------------------------ train.csv


def test_folder_missing_from_train_csv_is_used_from_its_name(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    csv = dataset_copy / "train" / "train.csv"
    people = pd.read_csv(csv, dtype=str)
    dropped = people.iloc[0]
    people.iloc[1:].to_csv(csv, index=False)
    _, index, bad = run_prepare(make_cfg(dataset_copy))
    assert bad == {}
    rows = index[index["person_id"] == dropped["id"]]
    person = parse_folder_name(dropped["path"])
    assert len(rows) == 7
    assert (rows["gender"] == person.gender).all() and (rows["age"] == person.age).all()


def test_person_id_used_twice_stays_on_one_side_of_the_split(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    # FACTS.md: id 003397 appears twice, with ages 20 and 19 (two folders, one person)
    folders = person_folders(dataset_copy)
    person = parse_folder_name(folders[0].name)
    twin = folders[1].rename(
        folders[1].with_name(f"{person.person_id}_{folders[0].name.split('_')[1]}_Asian_19")
    )
    csv = dataset_copy / "train" / "train.csv"
    people = pd.read_csv(csv, dtype=str)
    people.loc[people["path"] == folders[1].name, ["id", "age", "path"]] = [
        person.person_id,
        "19",
        twin.name,
    ]
    people.to_csv(csv, index=False)

    _, index, bad = run_prepare(make_cfg(dataset_copy))
    assert bad == {}
    rows = index[index["person_id"] == person.person_id]
    assert len(rows) == 14 and rows["image_id"].is_unique
    assert rows["split"].nunique() == 1  # never on both sides of the split
    assert set(rows["age"]) == {person.age, 19}  # each folder keeps its own label


def test_csvs_with_bom_crlf_and_extra_columns(
    tiny_dataset: Path, dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    for name in ("train/train.csv", "eval/info.csv", "eval/ground_truth.csv"):
        path = dataset_copy / name
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.insert(0, "note", "exported by a spreadsheet")
        table.columns = [f" {c} " if c == "ImageID" else c for c in table.columns]
        text = table.to_csv(index=False, lineterminator="\r\n")
        path.write_bytes("\ufeff".encode() + text.encode())
    _, clean, _ = run_prepare(make_cfg(tiny_dataset))
    _, dirty, bad = run_prepare(make_cfg(dataset_copy, "run_id=dirty"))
    assert bad == {}
    columns = ["image_id", "person_id", "split", "label", "order"]
    assert dirty[columns].equals(clean[columns])


# ------------------------------------------------------------------------------ eval


def test_eval_image_listed_but_missing_is_reported(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    ids = eval_ids(dataset_copy)
    (dataset_copy / "eval" / "images" / ids[3]).unlink()
    summary, index, bad = run_prepare(make_cfg(dataset_copy, "data.allow_missing_eval=true"))
    assert bad == {f"eval/images/{ids[3]}": "listed in eval/info.csv but missing"}
    evals = index[index["split"] == "eval"].sort_values("order")
    assert evals["image_id"].tolist() == ids[:3] + ids[4:]
    assert summary["eval_listed"] == len(ids)  # the vote compares against this (short = error)


def test_eval_image_not_listed_is_reported(dataset_copy: Path, make_cfg: MakeCfg) -> None:
    extra = dataset_copy / "eval" / "images" / "0123456789abcdef.jpg"
    extra.write_bytes((dataset_copy / "eval" / "images" / eval_ids(dataset_copy)[0]).read_bytes())
    _, index, bad = run_prepare(make_cfg(dataset_copy))
    assert bad == {"eval/images/0123456789abcdef.jpg": "not listed in eval/info.csv"}
    assert "0123456789abcdef.jpg" not in set(index["image_id"])


def test_info_csv_without_image_id_column_names_the_file(
    dataset_copy: Path, make_cfg: MakeCfg
) -> None:
    (dataset_copy / "eval" / "info.csv").write_text("image,ans\na.jpg,\n")
    with pytest.raises(DataError, match=r"eval/info\.csv lacks column\(s\) \['ImageID'\]"):
        prepare(make_cfg(dataset_copy))


# ------------------------------------------------------------------------------ label fix


def test_label_fix_naming_unknown_image_ids_is_reported(
    tiny_dataset: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    folder = person_folders(tiny_dataset)[0].name
    fix = tmp_path / "fix.csv"
    fix.write_text(
        f"image_id,mask\n{folder}/mask1,incorrect\n{folder}/mask9,wear\n999999_x/normal,wear\n"
    )
    summary, index, bad = run_prepare(make_cfg(tiny_dataset, f"data.label_fix={fix}"))
    assert summary["label_fixes"] == 1
    assert index.set_index("image_id").loc[f"{folder}/mask1", "mask"] == 1
    assert bad[f"{fix} line 3"] == f"label fix names unknown image_id '{folder}/mask9'"
    assert bad[f"{fix} line 4"] == "label fix names unknown image_id '999999_x/normal'"
