"""Where should the guide's decision threshold come from (issue 23)? For each trained guide
checkpoint: its SP probabilities on the train, validation and test splits of the demo phantom, and
the test balanced accuracy at 0.5 and at the balanced-accuracy threshold of the validation split,
the training split, and both. 1 torch thread.

    .venv/bin/python bench/guide_threshold.py runs/issue23-guides/seed{0,1,2}/classifier/last.ckpt
"""
import sys

import torch

from diffice.config import load_config
from diffice.data import DiffIceDataModule
from diffice.modules.classifier import balanced_threshold, binary_report, guide_probabilities
from diffice.modules.common import load_checkpoint

torch.set_num_threads(1)
cfg = load_config(["configs/preset/demo.yaml"], ["data.augment=false"])
dm = DiffIceDataModule(cfg)
dm.setup()
for path in sys.argv[1:]:
    guide = load_checkpoint(path, "classifier").guide
    pr = {s: guide_probabilities(guide, dm.loader(dm.dataset(s), shuffle=False)) for s in ("train", "val", "test")}
    both = (torch.cat([pr["train"][0], pr["val"][0]]), torch.cat([pr["train"][1], pr["val"][1]]))
    cands = {"0.5": 0.5, "validation": balanced_threshold(*pr["val"]), "training": balanced_threshold(*pr["train"]),
             "training + validation": balanced_threshold(*both)}
    cells = []
    for name, t in cands.items():
        rep = binary_report(*pr["test"], t)
        cells.append(f"{name} t={t:.3f}: test BA {rep['balanced_accuracy']:.3f} (sens {rep['sensitivity']:.2f}, spec {rep['specificity']:.2f})")
    n = {s: (int((pr[s][1] == 1).sum()), int((pr[s][1] == 0).sum())) for s in pr}
    print(f"{path} (SP/NSP train {n['train']}, val {n['val']}, test {n['test']})\n  " + "\n  ".join(cells))
