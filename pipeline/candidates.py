"""Candidates: 18-class predictors built from the suite's models.

A candidate is one of
  - a single 18-class model:                {all: single}
  - a per-task combination:                 {mask: mask, gender: gender, age: age}
  - a conditional combination, the age model chosen per image by the predicted mask:
        {mask: mask, gender: gender, age_by_mask: {wear: age_m, incorrect: age_m, not_worn: age_n}}
A task slot may name a model of that task or an 18-class model (its probabilities are summed over
the other tasks). Without `suite.candidates`, every 18-class model is a candidate of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.config import model_specs
from pipeline.errors import ConfigError
from pipeline.labels import MASK_NAMES

SLOTS = ("all", "mask", "gender", "age", "age_by_mask")


@dataclass(frozen=True)
class Candidate:
    """Which model answers which task; `age_by_mask` maps mask code → age model."""

    name: str
    all: str | None = None
    mask: str | None = None
    gender: str | None = None
    age: str | None = None
    age_by_mask: tuple[str, str, str] | None = None

    def models(self) -> list[str]:
        """Every model this candidate reads, without repeats, in a stable order."""
        names = [self.all, self.mask, self.gender, self.age, *(self.age_by_mask or ())]
        return list(dict.fromkeys(n for n in names if n))


def candidate_specs(cfg: DictConfig) -> dict[str, Candidate]:
    """Parse and check `suite.candidates`; ConfigError saying what is wrong and what is valid."""
    specs = model_specs(cfg)
    raw = cfg.suite.get("candidates")
    if raw is None:
        found = {n: Candidate(n, all=n) for n, s in specs.items() if s.task == "all"}
        if not found:
            raise ConfigError("the suite has no 18-class model and no suite.candidates to combine")
        return found
    out = {}
    for name, entry in OmegaConf.to_container(raw).items():
        out[name] = parse_candidate(
            str(name), entry or {}, {n: str(s.task) for n, s in specs.items()}
        )
    if not out:
        raise ConfigError("suite.candidates is empty")
    return out


def parse_candidate(name: str, entry: dict, tasks: dict[str, str]) -> Candidate:
    """One candidate from its config entry, checked against the suite's models and tasks."""
    unknown = sorted(set(entry) - set(SLOTS))
    if unknown:
        raise ConfigError(f"candidate {name!r} has unknown key(s) {unknown}; valid: {list(SLOTS)}")

    def model_for(slot: str, model: str) -> str:
        if model not in tasks:
            raise ConfigError(
                f"candidate {name!r} names model {model!r} for {slot}, "
                f"which is not in suite.models {sorted(tasks)}"
            )
        wanted = "all" if slot == "all" else slot
        if tasks[model] not in (wanted, "all"):
            raise ConfigError(
                f"candidate {name!r}: model {model!r} predicts {tasks[model]!r}, "
                f"not {wanted!r} (or all)"
            )
        return model

    if "all" in entry:
        if set(entry) != {"all"}:
            raise ConfigError(f"candidate {name!r}: `all` stands alone, got {sorted(entry)}")
        return Candidate(name, all=model_for("all", entry["all"]))
    if not {"mask", "gender"} <= set(entry) or ("age" in entry) == ("age_by_mask" in entry):
        raise ConfigError(
            f"candidate {name!r} needs `all`, or `mask`, `gender` and one of `age` / "
            f"`age_by_mask`; got {sorted(entry)}"
        )
    by_mask = None
    if "age_by_mask" in entry:
        routes = entry["age_by_mask"] or {}
        if sorted(routes) != sorted(MASK_NAMES):
            raise ConfigError(
                f"candidate {name!r}: age_by_mask needs exactly the keys {list(MASK_NAMES)}, "
                f"got {sorted(routes)}"
            )
        by_mask = tuple(model_for("age", routes[m]) for m in MASK_NAMES)
    return Candidate(
        name,
        mask=model_for("mask", entry["mask"]),
        gender=model_for("gender", entry["gender"]),
        age=model_for("age", entry["age"]) if "age" in entry else None,
        age_by_mask=by_mask,
    )


def task_probs(probs: np.ndarray, model_task: str, task: str) -> np.ndarray:
    """Probabilities over `task`'s classes from a model of `model_task` (18-class: marginals)."""
    if model_task == task:
        return probs
    if model_task != "all":
        raise ValueError(f"a {model_task!r} model cannot answer {task!r}")
    cube = probs.reshape(len(probs), 3, 2, 3)  # mask × gender × age
    axes = {"mask": (2, 3), "gender": (1, 3), "age": (1, 2)}[task]
    return cube.sum(axis=axes)


def candidate_probs(
    c: Candidate, probs: dict[str, np.ndarray], tasks: dict[str, str]
) -> np.ndarray:
    """A candidate's distribution over the 18 classes (images × 18) from its models' aligned
    probabilities: an 18-class model's own; for a combination, the product of its mask, gender and
    age probabilities (the tasks taken as independent), the age model of a conditional candidate
    chosen per image by the candidate's predicted mask. Its argmax is the candidate's answer."""
    if c.all:
        return probs[c.all]
    assert c.mask and c.gender  # guaranteed by parse_candidate

    def part(model: str, task: str) -> np.ndarray:
        return task_probs(probs[model], tasks[model], task)

    mask = part(c.mask, "mask")
    gender = part(c.gender, "gender")
    if c.age:
        age = part(c.age, "age")
    else:
        assert c.age_by_mask
        routes = mask.argmax(axis=1)
        age = np.zeros((len(mask), 3), dtype=np.float64)
        for code, model in enumerate(c.age_by_mask):
            routed = routes == code
            age[routed] = part(model, "age")[routed]
    joint = mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]
    return joint.reshape(len(mask), 18)


def predict_candidate(
    c: Candidate, probs: dict[str, np.ndarray], tasks: dict[str, str]
) -> np.ndarray:
    """18-class predictions of a candidate: each task's most probable class (the age of a
    conditional candidate from the model its predicted mask routes to)."""
    return candidate_probs(c, probs, tasks).argmax(axis=1)
