"""The run report: `runs/<run_id>/report/index.html`, one self-contained page to look at.

Written by the vote stage after vote.json, and again by publish once the gate has written
gate.json. Plots are PNGs embedded in the page (data: URIs), so the file reads offline, pulled to
a laptop or opened from the store's web console. It shows: the scores (vote and every candidate),
val macro F1 of every model, candidate and the vote, the vote's confusion matrix, per-task
accuracy, training curves and the class distribution of train and val; every candidate's and vote
method's val macro F1 with its interval by person and the paired difference against the best
member, and what was submitted and why. Once gate.json exists, right after the headline, the
comparison against the champion on the holdout (`comparison_section`): the gate's decision and
why, the holdout and the tolerance, a hand promotion; when both were scored, both holdout macro
F1s with their intervals and the paired difference, per-class F1 worst regression first (table
and bar plot), how many eval answers changed with examples, what changed in the labelled data and
the class counts of the champion's data beside this run's. Everything read from the store is
escaped.
`python -m pipeline.report RUN_ID [overrides]` writes it again for an existing run.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

from pipeline.storage.run_layout import GATE_KEY, REPORT_KEY

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from pipeline.core.config import model_specs
from pipeline.domain.labels import NUM_CLASSES, class_name
from pipeline.run.results import (
    GATE_DECISIONS,
    ChangedAnswer,
    Churn,
    ClassCounts,
    ClassDelta,
    DataChanges,
    GateRecord,
    Interval,
    Promotion,
    TaskScores,
    VoteResult,
    difference_text,
    interval_text,
)
from pipeline.run.state import read_index
from pipeline.storage.store import Store, join_key

TASKS = ("mask", "gender", "age")


def _png(fig: plt.Figure) -> str:
    """A figure as an <img> with an embedded PNG."""
    sink = io.BytesIO()
    fig.savefig(sink, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(sink.getvalue()).decode()
    return f'<img src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><tr>{head}</tr>{body}</table>'


def _esc(value: Any) -> str:
    """`value` as text for HTML: everything read from the store is escaped (quotes too)."""
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def class_distribution(index: Any) -> str:
    """Bar chart of images per class in train and val."""
    fig, ax = plt.subplots(figsize=(9, 3))
    x = np.arange(NUM_CLASSES)
    for offset, split in ((-0.2, "train"), (0.2, "val")):
        counts = np.bincount(index.loc[index["split"] == split, "label"], minlength=NUM_CLASSES)
        ax.bar(x + offset, counts, width=0.4, label=split)
    ax.set_xticks(x, [class_name(c) for c in range(NUM_CLASSES)], rotation=70, fontsize=7)
    ax.set_ylabel("images")
    ax.legend()
    return _png(fig)


def f1_bars(scores: dict[str, float]) -> str:
    """Horizontal bars of val macro F1 by model / candidate / vote."""
    names = list(scores)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
    ax.barh([_plot_label(n) for n in names], [scores[n] for n in names], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("val macro F1")
    return _png(fig)


def confusion_plot(confusion: list[list[int]]) -> str:
    """The vote's 18×18 val confusion matrix."""
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.imshow(matrix, cmap="Blues")
    labels = [class_name(c) for c in range(len(matrix))]
    ax.set_xticks(range(len(matrix)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(matrix)), labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=5)
    return _png(fig)


