"""Pick the device, numeric precision and thread count a job runs with."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.core.errors import ConfigError
from pipeline.core.schema import Device, Precision, choices

log = logging.getLogger("pipeline.ml.device")

DEVICES = choices(Device)
PRECISIONS = choices(Precision)
#: Set by the Kubernetes pods to the container's CPU limit (downward API; orchestration/k8s.py).
CPU_LIMIT_ENV = "MASKSUITE_CPU_LIMIT"
#: Set by Slurm in a job (and its steps) that asked for --cpus-per-task.
SLURM_CPUS_ENV = "SLURM_CPUS_PER_TASK"


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 `cpu.max`, or v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu,cpuacct", root / "cpu"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def available_cpus(
    env: Mapping[str, str] | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """CPUs this process may keep busy: the cores it may run on (sched_getaffinity), capped by
    what its scheduler gave it: a Slurm job's `SLURM_CPUS_PER_TASK`, `MASKSUITE_CPU_LIMIT` (a
    Kubernetes pod's `limits.cpu`, through the downward API) and the cgroup's CPU quota, each
    rounded up to whole CPUs. Where nothing binds tasks to cores, affinity alone reports every core
    of the node, and a job given 8 CPUs running 64 threads is throttled to a crawl; where
    something binds them to fewer cores than the job was given, 8 threads on 2 cores are as bad."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0))
    cpus = cores
    limits: list[tuple[str, float]] = []
    for var in (SLURM_CPUS_ENV, CPU_LIMIT_ENV):
        text = env.get(var, "").strip()
        if text:
            try:
                limits.append((var, float(text)))
            except ValueError:
                log.warning("%s=%r is not a number of CPUs; ignored", var, text)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        limits.append(("the cgroup's CPU quota", quota))
    for source, limit in limits:
        if limit > 0:
            if source == SLURM_CPUS_ENV and cores < limit:
                log.warning(
                    "%s=%s but this process may run on %d core(s) only (its CPU affinity): the "
                    "job step did not get the job's CPUs (srun of Slurm 22.05-23.02 needs "
                    "SRUN_CPUS_PER_TASK); using %d thread(s)",
                    SLURM_CPUS_ENV,
                    env[SLURM_CPUS_ENV],
                    cores,
                    cores,
                )
            cpus = min(cpus, max(1, math.ceil(limit)))
    return cpus


def cpu_threads(cfg: DictConfig) -> int:
    """Threads for torch and decoding: `train.num_threads`, or every CPU this process may use
    (`available_cpus`: its cores, capped by its Slurm job's or container's CPUs)."""
    return int(cfg.train.get("num_threads") or 0) or available_cpus()


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
    log.info("%d CPU thread(s)", threads)
    device = pick_device(str(cfg.train.device))
    require_kernels(device)
    return Runtime(device, pick_precision(str(cfg.train.precision), device), threads)


def compiler_for(device: torch.device, env: Mapping[str, str] | None = None) -> str | None:
    """The compiler torch.compile (inductor) would build its kernels with on `device`: a C++
    compiler for CPU kernels (CXX, else g++, clang++ or c++), a C compiler for Triton's GPU
    launchers (CC, else cc, gcc or clang). None when there is none on PATH."""
    env = os.environ if env is None else env
    if device.type == "cpu":
        var, programs = "CXX", ("g++", "clang++", "c++")
    else:
        var, programs = "CC", ("cc", "gcc", "clang")
    for program in [env.get(var, ""), *programs]:
        if program and shutil.which(program.split()[0], path=env.get("PATH")):
            return program
    return None


def require_compiler(device: torch.device) -> None:
    """Refuse `train.compile=true` where inductor cannot build kernels: the PyTorch runtime images
    have no C compiler, and without one compiling fails at the first training step."""
    if compiler_for(device) is None:
        kind = "C++" if device.type == "cpu" else "C"
        raise ConfigError(
            f"train.compile=true needs a {kind} compiler to build {device.type} kernels, and none "
            "is on PATH (the PyTorch runtime images, ours included, have none): set "
            "train.compile=false, or build an image with gcc/g++ installed"
        )


