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

from pipeline.core.config import model_specs
from pipeline.core.errors import ConfigError
from pipeline.core.schema import VoteMethod, choices
from pipeline.domain.labels import (
    MASK_NAMES,
    NUM_CLASSES,
    TASK_SIZES,
    decode_array,
    encode_array,
)

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
    entries = OmegaConf.to_container(raw) if isinstance(raw, DictConfig) else raw
    if not isinstance(entries, dict):
        raise ConfigError(f"suite.candidates must map candidate names to models, got {entries!r}")
    out: dict[str, Candidate] = {}
    for name, entry in entries.items():
        out[str(name)] = parse_candidate(
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
    by_mask: tuple[str, str, str] | None = None
    if "age_by_mask" in entry:
        routes = entry["age_by_mask"] or {}
        if sorted(routes) != sorted(MASK_NAMES):
            raise ConfigError(
                f"candidate {name!r}: age_by_mask needs exactly the keys {list(MASK_NAMES)}, "
                f"got {sorted(routes)}"
            )
        wear, incorrect, not_worn = (model_for("age", routes[m]) for m in MASK_NAMES)
        by_mask = (wear, incorrect, not_worn)
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


#: How the members' answers are combined (suite.vote.method): `hard`, the seed's majority of the
#: members' 18-class answers; `hard_per_task`, a majority for mask, gender and age separately;
#: `soft`, the mean of the members' 18-class distributions.
VOTE_METHODS = choices(VoteMethod)


def hard_vote(ranked_preds: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Majority class per column of `ranked_preds` (members × images, best-ranked member first).

    Ties go to the tied class predicted by the best-ranked member.
    """
    preds = np.asarray(ranked_preds, dtype=np.int64)
    if preds.ndim != 2 or preds.shape[0] == 0:
        raise ValueError(
            f"need a members × images array with at least one member, got {preds.shape}"
        )
    n = preds.shape[1]
    counts = np.zeros((n, num_classes), dtype=np.int64)
    cols = np.arange(n)
    for row in preds:
        np.add.at(counts, (cols, row), 1)
    top = counts.max(axis=1)
    result = np.full(n, -1, dtype=np.int64)
    for row in preds:  # best-ranked first: the first member voting for a top class decides
        open_ = (result < 0) & (counts[cols, row] == top)
        result[open_] = row[open_]
    return result


def soft_vote(member_probs: np.ndarray) -> np.ndarray:
    """Class of highest mean probability per image over `member_probs` (members × images × 18);
    an exact tie goes to the lower class number."""
    stacked = np.asarray(member_probs, dtype=np.float64)
    if stacked.ndim != 3 or stacked.shape[0] == 0:
        raise ValueError(
            f"need a members × images × classes array with at least one member, got {stacked.shape}"
        )
    return stacked.mean(axis=0).argmax(axis=1)


def vote_shares(member_answers: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Share of the members (rows of `member_answers`, members × images) voting for each class:
    images × classes, rows summing to 1."""
    members = np.asarray(member_answers)
    shares = np.zeros((members.shape[1], num_classes), dtype=np.float64)
    for row in members:
        shares[np.arange(members.shape[1]), row] += 1.0
    return shares / max(len(members), 1)


def per_task_vote(ranked_preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority per task of 18-class answers (members × images, best-ranked member first): mask,
    gender and age each voted separately by the members' answers for that task, a tie going to
    the tied value of the best-ranked member. Returns (shares, answers): the product of the
    per-task vote shares (images × 18) and the classes composed of the three majorities.

    Members that share a model agree on its task; a joint-label majority can then split: ballots
    F/30-59, F/60+, M/30-59, F/<30, M/30-59 elect M/30-59 although three members say female.
    Voted per task they elect F/30-59.
    """
    parts = decode_array(np.asarray(ranked_preds, dtype=np.int64))
    winners = {task: hard_vote(parts[task], n) for task, n in TASK_SIZES.items()}
    shares = np.ones((parts["mask"].shape[1], 1), dtype=np.float64)
    for task, n in TASK_SIZES.items():  # mask × gender × age, the order of the class code
        shares = (shares[:, :, None] * vote_shares(parts[task], n)[:, None, :]).reshape(
            len(shares),
            shares.shape[1] * n,  # not -1: no image at all (no eval photo) is valid
        )
    answers = encode_array(winners["mask"], winners["gender"], winners["age"])
    return shares, answers


def combine(method: str, member_dists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The vote of members (best-ranked first) given their 18-class distributions (images × 18):
    (probabilities, answers). Soft: the mean distribution and its argmax; hard: the members' vote
    shares and the hard vote of their argmaxes; hard_per_task: the product of the per-task vote
    shares and the per-task majorities (`per_task_vote`). One member gives its own answers."""
    stacked = np.stack(member_dists)
    if method == "soft":
        return stacked.mean(axis=0), soft_vote(stacked)
    votes = stacked.argmax(axis=2)
    if method == "hard":
        return vote_shares(votes), hard_vote(votes)
    if method == "hard_per_task":
        return per_task_vote(votes)
    raise ConfigError(f"suite.vote.method must be one of {list(VOTE_METHODS)}, got {method!r}")
