"""The configuration's schema: every key of `pipeline/conf`, its type, range and choices.

The YAML files under `pipeline/conf` hold the defaults and their documentation; these pydantic
models say what each key may hold. `schema_problems(config)` validates a composed configuration
(plain dicts) once and returns every problem at once, one line each, naming the key, the value
given and what is valid:

    train.epochs='abc': must be a whole number >= 1
    train.epoch=1: unknown key; did you mean train.epochs?

What a type cannot say (rules across keys, the suite's models and candidates, names known only
to torchvision) is checked beside it, in `pipeline/orchestration/checks.py`. The closed choices
(schedulers, devices, vote methods, ...) are declared here once; the code that implements them
reads their names from here.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from pipeline.core.errors import ConfigError

# -------------------------------------------------------------------------- closed choices

Scheduler = Literal["none", "cosine", "step"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Task = Literal["all", "mask", "gender", "age"]
MaskGroup = Literal["wear", "incorrect", "not_worn"]
TrackingMode = Literal["auto", "online", "offline", "disabled"]
VoteMethod = Literal["hard", "hard_per_task", "soft"]
#: slurm.container.runtime: how a Slurm job runs the suite (orchestration/slurm.py)
ContainerRuntime = Literal["none", "pyxis", "apptainer"]
#: Who a Kubernetes pod is, for its credentials (k8s.s3.secrets.<role>; orchestration/k8s.py)
K8sRole = Literal["launcher", "prepare", "train", "vote", "infer"]

#: A string with something in it.
Name = Annotated[str, Field(min_length=1, pattern=r"\S")]
#: PIL refuses more than twice its MAX_IMAGE_PIXELS (89,478,485) as a bomb anyway.
PIL_PIXEL_LIMIT = 2 * 89_478_485


class Section(BaseModel):
    """A group of keys: strict types (3 is not '3', true is not 1), no unknown key."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# -------------------------------------------------------------------------- data, store, model


class AgeThresholds(Section):
    young_below: int = Field(ge=1, le=150)
    old_from: int = Field(ge=1, le=150)


class Data(Section):
    root: Name
    holdout_fraction: float = Field(ge=0.0, lt=0.5)
    val_fraction: float = Field(gt=0.0, le=0.5)
    age_thresholds: AgeThresholds
    max_bad_fraction: float = Field(ge=0.0, le=1.0)
    allow_missing_eval: bool
    shard_mb: int = Field(ge=1)
    max_pixels: int = Field(ge=1, le=PIL_PIXEL_LIMIT)
    max_file_bytes: int = Field(ge=1)
    label_fix: Name | None
    extra_roots: list[Name]


class Store(Section):
    root: Name
    workers: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)


class Model(Section):
    arch: Name  # one of torchvision's classification models: checks.py (torchvision knows them)
    weights: Name | None
    freeze: list[Name]
    freeze_if_pretrained: list[Name]
    task: Task
    mask_groups: list[MaskGroup] | None = Field(
        min_length=1, description="null or a non-empty list of wear, incorrect, not_worn"
    )


# -------------------------------------------------------------------------- train


def drop_bands(value: Sequence[Any] | None) -> list[tuple[int, int]]:
    """`train.drop_ages` as inclusive (low, high) bands: null, one [low, high] or a list of them,
    e.g. [[27, 29], [57, 59]]. ValueError when it is none of these or a band has low > high."""
    if not value:
        return []
    items = list(value)
    out = []
    for band in [items] if _is_whole(items[0]) else items:
        pair = list(band) if isinstance(band, Sequence) and not isinstance(band, str) else []
        if len(pair) != 2 or not all(_is_whole(a) for a in pair) or pair[0] > pair[1]:
            raise ValueError(f"{band!r} is not a band [low, high] of whole ages, low <= high")
        out.append((pair[0], pair[1]))
    return out


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bands(value: list[Any] | None) -> list[Any] | None:
    drop_bands(value)
    return value


