"""Reading a downstream study's ``rows.csv`` back, row by row checked.

The study rewrites ``rows.csv`` atomically, so a damaged file is one edited or cut by hand (or by
a tool): a last line without its newline, a row with fewer or more cells than the header, a
column missing, a cell that should be a number and is not. Such a row is not a finished row: it
is left out, named in one note on stderr, and the study trains it again (the rewritten file no
longer holds it); :func:`read_rows_checked` gives the damaged rows to callers that cannot redo
them (``write_table`` from the file alone refuses them, naming the file and row). Another study
(the head-measurement study, :mod:`~diffice.downstream.seg_study`) reads its own rows with its
own ``check``.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path

from diffice.errors import UserError

ROWS = "rows.csv"
TEXT = ("model", "task", "condition", "score")  # non-empty words
WHOLE = ("seed", "n_train", "n_test", "steps")   # whole numbers
METRICS = {"plane": ("accuracy", "balanced_accuracy"), "anomaly": ("auroc",)}
TASKS = {"plane", "anomaly"}
REAL, SYNTH = "real", "real+synthetic"
UPPER = "real+rendered"  # the anomaly task's upper bound: trained on rendered abnormal frames of training patients
CONDITIONS = {REAL, SYNTH, UPPER}
PER_ANOMALY = "auroc_"  # prefix of the per-anomaly AUROC columns
# a training and the rows it gives: (task, condition) of the training -> rows' (task, condition)
UNITS: list[tuple[tuple[str, str], list[tuple[str, str]]]] = [
    (("plane", REAL), [("plane", REAL), ("anomaly", REAL)]),
    (("plane", SYNTH), [("plane", SYNTH)]),
    (("anomaly", SYNTH), [("anomaly", SYNTH)]),
    (("anomaly", UPPER), [("anomaly", UPPER)]),  # only when the study has the rendered_abnormal frame set
]


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def number(value) -> float:
    """A cell as a float (NaN when empty or not a number)."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def row_problem(row: dict, header: list[str]) -> str | None:
    """Why ``row`` (a csv.DictReader row) is not a finished row, or None."""
    if None in row:  # more cells than the header
        return "more cells than the header"
    short = [k for k in header if row.get(k) is None]
    if short:
        return f"{len(header) - len(short)} of {len(header)} cells"
    for key in (*TEXT, *WHOLE):
        if key not in header:
            return f"no '{key}' column"
    for key in TEXT:
        if not str(row[key]).strip():
            return f"empty '{key}'"
    if row["task"] not in TASKS or row["condition"] not in CONDITIONS:
        return f"task '{row['task']}' / condition '{row['condition']}' unknown"
    for key in WHOLE:
        v = _number(row[key])
        if v is None or not math.isfinite(v) or v != int(v):
            return f"'{key}' is '{row[key]}', not a whole number"
    for key in METRICS[row["task"]]:
        if key not in header:
            return f"no '{key}' column"
        if _number(row[key]) is None:
            return f"'{key}' is '{row[key]}', not a number"
    return None


RowCheck = Callable[[dict, list[str]], "str | None"]  # (row, header) -> why it is not a finished row, or None


def read_rows_checked(out: str | Path, check: RowCheck = row_problem) -> tuple[list[dict], list[tuple[int, str]]]:
    """``(finished rows, [(line, problem)] of the damaged ones)`` of ``out/rows.csv`` ([] when absent);
    ``check(row, header)`` says why a row is not finished (default: a classifier study's row)."""
    path = Path(out) / ROWS
    if not path.is_file():
        return [], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable ({type(err).__name__}); delete it to redo the study") from err
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = list(reader.fieldnames or [])
        rows, damaged = [], []
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        for row in reader:
            line = reader.line_num
            problem = check(row, header)
            if problem is None and line == last_line and not text.endswith("\n"):
                problem = "the file ends inside it (no newline)"
            if problem:
                damaged.append((line, problem))
            else:
                rows.append(row)
    except csv.Error as err:
        raise UserError(f"{path}: unreadable ({err}); delete it to redo the study") from err
    return rows, damaged


def read_rows(out: str | Path, check: RowCheck = row_problem) -> list[dict]:
    """The finished rows of ``out/rows.csv`` (values as strings); a damaged row is left out (to be
    redone) with one note on stderr naming the file and its line."""
    rows, damaged = read_rows_checked(out, check)
    if damaged:
        lines = ", ".join(str(n) for n, _ in damaged)
        print(f"note: {Path(out) / ROWS}: line{'s' * (len(damaged) > 1)} {lines} damaged ({damaged[0][1]}); "
              f"{'they are' if len(damaged) > 1 else 'it is'} not a finished row and will be redone", file=sys.stderr)
    return rows
