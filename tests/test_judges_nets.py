"""The judges' networks without Lightning: guide gradients, PCBM, losses, feature networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffice.errors import UserError
from diffice.nets.dice import DiceCounter
from diffice.nets.features import load_feature_nets, perceptual_l2
from diffice.nets.guide import Guide
from diffice.nets.pcbm import PCBM
from diffice.nets.segmenter import build_segmenter, dice_ce_loss

K = 6


class Spy(nn.Module):
    """Wraps a segmenter and keeps its last output with retain_grad (to see where gradients go)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.out = None

    def forward(self, x):
        self.out = self.net(x)
        if self.out.requires_grad:
            self.out.retain_grad()
        return self.out


@pytest.fixture(scope="module")
def segmenter():
    from diffice.config import load_config

    cfg = load_config([], ["segmenter.encoder=tu-mobilenetv3_small_050"])
    torch.manual_seed(0)
    return build_segmenter(cfg, K)


@pytest.mark.parametrize("through", [True, False])
def test_guide_gradient_reaches_image(segmenter, through):
    torch.manual_seed(0)
    spy = Spy(segmenter)
    guide = Guide(spy, K, sononet=16, grad_through_segmenter=through).eval()
    x = (torch.rand(2, 1, 32, 40) * 2 - 1).requires_grad_(True)
    logit = guide(x)
    assert logit.shape == (2,)
    logit.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # s is frozen: its parameters never receive gradients
    assert all(p.grad is None for p in spy.parameters())
    if through:
        assert spy.out.grad is not None and spy.out.grad.abs().sum() > 0
    else:
        assert spy.out.grad is None


def test_guide_switch_changes_image_gradient(segmenter):
    torch.manual_seed(0)
    on = Guide(segmenter, K, grad_through_segmenter=True).eval()
    off = Guide(segmenter, K, grad_through_segmenter=False).eval()
    off.predictor.load_state_dict(on.predictor.state_dict())
    x = torch.rand(1, 1, 32, 40) * 2 - 1
    grads = []
    for g in (on, off):
        xi = x.clone().requires_grad_(True)
        g(xi).sum().backward()
        grads.append(xi.grad)
    # the path through s adds to the image gradient (untrained nets: compare relatively)
    assert (grads[0] - grads[1]).abs().sum() > 1e-3 * grads[1].abs().sum()


def test_guide_keeps_segmenter_in_eval_mode(segmenter):
    guide = Guide(segmenter, K).train()
    assert guide.predictor.training and not guide.segmenter.training
    probs = guide.segment(torch.zeros(1, 1, 32, 40))
    assert probs.shape == (1, K, 32, 40)
    assert torch.allclose(probs.sum(1), torch.ones(1, 32, 40), atol=1e-5)


def test_segmenter_any_size(segmenter):
    for h, w in [(32, 40), (64, 80), (50, 70)]:
        assert segmenter(torch.zeros(1, 1, h, w)).shape == (1, K, h, w)


def test_segmenter_unknown_arch_and_encoder():
    from diffice.config import load_config

    with pytest.raises(UserError, match="segmenter.arch"):
        build_segmenter(load_config([], ["segmenter.arch=dtunet"]), 2)
    with pytest.raises(UserError, match="segmenter.encoder_weights"):
        build_segmenter(load_config([], ["segmenter.encoder=resnet18", "segmenter.encoder_weights=/no/such.pt"]), 2)


def test_dice_ce_ignores_unknown_pixels():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    mask = torch.randint(0, 3, (2, 8, 8))
    loss, dice = dice_ce_loss(logits, mask)
    assert loss > 0 and dice.shape == (3,)
    # changing logits where the mask is unknown changes nothing
    m2 = mask.clone()
    m2[:, :4] = -1
    l1, _ = dice_ce_loss(logits, m2)
    logits2 = logits.detach().clone()
    logits2[:, :, :4] += 5.0
    l2, _ = dice_ce_loss(logits2, m2)
    assert torch.allclose(l1, l2)
    # all unknown: zero loss that still backpropagates
    l0, _ = dice_ce_loss(logits, torch.full_like(mask, -1))
    l0.backward()
    assert float(l0.detach()) == 0.0
    # hard Dice is 1 for a perfect prediction
    c = DiceCounter(3)
    c.update(mask, mask)
    assert torch.equal(c.compute(), torch.ones(3, dtype=torch.float64))


