import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.commands.launch import main as launch_main
from pipeline.ml.ensemble import hard_vote, soft_vote


def test_majority_wins_per_image_in_order() -> None:
    preds = np.array([[1, 2, 3, 4], [1, 5, 3, 4], [0, 5, 3, 9]])
    assert hard_vote(preds).tolist() == [1, 5, 3, 4]


def test_tie_goes_to_best_ranked_member() -> None:
    # two-way tie: member 0 (best-ranked) says 7, member 1 says 8
    assert hard_vote(np.array([[7], [8]])).tolist() == [7]
    assert hard_vote(np.array([[8], [7]])).tolist() == [8]
    # three-way tie among 5 members: classes 1 and 2 have two votes each, the best-ranked
    # member voting for a tied class is member 1 (class 2): member 0's class 0 is not tied.
    assert hard_vote(np.array([[0], [2], [1], [1], [2]])).tolist() == [2]


def test_single_member_is_identity() -> None:
    preds = np.array([[3, 17, 0, 9]])
    assert hard_vote(preds).tolist() == [3, 17, 0, 9]


def test_rejects_empty() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        hard_vote(np.zeros((0, 3), dtype=int))


def test_soft_vote_keeps_the_members_confidence() -> None:
    """Two members lean weakly to class 1, one is sure of class 2: hard says 1, soft says 2."""
    weak = np.full(18, 0.25 / 16)
    weak[1], weak[2] = 0.4, 0.35
    sure = np.full(18, 0.05 / 16)
    sure[2], sure[1] = 0.9, 0.05
    members = np.stack([weak, weak, sure])[:, None, :]  # members × 1 image × 18
    assert hard_vote(members.argmax(axis=2)).tolist() == [1]
    assert soft_vote(members).tolist() == [2]
    tie = np.zeros((2, 1, 18))
    tie[0, 0, 7], tie[1, 0, 4] = 1.0, 1.0
    assert soft_vote(tie).tolist() == [4]  # an exact tie: the lower class
    with pytest.raises(ValueError, match="at least one member"):
        soft_vote(np.zeros((0, 3, 18)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "suite.vote.method=mean",
            r"suite.vote.method must be one of \['hard', 'soft'\], got 'mean'",
        ),
        ("suite.vote.top_k=0", "suite.vote.top_k must be at least 1, got 0"),
        ("suite.candidates.per_task.age=nosuch", "names model 'nosuch' for age"),
    ],
)
def test_a_bad_vote_setting_stops_the_launch_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    """Found at the vote, these would cost a whole night's training; launch refuses them first,
    on every cluster, before reading data or making a run (no data folder exists here)."""
    store = tmp_path / "store"
    for cluster in ("local", "slurm", "k8s"):
        argv = ["--cluster", cluster, "suite=seed", override, f"data.root={tmp_path / 'none'}",
                f"store.root={store}"]  # fmt: skip
        assert launch_main(argv) == 1
        assert re.search(message, capsys.readouterr().err)
    assert not store.exists()
