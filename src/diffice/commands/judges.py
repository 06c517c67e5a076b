"""Commands of the judges: train-segmenter, train-classifier, train-oracle, sononet.

Each training command fits its LightningModule with ``common.fit`` (resuming from
``{paths.runs}/{stage}/last.ckpt``), then reloads that checkpoint, evaluates it on the val
and test splits, prints the numbers and writes ``{paths.runs}/{stage}/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

from diffice.errors import UserError


def _parser(prog: str, desc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"diffice {prog}", description=desc)
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    return p


def _setup(argv: Sequence[str], prog: str, desc: str):
    import lightning as L

    from diffice.config import config_from_args
    from diffice.data import DiffIceDataModule

    ns = _parser(prog, desc).parse_intermixed_args(list(argv))
    cfg = config_from_args(ns.args)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = DiffIceDataModule(cfg)
    dm.setup()
    return cfg, dm


def _clean(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _report(cfg, stage: str, metrics: dict, ckpt: Path) -> None:
    from diffice.io import atomic_write_text
    from diffice.modules.common import run_dir

    out = run_dir(cfg, stage) / "metrics.json"
    atomic_write_text(out, json.dumps(_clean({"checkpoint": str(ckpt), **metrics}), indent=2) + "\n")
    for split, rep in metrics.items():
        shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items())
        print(f"{stage} {split}: {shown}")
    print(f"{stage}: checkpoint {ckpt}; metrics {out}")


def _eval_splits(dm, fn) -> dict:
    out = {}
    for split in ("val", "test"):
        ds = dm.dataset(split)
        if len(ds):
            out[split] = fn(dm._loader(ds, shuffle=False))
    return out


def cmd_train_segmenter(argv: Sequence[str]) -> int:
    cfg, dm = _setup(argv, "train-segmenter", "Train the segmentation network s (Dice + cross-entropy).")
    from diffice.modules.common import fit, load_checkpoint
    from diffice.modules.segmenter import SegmenterModule, evaluate_segmenter

    last = fit(cfg, "segmenter", SegmenterModule(cfg), dm, int(cfg.segmenter.max_steps))
    net = load_checkpoint(last, "segmenter").net
    classes = list(cfg.data.classes)
    _report(cfg, "segmenter", _eval_splits(dm, lambda dl: {f"dice_{k}": v for k, v in
                                                         evaluate_segmenter(net, dl, classes).items()}), last)
    return 0


def cmd_train_classifier(argv: Sequence[str]) -> int:
    cfg, dm = _setup(argv, "train-classifier", "Train the standard-plane guide f(x) = l(s(x), x) (s frozen).")
    from diffice.data import require_labels
    from diffice.modules.classifier import ClassifierModule, evaluate_classifier
    from diffice.modules.common import fit, load_checkpoint

    require_labels(dm.dataset("train"), "train", "the guide")
    module = ClassifierModule(cfg)
    last = fit(cfg, "classifier", module, dm, int(cfg.guide.max_steps))
    guide = load_checkpoint(last, "classifier").guide
    _report(cfg, "classifier", _eval_splits(dm, lambda dl: evaluate_classifier(guide, dl)), last)
    return 0


def cmd_train_oracle(argv: Sequence[str]) -> int:
    cfg, dm = _setup(argv, "train-oracle", "Train the PCBM oracle (segmentation -> concepts -> QS_O).")
    from diffice.modules.common import fit, load_checkpoint
    from diffice.modules.oracle import OracleModule, evaluate_oracle

    if not list(cfg.data.concepts):
        raise UserError("data.concepts is empty: the oracle needs concept columns (qs_*); use a data set that has them")
    last = fit(cfg, "oracle", OracleModule(cfg), dm, int(cfg.oracle.max_steps))
    oracle = load_checkpoint(last, "oracle").oracle
    concepts = list(cfg.data.concepts)
    _report(cfg, "oracle", _eval_splits(dm, lambda dl: evaluate_oracle(oracle, dl, concepts, cfg.oracle.qs_target)[0]), last)
    return 0


def cmd_sononet(argv: Sequence[str]) -> int:
    from diffice.nets.sononet import (
        OFFICIAL_CLASSES,
        OFFICIAL_CROP,
        OFFICIAL_SIZE,
        SonoNet,
        preprocess_official,
    )

    p = argparse.ArgumentParser(
        prog="diffice sononet",
        description="Label ultrasound frames with an official SonoNet (.npz): standard plane and confidence per frame.",
    )
    p.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    p.add_argument("--weights", required=True, help="the authors' SonoNet16.npz")
    p.add_argument("--crop", nargs=4, type=int, metavar=("R0", "R1", "C0", "C1"), default=list(OFFICIAL_CROP),
                   help="crop rows R0:R1 and columns C0:C1 before resizing (default: the release's %(default)s)")
    p.add_argument("--no-crop", action="store_true", help="use the whole frame")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=list(OFFICIAL_SIZE),
                   help="network input height and width (default %(default)s)")
    p.add_argument("--top", type=int, default=1, help="also print the next planes (default 1)")
    ns = p.parse_intermixed_args(list(argv))

    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    net = SonoNet.from_official(ns.weights)
    crop = None if ns.no_crop else tuple(ns.crop)
    for path in ns.images:
        f = Path(path)
        if not f.is_file():
            raise UserError(f"{f}: image not found")
        try:
            arr = np.asarray(Image.open(f).convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{f}: not a readable image ({type(err).__name__})") from err
        if crop is not None and (crop[1] > arr.shape[0] or crop[3] > arr.shape[1] or crop[0] >= crop[1] or crop[2] >= crop[3]):
            raise UserError(f"{f}: crop {list(crop)} does not fit a {arr.shape[0]}x{arr.shape[1]} frame; "
                            "pass --crop R0 R1 C0 C1 or --no-crop")
        x = preprocess_official(arr, crop, tuple(ns.size))[None]
        with torch.no_grad():
            prob = net(x).softmax(dim=1)[0]
        order = prob.argsort(descending=True)[: max(1, ns.top)]
        shown = "  ".join(f"{OFFICIAL_CLASSES[int(k)]} {float(prob[k]):.3f}" for k in order)
        print(f"{f.name}\t{shown}")
    return 0
