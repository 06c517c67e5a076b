"""The downstream study (diffice.downstream): frame readers, training, metrics, the resumable study.

Tiny and fast: 32x40 frames of bright blobs whose position is the class, timm's test_* networks,
a few steps.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffice.config import load_config
from diffice.downstream import FrameSet, load_manifest, load_synthesis_run, run_study, write_table
from diffice.downstream.frames import concat
from diffice.downstream.metrics import format_mean_sd, mean_sd, per_anomaly_auroc
from diffice.downstream.study import group_weights, read_rows
from diffice.downstream.train import build_model, predict, train_classifier
from diffice.errors import UserError
from diffice.metrics.classification import accuracy, auroc, balanced_accuracy

SIZE = (32, 40)
MODELS = ["test_resnet", "test_vit"]


def blobs(n: int, seed: int, anomaly: str = "", origin: str = "real", prefix: str = "f") -> FrameSet:
    """Frames with a bright blob whose column is the plane (0 left, 1 middle, 2 right), speckle
    noise; 'hole' anomalies carry a dark square in the blob, 'bar' anomalies a bright bar."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    images, planes = [], []
    for i in range(n):
        p = i % 3
        cx, cy = 8 + 12 * p + rng.integers(-2, 3), 16 + rng.integers(-3, 4)
        img = 40 + 150 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 30.0) + rng.normal(0, 12, SIZE)
        if anomaly == "hole":
            img[cy - 2:cy + 2, cx - 2:cx + 2] = 10
        elif anomaly == "bar":
            img[4:7, 4:36] = 230
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        planes.append(p)
    return FrameSet(np.stack(images), np.array(planes), [anomaly] * n, [origin] * n,
                    [f"{prefix}{seed}_{i}" for i in range(n)])


def study_sets() -> dict[str, FrameSet]:
    return {
        "real_train": blobs(12, 1),
        "real_test": blobs(9, 2),
        "abnormal_test": concat([blobs(3, 3, "hole", prefix="h"), blobs(3, 4, "bar", prefix="b")]),
        "synth_normal": blobs(9, 5, origin="synthetic", prefix="s"),
        "synth_abnormal": concat([blobs(3, 6, "hole", "synthetic", "sh"), blobs(3, 7, "bar", "synthetic", "sb")]),
    }


def study_cfg(tmp_path, *extra: str):
    return load_config([], [f"paths.runs={tmp_path / 'runs'}", "trainer.accelerator=cpu", "wandb.mode=disabled",
                            f"downstream.models={MODELS}", "downstream.seeds=[0,1]", "downstream.steps=2",
                            "downstream.batch_size=4", f"downstream.image_size=[{SIZE[0]},{SIZE[1]}]",
                            "downstream.real_train_limit=9", *extra])


# ----------------------------------------------------------------------------- metrics


def test_auroc_perfect_inverted_tied_and_exact():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auroc(s, y) == 1.0
    assert auroc(-s, y) == 0.0
    assert auroc(np.ones(5), y) == 0.5
    # one tie between a positive and a negative counts one half: (1 + 0.5 + 2) / 4
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    from torchmetrics.functional.classification import binary_auroc

    rng = np.random.default_rng(0)
    s, y = np.round(rng.random(200), 1), rng.integers(0, 2, 200)  # many ties
    assert auroc(s, y) == pytest.approx(float(binary_auroc(torch.tensor(s), torch.tensor(y))), abs=1e-6)
    # the guide's report gives tensors: the same exact number (torchmetrics rounds in float32)
    assert auroc(torch.tensor(s, dtype=torch.float32), torch.tensor(y)) == auroc(s.astype(np.float32), y)


