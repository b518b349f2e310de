"""Checkpoints: tensors in safetensors files, everything else in JSON; nothing is unpickled.

Every checkpoint, training state and pretrained weight file is untrusted input (a bucket several
teams can write), and torch.load's weights_only unpickler is bypassable in the torch the V100
route and the image pin (2.7.1; GHSA-63cw-57p8-fm3p). So a run writes no pickle:

- a plain state dict (a model's best weights, `models/<name>/checkpoint.safetensors`) is one
  safetensors file, its keys the tensor names: readable by any safetensors tool (`save_weights`,
  `read_tensors`);
- any other state (the training state, `models/<name>/last.json`) is a JSON skeleton naming a
  safetensors file of its tensors, `last-<16 hex>.safetensors` (`save_state`, `load_state`).

A file that a later write supersedes (the training state's tensors, the best weights while a
model trains) is content-addressed: its name begins with its SHA-256, it is written before the
JSON that names it and the one it replaces is deleted after (`save_addressed`, `drop_addressed`).
A job killed between any two writes (Slurm's SIGKILL after a preemption's grace time) thus leaves
a JSON whose files are all there and match.

Each file is checked against the SHA-256 its writer recorded before it is parsed: in the state's
JSON for its tensors file, in the training state for the best checkpoint, in the model's
metrics.json for the checkpoint that predict and the publish gate read. A mismatch, a malformed
file or a skeleton naming what is not there raises UnusableCheckpoint naming the file.

Runs made before this format hold `checkpoint.pt` / `last.pt` (torch.save): they are still read,
with torch.load(weights_only=True) and a warning naming the file (`load_legacy`, `load_bytes`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import safetensors.torch
import torch

from pipeline.core.errors import StageFailed, StoreError
from pipeline.storage.run_layout import (
    ADDRESSED_FILE,
    METRICS_FILE,
    addressed_key,
    checkpoint_key,
    legacy_checkpoint_key,
    model_key,
    stage_key,
    train_stage,
)
from pipeline.storage.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The "format" of a state's JSON skeleton (`save_state`).
STATE_FORMAT = "pipeline.state/1"
#: Markers of the JSON skeleton:
#: - {"__tensor__": name}: a tensor of the safetensors file; {"__tensor__": [name, dims]}: one
#:   whose memory layout is not the default (channels_last weights and their Adam moments),
#:   stored in the order of `dims` and permuted back on load, so that its strides come back too
#:   (fused Adam goes wrong when a moment's layout differs from its parameter's);
#: - {"__items__": [[key, value], ...]}: a dict whose keys are not all strings (an optimizer's
#:   state is keyed by parameter number);
#: - {"__tuple__": [...]}: a tuple; {"__float__": "inf"}: a float JSON cannot hold (inf, nan).
TENSOR, ITEMS, TUPLE, FLOAT = "__tensor__", "__items__", "__tuple__", "__float__"
MARKERS = (TENSOR, ITEMS, TUPLE, FLOAT)
SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
SHA256_HEX = 64


class StateFileError(ValueError):
    """A checkpoint file whose content the checks refuse; the message says what is wrong."""


class UnusableCheckpoint(Exception):
    """A checkpoint file that cannot be used: corrupt, changed after training, or malformed.

    `uri` names the file and `reason` says why in one line ("StateFileError: sha256 ..."); the
    original error is the `__cause__`.
    """

    def __init__(self, uri: str, error: Exception) -> None:
        self.uri = uri
        message = str(error) if isinstance(error, StateFileError) else first_line(error)
        self.reason = f"{type(error).__name__}: {message}"
        super().__init__(f"{uri} is unusable ({self.reason})")


def first_line(error: Exception) -> str:
    """The first line of an error's message, at most 200 characters (torch's can be pages)."""
    return (str(error).strip().splitlines() or [""])[0][:200]


def guarded(uri: str, load: Callable[[], T]) -> T:
    """`load()`, any error but a storage error turned into UnusableCheckpoint naming `uri`."""
    try:
        return load()
    except StoreError:
        raise
    except Exception as e:  # safetensors, json and torch raise many types for a bad file
        raise UnusableCheckpoint(uri, e) from e


# ------------------------------------------------------------------------------ hashes


def sha256_hex(blob: bytes) -> str:
    """The SHA-256 of `blob`, as 64 hex digits."""
    return hashlib.sha256(blob).hexdigest()


def is_sha256(value: Any) -> bool:
    """Whether `value` is a SHA-256 as 64 lowercase hex digits."""
    return (
        isinstance(value, str)
        and len(value) == SHA256_HEX
        and all(c in "0123456789abcdef" for c in value)
    )


def check_sha256(blob: bytes, expected: str, recorded_in: str) -> None:
    """StateFileError unless `blob` has the SHA-256 `expected`, which `recorded_in` records."""
    got = sha256_hex(blob)
    if got != expected:
        raise StateFileError(
            f"sha256 {got[:16]}… does not match the {expected[:16]}… recorded in {recorded_in}: "
            "the file was changed after training"
        )


# ------------------------------------------------------------------------------ tensors


def standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of `tensor` sharing no storage (safetensors refuses shared ones)."""
    return tensor.detach().to(device="cpu", memory_format=torch.contiguous_format, copy=True)


