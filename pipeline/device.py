"""Pick the device, numeric precision and thread count a job runs with."""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from pipeline.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_threads(cfg: DictConfig) -> int:
    """Threads for torch and decoding: `train.num_threads`, or every core this process may use."""
    return int(cfg.train.get("num_threads") or 0) or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Runtime:
    """Where and how a job computes."""

    device: torch.device
    precision: str
    threads: int


def setup_runtime(cfg: DictConfig) -> Runtime:
    """Resolve `train.device`, `train.precision` and `train.num_threads`; set torch's threads."""
    threads = cpu_threads(cfg)
    torch.set_num_threads(threads)
    device = pick_device(str(cfg.train.device))
    return Runtime(device, pick_precision(str(cfg.train.precision), device), threads)


def pick_device(name: str) -> torch.device:
    """`auto` → cuda when available else cpu; ConfigError for unknown names or missing CUDA."""
    if name not in DEVICES:
        raise ConfigError(f"train.device={name!r} is not one of {DEVICES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device) -> str:
    """Resolve `auto` to bf16 where the hardware has it, fp16 on older GPUs, fp32 otherwise."""
    if name not in PRECISIONS:
        raise ConfigError(f"train.precision={name!r} is not one of {PRECISIONS}")
    if name != "auto":
        if name == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The autocast context for a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
