"""Training augmentations on whole batches, on the training device.

Images are floats in [0, 1] shaped N×3×H×W; targets are class indices (N) that become soft targets
(N×num_classes, rows summing to 1) so that label-mixing steps can mix them. Every random choice is
made per image with tensor ops (no loop over images) unless a docstring says "per batch", and all
draws come from an optional `torch.Generator` so runs repeat exactly. The generator may live on the
CPU or on the images' device; a CPU generator with images elsewhere seeds a generator on their
device, so large draws (erasing noise) never cross devices.

`BatchAugment` is the recipe the trainer calls; each step is also a public function.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from pipeline.core.errors import ConfigError

#: ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)
#: Default range of the vertical CutMix cut, as fractions of the whole photo's height (see
#: `vertical_cutmix`): above the mask line. On the generated faces a mask's highest pixel (its ear
#: loops, the nose bridge of a worn mask) lies at 0.328 H at the highest at 64x48 (0.336 H at
#: 128x96; tests/test_augment.py measures it); cut rows are whole rows below 0.33 H, so every cut
#: leaves all of the mask's evidence to the face that gives the bottom and the mask label. A cut
#: lower down (the 0.3-0.7 H drawn before) shows the top face's own mask or nose above the
#: partner's mask label: about a third of cuts were mislabelled.
CUT_RANGE = (0.2, 0.33)
ERASE_FILLS = ("noise", "mean")


# --- validation -------------------------------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    p = _number(name, value)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
    return p


def _strength(name: str, value: Any) -> float:
    s = _number(name, value)
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"{name} must be in [0, 1) (0 turns it off), got {value!r}")
    return s


def _cut_range(name: str, value: Any) -> tuple[float, float]:
    """Two fractions 0 < lo <= hi < 1 of the photo's height."""
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{name} must be [lo, hi], fractions of the photo height, got {value!r}")
    lo, hi = (_number(name, v) for v in value)
    if not 0.0 < lo <= hi < 1.0:
        raise ConfigError(f"{name} must satisfy 0 < lo <= hi < 1, got {list(value)!r}")
    return lo, hi


def crop_rows(photo_range: tuple[float, float], crop_height: float) -> tuple[float, float] | None:
    """A range of rows given in fractions of the whole photo's height, in fractions of a centre
    crop of `crop_height` of it (1.0: the whole photo); None when the range lies above the crop."""
    top = (1.0 - crop_height) / 2.0
    lo, hi = ((r - top) / crop_height for r in photo_range)
    if hi <= 0.0:
        return None
    return max(lo, 0.0), min(hi, 1.0)


def _alpha(name: str, value: Any) -> float:
    a = _number(name, value)
    if a < 0.0:
        raise ConfigError(f"{name} must be >= 0 (0 turns MixUp off), got {value!r}")
    return a


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float N×C×H×W tensor, got {images.dtype} {tuple(images.shape)}"
        )


# --- random draws -----------------------------------------------------------------------------


def _generator_on(
    device: torch.device, generator: torch.Generator | None
) -> torch.Generator | None:
    """A generator that draws on `device`: `generator` itself, or a new one seeded from it."""
    if generator is None or generator.device == device:
        return generator
    return torch.Generator(device=device).manual_seed(_host_seed(generator))


