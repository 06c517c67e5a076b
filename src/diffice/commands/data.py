"""``diffice phantoms`` (write a phantom data set) and ``diffice data-check``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffice.config import config_from_args


def cmd_phantoms(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice phantoms",
        description="Write phantom frames with masks, ground-truth targets, latents and manifest.csv. "
        "Frame size: data.image_size; class balance: data.phantom.sp_fraction.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, default=None, help="number of frames (default data.phantom.count)")
    p.add_argument("--seed", type=int, default=None, help="simulator seed (default data.phantom.seed)")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides")
    ns = p.parse_intermixed_args(argv)
    cfg = config_from_args(ns.args)
    from diffice.data.export import write_phantoms

    count = int(cfg.data.phantom.count if ns.count is None else ns.count)
    seed = int(cfg.data.phantom.seed if ns.seed is None else ns.seed)
    path = write_phantoms(cfg, ns.out, count, seed, progress=bool(cfg.trainer.progress_bar))
    print(f"wrote {count} phantom frames ({cfg.data.image_size[0]}x{cfg.data.image_size[1]}, seed {seed}) and {path}")
    return 0


def cmd_data_check(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice data-check",
        description="Count, size and sanity-check the configured data set. Exit status 0: no problem; "
        "1: problems found (listed); 2: the data set cannot be read at all.",
    )
    p.add_argument("--quick", action="store_true", help="read image headers only (sizes), do not decode pixels")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides")
    ns = p.parse_intermixed_args(argv)
    cfg = config_from_args(ns.args)
    from diffice.data.check import check_data

    rep = check_data(cfg, quick=ns.quick, progress=bool(cfg.trainer.progress_bar))
    print("\n".join(rep.lines()))
    return 1 if rep.problems else 0
