"""The store page: `<store.root>/report/index.html`, every run of a store on one page to look at.

`python -m pipeline.report --store [overrides]` writes it. Like the run report
(pipeline.run.report) it is one self-contained file (inline style, the plot an embedded PNG), so
it reads offline. It shows which run latest.json names; a plot of each run's holdout macro F1
(as its publish gate scored it, with the 95 % interval by person) over the runs' start times,
one marker per state, with a step line through the published runs (what latest.json served);
and a table of every run, newest first: state, holdout macro F1, the difference against the
champion the gate compared it with, val macro F1, and the gate's reason (or the failure, or who
promoted it and why), with a link to the run's own report where it has one.

A store without runs gives a page that says so (not an error): the page is then still the place
to look. Everything read from the store (run ids, reasons, errors) is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt

from pipeline.run.history import RUN_STATES, read_latest, run_summaries
from pipeline.run.report import _png
from pipeline.run.results import GateRecord, Interval, difference_text, interval_text
from pipeline.storage.run_layout import REPORT_KEY, RUNS, STORE_REPORT_KEY
from pipeline.storage.store import Store, join_key

#: The page's look: the run report's.
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}"
    "img{max-width:100%}"
    ".latest{font-weight:bold}"
    "td.run-id,td.holdout,td.diff,td.champion{white-space:nowrap}"
)

#: How each state is drawn in the plot: label, marker, colour (states not named: OTHER_STYLE).
STATE_STYLES = {
    "published": ("published", "o", "tab:green"),
    "held": ("held", "s", "tab:orange"),
}
OTHER_STYLE = ("other (not published)", "^", "tab:gray")

#: The run id's start time: `YYYYmmddTHHMMSSZ-<hex>` (pipeline.run.state.new_run_id).
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"


def run_start(run_id: str) -> datetime | None:
    """The UTC start time a run id begins with, or None when the id does not have one."""
    try:
        return datetime.strptime(run_id.split("-", 1)[0], RUN_ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def run_positions(ids: Sequence[str]) -> list[Any]:
    """The plot's x of each run: its start time when every id parses, else its place in `ids`
    (one axis cannot mix times and numbers, so one id that does not parse makes it the order)."""
    times = [run_start(run_id) for run_id in ids]
    if all(t is not None for t in times):
        return times
    return list(range(len(ids)))


def holdout_interval(summary: dict[str, Any]) -> Interval | None:
    """The run's holdout macro F1 with its interval, as its gate scored it (None: not scored)."""
    gate: GateRecord | None = summary.get("gate")
    if gate is None or "challenger" not in gate:
        return None
    return gate["challenger"]


