"""The store page (`python -m pipeline.report --store`): every run of a store on one page."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image

from pipeline.commands.report import main as report_main
from pipeline.run.store_page import (
    render_store_page,
    run_positions,
    run_start,
    write_store_page,
)
from pipeline.storage.store import LocalStore
from tests.test_history import CHROMIUM_FLAGS

FIRST = "20261201T020000Z-aaaaaa"  # published, the store's first (nothing to compare)
HELD = "20261202T020000Z-bbbbbb"  # held: worse than FIRST on the holdout, hostile reason
FAILED = "20261203T020000Z-cccccc"  # training failed
SECOND = "20261204T020000Z-dddddd"  # published, better than FIRST
UNGATED = "20261205T020000Z-eeeeee"  # vote done, publish not run, no report
PROMOTED = "20261206T020000Z-ffffff"  # held, then promoted by hand: latest.json
ORDER = [FIRST, HELD, FAILED, SECOND, UNGATED, PROMOTED]
HOSTILE = "holdout says worse <script>alert(1)</script>"


def interval(f1: float, diff: float | None = None) -> dict[str, float]:
    """A holdout Interval, with the difference against the champion when given."""
    iv = {"macro_f1": f1, "low": f1 - 0.05, "high": f1 + 0.05}
    if diff is not None:
        iv |= {"diff": diff, "diff_low": diff - 0.02, "diff_high": diff + 0.02}
    return iv


def gate(
    run_id: str, decision: str, reason: str, champion: str | None, f1: float, diff: float | None
) -> dict[str, Any]:
    """A gate.json (GateRecord): compared when there is a champion."""
    record: dict[str, Any] = {
        "run_id": run_id,
        "decision": decision,
        "compared": champion is not None,
        "reason": reason,
        "champion": champion,
        "tolerance": 0.0,
        "decided": "2026-12-01T03:00:00+00:00",
        "holdout": {"fraction": 0.1, "people": 20, "photos": 140},
        "challenger": interval(f1, diff),
    }
    if champion is not None:
        record["champion_score"] = interval(f1 - (diff or 0.0))
    return record


def add_run(
    root: LocalStore, run_id: str, val: float | None, record: dict[str, Any] | None, report: bool
) -> None:
    """A run as its stages leave it: vote marker and vote.json (when `val`), gate.json, report."""
    run = root.child(f"runs/{run_id}")
    run.write_json("manifest.json", {"run_id": run_id})
    if val is not None:
        run.write_json("stages/vote.json", {})
        run.write_json(
            "vote.json",
            {
                "run_id": run_id,
                "members": ["single", "pair"],
                "ensemble": {"val_macro_f1": val, "val_accuracy": val + 0.1},
                "candidates": [],
            },
        )
    if record is not None:
        run.write_json("gate.json", record)
    if report:
        run.write_text("report/index.html", f"<html>{run_id}</html>")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A store of six synthetic runs, latest.json on PROMOTED."""
    root = LocalStore(tmp_path / "store")
    first = gate(FIRST, "published", "first run: published", None, 0.60, None)
    add_run(root, FIRST, 0.61, first, True)
    add_run(root, HELD, 0.58, gate(HELD, "held", HOSTILE, FIRST, 0.55, -0.05), True)
    add_run(root, FAILED, None, None, False)
    root.write_json(
        f"runs/{FAILED}/jobs/train-single.json",
        {"state": "failed", "stage": "train-single", "error": "DataError: no image left <b>"},
    )
    second = gate(SECOND, "published", "better: published", FIRST, 0.63, 0.03)
    add_run(root, SECOND, 0.64, second, True)
    add_run(root, UNGATED, 0.62, None, False)
    promoted = gate(PROMOTED, "held", "slightly worse: held", SECOND, 0.62, -0.01)
    promoted["promoted"] = {
        "by": "alice",
        "reason": "labels of the holdout were fixed",
        "at": "2026-12-06T09:00:00+00:00",
        "previous": SECOND,
    }
    add_run(root, PROMOTED, 0.65, promoted, True)
    root.write_json("latest.json", {"run_id": PROMOTED})
    return root


def rows(page: str) -> dict[str, str]:
    """The runs table's rows (without the header) by run id, in page order."""
    table = page.split("<table class='runs'>", 1)[1].split("</table>", 1)[0]
    found = re.findall(r"(<tr class=.*?<td class='run-id'>(?:<a [^>]*>)?([^<]+).*?</tr>)", table)
    return {run_id: row for row, run_id in found}


