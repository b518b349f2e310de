"""Decode encoded images once into resident uint8 tensors at the training resolution.

Every photo is checked before a decoder sees it, the same way in prepare, train, predict and
infer: JPEG or PNG by its magic bytes, its pixel count from its header within data.max_pixels;
its file size from the store's listing within data.max_file_bytes before it is read.
"""

from __future__ import annotations

import io
import logging
import struct
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import torch
from omegaconf import DictConfig
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from pipeline.core.csv_cells import csv_bytes
from pipeline.core.errors import DataError, StoreError
from pipeline.storage.shards import read_shard
from pipeline.storage.store import Store, StoreRefused, join_key

log = logging.getLogger(__name__)


#: The only photo formats ever decoded, told by their first bytes whatever the file is called:
#: anything else (PostScript, which PIL hands to Ghostscript; GIF, BMP, TIFF, WebP, …) is refused
#: before any decoder sees it, and PIL opens photos with only the JPEG or PNG plugin allowed.
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The pixel budget per photo (data.max_pixels) when the configuration names none: 16.8 Mpx,
#: room for a 12 Mpx phone photo (4032 × 3024); the archive's photos are 384 × 512 (0.2 Mpx).
DEFAULT_MAX_PIXELS = 4096 * 4096
#: The size cap per photo file (data.max_file_bytes) when the configuration names none.
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024
#: JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8 and DAC CC): they hold the size.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field (TEM, RST0-7, SOI).
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
#: What other files start with, to say what a refused one is.
OTHER_FORMATS = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS (DOS binary, PostScript)"),
    (b"%PDF", "PDF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"8BPS", "Photoshop PSD"),
    (b"<?xml", "XML/SVG"),
    (b"<svg", "SVG"),
    (b"PK\x03\x04", "ZIP"),
)


