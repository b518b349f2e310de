"""A synthetic stand-in for the competition data, in the real layout, deterministic by seed.

    python -m pipeline.synth OUT [--people N] [--eval-people M] [--seed S] [--size H W]
                                 [--workers K] [--overwrite]

Writes `train/train.csv`, `train/images/<id>_<gender>_Asian_<age>/{mask1..mask5,incorrect_mask,
normal}.<jpg|jpeg|png>`, `eval/info.csv`, `eval/images/<sha1>.<ext>` and `eval/ground_truth.csv`.
Faces are drawn with PIL: the mask state is plain to see, gender is carried by probabilistic cues
(hair, jaw, brows, lips, beard) and age by noisy cues that grow continuously with age (grey hair,
wrinkles, sagging), so age is the hardest task and 30-59 vs >=60 the hardest boundary.
Every person draws from their own seed, so the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import functools
import hashlib
import io
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from pipeline.core.errors import DataError, PipelineError
from pipeline.domain.labels import AGE_NAMES, GENDER_NAMES, PHOTO_MASK, AgeThresholds, encode

# ---------------------------------------------------------------------------------------------
# The real data's proportions (FACTS.md), used to scale any N.

REAL_PEOPLE = 2700
#: (gender, age group) → people in the real training set (gender 0 male, 1 female).
REAL_CELLS: dict[tuple[int, int], int] = {
    (0, 0): 549,
    (0, 1): 410,
    (0, 2): 83,
    (1, 0): 732,
    (1, 1): 817,
    (1, 2): 109,
}
#: age group → {age: people} at N=2700; the 55..59 tail and the 60s are the real figures,
#: the rest is a plausible shape that sums to the real group totals (1281 / 1227 / 192).
# fmt: off
_YOUNG = (120, 150, 160, 130, 110, 95, 85, 80, 80, 85, 90, 96)
_MIDDLE = (14, 14, 15, 15, 16, 16, 17, 18, 18, 19,
           20, 21, 22, 23, 24, 26, 27, 29, 31, 33,
           36, 40, 46, 54, 60, 100, 123, 106, 159, 85)
# fmt: on
REAL_AGE_HIST: dict[int, dict[int, int]] = {
    0: dict(zip(range(18, 30), _YOUNG, strict=True)),
    1: dict(zip(range(30, 60), _MIDDLE, strict=True)),
    2: {60: 192},
}
STEMS: tuple[str, ...] = tuple(PHOTO_MASK)  # mask1..mask5, incorrect_mask, normal
EXTENSIONS = (".jpg", ".jpeg", ".png")
EXT_WEIGHTS = (0.82, 0.12, 0.06)
RACE = "Asian"
JPEG_QUALITY = 90
MAX_PEOPLE = 200_000

_SPLIT_TRAIN, _SPLIT_EVAL, _KEY_PLAN, _KEY_SHUFFLE = 0, 1, 98, 99


@dataclass(frozen=True)
class PersonPlan:
    """Gender (0 male, 1 female) and age of one planned person."""

    gender: int
    age: int


@dataclass(frozen=True)
class Person:
    """A planned person with identity, split (0 train, 1 eval), index within the split and ext."""

    split: int
    index: int
    pid: str
    gender: int
    age: int
    ext: str

    @property
    def folder(self) -> str:
        """Folder name in the real layout, e.g. `000001_female_Asian_45`."""
        return f"{self.pid}_{GENDER_NAMES[self.gender]}_{RACE}_{self.age}"


# ---------------------------------------------------------------------------------------------
# Planning: who is in the data set (no drawing).


def largest_remainder(weights: Sequence[float], total: int) -> list[int]:
    """Split `total` in proportion to `weights` into integers that sum to `total` exactly."""
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise DataError(f"cannot split {total} by weights {list(weights)}")
    quotas = w * total / w.sum()
    counts = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return [int(c) for c in counts]


def cell_counts(n: int) -> dict[tuple[int, int], int]:
    """People per (gender, age group) for `n` people, scaled from the real counts."""
    counts = largest_remainder(list(REAL_CELLS.values()), n)
    return dict(zip(REAL_CELLS, counts, strict=True))


def age_histogram(group: int, total: int) -> dict[int, int]:
    """People per age within an age group of `total` people, scaled from the real shape."""
    base = REAL_AGE_HIST[group]
    if total == 0:
        return dict.fromkeys(base, 0)
    return dict(zip(base, largest_remainder(list(base.values()), total), strict=True))


def plan_people(n: int, rng: np.random.Generator) -> list[PersonPlan]:
    """Genders and ages of `n` people in the real proportions, in a random order."""
    if not 0 <= n <= MAX_PEOPLE:
        raise DataError(f"number of people must be 0..{MAX_PEOPLE}, got {n}")
    cells = cell_counts(n)
    people: list[PersonPlan] = []
    for group in (0, 1, 2):
        genders = [g for g in (0, 1) for _ in range(cells[(g, group)])]
        hist = age_histogram(group, len(genders))
        ages = rng.permutation([a for a, c in hist.items() for _ in range(c)])
        people += [PersonPlan(g, int(a)) for g, a in zip(genders, ages, strict=True)]
    return [people[i] for i in rng.permutation(len(people))]


def plan_dataset(people: int, eval_people: int, seed: int) -> tuple[list[Person], list[Person]]:
    """Plan the training and evaluation people: distinct sparse ids, genders, ages, extensions."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_PLAN,)))
    train_plan = plan_people(people, rng)
    eval_plan = plan_people(eval_people, rng)
    total = people + eval_people
    id_space = max(total, int(np.ceil(total * 1.55)))
    ids = rng.choice(id_space, size=total, replace=False) + 1
    train_ids = np.sort(ids[:people])
    exts = rng.choice(len(EXTENSIONS), size=total, p=EXT_WEIGHTS)

    def build(split: int, plan: list[PersonPlan], pids: Iterable[int], ex: np.ndarray) -> list:
        return [
            Person(split, i, f"{pid:06d}", p.gender, p.age, EXTENSIONS[int(e)])
            for i, (p, pid, e) in enumerate(zip(plan, pids, ex, strict=True))
        ]

    train = build(_SPLIT_TRAIN, train_plan, train_ids, exts[:people])
    evals = build(_SPLIT_EVAL, eval_plan, ids[people:], exts[people:])
    return train, evals


