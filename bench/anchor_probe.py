"""Probe of the low-frequency anchor (issue 25): 16 evenly spaced test layouts of an unseen phantom
(seed 1), one stage at guidance 3, for each FACTOR:UNTIL:W given (FACTOR 0 = no anchor): the
share of washed-out samples (diffice.synthesis.metrics.washed_out against all real test frames),
the corners' and the dark level's medians, and the seconds. 1 torch thread.

    .venv/bin/python bench/anchor_probe.py 0:0:3 8:0.5:3 8:0.2:3 8:0:3 4:0.5:3
"""
import sys
import time

import numpy as np
import torch

from diffice.config import load_config
from diffice.diffusion import generators_for
from diffice.io import to_uint8
from diffice.synthesis import sampler as S
from diffice.synthesis.jobs import test_jobs
from diffice.synthesis.metrics import washed_out
from diffice.synthesis.run import Synthesizer

torch.set_num_threads(1)
base = ['synthesis.two_stage=false','synthesis.guidance=3.0','data.phantom.count=1600','data.phantom.seed=1']
cfg = load_config(['configs/preset/demo.yaml'], base)
syn = Synthesizer(cfg, 'models/demo/synthesis.ckpt', need_steer=False, need_judge=False)
jobs, _, dm = test_jobs(cfg, syn, None, [])
real = np.stack([to_uint8(j.real) for j in jobs])
sel = jobs[::len(jobs)//16][:16]
lay = torch.stack([torch.from_numpy(j.layout) for j in sel])
cond = S.make_condition(lay, [j.plane for j in sel], [j.ga for j in sel], syn.num_classes, 'cpu')
with torch.no_grad():
    ref = syn.module.ema_model.appearance(cond['layout'].float()).clamp(-1,1)
for spec in sys.argv[1:]:
    f, u, w = spec.split(':')
    anc = None if f == '0' else S.Anchor(syn.diffusion, ref, int(f), float(u))
    t = time.time()
    x = S.sample(syn.diffusion, syn.net, cond, generators_for(0, list(range(len(sel)))), w=float(w), anchor=anc)
    xs = np.stack([to_uint8(v) for v in x])
    np.save(f'/tmp/anchor_probe_{spec.replace(":","_")}.npy', xs)
    m = washed_out(xs, real)
    print(spec, 'washed', m['washed_out'], 'corner', m['washed_out_corner'], round(m['washed_out_corner_level'],1), 'dark', m['washed_out_dark'], m['washed_out_dark_level'], 'thr', m['washed_out_thresholds']['dark'], f'{time.time()-t:.0f}s', flush=True)