def pick_device(name: str, env: Mapping[str, str] | None = None) -> torch.device:
    """`auto` → cuda when torch sees a GPU, else cpu; ConfigError for unknown names, and for
    `cuda` or `auto` without a GPU torch can use where the scheduler gave this job one
    (`gpus_given`): such a job would train on the CPU for hours. `cpu` is always taken as is."""
    if name not in DEVICES:
        raise ConfigError(f"train.device={name!r} is not one of {DEVICES}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    env = os.environ if env is None else env
    given = gpus_given(env)
    if name == "cuda":
        raise ConfigError(
            f"train.device=cuda but torch {torch.__version__} sees no CUDA device: "
            f"{no_gpu_cause()}; set train.device=cpu to train on the CPU on purpose"
        )
    if given:
        raise ConfigError(
            f"{given} says the scheduler gave this job a GPU, but torch {torch.__version__} "
            f"sees none: {no_gpu_cause()}; set train.device=cpu to train on the CPU on purpose"
        )
    if env.get("NVIDIA_VISIBLE_DEVICES", "").strip() == "all":
        log.warning(
            "NVIDIA_VISIBLE_DEVICES=all (the base image sets it in every container, so it does "
            "not say a GPU was given) and torch sees no GPU: training on the CPU "
            "(train.device=cuda makes a missing GPU an error; cpu silences this)"
        )
    return torch.device("cpu")


#: Variables by which a scheduler gives a process GPUs → the values that mean "none". Slurm sets
#: CUDA_VISIBLE_DEVICES and the SLURM_*GPUS* ones for a job with a GPU GRES; the NVIDIA device
#: plugin of Kubernetes sets NVIDIA_VISIBLE_DEVICES to the GPUs it allocated to the container.
#: NVIDIA_VISIBLE_DEVICES=all is no evidence: the pytorch/pytorch base image sets it in every
#: container, CPU pods included (ours set `void` there).
GPU_VARIABLES: dict[str, frozenset[str]] = {
    "CUDA_VISIBLE_DEVICES": frozenset({"", "-1", "NoDevFiles"}),
    "SLURM_STEP_GPUS": frozenset({""}),
    "SLURM_JOB_GPUS": frozenset({""}),
    "SLURM_GPUS_ON_NODE": frozenset({"", "0"}),
    "NVIDIA_VISIBLE_DEVICES": frozenset({"", "none", "void", "all"}),
}


def gpus_given(env: Mapping[str, str] | None = None) -> str | None:
    """The variable that says a scheduler gave this process GPUs, as `NAME=value` (the first of
    `GPU_VARIABLES` with a value other than its "none"s); None when no variable says so."""
    env = os.environ if env is None else env
    for var, none in GPU_VARIABLES.items():
        value = env.get(var)
        if value is not None and value.strip() not in none:
            return f"{var}={value}"
    return None


#: The lowest NVIDIA Linux driver branch that runs builds of a CUDA major version (CUDA minor
#: version compatibility): NVIDIA, "CUDA Compatibility", Minor Version Compatibility, Table 1
#: (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html). Our torch routes:
#: the default torch 2.14.1 is CUDA 13.0 (driver >= 580), the V100 route's torch 2.10.0 and the
#: image are CUDA 12.8 (driver >= 525).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
#: Where the loaded NVIDIA kernel module states its version; device nodes are /dev/nvidia<N>.
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
DEVICE_DIR = Path("/dev")


def driver_version(path: Path | None = None) -> str | None:
    """The loaded NVIDIA driver's version (e.g. "535.104.05") from /proc/driver/nvidia/version;
    None when no NVIDIA kernel module is loaded or visible."""
    try:
        text = (path or DRIVER_VERSION_FILE).read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"NVRM version:.*?\s(\d{3,}\.\d+(?:\.\d+)?)\s", text)
    return found.group(1) if found else None