def person_rng(seed: int, person: Person) -> np.random.Generator:
    """The generator that draws everything about one person's photos."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(person.split, person.index))
    )


def photo_label(person: Person, stem: str) -> int:
    """The 18-class label of one photo of a person (default age thresholds 30 / 60)."""
    return encode(PHOTO_MASK[stem], person.gender, AgeThresholds().group(person.age))


def eval_image_id(seed: int, photo_index: int, ext: str) -> str:
    """Hash name of the `photo_index`-th evaluation photo (40 hex digits + extension)."""
    return hashlib.sha1(f"synth:{seed}:{photo_index}".encode()).hexdigest() + ext


# ---------------------------------------------------------------------------------------------
# Appearance of a person (fixed over their 7 photos).

Color = tuple[int, int, int]

SKIN_LIGHT = np.array([236, 204, 180], dtype=np.float64)
SKIN_DARK = np.array([176, 132, 100], dtype=np.float64)
HAIR_BASES = (
    np.array([22, 18, 18.0]),
    np.array([35, 26, 22.0]),
    np.array([55, 38, 28.0]),
    np.array([85, 55, 35.0]),
    np.array([120, 80, 45.0]),
)
GREY = np.array([205, 203, 200], dtype=np.float64)
LIPSTICKS = ((190, 40, 60), (205, 80, 100), (170, 50, 70), (215, 105, 95), (150, 30, 45))
# fmt: off
CLOTHES: tuple[Color, ...] = (
    (30, 30, 35), (230, 230, 230), (50, 60, 110), (60, 100, 160), (150, 150, 150),
    (60, 90, 70), (170, 50, 60), (225, 160, 180), (210, 190, 160), (140, 100, 160),
)
#: clothes colour probabilities by gender (male, female): overlapping, not decisive.
CLOTHES_P = (
    (0.22, 0.15, 0.18, 0.12, 0.14, 0.08, 0.03, 0.01, 0.05, 0.02),
    (0.16, 0.20, 0.08, 0.06, 0.08, 0.04, 0.10, 0.12, 0.10, 0.06),
)
# fmt: on


def _col(c: np.ndarray | Sequence[float]) -> Color:
    a = np.clip(np.asarray(c, dtype=np.float64), 0, 255).round().astype(int)
    return int(a[0]), int(a[1]), int(a[2])


def _mix(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return (1.0 - t) * a + t * b


@dataclass(frozen=True)
class Looks:
    """Identity of a drawn person: face geometry, colours and the gender and age cues."""

    skin: np.ndarray
    face_w: float
    taper: float
    sag: float
    eye_dx: float
    eye_size: float
    brow_w: float
    brow_color: Color
    nose_len: float
    lip_color: Color
    lip_w: float
    eye_liner: bool
    hair_style: str  # short / medium / long / bun / perm
    hair_color: np.ndarray
    grey: float
    hairline: float
    hair_rx: float
    strands: np.ndarray  # (k, 2, 2) strand segments in face units
    strand_grey: np.ndarray  # (k,) bool
    beard: int  # 0 none, 1 stubble, 2 moustache, 3 both
    wrinkle: float
    spots: np.ndarray  # (k, 2) age spots in face units
    glasses: bool
    earrings: bool
    clothes: Color
    neck_w: float
    shoulders: float


@dataclass(frozen=True)
class AgeCues:
    """How old a face looks: wrinkles (from ~27), grey hair (from ~45), youth (fades by ~30)."""

    apparent: float
    aging: float
    grey: float
    youth: float


def _age_cues(age: int, fem: bool, rng: np.random.Generator) -> AgeCues:
    """Noisy age cues; the noise grows with age and '60' stands for 60 and older."""
    extra = rng.exponential(4.0) if age >= 60 else 0.0
    a = float(age + extra + rng.normal(0.0, 2.0 + 0.055 * (age - 18)))
    aging = float(np.clip((a - 26.0) / 22.0 + rng.normal(0, 0.06), 0.0, 1.3))
    grey = float(np.clip((a - 44.0) / 18.0 + rng.normal(0, 0.15), 0.0, 1.0))
    if a > 45 and rng.random() < (0.35 if fem else 0.15):
        grey *= rng.uniform(0.0, 0.3)  # dyed hair
    youth = float(1.0 / (1.0 + np.exp((a - 28.0) / 2.5)))
    return AgeCues(apparent=a, aging=aging, grey=grey, youth=youth)


def _hair(fem: bool, ac: AgeCues, rng: np.random.Generator) -> tuple[str, np.ndarray, float]:
    """Hair style, base colour (young people dye it brown more often) and hairline height."""
    style_p = (0.1, 0.27, 0.5, 0.13) if fem else (0.83, 0.11, 0.04, 0.02)
    style = ("short", "medium", "long", "bun")[rng.choice(4, p=style_p)]
    if fem and rng.random() < 0.5 / (1.0 + np.exp(-(ac.apparent - 46.0) / 4.0)):
        style = "perm"  # the short permed hair of many middle-aged women
    if rng.random() < 0.45 * ac.youth:
        hair = HAIR_BASES[rng.choice((2, 3, 4))].copy()
    else:
        hair = HAIR_BASES[rng.choice(5, p=(0.4, 0.32, 0.16, 0.1, 0.02))].copy()
    recede = 0.0 if fem else float(np.clip((ac.apparent - 35) / 30, 0, 1) * rng.uniform(0, 0.28))
    bangs = rng.random() < (0.3 if fem else 0.1) + 0.3 * ac.youth and recede < 0.05
    hairline = -0.27 if bangs else -0.42 - recede - rng.uniform(0, 0.04)
    return style, hair, float(hairline)


def _draw_looks(gender: int, age: int, rng: np.random.Generator) -> Looks:
    """Draw a person's appearance; each gender cue is probabilistic, each age cue noisy."""
    if rng.random() < 0.015:  # a few look like the other gender (the real set's label noise)
        gender = 1 - gender
    fem = gender == 1
    ac = _age_cues(age, fem, rng)
    skin = _mix(SKIN_LIGHT, SKIN_DARK, rng.beta(2.0, 3.0)) * (1.0 - 0.08 * min(ac.aging, 1.0))
    style, hair, hairline = _hair(fem, ac, rng)
    brow_w = rng.normal(0.055, 0.01) if not fem else rng.normal(0.03, 0.008)
    lip_natural = _mix(skin, np.array([200.0, 110, 110]), rng.uniform(0.3, 0.5) + 0.1 * fem)
    lipstick = fem and rng.random() < 0.5
    beard_p = 0.0 if fem else 0.22 + 0.2 * (ac.apparent > 40)
    beard = int(rng.integers(1, 4)) if rng.random() < beard_p else 0
    n_spots = int(rng.poisson(max(0.0, (ac.apparent - 50.0) / 3.0)))
    face_w = float(rng.normal(0.95 if fem else 1.0, 0.035) + 0.05 * min(ac.aging, 1.0))
    hair_rx = float(rng.uniform(0.56, 0.62) if fem else rng.uniform(0.53, 0.57))
    strands, strand_grey = _draw_strands(rng, ac.grey, hair_rx * face_w, hairline)
    return Looks(
        skin=skin,
        face_w=face_w,
        taper=float(rng.normal(0.42 if fem else 0.2, 0.06) - 0.05 * ac.youth),
        sag=float(np.clip((ac.apparent - 40.0) / 30.0, 0, 1.2) * rng.uniform(0.4, 1.0)),
        eye_dx=float(rng.uniform(0.18, 0.22)),
        eye_size=float(rng.normal(1.05 if fem else 1.0, 0.08) * (1.0 - 0.1 * ac.aging)),
        brow_w=float(np.clip(brow_w, 0.012, 0.08)),
        brow_color=_col(_mix(hair, GREY, 0.6 * ac.grey)),
        nose_len=float(rng.uniform(0.15, 0.21)),
        lip_color=_col(LIPSTICKS[rng.integers(len(LIPSTICKS))] if lipstick else lip_natural),
        lip_w=float(rng.normal(0.27, 0.025)),
        eye_liner=fem and rng.random() < 0.4,
        hair_style=style,
        hair_color=hair,
        grey=ac.grey,
        hairline=hairline,
        hair_rx=hair_rx,
        strands=strands,
        strand_grey=strand_grey,
        beard=beard,
        wrinkle=ac.aging,
        spots=np.stack([rng.uniform(-0.35, 0.35, n_spots), rng.uniform(-0.4, 0.25, n_spots)], 1),
        glasses=rng.random() < 0.18,
        earrings=fem and rng.random() < 0.3,
        clothes=CLOTHES[rng.choice(len(CLOTHES), p=CLOTHES_P[gender])],
        neck_w=float(rng.normal(0.19 if fem else 0.235, 0.018)),
        shoulders=float(rng.normal(0.95 if fem else 1.1, 0.07)),
    )


