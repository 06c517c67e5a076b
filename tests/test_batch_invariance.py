"""A frame's outputs do not depend on its batch: every network call runs at one batch size
(``diffice.nets.fixed_batch``; ``cf.net_batch``, ``synthesis.net_batch``).

Checked bit for bit: the padding helper, the project's own networks at one batch shape (an item
gets the same bits at any position and beside any neighbours, forward and input gradient), the
counterfactual engine (λc search, adaptive stopping, every method), counterfactual runs at
batch 1, 2 and 4, a run killed inside a batch and resumed, and the synthesis sampler.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffice.config import load_config
from diffice.counterfactual import CFSettings, CounterfactualEngine
from diffice.modules.counterfactual import FrameWriter, run_counterfactuals
from diffice.nets.fixed_batch import FixedBatch, call_fixed, fixed
from tests.cf_fakes import (
    FakeDataModule,
    FakeDenoiser,
    FakeFeatures,
    FakeGuide,
    fake_components,
    frame,
    tiny_diffusion,
)
from tests.conftest import ROOT

TINY = ROOT / "configs/preset/tiny.yaml"

# ----------------------------------------------------------------------------- the helper


def test_every_chunk_runs_at_the_width_and_the_output_keeps_its_structure():
    seen = []

    def fn(x, t, scale=1.0):
        seen.append((x.shape[0], t.shape[0]))
        return {"a": x * scale + t[:, None], "b": [x.sum(1), (x,)]}

    x, t = torch.arange(14.0).view(7, 2), torch.arange(7.0)
    out = call_fixed(fn, 3, x, t, scale=2.0)
    assert seen == [(3, 3)] * 3
    assert torch.equal(out["a"], x * 2 + t[:, None])
    assert torch.equal(out["b"][0], x.sum(1)) and torch.equal(out["b"][1][0], x) and isinstance(out["b"][1], tuple)
    seen.clear()
    assert torch.equal(call_fixed(fn, 8, x, t)["a"], x + t[:, None]) and seen == [(8, 8)]
    assert fixed(fn, None) is fn
    with pytest.raises(ValueError, match="first dimension"):
        call_fixed(fn, 3, x, torch.arange(2.0))
    with pytest.raises(ValueError, match="at least 1"):
        FixedBatch(torch.nn.Identity(), 0)


def test_padding_is_detached_so_gradients_stay_per_item():
    x = torch.randn(3, 4, requires_grad=True)
    y = call_fixed(lambda v: v**2, 4, x)  # padded with a copy of x[2]
    assert y.shape == (3, 4)
    y.sum().backward()
    assert torch.equal(x.grad, 2 * x.detach())


def test_fixed_batch_module_forwards_attributes():
    g = FakeGuide()
    w = FixedBatch(g, 4)
    x = torch.stack([frame(i) for i in range(3)])
    assert torch.equal(w.segment(x), g.segment(x))  # attributes are the net's
    assert w(x).shape == (3,)


# ----------------------------------------------------------------------------- the project's networks


@pytest.fixture(scope="module")
def nets():
    from diffice.diffusion import build_diffusion  # noqa: F401 - the UNet's import chain
    from diffice.nets.conditional import ConditionalUNet
    from diffice.nets.features import load_feature_nets
    from diffice.nets.guide import Guide
    from diffice.nets.pcbm import PCBM
    from diffice.nets.segmenter import build_segmenter
    from diffice.nets.unet import build_unet

    cfg = load_config([TINY], ["data.image_size=[32,40]", "unet.model_channels=16", "unet.channel_mult=[1,2]",
                               "unet.attention_resolutions=[2]", "unet.num_head_channels=16", "synthesis.prealign_width=8"])
    torch.manual_seed(0)
    k = len(cfg.data.classes)
    guide = Guide(build_segmenter(load_config([], ["segmenter.encoder=tu-mobilenetv3_small_050"]), k), k).eval()
    unet = build_unet(cfg).eval()
    oracle = PCBM("tu-mobilenetv3_small_050", k, ["qs_th", "qs_csp"]).eval()
    feats = load_feature_nets(cfg, guide, ddpm=unet, oracle=oracle)
    cond = ConditionalUNet(cfg).eval()
    layout = torch.nn.functional.one_hot(torch.randint(0, k, (8, 32, 40)), k).permute(0, 3, 1, 2).float()
    return {
        "ddpm": (lambda x, t: unet(x, t), True),
        "guide": (guide, True),
        "segment": (guide.segment, False),
        "oracle": (oracle, False),
        "perceptual": (feats.perceptual, True),
        "conditional": (lambda x, t, lay, plane, ga: cond(x, t, lay, plane, ga), False),
        "layouts": (layout, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.linspace(18.0, 38.0, 8)),
    }


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat(v)]
    return [t for v in out for t in _flat(v)]


@pytest.mark.parametrize("name", ["ddpm", "guide", "segment", "oracle", "perceptual", "conditional"])
def test_an_item_gets_the_same_bits_anywhere_in_a_batch_of_one_shape(nets, name):
    """The premise of fixed-size calls, on the CPU: at one batch shape an item's output (and its
    input gradient) does not depend on its position or its neighbours."""
    net, differentiable = nets[name]
    g = torch.Generator().manual_seed(1)
    x = torch.rand((8, 1, 32, 40), generator=g) * 2 - 1
    t = torch.randint(0, 100, (8,), generator=g)
    extra = {"ddpm": (t,), "conditional": (t, *nets["layouts"])}.get(name, ())

    def args(idx):
        return (x[idx], *[e[idx] for e in extra])

    def run(idx):
        a = args(torch.tensor(idx))
        if not differentiable:
            with torch.no_grad():
                return [o[idx.index(0)] for o in _flat(net(*a))], None
        xi = a[0].clone().requires_grad_(True)
        outs = _flat(net(xi, *a[1:]))
        (grad,) = torch.autograd.grad(sum(o.float().sum() for o in outs), xi)
        return [o[idx.index(0)].detach() for o in outs], grad[idx.index(0)]

    first, g_first = run([0, 1, 2, 3])
    for idx in ([5, 6, 0, 7], [4, 0, 4, 4]):
        other, g_other = run(idx)
        assert all(torch.equal(a, b) for a, b in zip(first, other, strict=True)), idx
        assert g_first is None or torch.equal(g_first, g_other), idx


# ----------------------------------------------------------------------------- the counterfactual engine


class BorderlineGuide(FakeGuide):
    """The fake guide shifted so that some of the test frames are SP (p > 0.5) and some are not."""

    def forward(self, x):
        return super().forward(x) - 1.6


def _engine(method="diff-ice", **kw) -> CounterfactualEngine:
    s = CFSettings(method=method, tau=3, iterations=3, lambda_p=30.0, seed=0, net_batch=4, **kw)
    feats = FakeFeatures()
    return CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), BorderlineGuide(), feats.perceptual, s, feats.perceptual_l2)


def _same(a, b) -> bool:
    return (torch.equal(a.cf, b.cf) and all(torch.equal(p, q) for p, q in zip(a.iterates, b.iterates, strict=True))
            and a.p_iters == b.p_iters and a.p_lambdas == b.p_lambdas and (a.lambda_c, a.nfe, a.attempts) == (b.lambda_c, b.nfe, b.attempts))


@pytest.mark.parametrize("method,kw", [
    ("diff-ice", {"lambda_c": [0.0, 400.0], "adaptive": True, "stop_threshold": 0.55}),
    ("diff-ice", {"lambda_c": [0.0, 400.0], "mask": True, "mask_warmup": 1}),
    ("diff-ice1-xt", {"lambda_c": [0.0, 400.0]}),
    ("dime", {"lambda_c": [0.0, 400.0]}),
])
def test_engine_outputs_are_bit_identical_at_any_batch(method, kw):
    e = _engine(method, **kw)
    x = torch.stack([frame(i) for i in range(6)])
    ids = [10, 11, 12, 13, 14, 15]
    together = e.explain(x, ids)  # 6 frames: calls of 4 + 2 padded
    alone = [e.explain(x[i : i + 1], [ids[i]])[0] for i in range(6)]
    pairs = [e.explain(x[i : i + 2], ids[i : i + 2]) for i in (0, 2, 4)]
    for i in range(6):
        assert _same(together[i], alone[i]) and _same(together[i], pairs[i // 2][i % 2]), i
    # the scenario shrinks the active set: some frames are retried or stop early, others not
    assert len({(r.attempts, r.iterations) for r in together}) > 1


# ----------------------------------------------------------------------------- counterfactual runs

TIMING = ("seconds", "seconds_iters", "batch_seconds", "batch_id", "batch_size", "peak_memory_bytes", "judge_seconds")


def frame_files(out: Path) -> dict:
    """Per frame folder: every file's bytes, record.json without its timing and batch fields."""
    found = {}
    for d in sorted((Path(out) / "frames").iterdir()):
        files = {p.name: p.read_bytes() for p in d.iterdir() if p.name != "record.json"}
        rec = json.loads((d / "record.json").read_text())
        files["record.json"] = {k: v for k, v in rec.items() if k not in TIMING and not k.endswith("_seconds")}
        found[d.name] = files
    return found