def holdout_plot(summaries: Sequence[dict[str, Any]]) -> str:
    """Holdout macro F1 over time, with error bars, one marker per state and a step line through
    the published runs; a sentence instead when no run has a holdout score. `summaries` oldest
    first."""
    xs = run_positions([s["run_id"] for s in summaries])
    points = [
        (x, s["state"], iv)
        for x, s in zip(xs, summaries, strict=True)
        if (iv := holdout_interval(s)) is not None
    ]
    if not points:
        return "<p class='no-plot'>No run has a holdout score yet (the publish gate scores it).</p>"
    fig, ax = plt.subplots(figsize=(10, 3.6))
    published = [(x, iv["macro_f1"]) for x, state, iv in points if state == "published"]
    if published:
        # latest.json served each published run's model until the next one; carry the last on
        step_x = [x for x, _ in published] + [points[-1][0]]
        step_y = [y for _, y in published] + [published[-1][1]]
        ax.step(step_x, step_y, where="post", color="tab:green", alpha=0.5, label="latest.json")
    groups: dict[tuple[str, str, str], list[tuple[Any, Interval]]] = {}
    for x, state, iv in points:
        groups.setdefault(STATE_STYLES.get(state, OTHER_STYLE), []).append((x, iv))
    for (label, marker, colour), group in groups.items():
        ys = [iv["macro_f1"] for _, iv in group]
        err = [
            [iv["macro_f1"] - iv["low"] for _, iv in group],
            [iv["high"] - iv["macro_f1"] for _, iv in group],
        ]
        ax.errorbar(
            [x for x, _ in group], ys, yerr=err, fmt=marker, color=colour, capsize=3, label=label
        )
    ax.set_ylabel("holdout macro F1 (95 % CI)")
    ax.set_xlabel("run start (UTC)" if isinstance(xs[0], datetime) else "run (in id order)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def state_cell(state: str, is_latest: bool) -> str:
    """The state, marked when latest.json names the run."""
    text = html.escape(state)
    return f"{text} <span class='latest'>* latest</span>" if is_latest else text


def run_cell(root: Store, run_id: str) -> str:
    """The run id, a link (relative to the store page) to its report when it has one."""
    text = html.escape(run_id)
    if not root.exists(join_key(RUNS, run_id, REPORT_KEY)):
        return text
    href = html.escape(f"../{RUNS}/{quote(run_id)}/{REPORT_KEY}")
    return f"<a href='{href}'>{text}</a>"


def note_lines(summary: dict[str, Any]) -> list[str]:
    """What the table says about a run in words: the failures of a failed run, else the gate's
    reason, and who promoted it and why (plain text, unescaped)."""
    gate: GateRecord | None = summary.get("gate")
    lines = list(summary["failed"]) if summary["state"] == "failed" else []
    if gate is not None and not lines:
        lines.append(f"gate: {gate['reason']}")
    if gate is not None and "promoted" in gate:
        p = gate["promoted"]
        lines.append(f"promoted by {p['by']} at {p['at']}: {p['reason']}")
    return lines


def run_row(root: Store, summary: dict[str, Any], latest: str | None) -> str:
    """One row of the runs table."""
    gate: GateRecord | None = summary.get("gate")
    iv = holdout_interval(summary)
    diff = difference_text(iv) if iv is not None and gate and gate.get("compared") else None
    champion = gate.get("champion") if gate is not None else None
    val = summary.get("val_macro_f1")
    is_latest = summary["run_id"] == latest
    cells = [
        ("run-id", run_cell(root, summary["run_id"])),
        ("state", state_cell(summary["state"], is_latest)),
        ("holdout", html.escape(interval_text(iv)) if iv is not None else "-"),
        ("diff", html.escape(diff) if diff else "-"),
        ("champion", html.escape(str(champion)) if champion else "-"),
        ("val", f"{val:.4f}" if isinstance(val, int | float) else "-"),
        ("notes", "<br>".join(html.escape(line) for line in note_lines(summary))),
    ]
    css = f"state-{summary['state']}" + (" latest-run" if is_latest else "")
    body = "".join(f"<td class='{name}'>{content}</td>" for name, content in cells)
    return f"<tr class='{html.escape(css)}'>{body}</tr>"


def runs_table(root: Store, summaries: Sequence[dict[str, Any]], latest: str | None) -> str:
    """Every run, newest first (`summaries` oldest first)."""
    header = [
        "run (its report)",
        "state",
        "holdout macro F1 [CI]",
        "minus champion [CI]",
        "champion",
        "val macro F1",
        "gate / failure",
    ]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(run_row(root, s, latest) for s in reversed(summaries))
    return f"<table class='runs'><tr>{head}</tr>{rows}</table>"


def state_counts(summaries: Sequence[dict[str, Any]]) -> str:
    """'5 runs: 3 published, 1 held, 1 failed' (states in RUN_STATES order)."""
    counts = {state: sum(s["state"] == state for s in summaries) for state in RUN_STATES}
    parts = [f"{n} {state}" for state, n in counts.items() if n]
    return f"{len(summaries)} runs: " + ", ".join(parts)


def render_store_page(root: Store) -> str:
    """The store page of `root` (a store root): latest.json's run, holdout macro F1 over time,
    every run newest first. A store without runs gives a page that says so."""
    latest_record = read_latest(root)
    latest = str(latest_record["run_id"]) if latest_record else None
    summaries = run_summaries(root)
    uri = html.escape(root.uri)
    sections = [
        f"<h1>Store <span id='store-uri'>{uri}</span></h1>",
        (
            f"<p>latest.json names run <span id='latest'>{html.escape(latest)}</span>.</p>"
            if latest
            else "<p>latest.json names no run yet: no run has been published.</p>"
        ),
    ]
    if not summaries:
        sections.append(f"<p class='no-runs'>No runs under {html.escape(root.uri_of(RUNS))}.</p>")
    else:
        sections += [
            f"<p>{html.escape(state_counts(summaries))}</p>",
            "<h2>Holdout macro F1 over time</h2>",
            "<p>Each run's holdout macro F1 as its publish gate scored it, with the 95 % interval"
            " by person; the line is the published run latest.json served.</p>",
            holdout_plot(summaries),
            "<h2>Runs, newest first</h2>",
            runs_table(root, summaries, latest),
            "<p>* latest = the run latest.json names; minus champion = holdout macro F1 of the "
            "run minus that of the champion the gate compared it with, on the same photos.</p>",
        ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>store {uri}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_store_page(root: Store) -> str:
    """Write the store page at STORE_REPORT_KEY of `root`; returns its URI."""
    root.write_text(STORE_REPORT_KEY, render_store_page(root))
    return root.uri_of(STORE_REPORT_KEY)