def _draw_strands(
    rng: np.random.Generator, grey: float, rx: float, hairline: float, k: int = 36
) -> tuple[np.ndarray, np.ndarray]:
    """Short strands inside the hair cap, each grey with probability `grey` (salt and pepper)."""
    x0 = rng.uniform(-0.85, 0.85, k) * rx
    top = -0.1 - 0.68 * np.sqrt(1.0 - (x0 / rx) ** 2)
    y0 = top + 0.02 + rng.random(k) * np.maximum(hairline - top - 0.1, 0.0)
    d = rng.uniform(0.05, 0.1, k)
    x1, y1 = x0 + 0.4 * d * np.sign(x0), y0 + d
    seg = np.stack([np.stack([x0, y0], 1), np.stack([x1, np.minimum(y1, hairline)], 1)], 1)
    return seg, rng.random(k) < grey


# ---------------------------------------------------------------------------------------------
# Drawing one photo.


@dataclass(frozen=True)
class Pose:
    """Affine map from face units (face width 1, origin at the face centre) to pixels."""

    m: np.ndarray  # 2x2
    t: np.ndarray  # 2
    s: float  # pixels per face unit
    yaw: float

    def px(self, pts: np.ndarray) -> list[float]:
        """Flat pixel coordinates [x0, y0, x1, y1, ...] of points in face units."""
        return (np.asarray(pts, dtype=np.float64) @ self.m.T + self.t).ravel().tolist()

    def width(self, units: float) -> int:
        """Line width in pixels for a width in face units."""
        return max(1, round(units * self.s))


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * np.pi, n: int = 24
) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_outline(lk: Looks) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    low = s > 0
    jowl = 1.0 + 0.07 * lk.sag * np.exp(-(((s - 0.75) / 0.18) ** 2))
    x = 0.5 * lk.face_w * c * np.where(low, (1.0 - lk.taper * s**2) * jowl, 1.0)
    y = np.where(low, (0.68 + 0.03 * lk.sag) * s, 0.62 * s)
    return np.stack([x, y], axis=1)


