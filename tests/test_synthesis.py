"""The synthesis layer: plane / GA in the data contract, layouts and edits, condition dropout,
classifier-free guidance, RePaint, two-stage adaptive sampling, the commands and their errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffice.cli import main
from diffice.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")
CLASSES = ["background", "head", "bone", "th", "csp", "fp"]


def _overrides(root: Path) -> list[str]:
    return [
        f"paths.runs={root}", "data.image_size=[32,40]", "data.batch_size=4", "data.phantom.count=40",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
        "trainer.val_every_n_steps=4", "trainer.checkpoint_every_n_steps=2", "wandb.mode=disabled",
        "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[]",
        "unet.num_head_channels=16", "diffusion.steps=100", "synthesis.prealign_width=8",
        "segmenter.encoder=tu-mobilenetv3_small_050", "oracle.encoder=tu-mobilenetv3_small_050",
        "synthesis.two_stage=true", "synthesis.respacing='5'", "synthesis.jump_length=2", "synthesis.count=2", "synthesis.limit=2", "synthesis.batch_size=4",
    ]


def _layout(h=32, w=40) -> np.ndarray:
    lay = np.zeros((h, w), dtype=np.int64)
    yy, xx = np.mgrid[:h, :w]
    head = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    lay[head] = 1
    ring = head & ~(((yy - h / 2) / (h / 3 - 2)) ** 2 + ((xx - w / 2) / (w / 3 - 2)) ** 2 < 1)
    lay[ring] = 2
    lay[14:18, 17:23] = 4  # csp
    lay[18:21, 14:20] = 3  # th
    return lay


def _png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------- data contract


def test_phantom_items_carry_plane_and_ga(tiny_cfg):
    from diffice.data import DiffIceDataModule
    from diffice.data import phantom as ph

    dm = DiffIceDataModule(tiny_cfg)
    dm.setup()
    ds = dm.dataset("all")
    planes = {int(ds[i]["plane"]) for i in range(len(ds))}
    assert planes <= {0, 1, 2} and 0 in planes and len(planes) > 1
    for i in range(8):
        item, fr = ds[i], ph.render_frame(i, [32, 40], 0, 0.152, 4)
        assert int(item["plane"]) == fr["plane"] and ph.PLANES[fr["plane"]]
        assert 18.0 <= float(item["ga"]) <= 36.0 and float(item["ga"]) == pytest.approx(fr["ga"], abs=1e-3)
        if "ventricular" in fr["faults"] and "cerebellar" not in fr["faults"][:1]:
            assert fr["plane"] in (1, 2)


def test_manifest_plane_and_ga_columns(tmp_path):
    from diffice.data.sources import read_manifest

    _png(tmp_path / "a.png", np.zeros((8, 8)))
    (tmp_path / "m.csv").write_text("image,plane,ga\na.png,TV,24.5\na.png,,\na.png,trans-cerebellum,30\n")
    recs = read_manifest(tmp_path / "m.csv")
    assert [r.plane for r in recs] == [1, -1, 2]
    assert recs[0].ga == 24.5 and math.isnan(recs[1].ga)
    (tmp_path / "bad.csv").write_text("image,plane\na.png,coronal\n")
    with pytest.raises(UserError, match=r"bad.csv:2 column plane: plane 'coronal'"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("image,ga\na.png,80\n")
    with pytest.raises(UserError, match="outside 10 to 45"):
        read_manifest(tmp_path / "bad2.csv")


# ----------------------------------------------------------------------------- layouts and edits


def test_read_layout_errors_name_the_file(tmp_path):
    from diffice.synthesis.layouts import read_layout

    lay = _layout()
    ok = read_layout(_png(tmp_path / "ok.png", lay), CLASSES, (32, 40))
    assert (ok == lay).all()
    spec = lay.copy()
    spec[:2] = 255
    assert (read_layout(_png(tmp_path / "u.png", spec), CLASSES, (32, 40))[:2] == -1).all()
    with pytest.raises(UserError, match=r"big.png: layout is 48x32 \(WxH\) but the model makes 40x32"):
        read_layout(_png(tmp_path / "big.png", np.zeros((32, 48))), CLASSES, (32, 40))
    bad = lay.copy()
    bad[0, 0] = 9
    with pytest.raises(UserError, match="cls.png: layout holds class value 9"):
        read_layout(_png(tmp_path / "cls.png", bad), CLASSES, (32, 40))
    with pytest.raises(UserError, match="empty.png: the layout is empty"):
        read_layout(_png(tmp_path / "empty.png", np.zeros((32, 40))), CLASSES, (32, 40))
    with pytest.raises(UserError, match="nothere.png: layout file not found"):
        read_layout(tmp_path / "nothere.png", CLASSES, (32, 40))


def test_edit_operators():
    from diffice.synthesis.layouts import apply_edit, edited_region

    lay = _layout()
    gone = apply_edit(lay, "remove:csp", CLASSES)
    assert not (gone == 4).any() and (gone[lay == 4] == 1).all()
    grown = apply_edit(lay, "grow:th:2", CLASSES)
    assert (grown == 3).sum() > (lay == 3).sum() and (grown[lay == 0] == 0).all()
    shrunk = apply_edit(lay, "shrink:th:1", CLASSES)
    assert 0 < (shrunk == 3).sum() < (lay == 3).sum()
    moved = apply_edit(lay, "shift:csp:-3,0", CLASSES)
    assert (moved == 4).sum() > 0 and not ((moved == 4) == (lay == 4)).all()
    region = edited_region(lay, gone)
    assert region.sum() == (lay == 4).sum() and edited_region(lay, gone, 2).sum() > region.sum()
    for bad, msg in (("melt:csp", "unknown operator"), ("grow:brain:2", "not one of the structures"), ("grow:th:x", "whole number")):
        with pytest.raises(UserError, match=msg):
            apply_edit(lay, bad, CLASSES)


def test_head_layout_has_the_requested_circumference_and_scale_edits_it():
    """A real-head layout's HC (the ellipse fit the judges use) is the request; scale:head:F multiplies it by F,
    keeps every enclosed structure inside, and the centre stays put."""
    from scipy import ndimage

    from diffice.metrics.biometry import head_circumference
    from diffice.synthesis.layouts import apply_edit, head_layout

    two = ["background", "head"]
    px = (0.53, 0.625)  # the rectangular pixels of a 270x400 frame resized to 128x160
    for hc, angle, aspect in ((100.0, 0.0, 0.79), (170.0, 30.0, 0.7), (150.0, 90.0, 0.9)):
        lay = head_layout((128, 160), px, hc, two, angle=angle, aspect=aspect)
        assert head_circumference(lay, px) == pytest.approx(hc, rel=0.02)
        for f in (0.85, 1.15):
            scaled = apply_edit(lay, f"scale:head:{f}", two)
            assert head_circumference(scaled, px) == pytest.approx(f * hc, rel=0.02)
            assert np.allclose(ndimage.center_of_mass(scaled > 0), ndimage.center_of_mass(lay > 0), atol=1.0)
    tilted = head_layout((128, 160), px, 150.0, two, angle=90.0)
    rows, cols = np.nonzero(tilted)
    assert (rows.max() - rows.min()) * px[0] > (cols.max() - cols.min()) * px[1]  # the major axis is vertical
    small = apply_edit(_layout(), "scale:head:0.8", CLASSES)
    assert (small == 4).sum() < (_layout() == 4).sum() and (small == 4).any()  # the csp inside shrinks with the head
    for bad, msg in (("scale:head:3", "outside 0.5..2"), ("scale:head:x", "FACTOR")):
        with pytest.raises(UserError, match=msg):
            apply_edit(lay, bad, two)
    with pytest.raises(UserError, match="does not fit inside the 160x128 frame"):
        head_layout((128, 160), px, 400.0, two)


# ----------------------------------------------------------------------------- conditioning


def _cfg(tmp_path, *extra):
    from diffice.config import load_config

    return load_config([TINY], [*_overrides(tmp_path), *extra])


def test_condition_dropout_and_guidance(tmp_path):
    from diffice.modules.synthesis import drop_conditions
    from diffice.nets.conditional import ConditionalUNet, Conditioned, null_condition, one_hot_layout

    torch.manual_seed(0)
    lay = torch.from_numpy(_layout())[None].repeat(3, 1, 1)
    cond = {"layout": one_hot_layout(lay, 6), "plane": torch.tensor([0, 1, 2]), "ga": torch.tensor([20.0, 25.0, 30.0])}
    assert torch.equal(drop_conditions(cond, 0.0, 0.0, 0.0)["layout"], cond["layout"])
    dropped = drop_conditions(cond, 1.0, 0.0, 0.0)
    assert dropped["layout"].abs().sum() == 0 and (dropped["plane"] == -1).all() and dropped["ga"].isnan().all()
    g = torch.Generator().manual_seed(0)
    part = drop_conditions(cond, 0.0, 0.5, 0.0, generator=g)["layout"]
    kept = part.sum(dim=(2, 3)) > 0
    assert kept.any() and (~kept & (cond["layout"].sum(dim=(2, 3)) > 0)).any()  # some classes dropped, some kept

    net = ConditionalUNet(_cfg(tmp_path)).eval()
    x, t = torch.randn(3, 1, 32, 40), torch.tensor([10, 50, 90])
    with torch.no_grad():
        c = net(x, t, cond["layout"], cond["plane"], cond["ga"])
        u = net(x, t, **null_condition(3, 6, (32, 40), "cpu"))
        assert torch.allclose(Conditioned(net, cond, 1.0)(x, t), c)
        assert torch.allclose(Conditioned(net, cond, 0.0)(x, t)[:, :1], u[:, :1], atol=1e-4)
        w3 = Conditioned(net, cond, 3.0)(x, t)
        assert torch.allclose(w3[:, :1], u[:, :1] + 3.0 * (c[:, :1] - u[:, :1]), atol=1e-4)
        assert torch.allclose(w3[:, 1:], c[:, 1:], atol=1e-4)


def test_jump_schedule():
    from diffice.synthesis.sampler import jump_schedule

    assert jump_schedule(5, 2, 1) == [4, 3, 2, 1, 0, -1]
    seq = jump_schedule(6, 2, 2)
    assert seq[0] == 5 and seq[-1] == -1
    downs = [a for a, b in zip(seq, seq[1:]) if b < a]
    assert sorted(set(downs)) == list(range(6)) and len(downs) > 6  # some steps are passed twice
    assert all(abs(a - b) == 1 for a, b in zip(seq, seq[1:]))


def _net_and_diffusion(tmp_path):
    from diffice.diffusion import build_diffusion
    from diffice.nets.conditional import ConditionalUNet

    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    return ConditionalUNet(cfg).eval(), build_diffusion(cfg, "5")


def test_repaint_keeps_the_known_region_and_the_control_does_not(tmp_path):
    from diffice.diffusion import generators_for
    from diffice.synthesis.sampler import edit, known_region, make_condition

    net, diffusion = _net_and_diffusion(tmp_path)
    before = _layout()
    from diffice.synthesis.layouts import apply_edit

    after = apply_edit(before, "remove:csp", CLASSES)
    known = torch.from_numpy(known_region(before, after, 1))[None, None]
    src = torch.rand(1, 1, 32, 40) * 2 - 1
    cond = make_condition(torch.from_numpy(after)[None], [0], [25.0], 6, "cpu")
    kw = {"w": 2.0, "jump_length": 2, "jump_n_sample": 2}
    out = edit(diffusion, net, cond, src, known, generators_for(0, [0]), repaint=True, **kw)
    assert torch.equal(out[known], src.clamp(-1, 1)[known])
    assert not torch.equal(out[~known], src[~known])
    ctrl = edit(diffusion, net, cond, src, known, generators_for(0, [0]), repaint=False, **kw)
    assert (ctrl[known] - src[known]).abs().mean() > 0.05
    again = edit(diffusion, net, cond, src, known, generators_for(0, [0]), repaint=True, **kw)
    assert torch.equal(out, again)  # per-sample generators: reproducible


def test_two_stage_refines_only_what_the_segmenter_does_not_recover(tmp_path):
    from diffice.synthesis.sampler import make_condition, two_stage

    net, diffusion = _net_and_diffusion(tmp_path)
    lay = torch.from_numpy(_layout())[None].repeat(2, 1, 1)
    cond = make_condition(lay, [0, 0], [25.0, 25.0], 6, "cpu")
    kw = {"w1": 3.0, "w2": 1.5, "stage2_range": [0.2, 0.6], "dice_target": 0.85, "rounds": 2}
    perfect = two_stage(diffusion, net, cond, lay, [0, 1], 0, lambda x: lay.clone(), 6, **kw)
    assert perfect.restart_steps == [[], []] and torch.equal(perfect.frames, perfect.stage1)
    assert perfect.dice_stage1.tolist() == [1.0, 1.0]
    blind = two_stage(diffusion, net, cond, lay, [0, 1], 0, lambda x: torch.zeros_like(lay), 6, **kw)
    # Dice 0: the far end of the range, round(5 * 0.6) = 3, for both rounds; nothing improves, stage 1 is kept
    assert blind.restart_steps == [[3, 3], [3, 3]] and blind.kept_round == [0, 0]
    assert torch.equal(blind.frames, blind.stage1)
    # which sample is recovered decides who is refined: sample 0 perfect, sample 1 not
    mixed = two_stage(diffusion, net, cond, lay, [0, 1], 0, lambda x: torch.stack([lay[0], torch.zeros_like(lay[1])][: x.shape[0]]), 6, **kw)
    assert mixed.restart_steps[0] == [] and mixed.restart_steps[1] == [3, 3]
    assert torch.equal(mixed.stage1[0], perfect.stage1[0])  # batch-independent stage 1


# ----------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthesis") / "runs"
    ov = _overrides(root)
    assert main(["train-segmenter", TINY, *ov, "segmenter.max_steps=2"]) == 0
    assert main(["train-oracle", TINY, *ov, "oracle.max_steps=2"]) == 0
    assert main(["train-synthesis", TINY, *ov, "synthesis.prealign_steps=2", "synthesis.max_steps=2"]) == 0
    return root


def test_train_synthesis_prealigns_then_freezes_and_resumes(runs):
    from diffice.modules.synthesis import load_synthesis

    rows = list(csv.DictReader(open(runs / "synthesis" / "logs" / "metrics.csv")))
    assert any(r.get("train/prealign_l1") for r in rows) and any(r.get("train/loss") for r in rows)
    first = load_synthesis(runs / "synthesis" / "last.ckpt")
    assert first.trained_steps == 4 and first.kind == "synthesis"
    enc = {k: v.clone() for k, v in first.model.prealign.state_dict().items()}
    unet = {k: v.clone() for k, v in first.model.unet.state_dict().items()}
    assert main(["train-synthesis", TINY, *_overrides(runs), "synthesis.prealign_steps=2", "synthesis.max_steps=4"]) == 0
    resumed = load_synthesis(runs / "synthesis" / "last.ckpt")
    assert resumed.trained_steps == 6
    assert all(torch.equal(v, resumed.model.prealign.state_dict()[k]) for k, v in enc.items())  # frozen
    assert any(not torch.equal(v, resumed.model.unet.state_dict()[k]) for k, v in unet.items())  # the UNet trained


def test_synthesis_init_ckpt_starts_a_new_run_from_a_base(runs, tmp_path, capsys):
    """synthesis.init_ckpt: a new run starts from the base's EMA weights (a fine-tune); another
    architecture is one line naming the key."""
    from diffice.modules.synthesis import load_synthesis

    base = runs / "synthesis" / "last.ckpt"
    source = load_synthesis(base)
    args = [*_overrides(tmp_path), "synthesis.prealign_steps=1", "synthesis.max_steps=1", "synthesis.lr=1e-12", f"synthesis.init_ckpt={base}"]
    assert main(["train-synthesis", TINY, *args]) == 0
    assert "starts from the EMA weights" in capsys.readouterr().out
    tuned = load_synthesis(tmp_path / "synthesis" / "last.ckpt")
    theirs = source.ema_model.unet.state_dict()
    assert all(torch.allclose(v.float(), theirs[k].float(), atol=1e-5) for k, v in tuned.model.unet.state_dict().items())
    assert main(["train-synthesis", TINY, *_overrides(tmp_path / "other"), "unet.model_channels=8", "unet.num_head_channels=8",
                 f"synthesis.init_ckpt={base}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet.model_channels" in err[0] and "synthesis.init_ckpt" in err[0]


def test_synthesis_init_ckpt_from_a_ddpm_starts_as_that_ddpm_for_every_condition(runs, tmp_path, capsys):
    """synthesis.init_ckpt=DDPM (issue 36: a base trained on unlabelled frames, conditioning learnt on the
    labelled ones): the new model's noise prediction equals the DDPM's under any layout, plane and GA until
    training moves the zero-weight layout inputs and condition embedding; a DDPM of another UNet, or a
    checkpoint of another kind, is one line."""
    from diffice.config import load_config
    from diffice.modules.ddpm import load_ddpm
    from diffice.modules.synthesis import SynthesisModule

    assert main(["train-ddpm", TINY, *_overrides(tmp_path / "d"), "ddpm.max_steps=2"]) == 0
    ddpm_path = tmp_path / "d" / "ddpm" / "last.ckpt"
    cfg = load_config([TINY], [*_overrides(tmp_path / "s"), f"synthesis.init_ckpt={ddpm_path}"])
    module = SynthesisModule(cfg)
    module.start_from(str(ddpm_path))
    assert "starts from the EMA weights of the DDPM" in capsys.readouterr().out
    ddpm = load_ddpm(ddpm_path).ema_model.eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 32, 40, generator=g), torch.tensor([5, 50, 99])
    layout = torch.nn.functional.one_hot(torch.randint(0, len(CLASSES), (3, 32, 40), generator=g), len(CLASSES)).permute(0, 3, 1, 2).float()
    for net in (module.model.eval(), module.ema_model.eval()):
        with torch.no_grad():
            got = net(x, t, layout, torch.tensor([0, 2, -1]), torch.tensor([20.0, math.nan, 33.0]))
            assert torch.allclose(got, ddpm(x, t), atol=1e-6)
    # the whole command runs from it, and refuses what does not fit
    args = [*_overrides(tmp_path / "s"), "synthesis.prealign_steps=1", "synthesis.max_steps=1", f"synthesis.init_ckpt={ddpm_path}"]
    assert main(["train-synthesis", TINY, *args]) == 0
    assert main(["train-synthesis", TINY, *_overrides(tmp_path / "o"), "unet.model_channels=8", "unet.num_head_channels=8",
                 f"synthesis.init_ckpt={ddpm_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet.model_channels" in err[0] and "synthesis.init_ckpt" in err[0]
    oracle = runs / "oracle" / "last.ckpt"
    assert main(["train-synthesis", TINY, *_overrides(tmp_path / "o2"), f"synthesis.init_ckpt={oracle}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthesis.init_ckpt takes a synthesis model or a DDPM" in err[0] and str(oracle) in err[0]


def test_synthesize_test_run_is_complete_and_resumes(runs, tmp_path):
    out = tmp_path / "syn"
    ov = _overrides(runs)
    assert main(["synthesize", str(runs / "synthesis" / "last.ckpt"), TINY, *ov, "--test", "--out", str(out), "--no-realism"]) == 0
    layouts = sorted((out / "layouts").iterdir())
    assert len(layouts) == 2
    for d in layouts:
        names = {p.name for p in d.iterdir()}
        assert {"layout.png", "real.png", "sample_0.png", "sample_1.png", "stage1_0.png", "judge_0.png", "record.json"} <= names
    edits = sorted((out / "edits").iterdir())
    assert edits and all((d / "edited.png").is_file() and (d / "diff.png").is_file() for d in edits)
    m = json.loads((out / "metrics.json").read_text())
    assert m["samples"] == 4 and m["two_stage"] and set(m["dice"]) == set(CLASSES[1:]) and "dice_real" in m
    assert m["edits"] == len(edits) and m["edit_psnr_outside_min"] is not None
    # issue 24: every mean and rate with its 95 % interval, the point estimate being the metric itself
    iv = m["intervals"]
    for c in CLASSES[1:]:
        if m["dice"][c] is not None:
            assert iv[f"dice_{c}"]["value"] == pytest.approx(m["dice"][c]) and iv[f"dice_{c}"]["n"] >= 1
    assert iv["edit_psnr_outside_at_least_30"]["n"] == len(edits)
    assert iv["edit_psnr_outside_at_least_30"]["k"] == m["edit_psnr_outside_at_least_30"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sum(r["kind"] == "layout" for r in rows) == 4 and sum(r["kind"] == "edit" for r in rows) == len(edits)
    assert "Layouts → samples" in (out / "report.html").read_text()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("sample_0.png")}
    assert main(["synthesize", str(runs / "synthesis" / "last.ckpt"), TINY, *ov, "--test", "--out", str(out), "--no-realism"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("sample_0.png")} == stamp  # finished items are not redone


def test_synthesize_layout_and_edit(runs, tmp_path):
    ckpt = str(runs / "synthesis" / "last.ckpt")
    ov = _overrides(runs)
    lay = _png(tmp_path / "lay.png", _layout())
    assert main(["synthesize", ckpt, TINY, *ov, "--layout", str(lay), "--plane", "TT", "--ga", "24", "--count", "3",
                 "--out", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "a" / "layouts" / "000000" / "record.json").read_text())
    assert rec["plane"] == 0 and rec["ga"] == 24.0 and len(rec["samples"]) == 3
    frame = _png(tmp_path / "frame.png", np.random.default_rng(0).integers(0, 255, (32, 40)))
    from diffice.synthesis.layouts import apply_edit

    edited = _png(tmp_path / "edited.png", apply_edit(_layout(), "remove:csp", CLASSES))
    assert main(["synthesize", ckpt, TINY, *ov, "--edit", str(frame), "--layout", str(edited), "--source-layout", str(lay),
                 "--out", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    # RePaint: the held region is the frame's own; the strict measure (with the generated ring
    # around the edit) is finite and reported
    assert m["edits"] == 1 and m["edit_held_exact"] == 1 and 0 < m["edit_psnr_outside_min"] < math.inf


def test_synthesize_a_head_of_a_requested_circumference(runs, tmp_path, capsys):
    """--hc draws the head layout (GA from the HC by Hadlock when not given), --ga alone Hadlock's mean HC;
    a bad request is one line naming the option."""
    from diffice.data.anomalies import ga_weeks, hc_mm
    from diffice.metrics.biometry import head_circumference
    from diffice.synthesis.layouts import read_layout

    ckpt, ov = str(runs / "synthesis" / "last.ckpt"), _overrides(runs)
    px = ["--pixel-mm", "2.5,2.5"]
    assert main(["synthesize", ckpt, TINY, *ov, "--hc", "170", *px, "--angle", "20", "--count", "1", "--out", str(tmp_path / "h")]) == 0
    folder = tmp_path / "h" / "layouts" / "000000"
    rec = json.loads((folder / "record.json").read_text())
    assert rec["ga"] == pytest.approx(ga_weeks(170.0), abs=1e-3) and (folder / "sample_0.png").is_file()
    lay = read_layout(folder / "layout_classes.png", CLASSES, (32, 40))
    assert head_circumference(lay, (2.5, 2.5)) == pytest.approx(170.0, rel=0.04) and set(np.unique(lay)) == {0, 1}
    assert main(["synthesize", ckpt, TINY, *ov, "--ga", "20", *px, "--count", "1", "--out", str(tmp_path / "g")]) == 0
    lay = read_layout(tmp_path / "g" / "layouts" / "000000" / "layout_classes.png", CLASSES, (32, 40))
    assert head_circumference(lay, (2.5, 2.5)) == pytest.approx(hc_mm(20.0), rel=0.04)
    capsys.readouterr()
    for argv, msg in ((["--hc", "-3", *px], "--hc -3: a head circumference is a positive number"),
                      (["--hc", "900", *px], "--hc: a head of HC 900 mm"),
                      (["--hc", "170", "--centre", "0.5", *px], "--centre 0.5: expected two numbers"),
                      (["--hc", "170", "--layout", "x.png", *px], "give exactly one of")):
        assert main(["synthesize", ckpt, TINY, *ov, *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case", ["size", "classes", "empty", "edit_size", "kind"])
def test_synthesize_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, case):
    ckpt = str(runs / "synthesis" / "last.ckpt")
    ov = _overrides(runs)
    lay = _layout()
    args = ["--layout"]
    if case == "size":
        path, msg = _png(tmp_path / "l.png", np.pad(lay, ((0, 0), (0, 8)))), "l.png: layout is 48x32"
    elif case == "classes":
        bad = lay.copy()
        bad[0, 0] = 7
        path, msg = _png(tmp_path / "l.png", bad), "l.png: layout holds class value 7"
    elif case == "empty":
        path, msg = _png(tmp_path / "l.png", np.zeros_like(lay)), "l.png: the layout is empty"
    elif case == "edit_size":
        frame = _png(tmp_path / "f.png", np.zeros((40, 40)))
        path, msg = _png(tmp_path / "l.png", lay), "f.png: frame is 40x40 (WxH) but the layout"
        args = ["--edit", str(frame), "--layout"]
    else:
        ckpt = str(runs / "oracle" / "last.ckpt")
        path, msg = _png(tmp_path / "l.png", lay), "last.ckpt"
    code = main(["synthesize", ckpt, TINY, *ov, *args, str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and msg in err[0], err
    if case == "kind":
        assert "oracle" in err[0] and "synthesis" in err[0]
    assert not (tmp_path / "o" / "layouts").exists()


def test_synthesis_pack_file_loads(runs, tmp_path):
    from diffice.modules.pack import write_pack_file
    from diffice.modules.synthesis import load_synthesis

    facts = write_pack_file(runs / "synthesis" / "last.ckpt", tmp_path / "synthesis.ckpt", "synthesis")
    full = load_synthesis(runs / "synthesis" / "last.ckpt")
    packed = load_synthesis(tmp_path / "synthesis.ckpt")
    assert facts["bytes"] < (runs / "synthesis" / "last.ckpt").stat().st_size / 2
    for k, v in full.ema_model.state_dict().items():
        assert torch.allclose(packed.ema_model.state_dict()[k].float(), v.float(), atol=1e-2, rtol=1e-2)


def test_synthesis_run_offline_keeps_pictures_and_lineage(runs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from diffice.tracking import check_offline_run, offline_runs, read_offline_run

    wb = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(wb / sub))
    out = tmp_path / "syn"
    ov = [w for w in _overrides(runs) if not w.startswith("wandb.")] + ["wandb.mode=offline", "wandb.group=syn-test"]
    assert main(["synthesize", str(runs / "synthesis" / "last.ckpt"), TINY, *ov, "--test", "--out", str(out), "--no-realism",
                 "synthesis.limit=1"]) == 0
    (folder,) = offline_runs(out / "wandb")
    info = read_offline_run(folder)
    assert info["run"]["job_type"] == "synthesis" and info["run"]["group"] == "syn-test"
    res = check_offline_run(folder)
    # 2 samples x (layout, real, stage 1, final, judge) and each edit's pictures, all as files
    assert res["problems"] == [] and res["images"] >= 2 * 5 and res["tables"] >= 2
    used = [a for a in info["artifacts"] if a["used"]]
    refs = {e["ref"] for a in used for e in a["entries"]}
    for ckpt in ("synthesis", "oracle", "segmenter"):  # the model, the steering segmentation, the judge
        assert any(r and r.endswith(f"{ckpt}/last.ckpt") for r in refs), (ckpt, refs)
    assert not [p for p in (wb / "data").rglob("*") if p.is_file()]  # nothing staged outside the run folder


def test_synthesize_refuses_a_folder_of_another_run(runs, tmp_path, capsys):
    ckpt = str(runs / "synthesis" / "last.ckpt")
    ov = _overrides(runs)
    lay = _png(tmp_path / "lay.png", _layout())
    out = tmp_path / "a"
    assert main(["synthesize", ckpt, TINY, *ov, "--layout", str(lay), "--count", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["synthesize", ckpt, TINY, *ov, "synthesis.guidance=4.0", "--layout", str(lay), "--count", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a synthesis run with other settings (synthesis.guidance" in err[0], err


# ----------------------------------------------------------------------------- anomalies (issue 14)


def test_synthesize_anomaly_pairs(runs, tmp_path):
    """--edit --anomaly makes a frame's abnormal twin (RePaint keeps the rest); --test --anomaly
    writes pixel pairs with both layouts and the measured-vs-requested check."""
    ckpt = str(runs / "synthesis" / "last.ckpt")
    ov = _overrides(runs)
    lay = _png(tmp_path / "lay.png", _layout())
    frame = _png(tmp_path / "frame.png", np.random.default_rng(0).integers(0, 255, (32, 40)))
    assert main(["synthesize", ckpt, TINY, *ov, "--edit", str(frame), "--source-layout", str(lay), "--anomaly", "microcephaly",
                 "--severity", "0.3", "--out", str(tmp_path / "e")]) == 0
    rec = json.loads(next((tmp_path / "e" / "edits").glob("*/record.json")).read_text())
    assert rec["anomaly"] == "microcephaly" and rec["severity"] == 0.3 and rec["edit"] == "anomaly:microcephaly:0.3"
    assert rec["requested_value"] == pytest.approx(0.7 * rec["source_value"], rel=0.08)
    assert "measured_value" in rec and isinstance(rec["within_tolerance"], bool) and rec["held_exact"]
    assert isinstance(rec["source_within_tolerance"], bool) and "measured_source" in rec  # the control: the unedited frame
    pair = list(csv.DictReader((tmp_path / "e" / "pairs.csv").open()))[0]
    from diffice.synthesis.layouts import read_layout

    before = read_layout(tmp_path / "e" / pair["layout_source"], CLASSES, (32, 40))
    after = read_layout(tmp_path / "e" / pair["layout_edited"], CLASSES, (32, 40))
    assert (before == _layout()).all() and (after != before).any() and (tmp_path / "e" / pair["edited"]).is_file()

    out = tmp_path / "t"
    assert main(["synthesize", ckpt, TINY, *ov, "--test", "--anomaly", "all", "--edits-only", "--no-realism", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert not (out / "layouts").exists() or not any((out / "layouts").iterdir())
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert rows and len(rows) == m["edits"] and set(m["anomalies"]) == {r["anomaly"] for r in rows}
    assert sum(a["checked"] for a in m["anomalies"].values()) == len(rows)
    page = (out / "report.html").read_text()
    assert "measured as requested" in page and "judge measures" in page
    stamp = json.loads((out / "run.json").read_text())
    assert stamp["kind"] == "synthesis" and all(e.startswith("anomaly:") for e in stamp["settings"]["synthesis"]["edits"])


@pytest.mark.parametrize("argv, msg", [
    (["--anomaly", "nope"], "unknown anomaly 'nope'"),
    (["--anomaly", "microcephaly", "--severity", "0.9"], "severity 0.9 of microcephaly is outside 0.1..0.35"),
    (["--anomaly", "banana_cerebellum"], "the layout has no fp"),
    (["--anomaly", "ventriculomegaly"], "no lateral ventricle"),
    (["--severity", "0.2"], "--severity needs --anomaly"),
])
def test_synthesize_anomaly_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, argv, msg):
    ckpt = str(runs / "synthesis" / "last.ckpt")
    lay = _png(tmp_path / "lay.png", _layout())
    frame = _png(tmp_path / "frame.png", np.zeros((32, 40)))
    code = main(["synthesize", ckpt, TINY, *_overrides(runs), "--edit", str(frame), "--source-layout", str(lay), *argv,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "o" / "edits").exists()


def test_downstream_experiment_end_to_end(runs, tmp_path):
    """kind: downstream: frame sets made (real, rendered abnormal, synthetic normal and abnormal),
    the study run, the table written; a rerun reuses the frames and trains nothing."""
    ov = [*_overrides(runs), f"paths.runs={tmp_path}", f"synthesis.ckpt={runs / 'synthesis' / 'last.ckpt'}",
          f"synthesis.judge_ckpt={runs / 'segmenter' / 'last.ckpt'}", f"cf.oracle_ckpt={runs / 'oracle' / 'last.ckpt'}",
          "downstream.models=[mobilenetv3_small_050]", "downstream.seeds=[0]", "downstream.steps=2", "downstream.batch_size=4",
          "downstream.real_train_limit=6", "downstream.abnormal_test_count=6", "downstream.upper_bound_count=6", "downstream.synth_layouts=2",
          "downstream.synth_per_layout=1", "downstream.synth_edit_frames=3", "synthesis.respacing='3'"]
    exp = str(ROOT / "experiments" / "fetalflex_downstream.yaml")
    assert main(["experiment", exp, "--preset", "tiny", *ov]) == 0
    root = tmp_path / "experiments" / "fetalflex_downstream"
    table = (root / "table.md").read_text()
    assert "mobilenetv3_small_050" in table
    rows = list(csv.DictReader((root / "phantom" / "study" / "rows.csv").open()))
    assert {(r["task"], r["condition"]) for r in rows} == {("plane", "real"), ("anomaly", "real"), ("plane", "real+synthetic"),
                                                          ("anomaly", "real+synthetic"), ("anomaly", "real+rendered")}
    abn = list(csv.DictReader((root / "phantom" / "abnormal-test" / "manifest.csv").open()))
    assert len(abn) == 6 and len({r["anomaly"] for r in abn}) == 6
    up = list(csv.DictReader((root / "phantom" / "rendered-abnormal-train" / "manifest.csv").open()))
    assert len(up) == 6 and {r["split"] for r in up} == {"train"} and len({r["anomaly"] for r in up}) == 6
    pairs = list(csv.DictReader((root / "phantom" / "synth-abnormal" / "pairs.csv").open()))
    shams = [r for r in pairs if r["sham_of"]]
    assert shams and all(r["anomaly"] for r in pairs if not r["sham_of"]) and not any(r["anomaly"] for r in shams)
    # the sham of an edit regenerates its region with the layout unchanged: a normal twin
    from diffice.synthesis.layouts import read_layout

    d = root / "phantom" / "synth-abnormal"
    r = shams[0]
    assert (read_layout(d / r["layout_source"], CLASSES, (32, 40)) == read_layout(d / r["layout_edited"], CLASSES, (32, 40))).all()
    assert float(r["psnr_outside"]) > 0
    mtime = (root / "phantom" / "study" / "rows.csv").stat().st_mtime
    assert main(["experiment", exp, "--preset", "tiny", *ov]) == 0
    assert (root / "phantom" / "study" / "rows.csv").stat().st_mtime == mtime  # nothing retrained


@pytest.mark.slow  # two processes started from the command (~30 s on 2 cores)
def test_synthesis_with_prealignment_trains_on_two_ddp_processes(tmp_path):
    """strategy=ddp (Lightning's subprocess launcher, gloo on the CPU): pre-alignment trains only its own
    net, then freezes it, so DDP must expect unused parameters (without: 'parameters that were not used
    in producing the loss' at the second step)."""
    import os
    import subprocess
    import sys

    from diffice.nets.weights import read_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [*_overrides(tmp_path), "synthesis.prealign_steps=2", "synthesis.max_steps=1", "trainer.devices=2",
            "trainer.strategy=ddp", "trainer.val_every_n_steps=100"]
    proc = subprocess.run([sys.executable, "-m", "diffice.cli", "train-synthesis", TINY, *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_checkpoint(tmp_path / "synthesis" / "last.ckpt", "synthesis")["global_step"] == 3


@pytest.mark.parametrize("trainer, want", [
    ({"strategy": "auto", "devices": 1, "num_nodes": 1}, None),
    ({"strategy": "auto", "devices": "auto", "num_nodes": 1}, None),
    ({"strategy": "auto", "devices": 2, "num_nodes": 1}, "ddp"),
    ({"strategy": "auto", "devices": [0, 1], "num_nodes": 1}, "ddp"),
    ({"strategy": "auto", "devices": 1, "num_nodes": 2}, "ddp"),
    ({"strategy": "ddp_spawn", "devices": 2, "num_nodes": 1}, "ddp_spawn"),
])
def test_the_ddp_strategy_pre_alignment_must_run_with_unused_parameters(trainer, want):
    """strategy=auto with more than one device becomes Lightning's ddp, which needs the same unused-parameter
    setting as an explicit ddp."""
    from omegaconf import OmegaConf

    from diffice.modules.synthesis import _ddp_strategy

    assert _ddp_strategy(OmegaConf.create(trainer)) == want
