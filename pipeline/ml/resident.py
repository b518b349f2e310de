"""Keep a job's decoded images resident where batches are computed, and hand out batches fast.

Training and prediction decode every image once, at the model's input size, into uint8
N×3×H×W tensors (a 512×384 image is 590 KB; 18,900 of them 11 GB). Where they live:

- CPU jobs: in ordinary host memory; a batch is an index gather.
- CUDA jobs: on the GPU when all of the job's images fit in `train.gpu_memory_budget` (a fraction
  of the GPU's memory), so a batch never crosses the bus; otherwise in pinned (page-locked) host
  memory, gathered into one of two pinned staging buffers and copied asynchronously, so a 16 GB
  V100 at 512×384 trains from host memory instead of running out.

On CUDA, JPEGs are decoded in batches by nvJPEG on the GPU and resized there; formats nvJPEG
cannot read (PNG, CMYK JPEG, ...) fall back to the CPU decoder image by image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from pipeline.core.errors import ConfigError
from pipeline.ml.images import DEFAULT_MAX_PIXELS, decode_resized, load_images, plain_jpeg
from pipeline.storage.shards import read_shard
from pipeline.storage.store import Store

log = logging.getLogger(__name__)

Placement = Literal["device", "pinned", "host"]

#: Images decoded per nvJPEG call: large enough to fill the GPU, small enough for its memory.
DECODE_CHUNK = 256


def image_bytes(count: int, size: Sequence[int]) -> int:
    """Bytes that `count` uint8 RGB images of `size` = (H, W) take."""
    return int(count) * 3 * int(size[0]) * int(size[1])


def plan_placement(nbytes: int, device: torch.device, budget: float) -> Placement:
    """Where `nbytes` of images should live on `device` given `train.gpu_memory_budget`."""
    if not 0.0 <= float(budget) <= 1.0:
        raise ConfigError(f"train.gpu_memory_budget must be a fraction in [0, 1], got {budget}")
    if device.type != "cuda":
        return "host"
    total = torch.cuda.get_device_properties(device).total_memory
    if nbytes <= float(budget) * total:
        return "device"
    log.info(
        "images need %.1f GB, over the budget of %.0f%% of %.1f GB: keeping them in pinned "
        "host memory",
        nbytes / 1e9,
        100 * float(budget),
        total / 1e9,
    )
    return "pinned"


class ResidentImages:
    """uint8 N×3×H×W images plus the way to bring any batch of them to `device`."""

    def __init__(self, images: torch.Tensor, device: torch.device, *, staged: bool = False):
        """`staged`: batches go through two reusable staging buffers (pinned on CUDA) instead of
        a fresh gather; used automatically when host images feed a CUDA device."""
        self.images = images
        self.device = torch.device(device)
        self.staged = staged or (images.device.type == "cpu" and self.device.type == "cuda")
        self._buffers: list[torch.Tensor] = []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    @property
    def placement(self) -> Placement:
        """Where the images live: on the compute device, in pinned host memory, or host memory."""
        if self.images.device.type == "cuda":
            return "device"
        return "pinned" if self.images.is_pinned() else "host"

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """The images at `rows` (a 1-D index tensor) on the compute device, uint8."""
        if not self.staged:
            return self.images[rows.to(self.images.device)].to(self.device, non_blocking=True)
        if not self._buffers:
            pin = self.device.type == "cuda"
            shape = (max(len(rows), 1), *self.images.shape[1:])
            self._buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in "ab"]
        k = self._turn
        self._turn = 1 - k
        event = self._events[k]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer has finished
        buffer = self._buffers[k]
        if len(rows) > len(buffer):
            buffer = self._buffers[k] = torch.empty(
                (len(rows), *buffer.shape[1:]), dtype=torch.uint8, pin_memory=buffer.is_pinned()
            )
        staging = buffer[: len(rows)]
        torch.index_select(self.images, 0, rows.cpu(), out=staging)
        out = staging.to(self.device, non_blocking=True, copy=True)
        if self.device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record()
            self._events[k] = copied
        return out

    def slices(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive batches in order (for prediction), each on the compute device."""
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self))))