def test_pcbm_outputs_and_monotone_quality():
    torch.manual_seed(0)
    concepts = ["qs_th", "qs_csp", "qs_fp", "qs_bone"]
    m = PCBM("tu-mobilenetv3_small_050", K, concepts).eval()
    out = m(torch.rand(2, 1, 32, 40) * 2 - 1)
    assert out["concepts"].shape == (2, 4) and out["qs_o"].shape == (2,)
    assert out["seg_logits"].shape == (2, K, 32, 40)
    assert ((out["concepts"] >= 0) & (out["concepts"] <= 1)).all()
    # raising any one concept never lowers QS_O
    c = torch.rand(64, 4, requires_grad=True)
    m.quality_logit(c).sum().backward()
    assert (c.grad >= 0).all()
    # the oracle shares no parameter with a guide built from another segmenter
    assert m.concepts_dict(out["concepts"])[0].keys() == set(concepts)


def test_perceptual_l2():
    a = [torch.randn(3, 8, 4, 5), torch.randn(3, 16, 2, 3)]
    b = [t.clone() for t in a]
    assert torch.allclose(perceptual_l2(a, b), torch.zeros(3))
    b[1][0] += 1.0
    d = perceptual_l2(a, b)
    assert d.shape == (3,) and d[0] > 0 and d[1] == 0
    # scale of the features does not matter (channel normalisation)
    assert torch.allclose(perceptual_l2(a, [t * 3 for t in a]), torch.zeros(3), atol=1e-6)


def test_default_judges_share_no_weight_with_the_guide(segmenter, tiny_cfg):
    from diffice.nets.unet import build_unet

    guide = Guide(segmenter, K)
    unet = build_unet(tiny_cfg)
    oracle = PCBM("tu-mobilenetv3_small_050", K, ["qs_th", "qs_csp"]).eval()
    fn = load_feature_nets(tiny_cfg, guide, ddpm=unet, oracle=oracle)
    assert fn.perceptual_name == "ddpm" and "oracle" in fn.sononet_source
    x = (torch.rand(2, 1, 32, 40) * 2 - 1).requires_grad_(True)
    fa = fn.perceptual(x)
    assert len(fa) == len(tiny_cfg.unet.channel_mult)  # one map per resolution level of the denoiser
    d = fn.perceptual_l2(fa, fn.perceptual(torch.zeros(2, 1, 32, 40)))
    d.sum().backward()
    assert (d > 0).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in unet.parameters())  # frozen: gradients reach the image only
    feats = fn.sononet(x.detach())
    assert feats.shape[0] == 2 and torch.equal(feats, oracle.features(x.detach()))
    guide_params = {id(p) for p in guide.parameters()}
    assert not guide_params & {id(p) for p in [*unet.parameters(), *oracle.parameters()]}
    tiny_cfg.features.fsd = "cosine"
    with pytest.raises(UserError, match="features.fsd"):
        load_feature_nets(tiny_cfg, guide, ddpm=unet, oracle=oracle)


def test_feature_nets_guide_segmenter_and_predictor_on_request(segmenter, tiny_cfg):
    tiny_cfg.features.perceptual = "segmenter"
    tiny_cfg.features.fsd = "guide"
    guide = Guide(segmenter, K)
    fn = load_feature_nets(tiny_cfg, guide)
    assert fn.perceptual_name == "segmenter"
    x = (torch.rand(2, 1, 32, 40) * 2 - 1).requires_grad_(True)
    fa = fn.perceptual(x)
    fb = fn.perceptual(torch.zeros(2, 1, 32, 40))
    d = fn.perceptual_l2(fa, fb)
    d.sum().backward()
    assert d.shape == (2,) and (d > 0).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in fn.perceptual.parameters())
    assert fn.sononet(x.detach()).shape == (2, 128)
    assert fn.sononet_source.startswith("guide predictor l")
    f = fn.fid(torch.rand(2, 1, 32, 40) * 2 - 1)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()


def test_feature_nets_need_weights(tiny_cfg):
    tiny_cfg.features.perceptual = "sononet"
    with pytest.raises(UserError, match="features.perceptual_weights"):
        load_feature_nets(tiny_cfg, None)
    tiny_cfg.features.perceptual = "resnet50"
    with pytest.raises(UserError, match="features.perceptual_weights"):
        load_feature_nets(tiny_cfg, None)
    tiny_cfg.features.perceptual = "vgg"
    with pytest.raises(UserError, match="features.perceptual"):
        load_feature_nets(tiny_cfg, None)
    # perceptual=segmenter without a guide loads guide.segmenter_ckpt, which does not exist here
    tiny_cfg.features.perceptual = "segmenter"
    with pytest.raises(UserError, match="train the segmenter first"):
        load_feature_nets(tiny_cfg, None)


