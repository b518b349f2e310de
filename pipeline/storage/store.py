"""One small storage interface over a local folder and an S3 prefix (``s3://bucket/prefix``).

Keys are ``/``-separated paths relative to the store root. They are validated with the rules of
:func:`join_key`, so a key built from data cannot escape the root. Writes are atomic: a key appears
only once its content is complete (temp file + ``os.replace`` locally; single PUT or completed
multipart upload on S3). Local files get the mode a plain `open` gives (0666 less the umask), so
teammates on a shared file system read what a run writes when the umask lets them.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import secrets
import shutil
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import botocore.config
import botocore.exceptions
from boto3.s3.transfer import S3UploadFailedError, TransferConfig

from pipeline.core.errors import StoreError, StoreKeyNotFound
from pipeline.storage.s3_client import compatible_client, credential_sources

__all__ = ["LocalStore", "S3Store", "Store", "StoreRefused", "join_key", "open_store"]

TMP_PREFIX = ".tmp-"
#: botocore attempts per S3 request (first try + retries) unless AWS_MAX_ATTEMPTS says otherwise.
DEFAULT_MAX_ATTEMPTS = 10
_MiB = 1024 * 1024
_PERCENT_BAD = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_PERCENT_DOT = re.compile(r"%2e", re.IGNORECASE)
_T = TypeVar("_T")
_R = TypeVar("_R")


class StoreRefused(StoreError):
    """A key the store does not read: not a regular file (a symbolic link, device, FIFO,
    socket) or larger than the reader's cap. `reason` says which, without the path."""

    def __init__(self, where: str, reason: str, *, too_large: bool = False) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.too_large = too_large


# --------------------------------------------------------------------------------------------
# keys


def _check_key(key: str, *, allow_empty: bool = False) -> str:
    """Return `key` if it is a safe relative key, else raise StoreError saying why."""
    if not isinstance(key, str):
        raise StoreError(f"invalid key {key!r}: keys are strings")
    if key == "":
        if allow_empty:
            return key
        raise StoreError("invalid key '': keys must not be empty")
    if "\x00" in key:
        raise StoreError(f"invalid key {key!r}: contains a NUL character")
    if "\\" in key:
        raise StoreError(f"invalid key {key!r}: contains a backslash; use '/' between segments")
    if key.startswith("/"):
        raise StoreError(f"invalid key {key!r}: absolute paths are not allowed")
    if _PERCENT_BAD.search(key):
        raise StoreError(f"invalid key {key!r}: contains a percent-encoded separator or NUL")
    for segment in key.split("/"):
        if segment == "":
            raise StoreError(f"invalid key {key!r}: empty path segment")
        if _PERCENT_DOT.sub(".", segment) in (".", ".."):
            raise StoreError(f"invalid key {key!r}: '.' and '..' segments are not allowed")
    return key


def _check_prefix(prefix: str) -> str:
    """Validate a folder-like prefix; '' means the whole store. A trailing '/' is ignored."""
    if isinstance(prefix, str) and prefix.endswith("/") and not prefix.endswith("//"):
        prefix = prefix[:-1]
    return _check_key(prefix, allow_empty=True)


