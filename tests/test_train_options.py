"""Per-model training options: which rows train, sampling, and suite model configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import load_config, model_specs
from pipeline.core.errors import ConfigError
from pipeline.orchestration.checks import config_problems
from pipeline.stages.train import batch_order, make_scheduler, select_rows


def toy_index() -> pd.DataFrame:
    rows = []
    for person, age in enumerate([25, 45, 56, 57, 58, 59, 60, 33, 58, 21]):
        split = "val" if person >= 7 else "train"
        for mask in (0, 0, 0, 0, 0, 1, 2):
            rows.append({"person_id": str(person), "age": age, "mask": mask, "split": split})
    return pd.DataFrame(rows)


def spec_for(*overrides: str):
    cfg = load_config(["suite=seed", *overrides])
    return model_specs(cfg)


def test_dropped_ages_are_absent_from_training_but_kept_in_validation() -> None:
    spec = spec_for("train.drop_ages=[57,59]")["single"]
    parts = select_rows(toy_index(), spec)
    assert not parts["train"]["age"].between(57, 59).any()
    assert set(parts["train"]["age"]) == {25, 45, 56, 60}
    assert 58 in set(parts["val"]["age"])  # validation still measures the band


def test_conditional_models_train_on_their_mask_groups_only() -> None:
    specs = spec_for()
    masked = select_rows(toy_index(), specs["age_masked"])
    unmasked = select_rows(toy_index(), specs["age_unmasked"])
    assert set(masked["train"]["mask"]) == {0, 1} and set(masked["val"]["mask"]) == {0, 1}
    assert set(unmasked["train"]["mask"]) == {2} and set(unmasked["val"]["mask"]) == {2}


def test_bad_drop_band_is_rejected() -> None:
    problems = config_problems(load_config(["train.drop_ages=[59,57]"]))
    assert len(problems) == 1 and problems[0].startswith("train.drop_ages=[59, 57]: must be null")


def test_balanced_sampling_evens_out_classes() -> None:
    targets = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    generator = torch.Generator().manual_seed(0)
    drawn = targets[batch_order(targets, 3, True, generator)]
    shares = np.bincount(drawn.numpy(), minlength=3) / len(drawn)
    assert np.all(np.abs(shares - 1 / 3) < 0.06), shares
    plain = batch_order(targets, 3, False, generator)
    assert sorted(plain.tolist()) == list(range(1000))


def test_seed_suite_models_and_per_model_train_overrides() -> None:
    specs = spec_for("train.epochs=3")
    assert set(specs) == {"single", "mask", "gender", "age", "gender_b", "age_b", "gender_c",
                          "age_c", "age_masked", "age_unmasked", "single_lb", "age_masked_focal",
                          "age_unmasked_focal"}  # fmt: skip
    # model a freezes layer1 and layer2 only when pretrained weights are given (issue 24)
    assert specs["single"].freeze == [] and specs["single"].weights is None
    assert list(specs["single"].freeze_if_pretrained) == ["layer1", "layer2"]
    assert specs["single_lb"].freeze == [] and specs["single_lb"].train.loss.f1 == 0.5
    assert list(specs["single_lb"].train.drop_ages) == [[27, 29], [57, 59]]
    assert specs["age_masked_focal"].train.augment.hflip  # a nested override keeps the rest
    assert list(specs["mask"].train.center_crop) == [0.586, 0.521]
    assert specs["single"].train.center_crop is None
    assert all(s.train.epochs == 3 for s in specs.values())  # run-wide keys reach every model


def test_suite_models_cannot_override_run_wide_keys() -> None:
    cfg = load_config(["+suite.models.single.train.epochs=99"])
    with pytest.raises(ConfigError, match=r"cannot set train key\(s\) \['epochs'\]"):
        model_specs(cfg)
    cfg = load_config(["+suite.models.single.depth=3"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['depth'\]"):
        model_specs(cfg)


def test_schedulers() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = make_scheduler(optimizer, "cosine", 4)
    for _ in range(4):
        optimizer.step()
        cosine.step()
    assert optimizer.param_groups[0]["lr"] < 1e-6
    assert make_scheduler(optimizer, "none", 4) is None
    # an unknown name never reaches the stage: the schema refuses it at launch and job start
    assert config_problems(load_config(["train.scheduler=linear"])) == [
        "train.scheduler='linear': must be one of none, cosine, step"
    ]
