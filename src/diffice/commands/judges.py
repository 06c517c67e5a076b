"""Commands of the judges: train-segmenter, train-classifier, train-oracle, sononet.

The training commands parse their config words and call :mod:`diffice.modules.judges`, which fits
the model (resuming from ``{paths.runs}/{stage}/last.ckpt``), evaluates it on the val and test
splits, prints the numbers and writes ``{paths.runs}/{stage}/metrics.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from diffice.errors import UserError


def _config(argv: Sequence[str], prog: str, desc: str):
    from diffice.config import config_from_args

    p = argparse.ArgumentParser(prog=f"diffice {prog}", description=desc)
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    ns = p.parse_intermixed_args(list(argv))
    return config_from_args(ns.args)


def cmd_train_segmenter(argv: Sequence[str]) -> int:
    from diffice.modules.judges import train_segmenter

    train_segmenter(_config(argv, "train-segmenter", "Train the segmentation network s (Dice + cross-entropy)."))
    return 0


def cmd_train_classifier(argv: Sequence[str]) -> int:
    from diffice.modules.judges import train_classifier

    train_classifier(_config(argv, "train-classifier", "Train the standard-plane guide f(x) = l(s(x), x) (s frozen)."))
    return 0


def cmd_train_oracle(argv: Sequence[str]) -> int:
    from diffice.modules.judges import train_oracle

    train_oracle(_config(argv, "train-oracle", "Train the PCBM oracle (segmentation -> concepts -> QS_O)."))
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
