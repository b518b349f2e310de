"""The run report's comparison with the champion (gate.json): what it shows, in which order, that
store text is escaped, and that `render` places it once the gate has decided."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.run import report
from pipeline.run.report import comparison_section, read_comparison, render
from pipeline.run.results import GateRecord, VoteResult
from pipeline.storage.run_layout import GATE_KEY, INDEX_KEY
from pipeline.storage.store import LocalStore

EVIL_IMAGE = "<img src=x onerror=alert(1)>"
EVIL_REASON = "held: worse on the holdout <script>alert('x')</script>"


def held_gate() -> GateRecord:
    """A held, compared gate.json with hostile text in an image id and in the reason."""
    return {
        "run_id": "run-2",
        "decision": "held",
        "compared": True,
        "reason": EVIL_REASON,
        "champion": "run-1",
        "tolerance": 0.0,
        "decided": "2024-05-01T03:00:00Z",
        "holdout": {"fraction": 0.15, "people": 42, "photos": 294},
        "challenger": {
            "macro_f1": 0.6123,
            "low": 0.59,
            "high": 0.634,
            "diff": -0.0312,
            "diff_low": -0.052,
            "diff_high": -0.011,
        },
        "champion_score": {"macro_f1": 0.6435, "low": 0.621, "high": 0.665},
        "per_class": [
            {
                "name": "wear/male/<30",
                "challenger": 0.8,
                "champion": 0.7,
                "delta": 0.1,
                "support": 30,
            },
            {
                "name": "incorrect/female/>=60",
                "challenger": 0.2,
                "champion": 0.5,
                "delta": -0.3,
                "support": 5,
            },
            {
                "name": "not wear/female/30-59",
                "challenger": 0.6,
                "champion": 0.65,
                "delta": -0.05,
                "support": 12,
            },
        ],
        "churn": {
            "compared": 1200,
            "changed": 57,
            "share": 57 / 1200,
            "shown": [
                {"image_id": EVIL_IMAGE, "champion": "4", "challenger": "10"},
                {"image_id": "cafe01.jpg", "champion": "0", "challenger": "1"},
            ],
        },
        "data_changes": {
            "people_added": 3,
            "people_removed": 1,
            "photos_added": 21,
            "photos_removed": 7,
            "people_added_shown": ["000101", "000102"],
            "people_removed_shown": ["000007"],
        },
        "class_counts": {
            "classes": ["wear/male/<30", "wear/female/<30"],
            "champion": [100, 80],
            "challenger": [104, 77],
        },
    }


def first_run_gate() -> GateRecord:
    """A store's first run: nothing to compare against."""
    return {
        "run_id": "run-1",
        "decision": "published",
        "compared": False,
        "reason": "published: no champion yet (first run of this store)",
        "champion": None,
        "tolerance": 0.0,
        "decided": "2024-04-30T03:00:00Z",
        "holdout": {"fraction": 0.1, "people": 28, "photos": 196},
    }


def table(page: str, css: str) -> str:
    """The HTML of the one table with class `css`."""
    found = re.findall(rf'<table class="{css}">.*?</table>', page, flags=re.S)
    assert len(found) == 1, f"{len(found)} tables of class {css}"
    return found[0]


def rows(table_html: str) -> list[list[str]]:
    """The body rows of a table as cell texts (still escaped)."""
    return [
        re.findall(r"<td>(.*?)</td>", row)
        for row in re.findall(r"<tr>(.*?)</tr>", table_html)
        if "<td>" in row
    ]


def test_none_renders_nothing() -> None:
    assert comparison_section(None) == []


def test_held_comparison_shows_decision_scores_and_intervals() -> None:
    page = "".join(comparison_section(held_gate()))
    assert page.startswith('<section id="comparison">') and page.endswith("</section>")
    assert "<h2>Against the champion (holdout)</h2>" in page
    assert '<strong id="gate-decision" class="decision-held">held</strong>' in page
    facts = dict((k, v) for k, v in rows(table(page, "gate-facts")))
    assert facts["champion"] == "run-1"
    assert facts["holdout"] == "42 people, 294 photos (15 % of the people)"
    assert facts["tolerance"].startswith("0 ")
    scores = rows(table(page, "gate-scores"))
    assert scores == [
        ["challenger (this run)", "run-2", "0.6123 [0.590, 0.634]"],
        ["champion", "run-1", "0.6435 [0.621, 0.665]"],
        ["challenger − champion (paired)", "", "-0.0312 [-0.052, -0.011]"],
    ]
    assert "promotion" not in page


def test_per_class_rows_come_worst_regression_first_with_a_plot() -> None:
    page = "".join(comparison_section(held_gate()))
    per_class = rows(table(page, "gate-per-class"))
    assert [r[0] for r in per_class] == [
        "incorrect/female/&gt;=60",
        "not wear/female/30-59",
        "wear/male/&lt;30",
    ]
    assert per_class[0] == ["incorrect/female/&gt;=60", "5", "0.5000", "0.2000", "-0.3000"]
    assert [r[-1] for r in per_class] == ["-0.3000", "-0.0500", "+0.1000"]
    plot = re.search(r'<div class="gate-delta-plot"><img src="data:image/png;base64,(\w+)', page)
    assert plot is not None and plot.group(1).startswith("iVBOR")  # a PNG's base64 signature


