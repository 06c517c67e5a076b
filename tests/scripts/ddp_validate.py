"""Run by tests/test_judges_train.py as a script: each judge of a trained runs folder validated by a
3-process ``strategy=ddp`` Trainer (Lightning's subprocess launcher, gloo, CPU); process zero prints its
validation metrics as one JSON line. Lightning starts the other processes by running this file again
(LOCAL_RANK set). Usage: ddp_validate.py RUNS_FOLDER."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_judges_train import JUDGES, TINY, TRAINER, _overrides  # noqa: E402

from diffice.config import load_config  # noqa: E402
from diffice.data import DiffIceDataModule  # noqa: E402
from diffice.errors import say_line  # noqa: E402
from diffice.modules.common import load_checkpoint  # noqa: E402

if __name__ == "__main__":
    import lightning as L
    import torch

    torch.set_num_threads(1)
    runs = Path(sys.argv[1])
    dm = DiffIceDataModule(load_config([TINY], _overrides(runs)))
    out = {}
    for kind in JUDGES:
        module = load_checkpoint(runs / kind / "last.ckpt", kind)
        trainer = L.Trainer(devices=3, strategy="ddp", default_root_dir=str(runs / "ddp"), **TRAINER)
        out[kind] = trainer.validate(module, datamodule=dm, verbose=False)[0]
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        say_line("METRICS " + json.dumps(out), sys.stdout)  # one write: no other rank's output inside the line
