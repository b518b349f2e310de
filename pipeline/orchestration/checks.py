"""The whole configuration checked in one pass, every problem at once (docs/configuration.md).

`check_config(cfg)` runs at launch before anything else (no fingerprint, run id, run folder or
job exists yet) and again at the start of every job, since a job can be started by hand. It
raises one ConfigError with one line per problem, each naming the key, the value given and what
is valid. First the schema (`pipeline/core/schema.py`: types, ranges, choices, unknown keys),
then what a type cannot say, here: names only torchvision knows, rules across keys (fp16 needs
CUDA, the age thresholds in order, frozen layers need weights, ...), and the suite's models and
candidates parsed as the stages parse them, so a config that passes does not fail later on a
value. A suite entry's keys are checked by the same schema under their own names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from pipeline.core.config import model_specs, plain_config
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.schema import (
    ContainerRuntime,
    K8sRole,
    Model,
    Train,
    choices,
    problems_error,
    schema_problems,
    show,
)

#: kept for the back-ends that import them from here
CONTAINER_RUNTIMES = choices(ContainerRuntime)
K8S_ROLES = choices(K8sRole)


#: The full name of a key of a rule's values: `arch` is `model.arch` for the model group and
#: `suite.models.<name>.arch` for a suite entry; `train.lr` is `train.lr` and
#: `suite.models.<name>.train.lr`.
KeyName = Callable[[str], str]
#: A rule across keys: (the config, or one model's spec with its `train`; its keys' names) ->
#: a problem, or None.
Rule = Callable[[dict[str, Any], KeyName], str | None]


def _architecture(spec: dict[str, Any], key: KeyName) -> str | None:
    """`arch` when it is not one of torchvision's classification models: the closest names."""
    from pipeline.ml.arch_names import classification_archs

    arch, valid = spec["arch"], classification_archs()
    if arch in valid:
        return None
    near = difflib.get_close_matches(arch, valid, n=4, cutoff=0.5)
    hint = f"; closest: {', '.join(near)}" if near else ""
    return (
        f"{key('arch')}={show(arch)}: must be one of torchvision's classification models "
        f"({len(valid)} names{hint})"
    )


def _freeze_without_weights(spec: dict[str, Any], key: KeyName) -> str | None:
    """A model that freezes layers it did not load: they would stay random."""
    if not spec["freeze"] or spec["weights"]:
        return None
    return (
        f"{key('freeze')}={show(spec['freeze'])} with {key('weights')}=null: frozen layers would "
        f"keep their random initialisation; set {key('weights')} to a pretrained state dict "
        "(path or s3:// URI), or use freeze_if_pretrained, which freezes only when weights are "
        "given"
    )


def _mask_groups_off_age(spec: dict[str, Any], key: KeyName) -> str | None:
    """Mask groups on a model that does not answer age (they only route the age models)."""
    if spec["mask_groups"] is None or spec["task"] == "age":
        return None
    return (
        f"{key('mask_groups')}={show(spec['mask_groups'])} with {key('task')}="
        f"{show(spec['task'])}: mask_groups only applies to age models (task: age)"
    )


def _cut_above_crop(spec: dict[str, Any], key: KeyName) -> str | None:
    """Vertical CutMix whose cut range (fractions of the photo) lies wholly above the centre crop
    the model sees: no row to cut at (pipeline.ml.augment.crop_rows)."""
    augment, crop = spec["train"]["augment"], spec["train"]["center_crop"]
    if not augment["cutmix_vertical"] or crop is None:
        return None
    cut = augment["cutmix_cut_range"]
    if cut[1] > (1.0 - crop[0]) / 2.0:
        return None
    return (
        f"{key('train.augment.cutmix_cut_range')}={show(cut)} with {key('train.center_crop')}="
        f"{show(crop)}: the cut range lies above the crop; lower the range or crop less"
    )


def _fp16_on_cpu(config: dict[str, Any], key: KeyName) -> str | None:
    """fp16 autocast needs CUDA."""
    if config["train"]["precision"] != "fp16" or config["train"]["device"] != "cpu":
        return None
    return (
        "train.precision='fp16' with train.device='cpu': fp16 needs a CUDA device; use bf16 "
        "or fp32 on a CPU, or train.device=cuda|auto"
    )


def _age_order(config: dict[str, Any], key: KeyName) -> str | None:
    """The training age groups' boundaries in order (the domain's own rule)."""
    from pipeline.domain.labels import AgeThresholds

    ages = config["data"]["age_thresholds"]
    try:
        AgeThresholds(**ages)
    except DataError as e:
        return f"data.age_thresholds={show(ages)}: {e}"
    return None