def test_every_run_is_listed_newest_first_with_state_and_scores(store: LocalStore) -> None:
    page = render_store_page(store)
    by_id = rows(page)
    assert list(by_id) == ORDER[::-1]
    states = {
        FIRST: "published",
        HELD: "held",
        FAILED: "failed",
        SECOND: "published",
        UNGATED: "succeeded",
        PROMOTED: "published",
    }
    for run_id, state in states.items():
        assert f"<td class='state'>{state}" in by_id[run_id], run_id
    assert "0.6000 [0.550, 0.650]" in by_id[FIRST]
    assert "<td class='diff'>-</td>" in by_id[FIRST]  # nothing to compare with
    assert "0.6300 [0.580, 0.680]" in by_id[SECOND]
    assert "+0.0300 [+0.010, +0.050]" in by_id[SECOND] and f"'champion'>{FIRST}" in by_id[SECOND]
    assert "-0.0500 [-0.070, -0.030]" in by_id[HELD]
    assert "<td class='val'>0.6400</td>" in by_id[SECOND]
    assert "<td class='holdout'>-</td>" in by_id[UNGATED] and "0.6200" in by_id[UNGATED]
    assert "train-single: DataError: no image left &lt;b&gt;" in by_id[FAILED]
    assert "<td class='val'>-</td>" in by_id[FAILED]
    assert (
        "promoted by alice at 2026-12-06T09:00:00+00:00: labels of the holdout were fixed"
        in (by_id[PROMOTED])
    )
    assert "gate: better: published" in by_id[SECOND]
    assert "6 runs: 3 published, 1 held, 1 succeeded, 1 failed" in page


def test_latest_is_named_and_marked(store: LocalStore) -> None:
    page = render_store_page(store)
    assert f"<span id='latest'>{PROMOTED}</span>" in page
    marked = [run_id for run_id, row in rows(page).items() if "* latest" in row]
    assert marked == [PROMOTED] and "latest-run" in rows(page)[PROMOTED]


def test_links_only_where_a_report_exists(store: LocalStore) -> None:
    by_id = rows(render_store_page(store))
    for run_id in (FIRST, HELD, SECOND, PROMOTED):
        assert f"<a href='../runs/{run_id}/report/index.html'>{run_id}</a>" in by_id[run_id]
    for run_id in (FAILED, UNGATED):
        assert "<a " not in by_id[run_id] and f"<td class='run-id'>{run_id}</td>" in by_id[run_id]


def test_text_from_the_store_is_escaped(store: LocalStore) -> None:
    page = render_store_page(store)
    assert "<script>" not in page
    assert "holdout says worse &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page


def test_the_plot_is_embedded_and_absent_without_holdout_scores(tmp_path: Path) -> None:
    root = LocalStore(tmp_path / "store")
    add_run(root, FIRST, 0.61, None, True)
    page = render_store_page(root)
    assert "<img" not in page and "No run has a holdout score yet" in page
    add_run(root, SECOND, 0.62, gate(SECOND, "published", "ok", None, 0.6, None), False)
    assert page.count("<img") == 0 and render_store_page(root).count("data:image/png;base64,") == 1


def test_run_ids_give_the_x_axis_or_their_order() -> None:
    assert run_start(FIRST) == datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)
    assert run_start("manual-run") is None
    assert run_positions([FIRST, SECOND]) == [run_start(FIRST), run_start(SECOND)]
    assert run_positions([FIRST, "manual-run"]) == [0, 1]


def test_a_store_without_runs_gives_a_page_that_says_so(tmp_path: Path) -> None:
    root = LocalStore(tmp_path / "empty")
    uri = write_store_page(root)
    page = Path(uri).read_text()
    assert f"No runs under {root.uri_of('runs')}." in page
    assert "latest.json names no run yet" in page and "<img" not in page


def test_write_and_the_command(
    store: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = write_store_page(store)
    assert uri == str(tmp_path / "store" / "report" / "index.html")
    assert Path(uri).read_text().startswith("<!doctype html>")
    Path(uri).unlink()
    capsys.readouterr()
    assert report_main(["--store", f"store.root={store.uri}"]) == 0
    assert capsys.readouterr().out.strip() == uri
    assert PROMOTED in Path(uri).read_text()


def test_the_command_reports_errors_and_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "latest.json").write_text("{not json")
    assert report_main(["--store", f"store.root={tmp_path / 'store'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "latest.json" in err[0]
    assert report_main([]) == 2 and report_main(["--stor"]) == 2
    assert "--store" in capsys.readouterr().err


def test_the_page_renders_in_headless_chromium(store: LocalStore, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, (
        "Debian's chromium is needed: `make test` installs it (apt-get install chromium)"
    )
    page = Path(write_store_page(store)).as_uri()
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    for run_id in (FIRST, HELD, SECOND, PROMOTED):  # parsed by the browser: links
        assert f'<a href="../runs/{run_id}/report/index.html">{run_id}</a>' in dom
    assert f'<td class="run-id">{FAILED}</td>' in dom
    assert "<img" in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    shot = tmp_path / "store.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,1600", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as im:
        darkest, lightest = cast(tuple[int, int], im.convert("L").getextrema())
    assert darkest < 100 < lightest  # text and the plot were drawn, not a blank page
