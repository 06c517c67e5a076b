"""The head-measurement study (diffice.downstream.seg_*, kind: segmentation_downstream).

Tiny and fast: 32x40 frames of bright elliptic heads on speckle; most tests train a stand-in
"segmenter" (a threshold fitted to the training frames), one trains the real one for two steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffice.cli import main
from diffice.config import load_config
from diffice.data.anomalies import ellipse_perimeter
from diffice.downstream.frames import FrameSet, load_synthesis_run
from diffice.downstream.rows import REAL, SYNTH
from diffice.downstream.seg_study import HeadTest, read_rows, read_synthetic, row_problem, run_seg_study
from diffice.downstream.seg_table import numeric_rows, paired_summary
from diffice.downstream.seg_train import head_measures, train_segmenter
from diffice.errors import UserError
from diffice.metrics.biometry import head_circumference
from diffice.metrics.stats import paired_difference, seed_interval

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 40)
PX = (0.5, 0.25)  # mm per row, per column


def ellipse(cy, cx, ry, rx, size=SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.int16)


def heads(n: int, seed: int, origin: str = "real", prefix: str = "h") -> FrameSet:
    """Bright filled heads of random size and place on dark speckle, with their masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        m = ellipse(16 + rng.integers(-2, 3), 20 + rng.integers(-3, 4), rng.integers(7, 11), rng.integers(9, 14))
        images.append(np.clip(40 + 140 * m + rng.normal(0, 15, SIZE), 0, 255).astype(np.uint8))
        masks.append(m)
    return FrameSet(np.stack(images), np.full(n, -1), [""] * n, [origin] * n, [f"{prefix}{seed}_{i}" for i in range(n)],
                    masks=np.stack(masks))


def head_test(n: int = 6) -> HeadTest:
    frames = heads(n, 99, prefix="t")
    hc = [head_circumference(m, PX) + 1.0 for m in frames.masks]  # annotated 1 mm above what the masks measure
    return HeadTest(frames, np.tile(PX, (n, 1)), hc)


LABELS, SEEDS = ["2", "all"], [0, 1]


def study_inputs():
    real_all = heads(5, 1)
    train = {("2", s): real_all.subset([s, s + 2]) for s in SEEDS} | {("all", s): real_all for s in SEEDS}
    synth = heads(4, 7, "synthetic", "s")
    return train, {k: synth for k in train}


def study_cfg(tmp_path, *extra):
    return load_config([], [f"paths.runs={tmp_path / 'runs'}", "trainer.accelerator=cpu", "wandb.mode=disabled",
                            f"data.image_size=[{SIZE[0]},{SIZE[1]}]", "data.classes=[background,head]",
                            "segmenter.encoder=tu-test_resnet", "segmenter.decoder_channels=[16,8,8,8,8]",
                            f"seg_downstream.labelled={LABELS}", f"seg_downstream.seeds={SEEDS}",
                            "seg_downstream.steps=2", "seg_downstream.batch_size=4", *extra])


class Threshold(nn.Module):
    """A stand-in segmenter: head where the frame is brighter than ``level`` (in [-1, 1])."""

    def __init__(self, level: float):
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(level)))

    def forward(self, x):
        return torch.cat([self.level - x, x - self.level], 1)


