"""CSV files that people open in a spreadsheet: text cells are never formulas.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by
Excel, LibreOffice and Google Sheets (`=HYPERLINK(…)`, `=cmd|' /C calc'!A0`, DDE). The photo
names and reasons these files carry come from people who upload photos, so every CSV the suite
writes for people (submission.csv, bad_inputs.csv, infer's answers) goes through `csv_bytes`,
which prefixes such text cells with a single quote, as OWASP recommends ("CSV Injection"); the
CSV writer's quoting then handles commas, quotes and line breaks (a bare CR too). Numbers (e.g.
`-1` in a numeric column) are numbers, not text, and are left alone.
"""

from __future__ import annotations

import csv
from typing import Any

import pandas as pd

#: What makes a spreadsheet read a text cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def needs_neutralising(value: object) -> bool:
    """Whether `value` is text a spreadsheet would read as a formula."""
    return isinstance(value, str) and value.startswith(FORMULA_STARTS)


def neutralise_cell(value: Any) -> Any:
    """`value` with a leading `'` when it is text starting like a formula; anything else as is."""
    return "'" + value if needs_neutralising(value) else value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells (object/string columns) are neutralised."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column].dtype):
            out[column] = out[column].map(neutralise_cell)
    return out


def formula_cells(values: pd.Series) -> list[str]:
    """The values of `values` that `csv_bytes` would neutralise (to report them)."""
    return [v for v in values.tolist() if needs_neutralising(v)]


class _Rows:
    """A text sink for csv.writer that ends each row with `\n` instead of the dialect's `\r\n`.

    The writer quotes only fields that contain a character of its line terminator: with `\r\n`
    a field holding a bare CR is quoted too (with `\n` alone it is not, and a spreadsheet or
    pandas would split the row there). csv.writer hands each whole row to one `write` call.
    """

    def __init__(self) -> None:
        self.rows: list[str] = []

    def write(self, row: str) -> None:
        self.rows.append(row.removesuffix("\r\n") + "\n")


def _plain(value: Any) -> Any:
    """A cell as the CSV writer should see it: None/NaN as empty, numpy scalars as Python's."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """`frame` as UTF-8 CSV bytes (header, no index, `\n` rows), its formula-like text cells
    neutralised; any field with a comma, quote, CR or LF is quoted."""
    safe = neutralised(frame)
    sink = _Rows()
    writer = csv.writer(sink, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([neutralise_cell(str(c)) for c in safe.columns])
    columns = [safe[c].tolist() for c in safe.columns]  # Python ints/floats/str, not numpy's
    for row in zip(*columns, strict=True):
        writer.writerow([_plain(v) for v in row])
    return "".join(sink.rows).encode()
