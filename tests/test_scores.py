"""Scores that measure the competition's task, and the choices made on them (issue 14): macro F1
over the classes present, val labels untouched by the training-label shift, the val fraction,
the best epoch chosen with the shipped predictor, frozen batch norm under torch.compile, age bands,
label fixes, per-model seeds, the CutMix label rule, early-stopping patience."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import f1_score
from torch import nn

from pipeline.commands.cli import run_job
from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.core.schema import drop_bands
from pipeline.domain.dataset import parse_folder_name
from pipeline.domain.labels import AgeThresholds, encode
from pipeline.domain.metrics import macro_f1
from pipeline.ml.augment import vertical_cutmix_with
from pipeline.ml.checkpoints import load_checkpoint
from pipeline.ml.inference import predict_probs
from pipeline.orchestration.checks import config_problems
from pipeline.orchestration.local import run_local
from pipeline.run.fingerprint import model_config
from pipeline.run.state import read_index, run_store
from pipeline.stages.prepare import prepare
from pipeline.stages.train import model_seed, select_rows, train_model

MakeCfg = Callable[..., DictConfig]


# --- 3. macro F1 ---------------------------------------------------------------------------------


def test_macro_f1_is_the_competitions_over_the_classes_present() -> None:
    """Val lacks classes 2..17. A errs into absent class 5, B errs within the present classes;
    both get 3 of 4 right. Over all 18 classes A outranked B (0.093 > 0.081)."""
    truth = np.array([0, 0, 1, 1])
    a, b = np.array([0, 0, 1, 5]), np.array([0, 1, 1, 1])
    assert macro_f1(truth, a) == pytest.approx(f1_score(truth, a, average="macro"))
    assert macro_f1(truth, b) == pytest.approx(f1_score(truth, b, average="macro"))
    assert macro_f1(truth, b) == pytest.approx((2 / 3 + 0.8) / 2)
    assert macro_f1(truth, a) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert macro_f1(truth, b) > macro_f1(truth, a)
    assert macro_f1(truth, truth) == 1.0 and macro_f1(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError, match=r"outside 0\.\.17"):
        macro_f1(truth, np.array([0, 0, 1, 18]))


# --- 1. the age shift changes training targets only ---------------------------------------------


def test_the_age_shift_relabels_training_targets_only(
    tiny_dataset: Path, make_cfg: MakeCfg
) -> None:
    cfg = make_cfg(tiny_dataset, "data.age_thresholds.old_from=40")
    prepare(cfg)
    index = read_index(run_store(cfg))
    competition, shifted = AgeThresholds(), AgeThresholds(30, 40)
    val, train = index[index["split"] == "val"], index[index["split"] == "train"]
    moved = val["age"].between(40, 59)
    assert moved.any() and train["age"].between(40, 59).any(), "the data must have such ages"
    assert (val["age_group"] == competition.groups(val["age"].to_numpy())).all()
    assert (train["age_group"] == shifted.groups(train["age"].to_numpy())).all()
    for rows in (val, train):
        assert (rows["label"] == rows["mask"] * 6 + rows["gender"] * 3 + rows["age_group"]).all()


# --- 7. label fixes -------------------------------------------------------------------------------


def test_a_label_fix_cannot_set_the_mask_of_a_whole_person_and_counts_real_changes(
    dataset_copy: Path, make_cfg: MakeCfg, tmp_path: Path
) -> None:
    folder = sorted(p for p in (dataset_copy / "train" / "images").iterdir() if p.is_dir())[0]
    person = parse_folder_name(folder.name)
    fix = tmp_path / "fix.csv"
    fix.write_text(f"person_id,mask\n{person.person_id},wear\n")
    with pytest.raises(DataError, match=r"fix.csv sets mask by person_id.*mask is per photo"):
        prepare(make_cfg(dataset_copy, f"data.label_fix={fix}"))
    gender = "female" if person.gender == 1 else "male"  # the gender it already has
    fix.write_text(f"person_id,gender,age\n{person.person_id},{gender},{person.age}\n")
    assert (
        prepare(make_cfg(dataset_copy, f"data.label_fix={fix}", "run_id=same"))["label_fixes"] == 0
    )
    fix.write_text(f"person_id,gender,age\n{person.person_id},{gender},{person.age + 1}\n")
    assert (
        prepare(make_cfg(dataset_copy, f"data.label_fix={fix}", "run_id=one"))["label_fixes"] == 7
    )


# --- 6. age bands, 10. patience, 8. seeds --------------------------------------------------------


def test_drop_ages_takes_several_bands_and_leaves_val_alone() -> None:
    ages = np.arange(18, 70)
    index = pd.DataFrame({"age": np.tile(ages, 2), "mask": 0,
                          "split": ["train"] * len(ages) + ["val"] * len(ages)})  # fmt: skip
    spec = OmegaConf.create({"mask_groups": None, "train": {"drop_ages": [[27, 29], [57, 59]]}})
    parts = select_rows(index, spec)
    kept = set(parts["train"]["age"])
    assert kept == set(ages) - {27, 28, 29, 57, 58, 59}
    assert len(parts["val"]) == len(ages)
    assert drop_bands([57, 59]) == [(57, 59)] and drop_bands(None) == []
    for bad in ("[59,57]", "[[27,29],[5]]", "[1,2,3]", "[27,x]", "[[a,b]]", "[27.5,29]"):
        problems = config_problems(load_config([f"train.drop_ages={bad}"]))
        assert [p.split(": ")[1] for p in problems] == ["must be null, one band [low, high] or a "
                "list of bands [[low, high], ...] of whole ages with low <= high"], bad  # fmt: skip


def test_early_stopping_patience_below_one_is_refused(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for good in ("null", "3"):
        assert config_problems(load_config([f"train.early_stopping_patience={good}"])) == []
    for bad in ("0", "-2", "1.5", "true"):
        problems = config_problems(load_config([f"train.early_stopping_patience={bad}"]))
        assert problems == [f"train.early_stopping_patience={bad}: must be a whole number >= 1, "
                            "or null"]  # fmt: skip
    store = tmp_path / "store"
    args = [f"data.root={tiny_dataset}", f"store.root={store}", "run_id=p0"]
    assert run_job("train", [*args, "train.early_stopping_patience=0"]) == 1
    assert "train.early_stopping_patience=0" in capsys.readouterr().err
    assert not store.exists()  # refused before anything is read or trained


def test_each_model_of_a_suite_has_its_own_deterministic_seed() -> None:
    names = ["single", "mask", "gender", "age", "age_masked", "age_unmasked"]
    seeds = [model_seed(42, n) for n in names]
    assert len(set(seeds)) == len(names)
    assert seeds == [model_seed(42, n) for n in names]
    assert model_seed(43, "mask") != model_seed(42, "mask")
    assert all(0 <= s < 2**31 for s in seeds)


# --- 9. the CutMix label rule -------------------------------------------------------------------


def test_vertical_cutmix_gives_the_mask_label_to_the_lower_face() -> None:
    """Image 0 (wear, male, <30) keeps its top 40 %; image 1 (not worn, female, >=60) gives the
    bottom. The mask is image 1's; gender and age mix 0.4 / 0.6."""
    images = torch.stack([torch.zeros(3, 10, 8), torch.ones(3, 10, 8)])
    labels = torch.tensor([encode(0, 0, 0), encode(2, 1, 2)])
    partner, cut = torch.tensor([1, 0]), torch.tensor([4, 4])
    soft = torch.nn.functional.one_hot(labels, 18).float()
    mixed, target = vertical_cutmix_with(images, soft, partner, cut, task="all")
    assert (mixed[0, :, :4] == 0).all() and (mixed[0, :, 4:] == 1).all()
    assert target[0, encode(2, 0, 0)] == pytest.approx(0.4)  # not worn (partner), male <30
    assert target[0, encode(2, 1, 2)] == pytest.approx(0.6)  # not worn, female >=60
    assert target[0].sum() == pytest.approx(1.0) and target[0, :12].sum() == 0  # mask: not worn
    mask_soft = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    _, mask_target = vertical_cutmix_with(images, mask_soft, partner, cut, task="mask")
    assert mask_target[0].tolist() == [0.0, 0.0, 1.0]
    age_soft = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    _, age_target = vertical_cutmix_with(images, age_soft, partner, cut, task="age")
    assert age_target[0].tolist() == pytest.approx([0.4, 0.0, 0.6])