def join_key(*parts: str) -> str:
    """Join parts with '/' into a safe relative key.

    Raises StoreError for '..' (or '.') segments, absolute paths, backslashes, empty segments,
    NUL characters and percent-encoded separators (%2f, %5c, %2e%2e), so keys built from data
    cannot escape the store's root. A part may itself contain '/'.
    """
    if not parts:
        raise StoreError("join_key needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise StoreError(f"invalid key part {part!r}: parts are strings")
    return _check_key("/".join(parts))


def _prefix_join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix and key else prefix or key


# --------------------------------------------------------------------------------------------
# interface


class Store(ABC):
    """A flat namespace of keys → bytes rooted at `uri`."""

    uri: str
    workers: int

    @abstractmethod
    def uri_of(self, key: str) -> str:
        """Full uri (or path) of `key`, for messages."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Content of `key`; StoreKeyNotFound naming the full uri when it is missing."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write `data` to `key` atomically (the key appears only when complete)."""

    @abstractmethod
    def write_file(self, key: str, path: Path) -> None:
        """Upload the local file `path` to `key` atomically."""

    @abstractmethod
    def read_file(self, key: str, path: Path) -> None:
        """Download `key` to the local `path` atomically (temp file + rename)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `key` exists."""

    @abstractmethod
    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key under the folder-like `prefix` (recursive) → size in bytes."""

    @abstractmethod
    def checksums(self, prefix: str = "") -> dict[str, str]:
        """Every key under `prefix` → a content identifier: the S3 ETag (free with the listing)
        or, for a local folder, the SHA-256 of the file (read in parallel)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; a missing key is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under the folder-like `prefix` ('' = the whole store)."""

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store of the same kind rooted at root/prefix."""

    def list(self, prefix: str = "") -> list[str]:
        """Every key under the folder-like `prefix`, recursive, relative to the root, sorted."""
        return sorted(self.sizes(prefix))

    def refused(self, prefix: str = "") -> dict[str, str]:
        """What sits under `prefix` but is never listed as a key nor read → why (a local folder's
        symbolic links, devices, FIFOs, sockets and names that are not UTF-8, the name shown
        with \\x escapes). An S3 prefix holds only objects: none."""
        return {}

    def read_capped(self, key: str, max_bytes: int) -> bytes:
        """Content of `key`; StoreRefused (too_large) when it holds more than `max_bytes`."""
        data = self.read_bytes(key)
        if len(data) > max_bytes:
            raise StoreRefused(self.uri_of(key), _too_large(max_bytes), too_large=True)
        return data

    def read_inputs(
        self, keys: Sequence[str], max_bytes: int
    ) -> Iterator[tuple[str, bytes | StoreRefused]]:
        """Like `read_many`, each read capped at `max_bytes`; a key the store refuses (not a
        regular file, over the cap) yields its StoreRefused instead of stopping the reads."""

        def read(key: str) -> bytes | StoreRefused:
            try:
                return self.read_capped(key, max_bytes)
            except StoreRefused as e:
                return e

        return _windowed(read, iter(keys), self.workers, lambda k, v: (k, v))

    def read_text(self, key: str) -> str:
        """Content of `key` decoded as UTF-8."""
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        """Write `text` as UTF-8 to `key` atomically."""
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        """Parse `key` as JSON; StoreError naming the uri when it is not valid JSON."""
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.uri_of(key)} is not valid JSON: {e}") from e

    def write_json(self, key: str, obj: Any) -> None:
        """Write `obj` as indented UTF-8 JSON to `key` atomically."""
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """Read `keys` in parallel, yielding (key, bytes) in the order given.

        At most ~2*workers reads are in flight or buffered at once, so memory stays bounded.
        """
        return _windowed(self.read_bytes, iter(keys), self.workers, lambda k, v: (k, v))

    def write_many(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Write (key, bytes) pairs in parallel; raises the first failure after stopping."""
        for _ in _windowed(
            lambda item: self.write_bytes(item[0], item[1]), iter(items), self.workers, None
        ):
            pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _windowed(
    fn: Callable[[_T], _R],
    items: Iterator[_T],
    workers: int,
    wrap: Callable[[_T, _R], Any] | None,
) -> Iterator[Any]:
    """Run fn over items on a thread pool, keeping ≤ 2*workers pending; yield results in order."""
    workers = max(1, workers)
    window = 2 * workers
    pending: collections.deque[tuple[_T, Future[_R]]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((item, pool.submit(fn, item)))
            if not pending:
                return
            item, future = pending.popleft()
            result = future.result()
            yield wrap(item, result) if wrap is not None else result
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# local folder


def _os_reason(e: OSError) -> str:
    """An OSError as a message; a full disk or quota says so and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on device ({e.strerror}); the partial file was removed — "
            "free some space or point store.root at a larger disk, then rerun with the same run_id"
        )
    return str(e)