class Loss(Section):
    ce: float = Field(ge=0.0)
    focal: float = Field(ge=0.0)
    f1: float = Field(ge=0.0)

    @model_validator(mode="after")
    def one_positive(self) -> Loss:
        if not (self.ce > 0 or self.focal > 0 or self.f1 > 0):
            raise ValueError("all weights are 0")
        return self


def _cut_range(value: list[float]) -> list[float]:
    if not 0 < value[0] <= value[1] < 1:
        raise ValueError("not 0 < lo <= hi < 1")
    return value


class Augment(Section):
    hflip: bool
    color_jitter: float = Field(ge=0.0, le=1.0)
    random_erasing: float = Field(ge=0.0, le=1.0)
    cutmix_vertical: float = Field(ge=0.0, le=1.0)
    cutmix_cut_range: Annotated[list[float], AfterValidator(_cut_range)] = Field(
        min_length=2,
        max_length=2,
        description="[lo, hi], fractions of the photo height with 0 < lo <= hi < 1",
    )
    mixup_alpha: float = Field(ge=0.0)
    mixup_prob: float = Field(ge=0.0, le=1.0)


class Train(Section):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)  # batch norm cannot train on one image
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    scheduler: Scheduler
    image_size: list[Annotated[int, Field(ge=8)]] = Field(
        min_length=2, max_length=2, description="two whole numbers >= 8, [height, width]"
    )
    center_crop: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        min_length=2, max_length=2, description="two fractions in (0, 1], [height, width], or null"
    )
    loss: Loss = Field(
        description="a mapping of loss names (ce, focal, f1) to weights >= 0, one positive"
    )
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    focal_gamma: float = Field(ge=0.0)
    balanced_sampling: bool
    drop_ages: Annotated[list[Any] | None, AfterValidator(_bands)] = Field(
        description="null, one band [low, high] or a list of bands [[low, high], ...] "
        "of whole ages with low <= high"
    )
    augment: Augment
    early_stopping_patience: int | None = Field(ge=1)
    tta_flip: bool
    eval_batch_size: int = Field(ge=1)
    device: Device
    precision: Precision
    num_threads: int | None = Field(ge=1)
    gpu_memory_budget: float = Field(ge=0.0, le=1.0)
    compile: bool


#: Train keys that apply to every model of a run (set them with train.<key>=... only).
RUN_WIDE_TRAIN_KEYS = ("epochs", "image_size", "device", "precision", "num_threads")


# -------------------------------------------------------------------------- suite, run, publish


class Vote(Section):
    top_k: int = Field(ge=1)
    method: VoteMethod
    fallback_margin: float | None = Field(ge=0.0, lt=1.0)


class Suite(Section):
    # the entries and candidates are parsed beside the schema (checks.py), as the stages parse them
    models: dict[str, Any]
    candidates: dict[str, Any] | None = None
    vote: Vote


class Tracking(Section):
    mode: TrackingMode
    project: Name
    entity: str | None
    dir: Name
    init_timeout: float = Field(gt=0.0)


class Publish(Section):
    tolerance: float = Field(gt=-1.0, lt=1.0)


class Notify(Section):
    url: Name | None  # a webhook URL: checks.py asks pipeline.run.notify


class Infer(Section):
    input: Name | None
    output: Name | None


# -------------------------------------------------------------------------- Slurm


class SlurmStage(Section):
    cpus: int = Field(ge=1)
    gpus: int = Field(ge=0)
    mem_gb: float = Field(gt=0.0)
    time_min: int = Field(ge=1)
    partition: str | None
    constraint: str | None
    extra: dict[str, Any]


class SlurmStages(Section):
    prepare: SlurmStage
    model: SlurmStage
    vote: SlurmStage
    infer: SlurmStage


class Container(Section):
    runtime: ContainerRuntime
    image: Name | None
    args: list[str]
    python: Name


class Slurm(Section):
    folder: Name
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    wckey: str | None
    array_parallelism: int = Field(ge=1)
    signal_delay_s: int = Field(ge=0)
    max_requeues: int = Field(ge=0)
    poll_seconds: float = Field(ge=0.0)
    extra: dict[str, Any]
    setup: list[str]
    stages: SlurmStages
    container: Container