def _host_seed(generator: torch.Generator | None) -> int:
    """A 62-bit seed drawn from `generator` (the default CPU generator when None)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (), generator=generator, device=device))


def _host_uniform(generator: torch.Generator | None) -> float:
    """One number uniform in [0, 1) for a per-batch decision (syncs only with a GPU generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return float(torch.rand((), generator=generator, device=device))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    """True with probability p; p of 0 or 1 draws nothing."""
    if p <= 0.0:
        return False
    return p >= 1.0 or _host_uniform(generator) < p


def _uniform(
    n: int, low: float, high: float, device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """n float32 numbers uniform in [low, high) on `device`."""
    u = torch.rand(n, generator=generator, device=device)
    return low + (high - low) * u


def _randperm(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.randperm(n, generator=generator, device=device)


# --- targets ----------------------------------------------------------------------------------


def one_hot(targets: Tensor, num_classes: int) -> Tensor:
    """Class indices (N, integer) → float32 one-hot rows (N×num_classes) on the same device."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if targets.ndim != 1 or targets.is_floating_point():
        raise ValueError(f"targets must be N integer class indices, got {targets.dtype}")
    out = torch.zeros(len(targets), num_classes, dtype=torch.float32, device=targets.device)
    return out.scatter_(1, targets.long().unsqueeze(1), 1.0)


def soft_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Class indices → one-hot rows; soft rows (N×num_classes float) pass through as float32."""
    if targets.ndim == 2 and targets.is_floating_point():
        if targets.shape[1] != num_classes:
            raise ValueError(f"soft targets have {targets.shape[1]} classes, not {num_classes}")
        return targets.float()
    return one_hot(targets, num_classes)


# --- per-image steps --------------------------------------------------------------------------


def random_hflip(
    images: Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """Flip each image left-right with probability p (independently per image)."""
    p = _probability("hflip p", p)
    if p == 0.0 or len(images) == 0:
        return images
    gen = _generator_on(images.device, generator)
    flip = torch.rand(len(images), generator=gen, device=images.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def _grayscale(images: Tensor) -> Tensor:
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * images + (1 - factor) * other, clamped to [0, 1] (torchvision's `_blend`)."""
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def color_jitter(
    images: Tensor, strength: float, generator: torch.Generator | None = None
) -> Tensor:
    """Per-image brightness, contrast and saturation factors uniform in [1-s, 1+s], applied in
    that order (as torchvision's adjust_* functions); the result stays in [0, 1]. RGB images only.
    """
    s = _strength("color_jitter", strength)
    if s == 0.0 or len(images) == 0:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"color_jitter needs RGB images, got {images.shape[1]} channels")
    n, device = len(images), images.device
    gen = _generator_on(device, generator)
    factors = _uniform(3 * n, 1.0 - s, 1.0 + s, device, gen).to(images.dtype).view(3, n, 1, 1, 1)
    out = _blend(images, torch.zeros_like(images[:, :1]), factors[0])
    out = _blend(out, _grayscale(out).mean(dim=(1, 2, 3), keepdim=True), factors[1])
    return _blend(out, _grayscale(out), factors[2])


def random_erasing(
    images: Tensor,
    p: float,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.02, 0.2),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: str = "noise",
) -> Tensor:
    """With probability p per image, replace one random rectangle of it.

    The rectangle covers a fraction of the image uniform in `scale`, with height/width ratio
    log-uniform in `ratio` (clamped to fit the image, where torchvision retries instead).
    `fill`: "noise" (uniform in [0, 1] per pixel and channel) or "mean" (the image's channel means).
    """
    p = _probability("random_erasing", p)
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError(f"random_erasing scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"random_erasing ratio must satisfy 0 < lo <= hi, got {ratio}")
    if fill not in ERASE_FILLS:
        raise ConfigError(f"random_erasing fill must be one of {ERASE_FILLS}, got {fill!r}")
    if p == 0.0 or len(images) == 0:
        return images
    n, _, height, width = images.shape
    device = images.device
    gen = _generator_on(device, generator)
    chosen = torch.rand(n, generator=gen, device=device) < p
    area = _uniform(n, scale[0], scale[1], device, gen) * (height * width)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), device, gen)
    h = torch.sqrt(area * torch.exp(log_ratio)).round().clamp(1, height)
    w = torch.sqrt(area / torch.exp(log_ratio)).round().clamp(1, width)
    top = (torch.rand(n, generator=gen, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=gen, device=device) * (width - w + 1)).floor()
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + h).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + w).view(n, 1, 1))
        & chosen.view(n, 1, 1)
    )
    if fill == "noise":
        values = torch.rand(images.shape, generator=gen, device=device).to(images.dtype)
    else:
        values = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    return torch.where(inside.unsqueeze(1), values, images)


# --- label-mixing steps (per batch) -----------------------------------------------------------


#: Tasks whose evidence is spread over the face: their label is mixed by area under CutMix.
AREA_TASKS = ("gender", "age")