def _draw_background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    h, w = size
    corners = rng.uniform(40, 235, (2, 2, 3)) * rng.uniform(0.5, 1.0) + rng.uniform(0, 60)
    img = Image.fromarray(np.clip(corners, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR
    )
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 0.9) * h
        box = (x0, y0, x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h)
        fill = _col(rng.uniform(30, 230, 3))
        (d.rectangle if rng.random() < 0.6 else d.ellipse)(box, fill=fill)
    return img


def _draw_head_back(d: ImageDraw.ImageDraw, lk: Looks, p: Pose, hair: Color) -> None:
    body = np.array([[-0.25, 0.9], [0.25, 0.9], [1.0, 1.2], [1.3, 3.0], [-1.3, 3.0], [-1.0, 1.2]])
    body[:, 0] *= lk.shoulders
    d.polygon(p.px(body), fill=lk.clothes)
    if lk.hair_style in ("medium", "long"):
        length = 1.55 if lk.hair_style == "long" else 0.62
        top = _ellipse(0.0, -0.12, lk.hair_rx + 0.03, 0.72, np.pi, 2 * np.pi, 20)
        sides = [
            [lk.hair_rx + 0.06, length],
            [0.3, length + 0.06],
            [-0.3, length + 0.06],
            [-lk.hair_rx - 0.06, length],
        ]
        d.polygon(p.px(np.vstack([top, sides])), fill=hair)
    if lk.hair_style == "bun":
        d.polygon(p.px(_ellipse(0.0, -0.8, 0.2, 0.15)), fill=hair)
    skin = _col(lk.skin * 0.9)
    nw = lk.neck_w
    neck = np.array([[-nw, 0.35], [nw, 0.35], [nw + 0.02, 1.0], [-nw - 0.02, 1.0]])
    d.polygon(p.px(neck), fill=skin)
    for sx in (-1.0, 1.0):
        d.polygon(p.px(_ellipse(sx * 0.49 * lk.face_w, -0.02, 0.065, 0.12, n=14)), fill=skin)
        if lk.earrings:
            d.polygon(
                p.px(_ellipse(sx * 0.5 * lk.face_w, 0.12, 0.025, 0.025, n=8)), fill=(225, 200, 90)
            )