def _webhook(config: dict[str, Any], key: KeyName) -> str | None:
    """notify.url must be a webhook URL (the reason never quotes its path, maybe its secret)."""
    from pipeline.run.notify import check_notify_url

    url = config["notify"]["url"]
    reason = url and check_notify_url(url)
    return f"notify.url={show(url)}: {reason}" if reason else None


#: Rules across one model's keys (the `model` group with `train`, then each suite entry), with
#: the keys each reads: a rule is skipped while one of them has a problem of its own.
MODEL_RULES: list[tuple[tuple[str, ...], Rule]] = [
    (("arch",), _architecture),
    (("freeze", "weights"), _freeze_without_weights),
    (("mask_groups", "task"), _mask_groups_off_age),
    (("train.augment", "train.center_crop"), _cut_above_crop),
]
#: Rules across the run's keys.
RUN_RULES: list[tuple[tuple[str, ...], Rule]] = [
    (("train.precision", "train.device"), _fp16_on_cpu),
    (("data.age_thresholds",), _age_order),
    (("notify.url",), _webhook),
]


def _run_key(key: str) -> str:
    return key


def _model_key(key: str) -> str:
    return key if key.startswith("train.") else f"model.{key}"


def _entry_key(name: str) -> KeyName:
    return lambda key: f"suite.models.{name}.{key}"


def _key(problem: str) -> str:
    """The key a problem line names (`train.epochs='abc': ...` -> train.epochs)."""
    return problem.split(":", 1)[0].split("=", 1)[0]


def _overlap(key: str, other: str) -> bool:
    """Whether one of two dotted keys is the other or lies under it."""
    return key == other or key.startswith(f"{other}.") or other.startswith(f"{key}.")


def _apply(
    rules: list[tuple[tuple[str, ...], Rule]], values: dict[str, Any], key: KeyName,
    problems: list[str],
) -> list[str]:  # fmt: skip
    """The problems `rules` find in `values`, skipping a rule that reads a key in `problems`."""
    broken = [_key(p) for p in problems]
    found = []
    for keys, rule in rules:
        if any(_overlap(b, key(k)) for b in broken for k in keys):
            continue
        problem = rule(values, key)
        if problem:
            found.append(problem)
    return found


def _suite(cfg: DictConfig, config: dict[str, Any], problems: list[str]) -> list[str]:
    """The suite's models and candidates, parsed as the stages parse them. A model's own keys
    are checked by the schema; a problem it inherits from `model` or `train` is reported once,
    under the group's name."""
    from pipeline.ml.ensemble import candidate_specs

    try:
        specs = {name: plain_config(spec) for name, spec in model_specs(cfg).items()}
    except ConfigError as e:
        return [f"suite.models: {e}"]
    found: list[str] = []
    top_broken = any(_key(p).startswith(("model.", "train.")) for p in problems)
    top = {**config["model"], "train": config["train"]}
    for name, spec in specs.items():
        entry = config["suite"]["models"][name] or {}
        prefix = f"suite.models.{name}."
        own = set(entry) - {"train"}
        model_part = {k: v for k, v in spec.items() if k != "train"}
        own_problems = schema_problems(model_part, Model, prefix, only=own)
        own_problems += schema_problems(
            spec["train"], Train, f"{prefix}train.", only=set(entry.get("train") or {})
        )
        found += own_problems
        if own_problems or top_broken or entry == {}:
            continue  # the rules need valid values; an entry that sets nothing inherits all
        inherited = set(_apply(MODEL_RULES, top, _entry_key(name), []))
        found += [p for p in _apply(MODEL_RULES, spec, _entry_key(name), []) if p not in inherited]
    if config["model_name"] is not None and config["model_name"] not in specs:
        found.append(f"model_name={show(config['model_name'])}: must be one of {', '.join(specs)}")
    keys = [_key(p) for p in problems + found]
    if not any(k.endswith("task") or k.startswith("suite.candidates") for k in keys):
        try:
            candidate_specs(cfg)  # each candidate names models of this suite, by task
        except ConfigError as e:
            found.append(str(e))
    return found


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of `cfg`, one line each (empty when it is valid): the schema's, then the
    rules' whose keys have none of their own, then the suite's."""
    config = plain_config(cfg)
    problems = schema_problems(config)
    problems += _apply(RUN_RULES, config, _run_key, problems)
    if "model" in config and "train" in config:
        top = {**config["model"], "train": config["train"]}
        problems += _apply(MODEL_RULES, top, _model_key, problems)
    if not any(_key(p) in ("suite", "suite.models", "model", "train") for p in problems):
        problems += _suite(cfg, config, problems)
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem of `cfg`, one per line; return when valid."""
    problems = config_problems(cfg)
    if problems:
        raise problems_error(problems)