def vertical_cutmix_with(
    images: Tensor, soft_targets: Tensor, partner: Tensor, cut: Tensor, task: str | None = None
) -> tuple[Tensor, Tensor]:
    """Deterministic core of `vertical_cutmix`: image i keeps rows [0, cut[i]) and takes rows
    [cut[i], H) from image partner[i]. With w = cut[i]/H, the label follows where each task's
    evidence lies:

    - gender and age (eyes, hair, skin: all over the face) mix by area, w t_i + (1 - w) t_p;
    - the mask (nose and mouth, below the cut, which never rises above 0.3 H) is the partner's,
      wholly: task "mask" takes t_p;
    - the 18 classes (task "all", mask x gender x age) take the partner's mask marginal times
      the area mix of the gender-age marginals: P(m, ga) = P_p(m) (w P_i(ga) + (1 - w) P_p(ga)).

    `task` None (a generic classifier) mixes by area.
    """
    n, height = len(images), images.shape[2]
    cut = cut.to(images.device).view(n)
    rows = torch.arange(height, device=images.device).view(1, 1, height, 1)
    top = rows < cut.view(n, 1, 1, 1)
    mixed = torch.where(top, images, images[partner.to(images.device)])
    weight = (cut.float() / height).view(n, 1).to(soft_targets.device)
    other = soft_targets[partner.to(soft_targets.device)]
    if task == "mask":
        return mixed, other.clone()
    if task == "all":
        if soft_targets.shape[1] != 18:
            raise ValueError(f"task 'all' has 18 classes, got {soft_targets.shape[1]}")
        mine, theirs = soft_targets.view(n, 3, 6), other.view(n, 3, 6)
        mask = theirs.sum(dim=2, keepdim=True)  # N x 3 x 1, the partner's
        gender_age = weight.view(n, 1, 1) * mine.sum(dim=1, keepdim=True) + (
            1.0 - weight.view(n, 1, 1)
        ) * theirs.sum(dim=1, keepdim=True)  # N x 1 x 6
        return mixed, (mask * gender_age).view(n, 18)
    if task is not None and task not in AREA_TASKS:
        raise ValueError(f"unknown task {task!r}; valid: all, mask, {', '.join(AREA_TASKS)}")
    return mixed, weight * soft_targets + (1.0 - weight) * other


def vertical_cutmix(
    images: Tensor,
    soft_targets: Tensor,
    p: float,
    generator: torch.Generator | None = None,
    task: str | None = None,
    cut_range: tuple[float, float] = CUT_RANGE,
) -> tuple[Tensor, Tensor]:
    """With probability p (per batch), give each image the bottom rows of a partner image (a
    random permutation of the batch); the mask label follows the bottom rows, gender and age mix
    by area (see `vertical_cutmix_with`).

    The cut row is drawn per image, uniform over the integers in [lo H, hi H] of `cut_range`
    (fractions of these images' height; `BatchAugment` converts the configured photo fractions
    for a centre crop). The range must lie above the mask line: the label gives the mask wholly to
    the bottom face, so a cut below the top of a mask (or a bare nose) would show the top face's
    own mask evidence under the partner's label.
    """
    p = _probability("cutmix_vertical", p)
    n, height = len(images), images.shape[2]
    if n < 2 or height < 2 or not _coin(p, generator):
        return images, soft_targets
    lo = max(1, math.ceil(cut_range[0] * height))
    hi = max(lo, min(height - 1, math.floor(cut_range[1] * height)))
    gen = _generator_on(images.device, generator)
    partner = _randperm(n, images.device, gen)
    cut = torch.randint(lo, hi + 1, (n,), generator=gen, device=images.device)
    return vertical_cutmix_with(images, soft_targets, partner, cut, task)


def mixup_with(
    images: Tensor, soft_targets: Tensor, partner: Tensor, lam: float
) -> tuple[Tensor, Tensor]:
    """Deterministic core of `mixup`: lam * x_i + (1 - lam) * x_partner[i], same for targets."""
    mixed = images * lam + images[partner.to(images.device)] * (1.0 - lam)
    other = soft_targets[partner.to(soft_targets.device)]
    return mixed, soft_targets * lam + other * (1.0 - lam)


