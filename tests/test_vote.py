import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.commands.launch import main as launch_main
from pipeline.core.config import load_config
from pipeline.domain.labels import NUM_CLASSES
from pipeline.domain.metrics import bootstrap_by_person, macro_f1
from pipeline.ml.ensemble import combine, hard_vote, per_task_vote, soft_vote
from pipeline.stages.vote import VoteSettings, fallback_decision, vote_settings


def cls(mask: int, gender: str, age: int) -> int:
    """The class of mask (0 wear, 1 incorrect, 2 not worn), gender (M/F) and age group 0..2."""
    return mask * 6 + {"M": 0, "F": 1}[gender] * 3 + age


def test_the_joint_label_vote_splits_where_the_per_task_vote_does_not() -> None:
    """Issue 24: ballots F/30-59, F/60+, M/30-59, F/<30, M/30-59 (best-ranked first). Three
    members say female, yet the joint-label majority elects M/30-59 (its only repeated label);
    voted per task: female (3 of 5), 30-59 (3 of 5), the mask all agree on."""
    ballots = np.array([[cls(0, "F", 1)], [cls(0, "F", 2)], [cls(0, "M", 1)], [cls(0, "F", 0)],
                        [cls(0, "M", 1)]])  # fmt: skip
    assert hard_vote(ballots).tolist() == [cls(0, "M", 1)]
    shares, answers = per_task_vote(ballots)
    assert answers.tolist() == [cls(0, "F", 1)]
    assert np.allclose(shares.sum(axis=1), 1.0) and shares.argmax(axis=1).tolist() == [
        cls(0, "F", 1)
    ]
    # the default method of every packaged suite is a hard vote, and the per-task one
    for suite in ("seed", "single"):
        assert vote_settings(load_config([f"suite={suite}"])).method == "hard_per_task"


def test_per_task_vote_ties_go_to_the_best_ranked_member_task_by_task() -> None:
    # gender 2-2 (best-ranked member says M), age 2-2 between <30 and 60+ (best says 60+)
    ballots = np.array([[cls(1, "M", 2)], [cls(1, "F", 0)], [cls(1, "F", 2)], [cls(1, "M", 0)]])
    assert per_task_vote(ballots)[1].tolist() == [cls(1, "M", 2)]
    one = np.array([[3, 17, 0]])
    assert per_task_vote(one)[1].tolist() == [3, 17, 0]  # one member: its own answers


def test_every_method_of_one_member_is_that_member() -> None:
    rng = np.random.default_rng(1)
    dist = rng.dirichlet(np.ones(NUM_CLASSES), size=20)
    for method in ("hard", "hard_per_task", "soft"):
        assert combine(method, [dist])[1].tolist() == dist.argmax(axis=1).tolist()


def test_bootstrap_by_person_matches_the_metric_and_pairs_the_difference() -> None:
    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(120), 7)
    truth = rng.integers(0, NUM_CLASSES, len(persons))
    good = np.where(rng.random(len(truth)) < 0.8, truth, rng.integers(0, NUM_CLASSES, len(truth)))
    worse = np.where(rng.random(len(truth)) < 0.5, truth, good)
    worse = np.where(rng.random(len(truth)) < 0.3, (truth + 1) % NUM_CLASSES, worse)
    out = bootstrap_by_person(truth, {"good": good, "worse": worse}, persons, reference="good")
    for name, pred in (("good", good), ("worse", worse)):
        assert out[name]["macro_f1"] == pytest.approx(macro_f1(truth, pred))
        assert out[name]["low"] < out[name]["macro_f1"] < out[name]["high"]
    assert out["good"]["diff"] == 0.0 and out["good"]["diff_low"] == out["good"]["diff_high"] == 0
    assert out["worse"]["diff"] < 0 and out["worse"]["diff_high"] < 0  # paired: clearly worse
    # by person: a person's photos move together, so the interval is wider than by photo
    by_photo = bootstrap_by_person(truth, {"good": good}, np.arange(len(truth)))
    clustered = np.repeat(np.where(rng.random(120) < 0.8, 1, 0), 7).astype(bool)
    lumpy = np.where(clustered, truth, (truth + 1) % NUM_CLASSES)
    width = {
        by: bootstrap_by_person(truth, {"x": lumpy}, groups)["x"]
        for by, groups in (("person", persons), ("photo", np.arange(len(truth))))
    }
    assert width["person"]["high"] - width["person"]["low"] > 1.5 * (
        width["photo"]["high"] - width["photo"]["low"]
    )
    assert by_photo["good"]["macro_f1"] == out["good"]["macro_f1"]
    with pytest.raises(ValueError, match="reference"):
        bootstrap_by_person(truth, {"good": good}, persons, reference="nosuch")


def test_the_best_member_is_submitted_alone_only_when_it_beats_the_vote_on_val() -> None:
    settings = VoteSettings(top_k=5, method="hard_per_task", fallback_margin=0.0, candidates={})
    behind = {"macro_f1": 0.60, "low": 0.57, "high": 0.63, "diff": -0.02, "diff_low": -0.04,
              "diff_high": 0.0}  # fmt: skip
    ahead = {**behind, "diff": 0.01, "diff_low": -0.01, "diff_high": 0.03}
    decision = fallback_decision(settings, "per_task", behind, 5)  # type: ignore[arg-type]
    assert decision["applied"] and "per_task submitted alone" in decision["reason"]
    assert "-0.0200 [-0.0400, +0.0000]" in decision["reason"]
    assert not fallback_decision(settings, "per_task", ahead, 5)["applied"]  # type: ignore[arg-type]
    always = VoteSettings(top_k=5, method="hard", fallback_margin=None, candidates={})
    assert not fallback_decision(always, "per_task", behind, 5)["applied"]  # type: ignore[arg-type]
    loose = VoteSettings(top_k=5, method="hard", fallback_margin=0.03, candidates={})
    assert not fallback_decision(loose, "per_task", behind, 5)["applied"]  # type: ignore[arg-type]


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
            "suite.vote.method='mean': must be one of hard, hard_per_task, soft",
        ),
        ("suite.vote.top_k=0", "suite.vote.top_k=0: must be a whole number >= 1"),
        (
            "suite.vote.fallback_margin=-0.1",
            r"suite.vote.fallback_margin=-0.1: must be a number in \[0.0, 1.0\), or null",
        ),
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
