"""Tests of pipeline.storage.store against a local folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline.core.errors import StoreError, StoreKeyNotFound
from pipeline.storage import store as store_mod
from pipeline.storage.store import LocalStore, S3Store, Store, join_key, open_store

MiB = 1024 * 1024


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(str(tmp_path / "root"), workers=4)
    return open_store(request.getfixturevalue("s3_root"), workers=4)


# ---------------------------------------------------------------------------------- join_key


def test_join_key_accepts_safe_parts() -> None:
    assert join_key("a", "b/c.jpg", "d") == "a/b/c.jpg/d"
    assert join_key("x..y", "a%20b") == "x..y/a%20b"


@pytest.mark.parametrize(
    "parts",
    [
        ("..",),
        ("a", "..", "b"),
        ("a/../b",),
        ("/abs",),
        ("/", "abs"),
        ("a//b",),
        ("a", "", "b"),
        ("",),
        ("a\\b",),
        ("..\\x",),
        ("%2e%2e",),
        ("a", "%2E%2e", "b"),
        ("a%2Fb",),
        ("a%2fb",),
        ("a%5cb",),
        ("a\x00b",),
        (".",),
    ],
)
def test_join_key_rejects_escapes(parts: tuple[str, ...]) -> None:
    with pytest.raises(StoreError):
        join_key(*parts)


def test_store_methods_validate_keys(store: Store) -> None:
    for bad in ("../x", "/x", "a//b", "a\\b", "%2e%2e/x"):
        with pytest.raises(StoreError):
            store.write_bytes(bad, b"x")
        with pytest.raises(StoreError):
            store.read_bytes(bad)
    with pytest.raises(StoreError):
        store.child("..")
    assert store.list() == []


# ---------------------------------------------------------------------------------- basics


@pytest.mark.s3
def test_open_store_kinds(tmp_path: Path, s3_root: str) -> None:
    local = open_store(str(tmp_path / "x") + "/")
    assert isinstance(local, LocalStore)
    assert local.uri == str(tmp_path / "x")
    s3 = open_store(s3_root + "/")
    assert isinstance(s3, S3Store)
    assert s3.uri == s3_root
    assert s3.uri_of("a/b") == s3_root + "/a/b"
    with pytest.raises(StoreError, match="unsupported"):
        open_store("gs://bucket/x")


def test_bytes_text_json_round_trip(store: Store) -> None:
    store.write_bytes("a/b/c.bin", b"\x00\x01hello")
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01hello"
    store.write_bytes("a/b/c.bin", b"replaced")
    assert store.read_bytes("a/b/c.bin") == b"replaced"
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""
    store.write_text("t.txt", "héllo")
    assert store.read_text("t.txt") == "héllo"
    store.write_json("j.json", {"b": [1, 2], "a": "x"})
    assert store.read_json("j.json") == {"a": "x", "b": [1, 2]}
    store.write_text("bad.json", "{nope")
    with pytest.raises(StoreError, match=re.escape("bad.json")):
        store.read_json("bad.json")


def test_missing_key_names_uri(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreKeyNotFound) as info:
        store.read_bytes("no/such.bin")
    assert store.uri_of("no/such.bin") in str(info.value)
    assert store.uri in str(info.value)
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(StoreKeyNotFound, match=re.escape("no/such.bin")):
        store.read_file("no/such.bin", dest)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_file_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * MiB + 17)
    src.write_bytes(payload)
    store.write_file("files/src.bin", src)
    assert store.sizes("files") == {"files/src.bin": len(payload)}
    dest = tmp_path / "deep" / "down" / "dest.bin"
    store.read_file("files/src.bin", dest)
    assert dest.read_bytes() == payload
    assert [p.name for p in dest.parent.iterdir()] == ["dest.bin"]  # no temp files left
    with pytest.raises(StoreError, match=re.escape("nope.bin")):
        store.write_file("files/x", tmp_path / "nope.bin")


def test_list_sizes_exists(store: Store) -> None:
    keys = ["b/2.txt", "a/1.txt", "a/sub/3.txt", "ab/4.txt", "top.txt"]
    for i, key in enumerate(keys):
        store.write_bytes(key, b"x" * (i + 1))
    assert store.list() == sorted(keys)
    assert store.list("a") == ["a/1.txt", "a/sub/3.txt"]  # folder-like: not "ab/"
    assert store.list("a/") == ["a/1.txt", "a/sub/3.txt"]
    assert store.list("a/sub") == ["a/sub/3.txt"]
    assert store.list("missing") == []
    assert store.list("top.txt") == []
    expected = {"a/1.txt": 2, "a/sub/3.txt": 3, "ab/4.txt": 4, "b/2.txt": 1, "top.txt": 5}
    assert store.sizes() == expected
    assert store.exists("a/1.txt")
    assert not store.exists("a/nope.txt")
    assert not store.exists("a")  # a folder is not a key


def test_local_list_skips_temp_files(tmp_path: Path) -> None:
    st = open_store(str(tmp_path))
    st.write_bytes("d/real.bin", b"1")
    (tmp_path / "d" / ".tmp-abc123").write_bytes(b"partial")
    (tmp_path / ".tmp-dir").mkdir()
    (tmp_path / ".tmp-dir" / "x").write_bytes(b"partial")
    assert st.list() == ["d/real.bin"]
    assert st.sizes("d") == {"d/real.bin": 1}


def test_empty_local_root_lists_nothing(tmp_path: Path) -> None:
    st = open_store(str(tmp_path / "not-yet"))
    assert st.list() == []
    assert not (tmp_path / "not-yet").exists()
    st.write_bytes("k", b"v")
    assert (tmp_path / "not-yet" / "k").read_bytes() == b"v"


def test_delete_and_delete_prefix(store: Store) -> None:
    for key in ["a/1", "a/b/2", "ab/3", "c"]:
        store.write_bytes(key, b"x")
    store.delete("c")
    store.delete("c")  # missing is fine
    store.delete("never/was")
    assert not store.exists("c")
    store.delete_prefix("a")
    assert store.list() == ["ab/3"]
    store.delete_prefix("nothing/here")
    store.delete_prefix("")
    assert store.list() == []


def test_read_many_and_write_many(store: Store) -> None:
    items = [(f"many/{i:03d}.bin", f"value {i}".encode()) for i in range(60)]
    store.write_many(iter(items))  # a generator works
    assert store.list("many") == sorted(k for k, _ in items)
    order = [*(k for k, _ in reversed(items)), items[0][0]]  # any order, repeats allowed
    got = list(store.read_many(order))
    assert [k for k, _ in got] == order
    assert all(v == dict(items)[k] for k, v in got)
    assert list(store.read_many([])) == []
    store.write_many([])
    with pytest.raises(StoreKeyNotFound, match=re.escape("missing.bin")):
        list(store.read_many(["many/000.bin", "many/missing.bin", "many/001.bin"]))


def test_read_many_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = open_store(str(tmp_path), workers=2)
    keys = [f"k{i}" for i in range(50)]
    st.write_many((k, b"v") for k in keys)
    started: list[str] = []
    lock = threading.Lock()
    real = st.read_bytes

    def counting(key: str) -> bytes:
        with lock:
            started.append(key)
        return real(key)

    monkeypatch.setattr(st, "read_bytes", counting)
    it = st.read_many(keys)
    assert next(it) == ("k0", b"v")
    time.sleep(0.2)
    assert len(started) <= 2 * 2 + 1  # a sliding window, not all 50 at once
    rest = list(it)
    assert len(rest) == 49 and len(started) == 50


def test_write_many_failure_raises(tmp_path: Path) -> None:
    st = open_store(str(tmp_path))
    with pytest.raises(StoreError):
        st.write_many([("ok", b"1"), ("../escape", b"2")])
    assert not (tmp_path.parent / "escape").exists()


def test_child_store(store: Store) -> None:
    child = store.child("sub/dir")
    assert type(child) is type(store)
    assert child.uri == store.uri_of("sub/dir")
    child.write_bytes("k.txt", b"child")
    assert store.read_bytes("sub/dir/k.txt") == b"child"
    assert child.list() == ["k.txt"]
    assert child.uri_of("k.txt") == store.uri_of("sub/dir/k.txt")
    store.write_bytes("sub/other.txt", b"o")
    assert child.list() == ["k.txt"]
    grandchild = child.child("g")
    grandchild.write_bytes("x", b"1")
    assert store.list() == ["sub/dir/g/x", "sub/dir/k.txt", "sub/other.txt"]
    child.delete_prefix("")
    assert store.list() == ["sub/other.txt"]


# ---------------------------------------------------------------------------------- atomicity


def test_local_failed_replace_leaves_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = open_store(str(tmp_path))
    st.write_bytes("d/keep", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store_mod.os, "replace", broken_replace)
    with pytest.raises(StoreError, match="disk on fire"):
        st.write_bytes("d/new", b"data")
    with pytest.raises(StoreError):
        st.write_bytes("d/keep", b"new")
    monkeypatch.undo()
    assert st.list() == ["d/keep"]
    assert st.read_bytes("d/keep") == b"old"
    assert sorted(os.listdir(tmp_path / "d")) == ["keep"]  # temp files cleaned up


def test_local_failed_write_leaves_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = open_store(str(tmp_path))
    src = tmp_path / "src.bin"
    src.write_bytes(b"z" * MiB)

    def broken_fsync(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(store_mod.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="fsync failed"):
        st.write_file("out/f.bin", src)
    with pytest.raises(StoreError, match="fsync failed"):
        st.read_file("src.bin", tmp_path / "dl" / "f.bin")
    monkeypatch.undo()
    assert st.list() == ["src.bin"]
    assert os.listdir(tmp_path / "out") == []
    assert os.listdir(tmp_path / "dl") == []


@pytest.mark.s3
def test_s3_aborted_multipart_upload_leaves_no_key(s3_root: str, tmp_path: Path) -> None:
    st = S3Store(s3_root, workers=4, multipart_threshold=8 * MiB, max_attempts=1)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(20 * MiB))  # three 8 MiB parts

    class Boom(Exception):
        pass

    def fail_second_part(request: object, **kwargs: object) -> None:
        if "partNumber=2" in str(getattr(request, "url", "")):
            raise Boom("network died mid-upload")

    st.client.meta.events.register("before-send.s3.UploadPart", fail_second_part)
    with pytest.raises((Boom, StoreError)):
        st.write_file("big.bin", src)
    with pytest.raises((Boom, StoreError)):
        st.write_bytes("big2.bin", src.read_bytes())
    st.client.meta.events.unregister("before-send.s3.UploadPart", fail_second_part)
    assert not st.exists("big.bin")
    assert not st.exists("big2.bin")
    assert st.list() == []
    uploads = st.client.list_multipart_uploads(Bucket=st.bucket).get("Uploads", [])
    assert uploads == []  # the failed multipart upload was aborted
    st.write_file("big.bin", src)  # and a clean retry works, multipart and all
    assert st.sizes() == {"big.bin": 20 * MiB}


# ---------------------------------------------------------------------------------- S3 errors


@pytest.mark.s3
def test_unreachable_endpoint_is_clear_and_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    start = time.monotonic()
    with pytest.raises(StoreError) as info:
        open_store("s3://some-bucket/x", max_attempts=2, connect_timeout=1, read_timeout=1)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"cannot reach S3 endpoint {endpoint}" in message
    assert "AWS_ENDPOINT_URL" in message


@pytest.mark.s3
def test_endpoint_url_s3_is_honoured(s3_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # wrong; the S3 one wins
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    st = open_store(s3_root, max_attempts=1)
    assert isinstance(st, S3Store) and st.endpoint == endpoint


@pytest.mark.s3
def test_missing_bucket_is_clear(s3_root: str) -> None:
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(StoreError) as info:
        open_store(f"s3://{bucket}/root")
    message = str(info.value)
    assert f"bucket {bucket} does not exist at endpoint {os.environ['AWS_ENDPOINT_URL']}" in message
    assert f"create it or fix the URI=s3://{bucket}/root" in message
    with pytest.raises(StoreError, match=f"create it or fix store.root=s3://{bucket}/root"):
        open_store(f"s3://{bucket}/root", key="store.root")


@pytest.mark.s3
def test_a_missing_data_bucket_names_data_root(
    s3_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.commands.launch import main as launch_main

    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    args = [f"data.root=s3://{bucket}/mask", f"store.root={s3_root}/store"]
    assert launch_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: bucket {bucket} does not exist") and len(err.splitlines()) == 1
    assert f"create it or fix data.root=s3://{bucket}/mask" in err


@pytest.mark.s3
def test_s3_errors_do_not_leak_secrets(s3_root: str) -> None:
    st = open_store(s3_root)
    with pytest.raises(StoreKeyNotFound) as info:
        st.read_bytes("nope")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in repr(st)


@pytest.mark.s3
def test_where_the_keys_came_from_is_logged_once(
    s3_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pipeline.core.logs import OnceFilter, setup_logging

    credentials = logging.getLogger("botocore.credentials")
    for f in [f for f in credentials.filters if isinstance(f, OnceFilter)]:
        credentials.removeFilter(f)
    setup_logging()
    with caplog.at_level(logging.INFO):
        for _ in range(4):  # a run opens several clients: data, store, one per stage
            open_store(s3_root).list("")
    found = [r for r in caplog.records if "Found credentials" in r.getMessage()]
    assert len(found) == 1
