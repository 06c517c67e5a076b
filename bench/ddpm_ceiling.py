"""The ceiling of ``diffice ddpm-check``: the segmenter's Dice when only the speckle is redrawn (issue 23).

``ddpm-check`` scores the segmenter's Dice between an SP frame and the DDPM's reconstruction of it
from step τ. A perfect DDPM keeps the anatomy but still redraws the speckle (it starts from noise), so
even it cannot score 1: the segmenter reads a structure a few pixels wide slightly differently in
another speckle. The phantom can render the same frame — patient, pose, anatomy, faults — with
another speckle field; this scores the same segmenter(s) on those twins exactly as ``ddpm-check``
scores reconstructions (pooled Dice per structure, bootstrap interval over frames), on the same SP
test frames. 1 torch thread.

    .venv/bin/python bench/ddpm_ceiling.py configs/preset/demo.yaml SEGMENTER.ckpt [SEGMENTER.ckpt ...] [--count 64]
"""
import argparse

import torch

import diffice.data.phantom.render as render
from diffice.config import load_config
from diffice.counterfactual.check import DiceBetween
from diffice.data import DiffIceDataModule
from diffice.metrics.stats import fmt_interval

torch.set_num_threads(1)


def twin(source, index: int, shift: float) -> torch.Tensor:
    """Frame ``index`` rendered with its speckle field and shifts moved by ``shift`` (everything else equal)."""
    original = render.sample_frame

    def other_speckle(*a, **k):
        fr = original(*a, **k)
        for key in ("actual", "good"):
            fr[key] = dict(fr[key], speckle=[(q + shift) % 1.0 for q in fr[key]["speckle"]])
        return fr

    render.sample_frame = other_speckle
    try:
        fr = source.render(index)
    finally:
        render.sample_frame = original
    return torch.from_numpy(fr["image"]).float()[None] / 127.5 - 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("segmenters", nargs="+")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    from diffice.modules.ddpm import segment_fn

    cfg = load_config([a.preset])
    dm = DiffIceDataModule(cfg)
    dm.setup()
    ds = dm.dataset(a.split, label="SP")
    items = [ds[i] for i in range(min(len(ds), a.count))]
    x = torch.stack([it["image"] for it in items]).float()
    own = torch.stack([twin(ds.source, int(it["index"]), 0.0) for it in items])
    assert torch.allclose(own, x, atol=1e-5), "the twin renderer does not reproduce the data set's frames"
    twins = torch.stack([twin(ds.source, int(it["index"]), 0.37) for it in items])
    print(f"{len(items)} SP {a.split} frames, each against its twin with another speckle field")
    for path in a.segmenters:
        segment, classes = segment_fn(path, "cpu")
        dice = DiceBetween(classes)
        with torch.no_grad():
            for s in range(0, len(x), 16):
                dice.update(segment(x[s:s + 16]).argmax(1), segment(twins[s:s + 16]).argmax(1))
        iv = dice.intervals()
        cells = [f"{c} {fmt_interval(iv[c])}" for c in classes if c in ("head", "bone", "th", "csp")]
        print(f"  {path}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