def _draw_hair_top(d: ImageDraw.ImageDraw, lk: Looks, p: Pose, hair: Color) -> None:
    rx, hl = lk.hair_rx * lk.face_w, lk.hairline
    side = 0.05 if lk.hair_style in ("short", "perm") else -0.05
    arc = _ellipse(0.0, -0.1, rx, 0.68, np.pi, 2 * np.pi, 24)
    if lk.hair_style == "perm":  # fuller, curly outline
        bumps = 1.1 + 0.05 * np.abs(np.sin(np.linspace(0.0, 9 * np.pi, len(arc))))
        arc = np.stack([arc[:, 0] * bumps, -0.1 + (arc[:, 1] + 0.1) * bumps], axis=1)
    line = np.array(
        [
            [rx - 0.02, side],
            [0.46, hl + 0.12],
            [0.3, hl],
            [0.0, hl - 0.02],
            [-0.3, hl],
            [-0.46, hl + 0.12],
            [-rx + 0.02, side],
        ]
    )
    d.polygon(p.px(np.vstack([arc, line])), fill=hair)
    width = p.width(0.012)
    dark = _col(lk.hair_color * 0.8)
    grey = _col(GREY * 1.05)
    for seg, is_grey in zip(lk.strands, lk.strand_grey, strict=True):
        d.line(p.px(seg), fill=grey if is_grey else dark, width=width)


def _draw_eyes(d: ImageDraw.ImageDraw, lk: Looks, p: Pose, dark: Color) -> None:
    fx = p.yaw * 0.06
    line = _col(lk.skin * 0.65)
    for sx in (-1.0, 1.0):
        cx, cy = fx + sx * lk.eye_dx, -0.06
        rx, ry = 0.075 * lk.eye_size, 0.036 * lk.eye_size * (1.0 - 0.3 * min(lk.wrinkle, 1.0))
        if lk.wrinkle > 0.1:  # darker, tired skin under the eyes
            shade = _ellipse(cx, cy + 0.03, rx * 1.1, 0.045, 0.0, np.pi, 10)
            d.polygon(p.px(shade), fill=_col(lk.skin * (1.0 - 0.12 * min(lk.wrinkle, 1.0))))
        d.polygon(p.px(_ellipse(cx, cy, rx, ry, n=16)), fill=(238, 236, 230))
        d.polygon(p.px(_ellipse(cx, cy, 0.033, 0.033, n=12)), fill=(40, 28, 22))
        lid = _ellipse(cx, cy, rx, ry, np.pi, 2 * np.pi, 9)
        d.line(
            p.px(lid),
            fill=(20, 15, 15) if lk.eye_liner else dark,
            width=p.width(0.014 + 0.01 * lk.eye_liner),
        )
        brow = np.array([[cx - sx * 0.08, -0.19], [cx, -0.215], [cx + sx * 0.1, -0.19]])
        d.line(p.px(brow), fill=lk.brow_color, width=p.width(lk.brow_w))
        if lk.wrinkle > 0.45:  # eye bags
            bag = _ellipse(cx, cy + 0.035, rx * 0.9, 0.03, 0.2, np.pi - 0.2, 8)
            d.line(p.px(bag), fill=line, width=p.width(0.006 + 0.008 * (lk.wrinkle - 0.5)))
        if lk.wrinkle > 0.3:  # crow's feet
            ox = cx + sx * (rx + 0.015)
            for dy in (-0.025, 0.0, 0.025)[: 1 + int(lk.wrinkle * 2.5)]:
                d.line(
                    p.px(np.array([[ox, cy + dy * 0.4], [ox + sx * 0.06, cy + dy]])),
                    fill=line,
                    width=p.width(0.006),
                )
        if lk.glasses:
            d.line(
                p.px(_ellipse(cx, cy, 0.11, 0.08, n=20)), fill=(30, 30, 30), width=p.width(0.012)
            )
    if lk.glasses:
        d.line(
            p.px(np.array([[fx - lk.eye_dx + 0.11, -0.07], [fx + lk.eye_dx - 0.11, -0.07]])),
            fill=(30, 30, 30),
            width=p.width(0.012),
        )


def _draw_forehead(d: ImageDraw.ImageDraw, lk: Looks, p: Pose) -> None:
    n = int(np.clip(round(lk.wrinkle * 5.0), 0, 4))
    color = _col(lk.skin * (0.8 - 0.1 * min(lk.wrinkle, 1.0)))
    for i in range(n):
        y = -0.27 - 0.045 * i
        if y - 0.02 < lk.hairline:
            break
        d.line(
            p.px(_ellipse(0.0, y + 0.15, 0.22, 0.15, 1.25 * np.pi, 1.75 * np.pi, 8)),
            fill=color,
            width=p.width(0.008 + 0.01 * lk.wrinkle),
        )
    if lk.wrinkle > 0.35:  # frown lines between the brows
        for sx in (-1.0, 1.0):
            frown = np.array([[sx * 0.035, -0.2], [sx * 0.028, -0.12]])
            d.line(p.px(frown), fill=color, width=p.width(0.008 + 0.006 * lk.wrinkle))
    for x, y in lk.spots:
        if y > lk.hairline + 0.03:
            d.polygon(p.px(_ellipse(x, y, 0.012, 0.012, n=6)), fill=_col(lk.skin * 0.75))