def test_feature_nets_official_sononet(tiny_cfg, segmenter, sononet_dir):
    tiny_cfg.features.perceptual = "sononet"
    tiny_cfg.features.sononet_weights = str(sononet_dir / "SonoNet16.npz")
    fn = load_feature_nets(tiny_cfg, None)
    x = torch.rand(2, 1, 32, 40) * 2 - 1
    assert len(fn.perceptual(x)) == 5
    assert fn.sononet(x).shape == (2, 128)
    assert fn.sononet_source == "official SonoNet-16"


def test_binary_report_balanced_accuracy_and_auroc():
    from diffice.modules.classifier import binary_report

    probs = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.1, 0.6, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 0, 0, -1])  # -1 is ignored
    r = binary_report(probs, labels)
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (1, 1, 2, 2)
    assert r["balanced_accuracy"] == pytest.approx(0.5 * (1 / 2 + 2 / 4))
    # AUROC: P(score of an SP > score of an NSP) over the 2 x 4 pairs: 0.9 beats 4, 0.3 beats 2
    assert r["auroc"] == pytest.approx(6 / 8)


def test_oracle_targets_and_calibration():
    from diffice.modules.oracle import calibration, qs_target

    c = torch.tensor([[0.8, 0.6, float("nan"), 1.0], [float("nan")] * 4, [0.2, 0.2, 0.2, 0.2]])
    lab = torch.tensor([-1, 1, 0])
    t = qs_target(lab, c, "label")
    assert t[0] == pytest.approx(0.8) and t[1] == 1 and t[2] == 0
    t = qs_target(lab, c, "mean")
    assert t[0] == pytest.approx(0.8) and torch.isnan(t[1]) and t[2] == pytest.approx(0.2)
    perfect = calibration(torch.tensor([0.05, 0.95, 0.55]), torch.tensor([0.05, 0.95, 0.55]))
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-9)
    off = calibration(torch.tensor([0.9, 0.9]), torch.tensor([0.0, 1.0]))
    assert off["ece"] == pytest.approx(0.4)


def test_transfer_official_reads_the_frame_as_the_official_network_does():
    from diffice.nets.sononet import SonoNet, standardize, transfer_official

    torch.manual_seed(0)
    official = SonoNet(16, in_channels=1, num_classes=14, standardize=True)
    for m in official.modules():  # non-trivial batch-norm statistics, as a trained network has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    official.eval()
    ours = transfer_official(SonoNet(16, in_channels=1 + K, num_classes=1, final_bn=False), official).eval()
    x = torch.rand(2, 1, 64, 80) * 2 - 1
    seg = torch.rand(2, K, 64, 80)  # the segmentation channels start at zero: they change nothing yet
    with torch.no_grad():
        a = official.feature_maps(x)
        b = ours.feature_maps(torch.cat([standardize(x), seg], 1))
        torch.testing.assert_close(b[-1], a[-1])
        torch.testing.assert_close(ours.adaptation[0](b[-1]), official.adaptation[0](a[-1]))
    assert ours.adaptation[1].weight.abs().sum() > 0  # the one-logit head is new, not copied
    with pytest.raises(UserError, match="SonoNet-16 cannot start a SonoNet-32"):
        transfer_official(SonoNet(32, in_channels=3, num_classes=1, final_bn=False), official)


def test_raw_channel_keeps_a_gain_change_the_standardisation_removes(segmenter):
    g = Guide(segmenter, K, standardize_image=True, raw_channel=True).eval()
    assert g.predictor.stages[0][0][0].in_channels == 2 + K
    x = torch.rand(1, 1, 32, 40) * 0.5 - 0.5
    with torch.no_grad():
        a, b = g.predictor_input(x), g.predictor_input(x * 1.5)
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-3, rtol=1e-4)   # the standardised frame: no change
    assert (b[:, 1] - a[:, 1]).abs().mean() > 0.05                        # the frame as it is: changed
    torch.testing.assert_close(a[:, 1:2], x)
