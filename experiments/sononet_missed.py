"""Write the ids of the faulted test frames the official SonoNet-16 does not call a brain plane.

    .venv/bin/python experiments/sononet_missed.py [configs/preset/hc18.yaml] --out runs/hc18_sononet_missed.txt

The frames are read exactly as a counterfactual run reads them (the preset's data and frame size)
and judged by the same :class:`~diffice.nets.sononet.BrainPlaneJudge` the run's records use, so
a run with ``cf.ids=<this file>`` has ``brain_input`` false for every frame. It is the set on which
"does the counterfactual become a brain plane for SonoNet" is asked (``experiments/hc18_sononet.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffice.config import config_from_args
from diffice.data import DiffIceDataModule
from diffice.io import atomic_write_text
from diffice.modules.counterfactual import load_brain_judge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", default=["configs/preset/hc18.yaml"], help="config files and key=value overrides")
    p.add_argument("--out", required=True)
    ns = p.parse_args()
    cfg = config_from_args(ns.args)
    judge = load_brain_judge(cfg)
    if judge is None:
        raise SystemExit("features.sononet_weights is not set: no SonoNet-16 to judge with")
    dm = DiffIceDataModule(cfg)
    dm.setup()
    ds = dm.dataset(str(cfg.cf.split), label="NSP")
    missed, n = [], len(ds)
    for s in range(0, n, 32):
        items = [ds[i] for i in range(s, min(n, s + 32))]
        calls = judge(torch.stack([it["image"] for it in items]))["brain"].tolist()
        missed += [it["id"] for it, c in zip(items, calls) if not c]
    header = (f"# {len(missed)} of {n} NSP {cfg.cf.split} frames the official SonoNet-16 does not call a brain plane "
              f"at {list(cfg.data.image_size)} (experiments/sononet_missed.py)\n")
    atomic_write_text(Path(ns.out), header + "\n".join(missed) + "\n")
    print(header.strip("# \n") + f": {ns.out}")


if __name__ == "__main__":
    main()
