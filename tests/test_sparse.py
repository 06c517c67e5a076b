"""The sparse refinement (issue 23): its mask, that every pixel outside the mask equals the input
bit for bit, its cost, and that it runs inside the engine for the x0 methods only."""

from __future__ import annotations

import pytest
import torch

from diffice.counterfactual import CFSettings, CounterfactualEngine, SparseSettings
from diffice.counterfactual.sparse import change_mask, grow, opened, paste, sector
from diffice.errors import UserError
from tests.cf_fakes import FakeDenoiser, FakeFeatures, FakeGuide, frame, tiny_diffusion


def make_engine(method="diff-ice", sparse=None, **kw):
    s = CFSettings(method=method, tau=4, iterations=2, lambda_c=[40.0], lambda_p=30.0, seed=0,
                   sparse=sparse or SparseSettings(mask="diff", threshold=0.05, sigma=1.0, dilation=1, tau=3), **kw)
    feats, guide = FakeFeatures(), FakeGuide()
    return CounterfactualEngine(tiny_diffusion(), FakeDenoiser(), guide, feats.perceptual, s, feats.perceptual_l2,
                                segment=guide.segment)


def test_the_diff_mask_is_the_grown_low_passed_change():
    x = torch.zeros(1, 1, 20, 24)
    cf = x.clone()
    cf[0, 0, 8:12, 10:14] = 1.0           # a real change (a bright block)
    cf[0, 0, 0, 0] = 0.3                  # one pixel of "speckle": averages out under the low-pass
    s = SparseSettings(mask="diff", threshold=0.1, sigma=1.0, dilation=0)
    m = change_mask(x, cf, s)
    assert m[0, 0, 9:11, 11:13].eq(1).all() and m[0, 0, 0, 0] == 0 and m[0, 0, 18:, 20:].eq(0).all()
    grown = change_mask(x, cf, SparseSettings(mask="diff", threshold=0.1, sigma=1.0, dilation=2))
    assert torch.equal(grown, grow(m, 2)) and grown.sum() > m.sum()
    assert torch.equal(grow(m, 2)[0, 0, 5, 5:7], torch.zeros(2))  # grows by 2 px, not more


def test_the_layout_mask_is_where_the_segmentation_changed():
    def segment(img):  # class 1 where the pixel is bright
        bright = (img > 0).float()
        return torch.cat([1 - bright, bright], dim=1)

    x = -torch.ones(1, 1, 10, 10)
    cf = x.clone()
    cf[0, 0, 2:4, 2:4] = 0.5
    cf[0, 0, 7, 7] = -0.5                 # changed, but the layout did not
    m = change_mask(x, cf, SparseSettings(mask="layout", dilation=0), segment)
    assert int(m.sum()) == 4 and m[0, 0, 2:4, 2:4].eq(1).all()
    with pytest.raises(UserError, match="cf.sparse=layout needs"):
        change_mask(x, cf, SparseSettings(mask="layout"))
    # both: the union with the low-passed change (here the dark dot, too, at a low threshold)
    both = change_mask(x, cf, SparseSettings(mask="both", sigma=0.0, threshold=0.2, dilation=0), segment)
    assert int(both.sum()) == 5 and both[0, 0, 7, 7] == 1


def test_the_opened_layout_mask_drops_outlines_that_only_moved():
    def segment(img):
        bright = (img > 0).float()
        return torch.cat([1 - bright, bright], dim=1)

    x = -torch.ones(1, 1, 16, 16)
    x[0, 0, 2:14, 2:6] = 0.5              # a structure whose right edge moves by one pixel ...
    cf = x.clone()
    cf[0, 0, 2:14, 6] = 0.5
    cf[0, 0, 9:14, 10:15] = 0.5           # ... and one that appears (5 x 5)
    plain = change_mask(x, cf, SparseSettings(mask="layout", dilation=0), segment)
    assert int(plain.sum()) == 12 + 25
    kept = change_mask(x, cf, SparseSettings(mask="layout", dilation=0, opening=(1,)), segment)
    assert int(kept.sum()) == 25 and kept[0, 0, 9:14, 10:15].eq(1).all()   # the new structure stays whole
    assert int(change_mask(x, cf, SparseSettings(mask="layout", dilation=0, opening=(3,)), segment).sum()) == 0
    # the diff part of "both" is not opened
    both = change_mask(x, cf, SparseSettings(mask="both", sigma=0.0, threshold=0.2, dilation=0, opening=(1,)), segment)
    assert torch.equal(both, plain)
    assert torch.equal(opened(plain, 0), plain)