def _new_temp(folder: Path) -> tuple[int, str]:
    """Create and open a new, empty temporary file in `folder` (a `TMP_PREFIX` name, which
    listings skip); returns its descriptor and path. Its mode is 0666 less the process's umask
    (and a default ACL of the folder), as `open` creates files: `tempfile.mkstemp` makes 0600
    files, which a rename would carry to every output, private to its owner."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # O_EXCL: never a link's target
    for _ in range(100):
        path = os.path.join(folder, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def _atomic_write(dest: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Create dest's folder, let `fill` write a temp file next to it, fsync, then rename (what
    `fill` returns is ignored). Folders and file get the modes the umask allows (`_new_temp`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp(dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _too_large(max_bytes: int) -> str:
    return f"more than {max_bytes} bytes, the cap for one input; not read in full"


def _not_regular(mode: int) -> str:
    """Why a local entry of this (lstat) mode is never opened."""
    if stat.S_ISLNK(mode):
        return (
            "a symbolic link; links are never followed (copy what it points to into the folder "
            "instead)"
        )
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"{kind}, not a regular file; never opened"


def _utf8(name: str) -> bool:
    """Whether a name read from the file system is valid UTF-8 (no surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(name: str) -> str:
    """A file-system name with the bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: opening a FIFO (swapped in after the listing) returns at once instead of waiting.
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_part(path: str, name: str, flags: int, folder: int | None) -> int:
    """os.open of one part of `path` (relative to `folder`), errors as the store's."""
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as e:
        link = e.errno == errno.ELOOP
        if e.errno == errno.ENOTDIR and folder is not None:
            with contextlib.suppress(OSError):
                link = stat.S_ISLNK(os.lstat(name, dir_fd=folder).st_mode)
        if link and folder is not None:
            where = "" if flags == _OPEN_FILE else f"{name}/ on its path is "
            raise StoreRefused(path, where + _not_regular(stat.S_IFLNK)) from e
        if isinstance(e, FileNotFoundError | NotADirectoryError):
            raise StoreKeyNotFound(f"{path} does not exist") from e
        raise StoreError(f"cannot read {path}: {e}") from e


class LocalStore(Store):
    """A store over a local folder; the folder is created when first written to.

    Below the root (which may itself be a link) nothing is followed: a symbolic link, device,
    FIFO or socket is never listed as a key nor opened (`refused` names them), so a key cannot
    lead outside the folder or hang a read.
    """

    def __init__(self, root: str | os.PathLike[str], *, workers: int = 16) -> None:
        text = os.fspath(root)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not text:
            raise StoreError("empty store root; give a folder path or s3://bucket/prefix")
        self.root = Path(os.path.normpath(os.path.abspath(os.path.expanduser(text))))
        self.uri = str(self.root)
        self.workers = workers

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def uri_of(self, key: str) -> str:
        return str(self.root / key) if key else self.uri

    def _open_regular(self, key: str) -> int:
        """A read-only descriptor of the regular file `key`, reached without following any
        link below the root; StoreRefused for a link or a non-regular file (never blocks on a
        FIFO), StoreKeyNotFound when it is missing."""
        parts = _check_key(key).split("/")
        path = str(self._path(key))
        fd = _open_part(path, str(self.root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, None)
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            try:
                opened = _open_part(path, part, _OPEN_FILE if last else _OPEN_DIR, fd)
            finally:
                os.close(fd)
            fd = opened
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise StoreKeyNotFound(f"{path} does not exist (it is a folder)")
            raise StoreRefused(path, _not_regular(mode))
        return fd

    def _read(self, key: str, max_bytes: int | None) -> bytes:
        fd = self._open_regular(key)
        with os.fdopen(fd, "rb") as f:
            try:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
            except OSError as e:
                raise StoreError(f"cannot read {self.uri_of(key)}: {e}") from e
        if max_bytes is not None and len(data) > max_bytes:
            raise StoreRefused(self.uri_of(key), _too_large(max_bytes), too_large=True)
        return data

    def read_bytes(self, key: str) -> bytes:
        return self._read(key, None)

    def read_capped(self, key: str, max_bytes: int) -> bytes:
        return self._read(key, max_bytes)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            _atomic_write(path, lambda f: f.write(data))
        except OSError as e:
            raise StoreError(f"cannot write {path}: {_os_reason(e)}") from e

    def write_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise StoreError(f"cannot write {dest}: cannot open local file {path}: {e}") from e
        try:
            with src:
                _atomic_write(dest, lambda f: shutil.copyfileobj(src, f, 8 * _MiB))
        except OSError as e:
            raise StoreError(f"cannot write {dest} from {path}: {_os_reason(e)}") from e

    def read_file(self, key: str, path: Path) -> None:
        src_path = self._path(key)
        src = os.fdopen(self._open_regular(key), "rb")
        try:
            with src:
                _atomic_write(Path(path), lambda f: shutil.copyfileobj(src, f, 8 * _MiB))
        except OSError as e:
            raise StoreError(f"cannot copy {src_path} to {path}: {_os_reason(e)}") from e

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _scan(self, prefix: str) -> tuple[dict[str, int], dict[str, str]]:
        """(regular file key → size, refused entry → why) under `prefix`, by lstat only: no
        link is followed (nor a linked folder walked) and nothing is opened."""
        prefix = _check_prefix(prefix)
        sizes: dict[str, int] = {}
        refused: dict[str, str] = {}
        top = self.root
        for number, part in enumerate(prefix.split("/") if prefix else []):
            top = top / part
            try:
                mode = os.lstat(top).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return {}, {}
            except OSError as e:
                raise StoreError(f"cannot list {top}: {e}") from e
            if stat.S_ISLNK(mode):
                return {}, {"/".join(prefix.split("/")[: number + 1]): _not_regular(mode)}
            if not stat.S_ISDIR(mode):
                return {}, {}
        folders = [(top, prefix)]
        while folders:
            folder, rel = folders.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                raise StoreError(f"cannot list {folder}: {e}") from e
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                key = _prefix_join(rel, entry.name)
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except FileNotFoundError:  # deleted while listing
                    continue
                if not _utf8(entry.name):
                    what = "folder" if stat.S_ISDIR(mode) else "file"
                    refused[_escaped(key)] = (
                        f"{what} name is not valid UTF-8 (shown with \\x escapes); never read: "
                        "rename it"
                    )
                elif stat.S_ISDIR(mode):
                    folders.append((Path(entry.path), key))
                elif stat.S_ISREG(mode):
                    sizes[key] = entry.stat(follow_symlinks=False).st_size
                else:
                    refused[key] = _not_regular(mode)
        return dict(sorted(sizes.items())), dict(sorted(refused.items()))

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every regular file under `prefix` → size; links, devices, FIFOs, sockets and names
        that are not UTF-8 are left out (see `refused`)."""
        return self._scan(prefix)[0]

    def refused(self, prefix: str = "") -> dict[str, str]:
        return self._scan(prefix)[1]

    def checksums(self, prefix: str = "") -> dict[str, str]:
        def digest(key: str) -> tuple[str, str]:
            with os.fdopen(self._open_regular(key), "rb") as f:
                try:
                    return key, f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"
                except OSError as e:
                    raise StoreError(f"cannot read {self.uri_of(key)}: {_os_reason(e)}") from e

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return dict(pool.map(digest, self.sizes(prefix)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e}") from e

    def delete_prefix(self, prefix: str) -> None:
        prefix = _check_prefix(prefix)
        top = self.root / prefix if prefix else self.root
        try:
            if prefix:
                shutil.rmtree(top)
            elif top.is_dir():
                for entry in top.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            raise StoreError(f"cannot delete {top}: {e}") from e

    def child(self, prefix: str) -> LocalStore:
        prefix = _check_prefix(prefix)
        return LocalStore(self.root / prefix if prefix else self.root, workers=self.workers)


# --------------------------------------------------------------------------------------------
# S3


def _endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _max_attempts(value: int | None) -> int:
    """`value`, else botocore's own AWS_MAX_ATTEMPTS variable, else DEFAULT_MAX_ATTEMPTS."""
    if value is None:
        text = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
        if not text:
            return DEFAULT_MAX_ATTEMPTS
        try:
            value = int(text)
        except ValueError as e:
            raise StoreError(f"AWS_MAX_ATTEMPTS={text!r} is not a whole number") from e
    return max(1, int(value))


def _error_code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
)
_STREAM_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
)


