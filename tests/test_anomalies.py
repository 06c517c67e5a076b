"""Anomalies (issue 14): one definition drawn by the phantom and by the layout operators,
measured alike; bad input is one line; ``diffice phantoms --anomalies`` writes a test set."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from diffice.cli import main
from diffice.data import anomalies as AN
from diffice.data import phantom as ph
from diffice.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")
CLASSES = ["background", "head", "bone", "th", "csp", "fp"]
SIZE = (64, 80)
LAYOUT_ANOMALIES = [n for n in AN.ANOMALIES if n != "ventriculomegaly"]


def _frames(name: str, n: int, seed: int = 3) -> list[int]:
    out, i = [], 0
    while len(out) < n:
        if ph.eligible(name, ph.sample_frame(i, seed)["actual"]):
            out.append(i)
        i += 1
    return out


@pytest.mark.parametrize("name", LAYOUT_ANOMALIES)
def test_phantom_and_layout_operator_draw_the_same_anomaly(name):
    """The phantom's abnormal mask and the layout operator applied to the normal mask measure
    alike, and both differ from the normal frame in the anomaly's direction."""
    sev = {"absent_csp": 1.0, "banana_cerebellum": 0.5, "enlarged_cm": 14.0, "microcephaly": 0.25, "lemon": 0.18}[name]
    agree = 0
    idx = _frames(name, 4)
    for i in idx:
        normal = ph.render_frame(i, SIZE, 3, with_target=False)
        abnormal = ph.render_frame(i, SIZE, 3, with_target=False, anomaly=name, severity=sev)
        assert abnormal["anomaly"] == name and abnormal["severity"] == sev
        frame = AN.head_frame(normal["mask"], need_front=False)
        lay = AN.apply_anomaly(normal["mask"], name, sev, ga_weeks=normal["ga"])
        v0, v_ph, v_lay = (AN.measure(name, m, frame) for m in (normal["mask"], abnormal["mask"], lay))
        direction = 1.0 if name in ("enlarged_cm", "lemon") else -1.0
        assert (v_ph - v0) * direction > 0 and (v_lay - v0) * direction > 0, (i, v0, v_ph, v_lay)
        tol = AN.TOLERANCE[name] * (1.0 if name == "lemon" else v0)
        agree += abs(v_ph - v_lay) <= tol
    assert agree >= len(idx) - 1, f"{name}: phantom and layout operator agree on {agree} of {len(idx)} frames"


def test_severity_sets_the_measured_change():
    i = _frames("microcephaly", 1)[0]
    normal = ph.render_frame(i, (128, 160), 3, with_target=False)
    hc0 = AN.measure("microcephaly", normal["mask"])
    for s in (0.1, 0.3):
        hc = AN.measure("microcephaly", ph.render_frame(i, (128, 160), 3, with_target=False, anomaly="microcephaly", severity=s)["mask"])
        assert hc / hc0 == pytest.approx(1 - s, abs=0.03)
    i = _frames("absent_csp", 1)[0]
    normal = ph.render_frame(i, (128, 160), 3, with_target=False)
    half = ph.render_frame(i, (128, 160), 3, with_target=False, anomaly="absent_csp", severity=0.5)
    gone = ph.render_frame(i, (128, 160), 3, anomaly="absent_csp")
    a0 = (normal["mask"] == AN.CSP).sum()
    assert (half["mask"] == AN.CSP).sum() / a0 == pytest.approx(0.5, abs=0.15)
    assert (gone["mask"] == AN.CSP).sum() == 0 and gone["concepts"]["qs_csp"] == 0.0 and gone["label"] == 0
    assert (gone["target"] != normal["target"]).any()  # the target keeps the anomaly (it is anatomy, not quality)


def test_ventriculomegaly_widens_the_atrium_in_the_phantom_and_is_refused_on_a_layout():
    i = _frames("ventriculomegaly", 1)[0]
    normal = ph.render_frame(i, (128, 160), 3, with_target=False)
    wide = ph.render_frame(i, (128, 160), 3, with_target=False, anomaly="ventriculomegaly", severity=20)
    assert (np.abs(normal["image"].astype(int) - wide["image"].astype(int)) > 10).sum() > 50
    with pytest.raises(UserError, match="no lateral ventricle"):
        AN.apply_anomaly(normal["mask"], "ventriculomegaly", None)
    with pytest.raises(ValueError, match="does not show"):
        ph.render_frame(_first_not("banana_cerebellum"), SIZE, 3, anomaly="banana_cerebellum")


def _first_not(name: str) -> int:
    return next(i for i in range(100) if not ph.eligible(name, ph.sample_frame(i, 3)["actual"]))


def test_hadlock_head_circumference():
    assert AN.hc_mm(20.0) == pytest.approx(175, abs=8)  # Hadlock's tables: about 17.5 cm at 20 weeks
    assert AN.hc_mm(36.0) == pytest.approx(320, abs=12)
    assert AN.ellipse_perimeter(1.0, 1.0) == pytest.approx(2 * math.pi)


@pytest.mark.parametrize("args, msg", [
    (("nope", None), "unknown anomaly 'nope'"),
    (("microcephaly", 0.9), "severity 0.9 of microcephaly is outside 0.1..0.35"),
    (("enlarged_cm", 3.0), "severity 3 of enlarged_cm is outside 10..15"),
])
def test_bad_anomaly_or_severity(args, msg):
    with pytest.raises(UserError, match=msg):
        AN.anomaly(*args)


