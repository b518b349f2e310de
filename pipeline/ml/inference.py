"""Inference on batches of images: normalisation, precision probe, the inference-ready model and
class probabilities over resident images (used by the train, predict and infer stages)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.fx.experimental.optimization import fuse

from pipeline.core.errors import ConfigError, StageFailed
from pipeline.ml.device import Runtime, autocast
from pipeline.ml.resident import ResidentImages, as_resident

log = logging.getLogger(__name__)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def crop_center(batch: torch.Tensor, fractions: Sequence[float] | None) -> torch.Tensor:
    """The centre [height, width] fractions of each image of an N×C×H×W batch (None: all)."""
    if fractions is None:
        return batch
    fh, fw = (float(f) for f in fractions)
    if not (0 < fh <= 1 and 0 < fw <= 1):
        raise ConfigError(f"train.center_crop must be two fractions in (0, 1], got {fractions}")
    h, w = batch.shape[-2:]
    ch, cw = max(1, round(h * fh)), max(1, round(w * fw))
    top, left = (h - ch) // 2, (w - cw) // 2
    return batch[..., top : top + ch, left : left + cw]


def to_unit(batch: torch.Tensor, fractions: Sequence[float] | None) -> torch.Tensor:
    """uint8 N×3×H×W → centre-cropped float in [0, 1] (on the batch's device)."""
    return crop_center(batch, fractions).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → ImageNet-normalised, channels_last."""
    x = (x - MEAN.to(x.device)) / STD.to(x.device)
    return x.contiguous(memory_format=torch.channels_last)


def input_shape(image_size: Sequence[int], center_crop: Sequence[float] | None) -> tuple[int, int]:
    """The (H, W) a model sees: `train.image_size` after the optional centre crop."""
    probe = torch.empty(1, 1, int(image_size[0]), int(image_size[1]))
    h, w = crop_center(probe, center_crop).shape[-2:]
    return h, w


def probe_precision(
    model: nn.Module, shape: tuple[int, int], rt: Runtime, *, reps: int = 3, tolerance: float = 0.05
) -> Runtime:
    """Keep CPU bf16 only where it computes correctly for this input shape, else use fp32.

    oneDNN's CPU bf16 kernels (torch 2.14) return NaN or wrong values (10-20% off, or 1e36) for
    some small feature-map sizes, e.g. inputs of 38x25, 32x16 or 19x13, while 64x48 or 128x96
    agree with fp32 to <1%. A few forward passes against fp32 and one backward pass find out.
    """
    if rt.device.type != "cpu" or rt.precision != "bf16":
        return rt
    probe = copy.deepcopy(model).eval()  # must not touch the model's statistics or gradients
    generator = torch.Generator().manual_seed(0)
    sound = True
    for _ in range(reps):
        x = torch.randn(16, 3, *shape, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        with torch.no_grad():
            ref = probe(x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = probe(x).float()
        error = (low - ref).abs().max() / ref.abs().max().clamp_min(1e-6)
        sound = sound and bool(torch.isfinite(low).all()) and float(error) <= tolerance
    if sound:
        probe.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe(x).float().sum().backward()
        sound = all(
            bool(torch.isfinite(p.grad).all()) for p in probe.parameters() if p.grad is not None
        )
    if sound:
        return rt
    log.warning("bf16 is unreliable on this CPU for %s inputs: using fp32 instead", shape)
    return dataclasses.replace(rt, precision="fp32")


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each batch norm folded into the convolution before it
    (torch.fx): the same function, ~1.4x faster on a CPU. Models torch.fx cannot trace are
    returned unchanged, in eval mode."""
    model.eval()
    try:
        fused = fuse(copy.deepcopy(model))
    except Exception as e:  # fx tracing fails on data-dependent control flow
        log.info(
            "batch norm not folded (%s: %s); predicting with the model as is", type(e).__name__, e
        )
        return model
    return fused.to(memory_format=torch.channels_last).eval()


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor | ResidentImages,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    tta_flip: bool,
    center_crop: Sequence[float] | None = None,
) -> np.ndarray:
    """Softmax probabilities (N×C float32) of uint8 images; with `tta_flip` the mirror image is
    scored in the same forward pass and the two are averaged."""
    model.eval()
    out = []
    for batch in as_resident(images, device).slices(batch_size):
        x = normalize(to_unit(batch, center_crop))
        n = len(x)
        if tta_flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(device, precision):
            probs = model(x).float().softmax(dim=1)
        if tta_flip:
            probs = (probs[:n] + probs[n:]) / 2
        out.append(probs)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    # Checked and copied once at the end: a CUDA device never waits for the host between batches.
    probs = torch.cat(out)
    if not torch.isfinite(probs).all():
        raise StageFailed(
            f"non-finite predictions with precision {precision} for inputs of "
            f"{tuple(x.shape[-2:])}: set train.precision=fp32"
        )
    return probs.cpu().numpy()


def predict_for_spec(
    model: nn.Module, images: torch.Tensor | ResidentImages, rt: Runtime, spec: DictConfig
) -> np.ndarray:
    """`predict_probs` with a model's own settings: batch size, test-time flip, centre crop."""
    return predict_probs(
        model,
        images,
        device=rt.device,
        precision=rt.precision,
        batch_size=int(spec.train.eval_batch_size),
        tta_flip=bool(spec.train.tta_flip),
        center_crop=spec.train.center_crop,
    )