def test_the_guide_mask_is_where_the_guides_evidence_is_below_its_decision():
    def evidence(img):  # the guide sees a fault where the frame is bright
        return torch.where(img > 0, -1.0, 1.0)

    x = -torch.ones(1, 1, 12, 12)
    x[0, 0, 3:6, 4:8] = 0.5
    cf = torch.zeros_like(x)              # the dense result changed everything: the mask ignores it
    m = change_mask(x, cf, SparseSettings(mask="guide", dilation=0), evidence=evidence)
    assert int(m.sum()) == 12 and m[0, 0, 3:6, 4:8].eq(1).all()
    assert torch.equal(change_mask(x, cf, SparseSettings(mask="guide", dilation=1), evidence=evidence), grow(m, 1))
    with pytest.raises(UserError, match="cf.sparse=guide needs"):
        change_mask(x, cf, SparseSettings(mask="guide"))


def test_a_guides_evidence_map_averages_to_its_logit():
    from diffice.config import load_config
    from diffice.nets.guide import Guide
    from diffice.nets.segmenter import build_segmenter

    torch.manual_seed(0)
    seg = build_segmenter(load_config([], ["segmenter.encoder=tu-mobilenetv3_small_050"]), 2)
    g = Guide(seg, 2).eval()
    g.threshold.fill_(0.3)
    x = torch.rand(2, 1, 64, 80) * 2 - 1
    with torch.no_grad():
        cells = g.predictor.class_maps(g.predictor_input(x))
        e = g.evidence(x)
        logit = g(x)
    assert e.shape == (2, 1, 64, 80) and cells.shape[-2:] == (4, 5)
    torch.testing.assert_close(cells.mean(dim=(1, 2, 3)), logit)
    # at a cell's centre the upsampled map is that cell's value, less the decision logit (0.3 -> -0.847)
    torch.testing.assert_close(e[:, 0, 8, 8] + 0.0, (cells[:, 0, 0, 0] - torch.logit(torch.tensor(0.3))), atol=0.05, rtol=0)


@pytest.mark.parametrize("mask", ["diff", "layout", "both"])
@pytest.mark.parametrize("method", ["diff-ice", "diff-ice1"])
def test_outside_the_mask_the_counterfactual_is_the_input_bit_for_bit(method, mask):
    e = make_engine(method, SparseSettings(mask=mask, threshold=0.2, sigma=1.0, dilation=1, tau=3))
    x = torch.stack([frame(i) for i in range(3)])
    dense = make_engine(method, SparseSettings()).explain(x, [4, 5, 6])
    rs = e.explain(x, [4, 5, 6])
    for r, d, xi in zip(rs, dense, x, strict=True):
        assert torch.equal(r.dense, d.cf)                     # the refinement starts from the dense result
        keep = ~(r.cf != xi)
        assert 0.0 < r.mask_fraction < 1.0
        outside = change_mask(xi[None], d.cf[None], e.s.sparse, e.segment)[0] == 0
        assert outside.any() and torch.equal(r.cf[outside], xi[outside])  # exactly the input
        assert keep.float().mean() >= 1 - r.mask_fraction - 1e-6
        assert not torch.equal(r.cf, xi)                      # and it did change inside
        assert r.nfe == d.nfe + 3 and r.p_sparse is not None and r.p_cf == r.p_sparse
    assert rs[0].iterations == dense[0].iterations            # the passes are the dense ones


def test_a_frame_gets_the_sparsest_opening_whose_refinement_the_guide_calls_sp():
    x = torch.stack([frame(i) for i in range(6)])
    ids = list(range(10, 16))

    def run(opening, threshold=None):
        e = make_engine(sparse=SparseSettings(mask="layout", dilation=1, tau=3, opening=opening))
        if threshold is not None:
            e.threshold = threshold
        return e.explain(x, ids)

    first = run((2,))
    p = sorted(r.p_cf for r in first)
    threshold = (p[2] + p[3]) / 2                    # half the frames flip with the sparsest mask
    sparse_only, both = run((2,), threshold), run((2, 0), threshold)
    kept = [r.sparse_opening for r in both]
    assert kept.count(2) == 3 and kept.count(0) == 3
    for a, b in zip(sparse_only, both, strict=True):
        assert torch.equal(a.dense, b.dense)
        if a.flipped:                                # final after the first opening: nothing more ran
            assert b.sparse_opening == 2 and torch.equal(a.cf, b.cf) and b.nfe == a.nfe
        else:                                        # refined again from its dense result, larger mask
            assert b.sparse_opening == 0 and b.nfe == a.nfe + 3 and not torch.equal(a.cf, b.cf)
            m = change_mask(x[b.index - 10][None], b.dense[None], SparseSettings(mask="layout", dilation=1, opening=(0,)),
                            make_engine().segment)[0] == 0
            assert torch.equal(b.cf[m], x[b.index - 10][m])  # outside the last mask: the input exactly