def no_gpu_cause() -> str:
    """Why torch sees no GPU, most specific first: a CPU-only build; a driver older than the
    build's CUDA needs; no NVIDIA device node; else torch's own error text."""
    cuda = torch.version.cuda
    if cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build (install a CUDA build: "
            "`make install`, or run the container image)"
        )
    driver, need = driver_version(), MIN_DRIVER.get(int(cuda.split(".")[0]))
    if driver and need and int(driver.split(".")[0]) < need:
        older = (
            "; or `make install TORCH=v100` (torch 2.10.0, CUDA 12.8, driver >= 525)"
            if int(driver.split(".")[0]) >= MIN_DRIVER[12] and need > MIN_DRIVER[12]
            else ""
        )
        return (
            f"the NVIDIA driver {driver} is older than torch's CUDA {cuda} needs (driver >= "
            f"{need}): upgrade the node's driver{older}"
        )
    if not any(DEVICE_DIR.glob("nvidia[0-9]*")):
        loaded = f"driver {driver} loaded" if driver else "no NVIDIA driver loaded"
        return (
            f"no NVIDIA device node (/dev/nvidia0 …) in this job or container, {loaded}: the "
            "GPU was not mounted (no NVIDIA container runtime or runtimeClassName) or the node "
            "has no NVIDIA driver"
        )
    return f"torch's CUDA {cuda} says: {torch_cuda_error()}"


def torch_cuda_error() -> str:
    """The first line of the error torch's CUDA initialisation raises, or a placeholder."""
    try:
        torch.cuda.init()
    except Exception as e:  # whatever torch raises is the text we want
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "no error, yet no device is available"


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
        if name == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
            raise ConfigError(
                f"train.precision=bf16 needs compute capability 8.0 or newer; "
                f"{gpu_name(device)} has {cuda_capability(device)} (no bf16 convolutions in "
                "cuDNN there): use train.precision=auto (fp16 with a GradScaler) or fp32"
            )
        return name
    if device.type == "cuda":
        return "bf16" if cuda_has_bf16(device) else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def cuda_capability(device: torch.device) -> str:
    """The GPU's compute capability as "major.minor" (7.0 on a V100)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def gpu_name(device: torch.device) -> str:
    return str(torch.cuda.get_device_name(device))


def cuda_has_bf16(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) or newer. Not
    `torch.cuda.is_bf16_supported()`, which also counts emulation and says True on a V100,
    where cuDNN has no bf16 convolutions."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def require_kernels(device: torch.device) -> None:
    """Stop at the start of a CUDA job when this torch build has no kernels for its GPU (e.g. a
    V100, sm_70, under a CUDA 12.8+ build), rather than with "no kernel image" deep in training."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    built = torch.cuda.get_arch_list()
    if not runs_on(built, major, minor):
        arch = f"sm_{major}{minor}"
        raise ConfigError(
            f"torch {torch.__version__} has no kernels for {gpu_name(device)} ({arch}); this "
            f"build has {' '.join(built) or 'none'}. Install a build with {arch} (for V100s: "
            "`make install TORCH=v100`, torch 2.10.0 / torchvision 0.25.0 from PyPI, the CUDA "
            "12.8 build) or run the container image, which has it"
        )


def runs_on(built: list[str], major: int, minor: int) -> bool:
    """Whether a build with these architectures (`torch.cuda.get_arch_list()`) runs on a GPU of
    compute capability major.minor: a cubin of the same major and an older or equal minor
    (sm_80 runs on 8.6), or PTX of an older or equal capability (compute_90 JIT-compiles)."""
    for arch in built:
        kind, _, number = arch.partition("_")
        if not number.isdigit():  # sm_90a and the like run only on their own GPU
            continue
        have = (int(number[:-1]), int(number[-1]))
        if kind == "sm" and have[0] == major and have[1] <= minor:
            return True
        if kind == "compute" and have <= (major, minor):
            return True
    return False


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The autocast context for a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