def test_layout_lacking_the_structure_is_refused():
    i = next(i for i in range(100) if ph.sample_frame(i, 3)["actual"]["vis_fp"] < 0.5 and ph.sample_frame(i, 3)["actual"]["cut"] == 0)
    mask = ph.render_frame(i, SIZE, 3, with_target=False)["mask"]
    from diffice.synthesis.layouts import apply_edit

    for spec, msg in (("anomaly:banana_cerebellum", "has no fp"), ("anomaly:enlarged_cm:12", "has no fp"),
                      ("anomaly:microcephaly:2", "outside 0.1..0.35"), ("anomaly:what", "unknown anomaly")):
        with pytest.raises(UserError, match=msg):
            apply_edit(mask.astype(np.int64), spec, CLASSES, 24.0)
    with pytest.raises(UserError, match="needs the gestational age"):
        j = _frames("enlarged_cm", 1)[0]
        apply_edit(ph.render_frame(j, SIZE, 3, with_target=False)["mask"].astype(np.int64), "anomaly:enlarged_cm", CLASSES)
    with pytest.raises(UserError, match="anomaly edits need the classes"):
        apply_edit(mask.astype(np.int64), "anomaly:microcephaly", ["background", "head", "csp", "bone", "th", "fp"])


def test_phantoms_anomalies_writes_a_test_set(tmp_path, capsys):
    out = tmp_path / "abn"
    assert main(["phantoms", TINY, "--out", str(out), "--count", "12", "--anomalies", "data.image_size=[32,40]",
                 "trainer.progress_bar=false"]) == 0
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 12 and {r["anomaly"] for r in rows} == set(AN.ANOMALIES)
    assert all(r["split"] == "test" for r in rows)
    for r in rows:
        a = AN.ANOMALIES[r["anomaly"]]
        assert a.lo <= float(r["severity"]) <= a.hi
        assert (out / r["image"]).is_file() and (out / r["normal"]).is_file() and (out / r["normal_mask"]).is_file()
    # frames of patients the training data (data.phantom.seed) never had
    assert rows[0]["id"].startswith("phantom_s1_")
    # the manifest loads as a data set
    from diffice.config import load_config
    from diffice.data import DiffIceDataModule

    cfg = load_config([TINY], ["data.source=manifest", f"data.manifest={out / 'manifest.csv'}", "data.image_size=[32,40]"])
    dm = DiffIceDataModule(cfg)
    dm.setup()
    assert len(dm.dataset("test")) == 12


@pytest.mark.parametrize("argv, msg", [
    (["--anomalies", "--only", "nope"], "--anomalies: unknown anomaly 'nope'"),
    (["--anomalies", "--only", "lemon", "--severity", "0.5"], "severity 0.5 of lemon is outside"),
    (["--severity", "0.5"], "--severity needs --anomalies"),
])
def test_phantoms_anomalies_bad_input(tmp_path, capsys, argv, msg):
    code = main(["phantoms", TINY, "--out", str(tmp_path / "x"), "--count", "2", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "x").exists()


def test_changed_width_is_the_widest_disc_in_the_changed_pixels():
    from diffice.data.anomalies import changed_width

    before = np.zeros((20, 24), np.uint8)
    assert changed_width(before, before) == 0.0
    line = before.copy()
    line[5, 2:20] = 1
    assert changed_width(before, line) == 1.0
    block = before.copy()
    block[0:3, 0:3] = 2  # at the border: the frame's edge does not count as unchanged
    assert changed_width(before, block) == 3.0
    big = before.copy()
    big[4:13, 4:13] = 1
    assert changed_width(before, big) == 9.0


def test_anomaly_table_checks_wide_structures_apart():
    from diffice.synthesis.tables import anomaly_table

    def run(name, k, n, width, wide_k, wide_n, ctl):
        return {"anomalies": {name: {"edits": n, "severities": [1.0], "within_tolerance": k, "checked": n,
                                     "source_within_tolerance": 0, "within_change": k, "changed_width_median": width,
                                     "wide_within_tolerance": wide_k, "wide_checked": wide_n,
                                     "wide_source_within_tolerance": ctl}},
                "edit_psnr_outside_mean": 35.0, "edit_psnr_outside_min": 30.0}

    text = anomaly_table([("a", run("absent_csp", 9, 10, 5.0, 8, 9, 1)), ("b", run("banana_cerebellum", 2, 10, 2.0, 0, 0, 0))])
    assert "changed ≥ 4 px: as requested | its control" in text
    a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert a.startswith("| a | absent_csp | 1 | 10 | 5.0 | 9 of 10") and "| 8 of 9 (89 %" in a and "| 1 of 9 (11 %" in a
    assert "| b | banana_cerebellum | 1 | 10 | 2.0 |" in text
    total = next(line for line in text.splitlines() if line.startswith("| all |"))
    assert "| 8 of 9 (89 %" in total and "| 1 of 9 (11 %" in total
    # runs recorded before the width was kept: no width, no wide check
    old = {"anomalies": {"lemon": {"edits": 3, "severities": [0.1], "within_tolerance": 1, "checked": 3}}}
    text = anomaly_table([("c", old)])
    assert "| c | lemon | 0.1 | 3 | n/a |" in text and "| n/a | n/a |" in text