def save_weights(store: Store, key: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """Writes `tensors` (name → tensor, e.g. a state dict) to `key` as one safetensors file,
    atomically; returns its SHA-256 for the caller to record."""
    blob = safetensors.torch.save({name: standalone(t) for name, t in tensors.items()})
    store.write_bytes(key, blob)
    return sha256_hex(blob)


def save_addressed(store: Store, stem: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """Writes `tensors` as the safetensors file `<stem>-<16 hex>.safetensors`, the hex digits
    those of its SHA-256 (run_layout.addressed_key); returns that SHA-256. A file already there
    under that name holds the same bytes and is left as it is."""
    blob = safetensors.torch.save({name: standalone(t) for name, t in tensors.items()})
    digest = sha256_hex(blob)
    store.write_bytes(addressed_key(stem, digest), blob)
    return digest


def drop_addressed(store: Store, stem: str, keep: set[str]) -> None:
    """Deletes the content-addressed files of `stem` (`save_addressed`) whose SHA-256 is not in
    `keep`: those a newer JSON superseded, and any a killed job left behind."""
    folder, _, base = stem.rpartition("/")
    kept = {addressed_key(stem, digest) for digest in keep}
    for key in store.list(folder):
        name = key.rpartition("/")[2]
        if key.rpartition("/")[0] != folder or not name.startswith(f"{base}-"):
            continue
        if ADDRESSED_FILE.fullmatch(name) and key not in kept:
            store.delete(key)


def looks_like_safetensors(blob: bytes) -> bool:
    """Whether `blob` starts like a safetensors file: an 8-byte header size, then a JSON object."""
    if len(blob) < 10:
        return False
    header = int.from_bytes(blob[:8], "little")
    return 8 + header <= len(blob) and blob[8:9] == b"{"


def parse_weights(blob: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes, on the CPU, each in memory of its own (trained
    further in place: some safetensors versions hand out views of the bytes); StateFileError when
    it is not a safetensors file."""
    try:
        tensors = safetensors.torch.load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise StateFileError(f"not a safetensors file ({first_line(e)})") from e
    return {name: tensor.clone() for name, tensor in tensors.items()}


def parse_tensors(blob: bytes, uri: str, sha256: str, recorded_in: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `uri` (its bytes `blob`) once its SHA-256 matches the
    one `recorded_in` records; UnusableCheckpoint naming `uri` otherwise."""

    def parse() -> dict[str, torch.Tensor]:
        check_sha256(blob, sha256, recorded_in)
        return parse_weights(blob)

    return guarded(uri, parse)


def read_tensors(store: Store, key: str, sha256: str, recorded_in: str) -> dict[str, torch.Tensor]:
    """`key`'s tensors, checked against the SHA-256 `recorded_in` records (`parse_tensors`).

    Storage errors (StoreError, StoreKeyNotFound) pass through unchanged.
    """
    return parse_tensors(store.read_bytes(key), store.uri_of(key), sha256, recorded_in)


# ------------------------------------------------------------------------------ states


def save_state(store: Store, stem: str, state: Any) -> str:
    """Writes `state` (nested dicts, lists, tuples, numbers, strings, booleans, None and tensors)
    as `<stem>-<16 hex>.safetensors` (its tensors, `save_addressed`) then `<stem>.json` (the
    rest, naming that file and its SHA-256), each atomically, then deletes the tensors file the
    previous JSON named; returns the SHA-256.

    TypeError naming the part for anything else (a module, an arbitrary object).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode(state, tensors, "")
    digest = save_addressed(store, stem, tensors)
    record = {
        "format": STATE_FORMAT,
        "sha256": {addressed_key(stem, digest): digest},
        "state": skeleton,
    }
    store.write_bytes(f"{stem}.json", json.dumps(record, indent=1, allow_nan=False).encode())
    drop_addressed(store, stem, {digest})
    return digest


def load_state(store: Store, stem: str, check: Callable[[Any], T]) -> T:
    """The state `save_state` wrote at `stem`, passed through `check`, which returns it as a T.

    `<stem>.json` must be a skeleton in STATE_FORMAT naming one tensors file,
    `<stem>-<16 hex>.safetensors`, and its SHA-256, which must match; every tensor it names must
    be in that file. Anything else, and anything
    `check` raises, is UnusableCheckpoint naming the file; storage errors pass through unchanged.
    Nothing is unpickled.
    """
    json_key = f"{stem}.json"
    json_uri = store.uri_of(json_key)
    blob = store.read_bytes(json_key)
    record = guarded(json_uri, lambda: parse_record(blob, stem))
    ((tensors_key, digest),) = record["sha256"].items()
    tensors = read_tensors(store, tensors_key, digest, json_uri)

    def rebuild() -> T:
        used: set[str] = set()
        state = decode(record["state"], tensors, used, "state")
        unnamed = sorted(set(tensors) - used)
        if unnamed:
            raise StateFileError(f"{tensors_key} holds tensors it never names: {unnamed[:5]}")
        return check(state)

    return guarded(json_uri, rebuild)


def parse_record(blob: bytes, stem: str) -> dict[str, Any]:
    """A state's JSON record: {"format", "sha256": {key: digest}, "state"}, its one key the
    tensors file `<stem>-<16 hex>.safetensors` of that digest (never another file); StateFileError
    saying what is wrong otherwise."""
    record = parse_json(blob)
    if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise StateFileError(f"not a saved state: format {found!r}, not {STATE_FORMAT!r}")
    hashes = record.get("sha256")
    named = list(hashes.items()) if isinstance(hashes, dict) else []
    key, digest = named[0] if len(named) == 1 else (None, None)
    if not is_sha256(digest) or key != addressed_key(stem, str(digest)):
        raise StateFileError(
            f"its sha256 must name one tensors file, {stem}-<16 hex>.safetensors, the hex digits "
            "beginning its SHA-256"
        )
    if "state" not in record:
        raise StateFileError("it has no state")
    return record


def parse_json(blob: bytes) -> Any:
    """JSON strictly: UTF-8, no NaN/Infinity literals, no key twice in an object."""

    def refuse_constant(name: str) -> Any:
        raise StateFileError(f"{name} is not JSON (non-finite floats are {{{FLOAT!r}: ...}})")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise StateFileError(f"an object has a key twice: {sorted(keys)[:5]}")
        return dict(pairs)

    return json.loads(
        blob.decode("utf-8"), parse_constant=refuse_constant, object_pairs_hook=unique_keys
    )


def encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """`value` as JSON, its tensors moved into `tensors` under names made from their path."""
    if isinstance(value, torch.Tensor):
        name = path.lstrip("/") or "tensor"
        if name in tensors:
            name = f"{name}#{len(tensors)}"
        dims = physical_order(value)
        tensors[name] = value.permute(dims)
        return {TENSOR: name if dims == list(range(value.dim())) else [name, dims]}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {FLOAT: repr(float(value))}
    if isinstance(value, tuple):
        return {TUPLE: [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in MARKERS for k in value):
            return {k: encode(v, tensors, f"{path}/{k}") for k, v in value.items()}
        return {
            ITEMS: [
                [encode(k, tensors, f"{path}/key{i}"), encode(v, tensors, f"{path}/{k}")]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise TypeError(
        f"{path or 'the state'} is a {type(value).__name__}: only tensors, dicts, lists, tuples, "
        "numbers, strings, booleans and None can be saved"
    )


def decode(node: Any, tensors: dict[str, torch.Tensor], used: set[str], where: str) -> Any:
    """The value `encode` made `node` from; StateFileError naming the place `where` otherwise."""
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [decode(v, tensors, used, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        raise StateFileError(f"{where} is a {type(node).__name__}, which JSON does not make")
    if len(node) == 1 and next(iter(node)) in MARKERS:
        marker, argument = next(iter(node.items()))
        return decode_marker(marker, argument, tensors, used, where)
    if any(k in MARKERS for k in node):
        raise StateFileError(f"{where} mixes a marker ({', '.join(MARKERS)}) with other keys")
    return {k: decode(v, tensors, used, f"{where}.{k}") for k, v in node.items()}


def decode_marker(
    marker: str, argument: Any, tensors: dict[str, torch.Tensor], used: set[str], where: str
) -> Any:
    """The value of a marker object {marker: argument} (see MARKERS)."""
    if marker == TENSOR:
        return decode_tensor(argument, tensors, used, where)
    if marker == FLOAT:
        if argument not in SPECIAL_FLOATS:
            raise StateFileError(f"{where}: {argument!r} is not one of {list(SPECIAL_FLOATS)}")
        return SPECIAL_FLOATS[argument]
    if not isinstance(argument, list):
        raise StateFileError(f"{where}: {marker} holds a {type(argument).__name__}, not a list")
    if marker == TUPLE:
        return tuple(decode(v, tensors, used, f"{where}[{i}]") for i, v in enumerate(argument))
    items: dict[Any, Any] = {}
    for i, pair in enumerate(argument):
        if not isinstance(pair, list) or len(pair) != 2:
            raise StateFileError(f"{where}: item {i} is not a [key, value] pair")
        key = decode(pair[0], tensors, used, f"{where}.key{i}")
        if not is_plain_key(key) or key in items:
            raise StateFileError(f"{where}: key {i} ({key!r}) is not a new number, string or None")
        items[key] = decode(pair[1], tensors, used, f"{where}.{key}")
    return items


def physical_order(tensor: torch.Tensor) -> list[int]:
    """The dimensions of `tensor` from the largest stride to the smallest (ties in order):
    [0, 2, 3, 1] for a channels_last image batch, [0, 1, ...] for a contiguous tensor."""
    strides = tensor.stride()
    return sorted(range(tensor.dim()), key=lambda d: -strides[d])


def decode_tensor(
    argument: Any, tensors: dict[str, torch.Tensor], used: set[str], where: str
) -> torch.Tensor:
    """The tensor a TENSOR marker names (a name, or [name, dims]), in its saved layout."""
    name, dims = argument if isinstance(argument, list) and len(argument) == 2 else (argument, None)
    if not isinstance(name, str) or name not in tensors:
        raise StateFileError(f"{where} names tensor {name!r}, which is not in the file")
    used.add(name)
    tensor = tensors[name]
    if dims is None:
        return tensor
    if not isinstance(dims, list) or sorted(dims) != list(range(tensor.dim())):
        raise StateFileError(f"{where}: {dims!r} is not an order of the {tensor.dim()} dimensions")
    inverse = sorted(range(len(dims)), key=dims.__getitem__)
    return tensor.permute(inverse)


def is_plain_key(key: Any) -> bool:
    """Whether `key` is a dict key `save_state` writes: a number, string, bool, None or a tuple
    of them (never a tensor or a list)."""
    if isinstance(key, tuple):
        return all(is_plain_key(k) for k in key)
    return key is None or isinstance(key, bool | int | float | str)


# ------------------------------------------------------------------------------ legacy .pt


def load_bytes(blob: bytes) -> Any:
    """torch.load of a legacy file's bytes with weights_only=True, onto the CPU.

    Raises whatever torch raises for a corrupt or unsafe file (UnpicklingError, RuntimeError, ...).
    """
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def load_legacy(store: Store, key: str, check: Callable[[Any], T]) -> T:
    """A legacy torch.save file of a run made before safetensors, with a warning naming it,
    loaded with weights_only and passed through `check`; UnusableCheckpoint naming the file for
    anything the load or the check raises; storage errors pass through unchanged."""
    uri = store.uri_of(key)
    blob = store.read_bytes(key)
    log.warning(
        "%s is in the legacy pickle-based format (torch.save) of runs made before safetensors: "
        "reading it with torch.load(weights_only=True), which torch <= 2.9.1 does not make safe "
        "(GHSA-63cw-57p8-fm3p); retrain the model to replace it",
        uri,
    )
    return guarded(uri, lambda: check(load_bytes(blob)))


def state_dict_of(value: Any) -> dict[str, torch.Tensor]:
    """`value` if it is a state dict (names → tensors); StateFileError saying what it is not."""
    if not isinstance(value, dict):
        raise StateFileError(f"it holds a {type(value).__name__}, not a state dict")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise StateFileError(f"it is not a state dict of tensors: {bad[:5]}")
    return value


# ------------------------------------------------------------------------------ a model's best


def has_checkpoint(run: Store, name: str) -> bool:
    """Whether model `name` has a best checkpoint in the run (either format)."""
    return run.exists(checkpoint_key(name)) or run.exists(legacy_checkpoint_key(name))


def recorded_sha256(run: Store, record_key: str, key: str) -> str:
    """The SHA-256 of `key` that the JSON file `record_key` records under "sha256"; StateFileError
    saying so when it records none (storage errors but a missing record pass through)."""
    where = run.uri_of(record_key)
    if not run.exists(record_key):
        raise StateFileError(f"no sha256 of it is recorded: {where} is missing")
    try:
        record = parse_json(run.read_bytes(record_key))
    except ValueError as e:
        raise StateFileError(f"no sha256 of it is recorded: {where} is unreadable ({e})") from e
    hashes = record.get("sha256") if isinstance(record, dict) else None
    digest = hashes.get(key) if isinstance(hashes, dict) else None
    if not is_sha256(digest):
        raise StateFileError(f"{where} records no sha256 of it")
    return str(digest)


def load_checkpoint(
    run: Store, name: str, sha256: str | None = None, recorded_in: str = ""
) -> dict[str, torch.Tensor]:
    """Model `name`'s best state dict, nothing unpickled, checked against its SHA-256: `sha256`
    as `recorded_in` records it (the train stage: its training state) or, by default, the one the
    train stage recorded in the model's metrics.json (predict, the publish gate).

    A run made before safetensors (only checkpoint.pt) is read the legacy way, with a warning.
    Raises StageFailed saying how to retrain when the file is corrupt, changed after training or
    holds anything but tensors; storage errors (StoreError) pass through unchanged.
    """
    key, legacy = checkpoint_key(name), legacy_checkpoint_key(name)
    if not run.exists(key) and run.exists(legacy):
        return retrain_on_failure(run, name, lambda: load_legacy(run, legacy, state_dict_of))
    uri, blob = run.uri_of(key), run.read_bytes(key)
    record_key = model_key(name, METRICS_FILE)

    def parse() -> dict[str, torch.Tensor]:
        if sha256 is not None:
            return parse_tensors(blob, uri, sha256, recorded_in)
        digest = guarded(uri, lambda: recorded_sha256(run, record_key, key))
        return parse_tensors(blob, uri, digest, run.uri_of(record_key))

    return retrain_on_failure(run, name, parse)


def retrain_on_failure(run: Store, name: str, load: Callable[[], T]) -> T:
    """`load()`, with UnusableCheckpoint turned into StageFailed saying how to retrain `name`."""
    try:
        return load()
    except UnusableCheckpoint as e:
        raise StageFailed(
            f"{e.uri} cannot be loaded ({e.reason}); it is corrupt, changed after training or "
            f"not a plain state dict. Retrain model {name}: delete "
            f"{run.uri_of(stage_key(train_stage(name)))} and rerun this run_id "
            "(the train stage then detects the bad checkpoint and trains from scratch)"
        ) from e.__cause__
