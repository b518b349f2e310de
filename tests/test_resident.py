"""Resident images: placement, staged batches, batch decoding, and the compile option.

The CUDA placements cannot run here (no GPU); the code they use — staging buffers, nvJPEG's
batch call with its per-image fallback — is the same code run on the CPU below.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image
from torchvision.io import decode_jpeg

from pipeline.core.errors import ConfigError, StageFailed
from pipeline.ml.augment import BatchAugment
from pipeline.ml.device import Runtime
from pipeline.ml.images import decode_reduced_jpeg, decode_resized, load_images
from pipeline.ml.inference import for_inference, predict_probs
from pipeline.ml.losses import build_loss
from pipeline.ml.models import build_model
from pipeline.ml.resident import (
    ResidentImages,
    decode_batch,
    image_bytes,
    load_resident,
    plan_placement,
)
from pipeline.run.state import read_index, run_store
from pipeline.stages.prepare import prepare
from pipeline.stages.train import train_one_epoch

MakeCfg = Callable[..., DictConfig]
CPU = torch.device("cpu")


def encoded(kind: str, seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, format=kind)
    return sink.getvalue()


def test_image_bytes_and_cpu_placement() -> None:
    assert image_bytes(18_900, (512, 384)) == 18_900 * 3 * 512 * 384
    assert plan_placement(10**12, CPU, 0.5) == "host"


@pytest.mark.parametrize("budget", [-0.1, 1.5])
def test_a_budget_outside_zero_one_is_refused(budget: float) -> None:
    with pytest.raises(ConfigError, match=r"gpu_memory_budget must be a fraction in \[0, 1\]"):
        plan_placement(1, CPU, budget)


def test_staged_batches_equal_a_gather_and_survive_buffer_reuse() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 6), dtype=torch.uint8)
    resident = ResidentImages(images, CPU, staged=True)
    assert resident.staged and resident.placement == "host"
    orders = [torch.randperm(50)[:16], torch.arange(10), torch.randperm(50)[:24], torch.tensor([3])]
    batches = [resident.batch(rows) for rows in orders]  # two buffers, four batches, sizes grow
    for rows, batch in zip(orders, batches, strict=True):
        assert torch.equal(batch, images[rows])


def test_in_order_slices_cover_every_image_once() -> None:
    images = torch.randint(0, 256, (23, 3, 4, 4), dtype=torch.uint8)
    for staged in (False, True):
        parts = list(ResidentImages(images, CPU, staged=staged).slices(8))
        assert [len(p) for p in parts] == [8, 8, 7]
        assert torch.equal(torch.cat(parts), images)


def test_decode_batch_matches_the_cpu_decoder_and_falls_back_for_png() -> None:
    jpegs = [smooth_jpeg(size) for size in ((40, 30), (48, 36), (80, 60))]
    together = decode_batch(jpegs, (20, 15), CPU)
    assert together.shape == (3, 3, 20, 15) and together.dtype == torch.uint8
    for blob, img in zip(jpegs, together, strict=True):
        # nvJPEG decodes in full; the CPU decoder at a reduced DCT scale: within ~1/255 mean.
        cpu = decode_resized(blob, (20, 15))
        assert (img.float() - cpu.float()).abs().mean() < 4
    mixed = [jpegs[0], encoded("PNG", 9), jpegs[1]]  # nvJPEG rejects the batch: one by one
    one_by_one = decode_batch(mixed, (20, 15), CPU)
    assert torch.equal(one_by_one[1], decode_resized(mixed[1], (20, 15)))
    assert torch.equal(one_by_one[2], together[1])


def smooth_jpeg(size: tuple[int, int], orientation: int = 1) -> bytes:
    """A photo-like JPEG (smooth gradients, as faces are) with an EXIF orientation."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    pixels = np.stack([xx * 255 // size[1], yy * 255 // size[0], (xx + yy) % 256], -1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    sink = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(sink, format="JPEG", quality=95, exif=exif)
    return sink.getvalue()