@dataclass(frozen=True)
class ImageLimits:
    """What a photo may cost: pixels (from its header, checked before decoding) and file bytes
    (from the store's listing, checked before reading)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


def image_limits(cfg: DictConfig) -> ImageLimits:
    """`data.max_pixels` and `data.max_file_bytes` of a configuration (defaults when absent, as
    in the manifest of a run made before they existed)."""
    data = cfg.get("data") or {}
    return ImageLimits(
        max_pixels=int(data.get("max_pixels") or DEFAULT_MAX_PIXELS),
        max_file_bytes=int(data.get("max_file_bytes") or DEFAULT_MAX_FILE_BYTES),
    )


def shown_bytes(data: bytes, limit: int = 12) -> str:
    """The first bytes of a file as printable ASCII, everything else as \\xNN escapes."""
    head = "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in data[:limit])
    return f"'{head}…'" if len(data) > limit else f"'{head}'"


def format_name(data: bytes) -> str | None:
    """What kind of file other than a photo `data` is, when its first bytes say so."""
    for magic, name in OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return {b"avif": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}.get(
            brand, "ISO media (MP4/HEIF)"
        )
    return None


def photo_format(data: bytes, name: str) -> str:
    """'JPEG' or 'PNG' by the magic bytes at the start of `data`; DataError naming the file (and
    what it is, when known) for anything else."""
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if data.startswith(PNG_MAGIC):
        return "PNG"
    kind = format_name(data)
    what = f"a {kind} file that " if kind else ""
    raise DataError(
        f"{name}: not a readable image (not a JPEG or PNG: {what}starts with {shown_bytes(data)});"
        " only JPEG and PNG photos are decoded, whatever the file is called"
    )


def png_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (the first chunk); DataError when there is none."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise DataError(f"{name}: not a readable image (PNG without an IHDR header)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def jpeg_frames(data: bytes, name: str) -> list[tuple[int, int]]:
    """(width, height) of every JPEG frame header (SOFn) before the first scan; DataError when a
    marker runs past the end or there is none."""
    frames: list[tuple[int, int]] = []
    i, end = 2, len(data)
    while i < end:
        if data[i] != 0xFF:  # stray bytes between segments: skipped, as libjpeg and PIL do
            i += 1
            continue
        while i < end and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= end:
            break
        marker = data[i]
        i += 1
        if marker in JPEG_STANDALONE or marker == 0x00:
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: no frame header after this
            break
        if i + 2 > end:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if marker in JPEG_SOF:
            if i + 7 > end:
                break
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            frames.append((width, height))
        i += max(length, 2)
    if not frames:
        raise DataError(f"{name}: not a readable image (JPEG without a frame header)")
    return frames


def check_pixels(data: bytes, name: str, max_pixels: int) -> str:
    """The photo's format ('JPEG' or 'PNG') once its magic bytes and header are checked: its
    size read from the header (nothing decoded) is within the `max_pixels` budget.

    Raises DataError naming the file otherwise.
    """
    fmt = photo_format(data, name)
    sizes = [png_size(data, name)] if fmt == "PNG" else jpeg_frames(data, name)
    for width, height in sizes:
        if width * height > max_pixels:
            raise DataError(
                f"{name}: {width} × {height} pixels is over data.max_pixels={max_pixels} "
                "(a decompression bomb, or a photo far larger than this task needs; "
                "raise data.max_pixels to accept it)"
            )
    return fmt


def open_photo(data: bytes, fmt: str) -> Image.Image:
    """PIL's lazy image of checked photo bytes, with only the plugin of `fmt` allowed (no other
    decoder, and no external program such as Ghostscript, can ever be tried)."""
    return Image.open(io.BytesIO(data), formats=[fmt])


def check_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Fully decode an encoded image to prove it is usable; return its (width, height).

    Only JPEG and PNG (by magic bytes) within `max_pixels` (by header) reach a decoder. Raises
    DataError naming the file for empty, truncated, oversized or non-photo bytes.
    """
    fmt = check_pixels(data, name, max_pixels)
    buffer = io.BytesIO(data)
    try:
        with Image.open(buffer, formats=[fmt]) as im:
            if im.width * im.height > max_pixels:  # PIL read another header than ours
                raise DataError(
                    f"{name}: {im.width} × {im.height} pixels is over data.max_pixels={max_pixels}"
                )
            im.load()
            return im.size
    except DataError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        # PIL names the in-memory buffer ("<_io.BytesIO object at 0x…>"): name the file instead
        reason = str(e).replace(repr(buffer), repr(name))
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {reason})") from e


#: EXIF orientations that swap width and height.
TRANSPOSED = (5, 6, 7, 8)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, when absent)."""
    return int(im.getexif().get(0x0112, 1))


def plain_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """A JPEG within `max_pixels` with no EXIF rotation: what a GPU decoder that ignores EXIF can
    decode as is (anything else is left to `decode_resized`, which refuses what it must)."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        check_pixels(data, "image", max_pixels)
        with open_photo(data, "JPEG") as im:
            return exif_orientation(im) == 1
    except Exception:  # unreadable header: leave it to the CPU decoders and their errors
        return False


def decode_reduced_jpeg(data: bytes, size: Sequence[int]) -> torch.Tensor | None:
    """A JPEG decoded at a reduced scale (1/2, 1/4, 1/8: libjpeg skips the fine DCT terms), still
    at least `size` = (H, W) after EXIF rotation; None when no reduction applies.

    At 128×96 from the real 512×384 photos this decodes a quarter of the pixels, 1.3-1.6× faster
    than a full decode; the final antialiased resize then matches a full decode to ~1/255.
    Callers check the pixel budget first (`check_pixels`).
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    h, w = int(size[0]), int(size[1])
    with open_photo(data, "JPEG") as im:
        transposed = exif_orientation(im) in TRANSPOSED
        want = (h, w) if transposed else (w, h)  # PIL sizes are (width, height), before rotation
        if im.width < 2 * want[0] or im.height < 2 * want[1]:
            return None
        im.draft("RGB", want)
        return F.pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))


def decode_resized(
    data: bytes, size: Sequence[int], *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Decode to RGB (EXIF orientation applied) and resize to `size` = (H, W); uint8 3×H×W.

    Prepare checked the photo, but a shard in a bucket can be replaced: the same rules hold here
    (JPEG or PNG by magic bytes, `max_pixels` by header), else DataError naming `name`.
    """
    fmt = check_pixels(data, name, max_pixels)
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
            with open_photo(data, fmt) as im:
                img = F.pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))
    h, w = int(size[0]), int(size[1])
    if img.shape[-2:] != (h, w):
        img = F.resize(img, [h, w], antialias=True)
    return img