def _draw_lower_face(d: ImageDraw.ImageDraw, lk: Looks, p: Pose, hair: Color) -> None:
    fx = p.yaw * 0.08
    shade = _col(lk.skin * 0.78)
    nl = lk.nose_len
    d.line(
        p.px(np.array([[fx + 0.03, -0.02], [fx + 0.045, nl - 0.02]])),
        fill=_col(lk.skin * 0.88),
        width=p.width(0.012),
    )
    d.polygon(p.px(_ellipse(fx, nl, 0.055, 0.03, 0.0, np.pi, 10)), fill=_col(lk.skin * 0.9))
    for sx in (-1.0, 1.0):
        d.polygon(p.px(_ellipse(fx + sx * 0.035, nl + 0.012, 0.016, 0.01, n=8)), fill=shade)
    if lk.wrinkle > 0.1:  # nasolabial folds
        for sx in (-1.0, 1.0):
            fold = np.array(
                [[fx + sx * 0.08, nl], [fx + sx * 0.15, nl + 0.1], [fx + sx * 0.16, 0.43]]
            )
            d.line(
                p.px(fold),
                fill=_col(lk.skin * (0.88 - 0.12 * lk.wrinkle)),
                width=p.width(0.008 + 0.012 * lk.wrinkle),
            )
    if lk.beard & 1:  # stubble
        stub = np.vstack(
            [
                _ellipse(0.0, 0.38, 0.3 * lk.face_w, 0.3, 0.15, np.pi - 0.15, 14),
                [[-0.16, 0.45], [0.0, 0.5], [0.16, 0.45]],
            ]
        )
        d.polygon(p.px(stub), fill=_col(_mix(lk.skin, np.array(hair, dtype=float), 0.3)))
    my, hw = 0.36 + 0.02 * lk.sag, lk.lip_w / 2
    droop = 0.02 * lk.sag
    upper = np.array(
        [
            [fx - hw, my + droop],
            [fx - hw * 0.4, my - 0.03],
            [fx, my - 0.02],
            [fx + hw * 0.4, my - 0.03],
            [fx + hw, my + droop],
            [fx, my + 0.005],
        ]
    )
    lower = np.array(
        [
            [fx - hw, my + droop],
            [fx, my + 0.005],
            [fx + hw, my + droop],
            [fx + hw * 0.4, my + 0.045],
            [fx - hw * 0.4, my + 0.045],
        ]
    )
    d.polygon(p.px(upper), fill=lk.lip_color)
    d.polygon(p.px(lower), fill=lk.lip_color)
    if lk.beard & 2:  # moustache
        mus = np.array(
            [[fx - hw, my - 0.02], [fx, my - 0.07], [fx + hw, my - 0.02], [fx, my - 0.04]]
        )
        d.polygon(p.px(mus), fill=hair)


MASK_COLORS: tuple[Color, ...] = (
    (242, 242, 240),
    (150, 200, 228),
    (32, 32, 36),
    (140, 140, 146),
    (42, 52, 92),
    (232, 172, 188),
    (212, 194, 170),
    (120, 160, 120),
    (180, 60, 60),
)
MASK_COLOR_P = (0.3, 0.2, 0.2, 0.08, 0.06, 0.06, 0.04, 0.03, 0.03)


def _mask_polygon(top: float, bottom: float, w: float, pointed: bool) -> np.ndarray:
    side = min(max(top + 0.12, 0.3), bottom - 0.12)
    tip = 0.05 if pointed else 0.02
    upper = np.array(
        [[-0.52 * w, top + 0.06], [-0.2, top], [0.0, top - tip], [0.2, top], [0.52 * w, top + 0.06]]
    )
    arc = _ellipse(0.0, side, 0.5 * w, bottom - side, 0.0, np.pi, 14)
    return np.vstack([upper, arc])


