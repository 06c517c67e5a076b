"""Is the downstream anomaly task learnable at all at 64x80 (issue 25)? The study's upper bound (48
rendered abnormal frames of training patients against 200 real normal frames a seed, the model's
recipe) stays near chance; this trains the same binary classifier on *every* rendered abnormal frame
of training patients against *every* real training frame, for more steps, and prints the test AUROC
overall and per anomaly (the study's test sets). 1 torch thread.

    .venv/bin/python bench/downstream_upper_probe.py ROW_DIR MODEL STEPS [SEED]
    (ROW_DIR: {paths.runs}/experiments/fetalflex_downstream/<row>, after the experiment made its frame sets)
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffice.config import load_config
from diffice.downstream.frames import concat, load_manifest
from diffice.downstream.metrics import auroc, per_anomaly_auroc
from diffice.downstream.study import group_weights
from diffice.downstream.train import predict, train_classifier
from diffice.experiments.downstream import real_sets

torch.set_num_threads(1)
row, model, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
cfg = load_config(["configs/preset/demo.yaml"], [])

size = list(cfg.data.image_size)
sets = real_sets(cfg)
upper = load_manifest(row / "rendered-abnormal-train" / "manifest.csv", size=size)
test = concat([sets["real_test"], load_manifest(row / "abnormal-test" / "manifest.csv", size=size)])
data = concat([sets["real_train"], upper])
labels = data.abnormal.astype(np.int64)
w = group_weights(labels, data.origin, True, None)
t0 = time.time()
net = train_classifier(model, data.images, labels, 2, steps=steps, batch_size=32, lr=2e-3, seed=seed, device="cpu",
                       image_size=size, warmup=0.3, flips=True, sample_weights=w)
p = predict(net, test.images)[:, 1]
y = test.abnormal.astype(int)
per = per_anomaly_auroc(p, test.anomaly)
print(f"{model}, {steps} steps, seed {seed}: {len(sets['real_train'])} normal + {len(upper)} rendered abnormal; "
      f"test AUROC {auroc(p, y):.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + f"; {time.time() - t0:.0f} s")
