"""The store against S3-compatible servers older than boto3's default integrity checksums
(tests/old_s3.py: a proxy that refuses the new headers, in front of the real SeaweedFS), and
boto3's default credential chain (no AWS_ACCESS_KEY_ID anywhere)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.errors import StoreError
from pipeline.run.history import prune_checkpoints
from pipeline.storage.store import S3Store, open_store
from tests.old_s3 import OldS3Proxy, old_s3_proxy, refusal
from tests.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

MiB = 1024 * 1024
pytestmark = pytest.mark.s3


@pytest.fixture
def old_s3(s3_root: str, seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[
    tuple[str, OldS3Proxy]
]:  # fmt: skip
    """(s3://<fresh bucket>/root, the proxy) with AWS_ENDPOINT_URL pointing at the proxy."""
    for var in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(var, raising=False)
    with old_s3_proxy(seaweed.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield s3_root, proxy


def test_the_proxy_refuses_what_an_old_server_refuses() -> None:
    """The refusal rules themselves (the proxy's only fake part)."""
    assert refusal("PUT", "/b/k", {"x-amz-checksum-crc32": "AAAAAA=="}) is not None
    assert refusal("PUT", "/b/k", {"x-amz-sdk-checksum-algorithm": "CRC32"}) is not None
    assert refusal("PUT", "/b/k", {"content-encoding": "aws-chunked"}) is not None
    assert refusal("PUT", "/b/k", {"x-amz-trailer": "x-amz-checksum-crc32"}) is not None
    assert refusal("POST", "/b?delete", {}) == "DeleteObjects without Content-MD5"
    assert refusal("POST", "/b?delete", {"content-md5": "x"}) is None
    assert refusal("PUT", "/b/k", {"content-type": "binary/octet-stream"}) is None


def test_every_store_operation_works_against_an_old_s3_server(
    old_s3: tuple[str, OldS3Proxy], tmp_path: Path
) -> None:
    """Write, read, list, download, delete and delete-under-a-prefix (DeleteObjects) through
    the proxy: nothing is refused, and what was written reads back."""
    uri, proxy = old_s3
    store = open_store(uri, workers=4)
    store.write_bytes("a/one.bin", b"one")
    store.write_json("a/two.json", {"x": 1})
    src = tmp_path / "three.bin"
    src.write_bytes(os.urandom(1000))
    store.write_file("b/three.bin", src)
    store.write_many((f"many/{i}.txt", str(i).encode()) for i in range(5))
    assert store.read_bytes("a/one.bin") == b"one"
    assert store.read_json("a/two.json") == {"x": 1}
    store.read_file("b/three.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert store.list("a") == ["a/one.bin", "a/two.json"]
    assert store.exists("b/three.bin")
    store.delete("a/one.bin")
    store.delete_prefix("many")
    assert store.list() == ["a/two.json", "b/three.bin"]
    assert proxy.refused == []
    assert any("?delete" in line for line in proxy.forwarded)  # DeleteObjects did go through


def test_multipart_uploads_work_against_an_old_s3_server(
    old_s3: tuple[str, OldS3Proxy], tmp_path: Path
) -> None:
    """Uploads above the multipart threshold (TransferConfig) go through the proxy as a real
    multipart upload (CreateMultipartUpload, UploadPart, Complete) and read back whole."""
    uri, proxy = old_s3
    store = S3Store(uri, workers=2, multipart_threshold=5 * MiB)  # parts of 8 MiB
    payload = os.urandom(9 * MiB)
    store.write_bytes("big/memory.bin", payload)
    src = tmp_path / "big.bin"
    src.write_bytes(payload[::-1])
    store.write_file("big/file.bin", src)
    assert store.read_bytes("big/memory.bin") == payload
    store.read_file("big/file.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload[::-1]
    assert proxy.refused == []
    parts = [line for line in proxy.forwarded if "partNumber=" in line]
    assert len(parts) == 4, proxy.forwarded  # 2 uploads x 2 parts


def test_retention_deletes_old_checkpoints_on_an_old_s3_server(
    old_s3: tuple[str, OldS3Proxy],
) -> None:
    """The real retention (run.history.prune_checkpoints) through the proxy."""
    uri, proxy = old_s3
    root = open_store(uri, workers=4)
    ids = ["20260101T000000Z-abcdef", "20260102T000000Z-abcdef"]
    for run_id in ids:
        root.write_bytes(f"runs/{run_id}/models/a/checkpoint.pt", b"x")
        root.write_bytes(f"runs/{run_id}/models/a/metrics.json", b"{}")
    root.write_json("latest.json", {"run_id": ids[1]})
    assert prune_checkpoints(root, keep=1) == [f"runs/{ids[0]}/models/a/checkpoint.pt"]
    assert root.list("runs") == [
        f"runs/{ids[0]}/models/a/metrics.json",
        f"runs/{ids[1]}/models/a/checkpoint.pt",
        f"runs/{ids[1]}/models/a/metrics.json",
    ]
    assert proxy.refused == []


@pytest.mark.parametrize("where", ["variable", "profile"])
def test_the_users_own_checksum_setting_still_wins(
    old_s3: tuple[str, OldS3Proxy], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    """AWS_REQUEST_CHECKSUM_CALCULATION=when_supported, or the same setting in the AWS profile
    (a user's choice for a new server), turns the default checksums back on: the old server
    refuses the write, and the message names the key."""
    uri, proxy = old_s3
    if where == "variable":
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    else:
        config = tmp_path / "config"
        config.write_text("[default]\nrequest_checksum_calculation = when_supported\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_store(uri, workers=1)
    with pytest.raises(StoreError, match=re.escape(store.uri_of("k.bin"))):
        store.write_bytes("k.bin", b"x")
    assert proxy.refused and "x-amz-" in proxy.refused[0]


# ------------------------------------------------------------------ boto3's credential chain


@pytest.mark.parametrize("keys", ["absent", "empty"])
def test_keys_in_a_shared_credentials_file_are_enough(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    """No AWS_ACCESS_KEY_ID in the environment, or an empty one (an env file or an optional
    Secret left blank): boto3 finds the keys in the file that AWS_SHARED_CREDENTIALS_FILE names
    (as a mounted Secret or `aws configure` leaves them)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if keys == "absent":
            monkeypatch.delenv(var)
        else:
            monkeypatch.setenv(var, "")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    store = open_store(s3_root)
    store.write_text("k.txt", "from the file")
    assert store.read_text("k.txt") == "from the file"


def test_no_credentials_anywhere_is_one_line_naming_where_boto3_looked(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys, no files, no web identity, no instance metadata (disabled: offline)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError) as info:
        open_store(s3_root, key="store.root")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"no AWS credentials found for {s3_root}: boto3's default chain")
    for looked in ("env", "assume-role-with-web-identity", "shared-credentials-file", "iam-role"):
        assert looked in message
    assert "AWS_WEB_IDENTITY_TOKEN_FILE" in message
