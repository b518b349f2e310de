"""Packed image shards: few large Parquet objects (image_id, raw encoded bytes) per run.

Later stages read a handful of shards instead of thousands of small objects; the raw bytes are
kept so each job decodes once at its own input size.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.store import Store, join_key

SHARD_SCHEMA = pa.schema([("image_id", pa.string()), ("data", pa.binary())])


def shard_key(split: str, number: int) -> str:
    """Key of a shard in a run, e.g. `shards/train-00000.parquet`."""
    return join_key("shards", f"{split}-{number:05d}.parquet")


def encode_shard(items: list[tuple[str, bytes]]) -> bytes:
    """Serialise (image_id, bytes) pairs into one Parquet file (no compression: JPEG/PNG are)."""
    table = pa.table(
        {"image_id": [i for i, _ in items], "data": [b for _, b in items]}, schema=SHARD_SCHEMA
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none")
    return sink.getvalue()


def write_shards(
    run: Store, split: str, items: Iterable[tuple[str, bytes]], shard_bytes: int
) -> Iterator[tuple[str, str]]:
    """Pack a stream of (image_id, bytes) into shards of about `shard_bytes` each.

    Yields (image_id, shard key) once the shard holding the image is written, so at most one
    shard's worth of bytes is held in memory.
    """
    batch: list[tuple[str, bytes]] = []
    size, number = 0, 0

    def flush() -> Iterator[tuple[str, str]]:
        key = shard_key(split, number)
        run.write_bytes(key, encode_shard(batch))
        for image_id, _ in batch:
            yield image_id, key

    for image_id, data in items:
        batch.append((image_id, data))
        size += len(data)
        if size >= shard_bytes:
            yield from flush()
            batch, size, number = [], 0, number + 1
    if batch:
        yield from flush()


def read_shard(run: Store, key: str) -> dict[str, bytes]:
    """Read a shard into a mapping image_id → encoded bytes."""
    table = pq.read_table(io.BytesIO(run.read_bytes(key)))
    return dict(
        zip(table.column("image_id").to_pylist(), table.column("data").to_pylist(), strict=True)
    )
