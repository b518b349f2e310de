"""The boto3 S3 client of the store (pipeline.storage.store.S3Store): credentials from boto3's
default chain (nothing here asks for keys), and requests that S3-compatible servers older than
boto3's default integrity checksums accept (MinIO before 2025, older Ceph RGW): with a custom
endpoint, checksums only where an operation requires one, and Content-MD5 on DeleteObjects.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config

__all__ = ["checksum_settings", "compatible_client", "credential_sources"]

#: botocore's own settings for its default integrity checksums (`when_supported` since 1.36) →
#: their environment variables; set there or in the AWS profile, they win over the
#: `when_required` this module picks for a custom endpoint.
CHECKSUM_VARIABLES = {
    "request_checksum_calculation": "AWS_REQUEST_CHECKSUM_CALCULATION",
    "response_checksum_validation": "AWS_RESPONSE_CHECKSUM_VALIDATION",
}


def checksum_settings(endpoint: str | None, profile: Mapping[str, Any]) -> dict[str, str]:
    """botocore Config arguments for its integrity checksums. With a custom endpoint (an
    S3-compatible server): `when_required` for both, unless the user chose otherwise (botocore's
    variable, or the setting in the AWS `profile`). Servers older than boto3's default checksums
    (MinIO before 2025, older Ceph RGW) refuse the `x-amz-checksum-*` /
    `x-amz-sdk-checksum-algorithm` headers and aws-chunked trailers that `when_supported` sends
    on every upload. Without an endpoint (AWS itself): botocore's default."""
    if not endpoint:
        return {}
    return {
        arg: "when_required"
        for arg, var in CHECKSUM_VARIABLES.items()
        if not os.environ.get(var) and arg not in profile
    }


def content_md5_for_delete_objects(params: dict[str, Any], **_: Any) -> None:
    """botocore event handler (before-call.s3.DeleteObjects): send Content-MD5 instead of the
    CRC32 botocore puts on DeleteObjects even under `when_required` (the operation requires a
    checksum). Servers older than the new checksums (MinIO before 2025, older Ceph RGW) require
    Content-MD5 there and refuse the request without it; AWS accepts either."""
    checksum = params.get("context", {}).get("checksum", {})
    checksum.pop("request_algorithm", None)
    checksum.pop("request_algorithm_header", None)
    body = params.get("body")
    if isinstance(body, bytes | bytearray):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        params["headers"]["Content-MD5"] = base64.b64encode(digest).decode("ascii")


def compatible_client(endpoint: str | None, config: botocore.config.Config) -> Any:
    """A boto3 S3 client from the default session (boto3's credential chain) that an
    S3-compatible server older than boto3's default checksums accepts (`checksum_settings`);
    when it computes request checksums only where required, DeleteObjects carries Content-MD5."""
    session = boto3.session.Session()
    profile = session._session.get_scoped_config()  # the AWS profile's settings
    config = config.merge(botocore.config.Config(**checksum_settings(endpoint, profile)))
    client = session.client("s3", endpoint_url=endpoint, config=config)
    if client.meta.config.request_checksum_calculation == "when_required":
        client.meta.events.register("before-call.s3.DeleteObjects", content_md5_for_delete_objects)
    return client


def credential_sources() -> str:
    """The places boto3's default credential chain looks, in its order (botocore's names)."""
    try:
        resolver = boto3.session.Session()._session.get_component("credential_provider")
        return ", ".join(str(p.METHOD) for p in resolver.providers)
    except Exception:  # a botocore without these internals: the message stays useful
        return "the environment, shared files, web identity, container and instance roles"
