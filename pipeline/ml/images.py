"""Decode encoded images once into resident uint8 tensors at the training resolution."""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from pipeline.core.errors import DataError, StoreError
from pipeline.storage.shards import read_shard
from pipeline.storage.store import Store, join_key

log = logging.getLogger(__name__)


def check_image(data: bytes, name: str) -> tuple[int, int]:
    """Fully decode an encoded image to prove it is usable; return its (width, height).

    Raises DataError naming the file for empty, truncated or non-image bytes.
    """
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer) as im:
            im.load()
            return im.size
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x…>"): name the file instead
        reason = str(e).replace(repr(buffer), repr(name))
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {reason})") from e


JPEG_MAGIC = b"\xff\xd8"
#: EXIF orientations that swap width and height.
TRANSPOSED = (5, 6, 7, 8)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, when absent)."""
    return int(im.getexif().get(0x0112, 1))


def plain_jpeg(data: bytes) -> bool:
    """A JPEG with no EXIF rotation: what a GPU decoder that ignores EXIF can decode as is."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            return exif_orientation(im) == 1
    except Exception:  # unreadable header: leave it to the CPU decoders and their errors
        return False


def decode_reduced_jpeg(data: bytes, size: Sequence[int]) -> torch.Tensor | None:
    """A JPEG decoded at a reduced scale (1/2, 1/4, 1/8: libjpeg skips the fine DCT terms), still
    at least `size` = (H, W) after EXIF rotation; None when no reduction applies.

    At 128×96 from the real 512×384 photos this decodes a quarter of the pixels, 1.3-1.6× faster
    than a full decode; the final antialiased resize then matches a full decode to ~1/255.
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    h, w = int(size[0]), int(size[1])
    with Image.open(io.BytesIO(data)) as im:
        transposed = exif_orientation(im) in TRANSPOSED
        want = (h, w) if transposed else (w, h)  # PIL sizes are (width, height), before rotation
        if im.width < 2 * want[0] or im.height < 2 * want[1]:
            return None
        im.draft("RGB", want)
        return F.pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))


def decode_resized(data: bytes, size: Sequence[int]) -> torch.Tensor:
    """Decode to RGB (EXIF orientation applied) and resize to `size` = (H, W); uint8 3×H×W."""
    try:
        img = decode_reduced_jpeg(data, size)
    except Exception:  # an odd JPEG that PIL's draft mode cannot read: the decoders below can
        img = None
    if img is None:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        try:
            img = decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError:
            # torchvision's decoders miss some variants (e.g. CMYK JPEG); PIL reads them.
            with Image.open(io.BytesIO(data)) as im:
                img = F.pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))
    h, w = int(size[0]), int(size[1])
    if img.shape[-2:] != (h, w):
        img = F.resize(img, [h, w], antialias=True)
    return img


def load_images(
    run: Store, image_ids: Sequence[str], shards: Sequence[str], size: Sequence[int], threads: int
) -> torch.Tensor:
    """Decode the given images from their shards into one uint8 tensor N×3×H×W (in that order).

    Each shard is read once; decoding runs on `threads` threads (torch releases the GIL).
    """
    out = torch.empty((len(image_ids), 3, int(size[0]), int(size[1])), dtype=torch.uint8)
    rows_by_shard: dict[str, list[int]] = {}
    for row, shard in enumerate(shards):
        rows_by_shard.setdefault(shard, []).append(row)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for shard, rows in rows_by_shard.items():
            blobs = read_shard(run, shard)

            def decode_row(row: int, blobs: dict[str, bytes] = blobs) -> None:
                out[row] = decode_resized(blobs[image_ids[row]], size)

            list(pool.map(decode_row, rows))
    return out


class BadInputs:
    """Collects (path, reason) for every input that cannot be used."""

    def __init__(self, prefix: str = "", rows: list[tuple[str, str]] | None = None) -> None:
        self.prefix = prefix
        self.rows: list[tuple[str, str]] = [] if rows is None else rows

    def add(self, path: str, reason: str) -> None:
        log.warning("bad input %s%s: %s", self.prefix, path, reason)
        self.rows.append((self.prefix + path, reason))

    def scoped(self, prefix: str) -> BadInputs:
        """The same list, with paths prefixed (for sources other than data.root)."""
        return BadInputs(prefix, self.rows)

    def to_csv(self) -> bytes:
        return pd.DataFrame(self.rows, columns=["path", "reason"]).to_csv(index=False).encode()


def unsafe_key_reason(key: str) -> str | None:
    """Why a listed object key is never read (`..`, encoded separators, …), or None when safe.

    S3 keys are free-form text; such a key could name something outside the data root.
    """
    try:
        join_key(key)
    except StoreError as e:
        return f"unsafe object key, not read ({e})"
    return None


def checked_images(
    data: Store, paths: list[str], bad: BadInputs, threads: int
) -> Iterator[tuple[str, bytes]]:
    """Read images in parallel and fully decode each; yield (path, bytes) of the usable ones.

    At most a few images per thread are in flight, so memory stays bounded.
    """
    window: deque[tuple[str, bytes, Future[tuple[int, int]]]] = deque()

    def drain_one() -> Iterator[tuple[str, bytes]]:
        path, blob, future = window.popleft()
        try:
            future.result()
        except DataError as e:
            bad.add(path, str(e).removeprefix(f"{path}: "))
            return
        yield path, blob

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, blob in data.read_many(paths):
            window.append((path, blob, pool.submit(check_image, blob, path)))
            if len(window) >= 4 * threads:
                yield from drain_one()
        while window:
            yield from drain_one()