# --- 5. the best epoch with the shipped predictor; TTA on an asymmetric input -------------------


class LeftVersusRight(nn.Module):
    """Logits from the mean of the left and of the right half: a left-right asymmetric model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        left, right = x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))
        return torch.stack([4 * left, 4 * right], dim=1)


def test_flip_tta_averages_an_image_and_its_mirror() -> None:
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    images[0, :, :, :4] = 255  # bright left half
    images[1, :, :, 4:] = 255  # its mirror image
    args = {"device": torch.device("cpu"), "precision": "fp32", "batch_size": 2}
    plain = predict_probs(LeftVersusRight(), images, tta_flip=False, **args)
    tta = predict_probs(LeftVersusRight(), images, tta_flip=True, **args)
    assert plain[0, 0] > 0.9 and plain[1, 1] > 0.9  # the model tells left from right
    assert np.allclose(tta, 0.5, atol=1e-6)  # each image averaged with its mirror
    assert np.allclose(tta[0], (plain[0] + plain[1]) / 2, atol=1e-6)


@pytest.mark.slow
@pytest.mark.v100
def test_the_best_epoch_is_chosen_with_the_predictor_that_is_shipped(
    tiny_dataset: Path, make_cfg: MakeCfg
) -> None:
    cfg = make_cfg(tiny_dataset, "train.epochs=3", "train.tta_flip=true", "suite=single")
    prepare(cfg)
    metrics = train_model(cfg, "single")
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert best["val_macro_f1"] == round(metrics["val"]["macro_f1"], 5)
    assert best["val_macro_f1"] == max(h["val_macro_f1"] for h in metrics["history"])


# --- 2. torch.compile keeps frozen batch norm frozen ---------------------------------------------


@pytest.mark.slow
def test_compiled_training_keeps_frozen_batch_norm_statistics(
    tiny_dataset: Path, make_cfg: MakeCfg
) -> None:
    """train.compile=true (about 90 s of compiling on 2 cores) with layer1 frozen: its batch-norm
    running statistics stay at their initial values (randomly initialised: mean 0, var 1), while
    a trained layer's move; the checkpoint keeps plain keys; compile is part of the fingerprint."""
    cfg = make_cfg(tiny_dataset, "train.compile=true", "model.freeze=[layer1]")
    result = run_local(cfg)
    state = load_checkpoint(run_store(cfg), "single")
    assert not any(k.startswith("_orig_mod.") for k in state) and "fc.weight" in state
    assert torch.equal(state["layer1.0.bn1.running_mean"], torch.zeros(64))
    assert torch.equal(state["layer1.0.bn1.running_var"], torch.ones(64))
    assert not torch.equal(state["layer2.0.bn1.running_mean"], torch.zeros(128))
    assert result["ensemble"]["val_macro_f1"] > 0
    plain = make_cfg(tiny_dataset, "model.freeze=[layer1]")
    assert model_config(cfg) != model_config(plain)