def test_store_text_is_escaped() -> None:
    page = "".join(comparison_section(held_gate()))
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # the only <img> of the section is the plot
    assert page.count("<img ") == 1


def test_churn_counts_shown_photos_and_the_more_note() -> None:
    page = "".join(comparison_section(held_gate()))
    assert '<p id="churn">57 of 1200 eval answers changed (4.8%)</p>' in page
    assert rows(table(page, "gate-churn")) == [
        ["&lt;img src=x onerror=alert(1)&gt;", "4", "10"],
        ["cafe01.jpg", "0", "1"],
    ]
    more = re.search(r'<p class="churn-more">(.*?)</p>', page)
    assert more is not None
    assert more.group(1) == "55 more changed answers are not shown (the first 2 of 57 are)."


def test_no_more_note_when_every_change_is_shown() -> None:
    gate = held_gate()
    gate["churn"]["changed"] = 2
    page = "".join(comparison_section(gate))
    assert "2 of 1200 eval answers changed" in page
    assert "churn-more" not in page


def test_data_changes_and_class_counts() -> None:
    page = "".join(comparison_section(held_gate()))
    assert rows(table(page, "gate-data-changes")) == [
        ["people added", "3", "000101, 000102, … (1 more)"],
        ["people removed", "1", "000007"],
        ["photos added", "21", ""],
        ["photos removed", "7", ""],
    ]
    assert rows(table(page, "gate-class-counts")) == [
        ["wear/male/&lt;30", "100", "104", "+4"],
        ["wear/female/&lt;30", "80", "77", "-3"],
    ]


def test_promotion_is_shown_when_present() -> None:
    gate = held_gate()
    gate["promoted"] = {
        "by": "ana",
        "reason": "holdout too small <b>",
        "at": "2024-05-02T09:00:00Z",
        "previous": "run-1",
    }
    page = "".join(comparison_section(gate))
    promotion = re.search(r'<p id="promotion" class="promotion">(.*?)</p>', page)
    assert promotion is not None
    text = promotion.group(1)
    assert "ana" in text and "2024-05-02T09:00:00Z" in text and "run-1" in text
    assert "holdout too small &lt;b&gt;" in text


def test_first_run_shows_reason_and_holdout_but_no_scores() -> None:
    page = "".join(comparison_section(first_run_gate()))
    assert "published: no champion yet (first run of this store)" in page
    assert 'class="decision-published"' in page
    facts = dict((k, v) for k, v in rows(table(page, "gate-facts")))
    assert facts["champion"] == "none (the store&#x27;s first run)"
    assert facts["holdout"] == "28 people, 196 photos (10 % of the people)"
    for css in ("gate-scores", "gate-per-class", "gate-churn", "gate-data-changes"):
        assert css not in page
    assert "<img" not in page


def test_unknown_decision_gets_no_class_from_the_store() -> None:
    gate = first_run_gate()
    gate["decision"] = 'x" onclick="alert(1)'
    page = "".join(comparison_section(gate))
    assert 'class="decision-unknown"' in page
    assert 'onclick="alert' not in page


def test_read_comparison_reads_gate_json(tmp_path: Path) -> None:
    run = LocalStore(tmp_path / "run")
    assert read_comparison(run) == []
    run.write_json(GATE_KEY, held_gate())
    assert read_comparison(run) == comparison_section(held_gate())


def small_vote() -> VoteResult:
    """The least vote.json that `render` draws."""
    confusion = [[0] * 18 for _ in range(18)]
    confusion[0][0], confusion[4][4] = 3, 2
    return {
        "run_id": "run-2",
        "top_k": 1,
        "members": ["a"],
        "candidates": [{"name": "a", "val_macro_f1": 0.5, "val_accuracy": 0.6, "val_tasks": {}}],
        "ensemble": {
            "val_macro_f1": 0.5,
            "val_accuracy": 0.6,
            "val": {"macro_f1": 0.5, "accuracy": 0.6, "n": 5, "confusion": confusion},
        },
    }


def test_render_places_the_comparison_after_the_headline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = LocalStore(tmp_path / "run")
    index = pd.DataFrame({"split": ["train", "train", "val"], "label": [0, 4, 0]})
    sink = io.BytesIO()
    index.to_parquet(sink)
    run.write_bytes(INDEX_KEY, sink.getvalue())
    run.write_json(
        "models/m/metrics.json",
        {"history": [{"epoch": 1, "loss": 1.2, "val_macro_f1": 0.4}], "val": {"macro_f1": 0.4}},
    )
    monkeypatch.setattr(report, "model_specs", lambda cfg: {"m": cfg})
    cfg = OmegaConf.create({})

    before = render(run, cfg, small_vote())
    assert 'id="comparison"' not in before

    run.write_json(GATE_KEY, held_gate())
    page = render(run, cfg, small_vote())
    assert page.count('<section id="comparison">') == 1
    headline = page.index('<table class="headline">')
    section = page.index('<section id="comparison">')
    assert headline < section < page.index("<h2>Val macro F1: models, candidates and the vote</h2>")
    assert "<script>" not in page and "0.6435 [0.621, 0.665]" in page
