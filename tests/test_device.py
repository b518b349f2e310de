"""Device and precision choice: bf16 only where it computes correctly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torchvision

from pipeline.core.errors import ConfigError
from pipeline.ml import device
from pipeline.ml.device import (
    Runtime,
    available_cpus,
    cgroup_cpu_quota,
    compiler_for,
    cpu_has_bf16,
    driver_version,
    gpus_given,
    pick_device,
    pick_precision,
    require_compiler,
    require_kernels,
    runs_on,
)
from pipeline.ml.inference import input_shape, probe_precision


def test_pick_device_and_precision() -> None:
    cpu = pick_device("cpu")
    assert cpu.type == "cpu"
    assert pick_precision("fp32", cpu) == "fp32"
    assert pick_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        pick_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="not one of"):
        pick_precision("fp8", cpu)
    with pytest.raises(ConfigError, match="not one of"):
        pick_device("tpu")


def test_gpus_given_reads_the_schedulers_variables() -> None:
    """Slurm's and the NVIDIA device plugin's variables count; the base image's
    NVIDIA_VISIBLE_DEVICES=all and the CPU pods' `void` do not."""
    given = {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_STEP_GPUS": "2",
        "SLURM_JOB_GPUS": "0",
        "SLURM_GPUS_ON_NODE": "1",
        "NVIDIA_VISIBLE_DEVICES": "GPU-5f1c2d3e",
    }
    for var, value in given.items():
        assert gpus_given({var: value}) == f"{var}={value}"
    nothing = [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
               {"SLURM_GPUS_ON_NODE": "0"}, {"NVIDIA_VISIBLE_DEVICES": "all"},
               {"NVIDIA_VISIBLE_DEVICES": "void"}, {"NVIDIA_VISIBLE_DEVICES": "none"}]  # fmt: skip
    for env in nothing:
        assert gpus_given(env) is None, env


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Faked: torch sees no GPU (torch.cuda.is_available), the driver's version file and the
    device folder (tmp_path/driver-version, tmp_path/dev: empty, no driver loaded). Returns
    tmp_path."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "DRIVER_VERSION_FILE", tmp_path / "driver-version")
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(device, "DEVICE_DIR", tmp_path / "dev")
    return tmp_path


def driver_file(folder: Path, version: str) -> None:
    """/proc/driver/nvidia/version as the NVIDIA open kernel module writes it."""
    (folder / "driver-version").write_text(
        f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
        "(dvs-builder@U16-I2-C03-12-4)  Thu Jul 10 18:20:56 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1)\n"
    )