def as_resident(images: torch.Tensor | ResidentImages, device: torch.device) -> ResidentImages:
    """Wrap a plain tensor (tests, small jobs) so callers handle one type."""
    return images if isinstance(images, ResidentImages) else ResidentImages(images, device)


def decode_batch(
    blobs: Sequence[bytes],
    size: Sequence[int],
    device: torch.device,
    *,
    names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decode and resize encoded images on `device`: plain JPEGs in one nvJPEG call (CPU works
    too), the rest — PNGs, EXIF-rotated JPEGs (nvJPEG ignores EXIF) — with the CPU decoder.

    If nvJPEG rejects the batch (a CMYK JPEG, say), its images are decoded one by one, each
    falling back to the CPU decoder, so one odd file does not stop the job. Bytes that are not a
    JPEG or PNG within `max_pixels` go to the CPU path, which raises DataError naming the image
    (`names`, in the order of `blobs`).
    """
    h, w = int(size[0]), int(size[1])
    out = torch.empty((len(blobs), 3, h, w), dtype=torch.uint8, device=device)

    def cpu(i: int) -> torch.Tensor:
        name = names[i] if names is not None else f"image {i}"
        return decode_resized(blobs[i], size, name=name, max_pixels=max_pixels)

    on_gpu = [i for i, blob in enumerate(blobs) if plain_jpeg(blob, max_pixels)]
    raw = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in on_gpu]
    try:
        decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device) if raw else []
    except RuntimeError:
        decoded = [None] * len(on_gpu)
    for i, data, img in zip(on_gpu, raw, decoded, strict=True):
        if img is None:
            try:
                img = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                img = cpu(i)
        out[i] = img if img.shape[-2:] == (h, w) else F.resize(img, [h, w], antialias=True)
    for i in sorted(set(range(len(blobs))) - set(on_gpu)):
        out[i] = cpu(i)
    return out


def load_resident(
    run: Store,
    image_ids: Sequence[str],
    shards: Sequence[str],
    size: Sequence[int],
    *,
    device: torch.device,
    threads: int,
    placement: Placement,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ResidentImages:
    """Decode the given images once, in order, into resident uint8 tensors (see module doc).

    CPU: torchvision decoders on `threads` threads. CUDA: nvJPEG batches on the GPU, the result
    kept on the GPU (`placement="device"`) or copied into pinned host memory (`"pinned"`). An
    image that is not a JPEG or PNG within `max_pixels` (data.max_pixels) raises DataError.
    """
    if device.type != "cuda":
        images = load_images(run, image_ids, shards, size, threads, max_pixels=max_pixels)
        return ResidentImages(images, device)
    n, h, w = len(image_ids), int(size[0]), int(size[1])
    if placement == "device":
        out = torch.empty((n, 3, h, w), dtype=torch.uint8, device=device)
    else:
        out = torch.empty((n, 3, h, w), dtype=torch.uint8, pin_memory=True)
    rows_by_shard: dict[str, list[int]] = {}
    for row, shard in enumerate(shards):
        rows_by_shard.setdefault(shard, []).append(row)
    for shard, rows in rows_by_shard.items():
        blobs = read_shard(run, shard)
        for start in range(0, len(rows), DECODE_CHUNK):
            chunk = rows[start : start + DECODE_CHUNK]
            names = [f"{image_ids[r]} (in {run.uri_of(shard)})" for r in chunk]
            blobs_of = [blobs[image_ids[r]] for r in chunk]
            images = decode_batch(blobs_of, size, device, names=names, max_pixels=max_pixels)
            out[torch.tensor(chunk, device=out.device)] = images.to(out.device)
    return ResidentImages(out, device)