def test_reduced_jpeg_decoding_matches_a_full_decode() -> None:
    blob = smooth_jpeg((512, 384))
    reduced = decode_reduced_jpeg(blob, (128, 96))
    assert reduced is not None and reduced.shape == (3, 128, 96)  # a quarter scale, exactly
    full = torch.from_numpy(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    full = torch.nn.functional.interpolate(
        full.permute(2, 0, 1)[None].float(), size=(128, 96), mode="area"
    )[0]
    assert (decode_resized(blob, (128, 96)).float() - full).abs().mean() < 2
    assert decode_reduced_jpeg(blob, (300, 200)) is None  # no reduction keeps >= 300x200
    assert decode_reduced_jpeg(encoded("PNG", 1), (10, 10)) is None


def test_reduced_jpeg_decoding_applies_exif_rotation() -> None:
    blob = smooth_jpeg((384, 512), orientation=6)  # stored landscape, shown portrait
    img = decode_resized(blob, (128, 96))
    assert img.shape == (3, 128, 96)
    reduced = decode_reduced_jpeg(blob, (128, 96))
    assert reduced is not None and reduced.shape[-2:] == (128, 96)


def test_decode_batch_leaves_exif_rotated_jpegs_to_the_cpu_decoder() -> None:
    """nvJPEG ignores EXIF: a rotated photo must come out upright, as the CPU path makes it."""
    rotated = smooth_jpeg((60, 80), orientation=6)  # stored landscape, shown portrait
    upright = smooth_jpeg((80, 60))
    batch = decode_batch([upright, rotated], (40, 30), CPU)
    expected = decode_resized(rotated, (40, 30))
    assert (batch[1].float() - expected.float()).abs().mean() < 2
    stored_way = decode_jpeg(torch.frombuffer(bytearray(rotated), dtype=torch.uint8))
    assert stored_way.shape[-2:] == (60, 80)  # what an EXIF-blind decode would have resized


def test_training_from_staged_images_equals_training_from_a_tensor() -> None:
    images = torch.randint(0, 256, (24, 3, 32, 24), dtype=torch.uint8)
    targets = torch.randint(0, 18, (24,))
    cfg = DictConfig({"balanced_sampling": False, "batch_size": 8, "center_crop": None})
    losses, states = [], []
    for source in (images, ResidentImages(images, CPU, staged=True)):
        torch.manual_seed(0)
        model = build_model(DictConfig({"arch": "resnet18", "weights": None, "freeze": []}), 18)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses.append(
            train_one_epoch(
                model, optimizer, source, targets,
                rt=Runtime(CPU, "fp32", 2), train_cfg=cfg, num_classes=18,
                augment=BatchAugment(), loss_fn=build_loss({"ce": 1.0}, num_classes=18),
                generator=torch.Generator().manual_seed(0),
            )
        )  # fmt: skip
        states.append(model.state_dict())
        probs = predict_probs(
            model, source, device=CPU, precision="fp32", batch_size=7, tta_flip=True
        )
        assert probs.shape == (24, 18) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert losses[0] == pytest.approx(losses[1])
    assert torch.equal(states[0]["fc.weight"], states[1]["fc.weight"])


def test_a_diverging_epoch_stops_with_a_clear_message() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 24), dtype=torch.uint8)
    model = build_model(DictConfig({"arch": "resnet18", "weights": None, "freeze": []}), 18)
    cfg = DictConfig({"balanced_sampling": False, "batch_size": 8, "center_crop": None})
    with pytest.raises(StageFailed, match=r"training loss became nan.*train.precision=fp32"):
        train_one_epoch(
            model, torch.optim.SGD(model.parameters(), lr=0.1), images, torch.zeros(16).long(),
            rt=Runtime(CPU, "fp32", 2), train_cfg=cfg, num_classes=18,
            augment=BatchAugment(), loss_fn=lambda logits, soft: logits.sum() * float("nan"),
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip


def test_load_resident_on_cpu_equals_load_images(tiny_dataset: Path, make_cfg: MakeCfg) -> None:
    cfg = make_cfg(tiny_dataset)
    prepare(cfg)
    run = run_store(cfg)
    rows = read_index(run).iloc[::5]
    ids, shards = rows["image_id"].tolist(), rows["shard"].tolist()
    resident = load_resident(run, ids, shards, (32, 24), device=CPU, threads=2, placement="host")
    assert resident.placement == "host"
    assert torch.equal(resident.images, load_images(run, ids, shards, (32, 24), 2))


def test_inference_copy_folds_batch_norm_and_predicts_the_same() -> None:
    torch.manual_seed(0)
    model = build_model(DictConfig({"arch": "resnet18", "weights": None, "freeze": []}), 18)
    model.train()
    model(torch.randn(8, 3, 32, 24))  # move the batch-norm statistics off their defaults
    model.eval()
    fused = for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    x = torch.randn(4, 3, 32, 24)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4, rtol=1e-3)


def test_cuda_placement_follows_the_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision only: the GPU's size is faked (no GPU here) as a 16 GB V100's."""

    class V100:
        total_memory = 16 * 1024**3

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: V100())
    cuda = torch.device("cuda")
    full_set = image_bytes(18_900, (512, 384))  # 11.1 GB: more than half of 16 GB
    assert plan_placement(full_set, cuda, 0.5) == "pinned"
    assert plan_placement(full_set, cuda, 0.8) == "device"
    assert plan_placement(image_bytes(18_900, (256, 192)), cuda, 0.5) == "device"
    assert plan_placement(1, cuda, 0.0) == "pinned"
