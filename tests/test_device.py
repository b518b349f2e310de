"""Device and precision choice: bf16 only where it computes correctly."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pipeline.device import Runtime, cpu_has_bf16, pick_device, pick_precision
from pipeline.errors import ConfigError
from pipeline.predict import input_shape, probe_precision


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