def _draw_mask(
    d: ImageDraw.ImageDraw, lk: Looks, p: Pose, mask: int, rng: np.random.Generator
) -> None:
    """A worn mask covers nose and mouth; an incorrect one sits under the nose or on the chin."""
    if mask == 0:
        top, bottom = rng.uniform(-0.1, 0.03), rng.uniform(0.72, 0.8)
    elif rng.random() < 0.6:
        top, bottom = lk.nose_len + rng.uniform(0.03, 0.1), rng.uniform(0.74, 0.82)
    else:
        top, bottom = rng.uniform(0.44, 0.52), rng.uniform(0.8, 0.9)
    color = MASK_COLORS[rng.choice(len(MASK_COLORS), p=MASK_COLOR_P)]
    style = rng.choice(3)  # 0 plain cloth, 1 pleated surgical, 2 pointed KF94
    poly = _mask_polygon(top, bottom, lk.face_w, style == 2)
    d.polygon(p.px(poly), fill=color)
    lw = p.width(0.01)
    edge = _col(np.array(color, dtype=float) * 0.8)
    loop = (40, 40, 40) if sum(color) < 200 else (235, 235, 235)
    for sx in (-1.0, 1.0):
        ear = sx * 0.5 * lk.face_w
        d.line(
            p.px(np.array([[sx * 0.52 * lk.face_w, top + 0.06], [ear, -0.06]])), fill=loop, width=lw
        )
        d.line(
            p.px(np.array([[sx * 0.48 * lk.face_w, min(bottom - 0.1, top + 0.3)], [ear, 0.06]])),
            fill=loop,
            width=lw,
        )
    if style == 1:
        for k in (0.12, 0.2, 0.28):
            if top + k < bottom - 0.1:
                d.line(
                    p.px(np.array([[-0.46, top + k + 0.04], [0.46, top + k + 0.04]])),
                    fill=edge,
                    width=lw,
                )
    elif style == 2:
        d.line(p.px(np.array([[0.0, top - 0.05], [0.0, bottom]])), fill=edge, width=lw)
    if rng.random() < 0.15:  # a printed pattern
        dot = _col(rng.uniform(0, 255, 3))
        for x, y in zip(
            rng.uniform(-0.35, 0.35, 10), rng.uniform(top + 0.1, bottom - 0.12, 10), strict=True
        ):
            d.polygon(p.px(_ellipse(x, y, 0.025, 0.025, n=6)), fill=dot)


def _pose(size: tuple[int, int], rng: np.random.Generator) -> Pose:
    h, w = size
    s = 0.46 * w * rng.uniform(0.88, 1.12)
    ang = np.deg2rad(rng.normal(0.0, 4.0))
    c, sn = np.cos(ang), np.sin(ang)
    m = s * np.array([[c, -sn], [sn, c]])
    t = np.array([w * (0.5 + rng.normal(0, 0.035)), h * (0.45 + rng.normal(0, 0.025))])
    return Pose(m=m, t=t, s=s, yaw=float(rng.uniform(-0.35, 0.35)))


