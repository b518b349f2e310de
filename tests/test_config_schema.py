"""The configuration's schema (pipeline/core/schema.py): a misspelt key is answered with the key
it was meant to be, every problem is one line before any run folder exists, and the schema, the
packaged YAML and the code that implements each choice agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import ConfigAttributeError

from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config, plain_config
from pipeline.core.schema import (
    K8sRole,
    K8sSecrets,
    Loss,
    MaskGroup,
    Task,
    choices,
    schema_problems,
)
from pipeline.domain.labels import MASK_NAMES
from pipeline.ml.losses import LOSS_NAMES
from pipeline.ml.models import TASKS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("override", "meant"),
    [
        ("train.epoch=1", "train.epochs"),
        ("data.val_fraktion=0.1", "data.val_fraction"),
        ("train.augment.hflp=false", "train.augment.hflip"),
        ("+model.wieghts=w.pt", "model.weights"),
        ("suit=seed", "suite"),
    ],
)
def test_a_misspelt_key_is_answered_with_the_closest_valid_key(
    override: str, meant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    assert launch_main([f"store.root={store}", override]) == 1
    err = capsys.readouterr().err
    key, value = override.lstrip("+").split("=")
    assert err.splitlines() == [
        "error: the configuration has 1 problem:",
        f"  {key}={value if value[0].isdigit() or value == 'false' else repr(value)}: "
        f"unknown key; did you mean {meant}?",
    ], err
    assert "+" + key not in err  # not Hydra's advice to add the misspelt key
    assert not store.exists()


def test_a_misspelt_key_a_wrong_type_and_a_bad_value_are_one_line_each_before_any_run(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """`python -m pipeline.launch` as a user runs it: exit 1, one line per problem naming the
    key and what is valid, and no run folder in the store."""
    store = tmp_path / "store"
    (store / "data").mkdir(parents=True)  # a store that exists: only runs/ must not appear
    bad = ["train.epoch=1", "train.batch_size=abc", "suite.vote.method=median"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.launch", f"data.root={tiny_dataset}",
         f"store.root={store}", *bad],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        "error: the configuration has 3 problems:",
        "  train.batch_size='abc': must be a whole number >= 2",
        "  train.epoch=1: unknown key; did you mean train.epochs?",
        "  suite.vote.method='median': must be one of hard, hard_per_task, soft",
    ], done.stderr
    assert not (store / "runs").exists() and sorted(p.name for p in store.iterdir()) == ["data"]


def test_a_key_the_yaml_lacks_is_reported_as_missing() -> None:
    """The schema and the packaged YAML hold the same keys: each YAML key has a type here, and
    a key deleted from the YAML is reported rather than read as null by a stage."""
    problems = schema_problems(plain_config(load_config(["~train.compile"])))
    assert problems == ["train.compile: missing: every key of the schema needs a value "
                        "(null where allowed)"]  # fmt: skip


def test_the_composed_config_refuses_a_key_it_lacks() -> None:
    cfg = load_config([])
    with pytest.raises(ConfigAttributeError):
        cfg.train.epoch = 3  # struct mode: a misspelt key in code fails where it is written
    cfg.train.epochs = 3


def test_the_schema_names_what_the_code_implements() -> None:
    assert set(choices(Task)) == set(TASKS)
    assert choices(MaskGroup) == MASK_NAMES
    assert set(Loss.model_fields) == set(LOSS_NAMES)
    assert tuple(K8sSecrets.model_fields) == choices(K8sRole)


def test_a_command_that_only_reads_the_store_refuses_a_misspelt_key_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.commands.runs import main as runs_main

    assert runs_main(["list", f"store.rot={tmp_path}"]) == 1  # not the default store, silently
    err = capsys.readouterr().err
    assert "store.rot=" in err and "unknown key; did you mean store.root?" in err
