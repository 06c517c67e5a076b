"""A rows.csv cut or edited by hand (issue 27): its damaged rows are not taken as finished; the study
redoes them, and a table made from the file alone refuses them, naming the file and line."""

from __future__ import annotations

import pytest

from diffice.downstream import run_study, write_table
from diffice.downstream.study import read_rows
from diffice.errors import UserError
from tests.test_downstream import Counting, study_cfg, study_sets


@pytest.fixture()
def finished(tmp_path, one_thread):
    cfg = study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0]")
    out = tmp_path / "study"
    sets = study_sets()
    run_study(cfg, sets, out, progress=False)
    return cfg, sets, out


def _damage(path, how: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "truncated":  # the last line cut in the middle, no newline
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif how == "cell_missing":  # a row with one cell fewer than the header
        lines[2] = ",".join(lines[2].rstrip("\n").split(",")[:-1]) + "\n"
    elif how == "column_missing":  # the header and every row lose the 'auroc' column
        head = lines[0].rstrip("\n").split(",")
        i = head.index("auroc")
        lines = [",".join(c for k, c in enumerate(line.rstrip("\n").split(",")) if k != i) + "\n" for line in lines]
    elif how == "not_a_number":
        cells = lines[1].split(",")
        cells[lines[0].split(",").index("accuracy")] = "x"
        lines[1] = ",".join(cells)
    path.write_text("".join(lines))


@pytest.mark.parametrize("how, redone", [("truncated", 1), ("cell_missing", 1), ("column_missing", 2), ("not_a_number", 1)])
def test_a_damaged_row_is_redone(finished, capsys, how, redone):
    cfg, sets, out = finished
    before = {(r["task"], r["condition"]): r for r in read_rows(out)}
    _damage(out / "rows.csv", how)
    capsys.readouterr()
    with pytest.raises(UserError, match=r"rows\.csv: line \d+ is damaged"):
        write_table(out)
    again = Counting()
    res = run_study(cfg, sets, out, progress=False, train_fn=again)
    err = capsys.readouterr().err
    assert "rows.csv: line" in err and "will be redone" in err
    assert again.calls == redone
    rows = read_rows(out)
    assert len(rows) == 4 and len(res["rows"]) == 4
    assert all(r[k] not in (None, "") for r in rows for k in ("accuracy" if r["task"] == "plane" else "auroc",))
    assert {(r["task"], r["condition"]) for r in rows} == set(before)
    assert "|  |" not in (out / "table.md").read_text()  # no blank cells from a damaged row
    assert write_table(out).startswith("| model")