class S3Store(Store):
    """A store over ``s3://bucket/prefix``; one thread-safe boto3 client shared by all threads.

    Endpoint and region come from the standard AWS environment variables (``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL`` for S3-compatible servers), credentials from boto3's default chain
    (keys, profile files, web identity, container or instance role); no key is required here.
    With an endpoint, checksums are sent only where required (`s3_client.checksum_settings`).
    """

    def __init__(
        self,
        uri: str,
        *,
        workers: int = 16,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 64 * _MiB,
        client: Any = None,
        check_bucket: bool = True,
        key: str | None = None,
    ) -> None:
        """`key`: the configuration key the URI comes from (e.g. data.root), for messages."""
        self.config_key = key
        if not uri.startswith("s3://"):
            raise StoreError(f"not an S3 uri: {uri!r}; expected s3://bucket[/prefix]")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", bucket):
            raise StoreError(f"invalid bucket name {bucket!r} in {uri!r}")
        try:
            _check_key(prefix, allow_empty=True)
        except StoreError as e:
            raise StoreError(f"invalid prefix in {uri!r}: {e}") from e
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.workers = max(1, workers)
        self.max_attempts = max_attempts = _max_attempts(max_attempts)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(8 * _MiB, multipart_threshold // 4),
            max_concurrency=min(self.workers, 10),
        )
        if client is None:
            endpoint = _endpoint_from_env()
            config = botocore.config.Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max(self.workers, 10),
                s3={"addressing_style": "path"} if endpoint else None,
            )
            try:
                client = compatible_client(endpoint, config)
            except (botocore.exceptions.BotoCoreError, ValueError) as e:
                raise StoreError(f"cannot create an S3 client for {self.uri}: {e}") from e
        self.client = client
        if check_bucket:
            self._check_bucket()

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to (for messages)."""
        return str(self.client.meta.endpoint_url)

    def _check_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as e:
            code = _error_code(e)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(
                    f"bucket {self.bucket} does not exist at endpoint {self.endpoint}; "
                    f"create it or fix {self.config_key or 'the URI'}={self.uri}"
                ) from e
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StoreError(
                    f"access denied to bucket {self.bucket} at endpoint {self.endpoint}; "
                    "check the AWS credentials (keys, AWS_PROFILE or the role of this pod or "
                    "machine) and their permissions on the bucket"
                ) from e
            raise StoreError(
                f"cannot use bucket {self.bucket} at endpoint {self.endpoint}: {e}"
            ) from e
        except botocore.exceptions.NoCredentialsError as e:
            raise StoreError(self._no_credentials()) from e
        except _UNREACHABLE as e:
            raise StoreError(
                f"cannot reach S3 endpoint {self.endpoint}: {e}; check AWS_ENDPOINT_URL"
            ) from e
        except botocore.exceptions.BotoCoreError as e:
            raise StoreError(f"cannot use {self.uri} at endpoint {self.endpoint}: {e}") from e

    def _no_credentials(self) -> str:
        """One line: boto3's default chain found no credentials, where it looked, what to set."""
        return (
            f"no AWS credentials found for {self.uri}: boto3's default chain tried "
            f"{credential_sources()}; give keys (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
            "a profile (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE), a web identity (AWS_ROLE_ARN "
            "and AWS_WEB_IDENTITY_TOKEN_FILE, as IRSA sets them) or an instance or pod role"
        )

    def _full(self, key: str) -> str:
        return _prefix_join(self.prefix, _check_key(key))

    def uri_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{_prefix_join(self.prefix, key)}"

    def _fail(self, action: str, target: str, e: Exception) -> StoreError:
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return StoreError(self._no_credentials())
        if isinstance(e, _UNREACHABLE):
            return StoreError(
                f"cannot {action} {target} (tried {self.max_attempts} times): {e}; "
                f"check AWS_ENDPOINT_URL ({self.endpoint})"
            )
        return StoreError(f"cannot {action} {target}: {e}")

    def read_bytes(self, key: str) -> bytes:
        full = self._full(key)
        attempts = 3  # botocore retries each request; this also retries a body cut off mid-stream
        for attempt in range(1, attempts + 1):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
            except botocore.exceptions.ClientError as e:
                if _error_code(e) in _NOT_FOUND:
                    raise StoreKeyNotFound(f"{self.uri_of(key)} does not exist") from e
                raise self._fail("read", self.uri_of(key), e) from e
            except botocore.exceptions.BotoCoreError as e:
                raise self._fail("read", self.uri_of(key), e) from e
            try:
                return body.read()
            except _STREAM_ERRORS as e:
                if attempt == attempts:
                    raise self._fail("read", self.uri_of(key), e) from e
            finally:
                body.close()
        raise AssertionError("unreachable")

    def _upload(self, key: str, action: Callable[[], None], source: str) -> None:
        try:
            action()
        except (
            botocore.exceptions.ClientError,
            botocore.exceptions.BotoCoreError,
            S3UploadFailedError,
        ) as e:
            raise self._fail("write", f"{self.uri_of(key)} from {source}", e) from e

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        if len(data) < self.transfer_config.multipart_threshold:
            action: Callable[[], None] = lambda: self.client.put_object(  # noqa: E731
                Bucket=self.bucket, Key=full, Body=data
            )
        else:
            action = lambda: self.client.upload_fileobj(  # noqa: E731
                io.BytesIO(data), self.bucket, full, Config=self.transfer_config
            )
        self._upload(key, action, "memory")

    def write_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        if not Path(path).is_file():
            raise StoreError(f"cannot write {self.uri_of(key)}: local file {path} does not exist")
        self._upload(
            key,
            lambda: self.client.upload_file(
                os.fspath(path), self.bucket, full, Config=self.transfer_config
            ),
            str(path),
        )

    def read_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        dest = Path(path)
        target = f"{self.uri_of(key)} to {path}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _new_temp(dest.parent)
            os.close(fd)
            try:
                self.client.download_file(self.bucket, full, tmp, Config=self.transfer_config)
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except botocore.exceptions.ClientError as e:
            if _error_code(e) in _NOT_FOUND:
                raise StoreKeyNotFound(f"{self.uri_of(key)} does not exist") from e
            raise self._fail("download", target, e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("download", target, e) from e
        except OSError as e:
            raise StoreError(f"cannot download {target}: {_os_reason(e)}") from e

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
            return True
        except botocore.exceptions.ClientError as e:
            if _error_code(e) in _NOT_FOUND:
                return False
            raise self._fail("check", self.uri_of(key), e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("check", self.uri_of(key), e) from e

    def _objects(self, prefix: str) -> Iterator[tuple[str, int, str]]:
        """(full key, size, ETag) of every object under the folder-like prefix of this store."""
        prefix = _check_prefix(prefix)
        full = _prefix_join(self.prefix, prefix)
        list_prefix = f"{full}/" if full else ""
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=list_prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):  # folder markers are not keys
                        yield obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._fail("list", self.uri_of(prefix), e) from e

    def sizes(self, prefix: str = "") -> dict[str, int]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return dict(sorted((key[strip:], size) for key, size, _ in self._objects(prefix)))

    def checksums(self, prefix: str = "") -> dict[str, str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return dict(sorted((key[strip:], f"etag:{etag}") for key, _, etag in self._objects(prefix)))

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except botocore.exceptions.ClientError as e:
            if _error_code(e) not in _NOT_FOUND:
                raise self._fail("delete", self.uri_of(key), e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("delete", self.uri_of(key), e) from e

    def delete_prefix(self, prefix: str) -> None:
        keys = [key for key, _, _ in self._objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                raise self._fail("delete under", self.uri_of(prefix), e) from e
            errors = [
                err for err in response.get("Errors", []) if err.get("Code") not in _NOT_FOUND
            ]
            if errors:
                first = errors[0]
                raise StoreError(
                    f"cannot delete {len(errors)} keys under {self.uri_of(prefix)}, e.g. "
                    f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                    f"{first.get('Message', '')}".rstrip()
                )

    def child(self, prefix: str) -> S3Store:
        prefix = _check_prefix(prefix)
        return S3Store(
            f"s3://{self.bucket}/{_prefix_join(self.prefix, prefix)}",
            workers=self.workers,
            max_attempts=self.max_attempts,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            multipart_threshold=self.transfer_config.multipart_threshold,
            client=self.client,
            check_bucket=False,
        )


# --------------------------------------------------------------------------------------------


def open_store(
    uri: str,
    *,
    workers: int = 16,
    max_attempts: int | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    key: str | None = None,
) -> Store:
    """Open ``s3://bucket[/prefix]`` as an S3Store (checking the bucket once), else a LocalStore.
    `key` names the configuration key the URI comes from in messages (e.g. "data.root").

    `max_attempts`, `connect_timeout` and `read_timeout` tune the S3 client (botocore's standard
    retry mode with backoff; `max_attempts` None = AWS_MAX_ATTEMPTS or 10); they are ignored for
    local folders.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError("empty store uri; give a folder path or s3://bucket[/prefix]")
    uri = uri.strip()
    if uri.startswith("s3://"):
        return S3Store(
            uri,
            workers=workers,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            key=key,
        )
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", uri) and not uri.startswith("file://"):
        raise StoreError(f"unsupported store uri {uri!r}; use a folder path or s3://bucket/prefix")
    return LocalStore(uri, workers=workers)


def read_uri(uri: str, *, workers: int = 4, key: str | None = None) -> bytes:
    """The bytes of one file named by a full path or s3:// URI (StoreKeyNotFound when missing)."""
    folder, name = posixpath.split(uri.strip().rstrip("/"))
    if not name:
        raise StoreError(f"{uri!r} does not name a file")
    return open_store(folder or ".", workers=workers, key=key).read_bytes(name)