@pytest.mark.parametrize(
    ("cuda", "driver", "nodes", "cause"),
    [
        (None, None, False, "is a CPU-only build"),
        ("13.0", "535.104.05", True, "the NVIDIA driver 535.104.05 is older than torch's CUDA "
         "13.0 needs (driver >= 580): upgrade the node's driver; or `make install TORCH=v100` "
         "(torch 2.10.0, CUDA 12.8, driver >= 525)"),
        ("12.8", "470.82.01", True, "the NVIDIA driver 470.82.01 is older than torch's CUDA 12.8 "
         "needs (driver >= 525): upgrade the node's driver;"),
        ("13.0", None, False, "no NVIDIA device node (/dev/nvidia0 …) in this job or container, "
         "no NVIDIA driver loaded"),
        ("13.0", "580.65.06", True, "torch's CUDA 13.0 says: Found no NVIDIA driver on your "
         "system. Please check that you;"),
    ],
)  # fmt: skip
def test_a_gpu_given_but_not_seen_fails_in_one_line_naming_the_cause(
    no_gpu: Path,
    monkeypatch: pytest.MonkeyPatch,
    cuda: str | None,
    driver: str | None,
    nodes: bool,
    cause: str,
) -> None:
    """train.device=auto in a Slurm job with a GPU GRES (CUDA_VISIBLE_DEVICES=3) where torch
    sees none: an error, not hours of training on the CPU."""
    monkeypatch.setattr(torch.version, "cuda", cuda)
    if driver:
        driver_file(no_gpu, driver)
    if nodes:
        (no_gpu / "dev" / "nvidia0").touch()

    def init() -> None:
        raise RuntimeError("Found no NVIDIA driver on your system. Please check that you\nhave")

    monkeypatch.setattr(torch.cuda, "init", init)
    with pytest.raises(ConfigError) as info:
        pick_device("auto", {"CUDA_VISIBLE_DEVICES": "3"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"CUDA_VISIBLE_DEVICES=3 says the scheduler gave this job a GPU, but torch "
        f"{torch.__version__} sees none: "
    )
    assert cause in message
    assert message.endswith("; set train.device=cpu to train on the CPU on purpose")
    with pytest.raises(ConfigError, match=re.escape(cause)) as info:
        pick_device("cuda", {})
    assert str(info.value).startswith("train.device=cuda but torch ")


def test_cpu_is_taken_as_is_and_auto_without_a_gpu_given_uses_the_cpu(
    no_gpu: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """train.device=cpu works with any GPU given; auto falls back to the CPU only where no
    scheduler gave a GPU (the base image's NVIDIA_VISIBLE_DEVICES=all is no GPU given: a
    warning, as a GPU pod whose device plugin left it so may be one)."""
    env = {"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "0", "NVIDIA_VISIBLE_DEVICES": "all"}
    with caplog.at_level("WARNING", logger="pipeline.ml.device"):
        assert pick_device("cpu", env).type == "cpu"
        assert pick_device("auto", {"NVIDIA_VISIBLE_DEVICES": "void"}).type == "cpu"
        assert pick_device("auto", {}).type == "cpu"
        assert caplog.text == ""
        assert pick_device("auto", {"NVIDIA_VISIBLE_DEVICES": "all"}).type == "cpu"
    assert "NVIDIA_VISIBLE_DEVICES=all" in caplog.text and "train.device=cuda" in caplog.text


def test_driver_version_reads_both_kernel_module_formats(tmp_path: Path) -> None:
    driver_file(tmp_path, "570.86.15")
    assert driver_version(tmp_path / "driver-version") == "570.86.15"
    (tmp_path / "proprietary").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    )
    assert driver_version(tmp_path / "proprietary") == "535.104.05"
    assert driver_version(tmp_path / "missing") is None


def test_input_shape_after_centre_crop() -> None:
    assert input_shape([512, 384], None) == (512, 384)
    assert input_shape([512, 384], [0.586, 0.521]) == (300, 200)


@pytest.mark.parametrize("shape", [(19, 13), (38, 25), (64, 48)])
def test_probed_precision_agrees_with_fp32(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=18).to(memory_format=torch.channels_last)
    rt = probe_precision(model, shape, Runtime(torch.device("cpu"), "bf16", 2))
    if rt.precision == "fp32":
        return  # fell back: nothing bf16 left to check
    model.eval()
    for seed in range(3):
        x = torch.randn(16, 3, *shape, generator=torch.Generator().manual_seed(100 + seed))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x).float()
        assert torch.isfinite(low).all()
        assert float((low - ref).abs().max() / ref.abs().max()) < 0.05


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU runs bf16 without native support")
def test_native_bf16_is_kept_for_the_usual_sizes() -> None:
    model = torchvision.models.resnet18(num_classes=18).to(memory_format=torch.channels_last)
    rt = probe_precision(model, (64, 48), Runtime(torch.device("cpu"), "bf16", 2))
    assert rt.precision == "bf16"


def test_threads_follow_the_containers_cpu_limit(tmp_path: Path) -> None:
    """In a pod, sched_getaffinity sees every core of the node; the CPU limit (downward API or
    cgroup quota) caps the threads, rounded up to whole CPUs."""
    cores = len(os.sched_getaffinity(0))
    none = tmp_path / "no-cgroup"
    assert available_cpus({}, none) == cores
    assert available_cpus({"MASKSUITE_CPU_LIMIT": "1"}, none) == 1
    assert available_cpus({"MASKSUITE_CPU_LIMIT": "0.5"}, none) == 1
    assert available_cpus({"MASKSUITE_CPU_LIMIT": "512"}, none) == cores  # never above the cores
    assert available_cpus({"MASKSUITE_CPU_LIMIT": "lots"}, none) == cores  # warned, ignored

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    (v2 / "cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_quota(v2) == 0.5 and available_cpus({}, v2) == 1

    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1.parent) is None
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    assert available_cpus({"MASKSUITE_CPU_LIMIT": "8"}, v1.parent) == 1  # the smaller limit


def test_threads_follow_the_slurm_jobs_cpus_and_never_exceed_the_cores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where Slurm binds nothing, affinity sees the whole node: SLURM_CPUS_PER_TASK caps the
    threads. Where the step got fewer cores than the job (22.05's srun without
    SRUN_CPUS_PER_TASK), the threads follow the cores and the log says why."""
    cores = len(os.sched_getaffinity(0))
    none = tmp_path / "no-cgroup"
    assert available_cpus({"SLURM_CPUS_PER_TASK": "1"}, none) == 1
    with caplog.at_level("WARNING", logger="pipeline.ml.device"):
        assert available_cpus({"SLURM_CPUS_PER_TASK": str(cores)}, none) == cores
        assert caplog.text == ""
        assert available_cpus({"SLURM_CPUS_PER_TASK": str(cores + 6)}, none) == cores
    assert (
        f"SLURM_CPUS_PER_TASK={cores + 6} but this process may run on {cores} core" in caplog.text
    )
    assert "SRUN_CPUS_PER_TASK" in caplog.text


def test_compile_needs_a_compiler_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = {"PATH": str(tmp_path)}
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiler_for(cpu, empty) is None and compiler_for(cuda, empty) is None
    gcc = tmp_path / "gcc"
    gcc.write_text("#!/bin/sh\n")
    gcc.chmod(0o755)
    assert compiler_for(cuda, empty) == "gcc"  # Triton's launchers: a C compiler
    assert compiler_for(cpu, empty) is None  # inductor's CPU kernels: a C++ compiler
    assert compiler_for(cpu, {**empty, "CXX": "gcc -x c++"}) == "gcc -x c++"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"train.compile=true needs a C\+\+ compiler"):
        require_compiler(cpu)
    require_compiler(cuda)  # gcc is there


@pytest.mark.parametrize(
    ("capability", "gpu", "auto"),
    [((7, 0), "Tesla V100-SXM2-16GB", "fp16"), ((8, 0), "NVIDIA A100", "bf16"),
     ((9, 0), "NVIDIA H100", "bf16")],
)  # fmt: skip
def test_cuda_precision_follows_the_compute_capability(
    capability: tuple[int, int], gpu: str, auto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faked device properties: on a V100 (7.0) torch.cuda.is_bf16_supported() says True (it
    counts emulation), yet cuDNN has no bf16 convolutions: auto must pick fp16 + GradScaler."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda")
    assert pick_precision("auto", cuda) == auto
    assert pick_precision("fp16", cuda) == "fp16"
    assert pick_precision("fp32", cuda) == "fp32"
    if auto == "fp16":
        with pytest.raises(ConfigError, match=r"bf16 needs compute capability 8.0.*V100.*7\.0"):
            pick_precision("bf16", cuda)
    else:
        assert pick_precision("bf16", cuda) == "bf16"


def test_a_torch_build_without_the_gpus_kernels_stops_the_job_at_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cu130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.14.1+cu130
    cu128 = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch 2.10.0
    assert not runs_on(cu130, 7, 0) and runs_on(cu128, 7, 0)
    assert runs_on(cu130, 8, 9)  # sm_86 cubins run on 8.9
    assert runs_on(["sm_80", "compute_80"], 9, 0) and not runs_on(["sm_80"], 9, 0)
    assert not runs_on(["sm_90a"], 9, 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: cu130)
    with pytest.raises(ConfigError, match=r"no kernels for Tesla V100 \(sm_70\).*sm_75 sm_80"):
        require_kernels(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: cu128)
    require_kernels(torch.device("cuda"))
    require_kernels(torch.device("cpu"))  # nothing to check
