"""Outputs honour the umask: a teammate on a shared file system reads what a run writes when the
umask lets them (files 0666 less the umask, folders 0777 less the umask), not 0600 as the
temporary files renamed into place used to make them."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.commands.infer import main as infer_main
from pipeline.commands.launch import main as launch_main
from pipeline.commands.pull import main as pull_main
from pipeline.storage.store import open_store
from tests.conftest import TINY_OVERRIDES


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask set to `request.param` for the test, restored after."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(top: Path) -> dict[str, int]:
    """Permission bits of every file and folder under `top` (and `top`), by relative path."""
    found = {".": stat.S_IMODE(top.stat().st_mode)}
    for path in top.rglob("*"):
        found[str(path.relative_to(top))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def wrong_modes(top: Path, mask: int) -> dict[str, str]:
    """What under `top` lacks the mode the umask gives (files 0666 & ~mask, folders 0777 &
    ~mask) → its mode in octal."""
    wrong = {}
    for rel, mode in modes(top).items():
        want = (0o777 if (top / rel).is_dir() else 0o666) & ~mask
        if mode != want:
            wrong[rel] = oct(mode)
    return wrong


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True, ids=oct)
def test_a_runs_outputs_honour_the_umask(umask: int, tiny_dataset: Path, tmp_path: Path) -> None:
    store, pulled, answers = tmp_path / "store", tmp_path / "pulled", tmp_path / "answers"
    common = [f"store.root={store}", *TINY_OVERRIDES]
    assert launch_main(["--cluster", "local", f"data.root={tiny_dataset}", *common]) == 0
    assert pull_main(["--what", "all", "--to", str(pulled), *common]) == 0
    photos = tmp_path / "new"
    shutil.copytree(tiny_dataset / "eval" / "images", photos)
    assert infer_main([f"infer.input={photos}", f"infer.output={answers}", *common]) == 0

    written = {"store": store, "pulled": pulled, "infer": answers}
    for name in ("latest.json", "report/index.html"):
        assert (store / name).is_file(), name
    assert (pulled / "submission.csv").is_file() and any((answers / "classes").glob("*.csv"))
    assert {name: wrong_modes(top, umask) for name, top in written.items()} == {
        name: {} for name in written
    }


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True, ids=oct)
def test_store_writes_and_downloads_honour_the_umask(umask: int, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    store.write_bytes("a/b.json", b"{}")
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 10)
    store.write_file("a/c.bin", source)
    store.read_file("a/b.json", tmp_path / "down" / "b.json")
    assert wrong_modes(tmp_path / "store", umask) == {}
    assert wrong_modes(tmp_path / "down", umask) == {}


@pytest.mark.s3
@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True, ids=oct)
def test_s3_downloads_honour_the_umask(umask: int, s3_root: str, tmp_path: Path) -> None:
    store = open_store(s3_root, workers=2)
    store.write_bytes("x/y.csv", b"a,b\n")
    store.read_file("x/y.csv", tmp_path / "down" / "y.csv")
    assert (tmp_path / "down" / "y.csv").read_bytes() == b"a,b\n"
    assert wrong_modes(tmp_path / "down", umask) == {}
