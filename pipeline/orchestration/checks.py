"""The whole configuration checked in one pass, every problem at once (README "Configuration").

`check_config(cfg)` runs at launch before anything else (no fingerprint, run id, run folder or
job exists yet) and again at the start of every job, since a job can be started by hand. It
raises one ConfigError with one line per problem, each naming the key, the value given and what
is valid:

    train.epochs='abc': must be a whole number >= 1
    model.arch='resnet99': must be one of torchvision's classification models (alexnet, …)

Rules are declared per key (`RULES`: types, ranges, choices), then checked across keys (fp16
needs CUDA, mask_groups only on age models, the age thresholds in order, …), then the suite's
models, candidates and vote are parsed as the stages parse them, so a config that passes here
does not fail later on a value. Per-model `train:` and model keys of `suite.models.<name>` are
checked with the same rules under their own names.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.core.errors import ConfigError, DataError

Check = Callable[[Any], str | None]  # None when the value is valid, else what is valid


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def whole(low: int | None = None, high: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        ok = _is_int(v) and (low is None or v >= low) and (high is None or v <= high)
        if ok:
            return None
        bounds = f" >= {low}" if high is None else f" in [{low}, {high}]"
        return f"must be a whole number{'' if low is None else bounds}"

    return check


def number(low: float, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:  # fmt: skip
    def check(v: Any) -> str | None:
        if _is_number(v):
            above = v > low if low_open else v >= low
            below = high is None or (v < high if high_open else v <= high)
            if above and below:
                return None
        if high is None:
            return f"must be a number {'>' if low_open else '>='} {low}"
        return (f"must be a number in {'(' if low_open else '['}{low}, {high}"
                f"{')' if high_open else ']'}")  # fmt: skip

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def choice(options: Iterable[str], what: str = "") -> Check:
    valid = list(options)

    def check(v: Any) -> str | None:
        if isinstance(v, str) and v in valid:
            return None
        if len(valid) <= 12:
            names = ", ".join(valid)
            return f"must be one of {what} ({names})" if what else f"must be one of {names}"
        near = difflib.get_close_matches(str(v), valid, n=4, cutoff=0.5)
        hint = f"; closest: {', '.join(near)}" if near else ""
        return f"must be one of {what or 'the valid names'} ({len(valid)} names{hint})"

    return check


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def optional(inner: Check) -> Check:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        problem = inner(v)
        return None if problem is None else f"{problem}, or null"

    return check


def pair(item: Check, what: str) -> Check:
    def check(v: Any) -> str | None:
        v = _plain(v)
        if isinstance(v, list) and len(v) == 2 and all(item(x) is None for x in v):
            return None
        return f"must be {what}"

    return check


def cut_range(v: Any) -> str | None:
    v = _plain(v)
    if (
        isinstance(v, list)
        and len(v) == 2
        and all(_is_number(x) for x in v)
        and 0 < v[0] <= v[1] < 1
    ):
        return None
    return "must be [lo, hi], fractions of the photo height with 0 < lo <= hi < 1"


def webhook(v: Any) -> str | None:
    from pipeline.run.notify import check_notify_url

    return text(v) or check_notify_url(str(v))


def image_digest(v: Any) -> str | None:
    if isinstance(v, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", v):
        return None
    return "must be an image digest: sha256: followed by 64 lower-case hex digits"


def strings(v: Any) -> str | None:
    v = _plain(v)
    if isinstance(v, list) and all(isinstance(x, str) and x for x in v):
        return None
    return "must be a list of strings"


def loss_weights(v: Any) -> str | None:
    from pipeline.ml.losses import LOSS_NAMES

    v = _plain(v)
    expected = f"must map loss names ({', '.join(LOSS_NAMES)}) to weights >= 0, one positive"
    if not isinstance(v, dict) or set(v) - set(LOSS_NAMES):
        return expected
    weights = list(v.values())
    if not all(_is_number(w) and w >= 0 for w in weights) or not any(w > 0 for w in weights):
        return expected
    return None


def drop_ages(v: Any) -> str | None:
    from pipeline.stages.train import age_bands

    try:
        age_bands(_plain(v))
    except (ConfigError, TypeError, ValueError):
        return "must be null, one band [low, high] or a list of bands [[low, high], ...]"
    return None


def architecture(v: Any) -> str | None:
    from pipeline.ml.models import classification_archs

    return choice(classification_archs(), "torchvision's classification models")(v)


def task(v: Any) -> str | None:
    from pipeline.ml.models import TASKS

    return choice(TASKS)(v)


def mask_groups(v: Any) -> str | None:
    from pipeline.domain.labels import MASK_NAMES

    v = _plain(v)
    if v is None or (isinstance(v, list) and v and all(x in MASK_NAMES for x in v)):
        return None
    return f"must be null or a non-empty list of {', '.join(MASK_NAMES)}"


def _train_rules() -> dict[str, Check]:
    from pipeline.ml.device import DEVICES, PRECISIONS
    from pipeline.stages.train import SCHEDULERS

    fraction = number(0.0, 1.0)
    crop = pair(number(0.0, 1.0, low_open=True), "two fractions in (0, 1], [height, width]")
    return {
        "epochs": whole(1),
        "batch_size": whole(2),
        "lr": number(0.0, low_open=True),
        "weight_decay": number(0.0),
        "scheduler": choice(SCHEDULERS),
        "image_size": pair(whole(8), "two whole numbers >= 8, [height, width]"),
        "center_crop": optional(crop),
        "loss": loss_weights,
        "label_smoothing": number(0.0, 1.0, high_open=True),
        "focal_gamma": number(0.0),
        "balanced_sampling": boolean,
        "drop_ages": drop_ages,
        "augment.hflip": boolean,
        "augment.color_jitter": fraction,
        "augment.random_erasing": fraction,
        "augment.cutmix_vertical": fraction,
        "augment.cutmix_cut_range": cut_range,
        "augment.mixup_alpha": number(0.0),
        "augment.mixup_prob": fraction,
        "early_stopping_patience": optional(whole(1)),
        "tta_flip": boolean,
        "eval_batch_size": whole(1),
        "device": choice(DEVICES),
        "precision": choice(PRECISIONS),
        "num_threads": optional(whole(1)),
        "gpu_memory_budget": fraction,
        "compile": boolean,
    }


MODEL_RULES: dict[str, Check] = {
    "arch": architecture,
    "weights": optional(text),
    "freeze": strings,
    "freeze_if_pretrained": strings,
    "task": task,
    "mask_groups": mask_groups,
}


#: slurm.container.runtime (orchestration/slurm.py reads it from here: checking a config imports
#: no cluster client, so it runs where submitit or kubernetes are not installed).
CONTAINER_RUNTIMES = ("none", "pyxis", "apptainer")
#: Who a Kubernetes pod is, for its credentials (k8s.s3.secrets.<role>; orchestration/k8s.py):
#: the launcher, the run's stage Jobs (prepare, train, vote) and the infer Job.
K8S_ROLES = ("launcher", "prepare", "train", "vote", "infer")


def _top_rules() -> dict[str, Check]:
    from pipeline.ml.tracking import MODES

    rules: dict[str, Check] = {
        "data.root": text,
        "data.val_fraction": number(0.0, 0.5, low_open=True),
        "data.holdout_fraction": number(0.0, 0.5, high_open=True),
        "publish.tolerance": number(-1.0, 1.0, low_open=True, high_open=True),
        "notify.url": optional(webhook),
        "data.age_thresholds.young_below": whole(1, 150),
        "data.age_thresholds.old_from": whole(1, 150),
        "data.max_bad_fraction": number(0.0, 1.0),
        "data.allow_missing_eval": boolean,
        "data.shard_mb": whole(1),
        # PIL refuses more than twice its MAX_IMAGE_PIXELS (89,478,485) as a bomb anyway
        "data.max_pixels": whole(1, 2 * 89_478_485),
        "data.max_file_bytes": whole(1),
        "data.label_fix": optional(text),
        "data.extra_roots": strings,
        "store.root": text,
        "store.workers": whole(1),
        "store.keep_checkpoints": whole(1),
        "seed": whole(0),
        "run_id": optional(text),
        "model_name": optional(text),
        "tracking.mode": choice(MODES),
        "tracking.project": text,
        "tracking.init_timeout": number(0.0, low_open=True),
        "infer.input": optional(text),
        "infer.output": optional(text),
        "slurm.array_parallelism": whole(1),
        "slurm.signal_delay_s": whole(0),
        "slurm.max_requeues": whole(0),
        "slurm.poll_seconds": number(0.0),
        "slurm.container.runtime": choice(CONTAINER_RUNTIMES),
        "k8s.namespace": text,
        "k8s.notify_secret": optional(text),
        "k8s.image": text,
        "k8s.image_digest": optional(image_digest),
        **{f"k8s.s3.secrets.{role}": optional(text) for role in K8S_ROLES},
        "k8s.poll_seconds": number(0.0),
        "k8s.backoff_limit": whole(0),
        "k8s.ttl_seconds_after_finished": whole(0),
    }
    rules.update({f"train.{k}": v for k, v in _train_rules().items()})
    rules.update({f"model.{k}": v for k, v in MODEL_RULES.items()})
    return rules


_MISSING = object()


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig | dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _show(value: Any) -> str:
    """A value as an override writes it: 'abc', 3, true, null, [64, 48], {ce: 1.0}."""
    value = _plain(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _apply(rules: Mapping[str, Check], cfg: Any, prefix: str, problems: list[str],
           only: set[str] | None = None) -> None:  # fmt: skip
    for key, check in rules.items():
        if only is not None and key not in only:
            continue
        value = _get(cfg, key)
        if value is _MISSING:
            continue  # absent optional groups (e.g. a trimmed config): nothing to check
        problem = check(value)
        if problem:
            problems.append(f"{prefix}{key}={_show(value)}: {problem}")


#: Groups whose keys are fixed (the suite, slurm and k8s groups have options of their own).
FIXED_GROUPS = ("data", "store", "model", "train", "tracking", "infer")
#: Mappings whose keys are checked by their own rule (loss names), not as unknown keys.
OPEN_MAPPINGS = ("train.loss",)


def _paths(node: Any, prefix: str) -> set[str]:
    node = _plain(node)
    if not isinstance(node, dict) or prefix in OPEN_MAPPINGS:
        return {prefix}
    return {p for k, v in node.items() for p in _paths(v, f"{prefix}.{k}")}


@functools.cache
def _packaged() -> DictConfig:
    """The packaged defaults, the reference of which keys exist."""
    from pipeline.core.config import load_config

    return load_config([])


def _unknown_keys(cfg: DictConfig, problems: list[str]) -> None:
    """Keys added with `+key=value` that no code reads (a typo would otherwise be ignored)."""
    reference = _packaged()
    for group in FIXED_GROUPS:
        if group not in cfg or group not in reference:
            continue
        known = _paths(reference[group], group)
        for path in sorted(_paths(cfg[group], group) - known):
            parent = path.rsplit(".", 1)[0]
            siblings = sorted(k.rsplit(".", 1)[1] for k in known if k.rsplit(".", 1)[0] == parent)
            value = _show(_get(cfg, path))
            problems.append(
                f"{path}={value}: unknown key; valid under {parent}: {', '.join(siblings)}"
            )


def _freeze_without_weights(spec: Any, prefix: str) -> str | None:
    """A model that freezes layers it did not load: they would stay random."""
    frozen = _plain(spec.get("freeze"))
    if not isinstance(frozen, list) or not frozen or spec.get("weights"):
        return None
    return (
        f"{prefix}freeze={_show(frozen)} with {prefix}weights=null: frozen layers would keep their "
        f"random initialisation; set {prefix}weights to a pretrained state dict (path or s3:// "
        "URI), or use freeze_if_pretrained, which freezes only when weights are given"
    )


def _cut_above_crop(train: Any, prefix: str) -> str | None:
    """Vertical CutMix whose cut range (fractions of the photo) lies wholly above the centre crop
    the model sees: no row to cut at (pipeline.ml.augment.crop_rows, checked again at job start)."""
    augment = train.get("augment") or {}
    crop, cut = _plain(train.get("center_crop")), _plain(augment.get("cutmix_cut_range"))
    p: Any = augment.get("cutmix_vertical")
    if not (_is_number(p) and p > 0 and cut_range(cut) is None and crop_pair(crop)):
        return None
    if cut[1] > (1.0 - crop[0]) / 2.0:
        return None
    return (
        f"{prefix}augment.cutmix_cut_range={_show(cut)} with {prefix}center_crop={_show(crop)}: "
        "the cut range lies above the crop; lower the range or crop less"
    )


def crop_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_number(x) and 0 < x <= 1 for x in v)


def _cross_field(cfg: DictConfig, problems: list[str]) -> None:
    from pipeline.domain.labels import AgeThresholds

    train = cfg.get("train") or {}
    if train.get("precision") == "fp16" and train.get("device") == "cpu":
        problems.append(
            "train.precision='fp16' with train.device='cpu': fp16 needs a CUDA device; use bf16 "
            "or fp32 on a CPU, or train.device=cuda|auto"
        )
    ages = _plain(_get(cfg, "data.age_thresholds"))
    if (
        isinstance(ages, dict)
        and set(ages) == {"young_below", "old_from"}
        and all(_is_int(a) for a in ages.values())
    ):
        try:
            AgeThresholds(**ages)
        except (DataError, TypeError) as e:
            problems.append(f"data.age_thresholds={ages}: {e}")
    model: DictConfig = cfg.get("model") or DictConfig({})
    frozen = _freeze_without_weights(model, "model.")
    if frozen:
        problems.append(frozen)
    if model.get("mask_groups") is not None and model.get("task") != "age":
        problems.append(
            f"model.mask_groups={_show(model.mask_groups)} with model.task={_show(model.task)}: "
            "mask_groups only applies to age models (task: age)"
        )


def _suite(cfg: DictConfig, problems: list[str]) -> None:
    """The suite's models, candidates and vote, parsed as the stages parse them."""
    from pipeline.core.config import model_specs
    from pipeline.stages.vote import vote_settings

    if "suite" not in cfg:
        return
    try:
        specs = model_specs(cfg)
    except ConfigError as e:
        problems.append(f"suite.models: {e}")
        return
    train_rules = _train_rules()
    for name, spec in specs.items():
        entry = _plain(cfg.suite.models[name]) or {}
        prefix = f"suite.models.{name}."
        _apply(MODEL_RULES, spec, prefix, problems, only=set(entry) - {"train"})
        overridden = {p.removeprefix("train.") for p in _paths(entry.get("train") or {}, "train")}
        _apply(train_rules, spec.train, f"{prefix}train.", problems, only=overridden)
        cut = _cut_above_crop(spec.train, f"{prefix}train.")
        if cut:
            problems.append(cut)
        frozen = _freeze_without_weights(spec, prefix)
        top_frozen = _plain(spec.get("freeze")) == _plain(cfg.model.get("freeze"))
        if frozen and not (top_frozen and spec.get("weights") == cfg.model.get("weights")):
            problems.append(frozen)
        inherited = _plain(spec.get("mask_groups")) == _plain(cfg.model.get("mask_groups"))
        top_level_reported = cfg.model.get("mask_groups") is not None and cfg.model.task != "age"
        if inherited and top_level_reported:
            continue  # one line for the model group's problem, not one per model
        if spec.get("mask_groups") is not None and spec.get("task") != "age":
            problems.append(
                f"{prefix}mask_groups={_show(spec.mask_groups)} with task={_show(spec.task)}: "
                "mask_groups only applies to age models (task: age)"
            )
    if cfg.get("model_name") is not None and cfg.model_name not in specs:
        problems.append(f"model_name={_show(cfg.model_name)}: must be one of {', '.join(specs)}")
    try:
        vote_settings(cfg)  # the candidates (each naming models of this suite) and the vote
    except ConfigError as e:
        problems.append(str(e))


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of `cfg`, one line each (empty when it is valid)."""
    problems: list[str] = []
    _apply(_top_rules(), cfg, "", problems)
    _unknown_keys(cfg, problems)
    _cross_field(cfg, problems)
    _suite(cfg, problems)
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of `cfg`, one per line; return when valid."""
    problems = config_problems(cfg)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"the configuration has {count}:\n  " + "\n  ".join(problems))