@pytest.fixture
def cf_cfg(tiny_overrides, tmp_path):
    def make(name: str, batch: int, *extra: str):
        over = [*tiny_overrides, "cf.tau=3", "cf.iterations=2", f"cf.batch_size={batch}", "cf.net_batch=4",
                "cf.lambda_c=[0.0,400.0]", "cf.adaptive=true", "cf.stop_threshold=0.6", f"cf.out={tmp_path / name}", *extra]
        return load_config([TINY], over)
    return make


def test_counterfactual_runs_at_batch_1_2_and_4_are_byte_identical(cf_cfg):
    outs = {b: run_counterfactuals(cf_cfg(f"b{b}", b), fake_components(), FakeDataModule(3))[0] for b in (4, 1, 2)}
    ref = frame_files(outs[4])
    assert len(ref) == 3
    assert frame_files(outs[1]) == ref and frame_files(outs[2]) == ref  # batch 2: the last batch is partial


def test_a_run_killed_inside_a_batch_resumes_to_the_same_bytes(cf_cfg, monkeypatch):
    full, _ = run_counterfactuals(cf_cfg("full", 4), fake_components(), FakeDataModule(7))
    real = FrameWriter.write_on_batch_end
    written = []

    def crash_inside_second_batch(self, trainer, pl_module, prediction, *args, **kw):
        for f in prediction:
            if len(written) == 5:  # batch 2 holds frames 4..7: frame 5 is written, then the process dies
                raise RuntimeError("simulated crash")
            real(self, trainer, pl_module, [f], *args, **kw)
            written.append(f["record"]["index"])

    monkeypatch.setattr(FrameWriter, "write_on_batch_end", crash_inside_second_batch)
    cfg = cf_cfg("killed", 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_counterfactuals(cfg, fake_components(), FakeDataModule(7))
    assert len(written) == 5
    monkeypatch.setattr(FrameWriter, "write_on_batch_end", real)
    out, _ = run_counterfactuals(cfg, fake_components(), FakeDataModule(7))  # frames 105, 106 in a batch of 2
    assert frame_files(out) == frame_files(full)


def test_two_process_ddp_equals_one_process(cf_cfg, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    one, _ = run_counterfactuals(cf_cfg("one", 2), fake_components(), FakeDataModule(5))
    cfg = cf_cfg("ddp", 2)
    run_counterfactuals(cfg, fake_components(), FakeDataModule(5), strategy="ddp_spawn", devices=2, accelerator="cpu")
    assert frame_files(cfg.cf.out) == frame_files(one)


# ----------------------------------------------------------------------------- the synthesis sampler


def test_synthesis_samples_and_edits_do_not_depend_on_their_batch(tmp_path):
    from diffice.diffusion import build_diffusion, generators_for
    from diffice.nets.conditional import ConditionalUNet
    from diffice.synthesis.sampler import edit, make_condition, two_stage
    from tests.test_synthesis import _layout, _overrides

    cfg = load_config([TINY], _overrides(tmp_path))
    torch.manual_seed(0)
    net, diffusion = fixed(ConditionalUNet(cfg).eval(), 4), build_diffusion(cfg, "5")
    lay = torch.from_numpy(_layout())[None].repeat(5, 1, 1)
    lay[1:3, 10:20, 10:20] = 0  # samples 1, 2 ask for other layouts
    planes, gas = [0, 1, 2, 0, 1], [20.0, 25.0, 30.0, 22.0, 35.0]

    def draw(idx):
        cond = make_condition(lay[idx], [planes[i] for i in idx], [gas[i] for i in idx], 6, "cpu")
        good = {0, 3}  # the steering segmenter recovers the layouts of samples 0 and 3 only: 1, 2, 4 are refined
        seg = (lambda ii: (lambda x: torch.stack([lay[i] if i in good else torch.zeros_like(lay[i]) for i in ii])))(idx)
        res = two_stage(diffusion, net, cond, lay[idx], idx, 0, seg, 6, w1=3.0, w2=1.5, stage2_range=[0.2, 0.8],
                        dice_target=0.85, rounds=2)
        src = torch.stack([frame(i) for i in idx])
        known = torch.zeros((len(idx), 1, 32, 40), dtype=torch.bool)
        known[:, :, :, :20] = True
        ed = edit(diffusion, net, cond, src, known, generators_for(0, [900 + i for i in idx]), w=2.0, repaint=True,
                  jump_length=2, jump_n_sample=2)
        return res, ed

    all5, ed5 = draw([0, 1, 2, 3, 4])
    assert all5.restart_steps[0] == [] and len(all5.restart_steps[1]) == 2
    for idx in ([1], [4, 2, 0]):
        part, ed = draw(idx)
        for j, i in enumerate(idx):
            assert torch.equal(part.frames[j], all5.frames[i]) and torch.equal(part.stage1[j], all5.stage1[i]), (idx, i)
            assert part.restart_steps[j] == all5.restart_steps[i] and torch.equal(ed[j], ed5[i]), (idx, i)