def test_sparse_opening_is_a_pixel_count_or_a_list_of_them():
    from diffice.config import load_config

    assert CFSettings.from_config(load_config([], ["cf.sparse_opening=2"])).sparse.opening == (2,)
    assert CFSettings.from_config(load_config([], ["cf.sparse_opening=[1,0]"])).sparse.opening == (1, 0)
    with pytest.raises(UserError, match="cf.sparse_opening: 'abc' is not a pixel count"):
        CFSettings.from_config(load_config([], ["cf.sparse_opening=abc"]))


def test_paste_is_exact():
    x, inside = torch.randn(2, 1, 5, 6), torch.randn(2, 1, 5, 6)
    m = (torch.rand(2, 1, 5, 6) > 0.5).float()
    out = paste(x, inside, m)
    assert torch.equal(out[m == 0], x[m == 0]) and torch.equal(out[m == 1], inside[m == 1])


def test_the_refinement_does_not_depend_on_the_batch():
    e = make_engine()
    x = torch.stack([frame(i) for i in range(3)])
    together = e.explain(x, [1, 2, 3])
    alone = [e.explain(x[i : i + 1], [1 + i])[0] for i in range(3)]
    for a, b in zip(together, alone, strict=True):
        assert torch.allclose(a.cf, b.cf, atol=1e-5) and a.nfe == b.nfe


def test_the_raised_mask_keeps_the_share_of_the_sector_where_the_guide_s_evidence_rose_most():
    x = -torch.ones(2, 1, 20, 24)
    x[:, :, :, 8:] = 0.0                       # the imaged sector: right of column 8 (its blurred edge included)
    cf = x.clone()
    cf[0, 0, 2:6, 12:16] = 0.8                 # frame 0: the change that raised the evidence
    cf[1, 0, 10:14, 16:20] = 0.8               # frame 1: elsewhere

    def evidence(img):                         # a stand-in guide: evidence = brightness
        return img.clone()

    inside = int(sector(x[:1]).sum())
    assert 320 <= inside <= 400 and not sector(x)[:, :, :, :4].any()
    share = 16 / inside                        # exactly the 16 pixels of the block
    m = change_mask(x, cf, SparseSettings(mask="raised", share=share, dilation=0), evidence=evidence)
    assert m[0, 0, 2:6, 12:16].eq(1).all() and m[1, 0, 10:14, 16:20].eq(1).all()
    assert m.flatten(1).sum(1).tolist() == [16.0, 16.0]
    alone = change_mask(x[1:], cf[1:], SparseSettings(mask="raised", share=share, dilation=0), evidence=evidence)
    assert torch.equal(alone[0], m[1])         # the cut is per frame: no batch effect
    wider = change_mask(x, cf, SparseSettings(mask="raised", share=0.5, dilation=0), evidence=evidence)
    assert wider[:, :, :, :4].eq(0).all()      # ties at zero gain are kept, but never outside the sector
    assert (wider.flatten(1).sum(1) >= inside / 2).all()
    with pytest.raises(UserError, match="cf.sparse=raised needs the guide's evidence map"):
        change_mask(x, cf, SparseSettings(mask="raised"))


def test_sparse_settings_are_validated():
    with pytest.raises(UserError, match="cf.sparse: 'box'"):
        make_engine(sparse=SparseSettings(mask="box"))
    with pytest.raises(UserError, match="cf.sparse_tau"):
        make_engine(sparse=SparseSettings(mask="diff", tau=0))
    with pytest.raises(UserError, match="cf.sparse_opening"):
        make_engine(sparse=SparseSettings(mask="layout", opening=(1, -1)))
    with pytest.raises(UserError, match="cf.sparse_opening"):
        make_engine(sparse=SparseSettings(mask="layout", opening=()))
    with pytest.raises(UserError, match="cf.sparse_threshold"):
        make_engine(sparse=SparseSettings(mask="diff", threshold=0.0))
    with pytest.raises(UserError, match="cf.sparse_share"):
        make_engine(sparse=SparseSettings(mask="raised", share=0.0))
    with pytest.raises(UserError, match="cf.sparse applies to diff-ice and diff-ice1"):
        make_engine("dime")
    make_engine("dime", SparseSettings())  # off: any method


def test_the_report_names_the_mask_a_frame_kept(tmp_path):
    import numpy as np
    from PIL import Image

    from diffice.report.html import frame_strip

    for name in ("input.png", "dense.png", "cf.png"):
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / name)
    rec = {"_dir": tmp_path, "p_dense": 0.4, "p_cf": 0.7, "sparse_mask_fraction": 0.05, "sparse_opening": 1}
    captions = dict((k, c) for k, c, _ in frame_strip(rec))
    assert captions["dense"] == "dense cf (sparse mask 5% of the frame, layout change opened 1 px)"
    rec["sparse_opening"] = 0                             # the unopened mask: nothing to say about an opening
    assert dict((k, c) for k, c, _ in frame_strip(rec))["dense"] == "dense cf (sparse mask 5% of the frame)"