def load_images(
    run: Store,
    image_ids: Sequence[str],
    shards: Sequence[str],
    size: Sequence[int],
    threads: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode the given images from their shards into one uint8 tensor N×3×H×W (in that order).

    Each shard is read once; decoding runs on `threads` threads (torch releases the GIL). An
    image a shard holds that is not a photo within `max_pixels` raises DataError naming it.
    """
    out = torch.empty((len(image_ids), 3, int(size[0]), int(size[1])), dtype=torch.uint8)
    rows_by_shard: dict[str, list[int]] = {}
    for row, shard in enumerate(shards):
        rows_by_shard.setdefault(shard, []).append(row)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for shard, rows in rows_by_shard.items():
            blobs = read_shard(run, shard)

            def decode_row(row: int, blobs: dict[str, bytes] = blobs, shard: str = shard) -> None:
                name = f"{image_ids[row]} (in {run.uri_of(shard)})"
                data = blobs[image_ids[row]]
                out[row] = decode_resized(data, size, name=name, max_pixels=max_pixels)

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
        """path,reason as CSV; paths and reasons that start like a formula are neutralised."""
        return csv_bytes(pd.DataFrame(self.rows, columns=["path", "reason"]))


def unsafe_key_reason(key: str) -> str | None:
    """Why a listed object key is never read (`..`, encoded separators, …), or None when safe.

    S3 keys are free-form text; such a key could name something outside the data root.
    """
    try:
        join_key(key)
    except StoreError as e:
        return f"unsafe object key, not read ({e})"
    return None


def size_reason(size: int, limits: ImageLimits) -> str | None:
    """Why a file of `size` bytes is not read (over data.max_file_bytes), or None."""
    if size > limits.max_file_bytes:
        return (
            f"{size} bytes is over data.max_file_bytes={limits.max_file_bytes} (not read; the "
            "archive's photos are about 100 KB: raise data.max_file_bytes to accept it)"
        )
    return None


def checked_images(
    data: Store,
    paths: list[str],
    bad: BadInputs,
    threads: int,
    limits: ImageLimits | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Read images in parallel and fully decode each; yield (path, bytes) of the usable ones.

    A file whose listed size (`sizes`) is over `limits.max_file_bytes` is not read; one the store
    refuses (not a regular file, grown past the cap since the listing) or that is not a JPEG or
    PNG within `limits.max_pixels` goes to `bad`. At most a few images per thread are in flight,
    so memory stays bounded.
    """
    limits = limits or ImageLimits()
    window: deque[tuple[str, bytes, Future[tuple[int, int]]]] = deque()

    def drain_one() -> Iterator[tuple[str, bytes]]:
        path, blob, future = window.popleft()
        try:
            future.result()
        except DataError as e:
            bad.add(path, str(e).removeprefix(f"{path}: "))
            return
        yield path, blob

    wanted = []
    for path in paths:
        reason = size_reason(sizes[path], limits) if sizes and path in sizes else None
        if reason:
            bad.add(path, reason)
        else:
            wanted.append(path)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for path, blob in data.read_inputs(wanted, limits.max_file_bytes):
            if isinstance(blob, StoreRefused):
                bad.add(path, str(blob))
                continue
            window.append((path, blob, pool.submit(check_image, blob, path, limits.max_pixels)))
            if len(window) >= 4 * threads:
                yield from drain_one()
        while window:
            yield from drain_one()