class Recording:
    """A train_fn that records what each training got and fits a threshold between its frames'
    head and background; raises KeyboardInterrupt at call ``fail_at`` (a killed study)."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[dict] = []
        self.fail_at = fail_at

    def __call__(self, cfg, num_classes, images, masks, *, sample_weights, seed, **kw):
        self.calls.append({"images": images, "masks": masks, "weights": sample_weights, "seed": seed, **kw})
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        x = images.astype(np.float64) / 127.5 - 1.0
        return Threshold((x[masks > 0].mean() + x[masks == 0].mean()) / 2 + 0.01 * seed).eval()


def _rows_without_times(out):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in read_rows(out, row_problem)]


# ----------------------------------------------------------------------------- the measurement


def test_hc_of_a_known_ellipse_and_the_measures():
    size = (120, 160)
    mask = ellipse(60, 80, 40, 60, size)  # semi-axes 40 rows x 0.5 mm = 20 mm, 60 cols x 0.25 mm = 15 mm
    assert head_circumference(mask, PX) == pytest.approx(ellipse_perimeter(20.0, 15.0), rel=0.01)
    assert head_circumference(ellipse(60, 80, 40, 60, size), (1.0, 1.0)) == pytest.approx(ellipse_perimeter(60.0, 40.0), rel=0.01)
    truth = np.stack([mask, mask])
    pred = np.stack([mask, np.zeros_like(mask)])  # found; no head at all
    m = head_measures(pred, truth, np.tile(PX, (2, 1)), [100.0, 100.0])
    assert m[0]["dice"] == 1.0 and m[0]["head_found"] == 1
    assert m[0]["hc_abs_mm"] == pytest.approx(abs(ellipse_perimeter(20.0, 15.0) - 100.0), rel=0.02)
    assert m[1] == {"dice": 0.0, "hc_mm": m[1]["hc_mm"], "head_found": 0, "hc_abs_mm": 100.0}  # measured as 0 mm
    assert math.isnan(m[1]["hc_mm"])


# ----------------------------------------------------------------------------- synthetic pairs


def _png(path: Path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def synthesis_folder(root: Path, layouts: int = 2, samples: int = 2, size=(64, 80), stamp: dict | None = None) -> Path:
    """A synthesis run folder as ``diffice synthesize`` writes it: layouts/{i:06d}/ with
    layout_classes.png (255 = unspecified), sample_j.png and record.json; a run.json if ``stamp``."""
    for i in range(layouts):
        folder = root / "layouts" / f"{i:06d}"
        lay = ellipse(size[0] // 2, size[1] // 2, size[0] // 4 + i, size[1] // 3, size).astype(np.uint8)
        lay[:2] = 255
        _png(folder / "layout_classes.png", lay)
        for j in range(samples):
            _png(folder / f"sample_{j}.png", 40 + 150 * (lay == 1) + 10 * j)
        (folder / "record.json").write_text(json.dumps({"index": i, "plane": -1, "samples": [{}] * samples}))
    if stamp is not None:
        (root / "run.json").write_text(json.dumps({"kind": "synthesis", "version": 1, "settings": stamp}))
    return root


def test_synthetic_pairs_carry_their_layouts(tmp_path):
    run = synthesis_folder(tmp_path / "syn")
    pairs = load_synthesis_run(run, "layouts", size=SIZE, mask_classes=2)
    assert len(pairs) == 4 and pairs.origin == ["synthetic"] * 4 and pairs.masks.shape == (4, *SIZE)
    assert set(np.unique(pairs.masks).tolist()) == {-1, 0, 1}  # 255 = unspecified -> -1 (ignored by the loss)
    head = pairs.masks[0] == 1
    assert pairs.images[0][head].mean() > 150 > pairs.images[0][pairs.masks[0] == 0].mean()  # mask and frame agree
    assert load_synthesis_run(run, "layouts").masks is None
    (run / "layouts" / "000001" / "layout_classes.png").unlink()
    with pytest.raises(UserError) as err:
        load_synthesis_run(run, "layouts", mask_classes=2)
    assert "\n" not in str(err.value) and "000001/layout_classes.png" in str(err.value)


def test_synthetic_folders_per_draw_and_the_label_rule(tmp_path):
    for n in ("2", "all"):
        for s in SEEDS:
            synthesis_folder(tmp_path / f"syn-{n}-{s}", stamp={"data": {"labelled": None if n == "all" else 2, "labelled_seed": s}})
    got = read_synthetic(str(tmp_path / "syn-{n}-{seed}"), LABELS, SEEDS, SIZE, 2)
    assert set(got) == {(n, s) for n in LABELS for s in SEEDS} and got[("2", 1)].meta["path"].endswith("syn-2-1")
    one = read_synthetic(str(tmp_path / "syn-2-0"), LABELS, SEEDS, SIZE, 2)  # one folder for every training
    assert len({id(v) for v in one.values()}) == 1
    (tmp_path / "syn-2-1" / "run.json").write_text(json.dumps({"kind": "synthesis", "version": 1,
                                                                 "settings": {"data": {"labelled": None}}}))
    with pytest.raises(UserError) as err:  # made from every label: the generator saw labels the segmenter does not
        read_synthetic(str(tmp_path / "syn-{n}-{seed}"), LABELS, SEEDS, SIZE, 2)
    assert "\n" not in str(err.value) and "syn-2-1 was made with data.labelled=None" in str(err.value)


def test_a_missing_synthetic_folder_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere-{n}-{seed}"
    code = main(["experiment", str(ROOT / "experiments/hc18_downstream.yaml"), "--preset", "hc18",
                 f"paths.runs={tmp_path}", "wandb.mode=disabled", f"seg_downstream.synthetic={missing}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"seg_downstream.synthetic: {tmp_path}/nowhere-50-0: synthesis run folder not found (for N=50, seed 0)" in err
    assert not (tmp_path / "experiments").exists()  # nothing written


# ----------------------------------------------------------------------------- the study


def test_the_synthetic_arm_has_the_pairs_and_the_control_does_not(tmp_path):
    train, synth = study_inputs()
    rec = Recording()
    res = run_seg_study(study_cfg(tmp_path), head_test(), train, synth, tmp_path / "s", progress=False, train_fn=rec)
    assert len(rec.calls) == len(LABELS) * len(SEEDS) * 2 and res["trained"] == 8
    synthetic = {frame.tobytes() for frame in synth[("2", 0)].images}
    for (lab, seed, arm), call in zip([(n, s, a) for n in LABELS for s in SEEDS for a in (REAL, SYNTH)], rec.calls):
        real = train[(lab, seed)]
        got = [frame.tobytes() for frame in call["images"]]
        assert call["seed"] == seed and call["augment"] is True and got[:len(real)] == [f.tobytes() for f in real.images]
        if arm == REAL:
            assert len(got) == len(real) and not synthetic & set(got)
        else:
            assert len(got) == len(real) + 4 and set(got[len(real):]) == synthetic
            w = call["weights"]
            assert w[len(real):].sum() == pytest.approx(0.5) and w[:len(real)].sum() == pytest.approx(0.5)
    rows = numeric_rows(res["rows"])
    assert {(r["arm"], r["n_train_synthetic"]) for r in rows} == {(REAL, 0), (SYNTH, 4)}
    assert {r["n_train_real"] for r in rows if r["labelled"] == "2"} == {2}
    assert len(rows) == 8 * 6 and all(r["head_found"] == 1 for r in rows)


def test_the_augmentation_only_arm_alone_and_its_rows_kept_for_the_synthetic_run(tmp_path):
    train, synth = study_inputs()
    cfg, test, out = study_cfg(tmp_path, "seg_downstream.synthetic=null"), head_test(), tmp_path / "s"
    first = Recording()
    res = run_seg_study(cfg, test, train, {}, out, progress=False, train_fn=first)
    assert len(first.calls) == len(LABELS) * len(SEEDS) == res["trained"] and res["skipped"] == 0
    assert {r["arm"] for r in numeric_rows(res["rows"])} == {REAL} and "synthetic pairs" not in res["table"]
    both = Recording()  # the folders come later: only the synthetic arm trains, beside the kept rows
    res = run_seg_study(study_cfg(tmp_path), test, train, synth, out, progress=False, train_fn=both)
    assert (res["trained"], res["skipped"]) == (4, 4)
    assert [len(c["images"]) for c in both.calls] == [len(train[(n, s)]) + 4 for n in LABELS for s in SEEDS]
    assert "+ synthetic pairs" in res["table"]


def test_rows_resume_after_a_kill_without_loss_or_duplicates(tmp_path):
    train, synth = study_inputs()
    cfg, test, out = study_cfg(tmp_path), head_test(), tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):  # killed in the 3rd training (N=2, seed 1, augmentation only)
        run_seg_study(cfg, test, train, synth, out, progress=False, train_fn=Recording(fail_at=3))
    assert len(read_rows(out, row_problem)) == 2 * 6
    again = Recording()
    res = run_seg_study(cfg, test, train, synth, out, progress=False, train_fn=again)
    assert len(again.calls) == 6 and (res["trained"], res["skipped"]) == (6, 2)
    keys = [(r["labelled"], r["seed"], r["arm"], r["frame"]) for r in read_rows(out, row_problem)]
    assert len(keys) == len(set(keys)) == 8 * 6
    run_seg_study(cfg, test, train, synth, tmp_path / "whole", progress=False, train_fn=Recording())
    assert _rows_without_times(out) == _rows_without_times(tmp_path / "whole")
    done = Recording()
    res = run_seg_study(cfg, test, train, synth, out, progress=False, train_fn=done)
    assert done.calls == [] and res["table"] == (out / "table.md").read_text() and "| 2 | augmentation only | 2 |" in res["table"]
    # a damaged row is redone (its training again), other frames under the same rows are refused
    lines = (out / "rows.csv").read_text().splitlines(keepends=True)
    (out / "rows.csv").write_text("".join(lines[:-1]) + lines[-1].split(",")[0])
    redo = Recording()
    run_seg_study(cfg, test, train, synth, out, progress=False, train_fn=redo)
    assert len(redo.calls) == 1 and len(read_rows(out, row_problem)) == 8 * 6
    other = {k: heads(4, 8, "synthetic", "o") for k in synth}
    with pytest.raises(UserError, match=r"rows.csv: N=2, seed 0, real\+synthetic was trained on other frames"):
        run_seg_study(cfg, test, train, other, out, progress=False, train_fn=Recording())
    with pytest.raises(UserError, match="steps: 2 there, 3 now"):
        run_seg_study(study_cfg(tmp_path, "seg_downstream.steps=3"), test, train, synth, out, progress=False)
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["kind"] == "segmentation_downstream" and stamp["settings"]["segmenter"]["encoder"] == "tu-test_resnet"


def test_paired_differences_are_paired_by_seed_and_frame():
    def rows(arm, seed, values):
        return [{"labelled": "50", "seed": seed, "arm": arm, "frame": f"f{i}", "hc_abs_mm": v, "dice": 0.9,
                 "head_found": 1} for i, v in enumerate(values)]

    data = (rows(REAL, 0, [1, 2, 3]) + rows(SYNTH, 0, [0.5, 1.5, 2.5]) + rows(REAL, 1, [2, 2, 2])
            + rows(SYNTH, 1, [1, 1, 1]) + rows(REAL, 2, [9, 9, 9]))  # seed 2 has no synthetic arm: not paired
    p = paired_summary(data, "50", ["f0", "f1", "f2"])
    hc = p["hc_abs_mm"]
    assert p["seeds"] == 2
    assert hc["frames"]["value"] == pytest.approx(-0.75)  # per frame over seeds 0 and 1: [-0.75] * 3
    assert hc["frames"] == paired_difference([1.5, 2.0, 2.5], [0.75, 1.25, 1.75])
    assert hc["seeds"] == seed_interval([-0.5, -1.0])  # per seed: mean over frames of syn - aug
    assert hc["relative"] == pytest.approx(-0.75 / 2.0)
    assert not p["target_met"]  # 37.5 % lower, but two seeds' t interval includes 0
    data += rows(SYNTH, 2, [8.2, 8.3, 8.1])
    p = paired_summary(data, "50", ["f0", "f1", "f2"])
    want = seed_interval([-0.5, -1.0, -0.8])
    assert p["seeds"] == 3 and all(p["hc_abs_mm"]["seeds"][k] == pytest.approx(want[k]) for k in ("value", "low", "high"))
    assert p["dice"]["frames"]["value"] == 0.0


def test_training_is_seeded(tmp_path, one_thread):
    cfg = study_cfg(tmp_path)
    s = heads(6, 3)
    kw = dict(steps=2, batch_size=4, lr=1e-3, device="cpu")
    a = train_segmenter(cfg, 2, s.images, s.masks, seed=0, **kw).state_dict()
    b = train_segmenter(cfg, 2, s.images, s.masks, seed=0, **kw).state_dict()
    c = train_segmenter(cfg, 2, s.images, s.masks, seed=1, **kw).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- the experiment kind


def _words(tmp_path, manifest, *extra) -> list[str]:
    return [str(ROOT / "experiments/hc18_downstream.yaml"), "--preset", "hc18", f"paths.runs={tmp_path / 'runs'}",
            "wandb.mode=disabled", "trainer.progress_bar=false", "trainer.accelerator=cpu", f"data.manifest={manifest}",
            f"data.image_size=[{SIZE[0]},{SIZE[1]}]", "segmenter.encoder=tu-test_resnet",
            "segmenter.decoder_channels=[16,8,8,8,8]", "seg_downstream.steps=2", "seg_downstream.batch_size=4",
            f"seg_downstream.seeds={SEEDS}", f"seg_downstream.synthetic={tmp_path / 'syn-{n}-{seed}'}", *extra]


def test_the_experiment_on_a_fake_hc18_end_to_end(tmp_path, capsys, one_thread):
    """hc18-faults of a fake HC18 -> the experiment kind: each draw's labelled clean frames, the clean
    test frames, the synthetic folders; a rerun trains nothing."""
    from tests.test_hc18_faults import _fake_hc18

    root = _fake_hc18(tmp_path / "hc18", n=20)
    assert main(["hc18-faults", "--root", str(root), "--out", str(tmp_path / "set"), "--size", "54", "80"]) == 0
    for n in LABELS:
        for s in SEEDS:
            synthesis_folder(tmp_path / f"syn-{n}-{s}", stamp={"data": {"labelled": None if n == "all" else int(n), "labelled_seed": s}})
    manifest = tmp_path / "set" / "manifest.csv"
    assert main(["experiment", *_words(tmp_path, manifest, f"seg_downstream.labelled={LABELS}")]) == 0
    row = tmp_path / "runs" / "experiments" / "hc18_downstream" / "hc18-heads"
    rows = numeric_rows(read_rows(row, row_problem))
    tests = sorted({r["frame"] for r in rows})
    assert tests and all(f.endswith("HC") for f in tests)  # the clean frames only (a faulted twin is NAME_FAULT)
    assert len(rows) == 8 * len(tests)
    n_real = {(r["labelled"], r["seed"]): r["n_train_real"] for r in rows}
    assert n_real[("2", 0)] == n_real[("2", 1)] == 2 and n_real[("all", 0)] == n_real[("all", 1)] > 2
    table = (tmp_path / "runs" / "experiments" / "hc18_downstream" / "table.md").read_text()
    assert "## hc18 heads" in table and "| all | + synthetic pairs | 2 |" in table and "Wilcoxon p" in table
    before = (row / "rows.csv").read_text()
    capsys.readouterr()
    assert main(["experiment", *_words(tmp_path, manifest, f"seg_downstream.labelled={LABELS}")]) == 0
    assert (row / "rows.csv").read_text() == before  # nothing trained again
    one = f"seg_downstream.synthetic={tmp_path / 'syn-2-0'}"  # one folder for every training
    assert main(["experiment", *_words(tmp_path, manifest, "seg_downstream.labelled=[999]", one)]) == 2
    assert "seg_downstream.labelled: data.labelled=999:" in capsys.readouterr().err


@pytest.fixture
def hc18_faults() -> Path:
    manifest = ROOT / "data" / "hc18-faults" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip("data/hc18-faults not written (diffice hc18-faults --root ../shared/data/hc18 --out data/hc18-faults)")
    return manifest


def test_real_hc18_draws_and_test_frames(hc18_faults):
    from diffice.experiments.seg_downstream import real_sets

    cfg = load_config([ROOT / "configs/preset/hc18.yaml"], ["wandb.mode=disabled", f"data.manifest={hc18_faults}",
                                                            "data.image_size=[64,80]", "seg_downstream.test_limit=3"])
    train, test = real_sets(cfg, ["5"], [0, 1])
    a, b = train[("5", 0)], train[("5", 1)]
    assert len(a) == len(b) == 5 and a.ids != b.ids and all(i.endswith("HC") for i in a.ids + b.ids)
    assert (a.masks == 1).any(axis=(1, 2)).all() and len(test.frames) == 3
    assert np.isfinite(test.pixel_mm).all() and (test.hc_mm > 50).all() and not set(test.frames.ids) & set(a.ids)