@functools.lru_cache(maxsize=4)
def _noise_tile(h: int, w: int, sigma: float) -> Image.Image:
    """A fixed RGB noise image (mean 128) twice the photo size; photos crop it at random offsets."""
    rng = np.random.default_rng(20240611)
    noise = 128.0 + rng.normal(0.0, sigma, (2 * h, 2 * w, 3))
    return Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting, colour cast, side light, blur and sensor noise."""
    w, h = img.size
    gain = rng.uniform(0.78, 1.15) * (1.0 + rng.normal(0.0, 0.045, 3))
    bias = rng.normal(0.0, 6.0)
    lut = np.clip(np.arange(256.0)[None, :] * gain[:, None] + bias, 0, 255).astype(np.uint8)
    img = img.point(lut.ravel().tolist())
    if rng.random() < 0.6:
        lo = int(rng.uniform(150, 235))
        grad = np.array([[lo, 255]] if rng.random() < 0.5 else [[255, lo]], dtype=np.uint8)
        img = ImageChops.multiply(
            img, Image.fromarray(grad).resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
        )
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.BoxBlur(float(rng.uniform(0.4, 1.2))))
    tile = _noise_tile(h, w, float(rng.choice((3.0, 5.0, 8.0))))
    x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
    return ImageChops.add(img, tile.crop((x, y, x + w, y + h)), offset=-128)


def render_photo(
    lk: Looks, mask: int, size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """Draw one photo (mask 0 worn, 1 incorrect, 2 none) of a person at `size` = (H, W)."""
    img = _draw_background(size, rng)
    d = ImageDraw.Draw(img)
    p = _pose(size, rng)
    hair = _col(_mix(lk.hair_color, GREY, lk.grey) * rng.uniform(0.95, 1.05))
    _draw_head_back(d, lk, p, hair)
    d.polygon(p.px(_face_outline(lk)), fill=_col(lk.skin))
    _draw_forehead(d, lk, p)
    _draw_hair_top(d, lk, p, hair)
    _draw_eyes(d, lk, p, _col(lk.skin * 0.6))
    _draw_lower_face(d, lk, p, hair)
    if mask < 2:
        _draw_mask(d, lk, p, mask, rng)
    return _finish(img, rng)


def render_person(
    person: Person, seed: int, size: tuple[int, int]
) -> list[tuple[str, Image.Image]]:
    """The 7 photos of one person as (stem, image), in the order of `STEMS`."""
    rng = person_rng(seed, person)
    looks = _draw_looks(person.gender, person.age, rng)
    return [(stem, render_photo(looks, PHOTO_MASK[stem], size, rng)) for stem in STEMS]


def encode_image(img: Image.Image, ext: str) -> bytes:
    """File bytes of an image for an extension (JPEG quality 90, fast PNG)."""
    buf = io.BytesIO()
    if ext == ".png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Writing the data set.


def _write_people(
    root: str, seed: int, size: tuple[int, int], people: list[Person]
) -> list[tuple[str, int]]:
    """Render and write some people; returns (file name, label) per eval photo (empty for train)."""
    rows: list[tuple[str, int]] = []
    for person in people:
        for k, (stem, img) in enumerate(render_person(person, seed, size)):
            data = encode_image(img, person.ext)
            if person.split == _SPLIT_TRAIN:
                path = Path(root, "train", "images", person.folder, stem + person.ext)
            else:
                name = eval_image_id(seed, person.index * len(STEMS) + k, person.ext)
                path = Path(root, "eval", "images", name)
                rows.append((name, photo_label(person, stem)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return rows


def _chunks(items: list[Person], size: int) -> list[list[Person]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _render_all(
    root: Path, seed: int, size: tuple[int, int], people: list[Person], workers: int
) -> list[tuple[str, int]]:
    if workers <= 1 or len(people) < 2:
        return _write_people(str(root), seed, size, people)
    chunks = _chunks(people, max(1, min(64, len(people) // (workers * 4))))
    ctx = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
    rows: list[tuple[str, int]] = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_write_people, str(root), seed, size, c) for c in chunks]
        for fut in futures:  # in submission order: rows stay deterministic
            rows += fut.result()
    return rows


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_tables(
    root: Path, seed: int, train: list[Person], eval_rows: list[tuple[str, int]]
) -> None:
    _write_csv(
        root / "train" / "train.csv",
        ("id", "gender", "race", "age", "path"),
        ((p.pid, GENDER_NAMES[p.gender], RACE, p.age, p.folder) for p in train),
    )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_SHUFFLE,)))
    shuffled = [eval_rows[i] for i in rng.permutation(len(eval_rows))]
    _write_csv(root / "eval" / "info.csv", ("ImageID", "ans"), ((n, "") for n, _ in shuffled))
    _write_csv(root / "eval" / "ground_truth.csv", ("ImageID", "ans"), shuffled)
    (root / "train" / "images").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "images").mkdir(parents=True, exist_ok=True)


def _summary(train: list[Person], evals: list[Person]) -> dict:
    def classes(people: list[Person]) -> list[int]:
        counts = [0] * 18
        for p in people:
            for stem in STEMS:
                counts[photo_label(p, stem)] += 1
        return counts

    groups = AgeThresholds()
    gender_age = {f"{g}/{a}": 0 for g in GENDER_NAMES for a in AGE_NAMES}
    for p in train:
        gender_age[f"{GENDER_NAMES[p.gender]}/{AGE_NAMES[groups.group(p.age)]}"] += 1
    return {
        "people": len(train),
        "eval_people": len(evals),
        "train_images": len(train) * len(STEMS),
        "eval_images": len(evals) * len(STEMS),
        "images": (len(train) + len(evals)) * len(STEMS),
        "train_classes": classes(train),
        "eval_classes": classes(evals),
        "gender_age": gender_age,
    }


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"output folder {out} is not empty; pass --overwrite (overwrite=True) to replace it"
        )


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished temp folder to `out`, replacing an old data set only when allowed."""
    _check_out(out, overwrite)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def _validate(people: int, eval_people: int, size: tuple[int, int]) -> None:
    for name, n in (("people", people), ("eval_people", eval_people)):
        if not 0 <= n <= MAX_PEOPLE:
            raise DataError(f"{name} must be 0..{MAX_PEOPLE}, got {n}")
    if len(size) != 2 or min(size) < 16 or max(size) > 4096:
        raise DataError(f"size must be (H, W) with 16 <= H, W <= 4096, got {tuple(size)}")


def generate(
    out: Path,
    *,
    people: int = 2700,
    eval_people: int = 1800,
    seed: int = 0,
    size: tuple[int, int] = (512, 384),
    workers: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write a synthetic data set in the competition layout under `out`; returns a summary.

    The set is built in a temporary folder beside `out` and renamed at the end, so a half-written
    set never looks complete. Same arguments → byte-identical files, whatever `workers` is.
    """
    out = Path(out)
    size = (int(size[0]), int(size[1]))
    _validate(people, eval_people, size)
    _check_out(out, overwrite)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    train, evals = plan_dataset(people, eval_people, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rows = _render_all(tmp, seed, size, train + evals, workers)
        _write_tables(tmp, seed, train, rows)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(train, evals)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.synth", description=__doc__.split("\n")[0]
    )
    ap.add_argument("out", type=Path, help="output folder (must be empty or absent)")
    ap.add_argument("--people", type=int, default=2700, help="training people (7 photos each)")
    ap.add_argument("--eval-people", type=int, default=1800, help="evaluation people")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(512, 384), metavar=("H", "W"))
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(
            args.out,
            people=args.people,
            eval_people=args.eval_people,
            seed=args.seed,
            size=tuple(args.size),
            workers=args.workers,
            overwrite=args.overwrite,
        )
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    secs = time.perf_counter() - start
    print(
        f"wrote {summary['images']} images ({summary['people']} train + "
        f"{summary['eval_people']} eval people) to {args.out} in {secs:.1f} s"
    )
    print("train people by gender/age:", summary["gender_age"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
