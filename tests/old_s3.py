"""An S3 server that predates boto3's default integrity checksums, for tests: a small threaded
HTTP proxy in front of the real SeaweedFS (tests/seaweed.py) that refuses what such a server
refuses, and forwards everything else unchanged.

What is faked: only the refusals, modelled on MinIO before 2025 and older Ceph RGW. The proxy
answers 400 with an S3 XML error to any request that carries an `x-amz-checksum-*`,
`x-amz-sdk-checksum-algorithm` or `x-amz-trailer` header or `Content-Encoding: aws-chunked`
(what botocore >= 1.36 sends by default), and to a DeleteObjects (`POST ?delete`) without
Content-MD5. Storage, signatures and listings are SeaweedFS's own: the proxy passes the client's
Host header through, so SigV4 signatures still match.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
_REFUSED_PREFIXES = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm", "x-amz-trailer")


@dataclass
class OldS3Proxy:
    """A running proxy: its `endpoint` and the requests it refused (`refused`, one line each:
    method, path and why)."""

    endpoint: str
    refused: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)


def refusal(method: str, path: str, headers: dict[str, str]) -> str | None:
    """Why an old S3 server refuses this request, or None when it accepts it."""
    for name in headers:
        if name.startswith(_REFUSED_PREFIXES):
            return f"unsupported header {name}"
    if "aws-chunked" in headers.get("content-encoding", ""):
        return "unsupported Content-Encoding aws-chunked"
    query = urlsplit(path).query.split("&")
    if method == "POST" and "delete" in query and "content-md5" not in headers:
        return "DeleteObjects without Content-MD5"
    return None


def _error_xml(code: str, message: str, path: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{path}</Resource><RequestId>old-s3-proxy</RequestId></Error>"
    ).encode()


def _handler(upstream: str, record: OldS3Proxy) -> type[BaseHTTPRequestHandler]:
    """A request handler class forwarding to `upstream` (host:port), recording into `record`."""
    host, _, port = upstream.partition(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `record` instead."""

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length")
            head = self.command == "HEAD" and length is not None
            self.send_header("Content-Length", length if head else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = self.rfile.read(int(headers.get("content-length", "0") or 0))
            why = refusal(self.command, self.path, headers)
            if why is not None:
                record.refused.append(f"{self.command} {self.path}: {why}")
                code = "MissingContentMD5" if "Content-MD5" in why else "InvalidArgument"
                xml = _error_xml(code, why, self.path)
                self._answer(400, [("Content-Type", "application/xml")], xml)
                return
            record.forwarded.append(f"{self.command} {self.path}")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                drop = _HOP_BY_HOP | {"expect"}  # the 100 Continue was answered here
                send = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                conn.request(self.command, self.path, body=body, headers=send)
                response = conn.getresponse()
                data = response.read()
                self._answer(response.status, response.getheaders(), data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


@contextmanager
def old_s3_proxy(upstream_endpoint: str) -> Iterator[OldS3Proxy]:
    """Run the proxy on a free loopback port in front of `upstream_endpoint` (http://host:port)
    until the block ends."""
    upstream = urlsplit(upstream_endpoint).netloc
    record = OldS3Proxy(endpoint="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, record))
    server.daemon_threads = True
    record.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="old-s3-proxy", daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