def training_curves(histories: dict[str, list[dict[str, Any]]]) -> str:
    """Loss and val macro F1 per epoch of every model."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        label = _plot_label(name)
        left.plot(epochs, [h["loss"] for h in history], marker=".", label=label)
        right.plot(epochs, [h["val_macro_f1"] for h in history], marker=".", label=label)
    left.set(xlabel="epoch", ylabel="training loss")
    right.set(xlabel="epoch", ylabel="val macro F1 (model's own task)")
    right.legend(fontsize=7)
    return _png(fig)


def _interval_cells(iv: Interval) -> list[str]:
    return [interval_text(iv), difference_text(iv) or "-"]


def choices_section(result: VoteResult) -> list[str]:
    """Every candidate and every vote method on val with its interval by person and the paired
    difference against the best member: what each choice rests on (empty for an older vote.json
    without intervals)."""
    if "methods" not in result or "interval" not in result:
        return []
    info = result["interval"]
    rows = [
        [f"candidate: {c['name']}", *_interval_cells(c["val_interval"])]
        for c in result["candidates"]
        if "val_interval" in c
    ]
    rows += [[f"vote: {m}", *_interval_cells(s["val"])] for m, s in result["methods"].items()]
    note = (
        f"{info['level']:.0%} bootstrap intervals over the {info['persons']} val people "
        f"({info['resamples']} resamples); differences paired against {info['reference']}."
    )
    return [
        "<h2>What the choices rest on (val, intervals by person)</h2>",
        f"<p>{html.escape(note)}</p>",
        _table(["", "val macro F1 [CI]", "minus best member [CI]"], rows, "choices"),
    ]


#: What each gate decision means for latest.json, shown beside the decision.
DECISION_MEANING = {
    "published": "this run became latest.json",
    "held": "latest.json stays on the champion",
    "superseded": "latest.json already named this run or a newer one",
}


def _plot_label(text: str) -> str:
    """Store text as a matplotlib label: `$` escaped so that it is never read as mathtext."""
    return text.replace("$", r"\$")


def _percent(fraction: float) -> str:
    """0.15 as '15 %', 0.125 as '12.5 %'."""
    return f"{fraction * 100:.4g} %"


def _decision_part(gate: GateRecord) -> list[str]:
    """The decision and its reason, the champion, the holdout and the tolerance: what every
    gate.json holds, compared or not."""
    decision = str(gate["decision"])
    css = f"decision-{decision}" if decision in GATE_DECISIONS else "decision-unknown"
    meaning = DECISION_MEANING.get(decision, "")
    champion = gate["champion"]
    holdout = gate["holdout"]
    facts = [
        ("champion", "none (the store's first run)" if champion is None else champion),
        (
            "holdout",
            f"{holdout['people']} people, {holdout['photos']} photos "
            f"({_percent(holdout['fraction'])} of the people)",
        ),
        (
            "tolerance",
            f"{gate['tolerance']:g} (held when the whole interval of challenger − champion "
            f"lies below {-gate['tolerance']:g})",
        ),
        ("decided", gate["decided"]),
    ]
    return [
        f'<p class="decision"><strong id="gate-decision" class="{css}">'
        f"{html.escape(decision)}</strong>"
        + (f" ({html.escape(meaning)})" if meaning else "")
        + f': <span id="gate-reason">{html.escape(str(gate["reason"]))}</span></p>',
        _table(["", ""], facts, "gate-facts"),
    ]


def _promotion_part(promotion: Promotion) -> str:
    """Who moved latest.json to this run by hand, when, from which run and why."""
    previous = promotion["previous"]
    text = (
        f"Promoted by hand by {promotion['by']} at {promotion['at']} "
        f"(latest.json named {'no run' if previous is None else previous} before): "
        f"{promotion['reason']}"
    )
    return f'<p id="promotion" class="promotion">{html.escape(text)}</p>'


def _scores_part(gate: GateRecord) -> list[str]:
    """Holdout macro F1 [CI] of challenger and champion, and the paired difference [CI]."""
    rows: list[list[str]] = []
    if "challenger" in gate:
        rows.append(["challenger (this run)", gate["run_id"], interval_text(gate["challenger"])])
    if "champion_score" in gate:
        champion = gate["champion"] or "-"
        rows.append(["champion", champion, interval_text(gate["champion_score"])])
    if "challenger" in gate:
        diff = difference_text(gate["challenger"])
        if diff is not None:
            rows.append(["challenger − champion (paired)", "", diff])
    if not rows:
        return []
    return [_table(["", "run", "holdout macro F1 [95 % CI]"], rows, "gate-scores")]


def delta_bars(per_class: Sequence[ClassDelta]) -> str:
    """Horizontal bars of per-class holdout F1 challenger − champion, in the given order (top
    first): regressions red, gains green."""
    names = [_plot_label(str(c["name"])) for c in per_class]
    deltas = [float(c["delta"]) for c in per_class]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1))
    ax.barh(names, deltas, color=["tab:red" if d < 0 else "tab:green" for d in deltas])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("holdout F1, challenger − champion")
    return _png(fig)


def _per_class_part(per_class: Sequence[ClassDelta]) -> list[str]:
    """Per-class holdout F1 of both, sorted by delta so that the worst regressions come first."""
    ordered = sorted(per_class, key=lambda c: c["delta"])
    rows = [
        [
            c["name"],
            c["support"],
            f"{c['champion']:.4f}",
            f"{c['challenger']:.4f}",
            f"{c['delta']:+.4f}",
        ]
        for c in ordered
    ]
    return [
        "<h3>Per class (holdout F1, worst regression first)</h3>",
        _table(
            ["class", "holdout photos", "champion", "challenger", "delta"], rows, "gate-per-class"
        ),
        f'<div class="gate-delta-plot">{delta_bars(ordered)}</div>' if ordered else "",
    ]


def _churn_part(churn: Churn) -> list[str]:
    """How many eval answers changed, and the changed photos gate.json lists."""
    shown: Sequence[ChangedAnswer] = churn["shown"]
    parts = [
        "<h3>Changed answers (eval)</h3>",
        f'<p id="churn">{_esc(churn["changed"])} of {_esc(churn["compared"])} eval answers '
        f"changed ({churn['share']:.1%})</p>",
    ]
    if shown:
        parts.append(
            _table(
                ["image id", "champion's answer", "challenger's answer"],
                [[a["image_id"], a["champion"], a["challenger"]] for a in shown],
                "gate-churn",
            )
        )
    if churn["changed"] > len(shown):
        parts.append(
            f'<p class="churn-more">{churn["changed"] - len(shown)} more changed answers '
            f"are not shown (the first {len(shown)} of {churn['changed']} are).</p>"
        )
    return parts


def _data_changes_part(changes: DataChanges) -> list[str]:
    """People and photos added to or removed from the labelled data since the champion's, with
    the example person ids gate.json lists."""

    def examples(ids: Sequence[str], count: int) -> str:
        text = ", ".join(str(i) for i in ids)
        return f"{text}, … ({count - len(ids)} more)" if count > len(ids) else text

    rows = [
        [
            "people added",
            changes["people_added"],
            examples(changes["people_added_shown"], changes["people_added"]),
        ],
        [
            "people removed",
            changes["people_removed"],
            examples(changes["people_removed_shown"], changes["people_removed"]),
        ],
        ["photos added", changes["photos_added"], ""],
        ["photos removed", changes["photos_removed"], ""],
    ]
    return [
        "<h3>Data changes since the champion's (train, val and holdout)</h3>",
        _table(["", "count", "people"], rows, "gate-data-changes"),
    ]


def _class_counts_part(counts: ClassCounts) -> list[str]:
    """Labelled photos per class in the champion's data and in this run's, side by side."""
    rows = [
        [name, champion, challenger, f"{challenger - champion:+d}"]
        for name, champion, challenger in zip(
            counts["classes"], counts["champion"], counts["challenger"], strict=False
        )
    ]
    return [
        "<h3>Labelled photos per class</h3>",
        _table(
            ["class", "champion's data", "challenger's data", "difference"],
            rows,
            "gate-class-counts",
        ),
    ]


def comparison_section(gate: GateRecord | None) -> list[str]:
    """The report's comparison against the champion on the holdout, from gate.json (HTML
    fragments; empty for None, before the gate has decided). Shows whatever fields the record
    holds; everything from it is escaped (it is other people's text)."""
    if gate is None:
        return []
    parts = [
        '<section id="comparison">',
        "<h2>Against the champion (holdout)</h2>",
        *_decision_part(gate),
    ]
    if "promoted" in gate:
        parts.append(_promotion_part(gate["promoted"]))
    if gate["compared"]:
        parts += _scores_part(gate)
    if "per_class" in gate:
        parts += _per_class_part(gate["per_class"])
    if "churn" in gate:
        parts += _churn_part(gate["churn"])
    if "data_changes" in gate:
        parts += _data_changes_part(gate["data_changes"])
    if "class_counts" in gate:
        parts += _class_counts_part(gate["class_counts"])
    parts.append("</section>")
    return parts


def read_comparison(run: Store) -> list[str]:
    """The comparison section from the run's gate.json; empty while the gate has not decided
    (the vote stage writes the report before publish runs)."""
    if not run.exists(GATE_KEY):
        return []
    gate: GateRecord = run.read_json(GATE_KEY)
    return comparison_section(gate)


def render(run: Store, cfg: DictConfig, result: VoteResult) -> str:
    """The report page of a run whose vote produced `result` (vote.json's content)."""
    index = read_index(run)
    models = list(model_specs(cfg))
    model_metrics = {
        name: run.read_json(join_key("models", name, "metrics.json"))
        for name in models
        if run.exists(join_key("models", name, "metrics.json"))
    }
    ens = result["ensemble"]
    scores = {f"vote (top {result['top_k']})": ens["val_macro_f1"]}
    scores |= {f"candidate: {c['name']}": c["val_macro_f1"] for c in result["candidates"]}
    scores |= {f"model: {n}": m["val"]["macro_f1"] for n, m in model_metrics.items()}
    tasks: dict[str, dict[str, TaskScores]] = {"vote": ens["val"].get("tasks", {})}
    for c in result["candidates"]:
        key = join_key("candidates", c["name"], "metrics.json")
        if run.exists(key):
            tasks[c["name"]] = run.read_json(key).get("tasks", {})
    headline = [
        ("val macro F1", ens["val_macro_f1"]),
        ("val accuracy", ens["val_accuracy"]),
        ("members", ", ".join(result["members"])),
    ]
    if "eval" in result:
        headline += [
            ("eval macro F1", result["eval"]["macro_f1"]),
            ("eval accuracy", result["eval"]["accuracy"]),
        ]
    if "fallback" in result:
        headline.append(("submitted", result["fallback"]["reason"]))
    counts = index["split"].value_counts().to_dict()
    images = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))
    sections = [
        f"<h1>Run <span id='run-id'>{html.escape(str(result['run_id']))}</span></h1>",
        _table(["", ""], headline, "headline"),
        *read_comparison(run),
        *choices_section(result),
        "<h2>Val macro F1: models, candidates and the vote</h2>",
        _table(["name", "val macro F1"], list(scores.items()), "scores"),
        f1_bars(scores),
        "<h2>Per-task accuracy (val)</h2>",
        _table(
            ["", *TASKS],
            [
                [n, *(t[task].get("accuracy", "-") if task in t else "-" for task in TASKS)]
                for n, t in tasks.items()
            ],
            "tasks",
        ),
        "<h2>The vote's confusion matrix (val)</h2>",
        confusion_plot(ens["val"]["confusion"]),
        "<h2>Training curves</h2>",
        training_curves({n: m["history"] for n, m in model_metrics.items()}),
        "<h2>Class distribution</h2>",
        f"<p>images: {_esc(images)}</p>",
        class_distribution(index),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "img{max-width:100%}"
        ".decision-held{color:#b00000}.decision-published{color:#007000}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>run {html.escape(str(result['run_id']))}</title><style>{style}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_report(cfg: DictConfig, run: Store, result: VoteResult) -> str:
    """Write the run's report/index.html; returns its URI."""
    run.write_text(REPORT_KEY, render(run, cfg, result))
    return run.uri_of(REPORT_KEY)
