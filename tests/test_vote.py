import numpy as np
import pytest

from pipeline.vote import hard_vote


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