def test_accuracy_balanced_per_anomaly_and_spread():
    assert accuracy([0, 1, 1, 1], [0, 1, 1, 0]) == 0.75
    assert balanced_accuracy([0, 1, 1, 1], [0, 1, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    per = per_anomaly_auroc([0.1, 0.2, 0.9, 0.15], ["", "", "a", "b"])
    assert per == {"a": 1.0, "b": 0.5}
    mean, sd, n = mean_sd([0.5, 0.7, float("nan")])
    assert (mean, n) == (pytest.approx(0.6), 2) and sd == pytest.approx(math.sqrt(0.02))
    assert math.isnan(mean_sd([0.5])[1])
    # mean over seeds with its 95 % t interval: 0.6 ± 12.706 * 0.1414 / sqrt(2) = 0.6 ± 1.271
    assert format_mean_sd([0.5, 0.7]) == "0.600 [-0.671, 1.871] (2)"
    assert format_mean_sd([0.1, -0.1, 0.3], signed=True) == "+0.100 [-0.397, +0.597] (3)"
    assert format_mean_sd([]) == "n/a"


# ----------------------------------------------------------------------------- training


def test_models_build_without_downloads_and_vit_patch_divides():
    vit = build_model("test_vit", 3, SIZE)  # 16 does not divide 40: patch 8
    assert tuple(vit.patch_embed.patch_size) == (8, 8)
    assert build_model("test_resnet", 2, SIZE)(torch.zeros(2, 1, *SIZE)).shape == (2, 2)
    with pytest.raises(UserError, match="not a timm model"):
        build_model("no_such_net", 3, SIZE)


def test_training_is_deterministic_per_seed(one_thread):
    s = blobs(12, 0)
    kw = dict(steps=3, batch_size=4, lr=1e-3, device="cpu", balanced=True)
    a = train_classifier("test_resnet", s.images, s.plane, 3, seed=0, **kw)
    b = train_classifier("test_resnet", s.images, s.plane, 3, seed=0, **kw)
    c = train_classifier("test_resnet", s.images, s.plane, 3, seed=1, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    p = predict(a, s.images, batch_size=5)
    assert p.shape == (12, 3) and np.allclose(p.sum(1), 1.0) and not a.training
    # Lightning Fabric runs the loop: under bf16 autocast the same seed trains other (nearby) weights
    d = train_classifier("test_resnet", s.images, s.plane, 3, seed=0, precision="bf16-mixed", **kw)
    sd = d.state_dict()
    assert not all(torch.equal(sa[k], sd[k]) for k in sa)
    assert all(torch.allclose(sa[k].float(), sd[k].float(), atol=0.05) for k in sa)


def test_the_blobs_are_learnable(one_thread):
    train, test = blobs(30, 0), blobs(30, 1)
    net = train_classifier("test_resnet", train.images, train.plane, 3, steps=40, batch_size=16, lr=3e-3,
                           seed=0, device="cpu")
    assert accuracy(test.plane, predict(net, test.images).argmax(1)) >= 0.7


def test_group_weights_balance_classes_and_origins():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    origin = ["real", "real", "synthetic", "real", "synthetic", "synthetic", "synthetic", "synthetic"]
    w = group_weights(labels, origin, balance=True, synthetic_share=0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[labels == 0].sum() == pytest.approx(0.5)
    assert w[2] == pytest.approx(0.25) and w[0] == pytest.approx(0.125) and w[4] == pytest.approx(0.0625)
    w = group_weights(labels, origin, balance=False, synthetic_share=None)
    assert np.allclose(w, 1 / 8)


# ----------------------------------------------------------------------------- the study


class Counting:
    """train_classifier that counts its calls and can fail on the k-th (a killed run)."""

    def __init__(self, fail_at: int | None = None):
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        return train_classifier(*args, **kwargs)


def test_study_writes_rows_resumes_and_tabulates(tmp_path, one_thread):
    cfg = study_cfg(tmp_path)
    out = tmp_path / "study"
    sets = study_sets()
    first = Counting(fail_at=4)  # killed during the 4th training (seed 0, test_vit, plane/real)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, sets, out, progress=False, train_fn=first)
    rows = read_rows(out)
    assert len(rows) == 4  # test_resnet seed 0: plane/real, anomaly/real (MSP), plane/+synthetic, anomaly/+synthetic
    again = Counting()
    res = run_study(cfg, sets, out, progress=False, train_fn=again)
    assert again.calls == 2 * 2 * 3 - 3  # 12 trainings, 3 were done
    assert res["trained"] == 9 and res["skipped"] == 3
    rows = read_rows(out)
    keys = [(r["model"], r["seed"], r["task"], r["condition"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * 4
    for r in res["rows"]:
        if r["task"] == "plane":
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["balanced_accuracy"] <= 1.0
        else:
            assert 0.0 <= r["auroc"] <= 1.0
            assert {"auroc_hole", "auroc_bar"} <= set(r)
        if r["condition"] == "real+synthetic" and r["task"] == "plane":
            assert (r["n_train_real"], r["n_train_synthetic"]) == (9, 9)
        if r["condition"] == "real+synthetic" and r["task"] == "anomaly":  # normals: real + synthetic
            assert (r["n_train_real"], r["n_train_synthetic"]) == (9, 15)
    # the resumed study's rows equal an uninterrupted study's, but for the training times
    whole = run_study(cfg, sets, tmp_path / "whole", progress=False)

    def rows_without_times(folder):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in read_rows(folder)]

    assert whole["trained"] == 12 and rows_without_times(out) == rows_without_times(tmp_path / "whole")
    # a finished study trains nothing; the table has one line per model in each table
    done = Counting()
    res = run_study(cfg, sets, out, progress=False, train_fn=done)
    assert done.calls == 0
    table = (out / "table.md").read_text()
    assert table == res["table"]
    lines = [line for line in table.splitlines() if line.startswith("| test_")]
    assert [line.split(" | ")[0] for line in lines] == ["| test_resnet", "| test_vit"] * 2
    assert "hole (MSP)" in table and "(2)" in table
    assert (out / "summary.csv").is_file()
    assert write_table(out).startswith("| model")  # from rows.csv alone


def test_study_refuses_other_settings_and_data(tmp_path, one_thread):
    cfg = study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0]")
    out = tmp_path / "study"
    sets = study_sets()
    run_study(cfg, sets, out, progress=False)
    with pytest.raises(UserError) as err:
        run_study(study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.steps=3"), sets, out,
                  progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "steps: 2 there, 3 now" in msg
    other = dict(sets, real_test=blobs(9, 99))
    with pytest.raises(UserError, match="real_test"):
        run_study(cfg, other, out, progress=False)
    # more seeds are welcome: only the new rows are trained
    more = Counting()
    run_study(study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0,1]"), sets, out,
              progress=False, train_fn=more)
    assert more.calls == 3 and len(read_rows(out)) == 8
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["kind"] == "downstream" and stamp["settings"]["steps"] == 2 and "models" not in stamp["settings"]


def test_study_refuses_wrong_sets(tmp_path):
    cfg = study_cfg(tmp_path)
    sets = study_sets()
    with pytest.raises(UserError, match="abnormal_test"):
        run_study(cfg, {k: v for k, v in sets.items() if k != "abnormal_test"}, tmp_path / "s", progress=False)
    with pytest.raises(UserError, match="real_test set holds 3 abnormal"):
        run_study(cfg, dict(sets, real_test=blobs(3, 0, "hole")), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- readers


def _png(path, value, size=(20, 25)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_load_manifest(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", 50 * i)
    (tmp_path / "m.csv").write_text(
        "image,id,split,plane,anomaly,severity\n"
        "img/0.png,a,train,TT,,\nimg/1.png,b,test,trans-cerebellar,,\n"
        "img/2.png,c,test,TV,ventriculomegaly,2\nimg/3.png,d,test,,microcephaly,\n")
    test = load_manifest(tmp_path / "m.csv", split="test", size=SIZE)
    assert test.images.shape == (3, *SIZE) and test.images.dtype == np.uint8
    assert test.ids == ["b", "c", "d"] and test.plane.tolist() == [2, 1, -1]
    assert test.anomaly == ["", "ventriculomegaly", "microcephaly"] and test.origin == ["real"] * 3
    assert test.severity[1] == 2 and math.isnan(test.severity[0])
    assert int(test.images[1, 5, 5]) == 100
    assert len(load_manifest(tmp_path / "m.csv")) == 4
    with pytest.raises(UserError, match="no frames of split 'val'"):
        load_manifest(tmp_path / "m.csv", split="val")
    (tmp_path / "bad.csv").write_text("image,plane\nimg/9.png,TT\n")
    with pytest.raises(UserError) as err:
        load_manifest(tmp_path / "bad.csv")
    assert "\n" not in str(err.value) and "img/9.png" in str(err.value)
    (tmp_path / "nocol.csv").write_text("file,plane\nimg/0.png,TT\n")
    with pytest.raises(UserError, match="nocol.csv: missing required column 'image'"):
        load_manifest(tmp_path / "nocol.csv")
    (tmp_path / "plane.csv").write_text("image,plane\nimg/0.png,sideways\n")
    with pytest.raises(UserError, match="plane.csv:2"):
        load_manifest(tmp_path / "plane.csv")
    with pytest.raises(UserError, match="manifest CSV not found"):
        load_manifest(tmp_path / "none.csv")


def _synthesis_run(root):
    lay = root / "layouts" / "000007"
    for j in range(2):
        _png(lay / f"sample_{j}.png", 10 + j)
    (lay / "record.json").write_text(json.dumps({"index": 7, "plane": 2, "samples": [{}, {}]}))
    _png(root / "layouts" / "000009" / "sample_0.png", 99)  # unfinished: no record.json
    _png(root / "layouts" / ".000011.tmp" / "sample_0.png", 99)
    for name, rec in [("000007-0", {"plane": 2, "edit": "remove:csp"}),
                      ("000007-1", {"plane": 1, "edit": "anomaly:ventriculomegaly:2", "anomaly": "ventriculomegaly",
                                    "severity": 2.0}),
                      ("000007-2", {"plane": 0, "edit": "shift:th:1", "anomaly": ""})]:
        _png(root / "edits" / name / "edited.png", 200)
        _png(root / "edits" / name / "source.png", 100)
        (root / "edits" / name / "record.json").write_text(json.dumps(rec))


def test_load_synthesis_run(tmp_path):
    _synthesis_run(tmp_path)
    lay = load_synthesis_run(tmp_path, "layouts", size=SIZE)
    assert len(lay) == 2 and lay.plane.tolist() == [2, 2] and lay.anomaly == ["", ""]
    assert lay.origin == ["synthetic"] * 2 and lay.images.shape == (2, *SIZE) and lay.source is None
    assert lay.ids == ["layouts/000007/sample_0", "layouts/000007/sample_1"]
    ed = load_synthesis_run(tmp_path, "edits")
    assert ed.anomaly == ["remove:csp", "ventriculomegaly", ""] and ed.plane.tolist() == [2, 1, 0]
    assert ed.source is not None and int(ed.source[0, 0, 0]) == 100 and int(ed.images[0, 0, 0]) == 200
    assert ed.abnormal.tolist() == [True, True, False]
    assert ed.severity[1] == 2.0 and math.isnan(ed.severity[0])
    (tmp_path / "layouts" / "000007" / "sample_1.png").unlink()
    with pytest.raises(UserError) as err:
        load_synthesis_run(tmp_path, "layouts")
    assert "\n" not in str(err.value) and "000007/sample_1.png: image file not found" in str(err.value)
    (tmp_path / "edits" / "000007-1" / "source.png").unlink()
    with pytest.raises(UserError, match="000007-1/source.png"):
        load_synthesis_run(tmp_path, "edits")
    with pytest.raises(UserError, match="synthesis run folder not found"):
        load_synthesis_run(tmp_path / "nothing", "edits")
    with pytest.raises(UserError, match="kind 'samples'"):
        load_synthesis_run(tmp_path, "samples")


def test_frameset_subset_concat_resize_digest():
    a, b = blobs(4, 0), blobs(2, 1, "hole", "synthetic")
    c = concat([a, b])
    assert len(c) == 6 and c.abnormal.tolist() == [False] * 4 + [True] * 2 and c.anomalies() == ["hole"]
    s = c.subset(c.abnormal)
    assert s.ids == b.ids and s.origin == ["synthetic"] * 2
    r = c.resized((16, 20))
    assert r.size == (16, 20) and r.ids == c.ids
    assert c.digest() == concat([a, b]).digest() != concat([b, a]).digest()
    with pytest.raises(ValueError):
        concat([a, r])


# ----------------------------------------------------------------------------- the upper bound (issue 25)


class Recording:
    """train_classifier that records what each training saw (labels, how many frames)."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, images, labels, k, **kwargs):
        self.seen.append((k, len(images), int(np.asarray(labels).sum()) if k == 2 else None))
        return train_classifier(model, images, labels, k, **kwargs)


def test_upper_bound_arm_trains_on_rendered_positives_and_tabulates_the_gap(tmp_path, one_thread):
    cfg = study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0]", "downstream.synth_abnormal_count=4")
    sets = dict(study_sets(), rendered_abnormal=concat([blobs(4, 8, "hole", prefix="rh"), blobs(4, 9, "bar", prefix="rb")]))
    rec = Recording()
    res = run_study(cfg, sets, tmp_path / "study", progress=False, train_fn=rec)
    assert len(rec.seen) == 4 and res["trained"] == 4  # plane real, plane +synthetic, anomaly +synthetic, upper bound
    # the upper bound: the 9 real frames (negatives) and 4 rendered positives (drawn like the synthetic ones), nothing synthetic
    assert rec.seen[-1] == (2, 9 + 4, 4)
    upper = [r for r in res["rows"] if r["condition"] == "real+rendered"]
    assert len(upper) == 1 and upper[0]["task"] == "anomaly" and upper[0]["n_train_synthetic"] == 0
    assert 0.0 <= upper[0]["auroc"] <= 1.0 and "auroc_hole" in upper[0]
    table = res["table"]
    assert "upper bound: rendered abnormal" in table and "gap closed" in table and "hole (upper)" in table
    assert "4 rendered abnormal frames of training patients" in table
    # without the set, no upper-bound training and no such column (an older study's table)
    plain = run_study(cfg, study_sets(), tmp_path / "plain", progress=False)
    assert plain["trained"] == 3 and "gap closed" not in plain["table"]
    # the set must be abnormal
    with pytest.raises(UserError, match="rendered_abnormal set holds 3 normal"):
        run_study(cfg, dict(study_sets(), rendered_abnormal=blobs(3, 10)), tmp_path / "bad", progress=False)


def test_gap_closed_per_seed():
    from diffice.downstream.table import gap_closed

    def row(seed, condition, auroc):
        return {"model": "m", "seed": seed, "task": "anomaly", "condition": condition, "auroc": auroc}

    rows = [row(0, "real", 0.5), row(0, "real+synthetic", 0.7), row(0, "real+rendered", 0.9),
            row(1, "real", 0.6), row(1, "real+synthetic", 0.5), row(1, "real+rendered", 0.8),
            row(2, "real", 0.7), row(2, "real+synthetic", 0.8), row(2, "real+rendered", 0.65),  # no gap: left out
            row(3, "real", 0.5), row(3, "real+synthetic", 0.9), row(3, "real+rendered", 0.52)]  # a gap of 0.02: noise
    assert gap_closed(rows, "m") == pytest.approx([0.5, -0.5])
    assert gap_closed(rows, "m", min_gap=0.0) == pytest.approx([0.5, -0.5, 20.0])


def test_abnormal_frames_of_training_patients(tmp_path):
    import csv

    from diffice.data.export import phantom_splits, write_anomalies

    cfg = load_config([], ["data.phantom.count=80", "data.image_size=[32,40]"])
    out = write_anomalies(cfg, tmp_path / "up", 6, 0, names=["microcephaly", "absent_csp"], progress=False, split="train")
    rows = list(csv.DictReader(open(out)))
    splits = phantom_splits(cfg, 80, 0)
    from diffice.data.datasets import PhantomSource

    d, ph_cfg = cfg.data, cfg.data.phantom
    source = PhantomSource(80, list(d.image_size), 0, float(ph_cfg.sp_fraction), int(ph_cfg.frames_per_patient),
                           list(d.concepts), list(d.classes), list(d.split_fractions), int(d.split_seed))
    assert splits == list(source.splits)  # the data module's own split of the same phantom
    fpp = int(cfg.data.phantom.frames_per_patient)
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train"}
    index = [json.loads(line)["index"] for line in (out.parent / "latents.jsonl").read_text().splitlines()]
    assert all(splits[i] == "train" for i in index) and all(r["patient"] == f"p{i // fpp:05d}" for r, i in zip(rows, index))
    with pytest.raises(UserError, match="split must be"):
        write_anomalies(cfg, tmp_path / "x", 2, 0, split="training")


def test_a_non_finite_downstream_loss_is_one_line_naming_the_key():
    from diffice.downstream.train import fabric, fabric_step

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
    fab = fabric("cpu")
    run, opt_f = fab.setup(net, opt)
    with pytest.raises(UserError, match=r"^resnet18: the training loss became nan at step 3; lower downstream.lr \(0.1\)$"):
        fabric_step(fab, run, opt_f, sched, torch.tensor(float("nan")), 1.0, step=2, who="resnet18",
                    lr_key="downstream.lr (0.1)", on_step=None)
    steps = []
    fabric_step(fab, run, opt_f, sched, run(torch.ones(1, 2)).sum(), 1.0, step=2, who="resnet18", lr_key="x", on_step=steps.append)
    assert steps == [3]