# -------------------------------------------------------------------------- Kubernetes


class K8sSecrets(Section):
    launcher: Name | None
    prepare: Name | None
    train: Name | None
    vote: Name | None
    infer: Name | None


class K8sS3(Section):
    endpoint: str | None
    region: Name
    secret: Name | None
    secrets: K8sSecrets


class K8sStageResources(Section):
    requests: dict[str, Any]
    limits: dict[str, Any]


class K8sResources(Section):
    prepare: K8sStageResources
    train: K8sStageResources
    vote: K8sStageResources
    infer: K8sStageResources


class K8sDeadlines(Section):
    prepare: int = Field(ge=1)
    train: int = Field(ge=1)
    vote: int = Field(ge=1)
    infer: int = Field(ge=1)


class K8s(Section):
    namespace: Name
    image: Name
    image_digest: str | None = Field(
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="an image digest: sha256: followed by 64 lower-case hex digits, or null",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"]
    image_pull_secrets: list[Name]
    service_account: Name
    launcher_service_account: Name
    job_prefix: Name
    s3: K8sS3
    wandb_secret: Name | None
    notify_secret: Name | None
    node_selector: dict[str, Any]
    tolerations: list[dict[str, Any]]
    train_node_selector: dict[str, Any]
    train_tolerations: list[dict[str, Any]]
    gpu_resource: Name
    gpus_per_train_pod: int = Field(ge=0)
    train_priority_class: Name | None
    train_runtime_class: Name | None
    resources: K8sResources
    scratch_size: str = Field(
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="a Kubernetes quantity: a number and a unit such as Gi or Mi, e.g. 10Gi",
    )
    backoff_limit: int = Field(ge=0)
    backoff_limit_per_index: int = Field(ge=0)
    max_failed_indexes: int = Field(ge=0)
    train_parallelism: int | None = Field(ge=1)
    active_deadline_seconds: K8sDeadlines
    ttl_seconds_after_finished: int = Field(ge=0)
    poll_seconds: float = Field(ge=0.0)
    pending_timeout: float = Field(gt=0.0)
    api_outage_seconds: float = Field(ge=60.0)


# -------------------------------------------------------------------------- the whole config


class Config(Section):
    """`pipeline/conf/config.yaml` and its groups. Problems are reported in this order."""

    data: Data
    publish: Publish
    notify: Notify
    store: Store
    seed: int = Field(ge=0)
    run_id: Name | None
    sweep_id: Name | None
    model_name: Name | None
    tracking: Tracking
    infer: Infer
    slurm: Slurm
    k8s: K8s
    train: Train
    model: Model
    suite: Suite


# -------------------------------------------------------------------------- problems, one line each

_MISSING = object()


def show(value: Any) -> str:
    """A value as an override writes it: 'abc', 3, true, null, [64, 48], {ce: 1.0}."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _value_at(config: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(config, Mapping) or part not in config:
            return _MISSING
        config = config[part]
    return config


def _section(annotation: Any) -> type[Section] | None:
    """The Section class of a field's type (`Data`, `Vote | None`), or None for a plain value."""
    for option in (annotation, *get_args(annotation)):
        if isinstance(option, type) and issubclass(option, Section):
            return option
    return None


def _field(model: type[Section], path: tuple[str, ...]) -> tuple[tuple[str, ...], FieldInfo | None]:
    """The longest prefix of `path` that names a field of `model` (nested sections followed),
    and that field; (the prefix, None) past the last section (an unknown key's parent)."""
    walked: tuple[str, ...] = ()
    field: FieldInfo | None = None
    current: type[Section] | None = model
    for part in path:
        if current is None or part not in current.model_fields:
            break
        field = current.model_fields[part]
        walked += (part,)
        current = _section(field.annotation)
    return walked, field


def _describe_type(annotation: Any, metadata: list[Any]) -> str:
    """What a value of `annotation` with constraints `metadata` (ge, lt, min_length) must be."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _describe_type(inner, [*extra, *metadata])
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        inner = options[0] if len(options) == 1 else Any
        return f"{_describe_type(inner, metadata)}, or null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(annotation))
    bounds = {type(m): m for m in metadata if isinstance(m, Ge | Gt | Le | Lt)}
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        what = "a whole number" if annotation is int else "a number"
        return what + _range(bounds)
    if annotation is str:
        nonempty = any(isinstance(m, MinLen) and m.min_length > 0 for m in metadata)
        return "a non-empty string" if nonempty else "a string"
    if origin is list:
        return "a list of " + _describe_type(get_args(annotation)[0], []).removeprefix("a ") + "s"
    if origin is dict:
        return "a mapping"
    section = _section(annotation)
    if section is not None:
        return f"a mapping of {', '.join(section.model_fields)}"
    return f"a {getattr(annotation, '__name__', annotation)}"


def _range(bounds: dict[type, Any]) -> str:
    low = bounds.get(Ge) or bounds.get(Gt)
    high = bounds.get(Le) or bounds.get(Lt)
    low_value = None if low is None else getattr(low, "ge", getattr(low, "gt", None))
    high_value = None if high is None else getattr(high, "le", getattr(high, "lt", None))
    if low is not None and high is None:
        return f" {'>=' if isinstance(low, Ge) else '>'} {low_value}"
    if high is not None and low is None:
        return f" {'<=' if isinstance(high, Le) else '<'} {high_value}"
    if low is None:
        return ""
    opening = "[" if isinstance(low, Ge) else "("
    closing = "]" if isinstance(high, Le) else ")"
    return f" in {opening}{low_value}, {high_value}{closing}"


def describe(field: FieldInfo) -> str:
    """What the value of `field` must be: its description, or its type and range in words."""
    if field.description:
        return field.description
    return _describe_type(field.annotation, list(field.metadata))


def _unknown(model: type[Section], parent: tuple[str, ...], key: str) -> str:
    """Where an unknown key `parent.key` may have been meant, from the keys beside it."""
    _, field = _field(model, parent)
    section = _section(field.annotation) if field is not None else model
    valid = sorted(section.model_fields) if section else []
    dotted = ".".join(parent)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {'.'.join((*parent, close[0]))}?"
    where = f"under {dotted}" if dotted else "at the top level"
    return f"unknown key; valid {where}: {', '.join(valid)}"


def schema_problems(
    config: Mapping[str, Any],
    model: type[Section] = Config,
    prefix: str = "",
    only: set[str] | None = None,
) -> list[str]:
    """Every problem of `config` (plain dicts and lists) against `model`, one line each, in the
    order of the schema: `<key>=<value>: <what is valid>`. `prefix` is put before each key (a
    suite entry's `suite.models.<name>.`); `only` keeps the problems of these keys and below."""
    try:
        model.model_validate(config)
    except ValidationError as e:
        errors = e.errors()
    else:
        return []
    problems: dict[tuple[str, ...], str] = {}
    for error in errors:
        path = tuple(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            key_path, problem = path, _unknown(model, path[:-1], path[-1])
        else:
            key_path, field = _field(model, path)
            if error["type"] == "missing":
                problem = "missing: every key of the schema needs a value (null where allowed)"
            else:
                problem = f"must be {describe(field)}" if field else str(error["msg"])
        dotted = ".".join(key_path)
        if only is not None and not any(dotted == k or dotted.startswith(f"{k}.") for k in only):
            continue
        value = _value_at(config, key_path)
        shown = "" if value is _MISSING else f"={show(value)}"
        problems.setdefault(key_path, f"{prefix}{dotted}{shown}: {problem}")
    return list(problems.values())


def problems_error(problems: list[str]) -> ConfigError:
    """One ConfigError listing `problems`, one per line, under a count."""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return ConfigError(f"the configuration has {count}:\n  " + "\n  ".join(problems))


def choices(literal: Any) -> tuple[str, ...]:
    """The names of a Literal choice, for the code that implements them."""
    return tuple(get_args(literal))
