"""``diffice phantoms`` and ``diffice data-check``: outputs and exit codes."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from diffice.cli import main
from tests.conftest import ROOT


def test_phantoms_command_writes_a_loadable_set(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "ph"
    assert main(["phantoms", "--out", str(out), "--count", "8", "--seed", "2", *tiny_overrides]) == 0
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 8 and {"image", "label", "patient", "split", "mask", "target", "qs_th"} <= set(rows[0])
    assert Image.open(out / rows[0]["image"]).size == (40, 32)
    assert not list(out.rglob("*.tmp*"))  # nothing half-written left behind
    code = main(["data-check", "data.source=manifest", f"data.manifest={out / 'manifest.csv'}", *tiny_overrides,
                 "data.split_fractions=[0.5,0.25,0.25]"])
    text = capsys.readouterr().out
    assert "images: 8" in text and "40x32 (8)" in text
    assert code in (0, 1)


def test_data_check_phantom_ok(tiny_overrides, capsys):
    assert main(["data-check", *tiny_overrides, "data.phantom.count=64"]) == 0
    text = capsys.readouterr().out
    assert "images: 64" in text and "problems: none" in text


def test_data_check_reports_problems_with_status_1(tmp_path, tiny_overrides, capsys):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "m.csv").write_text("image,label,patient,split\nok.png,NSP,a,train\nbad.png,SP,b,train\n"
                                    "ok.png,NSP,c,val\nok.png,NSP,c,test\n")
    code = main(["data-check", *tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}"])
    text = capsys.readouterr().out
    assert code == 1
    assert "bad.png: not a readable image" in text
    assert "split 'val' has no SP" in text and "more than one split" in text


def test_data_check_unreadable_set_is_status_2(tmp_path, tiny_overrides, capsys):
    assert main(["data-check", *tiny_overrides, "data.source=fpdb", "data.root=null"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and len(err.strip().splitlines()) == 1
    assert main(["data-check", *tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'x.csv'}"]) == 2


def test_data_check_hc18_quick(hc18_root, tiny_overrides, capsys):
    code = main(["data-check", str(ROOT / "configs/data/hc18.yaml"), f"data.root={hc18_root}", "--quick",
                 "trainer.progress_bar=false"])
    text = capsys.readouterr().out
    assert code == 0 and "images: 999" in text and "800x540 (975)" in text