def mixup(
    images: Tensor, soft_targets: Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """MixUp: lam ~ Beta(alpha, alpha) drawn once per batch, each image mixed with a partner from a
    random permutation, labels mixed by the same lam. alpha = 0 returns the batch unchanged.
    """
    alpha = _alpha("mixup_alpha", alpha)
    if alpha == 0.0 or len(images) < 2:
        return images, soft_targets
    # torch's Beta sampler takes no generator: seed Python's from ours so the draw repeats.
    lam = random.Random(_host_seed(generator)).betavariate(alpha, alpha)
    partner = _randperm(len(images), images.device, _generator_on(images.device, generator))
    return mixup_with(images, soft_targets, partner, lam)


# --- the recipe -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BatchAugment:
    """The training-batch recipe: hflip → colour jitter → random erasing → vertical CutMix or
    MixUp. When both label-mixing steps are on, each batch picks one with equal probability, then
    applies it with its own probability (`cutmix_vertical`, `mixup_prob`).

    hflip: flip half of the images left-right. color_jitter: strength s in [0, 1). random_erasing
    and cutmix_vertical: probabilities (per image, per batch). cutmix_cut_range: where the cut
    falls, fractions [lo, hi] of the whole photo's height (above the mask line). mixup_alpha >= 0
    (0 = off). crop_height: the centre crop's share of the photo height that the batches show (the
    model's train.center_crop; 1.0 for the whole photo): not a config key of `augment`.
    """

    hflip: bool = True
    color_jitter: float = 0.0
    random_erasing: float = 0.0
    cutmix_vertical: float = 0.0
    cutmix_cut_range: tuple[float, float] = CUT_RANGE
    mixup_alpha: float = 0.0
    mixup_prob: float = 1.0
    crop_height: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"hflip must be true or false, got {self.hflip!r}")
        _strength("color_jitter", self.color_jitter)
        _probability("random_erasing", self.random_erasing)
        _probability("cutmix_vertical", self.cutmix_vertical)
        photo_range = _cut_range("cutmix_cut_range", self.cutmix_cut_range)
        object.__setattr__(self, "cutmix_cut_range", photo_range)
        if self.cutmix_vertical > 0.0 and crop_rows(photo_range, self.crop_height) is None:
            raise ConfigError(
                f"cutmix_vertical with cutmix_cut_range {list(photo_range)} of the photo and a "
                f"centre crop of {self.crop_height:g} of its height: the cut range lies above the "
                "crop; lower the range or crop less"
            )
        _alpha("mixup_alpha", self.mixup_alpha)
        _probability("mixup_prob", self.mixup_prob)

    @classmethod
    def from_config(cls, cfg_augment: Mapping[str, Any], crop_height: float = 1.0) -> BatchAugment:
        """Build from a mapping (e.g. the `augment` config group) whose keys are this class's
        fields (but crop_height, given apart); missing keys keep their defaults. Raises
        ConfigError on unknown keys or bad values.
        """
        valid = [f.name for f in fields(cls) if f.name != "crop_height"]
        unknown = sorted(str(k) for k in cfg_augment if k not in valid)
        if unknown:
            raise ConfigError(f"unknown augment keys {unknown}; valid keys: {valid}")
        values = {str(k): v for k, v in cfg_augment.items()}
        if "cutmix_cut_range" in values:
            values["cutmix_cut_range"] = tuple(values["cutmix_cut_range"])
        return cls(**values, crop_height=crop_height)

    def __call__(
        self,
        images: Tensor,
        targets: Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        task: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Augment a batch: float images in [0, 1] (N×3×H×W) and class indices (N) →
        (images of the same shape, dtype and device, float32 soft targets N×num_classes on the
        images' device). Targets may already be soft (N×num_classes float). `task` (all, mask,
        gender, age) decides how vertical CutMix mixes the label; None mixes by area.
        """
        _check_images(images)
        soft = soft_targets(targets, num_classes).to(images.device)
        if len(images) != len(soft):
            raise ValueError(f"{len(images)} images but {len(soft)} targets")
        if self.hflip:
            images = random_hflip(images, 0.5, generator)
        images = color_jitter(images, self.color_jitter, generator)
        images = random_erasing(images, self.random_erasing, generator)
        use_cutmix = self.cutmix_vertical > 0.0
        use_mixup = self.mixup_alpha > 0.0 and self.mixup_prob > 0.0
        if use_cutmix and use_mixup:
            use_cutmix = _coin(0.5, generator)
            use_mixup = not use_cutmix
        if use_cutmix:
            rows = crop_rows(self.cutmix_cut_range, self.crop_height)
            assert rows is not None  # refused in __post_init__
            images, soft = vertical_cutmix(
                images, soft, self.cutmix_vertical, generator, task, cut_range=rows
            )
        elif use_mixup and _coin(self.mixup_prob, generator):
            images, soft = mixup(images, soft, self.mixup_alpha, generator)
        return images, soft
