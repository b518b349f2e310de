"""Shared fixtures: a tiny generated dataset and the real config shrunk to test size."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from pipeline.core.config import load_config
from pipeline.tools.synth import generate

pytest_plugins = ["tests.seaweed"]

#: Small enough to train in seconds on 2 cores, large enough for a by-person split of every stratum.
TINY_PEOPLE, TINY_EVAL_PEOPLE, TINY_SIZE = 24, 6, (64, 48)
TINY_OVERRIDES = [
    "train.epochs=1",
    "train.image_size=[32,24]",
    "train.batch_size=32",
    "train.num_threads=2",
    "store.workers=4",
    "tracking.mode=disabled",
]


#: The holdout salt of every store a test makes in this process (a new store draws a random one):
#: the same people are held out on every machine, so a test's split never depends on chance.
TEST_SALT = "5eed" * 8


@pytest.fixture(autouse=True)
def fixed_holdout_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.run.holdout.new_salt", lambda: TEST_SALT)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset in the competition layout (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    generate(
        out, people=TINY_PEOPLE, eval_people=TINY_EVAL_PEOPLE, seed=7, size=TINY_SIZE, workers=1
    )
    return out


@pytest.fixture
def dataset_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    out = tmp_path / "data"
    shutil.copytree(tiny_dataset, out)
    return out


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config, shrunk for tests, with its store under tmp_path."""

    def make(data_root: Path | str, *overrides: str, store: str | None = None) -> DictConfig:
        base: Sequence[str] = [
            f"data.root={data_root}",
            f"store.root={store or tmp_path / 'store'}",
            *TINY_OVERRIDES,
        ]
        return load_config([*base, *overrides])

    return make
